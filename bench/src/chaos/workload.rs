//! The load of a chaos run: a few client threads, each with its own blocking client, issuing
//! puts (some with a time to live), deletes and gets of a small key space, each put with a value
//! of its own, and increments of two counters by compare-and-swap ([`super::counters`]), mostly
//! at QUORUM and sometimes at ONE or ALL. Every operation is recorded as the
//! simulator records it ([`ringkv_sim::history::Operation`]): when it was invoked and completed
//! (microseconds since the run's start), and whether it was acknowledged, failed (certainly not
//! applied) or unknown (may have been applied).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ringkv_client::blocking::Client;
use ringkv_client::{Backoff, CasResult, ClientOptions, Consistency, Error, ErrorCode, Expected, Versioned};
use ringkv_sim::history::{Kind, Operation, Outcome};
use ringkv_wire::peer::{PeerEntry, PeerValue};

use super::counters;

/// Longest time to live a put asks for; the settle phase waits at least this long so that every
/// expiring value is gone before the final reads.
pub const TTL_MS_MAX: u64 = 3000;

/// What the load does.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub clients: usize,
    pub keys: usize,
    /// Operations per second, all clients together.
    pub rate: u32,
    pub seed: u64,
    /// Copies of each key (N), for the number of answers each level needs.
    pub replicas: usize,
    /// The network namespace of each client (`/run/netns/NAME`), which its thread enters
    /// before it opens a socket; empty in the loopback form, where clients stay in this
    /// process's namespace.
    pub namespaces: Vec<std::path::PathBuf>,
    /// Whether operations may run at ONE (else they run at QUORUM or ALL).
    pub allow_one: bool,
}

/// The clients while they run.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Operation>>>,
}

/// Name of key `index`.
pub fn key_name(index: usize) -> Bytes {
    Bytes::from(format!("key{index:03}"))
}

/// Microseconds from `epoch` to now: the history's clock.
pub fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// How many answers `level` needs of `replicas` copies.
pub fn required(level: Consistency, replicas: usize) -> usize {
    match level {
        Consistency::One => 1,
        Consistency::Quorum => replicas / 2 + 1,
        Consistency::All => replicas,
    }
}

/// Client options for the load: a request timeout above the nodes' replica timeout (2 s), so a
/// coordinator's own `Timeout` answer arrives first, and a short reconnect back-off, so a client
/// whose node is down moves on quickly.
pub fn client_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        reconnect: Backoff {
            attempts_max: 2,
            delay_initial: Duration::from_millis(50),
            delay_max: Duration::from_millis(200),
        },
        ..ClientOptions::default()
    }
}

/// Whether a failed write certainly did not take effect: nothing was sent (no connection, a
/// limit), or the coordinator refused it before sending anything (too few replicas up,
/// overloaded, not its key). Anything else (a timeout, a lost connection, `Indeterminate` after
/// a replica's refusal) may have been applied.
fn certainly_not_applied(error: &Error) -> bool {
    match error {
        Error::Limit(_) | Error::Connect { .. } | Error::Resolve { .. } | Error::InFlightFull { .. } => true,
        Error::Server(failure) => {
            matches!(failure.code, ErrorCode::Unavailable | ErrorCode::Overloaded | ErrorCode::WrongShard)
        }
        _ => false,
    }
}

/// The outcome of a failed operation.
pub fn failed(error: &Error, is_write: bool) -> Outcome {
    if is_write && !certainly_not_applied(error) {
        Outcome::Unknown(error.to_string())
    } else {
        Outcome::Failed(error.to_string())
    }
}

/// The outcome of a read that answered.
pub fn read_outcome(found: Option<Versioned>) -> Outcome {
    match found {
        Some(Versioned { value, version, expires_at_ms }) => {
            Outcome::Read(Some(PeerEntry { version, value: PeerValue::Live { data: value, expires_at_ms } }))
        }
        None => Outcome::Absent,
    }
}

