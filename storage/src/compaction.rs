//! Compaction planning: a pure function from the table list to a decision.
//!
//! Strategy: size-tiered (Cassandra's STCS), restricted to runs of tables adjacent in age.
//! Tables, oldest first, are grouped into buckets of neighbours whose sizes are within half to one
//! and a half times the bucket's average (tables below `small_table_bytes` all count as one size);
//! the newest bucket with at least `width_min` tables is merged, at most `width_max` of them.
//! Each byte is rewritten about once per size tier, so write amplification grows with
//! log_width_min(data / memtable) rather than with the data size, at the cost of up to twice the
//! space while a large merge runs and more tables per read than leveled compaction.
//!
//! Keeping a merge to tables adjacent in age keeps "newest wins" a matter of table order, and
//! lets the planner say when a merge includes the oldest table: only then may tombstones and
//! expired values be dropped, because no older table can hold a value they hide.

/// What the planner needs to know of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize {
    /// The table's id.
    pub id: u64,
    /// Its size on disk.
    pub file_bytes: u64,
}

/// Limits of the strategy.
#[derive(Clone, Copy, Debug)]
pub struct CompactionLimits {
    /// Merge a bucket once it has this many tables.
    pub width_min: usize,
    /// Most tables in one merge.
    pub width_max: usize,
    /// Tables smaller than this are bucketed together whatever their sizes.
    pub small_table_bytes: u64,
    /// With more tables than this, the newest `width_max` are merged even if no bucket is full,
    /// to bound the tables a read may have to look at.
    pub tables_max: usize,
}

/// A merge to run: tables `first..=last` of the oldest-first list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Index of the oldest table merged.
    pub first: usize,
    /// Index of the newest table merged.
    pub last: usize,
    /// True when the merge includes the oldest table, so dead entries past their grace period
    /// can be dropped instead of carried forward.
    pub purge_dead: bool,
}

impl Choice {
    fn new(first: usize, last: usize) -> Self {
        Choice { first, last, purge_dead: first == 0 }
    }
}

/// Picks the next merge, if any. `tables` is ordered oldest first.
pub fn choose(tables: &[TableSize], limits: &CompactionLimits) -> Option<Choice> {
    assert!(limits.width_min >= 2 && limits.width_max >= limits.width_min);
    let size = |table: &TableSize| table.file_bytes.max(limits.small_table_bytes);
    // Walk from the newest table to the oldest, building buckets of adjacent similar sizes.
    let mut bucket_newest = tables.len();
    let mut bucket_total = 0u64;
    for index in (0..tables.len()).rev() {
        let count = (bucket_newest - index - 1) as u64;
        let fits = count == 0 || {
            let average = bucket_total / count;
            let size = size(&tables[index]);
            size * 2 >= average && size * 2 <= average * 3
        };
        if !fits {
            if let Some(choice) = full_bucket(index + 1, bucket_newest, limits) {
                return Some(choice);
            }
            bucket_newest = index + 1;
            bucket_total = 0;
        }
        bucket_total += size(&tables[index]);
    }
    if let Some(choice) = full_bucket(0, bucket_newest, limits) {
        return Some(choice);
    }
    if tables.len() > limits.tables_max {
        return Some(Choice::new(tables.len() - limits.width_max, tables.len() - 1));
    }
    None
}

/// A merge of every table (a "major compaction"), if there are at least two.
pub fn choose_all(tables: &[TableSize]) -> Option<Choice> {
    (tables.len() >= 2).then(|| Choice::new(0, tables.len() - 1))
}

/// The newest `width_max` tables of the bucket `oldest..newest_exclusive`, if it is full enough.
fn full_bucket(oldest: usize, newest_exclusive: usize, limits: &CompactionLimits) -> Option<Choice> {
    let count = newest_exclusive.saturating_sub(oldest);
    (count >= limits.width_min).then(|| {
        let first = newest_exclusive - count.min(limits.width_max);
        Choice::new(first, newest_exclusive - 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CompactionLimits =
        CompactionLimits { width_min: 4, width_max: 8, small_table_bytes: 1 << 20, tables_max: 24 };

    fn tables(sizes_mb: &[u64]) -> Vec<TableSize> {
        sizes_mb
            .iter()
            .enumerate()
            .map(|(id, mb)| TableSize { id: id as u64, file_bytes: mb << 20 })
            .collect()
    }

    #[test]
    fn waits_for_width_min_similar_tables() {
        assert_eq!(choose(&tables(&[64, 64, 64]), &LIMITS), None);
        assert_eq!(
            choose(&tables(&[64, 64, 64, 64]), &LIMITS),
            Some(Choice { first: 0, last: 3, purge_dead: true })
        );
    }

    #[test]
    fn merges_the_newest_tier_and_leaves_big_tables_alone() {
        let choice = choose(&tables(&[1024, 256, 64, 64, 64, 64]), &LIMITS).unwrap();
        assert_eq!((choice.first, choice.last, choice.purge_dead), (2, 5, false));
    }

    #[test]
    #[allow(clippy::same_item_push)] // Merges change the list between pushes.
    fn tiers_cascade_into_logarithmic_write_amplification() {
        // Simulate flushes of equal size and count bytes rewritten by merges.
        let mut sizes: Vec<u64> = Vec::new();
        let mut rewritten = 0u64;
        let flushes = 256u64;
        for _ in 0..flushes {
            sizes.push(64);
            while let Some(choice) = choose(&tables(&sizes), &LIMITS) {
                let merged: u64 = sizes[choice.first..=choice.last].iter().sum();
                rewritten += merged;
                sizes.splice(choice.first..=choice.last, [merged]);
            }
        }
        let amplification = rewritten as f64 / (flushes * 64) as f64;
        // 256 flushes with width 4 is four tiers: each byte rewritten about four times.
        assert!(amplification <= 4.0 + 1e-9, "write amplification {amplification}");
        assert!(sizes.len() <= 4, "tables left: {sizes:?}");
    }

    #[test]
    fn too_many_tables_forces_a_merge() {
        let mut sizes = vec![1u64 << 30];
        for step in 0..25 {
            sizes.push(1 << (step % 3 * 4));
        }
        let limits = CompactionLimits { width_min: 8, width_max: 8, small_table_bytes: 1, tables_max: 24 };
        let choice = choose(&tables(&sizes), &limits).unwrap();
        assert_eq!(choice.last, sizes.len() - 1);
        assert_eq!(choice.last - choice.first + 1, 8);
    }

    #[test]
    fn choose_all_needs_two_tables() {
        assert_eq!(choose_all(&tables(&[5])), None);
        assert_eq!(choose_all(&tables(&[5, 1])), Some(Choice { first: 0, last: 1, purge_dead: true }));
    }
}
