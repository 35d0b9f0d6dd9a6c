//! The scenarios, and the schedule every run follows over its duration D:
//!
//! ```text
//!  0 ──── warm-up ──── D/3 ──── fault ──── 2D/3 (heal) ──── load goes on ──── D
//!  then: every node up and whole ─▶ wait out expiring values ─▶ read every key at ALL
//!        ─▶ read each replica's copy at ONE ─▶ checkers ─▶ report
//! ```
//!
//! What is chosen at random (which node, how long a pause, how much loss) comes from the
//! scenario's seed, so a seed names a schedule.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::cluster::Cluster;
use super::faults;
use super::network::Namespaces;

/// A named fault schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A minority of the nodes cut off from the majority, both ways.
    PartitionMajority,
    /// One node can no longer send to the others, but still receives from them.
    PartitionOneWay,
    /// Nodes killed with SIGKILL and restarted, one at a time, over and over.
    KillRestart,
    /// Nodes frozen with SIGSTOP and thawed with SIGCONT, one at a time, over and over.
    Pause,
    /// Every node drops a share of its packets at random, both ways.
    Loss,
    /// One node runs with its wall clock 300 ms ahead (within the 500 ms bound) from the start,
    /// and is restarted with the true time at the heal. (From the start, not from the fault:
    /// clients route around a node they could not reach for 5 s, so a node restarted at the
    /// fault would coordinate little of a short run.)
    ClockSkew,
    /// As [`Scenario::ClockSkew`], 2 s ahead, beyond the bound: the others must refuse the
    /// writes it coordinates (`ClockSkew` in their logs), never adopt them.
    ClockSkewBeyond,
    /// One node's link slowed both ways by a token-bucket queue: packets wait up to a few
    /// hundred milliseconds, more or less with the load (delay with jitter), and what would wait
    /// longer is dropped. See [`faults::slow_link`] for why not `tc netem`.
    Delay,
    /// Faults combined over time: a run of seeded episodes of a few seconds each, every one a
    /// network fault and a process fault at once (a partition while a node of the majority is
    /// paused, a kill during packet loss, a one-way partition while another node is killed, a
    /// slow link while another node is paused), healed before the next.
    Mixed,
    /// One node killed with SIGKILL and its storage files deleted (write-ahead log, tables and
    /// manifest of every shard: a replaced disk), then restarted: it must answer no read until
    /// anti-entropy has restored its data from the others. Clients read and write at QUORUM or
    /// ALL only: a value held by one node alone, which ONE may write or show, is lost with that
    /// node's disk whatever the store does.
    LoseDisk,
    /// A node added while the load runs (`--join`, a fresh data directory, its tokens taking
    /// over part of the ring), then killed with SIGKILL before it can have restored its ranges
    /// and restarted: until anti-entropy has brought each range from the others it must answer
    /// no replica read, across the restart. Clients read and write at QUORUM or ALL only: a
    /// value written at ONE to a replica the new node displaces stays on that node alone, and
    /// nothing moves it yet (no streaming).
    Join,
}

/// Every scenario, in the order `all` runs them.
pub const ALL: [Scenario; 11] = [
    Scenario::PartitionMajority,
    Scenario::PartitionOneWay,
    Scenario::KillRestart,
    Scenario::Pause,
    Scenario::Loss,
    Scenario::ClockSkew,
    Scenario::ClockSkewBeyond,
    Scenario::Delay,
    Scenario::Mixed,
    Scenario::LoseDisk,
    Scenario::Join,
];

/// The rates a slowed link is cut to, kbit/s: near what 300 operations a second make a node
/// send, so that its queue fills in bursts.
const SLOW_LINK_KBIT: std::ops::RangeInclusive<u32> = 64..=192;
/// How long a slowed link queues a packet before dropping it, ms.
const SLOW_LINK_LATENCY_MS: std::ops::RangeInclusive<u32> = 200..=500;

