//! Blocking calls (directory fsync, listing, renames, removals) on glommio's blocking thread
//! pool, owned by tasks of their own so that an executor never stops with one outstanding.
//!
//! glommio runs such a call on a helper thread, which then sends the result to its executor and
//! panics ("failed to send response") if the executor has gone. A caller's future may be dropped
//! mid-call (a shard stopping while a hint log is cleared, say): the thread carries on, and the
//! executor could finish first. So each call belongs to a detached task that waits for the
//! result whatever happens to the caller, and [`drained`] (which
//! [`crate::ExecutorBuilder::run`] awaits after its future) waits until no such task remains.
//!
//! ```text
//!  caller ──run_blocking(f)──▶ detached task ──spawn_blocking(f)──▶ glommio helper thread
//!     ▲                             │ (counted in flight until the result is back)
//!     └──── result, if still waiting ┘
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use futures_util::future::{select, Either};
use tracing::warn;

thread_local! {
    /// Blocking calls of this thread's executor whose results have not come back.
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
    /// Notified each time a call's result comes back.
    static RETURNED: Event = const { Event::new() };
}

/// Runs `call` on glommio's blocking thread pool and returns its result. The call finishes and
/// its result reaches the executor even if this future is dropped first.
///
/// # Panics
///
/// If called outside a glommio executor.
pub async fn run_blocking<T, F>(call: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let slot: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
    let done = Rc::new(Event::new());
    IN_FLIGHT.with(|count| count.set(count.get() + 1));
    glommio::spawn_local({
        let (slot, done) = (slot.clone(), done.clone());
        async move {
            let result = glommio::executor().spawn_blocking(call).await;
            *slot.borrow_mut() = Some(result);
            done.notify(usize::MAX);
            IN_FLIGHT.with(|count| count.set(count.get() - 1));
            RETURNED.with(|returned| returned.notify(usize::MAX));
        }
    })
    .detach();
    loop {
        event_listener::listener!(done => listener);
        if let Some(result) = slot.borrow_mut().take() {
            return result;
        }
        listener.await;
    }
}

/// Blocking calls of this thread's executor still out.
pub fn in_flight() -> usize {
    IN_FLIGHT.with(Cell::get)
}

/// Resolves once every blocking call of this thread's executor has returned, or after `limit`
/// (a call stuck on a failing disk), with a warning then. Returns whether all returned.
pub async fn drained(limit: Duration) -> bool {
    let deadline = glommio::timer::sleep(limit);
    futures_util::pin_mut!(deadline);
    loop {
        if in_flight() == 0 {
            return true;
        }
        let returned = RETURNED.with(|returned| returned.listen());
        if in_flight() == 0 {
            return true;
        }
        if let Either::Right(_) = select(returned, deadline.as_mut()).await {
            warn!(calls = in_flight(), ?limit, "blocking calls still out when the executor stopped");
            return in_flight() == 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_local;

    #[test]
    fn a_dropped_caller_still_leaves_its_call_to_finish_before_the_executor_stops() {
        run_local("blocking-test", async {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let mut call = Box::pin(run_blocking(move || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                7
            }));
            // Start the call, then drop the caller's future while the helper thread holds it.
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(std::future::Future::poll(call.as_mut(), &mut context).is_pending());
            while started_rx.try_recv().is_err() {
                glommio::yield_if_needed().await;
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            drop(call);
            assert_eq!(in_flight(), 1);
            release_tx.send(()).unwrap();
            assert!(drained(Duration::from_secs(60)).await);
            assert_eq!(in_flight(), 0);
            assert_eq!(run_blocking(|| 40 + 2).await, 42);
        });
    }
}
