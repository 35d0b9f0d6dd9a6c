//! [`TictacTree`]: an incremental Merkle tree of one token range's keys and versions, the tictac
//! tree of Riak 3's anti-entropy (kv_index_tictactree).
//!
//! A leaf (a *segment*) is the XOR of `hash(key, version)` over the keys whose tokens fall in
//! it. XOR makes the tree incremental and mergeable:
//!
//! - a write that moves a key from version `old` to `new` updates one leaf with
//!   `leaf ^= h(key, old) ^ h(key, new)`, with no read of the other keys;
//! - the tree of a set of keys is the XOR of the trees of any partition of it, so trees built
//!   apart (per shard, per scan page) merge by XOR.
//!
//! ```text
//!   root (1 × u64) = XOR of the branches
//!   branches (64 × u64), branch b = XOR of segments 64·b .. 64·b + 63
//!   segments (4,096 × u64), segment s = XOR of hash(key, version) over its keys
//! ```
//!
//! Segments cut the range `(start, end]` into 4,096 slices of equal token width, in token order,
//! so the keys of one segment are one contiguous scan of the storage engine (keys are stored
//! `token ‖ key`): listing a differing segment's keys reads only that slice. 64 × 64 is the
//! size Riak uses: 32 KiB per range, an exchange of a clean range costs one root (8 bytes), and
//! with 1% of a 20,000-key range diverged about 200 segments differ, each holding about five
//! keys, so the key lists exchanged stay small. See docs/ARCHITECTURE.md.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Branches under the root.
pub const BRANCHES: usize = 64;
/// Segments under each branch.
pub const SEGMENTS_PER_BRANCH: usize = 64;
/// Segments (leaves) per tree.
pub const SEGMENTS: usize = BRANCHES * SEGMENTS_PER_BRANCH;

const _: () = assert!(SEGMENTS.is_power_of_two());

/// Seed of the entry hash. Fixed: trees are compared between processes and machines (never
/// ahash, whose output changes between them).
const TICTAC_SEED: u64 = 0x7469_6374_6163_0001;

/// The hash of one key at one version, as leaves hold it.
pub fn entry_hash(key: &[u8], version: u64) -> u64 {
    // The version goes through the seed so that no allocation joins key and version; xxh3
    // mixes its seed into every output bit.
    let hash = xxh3_64_with_seed(key, TICTAC_SEED ^ version.rotate_left(17));
    // Zero would vanish from a leaf as if the key were absent; map it elsewhere.
    if hash == 0 {
        1
    } else {
        hash
    }
}

/// A token range `(start, end]` of the ring; `start == end` is the whole ring (a ring of one
/// token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenRange {
    pub start: u64,
    pub end: u64,
}

impl TokenRange {
    /// Tokens in the range, as a 65-bit count.
    pub fn width(&self) -> u128 {
        if self.start == self.end {
            1u128 << 64
        } else {
            u128::from(self.end.wrapping_sub(self.start))
        }
    }

    /// Whether `token` lies in the range.
    pub fn contains(&self, token: u64) -> bool {
        let offset = u128::from(token.wrapping_sub(self.start).wrapping_sub(1));
        offset < self.width()
    }

    /// The segment of `token`, which must lie in the range.
    pub fn segment_of(&self, token: u64) -> usize {
        debug_assert!(self.contains(token));
        let offset = u128::from(token.wrapping_sub(self.start).wrapping_sub(1));
        (offset * SEGMENTS as u128 / self.width()) as usize
    }

    /// The tokens of segment `segment`: the first token and the last, both inclusive, or `None`
    /// when the segment is empty (a range narrower than [`SEGMENTS`] tokens).
    pub fn segment_tokens(&self, segment: usize) -> Option<(u64, u64)> {
        assert!(segment < SEGMENTS, "segment {segment} out of range");
        let width = self.width();
        // Offset o lies in segment s when s = floor(o · SEGMENTS / width), i.e. o in
        // [ceil(s · width / SEGMENTS), ceil((s + 1) · width / SEGMENTS)).
        let first = (segment as u128 * width).div_ceil(SEGMENTS as u128);
        let after = ((segment as u128 + 1) * width).div_ceil(SEGMENTS as u128);
        if first >= after {
            return None;
        }
        let token_at = |offset: u128| self.start.wrapping_add(1).wrapping_add(offset as u64);
        Some((token_at(first), token_at(after - 1)))
    }
}

/// The difference between two trees: the segments whose hashes differ.
pub fn differing(mine: &[u64], theirs: &[u64]) -> Vec<usize> {
    assert_eq!(mine.len(), theirs.len(), "hash lists of different lengths");
    mine.iter().zip(theirs).enumerate().filter(|(_, (a, b))| a != b).map(|(index, _)| index).collect()
}

