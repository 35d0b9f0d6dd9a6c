//! This process's own CPU time, from `getrusage(RUSAGE_SELF)`: the load generator reports it so a
//! reader can tell whether the tool, rather than the server, limited the throughput.

use std::time::Duration;

/// CPU time used by every thread of this process since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    /// The CPU time used so far.
    pub fn now() -> std::io::Result<CpuTime> {
        // SAFETY: `getrusage` only writes into the zeroed struct we hand it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let duration = |time: libc::timeval| {
            Duration::from_secs(time.tv_sec as u64) + Duration::from_micros(time.tv_usec as u64)
        };
        Ok(CpuTime { user: duration(usage.ru_utime), system: duration(usage.ru_stime) })
    }

    /// The CPU time used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    /// User and system time together, as a percentage of one core over `wall`.
    pub fn percent_of_one_core(&self, wall: Duration) -> f64 {
        if wall.is_zero() {
            return 0.0;
        }
        (self.user + self.system).as_secs_f64() / wall.as_secs_f64() * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinning_uses_user_time() {
        let before = CpuTime::now().unwrap();
        let started = std::time::Instant::now();
        let mut sum = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            sum = std::hint::black_box(sum.wrapping_add(1));
        }
        let used = CpuTime::now().unwrap().since(&before);
        assert!(used.user + used.system > Duration::ZERO, "{used:?}");
        assert_eq!(CpuTime::default().percent_of_one_core(Duration::ZERO), 0.0);
    }
}
