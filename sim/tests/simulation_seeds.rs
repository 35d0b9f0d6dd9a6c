//! Many seeds of the simulation, each a small cluster under network and node faults: every
//! checker must pass on each. A failing seed prints its violations; replay it with
//! `cargo run -p ringkv-sim --release -- --seed N` and keep it below as a regression once fixed.

/// Seeds run by `cargo test`; `--seeds` runs more.
const SEEDS: u64 = 500;

#[test]
fn every_seed_passes_every_checker() {
    let mut failures = Vec::new();
    let mut operations = 0;
    for seed in 0..SEEDS {
        let report = ringkv_sim::run(seed);
        operations += report.operations;
        if !report.violations.is_empty() {
            failures.push(format!("seed {seed}:\n  {}", report.violations.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{} of {SEEDS} seeds failed:\n{}", failures.len(), failures.join("\n"));
    assert!(operations > SEEDS as usize * 50, "the runs did little: {operations} operations");
}
