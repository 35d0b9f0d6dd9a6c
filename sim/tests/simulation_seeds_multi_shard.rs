//! The seeds of `simulation_seeds` again with nodes of two and three shards, each shard with
//! its own engine and the token ranges the shard's own mapping (`ShardRing`) gives it, so that
//! coordinators must address each replica's owning shard and the checkers see every shard's
//! entries. Replay a failure with `cargo run -p ringkv-sim --release -- --seed N --shards S`.

/// Seeds run by `cargo test`, half with two shards a node, half with three.
const SEEDS: u64 = 500;

#[test]
fn every_seed_passes_every_checker_with_several_shards_a_node() {
    let mut failures = Vec::new();
    let mut operations = 0;
    for seed in 0..SEEDS {
        let shards = 2 + (seed % 2) as usize;
        let report = ringkv_sim::run_with_shards(seed, shards);
        operations += report.operations;
        if !report.violations.is_empty() {
            failures.push(format!("seed {seed} with {shards} shards:\n  {}", report.violations.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{} of {SEEDS} seeds failed:\n{}", failures.len(), failures.join("\n"));
    assert!(operations > SEEDS as usize * 50, "the runs did little: {operations} operations");
}

#[test]
fn keys_land_in_the_engine_of_their_owning_shard() {
    // Seed 0 with three shards a node: every node's entries are spread over its engines (a run
    // that sent every key to shard 0 would be refused `WrongShard` and fail the checkers).
    let report = ringkv_sim::run_with_shards(0, 3);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.stored_keys_per_shard.len(), report.stored_keys.len());
    for (node, per_shard) in &report.stored_keys_per_shard {
        assert_eq!(per_shard.len(), 3, "node {node}");
        assert_eq!(per_shard.iter().sum::<usize>(), report.stored_keys[node], "node {node}");
    }
    assert!(
        report.stored_keys_per_shard.values().any(|per_shard| per_shard
            .iter()
            .filter(|&&count| count > 0)
            .count()
            >= 2),
        "{:?}",
        report.stored_keys_per_shard
    );
}

#[test]
fn halves_that_restarted_apart_merge_after_the_partition_heals() {
    // Seed 2003164 with two shards: n2, n3 and n4 restarted while partitioned from n1 and n5,
    // which had restarted apart from them too, so neither half had seen the other up and
    // neither was alone; the halves stayed two clusters after the heal until nodes announced
    // to their seeds as well as to the members they had seen.
    let report = ringkv_sim::run_with_shards(2_003_164, 2);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}
