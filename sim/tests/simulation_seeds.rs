//! Many seeds of the simulation, each a small cluster under network and node faults: every
//! checker must pass on each. A failing seed prints its violations; replay it with
//! `cargo run -p ringkv-sim --release -- --seed N` and keep it below as a regression once fixed.

/// Seeds run by `cargo test`; `--seeds` runs more.
const SEEDS: u64 = 500;

#[test]
fn every_seed_passes_every_checker() {
    let mut failures = Vec::new();
    let mut operations = 0;
    let mut swaps = ringkv_sim::checker::SwapCounts::default();
    for seed in 0..SEEDS {
        let report = ringkv_sim::run(seed);
        operations += report.operations;
        swaps.add(&report.swaps);
        if !report.violations.is_empty() {
            failures.push(format!("seed {seed}:\n  {}", report.violations.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{} of {SEEDS} seeds failed:\n{}", failures.len(), failures.join("\n"));
    assert!(operations > SEEDS as usize * 50, "the runs did little: {operations} operations");
    // Every run swaps too; swaps race, so some lose and some end unknown.
    assert!(
        swaps.written > SEEDS as usize * 5 && swaps.mismatched > 0 && swaps.indeterminate > 0,
        "the runs swapped little: {swaps}"
    );
}