/// The clock offset of [`Scenario::ClockSkew`], in libfaketime's syntax.
const SKEW_WITHIN: &str = "+0.3";
/// The clock offset of [`Scenario::ClockSkewBeyond`].
const SKEW_BEYOND: &str = "+2";

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PartitionMajority => "partition-majority",
            Scenario::PartitionOneWay => "partition-one-way",
            Scenario::KillRestart => "kill-restart",
            Scenario::Pause => "pause",
            Scenario::Loss => "loss",
            Scenario::ClockSkew => "clock-skew",
            Scenario::ClockSkewBeyond => "clock-skew-beyond",
            Scenario::Delay => "delay",
            Scenario::Mixed => "mixed",
            Scenario::LoseDisk => "lose-disk",
            Scenario::Join => "join",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Whether the scenario needs network namespaces (nftables rules) or libfaketime; the
    /// loopback form runs only the others.
    pub fn needs_namespaces(self) -> bool {
        !matches!(self, Scenario::KillRestart | Scenario::Pause | Scenario::LoseDisk | Scenario::Join)
    }

    /// Whether clients may read and write at ONE: not while a node's disk is lost, which takes
    /// with it what only that node held, nor when a node joins, which may leave what only one
    /// node held on a node that is no longer its replica.
    pub fn allows_one(self) -> bool {
        !matches!(self, Scenario::LoseDisk | Scenario::Join)
    }

    /// Whether the scenario adds a node during the run (one more than `--nodes`).
    pub fn adds_a_node(self) -> bool {
        self == Scenario::Join
    }

    /// Whether the scenario offsets a node's clock (it needs libfaketime).
    pub fn needs_faketime(self) -> bool {
        matches!(self, Scenario::ClockSkew | Scenario::ClockSkewBeyond)
    }

    /// The clock offset this scenario gives a node during the fault.
    pub fn clock_offset(self) -> Option<&'static str> {
        match self {
            Scenario::ClockSkew => Some(SKEW_WITHIN),
            Scenario::ClockSkewBeyond => Some(SKEW_BEYOND),
            _ => None,
        }
    }
}

/// A fault beyond what ringkv promises to survive, planted to see the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sabotage {
    /// Nodes acknowledge writes before syncing them (`--sync periodic:10000`), and once the load
    /// has stopped every node is killed with SIGKILL at once, losing the writes not yet synced on
    /// every replica: the checkers must report lost acknowledged writes. Replaces the scenario's
    /// fault.
    UnsyncedAcks,
}

impl Sabotage {
    /// The name `--sabotage` takes.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::UnsyncedAcks => "unsynced-acks",
        }
    }

    /// The `ringkv serve` flags of the sabotaged nodes.
    pub fn serve_flags(self) -> Vec<String> {
        match self {
            Sabotage::UnsyncedAcks => vec!["--sync".into(), "periodic:10000".into()],
        }
    }
}

/// Kills every node at once with SIGKILL and restarts them (the fault of
/// [`Sabotage::UnsyncedAcks`]).
pub fn kill_all(cluster: &mut Cluster, epoch: Instant) -> Result<Vec<String>> {
    let ids = cluster.ids();
    for &node in &ids {
        cluster.kill(node)?;
    }
    let mut schedule =
        vec![format!("{:6.1} s  sabotage: kill -9 of every node at once", epoch.elapsed().as_secs_f64())];
    for &node in &ids {
        cluster.spawn(node, None)?;
    }
    schedule.push(format!("{:6.1} s  every node restarted", epoch.elapsed().as_secs_f64()));
    for line in &schedule {
        eprintln!("chaos: {line}");
    }
    Ok(schedule)
}

/// The node a scenario picks on (paused, killed first, cut off, skewed), from its seed.
pub fn victim(seed: u64, nodes: u16) -> u16 {
    SmallRng::seed_from_u64(seed ^ 0x0076_6963_7469_6d00).gen_range(1..=nodes)
}

