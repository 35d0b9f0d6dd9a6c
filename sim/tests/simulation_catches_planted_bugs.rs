//! The checkers catch bugs planted on purpose: a replica that acknowledges writes it never
//! stores (replicas diverge, and quorum reads miss acknowledged writes), and a coordinator that
//! answers a write one acknowledgement early (W + R ≤ N in truth, so quorum reads go stale),
//! and a cluster that runs no anti-entropy (replicas that missed writes never converge before
//! a read repairs them).

use ringkv_sim::Sabotage;

/// Seeds tried per planted bug.
const SEEDS: u64 = 60;

fn violations(sabotage: Sabotage) -> Vec<String> {
    (0..SEEDS).flat_map(|seed| ringkv_sim::run_sabotaged(seed, sabotage).violations).collect()
}

#[test]
fn a_replica_acknowledging_without_storing_is_caught() {
    let found = violations(Sabotage::ReplicaAcksWithoutApplying);
    assert!(found.iter().any(|violation| violation.contains("replica n1 holds")), "{found:#?}");
}

#[test]
fn a_cluster_without_anti_entropy_is_caught() {
    let found = violations(Sabotage::NoAntiEntropy);
    assert!(found.iter().any(|violation| violation.contains("anti-entropy rounds")), "{found:#?}");
}

#[test]
fn a_coordinator_acknowledging_early_is_caught() {
    let found = violations(Sabotage::CoordinatorAcksEarly);
    assert!(found.iter().any(|violation| violation.contains("W + R > N")), "{found:#?}");
}
