//! The memtable's hash index: from a key's hash to the position of its slot.
//!
//! An open-addressing table in the manner of Abseil's and hashbrown's SwissTables, cut to what a
//! memtable needs. A memtable never removes a key (it is dropped whole once flushed), so there
//! are no tombstones and a probe ends at the first group with a free lane.
//!
//! Each group is one 64-byte cache line: 16 tag bytes (12 lanes and 4 unused) and the 12
//! lanes' positions, `u32` each. A lookup reads one line, compares its tags with the key's tag
//! (7 bits of its hash, with the top bit set) all at once, and only for a matching lane follows
//! the position to the slot and compares keys. So a point read costs one miss for the group and
//! one for the slot, whatever the slots weigh, and [`Index::group_of`] gives the line to
//! prefetch ahead.
//!
//! A free lane is a zero byte, so zeroed memory is an empty table: a new one is allocated
//! zeroed and nothing is written to it. Fresh pages from the allocator come zeroed from the
//! kernel, each on its first touch, as keys arrive; filling a 2 MiB table with a "free" pattern
//! took 1.6 ms, in the write that sealed the memtable before it.
//!
//! Groups are probed triangularly (1, 2, 3, ... groups on), which visits every group of a
//! power-of-two table. The table doubles before it is 7/8 full, so a free lane always exists.

/// Lanes per group.
const LANES: usize = 12;
/// A free lane (and the four unused tag bytes): never a tag, whose top bit is set.
const FREE: u8 = 0;
/// The bits of [`Group::lanes_tagged`] that stand for lanes.
const LANE_BITS: u16 = (1 << LANES) - 1;

/// One cache line of the table; all zeros is empty.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Group {
    tags: [u8; 16],
    positions: [u32; LANES],
}

impl Group {
    /// A bit per lane whose tag byte equals `tag` (a loop the compiler turns into one vector
    /// compare).
    #[inline]
    fn lanes_tagged(&self, tag: u8) -> u16 {
        let mut bits = 0u16;
        for (lane, &byte) in self.tags.iter().enumerate() {
            bits |= u16::from(byte == tag) << lane;
        }
        bits & LANE_BITS
    }
}

/// `count` empty groups, in zeroed memory.
fn empty_groups(count: usize) -> Box<[Group]> {
    let zeroed = Box::<[Group]>::new_zeroed_slice(count);
    // SAFETY: a `Group` is two arrays of integers, for which all zero bytes is a valid value.
    unsafe { zeroed.assume_init() }
}

/// Where a key goes that the index does not hold: the first free lane on its probe sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Vacancy {
    group: usize,
    lane: usize,
}

/// Hash to slot position.
pub(super) struct Index {
    groups: Box<[Group]>,
    len: usize,
}

impl Index {
    /// An index of one group.
    pub(super) fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An index that holds `entries` positions without growing: the fewest groups, a power of
    /// two, that keep it at most 7/8 full.
    pub(super) fn with_capacity(entries: usize) -> Self {
        let groups = (entries * 8).div_ceil(LANES * 7).max(1).next_power_of_two();
        Index { groups: empty_groups(groups), len: 0 }
    }

    /// How many groups the table has.
    #[cfg(test)]
    pub(super) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The group a probe for `hash` reads first: what to prefetch before a lookup.
    #[inline]
    pub(super) fn group_of(&self, hash: u64) -> &Group {
        &self.groups[hash as usize & (self.groups.len() - 1)]
    }

    /// Candidate positions for `hash` in its first group, a tag match each (almost always the
    /// key's own, if the index holds it): what to prefetch once the group is in cache.
    #[inline]
    pub(super) fn first_candidate(&self, hash: u64) -> Option<u32> {
        let group = self.group_of(hash);
        let matches = group.lanes_tagged(tag(hash));
        (matches != 0).then(|| group.positions[matches.trailing_zeros() as usize])
    }

