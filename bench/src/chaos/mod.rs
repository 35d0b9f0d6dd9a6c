//! The `chaos` subcommand: real `ringkv serve` processes under real faults, judged like Jepsen
//! by the simulator's own checkers.
//!
//! 3 to 5 nodes run, each in its own network namespace on a private bridge, and so does each
//! client of the load, which a partition cuts off with its home node. The load records every
//! operation (invoked, completed, ok / failed / unknown) while a scenario injects its fault at a
//! third of the run and heals it at two thirds: nftables partitions (both ways, one way), random
//! packet loss, a slowed link (delay with jitter), SIGSTOP pauses, kill -9 and restart, a node's
//! clock offset with libfaketime, or several of these at once. Once healed and settled, every
//! key is read at ALL and every replica's copy at ONE, and [`ringkv_sim::checker`] judges the history: no acknowledged write
//! lost, no deleted key back, W + R > N reads, convergence after the repairing read.
//!
//! Without namespaces (not root, no CAP_NET_ADMIN, no `ip` or `nft`) the run says so and falls
//! back to a loopback form: nodes on 127.0.0.1 ports with the process faults only (kill-restart,
//! pause).
//!
//! ```text
//!  ChaosArgs ─▶ network (namespaces | loopback) ─▶ per scenario:
//!     cluster (processes) ─▶ workload (history) ─┬─ scenario (faults, heal)
//!                                                └─ settle (reads at ALL, copies at ONE)
//!     ─▶ ringkv_sim::checker ─▶ report
//! ```
//!
//! ## Layout
//! - [`network`]: namespaces, bridge and veth pairs, or loopback ports; leftovers of crashed runs.
//! - [`faults`]: nftables partitions and loss inside the namespaces.
//! - [`cluster`]: the node processes: start, kill, pause, clock offset, wait until whole.
//! - [`workload`]: the client threads and the history they record.
//! - [`scenario`]: the scenarios and their fault schedules.
//! - [`settle`]: the final reads at ALL and the per-replica reads.
//! - [`report`]: the figures, the recovery time, the verdict.

mod cluster;
mod counters;
mod faults;
mod network;
mod report;
mod scenario;
mod settle;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ringkv_sim::checker;
use ringkv_sim::history::History;

use cluster::{Cluster, NodeSpec, LIBFAKETIME};
use network::Namespaces;
use report::ScenarioReport;
use scenario::Scenario;
use workload::{Workload, WorkloadSpec, TTL_MS_MAX};

/// Copies of each key the nodes are started with.
const REPLICATION_FACTOR: usize = 3;

/// Options of `ringkv-bench chaos`.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Scenario to run: partition-majority, partition-one-way, kill-restart, pause, loss,
    /// clock-skew, clock-skew-beyond, delay, mixed, lose-disk; several separated by commas; or `all`.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Seconds of load per scenario; the fault starts at a third and heals at two thirds.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Number of nodes (3 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=5))]
    pub nodes: u16,
    /// Seed of the fault schedule and the load (the n-th scenario of `all` uses seed + n);
    /// default: drawn from the clock and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep every run's data directories and logs, even when it passes. Without it a passing
    /// run's directory is removed, and a failing run keeps its logs and history but not its data.
    #[arg(long)]
    pub keep: bool,
    /// Where run directories go (not tmpfs: the nodes use O_DIRECT).
    #[arg(long, default_value = "/var/tmp/ringkv-chaos")]
    pub dir: PathBuf,
    /// The `ringkv` binary; default: the one beside this program.
    #[arg(long)]
    pub ringkv: Option<PathBuf>,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Operations per second, all clients together (a ceiling: a client waits for each reply).
    #[arg(long, default_value_t = 300)]
    pub rate: u32,
    /// Keys the load writes and reads.
    #[arg(long, default_value_t = 40)]
    pub keys: usize,
    /// Run the loopback form (process faults only) even where namespaces could be made.
    #[arg(long)]
    pub loopback: bool,
    /// Plant a fault beyond what ringkv promises to survive, in place of each scenario's fault,
    /// to see the checkers catch it: `unsynced-acks` (nodes acknowledge before syncing, then all
    /// are killed at once). A sabotaged run is expected to fail.
    #[arg(long, value_enum)]
    pub sabotage: Option<scenario::Sabotage>,
}

