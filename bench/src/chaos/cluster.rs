//! The `ringkv serve` processes of a chaos run: start, kill -9 and restart, pause and resume,
//! start under a clock offset (libfaketime), wait until every node sees every other up, stop.
//!
//! Each node is spawned with `PR_SET_PDEATHSIG`, so if this process dies the nodes die with it
//! (spawns happen on the main thread, which lives as long as the process). Dropping the
//! [`Cluster`] stops what is still running.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringkv_client::blocking::Client;
use ringkv_client::{Backoff, ClientOptions};

/// libfaketime as Debian installs it (package `faketime`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How one node is reached and where it keeps its files.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u16,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    /// The network namespace it runs in, if any.
    pub namespace: Option<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// One node: its spec and its process while it runs.
struct Node {
    spec: NodeSpec,
    child: Option<Child>,
    paused: bool,
    /// Whether it was started before (a restart joins through every other node).
    started: bool,
    /// A node kept out of the cluster until [`Cluster::join`] adds it (`--join`).
    standby: bool,
}

/// Every node of a run.
pub struct Cluster {
    binary: PathBuf,
    /// Extra `ringkv serve` flags every node gets (a planted fault's settings).
    serve_flags: Vec<String>,
    nodes: Vec<Node>,
}

/// Options for quick probes of a node: short timeouts, one connection attempt.
pub fn probe_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        reconnect: Backoff::once(),
        ..ClientOptions::default()
    }
}

impl Cluster {
    /// Starts every node of `specs` (node 1 first, the others joining through it) with the
    /// extra `serve_flags`, `skewed` with its clock offset, and waits until each sees all of them
    /// up.
    pub fn start(
        binary: &Path,
        specs: Vec<NodeSpec>,
        serve_flags: Vec<String>,
        skewed: Option<(u16, &str)>,
    ) -> Result<Cluster> {
        let mut cluster = Cluster {
            binary: binary.to_path_buf(),
            serve_flags,
            nodes: specs
                .into_iter()
                .map(|spec| Node { spec, child: None, paused: false, started: false, standby: false })
                .collect(),
        };
        for node in cluster.ids() {
            std::fs::create_dir_all(&cluster.node(node).spec.data_dir)?;
            let offset = skewed.filter(|(skewed, _)| *skewed == node).map(|(_, offset)| offset);
            cluster.spawn(node, offset)?;
        }
        cluster.wait_whole(Duration::from_secs(90))?;
        Ok(cluster)
    }

    /// Ids of the cluster's nodes, 1-based (not a node still waiting to join).
    pub fn ids(&self) -> Vec<u16> {
        self.members().map(|node| node.spec.id).collect()
    }