/// Runs `scenario`'s faults from now until `heal_at`, then heals everything. Returns what it
/// did, one line per action, with times since `epoch`.
pub fn run_faults(
    scenario: Scenario,
    cluster: &mut Cluster,
    namespaces: Option<&Namespaces>,
    seed: u64,
    epoch: Instant,
    heal_at: Instant,
) -> Result<Vec<String>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut schedule = Vec::new();
    let mut say = |line: String| {
        let line = format!("{:6.1} s  {line}", epoch.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        schedule.push(line);
    };
    let ids = cluster.ids();
    let nodes = ids.len() as u16;
    let victim = victim(seed, nodes);
    match scenario {
        Scenario::PartitionMajority => {
            let namespaces = namespaces.expect("partitions run in namespaces");
            let mut shuffled = ids.clone();
            shuffled.shuffle(&mut rng);
            let minority: Vec<u16> = shuffled[..usize::from((nodes - 1) / 2)].to_vec();
            faults::partition(namespaces, &minority)?;
            say(format!("partition: {minority:?} and their clients cut off from the rest, both ways"));
            sleep_until(heal_at);
            faults::heal(namespaces)?;
            say("heal: partition removed".into());
        }
        Scenario::PartitionOneWay => {
            let namespaces = namespaces.expect("partitions run in namespaces");
            faults::one_way(namespaces, victim)?;
            say(format!(
                "one-way partition: node {victim} and its clients cannot send to the others, still receive"
            ));
            sleep_until(heal_at);
            faults::heal(namespaces)?;
            say("heal: partition removed".into());
        }
        Scenario::Loss => {
            let namespaces = namespaces.expect("loss runs in namespaces");
            let percent = rng.gen_range(10..=30);
            faults::loss(namespaces, percent)?;
            say(format!("loss: every node drops {percent} % of its packets, both ways"));
            sleep_until(heal_at);
            faults::heal(namespaces)?;
            say("heal: loss removed".into());
        }
        Scenario::KillRestart | Scenario::Pause => {
            while Instant::now() + Duration::from_secs(2) < heal_at {
                let node = *ids.choose(&mut rng).expect("nodes");
                let down_for = Duration::from_millis(rng.gen_range(1500..=4000));
                if scenario == Scenario::KillRestart {
                    cluster.kill(node)?;
                    say(format!("kill -9 node {node}"));
                } else {
                    cluster.pause(node)?;
                    say(format!("SIGSTOP node {node}"));
                }
                sleep_until((Instant::now() + down_for).min(heal_at));
                if scenario == Scenario::KillRestart {
                    cluster.spawn(node, None)?;
                    say(format!("restart node {node}"));
                } else {
                    cluster.resume(node)?;
                    say(format!("SIGCONT node {node}"));
                }
                let up_for = Duration::from_millis(rng.gen_range(1000..=3000));
                sleep_until((Instant::now() + up_for).min(heal_at));
            }
            sleep_until(heal_at);
            cluster.restore()?;
            say("heal: every node running".into());
        }
        Scenario::LoseDisk => {
            cluster.kill(victim)?;
            say(format!("kill -9 node {victim}"));
            let removed = cluster.lose_storage(victim)?;
            say(format!("node {victim} lost its disk: {removed} storage files deleted"));
            sleep_until((Instant::now() + Duration::from_millis(rng.gen_range(1000..=3000))).min(heal_at));
            cluster.spawn(victim, None)?;
            say(format!("restart node {victim}, to restore its data from the others"));
            sleep_until(heal_at);
            cluster.restore()?;
            say("heal: every node running".into());
        }
        Scenario::Delay => {
            let namespaces = namespaces.expect("slow links run in namespaces");
            let rate_kbit = rng.gen_range(SLOW_LINK_KBIT);
            let latency_ms = rng.gen_range(SLOW_LINK_LATENCY_MS);
            faults::slow_link(namespaces, victim, rate_kbit, latency_ms)?;
            say(format!(
                "slow link: node {victim} sends and receives at {rate_kbit} kbit/s, packets queued up to {latency_ms} ms"
            ));
            sleep_until(heal_at);
            faults::heal(namespaces)?;
            say("heal: link restored".into());
        }
        Scenario::Mixed => {
            let namespaces = namespaces.expect("mixed faults run in namespaces");
            while Instant::now() + Duration::from_secs(2) < heal_at {
                let episode_end =
                    (Instant::now() + Duration::from_millis(rng.gen_range(2000..=5000))).min(heal_at);
                mixed_episode(&mut rng, cluster, namespaces, &ids, episode_end, &mut say)?;
                sleep_until(episode_end);
                faults::heal(namespaces)?;
                cluster.restore()?;
                say("episode healed: every rule removed, every node running".into());
                let gap = Duration::from_millis(rng.gen_range(500..=1500));
                sleep_until((Instant::now() + gap).min(heal_at));
            }
            sleep_until(heal_at);
            faults::heal(namespaces)?;
            cluster.restore()?;
            say("heal: every rule removed, every node running".into());
        }
        Scenario::Join => {
            let joiner = cluster.joiner().expect("the join scenario has a node to add");
            cluster.join(joiner)?;
            say(format!("node {joiner} joins with --join and an empty data directory"));
            sleep_until((Instant::now() + Duration::from_millis(rng.gen_range(1000..=2000))).min(heal_at));
            cluster.kill(joiner)?;
            say(format!("kill -9 node {joiner}, joining"));
            sleep_until((Instant::now() + Duration::from_millis(rng.gen_range(500..=1500))).min(heal_at));
            cluster.spawn(joiner, None)?;
            say(format!("restart node {joiner}: it must still answer no replica read it has not restored"));
            sleep_until(heal_at);
        }
        Scenario::ClockSkew | Scenario::ClockSkewBeyond => {
            let offset = scenario.clock_offset().expect("a clock scenario has an offset");
            say(format!(
                "node {victim} runs with its wall clock at {offset} s (libfaketime) since the start"
            ));
            sleep_until(heal_at);
            cluster.stop(victim, Duration::from_secs(5))?;
            cluster.spawn(victim, None)?;
            say(format!("heal: node {victim} restarted with the true time"));
        }
    }
    Ok(schedule)
}

