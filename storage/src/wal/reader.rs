//! Recovery scan of one WAL segment.
//!
//! The scan stops at the first place that is not a valid record. What follows decides what it
//! was: if any later 4 KiB boundary (where every group write starts) holds a valid record with
//! a later sequence number, acknowledged data sits beyond damage and the segment is corrupt —
//! an error, never skipped. Otherwise the damage is in the log's last group, and its shape
//! decides:
//! - a torn write (the file ends inside the record, or one of the record's 512-byte sectors is
//!   all zeros: never written) is a torn tail: the bytes are dropped and counted. Such a write
//!   was never acknowledged.
//! - a whole record whose every sector was written and which still fails its checksum rotted on
//!   disk, and it may hold acknowledged writes: corruption, an error, unless the caller accepts
//!   the loss (then it is logged as an error and dropped like a torn tail).
//!
//! (A real disk may persist the sectors of one unsynced write out of order; such a write was
//! never acknowledged, yet this rule reports it as corruption. Erring towards an error is the
//! safe side: an operator decides, nothing is silently lost.)

use super::record::{self, Decoded, RECORD_HEADER_BYTES};
use crate::disk::{align_up, ALIGNMENT};
use crate::{Result, StorageError};

/// One valid record found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// The record's sequence number.
    pub seq: u64,
    /// Byte range of the payload inside the scanned buffer.
    pub payload: std::ops::Range<usize>,
}

/// The outcome of scanning a segment.
#[derive(Debug, Default)]
pub struct SegmentScan {
    /// Valid records, in order.
    pub records: Vec<ScannedRecord>,
    /// Offset just past the last valid record.
    pub valid_end: u64,
    /// Bytes after `valid_end` that held damaged data (a torn tail), if any.
    pub torn_bytes: u64,
    /// The damage was not a torn write but a rotted record, dropped because the caller accepted
    /// the loss.
    pub rotten_tail_dropped: bool,
}

/// Size of the unit a disk writes atomically, at least: a sector.
const SECTOR_BYTES: usize = 512;

/// Scans `buf`, the whole contents of segment `file`. `expected_seq` is the sequence number the
/// first record must carry if known (continuity across segments). `accept_rotten_tail` drops a
/// rotted last record (logged as an error) instead of failing.
pub fn scan_segment(
    file: &str,
    buf: &[u8],
    mut expected_seq: Option<u64>,
    accept_rotten_tail: bool,
) -> Result<SegmentScan> {
    let mut scan = SegmentScan::default();
    let mut offset = 0usize;
    while offset < buf.len() {
        match record::decode(buf, offset) {
            Decoded::Record { seq, payload_start, payload_end } => {
                if let Some(expected) = expected_seq {
                    if seq != expected {
                        return Err(StorageError::corruption(
                            file,
                            offset as u64,
                            format!("sequence number {seq} where {expected} was expected"),
                        ));
                    }
                }
                scan.records.push(ScannedRecord { seq, payload: payload_start..payload_end });
                expected_seq = Some(seq + 1);
                offset = payload_end;
                scan.valid_end = offset as u64;
            }
            Decoded::Zero => {
                // Padding runs to the next boundary; a zero header on a boundary is the end.
                if offset.is_multiple_of(ALIGNMENT) {
                    break;
                }
                offset = align_up(offset as u64) as usize;
            }
            Decoded::Invalid(_) if is_padding_to_boundary(buf, offset) => {
                // A group write ended fewer than a header's bytes before a boundary: the header
                // read straddled its zero padding and the next group's first record.
                offset = align_up(offset as u64) as usize;
            }
            Decoded::Invalid(reason) => {
                if let Some(later) = valid_record_after(buf, offset, expected_seq) {
                    return Err(StorageError::corruption(
                        file,
                        offset as u64,
                        format!("{reason}, followed by a valid record at offset {later}"),
                    ));
                }
                let damaged_end =
                    buf[offset..].iter().rposition(|&b| b != 0).map_or(offset, |p| offset + p + 1);
                if !looks_torn(buf, offset) {
                    let what = format!(
                        "{reason} in the last record, though every sector of it was written: the bytes \
                         changed on disk (a torn write cannot explain it) and acknowledged writes may be lost"
                    );
                    if !accept_rotten_tail {
                        return Err(StorageError::corruption(
                            file,
                            offset as u64,
                            format!("{what}; accepting the loss (a node's accept_wal_tail_loss) drops it"),
                        ));
                    }
                    tracing::error!(
                        file,
                        offset,
                        bytes = damaged_end - offset,
                        "{what}; dropped, as accepted"
                    );
                    scan.rotten_tail_dropped = true;
                }
                scan.torn_bytes = (damaged_end - offset) as u64;
                return Ok(scan);
            }
        }
    }
    // A zero header on a boundary ends the log; anything valid after it means lost records.
    if offset < buf.len() {
        if let Some(later) = valid_record_after(buf, offset, expected_seq) {
            return Err(StorageError::corruption(
                file,
                offset as u64,
                format!("zeroed region followed by a valid record at offset {later}"),
            ));
        }
    }
    Ok(scan)
}