/// An incremental Merkle tree of the keys of one token range.
#[derive(Clone, PartialEq, Eq)]
pub struct TictacTree {
    range: TokenRange,
    segments: Box<[u64]>,
    branches: [u64; BRANCHES],
    root: u64,
}

impl std::fmt::Debug for TictacTree {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TictacTree")
            .field("range", &self.range)
            .field("root", &format_args!("{:#018x}", self.root))
            .finish()
    }
}

impl TictacTree {
    /// The tree of an empty range.
    pub fn new(range: TokenRange) -> Self {
        TictacTree { range, segments: vec![0; SEGMENTS].into_boxed_slice(), branches: [0; BRANCHES], root: 0 }
    }

    /// The range.
    pub fn range(&self) -> TokenRange {
        self.range
    }

    /// The root hash: equal roots mean (up to a 64-bit collision) equal keys and versions.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The 64 branch hashes.
    pub fn branches(&self) -> &[u64; BRANCHES] {
        &self.branches
    }

    /// The 64 segment hashes of branch `branch`.
    pub fn branch_segments(&self, branch: usize) -> &[u64] {
        &self.segments[branch * SEGMENTS_PER_BRANCH..(branch + 1) * SEGMENTS_PER_BRANCH]
    }

    /// One segment's hash.
    pub fn segment(&self, segment: usize) -> u64 {
        self.segments[segment]
    }

    fn flip(&mut self, segment: usize, delta: u64) {
        self.segments[segment] ^= delta;
        self.branches[segment / SEGMENTS_PER_BRANCH] ^= delta;
        self.root ^= delta;
    }

    /// Records that `key` (whose token is `token`, inside the range) moved from version `old`
    /// to version `new` (`None`: absent).
    pub fn update(&mut self, token: u64, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let delta = old.map_or(0, |version| entry_hash(key, version))
            ^ new.map_or(0, |version| entry_hash(key, version));
        self.flip(self.range.segment_of(token), delta);
    }

    /// Adds a key that was absent (a rebuild from a scan).
    pub fn insert(&mut self, token: u64, key: &[u8], version: u64) {
        self.update(token, key, None, Some(version));
    }

    /// Sets the hashes of `segments` to what `entries` (every key of those segments, as
    /// `(token, key, version)`, the way the shard holds them now) make, whatever the tree held:
    /// a tree that drifted from its data (a write missed while the tree was rebuilt from a
    /// scan) is set right wherever an exchange lists keys. Entries outside `segments` are
    /// ignored.
    pub fn reset_segments<K: AsRef<[u8]>>(
        &mut self,
        segments: &[usize],
        entries: impl IntoIterator<Item = (u64, K, u64)>,
    ) {
        // Every segment's hash from the entries, by segment number: one pass over the entries,
        // however many segments are listed.
        let mut hashes = vec![0u64; SEGMENTS];
        for (token, key, version) in entries {
            if self.range.contains(token) {
                hashes[self.range.segment_of(token)] ^= entry_hash(key.as_ref(), version);
            }
        }
        for &segment in segments {
            let delta = self.segments[segment] ^ hashes[segment];
            if delta != 0 {
                self.flip(segment, delta);
            }
        }
    }

    /// Merges `other`, a tree of the same range over disjoint keys, into this one.
    pub fn merge(&mut self, other: &TictacTree) {
        assert_eq!(self.range, other.range, "trees of different ranges do not merge");
        for (segment, hash) in other.segments.iter().enumerate() {
            if *hash != 0 {
                self.flip(segment, *hash);
            }
        }
    }

