//! Seeds that found bugs, kept so they stay fixed. Each names what it found.

fn assert_passes(seed: u64) {
    let report = ringkv_sim::run(seed);
    assert!(report.violations.is_empty(), "seed {seed}:\n{}", report.trace);
}

/// Four nodes split 2 | 2 long enough to declare each other down. When the partition heals, the
/// periodic announces to down members draw `TurnUndead` answers, and every node renews its
/// identity at about the same moment. foca then tells only the members it saw up, which have
/// renewed too and drop what is addressed to their old identity; the membership wrapper ignores
/// foca's `Rejoin`, and neither side is alone, so the shard's rejoin loop never announces: the
/// cluster stays split for good (found by the simulator; not fixed yet).
#[test]
#[ignore = "membership stays split after simultaneous renewals; un-ignore once Membership announces after a rejoin"]
fn a_healed_two_by_two_partition_merges_again() {
    assert_passes(1336);
}
