//! A node's `/metrics` follows the cluster's healing: with node 3 down, writes through node 1
//! leave one hint each (`ringkv_hints_stored_total`), replayed once it is back
//! (`ringkv_hints_replayed_total`); writes through node 2, which keeps no hints, leave node 3
//! stale, and reading them at ALL through node 1 repairs each once (`ringkv_read_repairs_total`);
//! an anti-entropy round run by hand counts its exchanges.

use crate::common;

use common::LISTENER;

use bytes::Bytes;
use common::cluster::{address, eventually_at, peer_port, start_node_with, wait_for_three_nodes};
use common::healing::{put, wait_for_log};
use common::metrics::{scrape, scrape_until, total};
use ringkv_wire::{Consistency, Operation, Outcome};

const HINTED: u64 = 30;
const UNHINTED: u64 = 20;

#[test]
fn metrics_count_hints_read_repairs_and_anti_entropy() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let first = start_node_with(root.path(), 1, None, &["--metrics-listen", LISTENER]);
    let metrics_port = first.listener_port(0);
    let second = start_node_with(root.path(), 2, Some(peer_port(&first)), &["--hints-bytes-max", "0"]);
    let mut third = start_node_with(root.path(), 3, Some(peer_port(&first)), &[]);
    wait_for_three_nodes([&first, &second, &third]);
    let before = scrape(metrics_port);
    assert_eq!(total(&before, "ringkv_hints_stored_total", &[]), 0);

    let since = first.log().len();
    let since_second = second.log().len();
    third.terminate();
    wait_for_log(&first, since, "node down node_id=3 ");
    wait_for_log(&second, since_second, "node down node_id=3 ");
    let mut through_first = first.client();
    for index in 0..HINTED {
        eventually_at(&mut through_first, put(&format!("hinted-{index}"), "v"), Consistency::Quorum);
    }
    let mut through_second = second.client();
    for index in 0..UNHINTED {
        eventually_at(&mut through_second, put(&format!("unhinted-{index}"), "v"), Consistency::Quorum);
    }
    scrape_until(metrics_port, "a hint per write through node 1", |samples| {
        total(samples, "ringkv_hints_stored_total", &[]) == HINTED
    });

    let since = first.log().len();
    third.restart();
    wait_for_log(&first, since, "node up node_id=3 ");
    let replayed = scrape_until(metrics_port, "every hint replayed", |samples| {
        total(samples, "ringkv_hints_replayed_total", &[]) == HINTED
    });
    for name in ["ringkv_hints_dropped_full_total", "ringkv_hints_dropped_window_total"] {
        assert_eq!(total(&replayed, name, &[]), 0, "{name}");
    }
    assert_eq!(total(&replayed, "ringkv_read_repairs_total", &[]), 0, "hints left nothing to repair");

    // Node 3 missed the writes through node 2; a read at ALL through node 1 repairs each.
    for index in 0..UNHINTED {
        let key = Bytes::from(format!("unhinted-{index}"));
        let outcome = eventually_at(&mut through_first, Operation::Get { key }, Consistency::All);
        assert!(matches!(outcome, Outcome::Value { .. }), "{outcome:?}");
    }
    let repaired = scrape_until(metrics_port, "a read repair per stale key", |samples| {
        total(samples, "ringkv_read_repairs_total", &[]) == UNHINTED
    });
    assert_eq!(
        total(&repaired, "ringkv_read_repair_replicas_total", &[]),
        UNHINTED,
        "node 3 alone was stale"
    );
    let gets = total(&repaired, "ringkv_requests_total", &[("operation", "get"), ("outcome", "ok")]);
    assert!(gets >= UNHINTED, "{gets} reads counted");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["admin", "repair", "--json", "--addr", &address(&first)])
        .args(["--peer-addr", &format!("127.0.0.1:{}", peer_port(&first))])
        .output()
        .expect("running ringkv admin repair");
    assert!(
        output.status.code().is_some_and(|code| code <= 1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exchanged = scrape_until(metrics_port, "anti-entropy exchanges", |samples| {
        total(samples, "ringkv_anti_entropy_exchanges_total", &[]) > 0
    });
    let failed = total(&exchanged, "ringkv_anti_entropy_exchanges_failed_total", &[]);
    assert!(failed <= total(&exchanged, "ringkv_anti_entropy_exchanges_total", &[]));
    drop(third);
}
