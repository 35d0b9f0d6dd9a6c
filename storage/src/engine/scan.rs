//! Paged scans in token order: the engine stores keys as `token ‖ key` ([`crate::key`]), so a
//! range of positions, a vnode's token range say, is one contiguous range of every memtable and
//! table. Where sources hold the same key, the highest-ranking entry is the key's
//! ([`Entry::cmp_precedence`]), as for point reads.
//!
//! A page ends with a cursor, [`ScanPage::next`]: the position of the last entry it looked at.
//! Scanning [`ScanRange::after`] it resumes exactly there, so paging neither skips nor repeats a
//! key that is present throughout, whatever is written meanwhile.

use super::Engine;
use crate::disk::Disk;
use crate::entry::Entry;
use crate::key::{self, Position};
use crate::memtable::Memtable;
use crate::{Result, StorageError};
use bytes::Bytes;
use std::collections::btree_map::Entry as Slot;
use std::collections::BTreeMap;
use std::ops::Bound;

/// What a scan covers: the positions from `start` to `end`, in token order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRange {
    pub start: Bound<Position>,
    pub end: Bound<Position>,
}

impl ScanRange {
    /// Every key.
    pub fn all() -> Self {
        ScanRange { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// The keys whose tokens lie in `start_token..end_token`, or from `start_token` through the
    /// last token when `end_token` is `None` (a range that wraps past the top of the ring is two
    /// scans).
    pub fn tokens(start_token: u64, end_token: Option<u64>) -> Self {
        ScanRange {
            start: Bound::Included(Position::of_token(start_token)),
            end: end_token.map_or(Bound::Unbounded, |end| Bound::Excluded(Position::of_token(end))),
        }
    }

    /// The rest of this range after `cursor`, a page's [`ScanPage::next`].
    pub fn after(&self, cursor: Position) -> Self {
        ScanRange { start: Bound::Excluded(cursor), end: self.end.clone() }
    }

    /// Whether no key can lie in the range.
    pub fn is_empty(&self) -> bool {
        range_is_empty(&stored(&self.start), &stored(&self.end))
    }
}

/// One entry a scan found: the key's token, the key and its stored state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub token: u64,
    pub key: Bytes,
    pub entry: Entry,
}

impl ScanEntry {
    /// Where the entry is in scan order.
    pub fn position(&self) -> Position {
        Position { token: self.token, key: self.key.clone() }
    }
}

/// One page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in token order (then key order within a token).
    pub entries: Vec<ScanEntry>,
    /// When set, more entries may follow: the next page is the range [`ScanRange::after`] this
    /// position, which is that of the last entry the page looked at (the last one returned,
    /// or a dead one passed over).
    pub next: Option<Position>,
}

/// A bound on positions as a bound on stored keys.
fn stored(bound: &Bound<Position>) -> Bound<Bytes> {
    bound.as_ref().map(Position::stored)
}

/// Keeps the higher-ranking of what `merged` holds for `key` and `entry`.
fn keep_newest(merged: &mut BTreeMap<Bytes, Entry>, key: Bytes, entry: Entry) {
    match merged.entry(key) {
        Slot::Vacant(slot) => {
            slot.insert(entry);
        }
        Slot::Occupied(mut slot) => {
            if entry.supersedes(slot.get()) {
                slot.insert(entry);
            }
        }
    }
}

/// True when no key lies between `start` and `end`.
fn range_is_empty(start: &Bound<Bytes>, end: &Bound<Bytes>) -> bool {
    match (start, end) {
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Included(start) | Bound::Excluded(start), Bound::Included(end) | Bound::Excluded(end)) => {
            start >= end
        }
        _ => false,
    }
}

/// The position of a stored key.
fn position_of(stored: &Bytes) -> Result<Position> {
    let (token, key) = key::split(stored).ok_or_else(|| {
        StorageError::corruption(
            "scan",
            0,
            format!("stored key {stored:?} is too short to hold a token and a key"),
        )
    })?;
    Ok(Position { token, key })
}

