//! YCSB's core workloads (`workloads/workloada` ... `workloadf` in the YCSB repository): the mix
//! of operations, the request distribution, and the key names.
//!
//! | workload | mix                                   | request distribution |
//! |----------|---------------------------------------|----------------------|
//! | a        | 50% read, 50% update                  | zipfian              |
//! | b        | 95% read, 5% update                   | zipfian              |
//! | c        | 100% read                             | zipfian              |
//! | d        | 95% read, 5% insert                   | latest               |
//! | e        | 95% scan, 5% insert                   | zipfian              |
//! | f        | 50% read, 50% read-modify-write       | zipfian              |
//!
//! Keys are `user` + the key number zero-padded to [`KEY_NUMBER_DIGITS`] digits: YCSB's
//! `insertorder=ordered` with `zeropadding=12`. YCSB's default (`hashed`) hashes the number first;
//! ordered keys are chosen here so that `load` writes in key order and a key's number can be read
//! off its name. The zipfian distribution is scrambled, so the hot keys are spread over the key
//! space either way. Each record is one value of `--value-size` bytes (YCSB writes ten 100-byte
//! fields per record).
//!
//! Workload E's scans start at a key drawn from the request distribution and ask for a length
//! drawn uniformly from 1 to [`SCAN_LENGTH_MAX`] (YCSB's `maxscanlength=100`,
//! `scanlengthdistribution=uniform`). ringkv scans in token order, so they read the records
//! that follow the start key's position on the ring (hashed order, as YCSB's own hashed-insert
//! mode gives), not consecutive numbers.

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

/// Longest scan of workload E, in records (YCSB's `maxscanlength`).
pub const SCAN_LENGTH_MAX: u32 = 100;

/// One of YCSB's core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    A,
    B,
    C,
    D,
    E,
    F,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::E => "e",
            Workload::F => "f",
        }
    }

    /// Shares of each operation, in percent of all operations.
    pub fn mix(self) -> Mix {
        match self {
            Workload::A => Mix { read: 50, update: 50, ..Mix::NONE },
            Workload::B => Mix { read: 95, update: 5, ..Mix::NONE },
            Workload::C => Mix { read: 100, ..Mix::NONE },
            Workload::D => Mix { read: 95, insert: 5, ..Mix::NONE },
            Workload::E => Mix { scan: 95, insert: 5, ..Mix::NONE },
            Workload::F => Mix { read: 50, read_modify_write: 50, ..Mix::NONE },
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
    /// Reads a run of consecutive keys from an existing one (YCSB's `SCAN`).
    Scan,
}

impl OperationKind {
    pub const ALL: [OperationKind; 5] = [
        OperationKind::Read,
        OperationKind::Update,
        OperationKind::Insert,
        OperationKind::ReadModifyWrite,
        OperationKind::Scan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Read => "read",
            OperationKind::Update => "update",
            OperationKind::Insert => "insert",
            OperationKind::ReadModifyWrite => "read_modify_write",
            OperationKind::Scan => "scan",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The length of a workload E scan: uniform over `1..=SCAN_LENGTH_MAX`.
pub fn scan_length(random: &mut impl Rng) -> u32 {
    random.gen_range(1..=SCAN_LENGTH_MAX)
}

/// Percent of operations of each kind; they add up to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub read: u32,
    pub update: u32,
    pub insert: u32,
    pub read_modify_write: u32,
    pub scan: u32,
}

impl Mix {
    /// No operation at all; workloads name their shares on top of it.
    const NONE: Mix = Mix { read: 0, update: 0, insert: 0, read_modify_write: 0, scan: 0 };

    /// Each kind with its share, in [`OperationKind::ALL`] order.
    pub fn shares(&self) -> [(OperationKind, u32); 5] {
        [
            (OperationKind::Read, self.read),
            (OperationKind::Update, self.update),
            (OperationKind::Insert, self.insert),
            (OperationKind::ReadModifyWrite, self.read_modify_write),
            (OperationKind::Scan, self.scan),
        ]
    }

    /// The kind of the next operation.
    pub fn choose(&self, random: &mut impl Rng) -> OperationKind {
        debug_assert_eq!(self.shares().iter().map(|(_, share)| share).sum::<u32>(), 100);
        let mut draw = random.gen_range(0..100);
        for (kind, share) in self.shares() {
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
    fn workload_e_is_scans_and_inserts_over_a_zipfian_start() {
        assert_eq!(Workload::E.mix(), Mix { scan: 95, insert: 5, ..Mix::NONE });
        assert_eq!(Workload::E.request_distribution(), RequestDistribution::Zipfian);
        assert_eq!(OperationKind::Scan.name(), "scan");
    }

    #[test]
    fn scan_lengths_are_uniform_from_one_to_the_maximum() {
        let mut random = SmallRng::seed_from_u64(5);
        let mut seen = [0u32; SCAN_LENGTH_MAX as usize + 1];
        for _ in 0..100_000 {
            seen[scan_length(&mut random) as usize] += 1;
        }
        assert_eq!(seen[0], 0);
        // Each length within a fifth of its expected 1,000 draws.
        assert!(seen[1..].iter().all(|&count| (800..1200).contains(&count)), "{seen:?}");
    }

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
        for workload in Workload::value_variants().iter().copied() {
            let mix = workload.mix();
            assert_eq!(mix.shares().iter().map(|(_, share)| share).sum::<u32>(), 100);
            let mut random = SmallRng::seed_from_u64(3);
            let mut counts = [0u32; OperationKind::ALL.len()];
            for _ in 0..draws {
                counts[mix.choose(&mut random).index()] += 1;
            }
            for (count, (kind, share)) in counts.iter().zip(mix.shares()) {
                assert_eq!(kind, OperationKind::ALL[kind.index()]);
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
