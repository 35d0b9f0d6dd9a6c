//! [`Nudges`]: an ordinary thread that wakes a glommio executor which has stopped waking up.
//!
//! glommio 0.9 sleeps on its main io_uring with a poll on its latency ring, where timers fire.
//! In 3 of 600 node starts of `tools/start-stress.sh` (2-shard nodes, six starting at once, busy
//! loops on the cores) an executor slept in `io_uring_enter` for good with its timer long due:
//! no context switch in seconds. A wake from another thread travels a different way: glommio
//! queues the waker and writes the executor's eventfd, whose read sits on the main ring itself.
//! With the nudges, 0 of 1,800 starts hung.
//!
//! So each executor runs a task that ticks on a glommio timer ([`Nudges::tick_here`], or
//! [`heartbeat`] for a task that does nothing else), and the nudge thread looks at every
//! executor's tick count each [`NUDGE_PERIOD`]: an executor whose count has not moved since the
//! last look gets its ticking task woken from outside. An executor gets one nudge per stall, the
//! next only once it has ticked again, so one that is merely busy (or a thread that is truly
//! stuck) never piles up wakers. A healthy executor ticks several times a period and is never
//! nudged; the thread costs one wake-up per period for the whole process.
//!
//! ```text
//!  executor k:    every tick period ─▶ Nudges::tick(k, the ticking task's waker)
//!  nudge thread:  every NUDGE_PERIOD ─▶ k's ticks unchanged? ─▶ wake k's task (once) ─▶ on_nudge(k)
//!  task ends:     Nudges::forget(k) ─▶ k is never woken from here again
//!  owner:         Nudges::finish ─▶ the thread ends at its next look
//! ```
//!
//! The node's shards tick from their watch task; the load generator's executors run a
//! [`heartbeat`] beside their workers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::time::Duration;

use tracing::debug;

/// How often the nudge thread looks at the executors' tick counts.
pub const NUDGE_PERIOD: Duration = Duration::from_millis(100);

/// How often a [`heartbeat`] ticks: five times a [`NUDGE_PERIOD`].
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(20);

/// A tick count no executor has: before the first look, and for one not nudged yet.
const NEVER: u64 = u64::MAX;

/// Every executor's tick count and ticking task's waker, shared by the executors and the nudge
/// thread.
pub struct Nudges {
    executors: Vec<Ticks>,
    finished: AtomicBool,
    /// Called on the nudge thread with the executor's index, after each nudge.
    on_nudge: Box<dyn Fn(usize) + Send + Sync>,
}

struct Ticks {
    ticks: AtomicU64,
    /// Times this executor was nudged.
    nudged: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

/// What the nudge thread saw of one executor at its last look.
#[derive(Clone, Copy)]
pub struct Look {
    ticks: u64,
    /// The tick count at the executor's last nudge, or [`NEVER`].
    nudged_at: u64,
}

impl Look {
    /// Before the first look at an executor.
    pub const FIRST: Look = Look { ticks: NEVER, nudged_at: NEVER };
}

impl Nudges {
    /// Tick counts for `executors` executors, none ticked yet.
    pub fn new(executors: usize) -> Nudges {
        Nudges::observed(executors, |_| {})
    }

    /// As [`Nudges::new`], calling `on_nudge(executor)` on the nudge thread after each nudge
    /// (the node counts them in its metrics).
    pub fn observed(executors: usize, on_nudge: impl Fn(usize) + Send + Sync + 'static) -> Nudges {
        let executors = (0..executors)
            .map(|_| Ticks { ticks: AtomicU64::new(0), nudged: AtomicU64::new(0), waker: Mutex::new(None) })
            .collect();
        Nudges { executors, finished: AtomicBool::new(false), on_nudge: Box::new(on_nudge) }
    }

    /// Called by executor `executor`'s ticking task at each tick, with the task's waker.
    pub fn tick(&self, executor: usize, waker: &Waker) {
        let entry = &self.executors[executor];
        entry.ticks.fetch_add(1, Ordering::SeqCst);
        let mut stored = entry.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !stored.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *stored = Some(waker.clone());
        }
    }