    /// The segments of the branches `branches` that differ from `theirs`, the peer's segment
    /// hashes of those same branches (64 per branch, in order).
    pub fn differing_segments(&self, branches: &[usize], theirs: &[u64]) -> Vec<usize> {
        assert_eq!(theirs.len(), branches.len() * SEGMENTS_PER_BRANCH, "64 segments per branch");
        let mut found = Vec::new();
        for (position, &branch) in branches.iter().enumerate() {
            let their_segments =
                &theirs[position * SEGMENTS_PER_BRANCH..(position + 1) * SEGMENTS_PER_BRANCH];
            for offset in differing(self.branch_segments(branch), their_segments) {
                found.push(branch * SEGMENTS_PER_BRANCH + offset);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ringkv_wire::token::token;

    const WHOLE: TokenRange = TokenRange { start: 5, end: 5 };

    fn key(index: u32) -> Vec<u8> {
        format!("key-{index}").into_bytes()
    }

    fn tree_of(range: TokenRange, keys: &[(Vec<u8>, u64)]) -> TictacTree {
        let mut tree = TictacTree::new(range);
        for (key, version) in keys {
            tree.insert(token(key), key, *version);
        }
        tree
    }

    #[test]
    fn resetting_segments_sets_a_drifted_tree_right() {
        let keys: Vec<(Vec<u8>, u64)> = (0..300).map(|index| (key(index), 10 + index as u64)).collect();
        let mut truth = TictacTree::new(WHOLE);
        for (key, version) in &keys {
            truth.insert(token(key), key, *version);
        }
        // A tree that missed one key and holds another at a stale version.
        let mut drifted = TictacTree::new(WHOLE);
        for (index, (key, version)) in keys.iter().enumerate().skip(1) {
            let version = if index == 7 { version + 100 } else { *version };
            drifted.insert(token(key), key, version);
        }
        assert_ne!(drifted.root(), truth.root());
        let segments: Vec<usize> =
            [0, 7].iter().map(|&index| WHOLE.segment_of(token(&keys[index].0))).collect();
        // Every key listed (those outside the two segments are ignored).
        drifted.reset_segments(&segments, keys.iter().map(|(key, version)| (token(key), key, *version)));
        assert_eq!(drifted.root(), truth.root());
        assert_eq!(drifted.branches(), truth.branches());
    }

    #[test]
    fn incremental_updates_match_a_rebuild() {
        let mut tree = TictacTree::new(WHOLE);
        let mut state: Vec<(Vec<u8>, u64)> = (0..500).map(|index| (key(index), 10)).collect();
        for (key, version) in &state {
            tree.insert(token(key), key, *version);
        }
        for (index, (key, version)) in state.iter_mut().enumerate().step_by(7) {
            let new = 20 + index as u64;
            tree.update(token(key), key, Some(*version), Some(new));
            *version = new;
        }
        assert_eq!(tree, tree_of(WHOLE, &state));
        assert_ne!(tree.root(), 0);
        // Removing every key leaves the empty tree.
        for (key, version) in &state {
            tree.update(token(key), key, Some(*version), None);
        }
        assert_eq!(tree, TictacTree::new(WHOLE));
    }

    #[test]
    fn trees_merge_by_xor() {
        let keys: Vec<(Vec<u8>, u64)> = (0..300).map(|index| (key(index), u64::from(index))).collect();
        let (left, right) = keys.split_at(120);
        let mut merged = tree_of(WHOLE, left);
        merged.merge(&tree_of(WHOLE, right));
        assert_eq!(merged, tree_of(WHOLE, &keys));
    }

    #[test]
    fn comparison_finds_exactly_the_changed_segments() {
        let keys: Vec<(Vec<u8>, u64)> = (0..2_000).map(|index| (key(index), 1)).collect();
        let mine = tree_of(WHOLE, &keys);
        let mut changed = keys.clone();
        changed[17].1 = 2;
        changed.remove(900);
        let theirs = tree_of(WHOLE, &changed);
        assert_ne!(mine.root(), theirs.root());
        let branches = differing(mine.branches(), theirs.branches());
        let their_segments: Vec<u64> =
            branches.iter().flat_map(|&branch| theirs.branch_segments(branch).to_vec()).collect();
        let mut segments = mine.differing_segments(&branches, &their_segments);
        segments.sort_unstable();
        let mut expected = vec![WHOLE.segment_of(token(&keys[17].0)), WHOLE.segment_of(token(&keys[900].0))];
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(segments, expected);
    }

    #[test]
    fn segments_tile_a_wrapping_range_in_token_order() {
        let range = TokenRange { start: u64::MAX - 10_000, end: 50_000 };
        let mut next = range.start.wrapping_add(1);
        for segment in 0..SEGMENTS {
            let (first, last) = range.segment_tokens(segment).expect("wide enough");
            assert_eq!(first, next, "segment {segment} starts where the previous ended");
            assert_eq!(range.segment_of(first), segment);
            assert_eq!(range.segment_of(last), segment);
            next = last.wrapping_add(1);
        }
        assert_eq!(next, range.end.wrapping_add(1));
        assert!(range.contains(range.end) && !range.contains(range.start));
    }

    #[test]
    fn a_narrow_range_has_empty_segments() {
        let range = TokenRange { start: 100, end: 110 };
        let filled = (0..SEGMENTS).filter(|&segment| range.segment_tokens(segment).is_some()).count();
        assert_eq!(filled, 10);
        for token in 101..=110 {
            let segment = range.segment_of(token);
            let (first, last) = range.segment_tokens(segment).unwrap();
            assert!((first..=last).contains(&token));
        }
    }

    proptest! {
        #[test]
        fn every_token_of_a_range_lands_in_the_segment_that_lists_it(
            start in any::<u64>(), width in 1u64..u64::MAX, pick in any::<u64>()
        ) {
            let range = TokenRange { start, end: start.wrapping_add(width) };
            let token = start.wrapping_add(1).wrapping_add(pick % width);
            prop_assert!(range.contains(token));
            let segment = range.segment_of(token);
            let (first, last) = range.segment_tokens(segment).unwrap();
            let offset = |t: u64| t.wrapping_sub(start).wrapping_sub(1);
            prop_assert!(offset(first) <= offset(token) && offset(token) <= offset(last));
        }
    }
}