    /// The position of the slot for which `is_key` holds, among those whose hash matches, or
    /// where to put it.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Result<u32, Vacancy> {
        let mask = self.groups.len() - 1;
        let tag = tag(hash);
        let mut group = hash as usize & mask;
        let mut stride = 0;
        loop {
            let lines = &self.groups[group];
            let mut matches = lines.lanes_tagged(tag);
            while matches != 0 {
                let position = lines.positions[matches.trailing_zeros() as usize];
                if is_key(position) {
                    return Ok(position);
                }
                matches &= matches - 1;
            }
            let free = lines.lanes_tagged(FREE);
            if free != 0 {
                return Err(Vacancy { group, lane: free.trailing_zeros() as usize });
            }
            stride += 1;
            group = (group + stride) & mask;
        }
    }

    /// Records `position` for `hash` where [`Index::find`] said, if the index has room for
    /// one more; otherwise returns false and changes nothing (grow, then find again).
    #[inline]
    pub(super) fn put(&mut self, vacancy: Vacancy, hash: u64, position: u32) -> bool {
        if (self.len + 1) * 8 > self.groups.len() * LANES * 7 {
            return false;
        }
        let group = &mut self.groups[vacancy.group];
        group.tags[vacancy.lane] = tag(hash);
        group.positions[vacancy.lane] = position;
        self.len += 1;
        true
    }

    /// Doubles the table, placing again every position, whose hash `hash_of` gives.
    ///
    /// Every position's hash is read again: its slot is a cache miss, so doubling a table of
    /// 170,000 positions took 19 ms, all of it in the write that found the table full. A
    /// memtable sizes its index for its byte budget ([`super::Memtable::with_budget`]) so that
    /// this only happens to one that outgrows it.
    pub(super) fn grow(&mut self, mut hash_of: impl FnMut(u32) -> u64) {
        let doubled = empty_groups(self.groups.len() * 2);
        let old = std::mem::replace(&mut self.groups, doubled);
        self.len = 0;
        for group in &old {
            for lane in 0..LANES {
                if group.tags[lane] != FREE {
                    let position = group.positions[lane];
                    let hash = hash_of(position);
                    // Positions are distinct, so the probe ends at a free lane.
                    let vacancy = self.find(hash, |_| false).expect_err("positions are distinct");
                    let placed = self.put(vacancy, hash, position);
                    debug_assert!(placed, "a doubled table holds what the old one did");
                }
            }
        }
    }
}

/// The 7 bits of a hash kept in a tag byte, the top ones (the low ones choose the group), with
/// the byte's top bit set so that no tag is [`FREE`].
#[inline]
fn tag(hash: u64) -> u8 {
    (hash >> 57) as u8 | 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Positions placed under arbitrary hashes, colliding ones included, are all found again,
    /// through growth, and absent hashes are not.
    #[test]
    fn finds_every_position_through_growth_and_collisions() {
        let mut index = Index::new();
        let mut hashes: Vec<u64> = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for position in 0..5_000u32 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            // Every fourth hash shares its group and tag with the one before: long probe runs.
            let hash = if position % 4 == 3 { hashes[position as usize - 1] } else { state };
            let vacancy = index.find(hash, |found| found == position).expect_err("new position");
            if !index.put(vacancy, hash, position) {
                index.grow(|found| hashes[found as usize]);
                let vacancy = index.find(hash, |found| found == position).expect_err("new position");
                assert!(index.put(vacancy, hash, position));
            }
            hashes.push(hash);
        }
        assert_eq!(index.len, 5_000);
        let by_hash: HashMap<u64, usize> = hashes.iter().map(|&hash| (hash, 0)).collect();
        for (position, &hash) in hashes.iter().enumerate() {
            assert_eq!(index.find(hash, |found| found == position as u32), Ok(position as u32));
        }
        let mut absent = 0;
        for probe in 0..1_000u64 {
            let hash = probe.wrapping_mul(0xff51_afd7_ed55_8ccd);
            if !by_hash.contains_key(&hash) {
                absent += 1;
                assert!(index.find(hash, |found| hashes[found as usize] == hash).is_err());
            }
        }
        assert!(absent > 900);
    }

    /// An index built for a capacity takes that many positions without growing, and no more
    /// than twice the groups it needs.
    #[test]
    fn an_index_with_capacity_takes_that_many_without_growing() {
        for entries in [0, 1, 10, 11, 84, 85, 1_000, 100_000] {
            let mut index = Index::with_capacity(entries);
            let groups = index.group_count();
            assert!(groups.is_power_of_two());
            let needed = (entries * 8).div_ceil(LANES * 7).max(1);
            assert!(groups >= needed && groups < needed * 2, "{entries} entries: {groups} groups");
            let mut state = 0x2545_f491_4f6c_dd1du64;
            for position in 0..entries as u32 {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let vacancy = index.find(state, |_| false).expect_err("distinct positions");
                assert!(index.put(vacancy, state, position), "{entries} entries: full at {position}");
            }
            assert_eq!(index.group_count(), groups);
        }
    }

    #[test]
    fn a_group_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Group>(), 64);
        assert_eq!(std::mem::align_of::<Group>(), 64);
    }
}