    /// The client address of every node of the cluster (not of a node still waiting to join).
    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.members().map(|node| node.spec.client).collect()
    }

    fn members(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| !node.standby)
    }

    /// Keeps `spec` ready to join the running cluster later ([`Cluster::join`]); its id must be
    /// the next after the others'.
    pub fn add_standby(&mut self, spec: NodeSpec) -> Result<()> {
        anyhow::ensure!(usize::from(spec.id) == self.nodes.len() + 1, "node {} is not the next id", spec.id);
        std::fs::create_dir_all(&spec.data_dir)?;
        self.nodes.push(Node { spec, child: None, paused: false, started: false, standby: true });
        Ok(())
    }

    /// The node waiting to join, if any.
    pub fn joiner(&self) -> Option<u16> {
        self.nodes.iter().find(|node| node.standby).map(|node| node.spec.id)
    }

    /// Starts the waiting node `node` with `--join`: it becomes one of the cluster's nodes.
    pub fn join(&mut self, node: u16) -> Result<()> {
        anyhow::ensure!(self.node(node).standby, "node {node} is not waiting to join");
        self.node_mut(node).standby = false;
        self.spawn_with(node, None, &["--join"])
    }

    pub fn spec(&self, node: u16) -> &NodeSpec {
        &self.node(node).spec
    }

    fn node(&self, node: u16) -> &Node {
        &self.nodes[node as usize - 1]
    }

    fn node_mut(&mut self, node: u16) -> &mut Node {
        &mut self.nodes[node as usize - 1]
    }

    /// Whether node `node` has a process (running or paused).
    pub fn is_running(&self, node: u16) -> bool {
        self.node(node).child.is_some()
    }

    /// Starts node `node`; with `clock_offset` (libfaketime's syntax, `+0.3` for 300 ms ahead)
    /// its wall clock runs that far off, while its monotonic clock is left alone.
    pub fn spawn(&mut self, node: u16, clock_offset: Option<&str>) -> Result<()> {
        self.spawn_with(node, clock_offset, &[])
    }

    /// [`Cluster::spawn`] with extra `ringkv serve` flags for this start.
    fn spawn_with(&mut self, node: u16, clock_offset: Option<&str>, flags: &[&str]) -> Result<()> {
        // The first start of node 1 founds the cluster; the first start of any other node joins
        // through node 1, as `tools/local-cluster.sh` does; a restart joins through every other node.
        let seeds: Vec<String> = if self.node(node).started {
            self.nodes
                .iter()
                .filter(|other| other.spec.id != node)
                .map(|other| other.spec.peer.to_string())
                .collect()
        } else if node == 1 {
            Vec::new()
        } else {
            vec![self.node(1).spec.peer.to_string()]
        };
        let binary = self.binary.clone();
        let spec = self.node(node).spec.clone();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        let mut command = match &spec.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--node-id", &node.to_string()])
            .args(["--listen", &spec.client.to_string()])
            .args(["--peer-listen", &spec.peer.to_string()])
            .args(["--shards", "1", "--replication-factor", "3", "--shutdown-grace-ms", "1000"])
            // The nodes listen on their namespaces' private addresses, reachable only from this
            // harness: no users or cluster secret are needed there.
            .arg("--allow-unauthenticated")
            .env("RINGKV_LOG", std::env::var("RINGKV_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !seeds.is_empty() {
            command.args(["--seeds", &seeds.join(",")]);
        }
        command.args(&self.serve_flags).args(flags);
        if let Some(offset) = clock_offset {
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        note(
            &spec.log,
            &format!("chaos: starting node {node} (clock offset {})", clock_offset.unwrap_or("none")),
        );
        let child = command.spawn().with_context(|| format!("cannot start node {node}"))?;
        let slot = self.node_mut(node);
        slot.child = Some(child);
        slot.paused = false;
        slot.started = true;
        Ok(())
    }

    /// Sends `signal` to node `node`'s process.
    fn signal(&self, node: u16, signal: libc::c_int) -> Result<()> {
        let Some(child) = &self.node(node).child else { bail!("node {node} is not running") };
        // SAFETY: kill(2) on a child this process started and has not reaped.
        if unsafe { libc::kill(child.id() as libc::pid_t, signal) } != 0 {
            bail!("kill({}, {signal}) failed: {}", child.id(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Deletes the storage engine's files (write-ahead log, tables, manifest) of every shard of
    /// a stopped `node`, keeping its identity (`NODE`, `PEERS`): a replaced disk. Returns how
    /// many files went.
    pub fn lose_storage(&mut self, node: u16) -> Result<usize> {
        anyhow::ensure!(self.node(node).child.is_none(), "node {node} is running");
        let data_dir = self.spec(node).data_dir.clone();
        note(&self.spec(node).log, &format!("chaos: node {node} loses its storage files"));
        let mut removed = 0;
        for shard in std::fs::read_dir(&data_dir)?.flatten() {
            if !shard.file_name().to_string_lossy().starts_with("shard-") {
                continue;
            }
            for file in std::fs::read_dir(shard.path())?.flatten() {
                if ringkv_storage::is_engine_file(&file.file_name().to_string_lossy()) {
                    std::fs::remove_file(file.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// kill -9 of node `node`.
    pub fn kill(&mut self, node: u16) -> Result<()> {
        note(&self.spec(node).log, &format!("chaos: kill -9 node {node}"));
        self.signal(node, libc::SIGKILL)?;
        let mut child = self.node_mut(node).child.take().expect("signalled above");
        child.wait()?;
        Ok(())
    }

    /// Stops node `node` cleanly (SIGTERM), or with SIGKILL after `grace`.
    pub fn stop(&mut self, node: u16, grace: Duration) -> Result<()> {
        if self.node(node).paused {
            self.resume(node)?;
        }
        let Some(mut child) = self.node_mut(node).child.take() else { return Ok(()) };
        // SAFETY: kill(2) on a child this process started and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// SIGSTOP of node `node`.
    pub fn pause(&mut self, node: u16) -> Result<()> {
        note(&self.spec(node).log, &format!("chaos: SIGSTOP node {node}"));
        self.signal(node, libc::SIGSTOP)?;
        self.node_mut(node).paused = true;
        Ok(())
    }

    /// SIGCONT of node `node`.
    pub fn resume(&mut self, node: u16) -> Result<()> {
        self.signal(node, libc::SIGCONT)?;
        note(&self.spec(node).log, &format!("chaos: SIGCONT node {node}"));
        self.node_mut(node).paused = false;
        Ok(())
    }

    /// Resumes every paused node and starts every stopped one (not a node waiting to join).
    pub fn restore(&mut self) -> Result<()> {
        for node in self.ids() {
            if self.node(node).paused {
                self.resume(node)?;
            }
            if !self.is_running(node) {
                self.spawn(node, None)?;
            }
        }
        Ok(())
    }

    /// Nodes whose process exited on its own (a crash), with how it exited.
    pub fn exited(&mut self) -> Vec<(u16, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push((node.spec.id, status.to_string()));
                    node.child = None;
                }
            }
        }
        exited
    }

    /// Waits until every node answers and lists every node up; fails after `timeout`.
    pub fn wait_whole(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let expected = self.members().count();
        let mut last = String::new();
        while started.elapsed() < timeout {
            let exited = self.exited();
            if !exited.is_empty() {
                bail!("node(s) exited while the cluster formed: {exited:?}");
            }
            let views: Vec<Result<usize, String>> = self
                .client_addresses()
                .into_iter()
                .map(|address| {
                    let client =
                        Client::connect_with(address, probe_options()).map_err(|error| error.to_string())?;
                    let topology = client.topology().ok_or("no topology")?;
                    Ok(topology.nodes.iter().filter(|node| node.up).count())
                })
                .collect();
            if views.iter().all(|view| view.as_ref().is_ok_and(|&up| up == expected)) {
                return Ok(started.elapsed());
            }
            last = format!("{views:?}");
            thread::sleep(Duration::from_millis(250));
        }
        bail!("the cluster did not become whole within {timeout:?}: nodes up as each node sees it: {last}")
    }

    /// Stops every node.
    pub fn shutdown(&mut self) {
        for node in self.ids() {
            if let Err(error) = self.stop(node, Duration::from_secs(5)) {
                eprintln!("chaos: stopping node {node}: {error:#}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Appends a line to a node's log, so the log shows what was done to it and when.
fn note(log: &Path, line: &str) {
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(log) {
        use std::io::Write;
        let _ = writeln!(file, "{} {line}", super::report::utc_now());
    }
}

/// The log lines of `log` holding `needle`.
pub fn log_count(log: &Path, needle: &str) -> usize {
    File::open(log)
        .ok()
        .and_then(|mut file| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut file, &mut text).ok()?;
            Some(text.lines().filter(|line| line.contains(needle)).count())
        })
        .unwrap_or(0)
}