/// [`Engine::scan`]'s page when the active memtable is the only source (no sealed memtable, no
/// table): the same page the merge would give, without copying every key into a map first.
fn one_memtable_page(
    memtable: &Memtable,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    limit: usize,
    now_ms: u64,
    include_dead: bool,
    newest_seq: &mut u64,
) -> Result<ScanPage> {
    let mut page = ScanPage::default();
    let mut last_examined: Option<&[u8]> = None;
    let mut cut = false;
    for (taken, (stored, mem_entry)) in memtable.range(start, end).enumerate() {
        if taken == limit {
            cut = true;
            break;
        }
        *newest_seq = (*newest_seq).max(mem_entry.seq);
        last_examined = Some(stored);
        if mem_entry.entry.is_absent_at(now_ms) && !include_dead {
            continue;
        }
        let Position { token, key } = position_of(&Bytes::copy_from_slice(stored))?;
        page.entries.push(ScanEntry { token, key, entry: mem_entry.entry.clone() });
    }
    let more = page.entries.len() == limit || cut;
    page.next = match last_examined {
        Some(last)
            if more
                && !range_is_empty(
                    &Bound::Excluded(Bytes::copy_from_slice(last)),
                    &end.map(Bytes::copy_from_slice),
                ) =>
        {
            Some(position_of(&Bytes::copy_from_slice(last))?)
        }
        _ => None,
    };
    Ok(page)
}

impl<D: Disk> Engine<D> {
    /// One page of the entries in `range`, in token order, at most `limit` of them. Dead
    /// entries (tombstones, expired values at `now_ms`) are skipped unless `include_dead`, which
    /// replication uses to stream deletes. Continue with [`ScanRange::after`] the page's
    /// [`ScanPage::next`]; it is `None` once the range is finished.
    ///
    /// Resolves once what the page shows is durable: a memtable entry it looked at may wait for
    /// its group commit (see [`super::Unsettled`]).
    pub async fn scan(
        &self,
        range: &ScanRange,
        limit: usize,
        now_ms: u64,
        include_dead: bool,
    ) -> Result<ScanPage> {
        // The newest WAL record among the memtable entries the page looked at.
        let mut newest_seq = 0;
        let page = self.scan_page(range, limit, now_ms, include_dead, &mut newest_seq).await?;
        if let Some(unsettled) = self.unsettled(newest_seq) {
            self.settled(unsettled).await?;
        }
        Ok(page)
    }

    /// [`Engine::scan`]'s page, as memory and the tables hold it now; `newest_seq` is raised to
    /// the newest record among the memtable entries it looked at.
    async fn scan_page(
        &self,
        range: &ScanRange,
        limit: usize,
        now_ms: u64,
        include_dead: bool,
        newest_seq: &mut u64,
    ) -> Result<ScanPage> {
        assert!(limit > 0, "a scan page holds at least one entry");
        let (start, end) = (stored(&range.start), stored(&range.end));
        if range_is_empty(&start, &end) {
            return Ok(ScanPage::default());
        }
        fn as_slice(bound: &Bound<Bytes>) -> Bound<&[u8]> {
            bound.as_ref().map(|key| &key[..])
        }
        let in_end = |key: &[u8]| match &end {
            Bound::Included(end) => key <= &end[..],
            Bound::Excluded(end) => key < &end[..],
            Bound::Unbounded => true,
        };
        {
            let state = self.state.borrow();
            if state.sealed.is_none() && state.tables.is_empty() {
                // One source, nothing to merge: the page is the memtable's range as it is.
                return one_memtable_page(
                    &state.active,
                    as_slice(&start),
                    as_slice(&end),
                    limit,
                    now_ms,
                    include_dead,
                    newest_seq,
                );
            }
        }
        // Every source contributes at most `limit` entries (dead ones included, since they hide
        // older values); the page is complete only below the first key a source cut short did
        // not deliver.
        let mut merged: BTreeMap<Bytes, Entry> = BTreeMap::new();
        let mut complete_below: Option<Bytes> = None;
        let cut_at = |key: &[u8], complete_below: &mut Option<Bytes>| {
            if complete_below.as_ref().is_none_or(|below| key < &below[..]) {
                *complete_below = Some(Bytes::copy_from_slice(key));
            }
        };
        let tables = {
            let state = self.state.borrow();
            let memtables = std::iter::once(&state.active).chain(state.sealed.as_deref());
            for memtable in memtables {
                for (taken, (key, mem_entry)) in memtable.range(as_slice(&start), as_slice(&end)).enumerate()
                {
                    if taken == limit {
                        cut_at(key, &mut complete_below);
                        break;
                    }
                    *newest_seq = (*newest_seq).max(mem_entry.seq);
                    keep_newest(&mut merged, Bytes::copy_from_slice(key), mem_entry.entry.clone());
                }
            }
            state.tables.clone()
        };
        for table in tables.iter().rev() {
            let seek = match &start {
                Bound::Included(key) | Bound::Excluded(key) => Some(&key[..]),
                Bound::Unbounded => None,
            };
            let mut iter = table.iter(seek, true);
            let mut taken = 0;
            while let Some((key, entry)) = iter.next().await? {
                if matches!(&start, Bound::Excluded(excluded) if key == excluded) {
                    continue;
                }
                if !in_end(&key) {
                    break;
                }
                if taken == limit {
                    cut_at(&key, &mut complete_below);
                    break;
                }
                keep_newest(&mut merged, key, entry);
                taken += 1;
            }
        }
        let mut page = ScanPage::default();
        let mut last_examined: Option<Bytes> = None;
        for (key, entry) in merged {
            if page.entries.len() == limit || complete_below.as_ref().is_some_and(|below| key >= *below) {
                break;
            }
            let dead = entry.is_absent_at(now_ms);
            last_examined = Some(key.clone());
            if dead && !include_dead {
                continue;
            }
            let Position { token, key } = position_of(&key)?;
            page.entries.push(ScanEntry { token, key, entry });
        }
        // A full page may have more after it; so may one whose sources were cut short, past the
        // last entry it looked at (every key below where they were cut has been seen).
        let more = page.entries.len() == limit || complete_below.is_some();
        page.next = match last_examined {
            Some(last) if more && !range_is_empty(&Bound::Excluded(last.clone()), &end) => {
                Some(position_of(&last)?)
            }
            _ => None,
        };
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, small_options, written_now};
    use super::super::*;
    use crate::disk::memory::{CrashMode, MemDisk};
    use crate::entry::Entry;
    use crate::key::Position;
    use futures_executor::block_on;

