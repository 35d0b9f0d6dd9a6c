//! [`Client`]: a simulated client issuing one operation at a time, each with a unique value, to
//! a random node, mostly at QUORUM and sometimes at ONE or ALL.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::RngExt;
use ringkv_wire::Consistency;

use crate::history::Kind;

/// The next operation a client issues.
#[derive(Clone, Debug)]
pub struct Request {
    pub node: u16,
    pub key: Bytes,
    pub kind: Kind,
    pub consistency: Consistency,
}

/// One client.
pub struct Client {
    id: usize,
    /// Operations it will still issue.
    operations_left: usize,
    /// The history index of the operation it waits for.
    pub in_flight: Option<usize>,
    values_written: u64,
}

impl Client {
    /// Client `id`, which will issue `operations` operations.
    pub fn new(id: usize, operations: usize) -> Self {
        Client { id, operations_left: operations, in_flight: None, values_written: 0 }
    }

    /// Whether it has issued everything and has nothing in flight.
    pub fn is_done(&self) -> bool {
        self.operations_left == 0 && self.in_flight.is_none()
    }

    /// Chooses the next operation over `keys` through one of `nodes`, or `None` when done.
    pub fn next(&mut self, rng: &mut StdRng, keys: &[Bytes], nodes: &[u16]) -> Option<Request> {
        if self.operations_left == 0 {
            return None;
        }
        self.operations_left -= 1;
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
        let consistency = match rng.random_range(0..100u32) {
            0..80 => Consistency::Quorum,
            80..90 => Consistency::One,
            _ => Consistency::All,
        };
        Some(Request { node, key, kind, consistency })
    }
}
