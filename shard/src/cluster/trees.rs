//! [`RangeTrees`]: this shard's tictac trees, one per ring range this node replicates, kept
//! current on every write the shard applies, rebuilt from a token-range scan at start, when the
//! ring changes and periodically (which also catches data lost on disk); and when each range was
//! last repaired, which gates the purge of its tombstones.

use std::rc::Rc;

use bytes::Bytes;
use ringkv_io::DmaDisk;
use ringkv_replication::tictac::{TictacTree, TokenRange};
use ringkv_storage::{Engine, ScanRange};
use ringkv_wire::token::token;

/// Entries per scan page while rebuilding.
const REBUILD_PAGE_ENTRIES: usize = 1024;

/// The scans covering the tokens `first..=last` (wrapping past the top of the ring when
/// `last < first`).
pub fn token_scans(first: u64, last: u64) -> Vec<ScanRange> {
    let after = |token: u64| token.checked_add(1);
    if first <= last {
        vec![ScanRange::tokens(first, after(last))]
    } else {
        vec![ScanRange::tokens(first, None), ScanRange::tokens(0, after(last))]
    }
}

/// The scans covering a ring range `(start, end]`.
pub fn range_scans(range: TokenRange) -> Vec<ScanRange> {
    token_scans(range.start.wrapping_add(1), range.end)
}

/// One ring range as this shard tracks it.
#[derive(Debug)]
pub struct TrackedRange {
    pub range: TokenRange,
    /// The nodes holding the range, primary first.
    pub replicas: Vec<u16>,
    /// This shard's tree of the range, when this node is one of its replicas.
    pub tree: Option<TictacTree>,
    /// When anti-entropy last compared the range with every other replica and left nothing
    /// behind (this node's clock, ms); 0 if never since start.
    pub repaired_at_ms: u64,
}

/// This shard's trees.
#[derive(Debug, Default)]
pub struct RangeTrees {
    /// Every range of the ring, by end token.
    ranges: Vec<TrackedRange>,
}

impl RangeTrees {
    /// Trees for the ring `ranges` (each with its replicas); empty trees for the ranges
    /// `node_id` replicates, to be filled by [`RangeTrees::rebuild`].
    pub fn new(node_id: u16, ranges: Vec<(TokenRange, Vec<u16>)>) -> Self {
        let mut ranges: Vec<TrackedRange> = ranges
            .into_iter()
            .map(|(range, replicas)| TrackedRange {
                range,
                tree: replicas.contains(&node_id).then(|| TictacTree::new(range)),
                replicas,
                repaired_at_ms: 0,
            })
            .collect();
        ranges.sort_by_key(|tracked| tracked.range.end);
        RangeTrees { ranges }
    }

    /// Whether the ring layout (ranges and replicas) equals `ranges`.
    pub fn same_layout(&self, ranges: &[(TokenRange, Vec<u16>)]) -> bool {
        let mut sorted: Vec<&(TokenRange, Vec<u16>)> = ranges.iter().collect();
        sorted.sort_by_key(|(range, _)| range.end);
        sorted.len() == self.ranges.len()
            && sorted
                .iter()
                .zip(&self.ranges)
                .all(|((range, replicas), tracked)| *range == tracked.range && *replicas == tracked.replicas)
    }

    /// Every range tracked.
    pub fn ranges(&self) -> &[TrackedRange] {
        &self.ranges
    }

    fn index_of(&self, token: u64) -> Option<usize> {
        if self.ranges.is_empty() {
            return None;
        }
        let index = self.ranges.partition_point(|tracked| tracked.range.end < token);
        Some(if index == self.ranges.len() { 0 } else { index })
    }

    /// The tracked range holding `token`.
    pub fn range_of(&self, token: u64) -> Option<&TrackedRange> {
        self.index_of(token).map(|index| &self.ranges[index])
    }

    /// The tracked range equal to `range`.
    pub fn find(&self, range: TokenRange) -> Option<&TrackedRange> {
        self.index_of(range.end).map(|index| &self.ranges[index]).filter(|tracked| tracked.range == range)
    }

    /// The tracked range equal to `range`, to change its tree.
    pub fn find_mut(&mut self, range: TokenRange) -> Option<&mut TrackedRange> {
        let index = self.index_of(range.end)?;
        Some(&mut self.ranges[index]).filter(|tracked| tracked.range == range)
    }