/// One episode of [`Scenario::Mixed`]: a network fault and a process fault together, from now
/// until `end` (the caller heals both). A killed node comes back within the episode, after
/// 1.5 to 3 s; a paused one stays frozen until the heal.
fn mixed_episode(
    rng: &mut SmallRng,
    cluster: &mut Cluster,
    namespaces: &Namespaces,
    ids: &[u16],
    end: Instant,
    say: &mut impl FnMut(String),
) -> Result<()> {
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(rng);
    let nodes = ids.len();
    match rng.gen_range(0..4) {
        0 => {
            let minority = shuffled[..(nodes - 1) / 2].to_vec();
            let paused = shuffled[nodes - 1];
            faults::partition(namespaces, &minority)?;
            cluster.pause(paused)?;
            say(format!(
                "episode: partition {minority:?} (with its clients) cut off, both ways, while node {paused} of the majority is paused"
            ));
        }
        1 => {
            let percent = rng.gen_range(5..=20);
            let killed = shuffled[0];
            faults::loss(namespaces, percent)?;
            cluster.kill(killed)?;
            say(format!(
                "episode: every node drops {percent} % of its packets, and node {killed} is killed (kill -9)"
            ));
            restart_within(rng, cluster, killed, end, say)?;
        }
        2 => {
            let (sender, killed) = (shuffled[0], shuffled[1]);
            faults::one_way(namespaces, sender)?;
            cluster.kill(killed)?;
            say(format!("episode: node {sender} (with its clients) cannot send, and node {killed} is killed (kill -9)"));
            restart_within(rng, cluster, killed, end, say)?;
        }
        _ => {
            let (slowed, paused) = (shuffled[0], shuffled[1]);
            let rate_kbit = rng.gen_range(SLOW_LINK_KBIT);
            let latency_ms = rng.gen_range(SLOW_LINK_LATENCY_MS);
            faults::slow_link(namespaces, slowed, rate_kbit, latency_ms)?;
            cluster.pause(paused)?;
            say(format!(
                "episode: node {slowed}'s link at {rate_kbit} kbit/s (queued up to {latency_ms} ms), while node {paused} is paused"
            ));
        }
    }
    Ok(())
}

/// Restarts the killed node `node` 1.5 to 3 s from now, or at `end` if that comes first.
fn restart_within(
    rng: &mut SmallRng,
    cluster: &mut Cluster,
    node: u16,
    end: Instant,
    say: &mut impl FnMut(String),
) -> Result<()> {
    let down_for = Duration::from_millis(rng.gen_range(1500..=3000));
    sleep_until((Instant::now() + down_for).min(end));
    cluster.spawn(node, None)?;
    say(format!("episode: node {node} restarted"));
    Ok(())
}

/// Sleeps until `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        thread::sleep(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_parses_from_its_name() {
        for scenario in ALL {
            assert_eq!(Scenario::parse(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::parse("nothing"), None);
        assert!(!Scenario::KillRestart.needs_namespaces() && !Scenario::Pause.needs_namespaces());
        assert!(!Scenario::LoseDisk.needs_namespaces() && !Scenario::LoseDisk.allows_one());
        assert!(Scenario::ClockSkew.needs_faketime());
    }
}
