//! Where the nodes of a chaos run live: each in its own network namespace on a private bridge,
//! or, where namespaces cannot be made, on loopback ports.
//!
//! ```text
//!   this process (root namespace) ── bridge rkc<pid>b 10.A.B.254/24
//!       ├── veth rkc<pid>v1 ═══ eth0 10.A.B.11 in namespace rkc<pid>n1: ringkv node 1
//!       ├── veth rkc<pid>v2 ═══ eth0 10.A.B.12 in namespace rkc<pid>n2: ringkv node 2
//!       ├── ...
//!       ├── veth rkc<pid>w0 ═══ eth0 10.A.B.100 in namespace rkc<pid>c0: load client 0
//!       └── ...
//! ```
//!
//! Each load client has a namespace of its own too (a thread enters it with `setns` before it
//! opens a socket), with a home node: client `k` first contacts node `k mod n + 1`. A partition
//! puts each client on its home node's side, so, as in Jepsen, the clients of a cut-off node are
//! cut off with it, and only the settle phase, from this process's own namespace, reaches every
//! node.
//!
//! Every name carries this process's id, so two runs on one machine never collide, and a run
//! removes what a crashed run left behind (names whose process is gone) before making its own.
//! Dropping [`Namespaces`] deletes them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The client port of every node in a namespace (each has an address of its own).
const NAMESPACE_CLIENT_PORT: u16 = 7379;
/// The peer port of every node in a namespace.
const NAMESPACE_PEER_PORT: u16 = 8379;
/// Prefix of every name a chaos run creates: namespaces, bridges, veth ends.
const NAME_PREFIX: &str = "rkc";

/// Runs `program` with `arguments`; fails with its standard error when it exits non-zero.
pub fn command(program: &str, arguments: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", arguments.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `program` can be found on the PATH.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|directory| directory.join(program).is_file()))
}

/// Why network namespaces cannot be used here, or `None` when they can: root (or
/// CAP_NET_ADMIN), `ip` and `nft`, and a namespace that can really be made and removed.
pub fn namespaces_unavailable() -> Option<String> {
    for program in ["ip", "nft"] {
        if !installed(program) {
            return Some(format!("`{program}` is not installed (Debian: iproute2, nftables)"));
        }
    }
    let probe = format!("{NAME_PREFIX}{}probe", std::process::id());
    if let Err(error) = command("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot make a network namespace (not root, or no CAP_NET_ADMIN?): {error:#}"));
    }
    let inside = command("ip", &["netns", "exec", &probe, "nft", "list", "ruleset"]);
    let _ = command("ip", &["netns", "delete", &probe]);
    inside.err().map(|error| format!("nftables does not work inside a namespace: {error:#}"))
}

/// The process id a chaos-run name carries, if `name` is one (`rkc<pid>n3`, `rkc<pid>b`, ...).
fn owner_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !matches!(rest[digits.len()..].chars().next(), Some('n' | 'c' | 'b' | 'p')) {
        return None;
    }
    digits.parse().ok()
}

/// Deletes the namespaces and bridges that chaos runs whose process is gone left behind.
pub fn remove_leftovers() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(listing) = command("ip", &["netns", "list"]) {
        for name in listing.lines().filter_map(|line| line.split_whitespace().next()) {
            if owner_of(name).is_some_and(|pid| !alive(pid)) {
                eprintln!("chaos: removing namespace {name} left by an earlier run");
                let _ = command("ip", &["netns", "delete", name]);
            }
        }
    }
    if let Ok(listing) = command("ip", &["-o", "link", "show", "type", "bridge"]) {
        for line in listing.lines() {
            let Some(name) = line.split(": ").nth(1).map(|name| name.split('@').next().unwrap_or(name))
            else {
                continue;
            };
            if owner_of(name).is_some_and(|pid| !alive(pid)) {
                eprintln!("chaos: removing bridge {name} left by an earlier run");
                let _ = command("ip", &["link", "delete", name]);
            }
        }
    }
}

