//! [`Nudges`]: an ordinary thread that wakes a shard whose executor has stopped waking up.
//!
//! Each shard's watch task ticks every [`crate::node::STOP_POLL_MS`] on a glommio timer. glommio
//! 0.9 sleeps on its main io_uring with a poll on its latency ring, where timers fire. In 3 of
//! 600 node starts of `tools/start-stress.sh` (2-shard nodes, six starting at once, busy loops
//! on the cores) a shard slept in `io_uring_enter` for good with its timer long due: no context
//! switch in seconds, while the other shard spun waiting for it. A wake from another thread
//! travels a different way: glommio queues the waker and writes the executor's eventfd, whose
//! read sits on the main ring itself. With the nudges, 0 of 1,800 starts hung.
//!
//! So the nudge thread looks at every shard's tick count each [`NUDGE_PERIOD`]; a shard whose
//! count has not moved since the last look gets its watch task woken from here. A shard gets one
//! nudge per stall: the next only once it has ticked again, so a shard that is merely busy (or a
//! thread that is truly stuck) never piles up wakers. A healthy shard ticks five times a period
//! and is never nudged; the thread costs one wake-up per period for the whole node.
//!
//! ```text
//!  shard k watch:  every STOP_POLL_MS ─▶ Nudges::tick(k, its waker)
//!  nudge thread:   every NUDGE_PERIOD ─▶ shard k's ticks unchanged? ─▶ wake k's watch (once)
//!  watch ends:     Nudges::forget(k) ─▶ k is never woken from here again
//!  Node::wait:     Nudges::finish ─▶ the thread ends at its next look
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::thread;
use std::time::Duration;

use tracing::debug;

use crate::metrics::ShardMetrics;

/// How often the nudge thread looks at the shards' tick counts: five watch ticks.
pub const NUDGE_PERIOD: Duration = Duration::from_millis(100);

/// A tick count no shard has: before the first look, and for a shard not nudged yet.
const NEVER: u64 = u64::MAX;

/// Every shard's tick count and watch waker, shared by the shards and the nudge thread.
pub struct Nudges {
    shards: Vec<ShardTicks>,
    finished: AtomicBool,
}

struct ShardTicks {
    /// Counts this shard's nudges.
    metrics: Arc<ShardMetrics>,
    ticks: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

/// What the nudge thread saw of one shard at its last look.
#[derive(Clone, Copy)]
pub struct Look {
    ticks: u64,
    /// The tick count at the shard's last nudge, or [`NEVER`].
    nudged_at: u64,
}

impl Look {
    /// Before the first look at a shard.
    pub const FIRST: Look = Look { ticks: NEVER, nudged_at: NEVER };
}

impl Nudges {
    /// Tick counts for the shards whose metrics are `shards`, none ticked yet.
    pub fn new(shards: &[Arc<ShardMetrics>]) -> Nudges {
        let shards = shards
            .iter()
            .map(|metrics| ShardTicks {
                metrics: metrics.clone(),
                ticks: AtomicU64::new(0),
                waker: Mutex::new(None),
            })
            .collect();
        Nudges { shards, finished: AtomicBool::new(false) }
    }

    /// Called by shard `shard_id`'s watch task at each tick, with the task's waker.
    pub fn tick(&self, shard_id: u32, waker: &Waker) {
        let shard = &self.shards[shard_id as usize];
        shard.ticks.fetch_add(1, Ordering::SeqCst);
        let mut stored = shard.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !stored.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *stored = Some(waker.clone());
        }
    }

    /// Called by shard `shard_id`'s watch task when it ends: its waker is dropped on its own
    /// thread, and the shard is never nudged again.
    pub fn forget(&self, shard_id: u32) {
        let waker = self.shards[shard_id as usize]
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(waker);
    }

    /// One look: wakes the watch of every shard whose tick count is still the one in its last
    /// [`Look`] and that has not been nudged at that count yet, then updates `looks`. Returns
    /// how many shards it woke.
    pub fn nudge_stalled(&self, looks: &mut [Look]) -> usize {
        let mut woken = 0;
        for (shard_id, (shard, look)) in self.shards.iter().zip(looks.iter_mut()).enumerate() {
            let ticks = shard.ticks.load(Ordering::SeqCst);
            if ticks == look.ticks && look.nudged_at != ticks {
                // Woken under the lock, so that a watch that has ended (see `forget`) is never
                // woken from here: its executor may be gone.
                let waker = shard.waker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(waker) = waker.as_ref() {
                    debug!(shard = shard_id, ticks, "shard has not ticked for a period: waking it");
                    look.nudged_at = ticks;
                    shard.metrics.nudges.add(1);
                    waker.wake_by_ref();
                    woken += 1;
                }
            }
            look.ticks = ticks;
        }
        woken
    }

    /// Starts the nudge thread; it ends at its first look after [`Nudges::finish`].
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<thread::JoinHandle<()>> {
        let nudges = self.clone();
        thread::Builder::new().name("ringkv-nudge".into()).spawn(move || {
            let mut looks = vec![Look::FIRST; nudges.shards.len()];
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

    fn shard_metrics(shards: usize) -> Vec<Arc<ShardMetrics>> {
        (0..shards).map(|_| Arc::default()).collect()
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn a_shard_that_stops_ticking_is_woken_once_per_stall() {
        let metrics = shard_metrics(2);
        let nudges = Nudges::new(&metrics);
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        let mut looks = vec![Look::FIRST; 2];
        nudges.tick(0, &first_waker);
        nudges.tick(1, &second_waker);
        // Both ticked since the last look: nobody is woken.
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        nudges.tick(0, &first_waker);
        // Shard 1 did not tick for a whole period: it is woken, shard 0 is not.
        assert_eq!(nudges.nudge_stalled(&mut looks), 1);
        assert_eq!((first.0.load(Ordering::SeqCst), second.0.load(Ordering::SeqCst)), (0, 1));
        // Shard 1 is still stalled: no second waker piles up behind the first.
        nudges.tick(0, &first_waker);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        // Once it ticks again, its next stall gets its own nudge (shard 0's first stall its first).
        nudges.tick(0, &first_waker);
        nudges.tick(1, &second_waker);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 2);
        assert_eq!((first.0.load(Ordering::SeqCst), second.0.load(Ordering::SeqCst)), (1, 2));
        assert_eq!((metrics[0].nudges.get(), metrics[1].nudges.get()), (1, 2));
    }

    #[test]
    fn a_shard_whose_watch_ended_is_never_woken() {
        let nudges = Nudges::new(&shard_metrics(1));
        let (counter, waker) = counting_waker();
        let mut looks = vec![Look::FIRST; 1];
        nudges.tick(0, &waker);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        nudges.forget(0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_shard_that_never_ticked_has_nothing_to_wake() {
        let nudges = Nudges::new(&shard_metrics(1));
        let mut looks = vec![Look::FIRST; 1];
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
        assert_eq!(nudges.nudge_stalled(&mut looks), 0);
    }

    #[test]
    fn the_thread_ends_after_finish() {
        let nudges = Arc::new(Nudges::new(&shard_metrics(1)));
        let thread = nudges.spawn().expect("the nudge thread");
        nudges.finish();
        thread.join().expect("the nudge thread ends");
    }
}