impl Workload {
    /// Starts `spec.clients` threads against `addresses` (client `i` first contacts node
    /// `i mod n`), each in its own network namespace when `spec.namespaces` names them; fails
    /// (and stops the clients) if one cannot enter its namespace.
    pub fn start(
        spec: &WorkloadSpec,
        addresses: Vec<SocketAddr>,
        epoch: Instant,
    ) -> anyhow::Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, entered) = std::sync::mpsc::sync_channel(spec.clients);
        let threads = (0..spec.clients)
            .map(|client| {
                let spec = spec.clone();
                let addresses = addresses.clone();
                let stop = Arc::clone(&stop);
                let ready = ready.clone();
                thread::Builder::new()
                    .name(format!("chaos-client-{client}"))
                    .spawn(move || {
                        if let Some(path) = spec.namespaces.get(client) {
                            if let Err(error) = super::network::enter_namespace(path) {
                                let _ = ready.send(Err(error));
                                return Vec::new();
                            }
                        }
                        let _ = ready.send(Ok(()));
                        run_client(client, &spec, &addresses, epoch, &stop)
                    })
                    .expect("spawn a client thread")
            })
            .collect();
        let workload = Workload { stop, threads };
        for _ in 0..spec.clients {
            match entered.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    workload.stop();
                    return Err(error.context("a load client could not enter its namespace"));
                }
                Err(_) => {
                    workload.stop();
                    anyhow::bail!("a load client thread ended before it started");
                }
            }
        }
        Ok(workload)
    }

    /// Stops the clients after their operation in flight and returns every operation.
    pub fn stop(self) -> Vec<Operation> {
        self.stop.store(true, Ordering::SeqCst);
        let mut operations: Vec<Operation> = self
            .threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("a client thread panicked"))
            .collect();
        operations.sort_by_key(|op| op.invoked_step);
        operations
    }
}