/// Runs the scenarios asked for and prints each verdict; exits with status 1 when any checker
/// failed (after removing the namespaces), so the exit status is the verdict.
pub fn run(args: ChaosArgs) -> Result<()> {
    let passed = run_all(&args)?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the scenarios; whether every one that ran passed.
fn run_all(args: &ChaosArgs) -> Result<bool> {
    let binary = match &args.ringkv {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ringkv"),
    };
    if !binary.is_file() {
        bail!(
            "no ringkv binary at {} (build it with `cargo build --release`, or pass --ringkv)",
            binary.display()
        );
    }
    if args.duration < 6 {
        bail!("--duration must be at least 6 seconds (warm-up, fault and heal each need two)");
    }
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        scenario::ALL.to_vec()
    } else {
        args.scenario
            .split(',')
            .map(|name| Scenario::parse(name.trim()).with_context(|| format!("unknown scenario {name:?}")))
            .collect::<Result<_>>()?
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |time| time.as_secs())
    });
    let unavailable = if args.loopback {
        Some("--loopback asked for".to_string())
    } else {
        network::namespaces_unavailable()
    };
    let namespaces = match &unavailable {
        None => {
            network::remove_leftovers();
            network::remove_on_interrupt()?;
            Some(Namespaces::create(args.nodes, args.clients).context("make the network namespaces")?)
        }
        Some(reason) => {
            println!("chaos: network namespaces unavailable ({reason}); loopback form: process faults only");
            None
        }
    };
    let faketime = Path::new(LIBFAKETIME).is_file();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let mut extra =
        args.sabotage.map_or(String::new(), |sabotage| format!(" --sabotage {}", sabotage.name()));
    if args.loopback {
        extra.push_str(" --loopback");
    }
    println!(
        "chaos: {} node(s), {} s per scenario, seed {seed} (rerun: ringkv-bench chaos --scenario {} --duration {} \
         --nodes {} --seed {seed}{extra})",
        args.nodes, args.duration, args.scenario, args.duration, args.nodes
    );
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    for (index, scenario) in scenarios.into_iter().enumerate() {
        let scenario_seed = seed.wrapping_add(index as u64);
        if namespaces.is_none() && scenario.needs_namespaces() {
            skipped.push(format!("{} (needs network namespaces)", scenario.name()));
            continue;
        }
        if scenario.needs_faketime() && !faketime {
            skipped.push(format!(
                "{} (needs libfaketime at {LIBFAKETIME}: apt-get install faketime)",
                scenario.name()
            ));
            continue;
        }
        println!("chaos: {} (seed {scenario_seed}) ...", scenario.name());
        let report = run_scenario(args, &binary, namespaces.as_ref(), scenario, scenario_seed)?;
        print!("{}", report.render());
        reports.push(report);
    }
    for line in &skipped {
        println!("SKIP {line}");
    }
    let failed: Vec<&str> =
        reports.iter().filter(|report| !report.passed()).map(|report| report.scenario.as_str()).collect();
    println!(
        "chaos: {} passed, {} failed, {} skipped",
        reports.len() - failed.len(),
        failed.len(),
        skipped.len()
    );
    if !failed.is_empty() {
        println!("chaos: checkers failed in: {}", failed.join(", "));
        return Ok(false);
    }
    if reports.is_empty() {
        bail!("no scenario could run here");
    }
    Ok(true)
}

/// The nodes' addresses and directories for a run in `run_dir`.
fn node_specs(nodes: u16, namespaces: Option<&Namespaces>, run_dir: &Path) -> Result<Vec<NodeSpec>> {
    let endpoints = match namespaces {
        Some(namespaces) => (1..=nodes).map(|node| namespaces.endpoints(node)).collect(),
        None => network::loopback_endpoints(nodes)?,
    };
    Ok(endpoints
        .into_iter()
        .zip(1..)
        .map(|((client, peer), id)| NodeSpec {
            id,
            client,
            peer,
            namespace: namespaces.map(|namespaces| namespaces.namespace(id)),
            data_dir: run_dir.join(format!("node-{id}")),
            log: run_dir.join(format!("node-{id}.log")),
        })
        .collect())
}

