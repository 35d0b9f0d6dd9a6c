//! Arbitrary bytes as a WAL segment: the recovery scan and the entry decoder must return records
//! or an error, never panic, and every record they accept must decode as entries or be refused.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringkv_storage::wal::reader::scan_segment;
use ringkv_storage::Entry;

fuzz_target!(|data: &[u8]| {
    // Both ways a node may open: refusing a rotted last record, or dropping it as the operator
    // accepted.
    for accept_rotten_tail in [false, true] {
        if let Ok(scan) = scan_segment("fuzz.wal", data, None, accept_rotten_tail) {
            assert!(scan.valid_end as usize <= data.len());
            let whole = Bytes::copy_from_slice(data);
            // A record holds one entry, or an atomic write's several back to back: decode them
            // in turn as recovery does, until the payload ends or an entry is refused.
            for record in scan.records {
                let payload = whole.slice(record.payload);
                let mut at = 0;
                while at < payload.len() {
                    match Entry::decode(&payload, at) {
                        Ok((_, _, used)) => at += used,
                        Err(_) => break,
                    }
                }
            }
        }
    }
});
