//! [`LocalEvent`]: a wake-up for the tasks of one shard, without the atomics and the lock of a
//! thread-safe event.
//!
//! A connection's reader, writer and committer wake each other for every batch of replies, and
//! every socket read waits beside the shard's stop signal. `event_listener`'s `Event` pays for
//! being shared between threads on each of those: a full fence on every notification and a
//! mutex around its list of listeners, taken to add a listener and again to remove it. A shard
//! is one thread, so its events need neither.
//!
//! The pattern is the same as with `event_listener`: listen, check the condition, and await the
//! listener only if it does not hold yet. A listener resolves once [`LocalEvent::notify`] is
//! called after [`LocalEvent::listen`] made it, so a notification between the check and the
//! await is never missed. Every notification wakes every listener; the woken check again.

use std::cell::RefCell;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A single-threaded event: tasks wait in [`LocalEvent::listen`] for the next
/// [`LocalEvent::notify`]. Neither `Sync` nor meant to cross threads.
#[derive(Default)]
pub struct LocalEvent {
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Counts notifications: a listener made at one generation resolves at any later one.
    generation: u64,
    /// The wakers of this generation's pending listeners, by slot; `None` in a vacant slot.
    wakers: Vec<Option<Waker>>,
    /// Vacant slots of `wakers`, to reuse.
    vacant: Vec<usize>,
    /// How many slots of `wakers` hold a waker.
    registered: usize,
    /// The slot list of an earlier generation, kept for its capacity: a notification swaps it
    /// in, so waking listeners allocates nothing.
    spare: Vec<Option<Waker>>,
}

impl LocalEvent {
    /// An event nobody listens to yet.
    pub fn new() -> Self {
        LocalEvent::default()
    }

    /// Wakes every listener made before this call. Costs next to nothing when none is waiting.
    pub fn notify(&self) {
        let mut woken = {
            let mut state = self.state.borrow_mut();
            state.generation = state.generation.wrapping_add(1);
            if state.registered == 0 {
                return;
            }
            state.registered = 0;
            state.vacant.clear();
            let spare = mem::take(&mut state.spare);
            mem::replace(&mut state.wakers, spare)
        };
        // Woken outside the borrow: a waker may run code that listens again.
        for waker in woken.drain(..).flatten() {
            waker.wake();
        }
        let mut state = self.state.borrow_mut();
        if state.spare.capacity() < woken.capacity() {
            state.spare = woken;
        }
    }

    /// A listener that resolves at the first notification after this call.
    pub fn listen(&self) -> LocalListener<'_> {
        LocalListener { event: self, generation: self.state.borrow().generation, slot: None }
    }
}

/// Resolves once its [`LocalEvent`] is notified after the listener was made. Holds a slot in
/// the event while it waits; dropping it gives the slot back.
#[must_use = "a listener does nothing unless awaited"]
pub struct LocalListener<'a> {
    event: &'a LocalEvent,
    generation: u64,
    /// Where this listener's waker is, once it has been polled and found nothing.
    slot: Option<usize>,
}

impl Future for LocalListener<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut state = this.event.state.borrow_mut();
        if state.generation != this.generation {
            // Notified: any slot this listener held went with its generation's list.
            this.slot = None;
            return Poll::Ready(());
        }
        match this.slot {
            Some(slot) => match &mut state.wakers[slot] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let slot = match state.vacant.pop() {
                    Some(slot) => {
                        state.wakers[slot] = waker;
                        slot
                    }
                    None => {
                        state.wakers.push(waker);
                        state.wakers.len() - 1
                    }
                };
                state.registered += 1;
                this.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for LocalListener<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        let mut state = self.event.state.borrow_mut();
        // After a notification the slot belongs to a list already emptied.
        if state.generation == self.generation {
            state.wakers[slot] = None;
            state.vacant.push(slot);
            state.registered -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    fn poll(listener: &mut LocalListener<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(listener).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_listener_resolves_only_after_a_later_notification() {
        let event = LocalEvent::new();
        event.notify();
        let (count, waker) = counter();
        let mut listener = event.listen();
        assert_eq!(poll(&mut listener, &waker), Poll::Pending);
        assert_eq!(poll(&mut listener, &waker), Poll::Pending, "a second poll before any notification");
        event.notify();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "woken once");
        assert_eq!(poll(&mut listener, &waker), Poll::Ready(()));
    }

    #[test]
    fn a_notification_between_listening_and_polling_is_not_missed() {
        let event = LocalEvent::new();
        let (count, waker) = counter();
        let mut listener = event.listen();
        event.notify();
        assert_eq!(poll(&mut listener, &waker), Poll::Ready(()));
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "nothing was registered to wake");
    }

    #[test]
    fn every_listener_wakes_and_dropped_ones_give_their_slots_back() {
        let event = LocalEvent::new();
        let wakers: Vec<_> = (0..4).map(|_| counter()).collect();
        let mut listeners: Vec<_> = (0..4).map(|_| event.listen()).collect();
        for (listener, (_, waker)) in listeners.iter_mut().zip(&wakers) {
            assert_eq!(poll(listener, waker), Poll::Pending);
        }
        // Two give up before the notification; their slots are reused, not grown.
        listeners.truncate(2);
        assert_eq!(event.state.borrow().registered, 2);
        let (late_count, late_waker) = counter();
        let mut late = event.listen();
        assert_eq!(poll(&mut late, &late_waker), Poll::Pending);
        assert_eq!(event.state.borrow().wakers.len(), 4, "a vacant slot was reused");
        event.notify();
        let woken: Vec<_> = wakers.iter().map(|(count, _)| count.0.load(Ordering::Relaxed)).collect();
        assert_eq!(woken, [1, 1, 0, 0], "the dropped listeners are not woken");
        assert_eq!(late_count.0.load(Ordering::Relaxed), 1);
        for (listener, (_, waker)) in listeners.iter_mut().zip(&wakers) {
            assert_eq!(poll(listener, waker), Poll::Ready(()));
        }
        assert_eq!(poll(&mut late, &late_waker), Poll::Ready(()));
        drop(listeners);
        drop(late);
        assert_eq!(
            event.state.borrow().registered,
            0,
            "listeners of an old generation leave the new list alone"
        );
    }

    #[test]
    fn a_repolled_listener_keeps_one_slot_with_the_newest_waker() {
        let event = LocalEvent::new();
        let (first_count, first) = counter();
        let (second_count, second) = counter();
        let mut listener = event.listen();
        assert_eq!(poll(&mut listener, &first), Poll::Pending);
        assert_eq!(poll(&mut listener, &second), Poll::Pending);
        assert_eq!(event.state.borrow().registered, 1);
        event.notify();
        assert_eq!(first_count.0.load(Ordering::Relaxed), 0);
        assert_eq!(second_count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn notifications_reuse_the_slot_lists() {
        let event = LocalEvent::new();
        let (_, waker) = counter();
        for _ in 0..3 {
            let mut listener = event.listen();
            assert_eq!(poll(&mut listener, &waker), Poll::Pending);
            event.notify();
            assert_eq!(poll(&mut listener, &waker), Poll::Ready(()));
        }
        let state = event.state.borrow();
        assert!(state.wakers.capacity() >= 1 && state.spare.capacity() >= 1, "both lists keep their room");
    }
}
