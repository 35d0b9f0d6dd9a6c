//! The figures a shard's storage engine and cluster part keep themselves (flushes, table and
//! memtable bytes, hints, anti-entropy), read at scrape time: the scrape thread asks every
//! shard for them over a bounded channel and waits for the answers up to a deadline.
//!
//! ```text
//!  scrape thread ─ask─▶ requests (bounded, one queue per shard) ─wake─▶ shard's answering task
//!       ▲                                                                │ engine.stats(),
//!       └──────── reply (a slot of one) ◀────────────────────────────────┘ cluster.figures()
//!  no answer by the deadline, queue full, or the shard stopped ─▶ FiguresUnavailable for this scrape
//! ```
//!
//! The figures live in `Rc`/`Cell` state on the shard's thread, so the shard itself must read
//! them; asking is the only way to see them as they are at the scrape, rather than as a task last
//! copied them. The request crosses from an ordinary thread into the shard's executor through an
//! [`Event`]: its notification wakes the waiting task through the task's waker, which glommio
//! accepts from any thread (it queues the wake and signals the executor's eventfd).
//!
//! Bounds: each shard's queue holds at most [`PENDING_REQUESTS_MAX`] requests, and the scrape thread asks
//! each shard once per scrape, one scrape at a time; requests a stuck shard has not taken fill
//! its queue, and later scrapes then find it unavailable at once instead of waiting again.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use event_listener::Event;
use ringkv_storage::EngineStats;

use crate::stop_signal::StopSignal;

/// Requests each shard's queue holds: one per scrape, so a few scrapes a stuck shard has not
/// taken.
pub const PENDING_REQUESTS_MAX: usize = 4;

/// A shard's cluster figures: coordinator, hints and anti-entropy counters since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    pub replica_timeouts: u64,
    pub read_repairs: u64,
    pub read_repair_replicas: u64,
    pub hints_stored: u64,
    pub hints_stored_bytes: u64,
    pub hints_replayed: u64,
    pub hints_replayed_bytes: u64,
    pub hints_dropped_full: u64,
    pub hints_dropped_window: u64,
    pub hints_dropped_grace: u64,
    pub anti_entropy_exchanges: u64,
    pub anti_entropy_exchanges_failed: u64,
    pub anti_entropy_keys_pushed: u64,
    pub anti_entropy_keys_pulled: u64,
    pub anti_entropy_bytes_sent: u64,
    /// 1 while the shard has lost data (tables missing, or its files gone) and not restored it.
    pub rebuilding: u64,
}

/// What a shard answers a scrape with: its engine's and its cluster part's figures, and how its
/// sockets were polled, read when the request reached it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardFigures {
    pub storage: EngineStats,
    pub cluster: ClusterFigures,
    pub sockets: ringkv_readiness::PollerStats,
    /// How often the shard's deferrable flushes and compactions were held to their share.
    pub background: ringkv_io::executor::BackgroundHeld,
}

/// Why a shard's figures are missing from a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FiguresUnavailable {
    /// The shard's queue was full: it has not taken the requests of earlier scrapes.
    #[error("the shard has not taken earlier scrapes' requests")]
    Busy,
    /// The shard did not answer by the deadline.
    #[error("the shard did not answer in time")]
    Timeout,
    /// The shard has stopped answering (it is stopping, or never started).
    #[error("the shard is not answering scrapes")]
    Stopped,
}

/// A reply slot: the shard sends the figures into it once.
type ReplySlot = SyncSender<ShardFigures>;

/// A bounded channel from the scrape thread to one shard, holding at most `requests_max`
/// requests (at least one).
pub fn channel(requests_max: usize) -> (FiguresAsker, FiguresInbox) {
    let (requests, received) = mpsc::sync_channel(requests_max.max(1));
    let arrived = Arc::new(Event::new());
    (FiguresAsker { requests, arrived: arrived.clone() }, FiguresInbox { requests: received, arrived })
}

/// The scrape thread's end: asks one shard for its figures.
pub struct FiguresAsker {
    requests: SyncSender<ReplySlot>,
    arrived: Arc<Event>,
}

impl FiguresAsker {
    /// Sends a request without waiting; [`PendingFigures::wait`] collects the answer, so a
    /// scrape can ask every shard before it waits for any.
    pub fn ask(&self) -> Result<PendingFigures, FiguresUnavailable> {
        let (slot, reply) = mpsc::sync_channel(1);
        match self.requests.try_send(slot) {
            Ok(()) => {
                self.arrived.notify(usize::MAX);
                Ok(PendingFigures { reply })
            }
            Err(TrySendError::Full(_)) => Err(FiguresUnavailable::Busy),
            Err(TrySendError::Disconnected(_)) => Err(FiguresUnavailable::Stopped),
        }
    }
}