/// One scenario from start to verdict.
fn run_scenario(
    args: &ChaosArgs,
    binary: &Path,
    namespaces: Option<&Namespaces>,
    scenario: Scenario,
    seed: u64,
) -> Result<ScenarioReport> {
    let run_dir = args.dir.join(format!("{}-seed{seed}-{}", scenario.name(), std::process::id()));
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    std::fs::create_dir_all(&run_dir)?;
    let all_nodes = args.nodes + u16::from(scenario.adds_a_node());
    let mut specs = node_specs(all_nodes, namespaces, &run_dir)?;
    // Every node the run ends with: the settling reads ask a node that joined too.
    let addresses: BTreeMap<u16, std::net::SocketAddr> =
        specs.iter().map(|spec| (spec.id, spec.client)).collect();
    let joiner = scenario.adds_a_node().then(|| specs.pop().expect("a spec for the node that joins"));
    let victim = scenario::victim(seed, args.nodes);
    let skewed = scenario.clock_offset().map(|offset| (victim, offset));
    let serve_flags = args.sabotage.map(scenario::Sabotage::serve_flags).unwrap_or_default();
    let mut cluster = Cluster::start(binary, specs, serve_flags, skewed)?;
    if let Some(joiner) = joiner {
        cluster.add_standby(joiner)?;
    }
    let replicas = REPLICATION_FACTOR.min(usize::from(args.nodes));
    let client_namespaces = namespaces.map_or_else(Vec::new, |namespaces| {
        (0..args.clients).map(|client| namespaces.client_namespace_path(client)).collect()
    });
    let spec = WorkloadSpec {
        clients: args.clients,
        keys: args.keys,
        rate: args.rate,
        seed,
        replicas,
        namespaces: client_namespaces,
        allow_one: scenario.allows_one(),
    };
    let epoch = Instant::now();
    let duration = Duration::from_secs(args.duration);
    let workload = Workload::start(&spec, cluster.client_addresses(), epoch)?;
    let fault_at = (duration / 3).as_micros() as u64;
    scenario::sleep_until(epoch + duration / 3);
    let heal_at = epoch + duration * 2 / 3;
    let schedule = match args.sabotage {
        // The planted fault comes once the load has stopped, so no later write hides what it lost.
        Some(_) => {
            scenario::sleep_until(heal_at);
            Ok(Vec::new())
        }
        None => scenario::run_faults(scenario, &mut cluster, namespaces, seed, epoch, heal_at),
    };
    let healed_at = workload::micros_since(epoch);
    let mut schedule = match schedule {
        Ok(schedule) => schedule,
        Err(error) => {
            let _ = workload.stop();
            return Err(error.context(format!("{} fault schedule", scenario.name())));
        }
    };
    scenario::sleep_until(epoch + duration);
    let mut operations = workload.stop();
    if let Some(scenario::Sabotage::UnsyncedAcks) = args.sabotage {
        schedule.extend(scenario::kill_all(&mut cluster, epoch)?);
    }
    // Settle: every node whole again, then every expiring value past its time, before reading.
    let whole = cluster.wait_whole(Duration::from_secs(60));
    scenario::sleep_until(Instant::now() + Duration::from_millis(TTL_MS_MAX + 1000));
    let keys: BTreeSet<bytes::Bytes> = operations.iter().map(|op| op.key.clone()).collect();
    let mut violations = Vec::new();
    let (replica_map, stored) = match whole.and_then(|_| settle::settle(&addresses, &keys, replicas, epoch)) {
        Ok(settled) => {
            operations.extend(settled.final_reads);
            (settled.replicas, settled.stored)
        }
        Err(error) => {
            violations.push(format!("the cluster did not settle after the heal: {error:#}"));
            (BTreeMap::new(), BTreeMap::new())
        }
    };
    let history = History { operations };
    violations.extend(checker::check(&history, &replica_map, &stored));
    violations.extend(counters::check(&history));
    let exited = cluster.exited();
    for (node, status) in &exited {
        violations.push(format!("node {node} exited on its own ({status}); see its log"));
    }
    let log_checks = log_checks(scenario, &cluster, victim, all_nodes);
    cluster.shutdown();
    let (operations_count, writes, acknowledged, reads_ok, failed, unknown) = report::counts(&history);
    let mut report = ScenarioReport {
        scenario: match args.sabotage {
            Some(sabotage) => format!("{} sabotaged by {}", scenario.name(), sabotage.name()),
            None => scenario.name().to_string(),
        },
        seed,
        nodes: args.nodes,
        duration_s: args.duration,
        schedule,
        operations: operations_count,
        writes,
        acknowledged,
        reads_ok,
        failed,
        unknown,
        lost: checker::lost_acknowledged_writes(&history),
        inversions: checker::real_time_inversions(&history),
        keys: keys.len(),
        increments: counters::outcomes(&history),
        recovery_s: report::recovery_seconds(&history, healed_at),
        latency_before_ms: report::latency_ms(&history, 0, fault_at),
        latency_during_ms: report::latency_ms(&history, fault_at, healed_at),
        violations,
        log_checks,
        run_dir: run_dir.clone(),
        kept: true,
    };
    report.kept = args.keep || !report.passed();
    if report.kept {
        std::fs::write(run_dir.join("history.txt"), report::history_text(&history))?;
        std::fs::write(run_dir.join("report.txt"), report.render())?;
        std::fs::write(run_dir.join("violations.txt"), report.violations.join("\n"))?;
        if !args.keep {
            for node in 1..=all_nodes {
                let _ = std::fs::remove_dir_all(run_dir.join(format!("node-{node}")));
            }
        }
    } else {
        std::fs::remove_dir_all(&run_dir)?;
    }
    Ok(report)
}

