//! Point reads: [`Engine::get`] and [`Engine::get_entry`], which may await the disk, and
//! [`Engine::read_now`], which answers from memory or says a disk read is needed.

use super::{Engine, Versioned};
use crate::disk::Disk;
use crate::entry::Entry;
use crate::sstable::key_hash;
use crate::Result;

/// What [`Engine::read_now`] lends for `entry` at `now_ms`: its live value and version.
fn lent(entry: &Entry, now_ms: u64) -> Option<(&[u8], u64)> {
    entry.data_at(now_ms).map(|data| (&data[..], entry.version))
}

impl<D: Disk> Engine<D> {
    /// The live value of `key` at `now_ms`, if any.
    pub async fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Versioned>> {
        Ok(self.get_entry(key).await?.and_then(|entry| {
            entry.data_at(now_ms).map(|data| Versioned { value: data.clone(), version: entry.version })
        }))
    }

    /// [`Engine::get`] without waiting, when memory holds the answer (a memtable, or cached
    /// blocks of every table that may hold the key): the live value and its version are lent to
    /// `read`, whose result is returned; `None` when a block must be read from disk. A server
    /// answers hot reads this way in place, encoding the reply straight from the memtable, with
    /// no task started and no reference count touched.
    pub fn read_now<R>(
        &self,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(Option<(&[u8], u64)>) -> R,
    ) -> Option<Result<R>> {
        let state = self.state.borrow();
        let in_memtable =
            state.active.get(key).or_else(|| state.sealed.as_ref().and_then(|sealed| sealed.get(key)));
        if let Some(found) = in_memtable {
            return Some(Ok(read(lent(&found.entry, now_ms))));
        }
        let hash = key_hash(key);
        for table in state.tables.iter().rev() {
            match table.get_cached(key, hash)? {
                Ok(None) => continue,
                Ok(Some(entry)) => return Some(Ok(read(lent(&entry, now_ms)))),
                Err(error) => return Some(Err(error)),
            }
        }
        Some(Ok(read(None)))
    }

    /// The newest stored entry for `key`, tombstones and expired values included.
    pub async fn get_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        let tables = {
            let state = self.state.borrow();
            if let Some(found) = state.active.get(key) {
                return Ok(Some(found.entry.clone()));
            }
            if let Some(found) = state.sealed.as_ref().and_then(|sealed| sealed.get(key)) {
                return Ok(Some(found.entry.clone()));
            }
            state.tables.clone()
        };
        // Hash once for every table's filter.
        let hash = key_hash(key);
        for table in tables.iter().rev() {
            if let Some(entry) = table.get_with_hash(key, hash).await? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options};
    use super::super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use futures_executor::block_on;

    #[test]
    fn reads_its_writes_across_flush_compaction_and_reopen() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for index in 0..2000u32 {
                let value = Bytes::from(vec![index as u8; 40]);
                engine.put(key(index), value, index as u64 + 1, None).await.unwrap();
            }
            for index in (0..2000u32).step_by(3) {
                engine.delete(key(index), 10_000 + index as u64, 5).await.unwrap();
            }
            engine.flush().await.unwrap();
            while engine.compact(100).await.unwrap() {}
            assert!(engine.stats().tables >= 1);
            let check = |engine: Engine<MemDisk>| async move {
                for index in 0..2000u32 {
                    let found = engine.get(&key(index), 0).await.unwrap();
                    if index % 3 == 0 {
                        assert_eq!(found, None, "key {index} was deleted");
                    } else {
                        let found = found.unwrap_or_else(|| panic!("key {index} missing"));
                        assert_eq!(found.version, index as u64 + 1);
                        assert_eq!(found.value, Bytes::from(vec![index as u8; 40]));
                    }
                }
                engine
            };
            let engine = check(engine).await;
            drop(engine);
            let engine = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            let engine = check(engine).await;
            engine.compact_all(u64::MAX / 2).await.unwrap();
            check(engine).await;
        });
    }

    /// [`Engine::read_now`], copying out what it lends, to compare with [`Engine::get`].
    fn get_now(engine: &Engine<MemDisk>, key: &[u8], now_ms: u64) -> Option<Result<Option<Versioned>>> {
        engine.read_now(key, now_ms, |found| {
            found.map(|(value, version)| Versioned { value: Bytes::copy_from_slice(value), version })
        })
    }

    #[test]
    fn read_now_answers_from_memory_and_defers_disk_reads() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            for index in 0..500u32 {
                engine
                    .put(key(index), Bytes::from(vec![index as u8; 40]), u64::from(index) + 1, None)
                    .await
                    .unwrap();
            }
            engine.put(key(1000), Bytes::from_static(b"short-lived"), 2000, Some(50)).await.unwrap();
            engine.delete(key(7), 3000, 0).await.unwrap();
            engine.flush().await.unwrap();
            assert!(engine.stats().tables >= 1);
            // Reopened, nothing is cached: a key some table may hold needs a disk read.
            drop(engine);
            let engine = Engine::open(disk, small_options()).await.unwrap();
            assert!(get_now(&engine, &key(3), 0).is_none(), "the block is not cached yet");
            // Keys outside every table's range are answered without a read.
            assert_eq!(get_now(&engine, b"zzz", 0).unwrap().unwrap(), None);
            for index in 0..500u32 {
                let read = engine.get(&key(index), 0).await.unwrap();
                let now =
                    get_now(&engine, &key(index), 0).expect("the block was just read and cached").unwrap();
                assert_eq!(read, now, "key {index}");
            }
            assert_eq!(get_now(&engine, &key(7), 0).unwrap().unwrap(), None, "deleted");
            engine.get(&key(1000), 0).await.unwrap();
            assert!(get_now(&engine, &key(1000), 10).unwrap().unwrap().is_some());
            assert_eq!(get_now(&engine, &key(1000), 50).unwrap().unwrap(), None, "expired");
            // A write lands in the memtable, which answers before any table.
            engine.put(key(3), Bytes::from_static(b"new"), 5000, None).await.unwrap();
            let found = get_now(&engine, &key(3), 0).unwrap().unwrap().unwrap();
            assert_eq!((found.value, found.version), (Bytes::from_static(b"new"), 5000));
        });
    }
}
