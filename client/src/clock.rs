//! [`coarse_now`]: the monotonic clock as of the kernel's last tick, for the request path.
//!
//! Every request checks whether the topology is due for a refresh and whether any node is held
//! back after failing; both measure spans of hundreds of milliseconds or more. A precise reading
//! of the monotonic clock costs about 45 ns on the virtual machines this project is measured on
//! (a seventh of that for the coarse clock): at a million requests a second, 4% of the client's
//! CPU.

use std::time::{Duration, Instant};

/// Now, within one kernel tick (1 to 4 ms, by the kernel's configuration). Monotonic on each
/// thread; readings from different threads may differ by a tick.
pub(crate) fn coarse_now() -> Instant {
    #[cfg(target_os = "linux")]
    {
        // The coarse clock counts from the same origin as `Instant`, but `Instant` cannot be
        // made from a reading: each thread pairs one precise reading with a coarse one, and
        // moves the precise one on by what the coarse clock moved since.
        thread_local! {
            static BASE: (Instant, Duration) = (Instant::now(), coarse_monotonic());
        }
        BASE.with(|&(precise, coarse)| precise + coarse_monotonic().saturating_sub(coarse))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Instant::now()
    }
}

/// `CLOCK_MONOTONIC_COARSE`, read through the vDSO (no system call).
#[cfg(target_os = "linux")]
fn coarse_monotonic() -> Duration {
    let mut reading = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `reading` is a valid timespec to write to; the clock id is a constant Linux has
    // had since 2.6.32, and the call cannot fail with these arguments.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut reading) };
    Duration::new(reading.tv_sec as u64, reading.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_precise_one_within_a_tick_and_never_goes_back() {
        // A kernel tick is at most 10 ms (HZ = 100); allow for a descheduled thread too.
        let slack = Duration::from_millis(50);
        let mut last = coarse_now();
        for _ in 0..1_000 {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            assert!(coarse >= last, "went back");
            assert!(
                coarse + slack >= before && coarse <= after + slack,
                "{coarse:?} not within {before:?}..{after:?}"
            );
            last = coarse;
        }
    }
}
