//! Clusters of real `ringkv` nodes on loopback: start them, wait for membership to settle, and
//! retry requests while the cluster notices a change.

use std::path::Path;
use std::time::{Duration, Instant};

use ringkv_wire::{Consistency, Operation, Outcome};

use super::{Client, Server, SHARDS};

/// Longest wait for membership to settle; only turns a hang into a failure.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// The peer port of shard 0 of `server`, where other nodes join.
pub fn peer_port(server: &Server) -> u16 {
    server.client_port + 1 + SHARDS as u16
}

/// The client address of `server`, as `host:port`.
pub fn address(server: &Server) -> String {
    format!("127.0.0.1:{}", server.client_port)
}

/// Starts node `node_id` (N = 3) with its data under `root`, joining through `seed`'s peer port.
pub fn start_node(root: &Path, node_id: u16, seed: Option<u16>) -> Server {
    start_node_with(root, node_id, seed, &[])
}

/// [`start_node`] with extra `ringkv serve` flags.
pub fn start_node_with(root: &Path, node_id: u16, seed: Option<u16>, extra_args: &[&str]) -> Server {
    let data_dir = root.join(format!("node-{node_id}"));
    let node_id = node_id.to_string();
    let seeds = seed.map(|port| format!("127.0.0.1:{port}"));
    let mut args = vec!["--node-id", &node_id, "--replication-factor", "3"];
    if let Some(seeds) = &seeds {
        args.extend(["--seeds", seeds]);
    }
    args.extend_from_slice(extra_args);
    Server::start_with(&data_dir, &args)
}

/// Nodes 1, 2 and 3, N = 3, each seeing the other two up.
pub fn start_three_nodes(root: &Path) -> [Server; 3] {
    start_three_nodes_with(root, &[])
}

/// [`start_three_nodes`], each node started with `extra_args` too.
pub fn start_three_nodes_with(root: &Path, extra_args: &[&str]) -> [Server; 3] {
    let first = start_node_with(root, 1, None, extra_args);
    let second = start_node_with(root, 2, Some(peer_port(&first)), extra_args);
    let third = start_node_with(root, 3, Some(peer_port(&first)), extra_args);
    wait_for_three_nodes([&first, &second, &third]);
    [first, second, third]
}

/// Waits until nodes 1, 2 and 3 each log the other two up and every shard of each serves a
/// topology with all three up.
pub fn wait_for_three_nodes([first, second, third]: [&Server; 3]) {
    wait_for_logs(&[(first, 0)], "node up", &[2, 3]);
    wait_for_logs(&[(second, 0)], "node up", &[1, 3]);
    wait_for_logs(&[(third, 0)], "node up", &[1, 2]);
    wait_for_every_shard(&[first, second, third], &[1, 2, 3], &[]);
}

/// Waits until every shard of each node lists every node of `up` as up and every node of `down`
/// as down in the topology it serves. Shard 0 logs "node up" or "node down" when membership
/// sees the change, and the other shards learn it a moment later from shard 0's snapshot; any
/// shard may answer a request on the client port.
pub fn wait_for_every_shard(nodes: &[&Server], up: &[u16], down: &[u16]) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    for node in nodes {
        for shard_id in 0..SHARDS as u32 {
            let mut client = node.shard_client(shard_id);
            loop {
                let topology = client.topology();
                let seen: Vec<u16> =
                    topology.nodes.iter().filter(|member| member.up).map(|member| member.node_id).collect();
                if up.iter().all(|node_id| seen.contains(node_id))
                    && !down.iter().any(|node_id| seen.contains(node_id))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "shard {shard_id} of node {} sees {seen:?} up, not {up:?} up and {down:?} down",
                    topology.node_id
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Waits until each node's log reports every node of `others` with `event` ("node up" or
/// "node down"), counting only lines after `since` bytes of its log.
pub fn wait_for_logs(nodes: &[(&Server, usize)], event: &str, others: &[u16]) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let settled = nodes.iter().all(|(node, since)| {
            let log = node.log();
            let recent = &log[(*since).min(log.len())..];
            others.iter().all(|other| recent.contains(&format!("{event} node_id={other} ")))
        });
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "membership did not settle ({event} {others:?}):\n{}",
            nodes[0].0.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `operation` at the node's default level until it succeeds, while the cluster notices a
/// change; returns the first success.
pub fn eventually(client: &mut Client, operation: Operation) -> Outcome {
    retry(|| client.execute(operation.clone()))
}

/// Runs `operation` at `consistency` until it succeeds (a node that just came back may not be
/// seen up by every node yet).
pub fn eventually_at(client: &mut Client, operation: Operation, consistency: Consistency) -> Outcome {
    retry(|| client.execute_at(operation.clone(), Some(consistency)))
}

fn retry(mut attempt: impl FnMut() -> Result<Outcome, ringkv_wire::Failure>) -> Outcome {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        match attempt() {
            Ok(outcome) => return outcome,
            Err(failure) => {
                assert!(Instant::now() < deadline, "still failing: {failure}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
