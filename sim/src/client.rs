//! [`Client`]: a simulated client issuing one operation at a time, each with a unique value, to
//! a random node, mostly at QUORUM and sometimes at ONE or ALL.
//!
//! Some operations are compare-and-swaps of keys of their own (no put or delete touches them):
//! the client reads the key at QUORUM through a node, then swaps from the version it read (or
//! from absent) to a value of its own, through the same node, at the level it drew.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::RngExt;
use ringkv_wire::peer::PeerValue;
use ringkv_wire::{Consistency, Expected};

use crate::history::{Kind, Outcome};

/// The next operation a client issues.
#[derive(Clone, Debug)]
pub struct Request {
    pub node: u16,
    pub key: Bytes,
    pub kind: Kind,
    pub consistency: Consistency,
    /// `Some`: a compare-and-swap from this state to the value of `kind` (a put without TTL).
    pub swap: Option<Expected>,
}

/// A swap waiting for the read it swaps from.
#[derive(Clone, Debug)]
struct SwapPlan {
    node: u16,
    key: Bytes,
    consistency: Consistency,
    /// The history index of the read, once issued.
    read: Option<usize>,
}

/// One client.
pub struct Client {
    id: usize,
    /// Operations it will still issue (a swap and the read before it count as two, so that a
    /// run's operations stay about as many as before swaps existed).
    operations_left: usize,
    /// The history index of the operation it waits for.
    pub in_flight: Option<usize>,
    values_written: u64,
    swap: Option<SwapPlan>,
}

impl Client {
    /// Client `id`, which will issue `operations` operations.
    pub fn new(id: usize, operations: usize) -> Self {
        Client { id, operations_left: operations, in_flight: None, values_written: 0, swap: None }
    }

    /// Whether it has issued everything and has nothing in flight.
    pub fn is_done(&self) -> bool {
        self.operations_left == 0 && self.in_flight.is_none() && self.swap.is_none()
    }

    /// Whether its next operation is the swap after a read: it follows the read at once.
    pub fn swaps_next(&self) -> bool {
        self.swap.is_some()
    }

    /// Notes that operation `index` was issued for it: the read of a planned swap, or any other.
    pub fn issued(&mut self, index: usize) {
        if let Some(plan) = self.swap.as_mut().filter(|plan| plan.read.is_none()) {
            plan.read = Some(index);
        }
    }

    /// Chooses the next operation over `keys` (and the swaps over `swap_keys`, `swap_percent`
    /// of the operations) through one of `nodes`, or `None` when done. `read_outcome` gives the
    /// outcome of a history operation: a planned swap is issued once its read answered, from
    /// what the read found, and dropped when the read failed. `wall_ms` is the swap's node's
    /// clock, which decides whether an expiring value read is live.
    pub fn next(
        &mut self,
        rng: &mut StdRng,
        keys: &[Bytes],
        swap_keys: &[Bytes],
        swap_percent: u32,
        nodes: &[u16],
        read_outcome: impl Fn(usize) -> (Outcome, u64),
    ) -> Option<Request> {
        if let Some(SwapPlan { node, key, consistency, read }) = self.swap.take() {
            let (outcome, wall_ms) = read_outcome(read.expect("a planned swap's read was issued"));
            let expected = match outcome {
                Outcome::Read(Some(entry)) => match entry.value {
                    PeerValue::Live { expires_at_ms, .. } if expires_at_ms.is_none_or(|at| at > wall_ms) => {
                        Some(Expected::Version(entry.version))
                    }
                    _ => Some(Expected::Absent),
                },
                Outcome::Read(None) => Some(Expected::Absent),
                _ => None,
            };
            if let Some(expected) = expected {
                self.values_written += 1;
                let value = Bytes::from(format!("c{}-{}", self.id, self.values_written));
                let kind = Kind::Put { value, ttl_ms: None };
                return Some(Request { node, key, kind, consistency, swap: Some(expected) });
            }
        }
        if self.operations_left == 0 {
            return None;
        }
        self.operations_left -= 1;
        if !swap_keys.is_empty() && rng.random_range(0..100u32) < swap_percent {
            self.operations_left = self.operations_left.saturating_sub(1);
            let node = nodes[rng.random_range(0..nodes.len())];
            let key = swap_keys[rng.random_range(0..swap_keys.len())].clone();
            let consistency = Self::level(rng);
            self.swap = Some(SwapPlan { node, key: key.clone(), consistency, read: None });
            return Some(Request {
                node,
                key,
                kind: Kind::Get,
                consistency: Consistency::Quorum,
                swap: None,
            });
        }
        let node = nodes[rng.random_range(0..nodes.len())];
        let key = keys[rng.random_range(0..keys.len())].clone();
        let kind = match rng.random_range(0..100u32) {
            0..50 => {
                self.values_written += 1;
                let value = Bytes::from(format!("c{}-{}", self.id, self.values_written));
                // Some values expire, some soon enough to expire during the run.
                let ttl_ms = rng.random_bool(0.15).then(|| rng.random_range(100..=3_000));
                Kind::Put { value, ttl_ms }
            }
            50..62 => Kind::Delete,
            _ => Kind::Get,
        };
        let consistency = Self::level(rng);
        Some(Request { node, key, kind, consistency, swap: None })
    }

    fn level(rng: &mut StdRng) -> Consistency {
        match rng.random_range(0..100u32) {
            0..80 => Consistency::Quorum,
            80..90 => Consistency::One,
            _ => Consistency::All,
        }
    }
}
