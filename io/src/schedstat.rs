//! What the kernel's scheduler recorded for a thread: time on a CPU, and time it was ready to run
//! but waited for one.
//!
//! A thread-per-core server on a machine with more runnable threads than cores (a load generator
//! beside it, other services, a virtual machine's neighbours) is delayed by the wait, not by its
//! own work; nothing inside the process can see that wait except the kernel's own account of it,
//! `/proc/thread-self/schedstat` (kept when the kernel has scheduler statistics or delay
//! accounting on, as distributions' kernels do). The shards export it as metrics, and the load
//! generator reports its own, so a latency tail can be told apart from a starved core.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
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

    /// The two figures added, as for two threads together.
    pub fn plus(&self, other: &SchedStat) -> SchedStat {
        SchedStat {
            on_cpu: self.on_cpu + other.on_cpu,
            waiting: self.waiting + other.waiting,
            slices: self.slices + other.slices,
        }
    }
}

/// The calling thread's `schedstat`, held open so any thread can read it later.
///
/// The open file stays bound to the thread it was opened on, not to its id: once that thread
/// has ended, reads fail rather than show another thread that was given the same id.
#[derive(Debug)]
pub struct ThreadSchedStat {
    file: File,
}

impl ThreadSchedStat {
    /// Opens the calling thread's figures. Fails where `/proc` has no such file, or where the
    /// kernel keeps no account (see [`ThreadSchedStat::read`]).
    pub fn of_this_thread() -> io::Result<ThreadSchedStat> {
        let opened = ThreadSchedStat { file: File::open("/proc/thread-self/schedstat")? };
        opened.read()?;
        Ok(opened)
    }

    /// The thread's figures now. Fails once the thread has ended, and where the kernel keeps no
    /// account: older kernels without scheduler statistics show `0 0 0`, while any thread that
    /// has run shows at least one slice.
    pub fn read(&self) -> io::Result<SchedStat> {
        let mut buffer = [0u8; 128];
        let length = self.file.read_at(&mut buffer, 0)?;
        let text = std::str::from_utf8(&buffer[..length]).unwrap_or("");
        match SchedStat::parse(text) {
            Some(figures) if figures.slices > 0 => Ok(figures),
            Some(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "the kernel keeps no scheduler account"))
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("schedstat is not three counters: {text:?}"),
            )),
        }
    }
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
        let one = SchedStat { on_cpu: Duration::from_secs(2), waiting: Duration::from_secs(1), slices: 10 };
        assert_eq!(
            one.plus(&one),
            SchedStat { on_cpu: Duration::from_secs(4), waiting: Duration::from_secs(2), slices: 20 }
        );
    }

    /// Where the kernel keeps the account (this machine's does), a thread that spins is seen on
    /// a CPU, and another thread can read it; once the thread has ended, its file says so.
    #[test]
    fn a_thread_is_read_from_another_and_not_after_it_ends() {
        let spinner = std::thread::spawn(|| {
            let Ok(figures) = ThreadSchedStat::of_this_thread() else {
                return None;
            };
            // The time on a CPU is banked at the scheduler's ticks and switches: spin until one
            // has banked some, a bounded number of rounds.
            let mut sum = 0u64;
            for _ in 0..100_000 {
                for _ in 0..(1 << 16) {
                    sum = std::hint::black_box(sum.wrapping_add(1));
                }
                if figures.read().unwrap().on_cpu > Duration::ZERO {
                    return Some(figures);
                }
            }
            panic!("6.5 billion additions and no time on a CPU banked");
        });
        let Some(figures) = spinner.join().unwrap() else {
            eprintln!("this kernel keeps no scheduler account; nothing to check");
            return;
        };
        // Joined once the thread has cleared its id, a moment before the kernel lets it go: wait
        // for that, a bounded number of times.
        let mut checks = 0;
        while figures.read().is_ok() {
            checks += 1;
            assert!(checks < 10_000, "the ended thread's figures are still read: {:?}", figures.read());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
