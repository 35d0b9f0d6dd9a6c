//! The manifest: which SSTables make up the engine, and how far the WAL is covered by them.
//!
//! The whole manifest is rewritten on every change (it is small: one line per table) into
//! `MANIFEST.tmp`, synced, renamed over `MANIFEST`, and the directory synced, so a crash leaves
//! either the old or the new version, never a mix.
//!
//! Format 2 (this one) means the engine's keys are stored token-prefixed (see [`crate::key`]):
//! a directory whose manifest has format 1 holds keys without their token, which this release
//! would misread, so it refuses to open it.
//!
//! ```text
//! magic u64 | format u32 | body_len u32 | crc32c(body) u32 | zero pad u32 | body | zero pad to 4 KiB
//! body: flushed_seq u64 | next_file_number u64 | table_count u32 |
//!       table_count × (id u64 | file_bytes u64 | entry_count u64 | smallest_len u16 | smallest | largest_len u16 | largest)
//! ```

use crate::disk::{align_up, Disk, DiskFile};
use crate::{Result, StorageError};
use bytes::{Buf, BufMut, Bytes};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Where a new manifest is written before it replaces the old one.
pub const MANIFEST_TEMPORARY_FILE: &str = "MANIFEST.tmp";
const MAGIC: u64 = 0x5249_4e47_4b56_4d46; // "RINGKVMF"
const FORMAT: u32 = 2;
/// The first format number ringkv wrote.
const EARLIER_FORMATS_START: u32 = 1;
const HEADER_BYTES: usize = 24;

/// File name of SSTable `id`.
pub fn table_file_name(id: u64) -> String {
    format!("{id:020}.sst")
}

/// The id of an SSTable file, if `name` is one.
pub fn parse_table_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".sst")?.parse().ok()
}

/// One table as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRecord {
    /// File number of the table.
    pub id: u64,
    /// Size of its file.
    pub file_bytes: u64,
    /// Entries it holds.
    pub entry_count: u64,
    /// Its smallest key.
    pub smallest_key: Bytes,
    /// Its largest key.
    pub largest_key: Bytes,
}

/// The engine's durable table list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Every write with a sequence number at or below this is in the tables.
    pub flushed_seq: u64,
    /// No file number below this is free.
    pub next_file_number: u64,
    /// Tables, oldest first.
    pub tables: Vec<TableRecord>,
}

impl Manifest {
    /// The encoded manifest, padded to the write alignment.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.put_u64_le(self.flushed_seq);
        body.put_u64_le(self.next_file_number);
        body.put_u32_le(self.tables.len() as u32);
        for table in &self.tables {
            body.put_u64_le(table.id);
            body.put_u64_le(table.file_bytes);
            body.put_u64_le(table.entry_count);
            for key in [&table.smallest_key, &table.largest_key] {
                body.put_u16_le(key.len() as u16);
                body.put_slice(key);
            }
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.put_u64_le(MAGIC);
        out.put_u32_le(FORMAT);
        out.put_u32_le(body.len() as u32);
        out.put_u32_le(crc32c::crc32c(&body));
        out.put_u32_le(0);
        out.extend_from_slice(&body);
        out.resize(align_up(out.len() as u64) as usize, 0);
        out
    }