    #[test]
    fn a_scan_shows_only_what_is_durable() {
        block_on(async {
            let disk = MemDisk::new();
            let engine = Engine::open(disk.clone(), small_options()).await.unwrap();
            engine.put(key(1), Bytes::from_static(b"one"), 1, None).await.unwrap();
            // Applied in memory, not yet durable; then a deletion of the first key likewise.
            let _put = written_now(&engine, &key(2), |_| Entry::live(2, Bytes::from_static(b"two"), None));
            let _delete = written_now(&engine, &key(1), |_| Entry::tombstone(3, 0));
            assert!(engine.wal.durable_seq() < engine.wal.appended_seq());
            let page = engine.scan(&ScanRange::all(), 10, 0, false).await.unwrap();
            let keys: Vec<Bytes> = page.entries.into_iter().map(|entry| entry.key).collect();
            assert_eq!(keys, vec![key(2)]);
            // The page waited for the group commit of what it showed: a crash now keeps it.
            assert_eq!(engine.wal.durable_seq(), engine.wal.appended_seq());
            let recovered = Engine::open(disk.crash(CrashMode::DropUnsynced), small_options()).await.unwrap();
            assert_eq!(recovered.get(&key(1), 0).await.unwrap(), None);
            assert_eq!(recovered.get(&key(2), 0).await.unwrap().map(|found| found.version), Some(2));
        });
    }

    #[test]
    fn scan_pages_through_everything_in_token_order() {
        block_on(async {
            let engine = Engine::open(MemDisk::new(), small_options()).await.unwrap();
            for index in 0..500u32 {
                engine.put(key(index), Bytes::from_static(b"value"), 1, None).await.unwrap();
                if index % 7 == 0 {
                    engine.delete(key(index), 2, 0).await.unwrap();
                }
                if index == 250 {
                    engine.flush().await.unwrap();
                }
            }
            // Tokens from a quarter to three quarters of the ring, in pages of 13.
            let range = ScanRange::tokens(u64::MAX / 4, Some(u64::MAX / 4 * 3));
            let mut seen = Vec::new();
            let mut next = range.clone();
            loop {
                let page = engine.scan(&next, 13, 0, false).await.unwrap();
                assert!(page.entries.len() <= 13);
                seen.extend(page.entries.iter().map(ScanEntry::position));
                match page.next {
                    Some(cursor) => next = range.after(cursor),
                    None => break,
                }
            }
            let mut expected: Vec<Position> = (0..500u32)
                .filter(|index| index % 7 != 0)
                .map(|index| Position::of_key(key(index)))
                .filter(|position| (u64::MAX / 4..u64::MAX / 4 * 3).contains(&position.token))
                .collect();
            expected.sort();
            assert!(expected.len() > 150, "a good share of the keys: {}", expected.len());
            assert_eq!(seen, expected);
            // With the deletes, and all of the ring in one page.
            let everything = engine.scan(&ScanRange::all(), 1000, 0, true).await.unwrap();
            assert_eq!(everything.entries.len(), 500);
            assert_eq!(everything.next, None);
            assert!(everything.entries.windows(2).all(|pair| pair[0].position() < pair[1].position()));
            assert!(everything
                .entries
                .iter()
                .all(|entry| entry.token == ringkv_wire::token::token(&entry.key)));
        });
    }
}
