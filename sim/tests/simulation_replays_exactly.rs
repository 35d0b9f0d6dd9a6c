//! One seed decides a whole run: running it twice gives byte-identical traces, and another seed
//! gives another run.

#[test]
fn a_seed_replays_byte_for_byte() {
    for seed in [3, 41, 977] {
        let first = ringkv_sim::run(seed);
        let second = ringkv_sim::run(seed);
        assert!(first.trace.lines().count() > 100, "seed {seed} traced little:\n{}", first.trace);
        assert_eq!(first.trace, second.trace, "seed {seed} ran differently twice");
        assert_eq!(first.events, second.events);
    }
}

#[test]
fn different_seeds_run_differently() {
    assert_ne!(ringkv_sim::run(1).trace, ringkv_sim::run(2).trace);
}