/// Facts a scenario must leave in the nodes' logs: beyond the clock-skew bound, the other nodes
/// refused the skewed node's writes (`ClockSkew`, "ahead of this node's clock").
fn log_checks(scenario: Scenario, cluster: &Cluster, skewed: u16, nodes: u16) -> Vec<(String, bool)> {
    if scenario == Scenario::Join {
        return join_log_checks(cluster, nodes);
    }
    if scenario != Scenario::ClockSkewBeyond {
        return Vec::new();
    }
    let refusals: usize = cluster
        .ids()
        .into_iter()
        .filter(|&node| node != skewed)
        .map(|node| cluster::log_count(&cluster.spec(node).log, "ahead of this node's clock"))
        .sum();
    vec![(
        format!("the other nodes refused node {skewed}'s versions from beyond the bound ({refusals} refusals logged)"),
        refusals > 0,
    )]
}

/// How long the node that joined may take, after the cluster settled, to log that it serves
/// replica reads again (anti-entropy rounds run every 2 s while it rebuilds).
const JOIN_RESTORED_WAIT: Duration = Duration::from_secs(30);

/// What the node that joined (node `joiner`, the last) must have logged: the gate at its first
/// start and again after the restart, and the end of the rebuild.
fn join_log_checks(cluster: &Cluster, joiner: u16) -> Vec<(String, bool)> {
    let log = &cluster.spec(joiner).log;
    let count = |needle: &str| cluster::log_count(log, needle);
    let deadline = Instant::now() + JOIN_RESTORED_WAIT;
    while count("serving replica reads again") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    vec![
        (
            format!("node {joiner} started gated as a joining node"),
            count("joining a cluster that holds data") == 1,
        ),
        (
            format!("node {joiner}, killed before it had restored its ranges, was still rebuilding after its restart"),
            gated_after_restart(&std::fs::read_to_string(log).unwrap_or_default()),
        ),
        (
            format!("node {joiner} served replica reads once every range was restored"),
            count("serving replica reads again") >= 1,
        ),
    ]
}

/// Whether a node's log shows the rebuild gate kept across its kill: either the node had
/// finished rebuilding before the kill, or it logged the gate again after it.
fn gated_after_restart(log: &str) -> bool {
    let Some(kill) = log.find("chaos: kill -9") else { return false };
    let (before, after) = log.split_at(kill);
    before.contains("serving replica reads again") || after.contains("this shard is rebuilding")
}