/// Deletes this process's namespaces and bridge when it is interrupted (SIGINT, SIGTERM,
/// SIGHUP), then exits with 130: the nodes die with this process (`PR_SET_PDEATHSIG`), and
/// without this the namespaces would wait for the next run to remove them.
pub fn remove_on_interrupt() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("chaos-interrupt".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("chaos: interrupted (signal {signal}); removing the network namespaces");
            let own = format!("{NAME_PREFIX}{}", std::process::id());
            if let Ok(listing) = command("ip", &["netns", "list"]) {
                for name in listing.lines().filter_map(|line| line.split_whitespace().next()) {
                    if name.strip_prefix(&own).is_some_and(|rest| rest.starts_with(['n', 'c'])) {
                        let _ = command("ip", &["netns", "delete", name]);
                    }
                }
            }
            let _ = command("ip", &["link", "delete", &format!("{own}b")]);
            std::process::exit(130);
        }
    })?;
    Ok(())
}

/// Most load clients with a namespace each: their addresses are 10.A.B.100 and up, below the
/// bridge's .254.
pub const CLIENTS_MAX: usize = 150;

/// One namespace per node and one per load client, on a bridge of their own.
pub struct Namespaces {
    tag: String,
    bridge: String,
    /// The first three octets of the /24 the nodes share.
    subnet: [u8; 3],
    nodes: u16,
    clients: usize,
    /// Namespaces made so far, deleted on drop.
    made: Vec<String>,
}

