//! Network faults, as nftables rules inside the nodes' namespaces: partitions (both ways or one
//! way) and random packet loss. Process faults (pause, kill, clock offsets) are in
//! [`super::cluster`].
//!
//! Every rule lives in one table, `inet ringkv_chaos`, of the node's own namespace; healing
//! deletes that table everywhere. Rules name node addresses only, so this process, which reaches
//! every node from the bridge, is never cut off: only the nodes lose each other.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::network::Namespaces;

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

/// Cuts every node of `side` off from every node not in it, both ways.
pub fn partition(namespaces: &Namespaces, side: &[u16]) -> Result<()> {
    let all: Vec<u16> = (1..=namespaces.nodes()).collect();
    for &node in &all {
        let inside = side.contains(&node);
        let others: Vec<Ipv4Addr> = all
            .iter()
            .filter(|&&other| side.contains(&other) != inside)
            .map(|&other| namespaces.address(other))
            .collect();
        let set = address_set(&others);
        nft(namespaces, node, &table(&[format!("ip saddr {set} drop")], &[format!("ip daddr {set} drop")]))?;
    }
    Ok(())
}

/// Node `from` can no longer send to any other node; it still receives from them.
pub fn one_way(namespaces: &Namespaces, from: u16) -> Result<()> {
    let others: Vec<Ipv4Addr> =
        (1..=namespaces.nodes()).filter(|&node| node != from).map(|node| namespaces.address(node)).collect();
    nft(namespaces, from, &table(&[], &[format!("ip daddr {} drop", address_set(&others))]))
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

/// Removes every rule from every node.
pub fn heal(namespaces: &Namespaces) -> Result<()> {
    for node in 1..=namespaces.nodes() {
        let namespace = namespaces.namespace(node);
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
