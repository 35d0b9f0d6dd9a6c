//! A capacity-planning run, small enough for the test suite: many more nodes and keys than the
//! seeded runs, under churn, checked by the same checkers, with its figures in range.

use ringkv_sim::SimConfig;

#[test]
fn forty_nodes_under_churn_lose_nothing_and_balance_their_load() {
    let report = ringkv_sim::run_config(3, SimConfig::scale(40, 20_000, 100, 100));
    assert!(report.violations.is_empty(), "{:?}", &report.violations[..report.violations.len().min(20)]);
    // 10,000 client operations and a final read of every key at ALL.
    assert!(report.operations >= 10_000 + 20_000, "{}", report.operations);
    assert_eq!(report.ownership.len(), 40);
    let total: f64 = report.ownership.values().sum();
    assert!((total - 3.0).abs() < 1e-6, "each token is replicated three times: {total}");
    let max = report.ownership.values().copied().fold(0.0, f64::max);
    assert!(max < 3.0 / 40.0 * 2.0, "no node owns twice its fair share: {max}");
    let stored: usize = report.stored_keys.values().sum();
    assert!(stored > 0 && report.stored_keys.len() == 40, "{:?}", report.stored_keys);
    let traffic = report.traffic;
    assert!(traffic.write_messages > 0 && traffic.membership_messages > 0, "{traffic:?}");
    // Repairs exist under churn but stay a fraction of the writes; anti-entropy runs, and what
    // it and the hints send is part of the replica messages.
    assert!(traffic.read_repair_bytes < traffic.write_bytes, "{traffic:?}");
    assert!(traffic.anti_entropy_messages > 0, "{traffic:?}");
    assert!(
        traffic.write_bytes + traffic.read_repair_bytes + traffic.hint_bytes + traffic.anti_entropy_bytes
            <= traffic.peer_bytes,
        "{traffic:?}"
    );
    let loaded = report.traffic_under_load;
    assert!(
        loaded.anti_entropy_bytes <= traffic.anti_entropy_bytes && loaded.write_bytes <= traffic.write_bytes,
        "{loaded:?} {traffic:?}"
    );
}

#[test]
fn a_scale_run_replays_exactly() {
    let config = || SimConfig::scale(12, 2_000, 20, 50);
    let (first, second) = (ringkv_sim::run_config(9, config()), ringkv_sim::run_config(9, config()));
    assert_eq!(first.trace, second.trace);
    assert_eq!(
        (first.traffic, first.events, &first.stored_keys),
        (second.traffic, second.events, &second.stored_keys)
    );
}
