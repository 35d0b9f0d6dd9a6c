//! [`Consistency`]: how many of a key's replicas must answer before a coordinator answers the
//! client (Dynamo §4.5: W for writes, R for reads; R + W > N makes every read see the latest
//! acknowledged write).

use std::fmt;
use std::str::FromStr;

/// How many replicas a read or a write waits for, as a share of the replication factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority: `replicas / 2 + 1`. Quorum writes and quorum reads always overlap in at least
    /// one replica.
    Quorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Every level, in increasing strength.
    pub const ALL_LEVELS: [Consistency; 3] = [Consistency::One, Consistency::Quorum, Consistency::All];

    /// The replicas that must answer out of `replicas`: one → 1, quorum → `replicas / 2 + 1`,
    /// all → `replicas`. Never less than 1, so that no request succeeds without any replica, and
    /// never more than `replicas` unless `replicas` is 0 (then 1: nothing can succeed).
    pub fn required(self, replicas: usize) -> usize {
        let required = match self {
            Consistency::One => 1,
            Consistency::Quorum => replicas / 2 + 1,
            Consistency::All => replicas,
        };
        required.max(1)
    }

    /// The name an operator writes: `one`, `quorum` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A consistency level that is none of `one`, `quorum` and `all`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("consistency level {text:?} is none of \"one\", \"quorum\" and \"all\"")]
pub struct ConsistencyParseError {
    pub text: String,
}

impl FromStr for Consistency {
    type Err = ConsistencyParseError;

    /// Parses the lowercase names that [`Consistency`]'s `Display` writes.
    fn from_str(text: &str) -> Result<Self, ConsistencyParseError> {
        Consistency::ALL_LEVELS
            .into_iter()
            .find(|level| level.as_str() == text)
            .ok_or_else(|| ConsistencyParseError { text: text.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_replicas_follow_the_level() {
        let expected = [
            // (replicas, one, quorum, all)
            (1, 1, 1, 1),
            (2, 1, 2, 2),
            (3, 1, 2, 3),
            (4, 1, 3, 4),
            (5, 1, 3, 5),
            (7, 1, 4, 7),
        ];
        for (replicas, one, quorum, all) in expected {
            assert_eq!(Consistency::One.required(replicas), one, "one of {replicas}");
            assert_eq!(Consistency::Quorum.required(replicas), quorum, "quorum of {replicas}");
            assert_eq!(Consistency::All.required(replicas), all, "all of {replicas}");
        }
    }

    #[test]
    fn quorum_reads_and_writes_overlap() {
        for replicas in 1..=7 {
            let quorum = Consistency::Quorum.required(replicas);
            assert!(2 * quorum > replicas, "{replicas} replicas");
        }
    }

    #[test]
    fn no_level_is_satisfied_by_zero_replicas() {
        for level in Consistency::ALL_LEVELS {
            assert_eq!(level.required(0), 1, "{level}");
        }
    }

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for level in Consistency::ALL_LEVELS {
            assert_eq!(level.to_string().parse::<Consistency>(), Ok(level));
        }
        assert_eq!("quorum".parse(), Ok(Consistency::Quorum));
        for bad in ["", "QUORUM", "Quorum", "two", " one", "local_quorum"] {
            let error = bad.parse::<Consistency>().unwrap_err();
            assert_eq!(error.text, bad);
            assert!(error.to_string().contains("\"quorum\""), "{error}");
        }
    }
}
