//! A replica stopped with SIGSTOP (alive to TCP, silent to everything): requests that need it
//! fail with a timeout or as unavailable, never hang; quorum requests go on through the other
//! two; once it continues, it rejoins and requests at ALL succeed again.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{eventually_at as eventually, peer_port, start_node_with, SETTLE_DEADLINE};
use common::Server;
use ringkv_wire::{Consistency, ErrorCode, Operation, Outcome};

fn start_node(root: &Path, node_id: u16, seed: Option<u16>) -> Server {
    // A short replica timeout keeps the test quick; it bounds how long a request waits.
    start_node_with(root, node_id, seed, &["--replica-timeout-ms", "500"])
}

fn wait_for_log(server: &Server, since: usize, needle: &str) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while !server.log()[since..].contains(needle) {
        assert!(Instant::now() < deadline, "no '{needle}' in the log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn put(key: &str, value: &str) -> Operation {
    Operation::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()), ttl_ms: None }
}

#[test]
fn a_stopped_replica_costs_timeouts_not_hangs_and_rejoins_when_continued() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let first = start_node(root.path(), 1, None);
    let second = start_node(root.path(), 2, Some(peer_port(&first)));
    let third = start_node(root.path(), 3, Some(peer_port(&first)));
    for (node, others) in [(&first, [2, 3]), (&second, [1, 3]), (&third, [1, 2])] {
        for other in others {
            wait_for_log(node, 0, &format!("node up node_id={other} "));
        }
    }
    let mut client = first.client();
    eventually(&mut client, put("before", "stop"), Consistency::All);

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(third.pid() as libc::pid_t, libc::SIGSTOP) }, 0);
    let first_log = first.log().len();
    // Requests that need the stopped node fail, with a timeout (it still looks up) or as
    // unavailable (membership already declared it down); none hangs.
    for index in 0..20 {
        let refused =
            client.execute_at(put(&format!("all-{index}"), "x"), Some(Consistency::All)).unwrap_err();
        assert!(
            matches!(refused.code, ErrorCode::Timeout | ErrorCode::Unavailable),
            "unexpected failure {refused}"
        );
        if refused.code == ErrorCode::Timeout {
            assert!(refused.message.contains("replicas answered"), "{}", refused.message);
        }
    }
    // Quorum requests go on through the two others.
    for index in 0..20 {
        let key = format!("quorum-{index}");
        let Outcome::Written { version } = eventually(&mut client, put(&key, "v"), Consistency::Quorum)
        else {
            panic!("expected a write")
        };
        let read = eventually(&mut client, Operation::Get { key: Bytes::from(key) }, Consistency::Quorum);
        assert_eq!(read, Outcome::Value { value: Bytes::from_static(b"v"), version, expires_at_ms: None });
    }
    wait_for_log(&first, first_log, "node down node_id=3 ");

    // Continued, it refutes its death, comes back up, and ALL works again.
    let first_log = first.log().len();
    assert_eq!(unsafe { libc::kill(third.pid() as libc::pid_t, libc::SIGCONT) }, 0);
    wait_for_log(&first, first_log, "node up node_id=3 ");
    eventually(&mut client, put("after", "continue"), Consistency::All);
    let mut through_third = third.client();
    assert!(matches!(
        eventually(
            &mut through_third,
            Operation::Get { key: Bytes::from_static(b"quorum-7") },
            Consistency::All
        ),
        Outcome::Value { .. }
    ));
}
