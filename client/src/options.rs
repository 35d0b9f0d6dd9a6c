//! [`ClientOptions`] and the reconnection [`Backoff`], shared by every adapter.

use std::time::Duration;

use ringkv_wire::{Consistency, Credentials};

use crate::connection::IN_FLIGHT_MAX_DEFAULT;

/// Settings of a client, with defaults suited to a server on the same network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for each request's reply. After it the call fails with
    /// [`crate::Error::Timeout`]; the request may still take effect.
    pub request_timeout: Duration,
    /// Longest wait for one TCP connection attempt.
    pub connect_timeout: Duration,
    /// Requests awaiting replies on one connection; the async adapters wait for room beyond
    /// it, the blocking pipeline reads replies before sending more.
    pub in_flight_max: usize,
    /// How often, and how patiently, to retry connecting. When a request has another replica
    /// to go to, each replica but the last gets one attempt; the back-off applies to the last.
    pub reconnect: Backoff,
    /// How many replicas must answer each request: `None` leaves it to the node
    /// (`--read-consistency`, `--write-consistency`). Per call, see `with_consistency` on each
    /// adapter's client.
    pub consistency: Option<Consistency>,
    /// How old the topology may grow before the next request fetches it again. It is also
    /// fetched again after a node could not be reached or answered `Unavailable`, and at once
    /// after a `WrongShard` answer.
    pub topology_refresh_interval: Duration,
    /// After a node could not be reached, how long requests go to its key's other replicas
    /// first (it stays the last resort). Membership takes seconds to declare a node down, and
    /// the topology says "up" until then.
    pub unreachable_node_hold: Duration,
    /// Which of a key's replicas a request goes to first.
    pub replica_choice: ReplicaChoice,
    /// The user and password every connection the client opens authenticates with, before
    /// anything else it sends; `None` for a node without users. `Debug` hides the password.
    pub credentials: Option<Credentials>,
    /// TLS to every node, verified against a CA; `None` (the default): plaintext.
    pub tls: Option<crate::tls::TlsOptions>,
}

/// Which of a key's live replicas coordinates a request (see [`crate::routing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaChoice {
    /// The client's preferred node whenever it holds a replica, else the first live replica in
    /// preference order. Each client prefers one node, and the clients of a process spread
    /// their preferences over the ring's nodes: one client's requests share a connection and a
    /// coordinator, which batches them, while many clients spread the load.
    #[default]
    PreferredNode,
    /// Always the first live replica in preference order: each node coordinates the keys it
    /// is the primary replica of.
    FirstReplica,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            reconnect: Backoff::default(),
            consistency: None,
            topology_refresh_interval: Duration::from_secs(10),
            unreachable_node_hold: Duration::from_secs(5),
            replica_choice: ReplicaChoice::default(),
            credentials: None,
            tls: None,
        }
    }
}

/// Bounded exponential back-off between connection attempts: the first attempt is immediate,
/// each later one waits twice as long as the one before, up to `delay_max`, and after
/// `attempts_max` attempts the call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts_max: u32,
    pub delay_initial: Duration,
    pub delay_max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts_max: 6,
            delay_initial: Duration::from_millis(50),
            delay_max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// How long to wait before attempt number `attempt` (0-based).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        self.delay_initial.saturating_mul(factor).min(self.delay_max)
    }

    /// The attempts to make, at least one.
    pub fn attempts(&self) -> std::ops::Range<u32> {
        0..self.attempts_max.max(1)
    }

    /// One immediate attempt: for a connection with an alternative to fall back on.
    pub fn once() -> Backoff {
        Backoff { attempts_max: 1, delay_initial: Duration::ZERO, delay_max: Duration::ZERO }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stop_at_the_maximum() {
        let backoff = Backoff {
            attempts_max: 40,
            delay_initial: Duration::from_millis(10),
            delay_max: Duration::from_millis(50),
        };
        let delays: Vec<u128> = (0..6).map(|attempt| backoff.delay_before(attempt).as_millis()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 50, 50]);
        assert_eq!(backoff.delay_before(39), Duration::from_millis(50));
        assert_eq!(Backoff { attempts_max: 0, ..backoff }.attempts().count(), 1);
    }
}
