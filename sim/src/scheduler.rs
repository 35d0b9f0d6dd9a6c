//! [`Scheduler`]: the simulation's event heap, ordered by (time, sequence).
//!
//! Events due at the same millisecond run in the order they were scheduled, so a run depends on
//! nothing but its seed: no hash order, no wall clock, no thread.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Scheduled<E> {
    at_ms: u64,
    sequence: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.sequence) == (other.at_ms, other.sequence)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    /// Reversed, so the max-heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.sequence).cmp(&(self.at_ms, self.sequence))
    }
}

/// Pending events, earliest first; ties broken by the order of scheduling.
pub struct Scheduler<E> {
    heap: BinaryHeap<Scheduled<E>>,
    next_sequence: u64,
    /// Most events pending at once: a run that exceeds it has a feedback loop, not a workload.
    pending_max: usize,
}

impl<E> Scheduler<E> {
    /// An empty heap holding at most `pending_max` events.
    pub fn new(pending_max: usize) -> Self {
        Scheduler { heap: BinaryHeap::new(), next_sequence: 0, pending_max }
    }

    /// Schedules `event` at `at_ms`.
    ///
    /// # Panics
    ///
    /// If more than `pending_max` events would be pending.
    pub fn schedule(&mut self, at_ms: u64, event: E) {
        assert!(self.heap.len() < self.pending_max, "more than {} events pending", self.pending_max);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.heap.push(Scheduled { at_ms, sequence, event });
    }

    /// The time of the earliest event.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|scheduled| scheduled.at_ms)
    }

    /// Takes the earliest event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|scheduled| (scheduled.at_ms, scheduled.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_in_scheduling_order() {
        let mut scheduler = Scheduler::new(16);
        scheduler.schedule(20, "late");
        scheduler.schedule(10, "first");
        scheduler.schedule(10, "second");
        scheduler.schedule(15, "middle");
        let order: Vec<&str> = std::iter::from_fn(|| scheduler.pop().map(|(_, event)| event)).collect();
        assert_eq!(order, ["first", "second", "middle", "late"]);
    }
}