/// Connects to the first node of `addresses`, from `first`, that answers; `None` once stopped.
fn connect(addresses: &[SocketAddr], first: usize, stop: &AtomicBool) -> Option<Client> {
    for attempt in 0.. {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let address = addresses[(first + attempt) % addresses.len()];
        if let Ok(client) = Client::connect_with(address, client_options()) {
            return Some(client);
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

fn run_client(
    client: usize,
    spec: &WorkloadSpec,
    addresses: &[SocketAddr],
    epoch: Instant,
    stop: &AtomicBool,
) -> Vec<Operation> {
    let mut rng = SmallRng::seed_from_u64(spec.seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let interval = Duration::from_secs_f64(spec.clients as f64 / f64::from(spec.rate.max(1)));
    let mut operations = Vec::new();
    let run = ClientRun { client, spec, epoch };
    let Some(mut connection) = connect(addresses, client, stop) else { return operations };
    let mut next = Instant::now();
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        // No catching up after a slow call: the rate is a ceiling, not a debt.
        next = Instant::now().max(next) + interval;
        let consistency = match rng.gen_range(0..10) {
            0 if spec.allow_one => Consistency::One,
            1 => Consistency::All,
            _ => Consistency::Quorum,
        };
        if rng.gen_range(0..100) < counters::INCREMENT_PERCENT {
            sequence += 1;
            let counter = counters::counter_name(rng.gen_range(0..counters::COUNTERS));
            let tag = format!("c{client}-{sequence}");
            increment(&run, &mut connection, counter, consistency, &tag, &mut operations);
            continue;
        }
        let key = key_name(rng.gen_range(0..spec.keys));
        let kind = match rng.gen_range(0..100) {
            0..=44 => {
                sequence += 1;
                let value = Bytes::from(format!("c{client}-{sequence}"));
                let ttl_ms = rng.gen_bool(0.1).then(|| rng.gen_range(1000..=TTL_MS_MAX));
                Kind::Put { value, ttl_ms }
            }
            45..=54 => Kind::Delete,
            _ => Kind::Get,
        };
        let node = connection.route(&key).node_id.unwrap_or(0);
        let invoked_step = micros_since(epoch);
        let handle = connection.with_consistency(consistency);
        let (version, outcome) = match &kind {
            Kind::Put { value, ttl_ms: None } => match handle.put(&key, value) {
                Ok(version) => (Some(version), Outcome::Written),
                Err(error) => (None, failed(&error, true)),
            },
            Kind::Put { value, ttl_ms: Some(ttl_ms) } => {
                match handle.put_with_ttl(&key, value, Duration::from_millis(*ttl_ms)) {
                    Ok(version) => (Some(version), Outcome::Written),
                    Err(error) => (None, failed(&error, true)),
                }
            }
            Kind::Delete => match handle.delete(&key) {
                Ok(version) => (Some(version), Outcome::Written),
                Err(error) => (None, failed(&error, true)),
            },
            Kind::Get => match handle.get(&key) {
                Ok(found) => (None, read_outcome(found)),
                Err(error) => (None, failed(&error, false)),
            },
        };
        operations.push(run.operation(node, key, kind, consistency, invoked_step, (version, outcome)));
    }
    operations
}

/// One load client's part of the run, for recording its operations.
struct ClientRun<'a> {
    client: usize,
    spec: &'a WorkloadSpec,
    epoch: Instant,
}

impl ClientRun<'_> {
    /// The record of an operation invoked at `invoked_step` that ended now, with the version it
    /// wrote (if any) and its outcome.
    fn operation(
        &self,
        node: u16,
        key: Bytes,
        kind: Kind,
        consistency: Consistency,
        invoked_step: u64,
        (version, outcome): (Option<u64>, Outcome),
    ) -> Operation {
        Operation {
            client: Some(self.client),
            node,
            key,
            kind,
            consistency,
            replicas: self.spec.replicas,
            required: required(consistency, self.spec.replicas),
            version,
            invoked_step,
            completed_step: Some(micros_since(self.epoch)),
            outcome,
        }
    }
}

/// Increments `counter` once: a read at QUORUM, then a swap at `consistency` from the version
/// read to the count read plus one; both are recorded (the swap as a put of its value).
fn increment(
    run: &ClientRun<'_>,
    connection: &mut Client,
    counter: Bytes,
    consistency: Consistency,
    tag: &str,
    operations: &mut Vec<Operation>,
) {
    let node = connection.route(&counter).node_id.unwrap_or(0);
    let invoked_step = micros_since(run.epoch);
    // The count read and the state to swap from; a value that holds no count counts as 0.
    let (outcome, base) = match connection.with_consistency(Consistency::Quorum).get(&counter) {
        Ok(found) => {
            let base = match &found {
                Some(found) => {
                    (counters::count_of(&found.value).unwrap_or(0), Expected::Version(found.version))
                }
                None => (0, Expected::Absent),
            };
            (read_outcome(found), Some(base))
        }
        Err(error) => (failed(&error, false), None),
    };
    let read =
        run.operation(node, counter.clone(), Kind::Get, Consistency::Quorum, invoked_step, (None, outcome));
    operations.push(read);
    let Some((count, expected)) = base else { return };
    let value = counters::value(count + 1, tag);
    let invoked_step = micros_since(run.epoch);
    let ended = match connection.with_consistency(consistency).compare_and_swap(&counter, expected, &value) {
        Ok(CasResult::Swapped { version }) => (Some(version), Outcome::Written),
        Ok(CasResult::Mismatch { current_version }) => (None, Outcome::Mismatch { current_version }),
        Err(error) => (None, failed(&error, true)),
    };
    let kind = Kind::Put { value, ttl_ms: None };
    operations.push(run.operation(node, counter, kind, consistency, invoked_step, ended));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::Failure;

    #[test]
    fn only_refusals_before_sending_make_a_write_certainly_failed() {
        let refused = Error::Server(Failure { code: ErrorCode::Unavailable, message: "2 of 3 up".into() });
        assert!(matches!(failed(&refused, true), Outcome::Failed(_)));
        let timed_out = Error::Server(Failure { code: ErrorCode::Timeout, message: "1 of 2 acks".into() });
        assert!(matches!(failed(&timed_out, true), Outcome::Unknown(_)));
        assert!(matches!(
            failed(&Error::Timeout { timeout: Duration::from_secs(3) }, true),
            Outcome::Unknown(_)
        ));
        assert!(matches!(failed(&timed_out, false), Outcome::Failed(_)));
        let refused_after_applying =
            Error::Server(Failure { code: ErrorCode::Indeterminate, message: "a replica refused".into() });
        assert!(matches!(failed(&refused_after_applying, true), Outcome::Unknown(_)));
        assert_eq!(required(Consistency::Quorum, 3), 2);
        assert_eq!(required(Consistency::All, 3), 3);
    }
}