    /// One tick from the task that awaits it: [`Nudges::tick`] with that task's waker.
    pub fn tick_here(&self, executor: usize) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |context| {
            self.tick(executor, context.waker());
            Poll::Ready(())
        })
    }

    /// Called by executor `executor`'s ticking task when it ends: its waker is dropped on its own
    /// thread, and the executor is never nudged again.
    pub fn forget(&self, executor: usize) {
        let waker =
            self.executors[executor].waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        drop(waker);
    }

    /// How many times executor `executor` has been nudged.
    pub fn nudged(&self, executor: usize) -> u64 {
        self.executors[executor].nudged.load(Ordering::SeqCst)
    }

    /// How many nudges all executors together have had.
    pub fn nudged_total(&self) -> u64 {
        (0..self.executors.len()).map(|executor| self.nudged(executor)).sum()
    }

    /// One look: wakes the ticking task of every executor whose tick count is still the one in
    /// its last [`Look`] and that has not been nudged at that count yet, then updates `looks`.
    /// Returns how many executors it woke.
    pub fn nudge_stalled(&self, looks: &mut [Look]) -> usize {
        let mut woken = 0;
        for (executor, (entry, look)) in self.executors.iter().zip(looks.iter_mut()).enumerate() {
            let ticks = entry.ticks.load(Ordering::SeqCst);
            if ticks == look.ticks && look.nudged_at != ticks {
                // Woken under the lock, so that a task that has ended (see `forget`) is never
                // woken from here: its executor may be gone.
                let waker = entry.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(waker) = waker.as_ref() {
                    debug!(executor, ticks, "executor has not ticked for a period: waking it");
                    look.nudged_at = ticks;
                    entry.nudged.fetch_add(1, Ordering::SeqCst);
                    waker.wake_by_ref();
                    (self.on_nudge)(executor);
                    woken += 1;
                }
            }
            look.ticks = ticks;
        }
        woken
    }

    /// Starts the nudge thread, named `name`; it ends at its first look after
    /// [`Nudges::finish`].
    pub fn spawn(self: &Arc<Self>, name: &str) -> std::io::Result<thread::JoinHandle<()>> {
        let nudges = self.clone();
        thread::Builder::new().name(name.into()).spawn(move || {
            let mut looks = vec![Look::FIRST; nudges.executors.len()];
            while !nudges.finished.load(Ordering::SeqCst) {
                thread::sleep(NUDGE_PERIOD);
                nudges.nudge_stalled(&mut looks);
            }
        })
    }

    /// Asks the nudge thread to end.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// Ticks executor `executor` every [`HEARTBEAT_PERIOD`] for as long as it is polled: run it
/// beside an executor's real work (`futures_lite::future::or`) and drop it when the work is
/// done. Dropping it forgets the executor, so the nudge thread never wakes it afterwards.
/// Never completes.
pub async fn heartbeat(nudges: &Nudges, executor: usize) -> Infallible {
    struct Forget<'a>(&'a Nudges, usize);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.forget(self.1);
        }
    }
    let _forget = Forget(nudges, executor);
    loop {
        nudges.tick_here(executor).await;
        glommio::timer::sleep(HEARTBEAT_PERIOD).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        (counter.clone(), Waker::from(counter))
    }

    fn woken(counter: &CountingWaker) -> usize {
        counter.0.load(Ordering::SeqCst)
    }

    #[test]
    fn an_executor_that_stops_ticking_is_woken_once_per_stall() {
        let observed = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let seen = observed.clone();
        let nudges = Nudges::observed(2, move |executor| {
            seen[executor].fetch_add(1, Ordering::SeqCst);
        });
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        let mut looks = vec![Look::FIRST; 2];
        nudges.tick(0, &first_waker);
        nudges.tick(1, &second_waker);
        // Both ticked since the last look: nobody is woken.
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        nudges.tick(0, &first_waker);
        // Executor 1 did not tick for a whole period: it is woken, executor 0 is not.
        assert_eq!(nudges.nudge_stalled(&mut looks), 1);
        assert_eq!((woken(&first), woken(&second)), (0, 1));
        // Executor 1 is still stalled: no second waker piles up behind the first.
        nudges.tick(0, &first_waker);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(woken(&second), 1);
        // Once it ticks again, its next stall gets its own nudge (executor 0's first stall its
        // first).
        nudges.tick(0, &first_waker);
        nudges.tick(1, &second_waker);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 2);
        assert_eq!((woken(&first), woken(&second)), (1, 2));
        assert_eq!((nudges.nudged(0), nudges.nudged(1), nudges.nudged_total()), (1, 2, 3));
        let observed: Vec<u64> = observed.iter().map(|count| count.load(Ordering::SeqCst)).collect();
        assert_eq!(observed, [1, 2]);
    }

    #[test]
    fn an_executor_whose_ticking_task_ended_is_never_woken() {
        let nudges = Nudges::new(1);
        let (counter, waker) = counting_waker();
        let mut looks = vec![Look::FIRST; 1];
        nudges.tick(0, &waker);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        nudges.forget(0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(woken(&counter), 0);
        assert_eq!(nudges.nudged(0), 0);
    }

    #[test]
    fn an_executor_that_never_ticked_has_nothing_to_wake() {
        let nudges = Nudges::new(1);
        let mut looks = vec![Look::FIRST; 1];
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
    }

    #[test]
    fn the_thread_ends_after_finish() {
        let nudges = Arc::new(Nudges::new(1));
        let thread = nudges.spawn("nudge-test").expect("the nudge thread");
        nudges.finish();
        thread.join().expect("the nudge thread ends");
    }

    #[test]
    fn a_dropped_heartbeat_forgets_its_executor() {
        let nudges = Nudges::new(1);
        let ticks = crate::run_local("nudge-heartbeat-test", async {
            // The work finishes first; the heartbeat, which never does, is dropped with it.
            futures_util::future::select(
                std::pin::pin!(heartbeat(&nudges, 0)),
                std::pin::pin!(glommio::timer::sleep(3 * HEARTBEAT_PERIOD)),
            )
            .await;
            nudges.executors[0].ticks.load(Ordering::SeqCst)
        });
        assert!(ticks >= 1, "the heartbeat ticked at once");
        assert!(nudges.executors[0].waker.lock().expect("not poisoned").is_none(), "forgotten when dropped");
        let mut looks = vec![Look::FIRST; 1];
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
    }
}