impl Namespaces {
    /// Makes the bridge, one namespace per node, a spare one for a node that joins during a
    /// run (node `nodes + 1`; partitions and the clients' home nodes leave it out), and one per
    /// load client, each joined to the bridge by a veth pair.
    pub fn create(nodes: u16, clients: usize) -> Result<Namespaces> {
        if clients > CLIENTS_MAX {
            bail!("at most {CLIENTS_MAX} clients run in namespaces, not {clients}");
        }
        let pid = std::process::id();
        let tag = format!("{NAME_PREFIX}{pid}");
        let subnet = free_subnet(pid)?;
        let bridge = format!("{tag}b");
        let mut namespaces =
            Namespaces { tag, bridge: bridge.clone(), subnet, nodes, clients, made: Vec::new() };
        command("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let host = format!("{}/24", namespaces.host_address());
        command("ip", &["addr", "add", &host, "dev", &bridge])?;
        command("ip", &["link", "set", &bridge, "up"])?;
        for node in 1..=nodes + 1 {
            let (namespace, veth) = (namespaces.namespace(node), namespaces.veth(node));
            let address = namespaces.address(node);
            namespaces.join(&namespace, &veth, address)?;
        }
        for client in 0..clients {
            let (namespace, veth) =
                (namespaces.client_namespace(client), format!("{}w{client}", namespaces.tag));
            let address = namespaces.client_address(client);
            namespaces.join(&namespace, &veth, address)?;
        }
        Ok(namespaces)
    }

    /// Makes namespace `namespace` with `address` on its end of a veth pair whose other end,
    /// `veth`, is on the bridge.
    fn join(&mut self, namespace: &str, veth: &str, address: Ipv4Addr) -> Result<()> {
        command("ip", &["netns", "add", namespace])?;
        self.made.push(namespace.to_string());
        command("ip", &["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace])?;
        command("ip", &["link", "set", veth, "master", &self.bridge, "up"])?;
        let address = format!("{address}/24");
        let inside = |arguments: &[&str]| {
            let mut full = vec!["netns", "exec", namespace, "ip"];
            full.extend_from_slice(arguments);
            command("ip", &full)
        };
        inside(&["addr", "add", &address, "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn nodes(&self) -> u16 {
        self.nodes
    }

    /// The bridge's end of node `node`'s veth pair.
    pub fn veth(&self, node: u16) -> String {
        format!("{}v{node}", self.tag)
    }

    /// Number of load clients with a namespace.
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// The namespace of load client `client` (0-based).
    pub fn client_namespace(&self, client: usize) -> String {
        format!("{}c{client}", self.tag)
    }

    /// Where `ip netns` keeps client `client`'s namespace, for `setns`.
    pub fn client_namespace_path(&self, client: usize) -> std::path::PathBuf {
        Path::new("/run/netns").join(self.client_namespace(client))
    }

    /// Load client `client`'s address.
    pub fn client_address(&self, client: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 100 + client as u8)
    }

    /// The addresses of the load clients whose home node is in `side` (or, with `inside`
    /// false, is not).
    pub fn client_addresses_of(&self, side: &[u16], inside: bool) -> Vec<Ipv4Addr> {
        (0..self.clients)
            .filter(|&client| side.contains(&home_node(client, self.nodes)) == inside)
            .map(|client| self.client_address(client))
            .collect()
    }

    /// The namespace of node `node` (1-based).
    pub fn namespace(&self, node: u16) -> String {
        format!("{}n{node}", self.tag)
    }

    /// Node `node`'s address.
    pub fn address(&self, node: u16) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + node as u8)
    }

    /// This process's address on the bridge.
    fn host_address(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// Node `node`'s client and peer addresses.
    pub fn endpoints(&self, node: u16) -> (SocketAddr, SocketAddr) {
        let address = self.address(node).into();
        (SocketAddr::new(address, NAMESPACE_CLIENT_PORT), SocketAddr::new(address, NAMESPACE_PEER_PORT))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for namespace in &self.made {
            if let Err(error) = command("ip", &["netns", "delete", namespace]) {
                eprintln!("chaos: {error:#}");
            }
        }
        if let Err(error) = command("ip", &["link", "delete", &self.bridge]) {
            eprintln!("chaos: {error:#}");
        }
    }
}

/// The node load client `client` contacts first, and whose side of a partition it is on.
pub fn home_node(client: usize, nodes: u16) -> u16 {
    (client % usize::from(nodes)) as u16 + 1
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/NAME`): every
/// socket it opens from then on lives there. Other threads stay where they are.
pub fn enter_namespace(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns(2) on a descriptor this thread owns; it changes only this thread's
    // network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {} failed: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// A 10.A.B.0/24 that no interface of this machine uses, starting from one derived from `pid`.
fn free_subnet(pid: u32) -> Result<[u8; 3]> {
    let used = command("ip", &["-o", "-4", "addr", "show"])?;
    (0..2000u32)
        .map(|attempt| {
            let slot = (pid + attempt * 7919) % (56 * 250);
            [10, 200 + (slot / 250) as u8, (slot % 250) as u8]
        })
        .find(|[a, b, c]| !used.contains(&format!(" {a}.{b}.{c}.")))
        .context("no free 10.x.y.0/24 subnet for the bridge")
}

/// Loopback ports for `nodes` nodes: client port `base + 10 × (node - 1)`, its shard port just
/// above, peer port client + 1000; `base` chosen from `pid` among ports nothing listens on, all
/// below the kernel's ephemeral range (32768 and up by default), where a connection made while a
/// node is not listening yet could be given the node's port as its own and connect to itself.
pub fn loopback_endpoints(nodes: u16) -> Result<Vec<(SocketAddr, SocketAddr)>> {
    let localhost = Ipv4Addr::LOCALHOST.into();
    let free = |port: u16| {
        std::net::TcpListener::bind(SocketAddr::new(localhost, port)).is_ok()
            && std::net::UdpSocket::bind(SocketAddr::new(localhost, port)).is_ok()
    };
    let pid = std::process::id();
    for attempt in 0..200u32 {
        let base = 10000 + ((pid + attempt * 31) % 100) as u16 * 200;
        let endpoints: Vec<(SocketAddr, SocketAddr)> = (0..nodes)
            .map(|index| {
                let client = base + 10 * index;
                (SocketAddr::new(localhost, client), SocketAddr::new(localhost, client + 1000))
            })
            .collect();
        let ports_free = endpoints.iter().all(|(client, peer)| {
            free(client.port()) && free(client.port() + 1) && free(peer.port()) && free(peer.port() + 1)
        });
        if ports_free {
            return Ok(endpoints);
        }
    }
    bail!("no free block of loopback ports for {nodes} nodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chaos_names_are_claimed_by_a_process() {
        assert_eq!(owner_of("rkc1234n3"), Some(1234));
        assert_eq!(owner_of("rkc77b"), Some(77));
        assert_eq!(owner_of("rkc77c2"), Some(77));
        assert_eq!(owner_of("rkc77probe"), Some(77));
        assert_eq!(owner_of("rkcn3"), None);
        assert_eq!(owner_of("rkc12x"), None);
        assert_eq!(owner_of("docker0"), None);
    }

    #[test]
    fn clients_are_dealt_to_nodes_in_turn() {
        let homes: Vec<u16> = (0..5).map(|client| home_node(client, 3)).collect();
        assert_eq!(homes, vec![1, 2, 3, 1, 2]);
    }
}
