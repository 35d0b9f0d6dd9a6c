//! The fixed-size footer that ends every table and locates its index and filter.

use super::{FORMAT_VERSION, TABLE_MAGIC};
use crate::disk::{align_up, ALIGNMENT};
use crate::error::{Result, StorageError};

/// Encoded size of the footer.
pub(crate) const FOOTER_BYTES: usize = 60;
/// Bytes covered by the footer's checksum: everything before it.
const CHECKSUMMED_BYTES: usize = 56;

/// Where a table's index and filter are, how many entries it holds and their highest version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Footer {
    pub index_offset: u64,
    pub index_len: u32,
    pub filter_offset: u64,
    pub filter_len: u32,
    pub entry_count: u64,
    /// The highest version of any entry (0 for an empty table).
    pub max_version: u64,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl Footer {
    /// Appends the encoded footer to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.index_len.to_le_bytes());
        out.extend_from_slice(&self.index_offset.to_le_bytes());
        out.extend_from_slice(&self.filter_offset.to_le_bytes());
        out.extend_from_slice(&self.filter_len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.entry_count.to_le_bytes());
        out.extend_from_slice(&self.max_version.to_le_bytes());
        let checksum = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&checksum.to_le_bytes());
        debug_assert_eq!(out.len() - start, FOOTER_BYTES);
    }

    /// Decodes and checks the footer of a file of `file_bytes` bytes, read at `offset`
    /// (`file_bytes - FOOTER_BYTES`). Besides the checksum it checks that the parts it points at
    /// sit exactly where the writer puts them, so a damaged but checksum-consistent footer
    /// cannot send reads elsewhere.
    pub fn decode(bytes: &[u8], file_name: &str, offset: u64, file_bytes: u64) -> Result<Footer> {
        let corrupt = |reason: String| StorageError::corruption(file_name, offset, reason);
        if bytes.len() != FOOTER_BYTES {
            return Err(corrupt(format!("footer is {} bytes, expected {FOOTER_BYTES}", bytes.len())));
        }
        let expected = u32_at(bytes, CHECKSUMMED_BYTES);
        let actual = crc32c::crc32c(&bytes[..CHECKSUMMED_BYTES]);
        if expected != actual {
            return Err(StorageError::ChecksumMismatch {
                file: file_name.to_string(),
                offset,
                expected,
                actual,
            });
        }
        let magic = u64_at(bytes, 0);
        if magic != TABLE_MAGIC {
            return Err(corrupt(format!("footer magic {magic:#018x} is not a table's")));
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(StorageError::UnsupportedFormat {
                file: file_name.to_string(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if u32_at(bytes, 36) != 0 {
            return Err(corrupt("reserved footer field is not zero".to_string()));
        }
        let footer = Footer {
            index_len: u32_at(bytes, 12),
            index_offset: u64_at(bytes, 16),
            filter_offset: u64_at(bytes, 24),
            filter_len: u32_at(bytes, 32),
            entry_count: u64_at(bytes, 40),
            max_version: u64_at(bytes, 48),
        };
        // The writer lays out index, filter and footer back to back, each part page-aligned.
        let index_end = footer.index_offset.checked_add(footer.index_len.into());
        let filter_end = footer.filter_offset.checked_add(footer.filter_len.into());
        let consistent = footer.index_offset.is_multiple_of(ALIGNMENT as u64)
            && index_end.map(align_up) == Some(footer.filter_offset)
            && filter_end.map(|end| align_up(end + FOOTER_BYTES as u64)) == Some(file_bytes);
        if !consistent {
            return Err(corrupt(format!(
                "footer locates parts outside the file or out of order: {footer:?}"
            )));
        }
        Ok(footer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Footer {
        Footer {
            index_offset: 8192,
            index_len: 100,
            filter_offset: 12288,
            filter_len: 200,
            entry_count: 42,
            max_version: 7 << 40,
        }
    }

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        assert_eq!(Footer::decode(&out, "t", 0, 16384).unwrap(), sample());
    }

    #[test]
    fn rejects_flips_and_misplaced_parts() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        for bit in 0..FOOTER_BYTES * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(Footer::decode(&damaged, "t", 0, 16384).is_err(), "bit {bit}");
        }
        assert!(matches!(Footer::decode(&out, "t", 0, 20480), Err(StorageError::Corruption { .. })));
    }
}
