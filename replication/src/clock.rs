//! [`HybridClock`]: the hybrid logical clock that stamps every write with its version.
//!
//! A version is one `u64`, compared as a number (highest wins):
//!
//! ```text
//!  63                              22 21          10 9          0
//!  ┌─────────────────────────────────┬──────────────┬────────────┐
//!  │ physical time, ms since epoch   │ logical      │ node id    │
//!  │ (42 bits: good until 2109)      │ (12 bits)    │ (10 bits)  │
//!  └─────────────────────────────────┴──────────────┴────────────┘
//! ```
//!
//! The physical part follows the wall clock; the logical counter orders writes within one
//! millisecond and keeps versions strictly increasing when the wall clock stalls or steps
//! backwards (Kulkarni et al., "Logical Physical Clocks", 2014). The node id in the low bits makes
//! versions from different nodes distinct, so last-writer-wins never sees a tie between nodes.
//!
//! The clock reads no time itself: callers pass the wall clock in (`ringkv_io::now_ms` in the
//! server, any number in tests and the simulator).

use std::cell::Cell;

/// A version from another node too far ahead of this node's wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "version {version} is {}ms ahead of this node's clock ({now_ms}ms), over max_clock_skew_ms {max_skew_ms}",
    version_ms - now_ms
)]
pub struct ClockSkew {
    pub version: u64,
    pub version_ms: u64,
    pub now_ms: u64,
    pub max_skew_ms: u64,
}

/// Bits of the node id at the bottom of a version.
pub const NODE_ID_BITS: u32 = 10;
/// Bits of the logical counter above the node id.
pub const LOGICAL_BITS: u32 = 12;
/// Largest node id a version can carry.
pub const NODE_ID_MAX: u16 = (1 << NODE_ID_BITS) - 1;
/// Largest physical time a version can carry, in ms since the Unix epoch (2109-05-15).
pub const PHYSICAL_MS_MAX: u64 = (1 << (64 - NODE_ID_BITS - LOGICAL_BITS)) - 1;

const _: () = assert!(NODE_ID_BITS + LOGICAL_BITS < 64);

/// One shard's hybrid logical clock. Not shared between threads: each shard has its own. A
/// write is versioned by the shard that coordinates it; the node id in the low bits keeps
/// versions from different nodes distinct, and every replica and reader observes the versions it
/// sees, so a later write through any node gets a higher version. At start the clock observes the
/// highest version on disk, so a restart never mints a version below one already written.
#[derive(Debug)]
pub struct HybridClock {
    node_id: u16,
    /// The last timestamp handed out or observed, without the node id:
    /// `physical_ms << LOGICAL_BITS | logical`. Treating it as one counter lets a logical
    /// overflow carry into the physical part, which keeps it monotonic.
    last: Cell<u64>,
}

impl HybridClock {
    /// A clock for node `node_id` that has seen nothing yet.
    ///
    /// # Panics
    ///
    /// If `node_id` is above [`NODE_ID_MAX`]; the configuration is checked before this is called.
    pub fn new(node_id: u16) -> Self {
        assert!(node_id <= NODE_ID_MAX, "node id {node_id} above {NODE_ID_MAX}");
        HybridClock { node_id, last: Cell::new(0) }
    }

    /// A new version, strictly above every version this clock handed out or observed, and not
    /// below the wall clock `now_ms`.
    pub fn next_version(&self, now_ms: u64) -> u64 {
        let physical = now_ms.min(PHYSICAL_MS_MAX) << LOGICAL_BITS;
        let timestamp = physical.max(self.last.get() + 1);
        self.last.set(timestamp);
        (timestamp << NODE_ID_BITS) | u64::from(self.node_id)
    }

    /// Takes note of a version seen elsewhere (read from storage, or from another node), so that
    /// the next version is above it.
    pub fn observe(&self, version: u64) {
        let timestamp = version >> NODE_ID_BITS;
        if timestamp > self.last.get() {
            self.last.set(timestamp);
        }
    }

    /// Takes note of a version minted by another node, refusing it when it lies further than
    /// `max_skew_ms` ahead of the wall clock `now_ms`. Adopting such a version would drag this
    /// clock (and every version it mints after) into the future, where a node with a sane clock
    /// could never overwrite the key again; so it is refused and the caller logs it.
    pub fn observe_remote(&self, version: u64, now_ms: u64, max_skew_ms: u64) -> Result<(), ClockSkew> {
        let version_ms = Self::physical_ms(version);
        if version_ms > now_ms.saturating_add(max_skew_ms) {
            return Err(ClockSkew { version, version_ms, now_ms, max_skew_ms });
        }
        self.observe(version);
        Ok(())
    }

    /// The physical part of a version, in ms since the Unix epoch.
    pub fn physical_ms(version: u64) -> u64 {
        version >> (NODE_ID_BITS + LOGICAL_BITS)
    }

    /// The node id of a version.
    pub fn node_id(version: u64) -> u16 {
        (version & u64::from(NODE_ID_MAX)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_carry_time_and_node() {
        let clock = HybridClock::new(7);
        let version = clock.next_version(1_700_000_000_000);
        assert_eq!(HybridClock::physical_ms(version), 1_700_000_000_000);
        assert_eq!(HybridClock::node_id(version), 7);
    }

    #[test]
    fn versions_increase_when_the_wall_clock_stalls_or_steps_back() {
        let clock = HybridClock::new(1);
        let mut previous = 0;
        for now_ms in [1000, 1000, 1000, 999, 500, 1001, 1001, 2000, 10] {
            let version = clock.next_version(now_ms);
            assert!(version > previous, "{version} after {previous} at {now_ms}");
            previous = version;
        }
    }

    #[test]
    fn logical_overflow_carries_into_the_physical_part() {
        let clock = HybridClock::new(0);
        let mut previous = 0;
        for _ in 0..(3 << LOGICAL_BITS) {
            let version = clock.next_version(5);
            assert!(version > previous);
            previous = version;
        }
        assert!(HybridClock::physical_ms(previous) > 5);
    }

    #[test]
    fn observed_versions_are_exceeded() {
        let clock = HybridClock::new(2);
        let other = HybridClock::new(3);
        let remote = other.next_version(50_000);
        clock.observe(remote);
        assert!(clock.next_version(10) > remote);
    }

    #[test]
    fn remote_versions_too_far_ahead_are_refused_and_not_adopted() {
        let clock = HybridClock::new(1);
        let other = HybridClock::new(2);
        let near = other.next_version(10_400);
        assert_eq!(clock.observe_remote(near, 10_000, 500), Ok(()));
        assert!(clock.next_version(10_000) > near);
        let far = other.next_version(20_000);
        let refused = clock.observe_remote(far, 10_000, 500).unwrap_err();
        assert_eq!(refused.version_ms, 20_000);
        assert!(clock.next_version(10_000) < far, "a refused version is never adopted");
    }

    #[test]
    fn clock_saturates_instead_of_wrapping() {
        let clock = HybridClock::new(NODE_ID_MAX);
        let first = clock.next_version(u64::MAX);
        assert_eq!(HybridClock::physical_ms(first), PHYSICAL_MS_MAX);
        assert!(clock.next_version(u64::MAX) > first);
    }
}
