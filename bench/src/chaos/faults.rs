//! Network faults, as nftables rules inside the nodes' namespaces: partitions (both ways or one
//! way) and random packet loss. Process faults (pause, kill, clock offsets) are in
//! [`super::cluster`].
//!
//! Every rule lives in one table, `inet ringkv_chaos`, of the node's own namespace; healing
//! deletes that table everywhere. Rules name node and load-client addresses: a partition cuts
//! each load client off with its home node (Jepsen's clients are bound to their node the same
//! way), while this process, which reaches every node from the bridge for the settle phase, is
//! never cut off.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::network::{home_node, Namespaces};

/// The table every fault rule goes in.
const TABLE: &str = "ringkv_chaos";

/// Loads `script` into node `node`'s namespace with `nft -f -`.
fn nft(namespaces: &Namespaces, node: u16, script: &str) -> Result<()> {
    let namespace = namespaces.namespace(node);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("nft in {namespace} failed: {}\n{script}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// An nftables set of addresses: `{ 10.0.0.1, 10.0.0.2 }`.
fn address_set(addresses: &[Ipv4Addr]) -> String {
    let listed: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
    format!("{{ {} }}", listed.join(", "))
}

/// A table with an input and an output chain holding `input` and `output` rules.
fn table(input: &[String], output: &[String]) -> String {
    format!(
        "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{}  }}\n  \
         chain output {{\n    type filter hook output priority 0; policy accept;\n{}  }}\n}}\n",
        input.iter().map(|rule| format!("    {rule}\n")).collect::<String>(),
        output.iter().map(|rule| format!("    {rule}\n")).collect::<String>(),
    )
}

/// The addresses across a partition from `node`: the nodes on the other side of `side` and the
/// load clients whose home node is on the other side.
fn across(namespaces: &Namespaces, side: &[u16], node: u16) -> Vec<Ipv4Addr> {
    let (nodes, clients) = across_ids(namespaces.nodes(), namespaces.clients(), side, node);
    nodes
        .into_iter()
        .map(|other| namespaces.address(other))
        .chain(clients.into_iter().map(|client| namespaces.client_address(client)))
        .collect()
}

/// The node ids and client indexes across a partition from `node`, of `nodes` nodes and
/// `clients` clients, each client on its home node's side.
fn across_ids(nodes: u16, clients: usize, side: &[u16], node: u16) -> (Vec<u16>, Vec<usize>) {
    let inside = side.contains(&node);
    (
        (1..=nodes).filter(|other| side.contains(other) != inside).collect(),
        (0..clients).filter(|&client| side.contains(&home_node(client, nodes)) != inside).collect(),
    )
}

/// Cuts the nodes of `side`, with their load clients, off from every node not in it and those
/// nodes' clients, both ways. (Clients need no rules of their own: every packet a client sends
/// or receives goes to or comes from a node, whose rules drop it.)
pub fn partition(namespaces: &Namespaces, side: &[u16]) -> Result<()> {
    for node in 1..=namespaces.nodes() {
        let set = address_set(&across(namespaces, side, node));
        nft(namespaces, node, &table(&[format!("ip saddr {set} drop")], &[format!("ip daddr {set} drop")]))?;
    }
    Ok(())
}

/// Node `from` and its load clients can no longer send to the other nodes and their clients;
/// they still receive from them. `from` drops what it would send across; the other nodes drop
/// what `from`'s clients send them.
pub fn one_way(namespaces: &Namespaces, from: u16) -> Result<()> {
    let side = [from];
    for node in 1..=namespaces.nodes() {
        if node == from {
            let across = across(namespaces, &side, node);
            nft(namespaces, node, &table(&[], &[format!("ip daddr {} drop", address_set(&across))]))?;
        } else {
            let own_clients = namespaces.client_addresses_of(&side, true);
            if !own_clients.is_empty() {
                nft(
                    namespaces,
                    node,
                    &table(&[format!("ip saddr {} drop", address_set(&own_clients))], &[]),
                )?;
            }
        }
    }
    Ok(())
}

/// Every node drops `percent` % of the packets it sends and of those it receives, at random
/// (nftables' `numgen random`), from this process as well as from the other nodes.
pub fn loss(namespaces: &Namespaces, percent: u32) -> Result<()> {
    for node in 1..=namespaces.nodes() {
        let rule = format!("numgen random mod 100 < {percent} drop");
        nft(
            namespaces,
            node,
            &table(&[format!("iifname \"eth0\" {rule}")], &[format!("oifname \"eth0\" {rule}")]),
        )?;
    }
    Ok(())
}

/// Node `node`'s link, both ways, slowed to `rate_kbit` kbit/s by a token-bucket queue (`tc
/// qdisc tbf`) that holds a packet up to `latency_ms` before dropping it: on its `eth0` for
/// what it sends, on the bridge's end of its veth for what it receives.
///
/// This is the delay fault, in place of `tc netem delay ... jitter`, which kernels built
/// without `CONFIG_NET_SCH_NETEM` lack. The delay is queueing: each packet waits behind what
/// the node sent or received just before it, from nothing on an idle link to `latency_ms` on a
/// full one, so it varies packet to packet with the load (the jitter), and what would wait
/// longer is dropped.
pub fn slow_link(namespaces: &Namespaces, node: u16, rate_kbit: u32, latency_ms: u32) -> Result<()> {
    let rate = format!("{rate_kbit}kbit");
    let latency = format!("{latency_ms}ms");
    let shape = ["root", "tbf", "rate", rate.as_str(), "burst", "1600", "latency", latency.as_str()];
    let namespace = namespaces.namespace(node);
    let mut inside = vec!["netns", "exec", namespace.as_str(), "tc", "qdisc", "add", "dev", "eth0"];
    inside.extend_from_slice(&shape);
    super::network::command("ip", &inside)?;
    let veth = namespaces.veth(node);
    let mut outside = vec!["qdisc", "add", "dev", veth.as_str()];
    outside.extend_from_slice(&shape);
    super::network::command("tc", &outside)?;
    Ok(())
}

/// Removes every rule and every slowed link from every node.
pub fn heal(namespaces: &Namespaces) -> Result<()> {
    for node in 1..=namespaces.nodes() {
        let namespace = namespaces.namespace(node);
        // A link not slowed has no root qdisc to delete: that failure is expected.
        let _ = super::network::command(
            "ip",
            &["netns", "exec", &namespace, "tc", "qdisc", "del", "dev", "eth0", "root"],
        );
        let _ = super::network::command("tc", &["qdisc", "del", "dev", &namespaces.veth(node), "root"]);
        let listed = super::network::command("ip", &["netns", "exec", &namespace, "nft", "list", "tables"])?;
        if listed.contains(TABLE) {
            nft(namespaces, node, &format!("delete table inet {TABLE}\n"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_puts_each_client_on_its_home_node_side() {
        // 3 nodes, 4 clients: homes 1, 2, 3, 1. Node 2 cut off: it loses nodes 1 and 3 and the
        // clients of nodes 1 and 3; node 1 loses node 2 and client 1, node 2's client.
        assert_eq!(across_ids(3, 4, &[2], 2), (vec![1, 3], vec![0, 2, 3]));
        assert_eq!(across_ids(3, 4, &[2], 1), (vec![2], vec![1]));
        // 5 nodes, minority {3, 5}: client 2 (home 3) is with them.
        assert_eq!(across_ids(5, 4, &[3, 5], 4), (vec![3, 5], vec![2]));
        assert_eq!(across_ids(5, 4, &[3, 5], 5), (vec![1, 2, 4], vec![0, 1, 3]));
    }

    #[test]
    fn a_table_holds_its_rules_in_the_right_chains() {
        let script = table(&["ip saddr { 10.0.0.1 } drop".into()], &[]);
        let input = script.find("hook input").expect("input chain");
        let output = script.find("hook output").expect("output chain");
        let rule = script.find("ip saddr").expect("rule");
        assert!(input < rule && rule < output, "{script}");
        assert_eq!(
            address_set(&[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]),
            "{ 10.0.0.1, 10.0.0.2 }"
        );
    }
}