/// True when the invalid record at `offset` looks like a write cut short: the file ends inside
/// it off a block boundary, or one of the sectors it spans is all zeros (never written). Sectors
/// are written whole, so a record whose sectors all hold data was written entirely. (A flipped
/// bit in a record's length that stretches it over the zero padding after it looks the same as
/// a torn write, and is treated as one.)
fn looks_torn(buf: &[u8], offset: usize) -> bool {
    let declared_end = match buf.get(offset..offset + RECORD_HEADER_BYTES) {
        None => return true,
        Some(header) => {
            let payload_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
            if payload_len == 0 || payload_len > record::RECORD_PAYLOAD_BYTES_MAX {
                // The length itself is damaged: only the header's own sectors say anything.
                offset + RECORD_HEADER_BYTES
            } else {
                offset + RECORD_HEADER_BYTES + payload_len
            }
        }
    };
    // Group writes fill whole 4 KiB blocks: a file that ends off a block boundary was cut
    // inside a write.
    if declared_end > buf.len() && !buf.len().is_multiple_of(ALIGNMENT) {
        return true;
    }
    let first_sector = offset / SECTOR_BYTES * SECTOR_BYTES;
    (first_sector..declared_end.min(buf.len()))
        .step_by(SECTOR_BYTES)
        .any(|sector| buf[sector..(sector + SECTOR_BYTES).min(buf.len())].iter().all(|&byte| byte == 0))
}

/// True when `offset` is inside a 4 KiB block and every byte from it to the block's end is zero.
fn is_padding_to_boundary(buf: &[u8], offset: usize) -> bool {
    !offset.is_multiple_of(ALIGNMENT) && {
        let boundary = (align_up(offset as u64) as usize).min(buf.len());
        buf[offset..boundary].iter().all(|&byte| byte == 0)
    }
}

/// Finds a valid record starting on a boundary after `offset` whose sequence number is at least
/// `expected_seq` (any, if unknown).
fn valid_record_after(buf: &[u8], offset: usize, expected_seq: Option<u64>) -> Option<usize> {
    let mut boundary = align_up(offset as u64 + 1) as usize;
    while boundary + RECORD_HEADER_BYTES <= buf.len() {
        if let Decoded::Record { seq, .. } = record::decode(buf, boundary) {
            if expected_seq.is_none_or(|expected| seq >= expected) {
                return Some(boundary);
            }
        }
        boundary += ALIGNMENT;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a segment of group writes, each a list of (seq, payload), each padded to 4 KiB.
    fn segment(groups: &[&[(u64, &[u8])]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for group in groups {
            for (seq, payload) in *group {
                record::encode(&mut buf, *seq, payload.len(), |out| out.extend_from_slice(payload));
            }
            buf.resize(align_up(buf.len() as u64) as usize, 0);
        }
        buf
    }

    #[test]
    fn reads_every_group() {
        let buf = segment(&[&[(1, b"a"), (2, b"b")], &[(3, b"c")]]);
        let scan = scan_segment("s", &buf, Some(1), false).unwrap();
        assert_eq!(scan.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(scan.torn_bytes, 0);
    }

    #[test]
    fn a_group_ending_just_before_a_boundary_is_padding() {
        // Size the first record so that its group ends 1..16 bytes before the boundary.
        for gap in 1..=RECORD_HEADER_BYTES {
            let payload = vec![9u8; ALIGNMENT - RECORD_HEADER_BYTES - gap];
            let buf = segment(&[&[(1, &payload)], &[(2, b"next")]]);
            let scan =
                scan_segment("s", &buf, Some(1), false).unwrap_or_else(|error| panic!("gap {gap}: {error}"));
            assert_eq!(scan.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2], "gap {gap}");
        }
    }

    #[test]
    fn torn_tail_is_truncated_and_counted() {
        let mut buf = segment(&[&[(1, b"a")], &[(2, &[7u8; 100])]]);
        let second = ALIGNMENT + RECORD_HEADER_BYTES + 50;
        buf.truncate(second);
        let scan = scan_segment("s", &buf, None, false).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(scan.torn_bytes > 0);
    }

    #[test]
    fn unwritten_sectors_in_the_last_record_are_a_torn_tail() {
        let payload = vec![7u8; 3000];
        let mut buf = segment(&[&[(1, b"a")], &[(2, &payload)]]);
        // The last group's later sectors were never written.
        buf[ALIGNMENT + 1024..].fill(0);
        let scan = scan_segment("s", &buf, None, false).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(scan.torn_bytes > 0);
        assert!(!scan.rotten_tail_dropped);
    }

    #[test]
    fn a_whole_last_record_failing_its_checksum_is_corruption_unless_accepted() {
        let payload = vec![7u8; 3000];
        let mut buf = segment(&[&[(1, b"a")], &[(2, &payload)]]);
        // One bit flipped in a record whose every sector was written: bit rot.
        buf[ALIGNMENT + 2000] ^= 0x10;
        let error = scan_segment("s", &buf, None, false).unwrap_err();
        assert!(
            matches!(&error, StorageError::Corruption { reason, .. } if reason.contains("every sector")),
            "{error}"
        );
        let scan = scan_segment("s", &buf, None, true).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(scan.rotten_tail_dropped);
        assert!(scan.torn_bytes > 0);
    }

    #[test]
    fn damage_followed_by_valid_records_is_corruption() {
        let mut buf = segment(&[&[(1, b"a")], &[(2, b"b")]]);
        buf[RECORD_HEADER_BYTES] ^= 1;
        let error = scan_segment("s", &buf, None, false).unwrap_err();
        assert!(matches!(error, StorageError::Corruption { .. }), "{error}");
    }

    #[test]
    fn zeroed_group_followed_by_valid_group_is_corruption() {
        let mut buf = segment(&[&[(1, b"a")], &[(2, b"b")], &[(3, b"c")]]);
        buf[ALIGNMENT..2 * ALIGNMENT].fill(0);
        assert!(scan_segment("s", &buf, None, false).is_err());
    }

    #[test]
    fn sequence_gap_is_corruption() {
        let buf = segment(&[&[(1, b"a")], &[(3, b"b")]]);
        assert!(scan_segment("s", &buf, None, false).is_err());
        let buf = segment(&[&[(5, b"a")]]);
        assert!(scan_segment("s", &buf, Some(4), false).is_err());
    }
}
