//! Arbitrary bytes as a WAL segment: the recovery scan and the entry decoder must return records
//! or an error, never panic, and every record they accept must decode as an entry or be refused.
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
            for record in scan.records {
                let _ = Entry::decode(&whole.slice(record.payload), 0);
            }
        }
    }
});
