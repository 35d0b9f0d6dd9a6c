//! What the kernel's scheduler recorded for a thread: time on a CPU, and time it was ready to run
//! but waited for one.
//!
//! A thread-per-core server on a machine with more runnable threads than cores (a load generator
//! beside it, other services, a virtual machine's neighbours) is delayed by the wait, not by its
//! own work; nothing inside the process can see that wait except the kernel's own account of it,
//! `/proc/<pid>/task/<tid>/schedstat` (present when the kernel keeps scheduler statistics, as
//! distributions' kernels do). The shards export it as metrics, and the load generator reports its
//! own, so a latency tail can be told apart from a starved core.

use std::io;
use std::time::Duration;

/// One thread's (or a sum of threads') scheduler figures since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Time spent running on a CPU.
    pub on_cpu: Duration,
    /// Time spent runnable, waiting for a CPU (the kernel's "run delay").
    pub waiting: Duration,
    /// Times the thread was given a CPU.
    pub slices: u64,
}

impl SchedStat {
    /// Parses a `schedstat` file: three numbers, nanoseconds on a CPU, nanoseconds waiting, and
    /// time slices. `None` when the text is not that.
    pub fn parse(text: &str) -> Option<SchedStat> {
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let on_cpu = fields.next()?.ok()?;
        let waiting = fields.next()?.ok()?;
        let slices = fields.next()?.ok()?;
        if fields.next().is_some() {
            return None;
        }
        Some(SchedStat {
            on_cpu: Duration::from_nanos(on_cpu),
            waiting: Duration::from_nanos(waiting),
            slices,
        })
    }

    /// The figures of thread `tid` of this process (see [`current_thread_id`]).
    pub fn of_thread(tid: i32) -> io::Result<SchedStat> {
        read(&format!("/proc/self/task/{tid}/schedstat"))
    }

    /// The figures of every thread this process has now, summed. Threads that have ended are not
    /// in it, so compare two readings only across a span in which the same threads ran.
    pub fn of_this_process() -> io::Result<SchedStat> {
        let mut sum = SchedStat::default();
        for entry in std::fs::read_dir("/proc/self/task")? {
            let path = entry?.path().join("schedstat");
            match read(&path.to_string_lossy()) {
                Ok(thread) => sum = sum.plus(&thread),
                // The thread ended between the listing and the read.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(sum)
    }

    /// The figures accrued between `earlier` and `self`.
    pub fn since(&self, earlier: &SchedStat) -> SchedStat {
        SchedStat {
            on_cpu: self.on_cpu.saturating_sub(earlier.on_cpu),
            waiting: self.waiting.saturating_sub(earlier.waiting),
            slices: self.slices.saturating_sub(earlier.slices),
        }
    }

    /// The two figures added, as for two threads together.
    pub fn plus(&self, other: &SchedStat) -> SchedStat {
        SchedStat {
            on_cpu: self.on_cpu + other.on_cpu,
            waiting: self.waiting + other.waiting,
            slices: self.slices + other.slices,
        }
    }
}

fn read(path: &str) -> io::Result<SchedStat> {
    let text = std::fs::read_to_string(path)?;
    SchedStat::parse(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{path}: not three counters: {text:?}"))
    })
}

/// The kernel's id of the calling thread, as `/proc/self/task` names it.
pub fn current_thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_counters() {
        assert_eq!(
            SchedStat::parse("5430000000 3940000000 20611\n"),
            Some(SchedStat {
                on_cpu: Duration::from_millis(5430),
                waiting: Duration::from_millis(3940),
                slices: 20611
            })
        );
        for bad in ["", "1 2", "1 2 x", "1 2 3 4", "-1 2 3"] {
            assert_eq!(SchedStat::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn differences_saturate() {
        let earlier =
            SchedStat { on_cpu: Duration::from_secs(2), waiting: Duration::from_secs(1), slices: 10 };
        let later = SchedStat { on_cpu: Duration::from_secs(3), waiting: Duration::from_secs(1), slices: 15 };
        assert_eq!(
            later.since(&earlier),
            SchedStat { on_cpu: Duration::from_secs(1), waiting: Duration::ZERO, slices: 5 }
        );
        assert_eq!(
            earlier.since(&later),
            SchedStat { on_cpu: Duration::ZERO, waiting: Duration::ZERO, slices: 0 }
        );
    }

    /// Where the kernel keeps scheduler statistics (this machine's does), a thread that spins
    /// is seen on a CPU, and the process's sum holds at least that thread's time.
    #[test]
    fn a_spinning_thread_is_seen_on_a_cpu() {
        let tid = current_thread_id();
        let Ok(before) = SchedStat::of_thread(tid) else {
            eprintln!("this kernel keeps no scheduler statistics; nothing to check");
            return;
        };
        let mut sum = 0u64;
        let mut spun = 0u64;
        loop {
            sum = std::hint::black_box(sum.wrapping_add(1));
            spun += 1;
            if spun.is_multiple_of(1 << 16)
                && SchedStat::of_thread(tid).unwrap().since(&before).on_cpu > Duration::ZERO
            {
                break;
            }
        }
        let thread = SchedStat::of_thread(tid).unwrap();
        let process = SchedStat::of_this_process().unwrap();
        assert!(process.on_cpu >= thread.on_cpu, "{process:?} against {thread:?}");
        assert!(process.slices >= thread.slices);
    }
}