    /// Decodes a manifest, verifying its checksum.
    pub fn decode(buf: &[u8]) -> Result<Manifest> {
        let corrupt = |reason: &str| StorageError::corruption(MANIFEST_FILE, 0, reason.to_string());
        if buf.len() < HEADER_BYTES {
            return Err(corrupt("manifest shorter than its header"));
        }
        let mut header = &buf[..HEADER_BYTES];
        if header.get_u64_le() != MAGIC {
            return Err(corrupt("bad magic number"));
        }
        // The header is outside the checksum: only a format ringkv once wrote is reported as
        // such; any other value is damage.
        match header.get_u32_le() {
            FORMAT => {}
            found @ EARLIER_FORMATS_START..FORMAT => {
                return Err(StorageError::UnsupportedFormat {
                    file: MANIFEST_FILE.to_string(),
                    found,
                    supported: FORMAT,
                })
            }
            _ => return Err(corrupt("unknown manifest format")),
        }
        let body_len = header.get_u32_le() as usize;
        let expected = header.get_u32_le();
        if header.get_u32_le() != 0 {
            return Err(corrupt("reserved header field is not zero"));
        }
        let body =
            buf.get(HEADER_BYTES..HEADER_BYTES + body_len).ok_or_else(|| corrupt("manifest truncated"))?;
        let actual = crc32c::crc32c(body);
        if actual != expected {
            return Err(StorageError::ChecksumMismatch {
                file: MANIFEST_FILE.to_string(),
                offset: 0,
                expected,
                actual,
            });
        }
        let truncated = || corrupt("manifest body truncated");
        let mut body = body;
        if body.remaining() < 20 {
            return Err(truncated());
        }
        let flushed_seq = body.get_u64_le();
        let next_file_number = body.get_u64_le();
        let count = body.get_u32_le() as usize;
        let mut tables = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            if body.remaining() < 24 {
                return Err(truncated());
            }
            let id = body.get_u64_le();
            let file_bytes = body.get_u64_le();
            let entry_count = body.get_u64_le();
            let mut keys = [Bytes::new(), Bytes::new()];
            for key in &mut keys {
                if body.remaining() < 2 {
                    return Err(truncated());
                }
                let len = body.get_u16_le() as usize;
                if body.remaining() < len {
                    return Err(truncated());
                }
                *key = Bytes::copy_from_slice(&body[..len]);
                body.advance(len);
            }
            let [smallest_key, largest_key] = keys;
            tables.push(TableRecord { id, file_bytes, entry_count, smallest_key, largest_key });
        }
        Ok(Manifest { flushed_seq, next_file_number, tables })
    }

    /// Reads the manifest of `disk`, or `None` if there is none yet.
    pub async fn read<D: Disk>(disk: &D) -> Result<Option<Manifest>> {
        let names = disk.list().await.map_err(|error| StorageError::io("list", ".", error))?;
        if !names.iter().any(|name| name == MANIFEST_FILE) {
            return Ok(None);
        }
        let io = |op| move |error| StorageError::io(op, MANIFEST_FILE, error);
        let file = disk.open(MANIFEST_FILE).await.map_err(io("open"))?;
        let size = file.size().await.map_err(io("size"))?;
        let buf = file.read_at(0, size as usize).await.map_err(io("read"))?;
        Manifest::decode(&buf).map(Some)
    }

    /// Atomically replaces the manifest of `disk` with `self`. When this resolves `Ok`, the new
    /// manifest is durable.
    pub async fn write<D: Disk>(&self, disk: &D) -> Result<()> {
        let io = |op, file: &'static str| move |error| StorageError::io(op, file, error);
        let names = disk.list().await.map_err(io("list", "."))?;
        if names.iter().any(|name| name == MANIFEST_TEMPORARY_FILE) {
            disk.remove(MANIFEST_TEMPORARY_FILE).await.map_err(io("remove", MANIFEST_TEMPORARY_FILE))?;
        }
        let file =
            disk.create(MANIFEST_TEMPORARY_FILE).await.map_err(io("create", MANIFEST_TEMPORARY_FILE))?;
        file.write_at(0, &self.encode()).await.map_err(io("write", MANIFEST_TEMPORARY_FILE))?;
        file.sync().await.map_err(io("fdatasync", MANIFEST_TEMPORARY_FILE))?;
        drop(file);
        disk.rename(MANIFEST_TEMPORARY_FILE, MANIFEST_FILE)
            .await
            .map_err(io("rename", MANIFEST_TEMPORARY_FILE))?;
        disk.sync_dir().await.map_err(io("fsync directory after renaming", MANIFEST_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use futures_executor::block_on;

    fn sample() -> Manifest {
        Manifest {
            flushed_seq: 99,
            next_file_number: 12,
            tables: vec![TableRecord {
                id: 7,
                file_bytes: 8192,
                entry_count: 3,
                smallest_key: Bytes::from_static(b"a"),
                largest_key: Bytes::from_static(b"zz"),
            }],
        }
    }

    #[test]
    fn survives_crash_after_write_and_detects_bit_flips() {
        block_on(async {
            let disk = MemDisk::new();
            assert_eq!(Manifest::read(&disk).await.unwrap(), None);
            sample().write(&disk).await.unwrap();
            let after = disk.crash(CrashMode::DropUnsynced);
            assert_eq!(Manifest::read(&after).await.unwrap(), Some(sample()));
            after.flip_bit(MANIFEST_FILE, HEADER_BYTES as u64 + 3, 1).unwrap();
            assert!(Manifest::read(&after).await.is_err());
        });
    }

    #[test]
    fn refuses_a_directory_of_the_earlier_key_layout() {
        let mut encoded = sample().encode();
        encoded[8..12].copy_from_slice(&1u32.to_le_bytes());
        let error = Manifest::decode(&encoded).unwrap_err();
        assert!(matches!(error, StorageError::UnsupportedFormat { found: 1, supported: 2, .. }), "{error}");
        assert!(error.to_string().contains("another release"), "{error}");
    }

    #[test]
    fn rejects_every_truncation() {
        let encoded = sample().encode();
        let real_len = HEADER_BYTES + 20 + 24 + 2 + 1 + 2 + 2;
        for cut in 0..real_len {
            assert!(Manifest::decode(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }
}