    /// Records that `key` moved from version `old` to `new` on this shard.
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        let key_token = token(key);
        let Some(index) = self.index_of(key_token) else { return };
        if let Some(tree) = &mut self.ranges[index].tree {
            tree.update(key_token, key, old, new);
        }
    }

    /// Whether the range holding `token` was repaired at or after `since_ms`.
    pub fn repaired_since(&self, token: u64, since_ms: u64) -> bool {
        self.range_of(token).is_some_and(|tracked| tracked.repaired_at_ms >= since_ms)
    }

    /// Whether every range this shard replicates (there is at least one) was repaired at or
    /// after `since_ms`.
    pub fn all_repaired_since(&self, since_ms: u64) -> bool {
        let mut held = self.ranges.iter().filter(|tracked| tracked.tree.is_some()).peekable();
        held.peek().is_some() && held.all(|tracked| tracked.repaired_at_ms >= since_ms)
    }

    /// Records a successful repair of `range` at `now_ms`.
    pub fn repaired(&mut self, range: TokenRange, now_ms: u64) {
        if let Some(index) = self.index_of(range.end) {
            if self.ranges[index].range == range {
                self.ranges[index].repaired_at_ms = now_ms;
            }
        }
    }

    /// Whether a tombstone of `token`'s key, dead since `dead_since_ms`, may be purged: its range
    /// was repaired after the delete (past the grace period is the engine's own check).
    pub fn may_purge(&self, token: u64, dead_since_ms: u64) -> bool {
        self.range_of(token).is_some_and(|tracked| tracked.repaired_at_ms > dead_since_ms)
    }

    /// Replaces every tree with one rebuilt from a scan of the engine. Writes applied during
    /// the scan may be counted twice or missed in the new trees; a comparison then finds a
    /// segment that differs for nothing, and the next rebuild sets it right.
    pub async fn rebuild(
        trees: &std::cell::RefCell<RangeTrees>,
        engine: &Rc<Engine<DmaDisk>>,
        now_ms: u64,
    ) -> ringkv_storage::Result<usize> {
        let wanted: Vec<TokenRange> =
            trees.borrow().ranges.iter().filter(|tracked| tracked.tree.is_some()).map(|t| t.range).collect();
        let mut keys = 0usize;
        for range in wanted {
            let mut tree = TictacTree::new(range);
            for scan in range_scans(range) {
                let mut next = scan.clone();
                loop {
                    let page = engine.scan(&next, REBUILD_PAGE_ENTRIES, now_ms, true).await?;
                    for entry in &page.entries {
                        tree.insert(entry.token, &entry.key, entry.entry.version);
                        keys += 1;
                    }
                    match page.next {
                        Some(position) => next = scan.after(position),
                        None => break,
                    }
                    glommio::yield_if_needed().await;
                }
            }
            let mut trees = trees.borrow_mut();
            if let Some(index) = trees.index_of(range.end) {
                if trees.ranges[index].range == range && trees.ranges[index].tree.is_some() {
                    trees.ranges[index].tree = Some(tree);
                }
            }
        }
        Ok(keys)
    }
}

/// Lists the keys and versions this shard holds in `segments` of `range` (tombstones
/// included), at most `limit` keys; the flag says the list stopped early.
pub async fn list_segments(
    engine: &Rc<Engine<DmaDisk>>,
    range: TokenRange,
    segments: &[u16],
    now_ms: u64,
    mut room: impl FnMut(&[(Bytes, u64)], usize) -> bool,
) -> ringkv_storage::Result<(Vec<(Bytes, u64)>, bool)> {
    let mut keys = Vec::new();
    for &segment in segments {
        let Some((first, last)) = range.segment_tokens(usize::from(segment)) else { continue };
        for scan in token_scans(first, last) {
            let mut next = scan.clone();
            loop {
                let page = engine.scan(&next, REBUILD_PAGE_ENTRIES, now_ms, true).await?;
                for entry in page.entries {
                    if !room(&keys, entry.key.len()) {
                        return Ok((keys, true));
                    }
                    keys.push((entry.key, entry.entry.version));
                }
                match page.next {
                    Some(position) => next = scan.after(position),
                    None => break,
                }
            }
        }
    }
    Ok((keys, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_find_their_range_wrapping_at_the_top() {
        let ranges = vec![
            (TokenRange { start: 300, end: 100 }, vec![1, 2]),
            (TokenRange { start: 100, end: 200 }, vec![2, 3]),
            (TokenRange { start: 200, end: 300 }, vec![3, 1]),
        ];
        let trees = RangeTrees::new(1, ranges.clone());
        assert!(trees.same_layout(&ranges));
        assert_eq!(trees.range_of(150).unwrap().range.end, 200);
        assert_eq!(trees.range_of(200).unwrap().range.end, 200);
        assert_eq!(trees.range_of(301).unwrap().range.end, 100);
        assert_eq!(trees.range_of(5).unwrap().range.end, 100);
        assert!(trees.range_of(150).unwrap().tree.is_none(), "node 1 does not replicate (100, 200]");
        assert!(trees.range_of(250).unwrap().tree.is_some());
    }

    #[test]
    fn a_tombstone_is_purged_only_after_its_range_is_repaired() {
        let mut trees = RangeTrees::new(1, vec![(TokenRange { start: 7, end: 7 }, vec![1, 2])]);
        assert!(!trees.may_purge(42, 1_000));
        trees.repaired(TokenRange { start: 7, end: 7 }, 900);
        assert!(!trees.may_purge(42, 1_000), "repaired before the delete");
        trees.repaired(TokenRange { start: 7, end: 7 }, 1_100);
        assert!(trees.may_purge(42, 1_000));
    }

    #[test]
    fn a_lost_shard_counts_as_restored_once_every_range_it_holds_is_repaired() {
        let whole = TokenRange { start: 7, end: 7 };
        let mut trees = RangeTrees::new(
            1,
            vec![
                (TokenRange { start: 7, end: 100 }, vec![1, 2]),
                (TokenRange { start: 100, end: 7 }, vec![2, 3]),
            ],
        );
        assert!(!trees.all_repaired_since(1_000) && !trees.repaired_since(50, 1_000));
        trees.repaired(TokenRange { start: 7, end: 100 }, 999);
        assert!(!trees.repaired_since(50, 1_000), "repaired before the start");
        trees.repaired(TokenRange { start: 7, end: 100 }, 1_000);
        assert!(trees.repaired_since(50, 1_000));
        assert!(!trees.repaired_since(200, 1_000), "another node's range, never repaired here");
        assert!(trees.all_repaired_since(1_000), "the only range held here");
        assert!(!RangeTrees::new(1, vec![(whole, vec![2, 3])]).all_repaired_since(0), "holds nothing");
    }

    #[test]
    fn scans_of_a_wrapping_range_cover_both_ends() {
        assert_eq!(token_scans(5, 9).len(), 1);
        assert_eq!(token_scans(u64::MAX - 1, 3).len(), 2);
        assert_eq!(token_scans(0, u64::MAX), vec![ScanRange::tokens(0, None)]);
    }
}
