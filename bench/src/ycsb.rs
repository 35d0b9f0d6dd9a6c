//! YCSB's core workloads (`workloads/workloada` ... `workloadf` in the YCSB repository): the mix
//! of operations, the request distribution, and the key names.
//!
//! | workload | mix                                   | request distribution |
//! |----------|---------------------------------------|----------------------|
//! | a        | 50% read, 50% update                  | zipfian              |
//! | b        | 95% read, 5% update                   | zipfian              |
//! | c        | 100% read                             | zipfian              |
//! | d        | 95% read, 5% insert                   | latest               |
//! | f        | 50% read, 50% read-modify-write       | zipfian              |
//!
//! Keys are `user` + the key number zero-padded to [`KEY_NUMBER_DIGITS`] digits: YCSB's
//! `insertorder=ordered` with `zeropadding=12`. YCSB's default (`hashed`) hashes the number first;
//! ordered keys are chosen here so that `load` writes in key order and a key's number can be read
//! off its name. The zipfian distribution is scrambled, so the hot keys are spread over the key
//! space either way. Each record is one value of `--value-size` bytes (YCSB writes ten 100-byte
//! fields per record).

use crate::distribution::{KeyChooser, Latest, ScrambledZipfian};
use clap::ValueEnum;
use rand::Rng;

/// Digits of a key number in a key name: room for a trillion records, and 16-byte keys.
pub const KEY_NUMBER_DIGITS: usize = 12;

/// The key named by `number`, written into `out` (cleared first).
pub fn key_name_into(number: u64, out: &mut Vec<u8>) {
    // By hand rather than with `write!`: formatting machinery was 4% of the generator's CPU.
    let mut digits = [b'0'; 20]; // u64::MAX has 20 digits
    let mut rest = number;
    let mut first = digits.len();
    loop {
        first -= 1;
        digits[first] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.clear();
    out.extend_from_slice(b"user");
    out.extend_from_slice(&digits[first.min(digits.len() - KEY_NUMBER_DIGITS)..]);
}

/// The key named by `number`.
pub fn key_name(number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + KEY_NUMBER_DIGITS);
    key_name_into(number, &mut key);
    key
}

/// One of YCSB's core workloads (E, scans, needs range reads the protocol does not have yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    A,
    B,
    C,
    D,
    F,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::F => "f",
        }
    }

    /// Shares of each operation, in percent of all operations.
    pub fn mix(self) -> Mix {
        match self {
            Workload::A => Mix { read: 50, update: 50, insert: 0, read_modify_write: 0 },
            Workload::B => Mix { read: 95, update: 5, insert: 0, read_modify_write: 0 },
            Workload::C => Mix { read: 100, update: 0, insert: 0, read_modify_write: 0 },
            Workload::D => Mix { read: 95, update: 0, insert: 5, read_modify_write: 0 },
            Workload::F => Mix { read: 50, update: 0, insert: 0, read_modify_write: 50 },
        }
    }

    /// The request distribution YCSB's workload file names.
    pub fn request_distribution(self) -> RequestDistribution {
        match self {
            Workload::D => RequestDistribution::Latest,
            _ => RequestDistribution::Zipfian,
        }
    }
}

/// YCSB's `requestdistribution`: how reads and updates pick among the existing keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RequestDistribution {
    Uniform,
    /// YCSB's scrambled zipfian, constant 0.99.
    Zipfian,
    /// YCSB's skewed latest: recently inserted keys are the most popular.
    Latest,
}

impl RequestDistribution {
    /// The distribution over `records` loaded keys.
    pub fn key_chooser(self, records: u64) -> KeyChooser {
        match self {
            RequestDistribution::Uniform => KeyChooser::Uniform,
            RequestDistribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(records.max(1))),
            RequestDistribution::Latest => KeyChooser::Latest(Latest::new(records.max(1))),
        }
    }
}

/// What one operation of a workload does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperationKind {
    /// Reads one existing key.
    Read,
    /// Overwrites one existing key.
    Update,
    /// Writes a new key beyond the ones written so far.
    Insert,
    /// Reads a key, then writes it; its latency covers both (YCSB's `READ-MODIFY-WRITE`).
    ReadModifyWrite,
}

impl OperationKind {
    pub const ALL: [OperationKind; 4] =
        [OperationKind::Read, OperationKind::Update, OperationKind::Insert, OperationKind::ReadModifyWrite];

    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Read => "read",
            OperationKind::Update => "update",
            OperationKind::Insert => "insert",
            OperationKind::ReadModifyWrite => "read_modify_write",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Percent of operations of each kind; they add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub read: u32,
    pub update: u32,
    pub insert: u32,
    pub read_modify_write: u32,
}

impl Mix {
    /// The kind of the next operation.
    pub fn choose(&self, random: &mut impl Rng) -> OperationKind {
        debug_assert_eq!(self.read + self.update + self.insert + self.read_modify_write, 100);
        let mut draw = random.gen_range(0..100);
        for (kind, share) in [
            (OperationKind::Read, self.read),
            (OperationKind::Update, self.update),
            (OperationKind::Insert, self.insert),
            (OperationKind::ReadModifyWrite, self.read_modify_write),
        ] {
            if draw < share {
                return kind;
            }
            draw -= share;
        }
        unreachable!("the shares add up to 100")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn keys_are_user_and_a_zero_padded_number() {
        assert_eq!(key_name(42), b"user000000000042");
        for number in [0, 7, 999_999_999_999, 1_000_000_000_000, u64::MAX] {
            assert_eq!(key_name(number), format!("user{number:012}").into_bytes());
        }
        assert!(key_name(9) < key_name(10), "ordered keys sort in number order");
    }

    #[test]
    fn mixes_add_up_and_are_followed() {
        let draws = 100_000;
        for workload in [Workload::A, Workload::B, Workload::C, Workload::D, Workload::F] {
            let mix = workload.mix();
            assert_eq!(mix.read + mix.update + mix.insert + mix.read_modify_write, 100);
            let mut random = SmallRng::seed_from_u64(3);
            let mut counts = [0u32; 4];
            for _ in 0..draws {
                counts[mix.choose(&mut random).index()] += 1;
            }
            let shares = [mix.read, mix.update, mix.insert, mix.read_modify_write];
            for (count, share) in counts.iter().zip(shares) {
                let expected = f64::from(share) / 100.0 * f64::from(draws);
                // Within a percentage point of the workload's share.
                assert!(
                    (f64::from(*count) - expected).abs() < f64::from(draws) / 100.0,
                    "{workload:?}: {counts:?}"
                );
            }
        }
    }
}
