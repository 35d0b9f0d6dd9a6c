//! [`StopSignal`]: tells every task of one shard that the shard is stopping.

use std::cell::Cell;
use std::future::Future;

use crate::local_event::LocalEvent;

/// A one-way flag with a wake-up: once triggered it stays triggered, and every task waiting in
/// [`StopSignal::wait`] resumes. Single-threaded, like the shard that owns it.
#[derive(Default)]
pub struct StopSignal {
    stopped: Cell<bool>,
    event: LocalEvent,
}

impl StopSignal {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        StopSignal::default()
    }

    /// Triggers the signal and wakes every waiter.
    pub fn trigger(&self) {
        self.stopped.set(true);
        self.event.notify();
    }

    /// Whether the signal has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.stopped.get()
    }

    /// Runs `work` until it finishes or the signal is triggered, whichever comes first:
    /// `Some` of its output, or `None` when the shard is stopping.
    pub async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(work.await) }, async {
            self.wait().await;
            None
        })
        .await
    }

    /// Resolves once the signal is triggered (at once if it already is).
    pub async fn wait(&self) {
        loop {
            if self.stopped.get() {
                return;
            }
            // Listen before the second check, so a trigger in between is not missed. A
            // connection waits on the signal beside every socket read: the listener lives in
            // this future and takes no lock.
            let listener = self.event.listen();
            if self.stopped.get() {
                return;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn waiters_wake_on_trigger_and_late_waiters_return_at_once() {
        let woken = ringkv_io::run_local("stop-signal-test", async {
            let signal = Rc::new(StopSignal::new());
            let waiter = {
                let signal = signal.clone();
                glommio::spawn_local(async move {
                    signal.wait().await;
                    true
                })
            };
            glommio::yield_if_needed().await;
            assert!(!signal.is_triggered());
            signal.trigger();
            let woken = waiter.await;
            signal.wait().await;
            woken
        });
        assert!(woken);
    }
}