/// A request sent to a shard, not yet answered.
pub struct PendingFigures {
    reply: Receiver<ShardFigures>,
}

impl PendingFigures {
    /// Waits for the shard's answer until `deadline`.
    pub fn wait(self, deadline: Instant) -> Result<ShardFigures, FiguresUnavailable> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.reply.recv_timeout(left).map_err(|error| match error {
            RecvTimeoutError::Timeout => FiguresUnavailable::Timeout,
            RecvTimeoutError::Disconnected => FiguresUnavailable::Stopped,
        })
    }
}

/// The shard's end: answers requests with the figures as they are when each is taken.
pub struct FiguresInbox {
    requests: Receiver<ReplySlot>,
    arrived: Arc<Event>,
}

impl FiguresInbox {
    /// Answers every request with `figures()` until `stop` is triggered; requests still queued
    /// then are dropped, and their scrapes see the shard as stopped at once. Runs on the shard.
    pub async fn answer_until_stopped(self, stop: &StopSignal, figures: impl Fn() -> ShardFigures) {
        loop {
            // Listen before draining, so a request sent after the drain still wakes the task.
            let arrived = self.arrived.listen();
            loop {
                match self.requests.try_recv() {
                    // A scrape that gave up has dropped its end; the answer has no one to go to.
                    Ok(slot) => drop(slot.try_send(figures())),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if stop.unless_stopped(arrived).await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    /// Long enough never to pass on a loaded machine while the shard does answer.
    const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

    fn figures_with_user_bytes(user_bytes: u64) -> ShardFigures {
        ShardFigures {
            storage: EngineStats { user_bytes, ..EngineStats::default() },
            ..ShardFigures::default()
        }
    }

    #[test]
    fn a_value_changed_before_the_request_is_in_the_answer() {
        let (asker, inbox) = channel(4);
        // The shard changes its figure, then tells this thread, which asks; each answer must
        // carry the value set before it was asked for.
        let (changed, observed) = mpsc::sync_channel::<u64>(1);
        let (next, next_wanted) = mpsc::sync_channel::<()>(1);
        let shard = std::thread::spawn(move || {
            ringkv_io::run_local("figures-test", async move {
                let value = Rc::new(Cell::new(0u64));
                let stop = Rc::new(StopSignal::new());
                let answering = {
                    let (value, stop) = (value.clone(), stop.clone());
                    glommio::spawn_local(async move {
                        inbox.answer_until_stopped(&stop, || figures_with_user_bytes(value.get())).await;
                    })
                };
                for round in 1..=3u64 {
                    value.set(round * 100);
                    changed.send(round * 100).unwrap();
                    // Wait for the scrape, without blocking the executor that answers it.
                    while next_wanted.try_recv().is_err() {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                }
                stop.trigger();
                answering.await;
            })
        });
        for _ in 0..3 {
            let set = observed.recv().unwrap();
            let pending = asker.ask().unwrap();
            let answer = pending.wait(Instant::now() + ANSWER_DEADLINE).unwrap();
            assert_eq!(answer.storage.user_bytes, set);
            next.send(()).unwrap();
        }
        shard.join().unwrap();
        assert_eq!(asker.ask().err(), Some(FiguresUnavailable::Stopped), "the inbox is gone with its shard");
    }

    #[test]
    fn a_shard_that_does_not_answer_is_unavailable_not_waited_for() {
        let (asker, inbox) = channel(2);
        // Nothing takes the requests: each waits only to its deadline, and once the queue is
        // full the next ask fails at once.
        let pending = [asker.ask().unwrap(), asker.ask().unwrap()];
        assert_eq!(asker.ask().err(), Some(FiguresUnavailable::Busy));
        for request in pending {
            assert_eq!(request.wait(Instant::now()).err(), Some(FiguresUnavailable::Timeout));
        }
        // A request the shard drops unanswered (it stopped) ends the wait at once.
        let queued = {
            let (asker, inbox) = channel(1);
            let queued = asker.ask().unwrap();
            drop(inbox);
            queued
        };
        assert_eq!(queued.wait(Instant::now() + ANSWER_DEADLINE).err(), Some(FiguresUnavailable::Stopped));
        drop(inbox);
        assert_eq!(asker.ask().err(), Some(FiguresUnavailable::Stopped));
    }
}
