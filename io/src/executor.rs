//! Starting glommio executors and running futures on them.
//!
//! A shard is one [`glommio::LocalExecutor`] pinned to one core. Tests and tools start many
//! short-lived, unpinned executors instead. Both come from [`ExecutorBuilder`]; [`run_local`] is
//! the one-line form for tests and tools.
//!
//! Every executor locks memory for its io_uring rings and its `io_memory` buffers (where ringkv
//! is tested, `ulimit -l` is 8 MiB), so the default `io_memory` is small: reads and writes larger
//! than it still work, their buffers just come from the ordinary allocator.

use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
pub use ringkv_storage::disk::Pace;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

pub use glommio::TaskQueueHandle;

/// Default memory registered with io_uring for DMA buffers, per executor. glommio's own default
/// is 10 MiB; with `ulimit -l` at 8 MiB and tests starting executors in parallel, 1 MiB is the
/// modest choice. Shards that want more set it with [`ExecutorBuilder::io_memory_bytes`].
pub const IO_MEMORY_BYTES_DEFAULT: usize = 1 << 20;

/// Shares of the low-priority task queue. glommio's default queue has 1000 shares, so when both
/// are busy, background work gets about 1/11 of the core.
pub const LOW_PRIORITY_SHARES: usize = 100;

/// Shares of the flush queue: a quarter of the serving queue's, so that while a shard serves, a
/// flush takes a fifth of its core and serving the rest. Shares only divide the core between
/// queues that both have work: when writers stall on a full memtable they queue nothing, and the
/// flush they wait for has the core to itself. At the serving queue's 1000 shares, the flush
/// of a 64 MiB memtable (half a second) held the update p99.9 of YCSB A at 18-24 ms with two
/// shards; at 250, 13-20 ms in the same runs, with 4 MiB memtables no different.
pub const FLUSH_SHARES: usize = 250;

/// Shares of the scan queue: a fifth of the default queue's, so that while both have work, point
/// reads and writes (and the WAL commits they wait on) run first and scans take what is left.
pub const SCAN_SHARES: usize = 200;

/// Shares of the serving queue: the same as glommio's default queue.
pub const SERVING_SHARES: usize = 1000;

/// How long a turn of the executor may run while serving work is queued before it looks at
/// finished I/O again (see [`serving_queue`]).
pub const SERVING_PREEMPT_INTERVAL: Duration = Duration::from_millis(1);

/// How long background work (flush, compaction) may run before the executor looks at finished
/// I/O again. glommio only polls its rings between task-queue runs, and finished disk I/O (a WAL
/// sync that writers wait for) does not preempt a running task: with glommio's default 100 ms
/// timer, a compaction step could keep acknowledged-once-synced writes waiting that long. A queue
/// declared `Latency::Matters(d)` makes glommio fire its preempt timer every `d` while that queue
/// has work, and only then, so the short timer costs nothing while the shard only serves (and
/// cannot disturb glommio's channel-mesh join at start-up, which a global short timer did).
///
/// While a flush or a compaction runs, the serving and background queues take turns until the
/// timer fires, so a WAL sync the kernel has finished waits up to one interval to be seen. At
/// 1 ms, under YCSB A with two shards and 4 MiB memtables, 10% of syncs took over 1 ms from
/// submission to the writer resuming, against 1% in the kernel (`io_uring` trace); at 250 µs the
/// update p99 fell from 7.4 to 6.4–6.6 ms at the same throughput (`docs/benchmarks.md`).
pub const BACKGROUND_PREEMPT_INTERVAL: Duration = Duration::from_micros(250);

/// How long one poll of a background task ([`Sliced`]) may run before [`yield_if_slice_spent`]
/// hands the executor to the other task queues.
pub const BACKGROUND_SLICE: Duration = Duration::from_micros(500);

/// The share of a shard's time that deferrable background work (a flush nobody waits for yet, a
/// compaction without a backlog) may use by default, in percent: see [`Pacer`]. YCSB A with two
/// shards, the default memtable and 2,000,000 records on a two-core machine, the load generator
/// beside them: with flushes and compactions unpaced, the 0.1 s windows that held a flush had a
/// p99.9 of 13–17 ms (all operations) against 6–7.5 ms elsewhere, because a flush took every
/// moment the shard did not serve, and so the time the generator and the kernel's I/O workers
/// needed.
pub const BACKGROUND_SHARE_PERCENT_DEFAULT: u32 = 25;

/// The most time background work may bank while it has nothing to do: after a pause it may run
/// this long before its share holds it back.
pub const BACKGROUND_BURST: Duration = Duration::from_millis(2);

/// The longest one hold of deferrable background work sleeps. A larger debt is waited out over
/// several holds, each at a later yield point, where the work's pace is asked again: whatever
/// turns it urgent (writers about to stall, the engine stopping) is seen within this.
pub const HOLD_MAX: Duration = Duration::from_millis(2);

/// How long an executor whose future finished waits for blocking calls still out (see
/// [`crate::blocking`]); a directory fsync on a failing disk may never return.
pub const BLOCKING_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Configuration of one glommio executor: its name, whether it is pinned to a core, and its
/// memory for DMA buffers.
#[derive(Clone, Debug)]
pub struct ExecutorBuilder {
    name: String,
    core: Option<usize>,
    io_memory_bytes: usize,
    spin_before_park: Option<Duration>,
    preempt_timer: Option<Duration>,
    background_share_percent: u32,
}

impl ExecutorBuilder {
    /// An unpinned executor named `name`, with [`IO_MEMORY_BYTES_DEFAULT`] of DMA memory, that
    /// parks as soon as it is idle (no busy spinning: the machine's cores are shared).
    pub fn new(name: &str) -> Self {
        ExecutorBuilder {
            name: name.to_string(),
            core: None,
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            spin_before_park: None,
            preempt_timer: None,
            background_share_percent: 100,
        }
    }

    /// Pins the executor's thread to CPU `core`.
    pub fn pin_to_core(mut self, core: usize) -> Self {
        self.core = Some(core);
        self
    }

    /// Memory registered with io_uring for DMA buffers (glommio's minimum is 64 KiB).
    pub fn io_memory_bytes(mut self, io_memory_bytes: usize) -> Self {
        self.io_memory_bytes = io_memory_bytes;
        self
    }

    /// Spins for `spin` before parking an idle executor: lower wake-up latency for a dedicated
    /// core, at the price of burning it. Leave it off when cores are shared.
    pub fn spin_before_park(mut self, spin: Duration) -> Self {
        self.spin_before_park = Some(spin);
        self
    }

    /// How often task queues are asked to yield (glommio's default is 100 ms).
    pub fn preempt_timer(mut self, preempt_timer: Duration) -> Self {
        self.preempt_timer = Some(preempt_timer);
        self
    }

    /// The share of the thread's time, in percent (1–100), that deferrable background work
    /// ([`Sliced`] futures at [`yield_if_slice_spent`]`(Pace::Deferrable)`) may use; 100, the
    /// default, never holds it back; [`Pacer::new`] brings other values inside. See [`Pacer`].
    pub fn background_share_percent(mut self, percent: u32) -> Self {
        self.background_share_percent = percent;
        self
    }

    fn glommio_builder(&self) -> LocalExecutorBuilder {
        let placement = match self.core {
            Some(core) => Placement::Fixed(core),
            None => Placement::Unbound,
        };
        let mut builder =
            LocalExecutorBuilder::new(placement).name(&self.name).io_memory(self.io_memory_bytes);
        if let Some(spin) = self.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        if let Some(preempt_timer) = self.preempt_timer {
            builder = builder.preempt_timer(preempt_timer);
        }
        builder
    }

    /// Starts the executor on the calling thread, runs `future` to completion and returns its
    /// output. Fails if the executor cannot start (no io_uring, memory-lock limit, bad core).
    ///
    /// After the future completes, the executor runs one more reactor cycle before it is
    /// dropped: files dropped without an explicit close queue their close on the ring, and
    /// without that cycle the queued closes would never reach the kernel and the descriptors
    /// would leak (glommio's own `OwnedDmaFile` example does the same).
    pub fn run<T>(&self, future: impl Future<Output = T>) -> io::Result<T> {
        let executor = self.glommio_builder().make().map_err(|error| {
            let error = io::Error::from(error);
            io::Error::new(error.kind(), format!("starting executor {}: {error}", self.name))
        })?;
        let share = self.background_share_percent;
        PACER.with(|pacer| pacer.set(Pacer::new(share)));
        let output = executor.run(future);
        // Another executor started later on this thread starts unpaced unless it asks.
        PACER.with(|pacer| pacer.set(Pacer::new(100)));
        // glommio's helper threads panic if their executor is gone when a call they run
        // returns: let every call still out finish first.
        executor.run(crate::blocking::drained(BLOCKING_DRAIN_LIMIT));
        Ok(output)
    }

    /// Starts the executor on a new thread named after it and runs the future that
    /// `make_future` returns there. The future itself need not be `Send` (glommio futures are
    /// not); only the closure that builds it and the output cross threads.
    ///
    /// Joining the handle gives the output, or the error that kept the executor from starting.
    pub fn spawn<MakeFuture, F, T>(
        self,
        make_future: MakeFuture,
    ) -> io::Result<thread::JoinHandle<io::Result<T>>>
    where
        MakeFuture: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        thread::Builder::new().name(self.name.clone()).spawn(move || self.run(make_future()))
    }
}

/// Runs `future` to completion on a new unpinned executor on the calling thread, with a modest
/// `io_memory` and no busy spinning, and returns its output. Meant for tests and tools.
///
/// # Panics
///
/// If the executor cannot start (no io_uring, memory-lock limit), or if called from inside
/// another glommio executor on the same thread.
pub fn run_local<T>(name: &str, future: impl Future<Output = T>) -> T {
    match ExecutorBuilder::new(name).run(future) {
        Ok(output) => output,
        Err(error) => panic!("{error}"),
    }
}

/// Creates a task queue for background work (compaction, repair) on the current executor: it
/// has [`LOW_PRIORITY_SHARES`] against the default queue's 1000, and while it has work the
/// executor preempts every [`BACKGROUND_PREEMPT_INTERVAL`]. Tasks spawned into it
/// (`glommio::spawn_local_into`) run when foreground work leaves room, and must call
/// `yield_if_needed` in long loops (that is where the preemption takes effect).
///
/// Each call creates a new queue: create one per shard at start-up and keep the handle.
///
/// # Panics
///
/// If called outside a glommio executor.
pub fn low_priority_queue() -> TaskQueueHandle {
    glommio::executor().create_task_queue(
        Shares::Static(LOW_PRIORITY_SHARES),
        Latency::Matters(BACKGROUND_PREEMPT_INTERVAL),
        "ringkv-background",
    )
}

/// Creates the task queue a shard serves from (connections, requests, replication, the WAL's
/// group commits): [`SERVING_SHARES`], and while it has work the executor preempts every
/// [`SERVING_PREEMPT_INTERVAL`].
///
/// glommio arms each turn's preempt timer once, when the turn starts, for the shortest latency
/// among the queues that have work at that moment; a queue that gets work during the turn (a
/// scan a reader spawned, a flush a write started) does not shorten it. With serving in glommio's
/// default queue (100 ms), a turn that began with only serving work therefore ran until every
/// queue was empty, however long the scans or the flush it started took, and for all that time
/// no finished I/O was reaped and no new I/O submitted: under YCSB E a WAL sync that the disk had
/// finished in under a millisecond waited 8–11 ms to be seen and the next one as long to be
/// submitted (`docs/benchmarks.md`, workload E). Serving work is there at the start of nearly
/// every turn under load, so declaring it here keeps each turn within the interval.
///
/// A global short timer ([`ExecutorBuilder::preempt_timer`]) would do the same, but with it a
/// shard sometimes parked for good during start-up (with 1 ms: one start in six). glommio can
/// miss a wake-up with this queue too, so an executor that uses it must keep a timer armed
/// whenever it may park (the node's shards do: `watch` in `shard/src/node.rs`).
///
/// # Panics
///
/// If called outside a glommio executor.
pub fn serving_queue() -> TaskQueueHandle {
    glommio::executor().create_task_queue(
        Shares::Static(SERVING_SHARES),
        Latency::Matters(SERVING_PREEMPT_INTERVAL),
        "ringkv-serving",
    )
}

/// Creates a task queue for memtable flushes on the current executor: [`FLUSH_SHARES`] (a
/// quarter of serving's, and the whole core when stalled writers leave it alone), and the same short
/// preemption as [`low_priority_queue`] while a flush runs, so that the syncs and socket reads
/// that serving tasks wait on are picked up within [`BACKGROUND_PREEMPT_INTERVAL`].
///
/// # Panics
///
/// If called outside a glommio executor.
pub fn flush_queue() -> TaskQueueHandle {
    glommio::executor().create_task_queue(
        Shares::Static(FLUSH_SHARES),
        Latency::Matters(BACKGROUND_PREEMPT_INTERVAL),
        "ringkv-flush",
    )
}

/// Creates a task queue for scans on the current executor: [`SCAN_SHARES`] against the default
/// queue's 1000, and, while a scan runs, preemption every [`BACKGROUND_PREEMPT_INTERVAL`]. A scan
/// reads up to hundreds of keys per page; run in the serving queue, every point request queued
/// behind a burst of them waits for all of them, at each of its awaits (an insert waits for its
/// WAL commit twice). Here a point request is picked up within the interval. Tasks spawned into
/// it must call `yield_if_needed` between pages.
///
/// # Panics
///
/// If called outside a glommio executor.
pub fn scan_queue() -> TaskQueueHandle {
    glommio::executor().create_task_queue(
        Shares::Static(SCAN_SHARES),
        Latency::Matters(BACKGROUND_PREEMPT_INTERVAL),
        "ringkv-scan",
    )
}

thread_local! {
    /// When the [`Sliced`] poll running on this thread began; `None` outside one.
    static SLICE_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How much more time this thread's background work may use now.
    static PACER: Cell<Pacer> = const { Cell::new(Pacer::new(100)) };
    /// How often, and for how long, deferrable background work on this thread was held back.
    static BACKGROUND_HELD: Cell<BackgroundHeld> =
        const { Cell::new(BackgroundHeld { holds: 0, held_nanos: 0 }) };
}

/// How often deferrable background work on a thread has been held back to its share of the
/// thread's time, and for how long in all (the sleeps asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackgroundHeld {
    pub holds: u64,
    pub held_nanos: u64,
}

/// What [`Pacer`] has held back on this thread so far.
pub fn background_held() -> BackgroundHeld {
    BACKGROUND_HELD.with(Cell::get)
}

/// Keeps deferrable background work to a share of the thread's time: a token bucket that earns
/// `share_percent` of the wall time as credit (at most [`BACKGROUND_BURST`]), spent by the time
/// [`Sliced`] polls run. A yield point that finds the credit spent sleeps until it is earned back.
///
/// Task-queue shares divide the thread's time only while queues compete: when the serving queue
/// waits (for the next requests, for a WAL sync), a flush or a compaction runs on, and the thread
/// stays busy. On a core it shares (with the load generator on a small machine, with the kernel's
/// I/O workers and network interrupts anywhere), that time was what the others needed: the
/// requests served then waited for them. Paced, the thread sleeps instead, and the disk sees the
/// tables written at a bounded rate.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    share_percent: u32,
    /// Time earned and not yet used, in nanoseconds; negative after a poll that overran it.
    credit_nanos: i64,
    /// When credit was last earned; `None` before the first use.
    earned_at: Option<Instant>,
}

impl Pacer {
    /// A pacer giving background work `share_percent` (1–100) of the time; 100 never holds it.
    pub const fn new(share_percent: u32) -> Pacer {
        let share_percent = if share_percent == 0 {
            1
        } else if share_percent > 100 {
            100
        } else {
            share_percent
        };
        Pacer { share_percent, credit_nanos: BACKGROUND_BURST.as_nanos() as i64, earned_at: None }
    }

    fn unpaced(&self) -> bool {
        self.share_percent >= 100
    }

    /// Earns the credit of the time since the last call.
    fn earn(&mut self, now: Instant) {
        if let Some(earned_at) = self.earned_at {
            let elapsed =
                i64::try_from(now.saturating_duration_since(earned_at).as_nanos()).unwrap_or(i64::MAX);
            let earned = elapsed.saturating_mul(i64::from(self.share_percent)) / 100;
            let burst = BACKGROUND_BURST.as_nanos() as i64;
            self.credit_nanos = self.credit_nanos.saturating_add(earned).min(burst);
        }
        self.earned_at = Some(now);
    }

    /// Charges a finished poll's `used` time, at `now`. The debt is kept to one burst: work that
    /// ran long while something waited for it (urgent work is charged too) does not hold the
    /// deferrable work after it for longer than a burst's worth.
    pub fn charge(&mut self, now: Instant, used: Duration) {
        if self.unpaced() {
            return;
        }
        self.earn(now);
        let used = i64::try_from(used.as_nanos()).unwrap_or(i64::MAX);
        let burst = BACKGROUND_BURST.as_nanos() as i64;
        self.credit_nanos = self.credit_nanos.saturating_sub(used).max(-burst);
    }

    /// How long deferrable work that has run `used` in its current poll should sleep at `now`
    /// before going on: `None` while it has credit left.
    pub fn hold(&mut self, now: Instant, used: Duration) -> Option<Duration> {
        if self.unpaced() {
            return None;
        }
        self.earn(now);
        let used = i64::try_from(used.as_nanos()).unwrap_or(i64::MAX);
        let deficit = used.saturating_sub(self.credit_nanos);
        (deficit > 0).then(|| {
            let nanos =
                u64::try_from(deficit).unwrap_or(0).saturating_mul(100) / u64::from(self.share_percent);
            Duration::from_nanos(nanos).min(HOLD_MAX)
        })
    }
}

/// A background future (a flush, a compaction) whose polls are timed, so that
/// [`yield_if_slice_spent`] inside it can end a poll after [`BACKGROUND_SLICE`]. Each poll's
/// time is charged to the thread's [`Pacer`].
///
/// glommio ends a task queue's run once its preempt timer has fired, and a task sees that at
/// `yield_if_needed`; but the timer's completion is only seen when the thread next enters the
/// kernel, and a flush's or a compaction's loop makes few system calls. Measured under YCSB A
/// (two shards, 4 MiB memtables, 20 s): 19–20 polls of the flush and compaction tasks ran more
/// than 1.5 ms of CPU (up to 2 ms) with `yield_if_needed` alone, 1–2 with the slice.
pub struct Sliced<F> {
    future: F,
}

impl<F: Future> Sliced<F> {
    /// Wraps `future`; spawn the result into the background work's task queue.
    pub fn new(future: F) -> Self {
        Sliced { future }
    }
}

impl<F: Future> Future for Sliced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: structural pinning of the only field: `future` is never moved out of the
        // pinned wrapper, which has no `Drop` and is `Unpin` only when `F` is.
        let future = unsafe { self.map_unchecked_mut(|sliced| &mut sliced.future) };
        let started = Instant::now();
        let outer = SLICE_STARTED.with(|slice| slice.replace(Some(started)));
        let output = future.poll(cx);
        SLICE_STARTED.with(|slice| slice.set(outer));
        PACER.with(|pacer| {
            let mut state = pacer.get();
            // A `Sliced` inside another is charged by the outer one only.
            if outer.is_none() && !state.unpaced() {
                let now = Instant::now();
                state.charge(now, now.saturating_duration_since(started));
                pacer.set(state);
            }
        });
        output
    }
}

/// Yields the current task queue when glommio asks for it or when the [`Sliced`] poll this runs
/// in has used [`BACKGROUND_SLICE`]; otherwise returns at once. [`Pace::Deferrable`] work also
/// sleeps here once it has used the thread's background share ([`Pacer`]). Outside a `Sliced`
/// poll it is `glommio::yield_if_needed`. Cheap enough for every few hundred entries of a loop
/// (one clock reading).
pub async fn yield_if_slice_spent(pace: Pace) {
    let Some(started) = SLICE_STARTED.with(Cell::get) else {
        glommio::yield_if_needed().await;
        return;
    };
    let now = Instant::now();
    let used = now.saturating_duration_since(started);
    if pace == Pace::Deferrable {
        let hold = PACER.with(|pacer| {
            let mut state = pacer.get();
            let hold = state.hold(now, used);
            pacer.set(state);
            hold
        });
        if let Some(hold) = hold {
            BACKGROUND_HELD.with(|held| {
                let mut figures = held.get();
                figures.holds += 1;
                figures.held_nanos =
                    figures.held_nanos.saturating_add(u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX));
                held.set(figures);
            });
            // Ends this poll; `Sliced` charges what it used.
            glommio::timer::sleep(hold).await;
            return;
        }
    }
    if used >= BACKGROUND_SLICE || glommio::executor().need_preempt() {
        glommio::executor().yield_task_queue_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Background work that computes for `steps` steps of 100 µs (no system call, so glommio's
    /// own timer is never seen), reaching a yield point of `pace` after each.
    async fn busy_steps(steps: u32, pace: Pace) {
        for _ in 0..steps {
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(100) {
                std::hint::spin_loop();
            }
            yield_if_slice_spent(pace).await;
        }
    }

    #[test]
    fn an_unpaced_thread_never_holds_background_work() {
        let mut pacer = Pacer::new(100);
        let now = Instant::now();
        pacer.charge(now, Duration::from_secs(10));
        assert_eq!(pacer.hold(now, Duration::from_secs(10)), None);
        // Shares outside 1..=100 are brought inside.
        assert_eq!(Pacer::new(0).share_percent, 1);
        assert_eq!(Pacer::new(250).share_percent, 100);
    }

    #[test]
    fn paced_work_runs_its_burst_then_sleeps_until_its_share_has_earned_the_rest() {
        let mut pacer = Pacer::new(25);
        let start = Instant::now();
        // The first burst is free.
        assert_eq!(pacer.hold(start, BACKGROUND_BURST), None);
        pacer.charge(start, BACKGROUND_BURST);
        // With the credit spent, 500 us more of work must wait four times as long at 25%.
        assert_eq!(pacer.hold(start, Duration::from_micros(500)), Some(Duration::from_millis(2)));
        // A longer wait is asked for one HOLD_MAX at a time.
        assert_eq!(pacer.hold(start, Duration::from_millis(1)), Some(HOLD_MAX));
        // 1 ms later a quarter of it is earned: 250 us of work fits, 500 us waits for the rest.
        let later = start + Duration::from_millis(1);
        assert_eq!(pacer.hold(later, Duration::from_micros(250)), None);
        assert_eq!(pacer.hold(later, Duration::from_micros(500)), Some(Duration::from_millis(1)));
        // A poll that overran its credit leaves a debt the next hold waits out.
        pacer.charge(later, Duration::from_millis(1));
        assert_eq!(pacer.credit_nanos, -750_000);
        assert_eq!(pacer.hold(later, Duration::ZERO), Some(HOLD_MAX));
        // 3 ms later the debt is paid at 25%.
        let paid = later + Duration::from_millis(3);
        assert_eq!(pacer.hold(paid, Duration::ZERO), None);
        // However long a poll ran, the debt it leaves is one burst at most.
        pacer.charge(paid, Duration::from_secs(1));
        assert_eq!(pacer.credit_nanos, -(BACKGROUND_BURST.as_nanos() as i64));
        // A long idle spell banks no more than one burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(pacer.hold(much_later, BACKGROUND_BURST), None);
        assert!(pacer.hold(much_later, BACKGROUND_BURST + Duration::from_micros(1)).is_some());
    }

    /// Busy background work on an executor with a background share sleeps at its yield points
    /// when deferrable, never when urgent, and never on an unpaced executor.
    #[test]
    fn deferrable_work_is_held_to_the_share_and_urgent_work_is_not() {
        fn holds_of(share: u32, pace: Pace) -> u64 {
            // glommio can sleep through its own timer, where the holds sleep: a heartbeat lets the
            // nudge thread wake the executor if it does (see `crate::nudge`).
            let nudges = std::sync::Arc::new(crate::nudge::Nudges::new(1));
            let nudger = nudges.spawn("executor-pace-test-nudge").unwrap();
            let heartbeat_nudges = nudges.clone();
            let builder = ExecutorBuilder::new("executor-pace-test").background_share_percent(share);
            let holds = builder
                .run(async move {
                    glommio::spawn_local(async move {
                        match crate::nudge::heartbeat(&heartbeat_nudges, 0).await {}
                    })
                    .detach();
                    let before = background_held();
                    let busy = glommio::spawn_local_into(
                        // Far past one burst, whatever this machine's speed.
                        Sliced::new(busy_steps(100, pace)),
                        flush_queue(),
                    )
                    .unwrap();
                    busy.await;
                    let after = background_held();
                    assert_eq!(after.holds > before.holds, after.held_nanos > before.held_nanos);
                    after.holds - before.holds
                })
                .unwrap();
            nudges.finish();
            nudger.join().unwrap();
            holds
        }
        assert!(holds_of(50, Pace::Deferrable) > 0, "deferrable work at half the core was held");
        assert_eq!(holds_of(50, Pace::Urgent), 0, "urgent work was not held");
        assert_eq!(holds_of(100, Pace::Deferrable), 0, "an unpaced executor held nothing");
    }

    #[test]
    fn run_local_returns_the_output() {
        assert_eq!(run_local("executor-test", async { 40 + 2 }), 42);
    }

    #[test]
    fn spawned_executor_returns_its_output() {
        let handle = ExecutorBuilder::new("executor-spawn-test")
            .io_memory_bytes(256 << 10)
            .spawn(|| async { String::from("done") })
            .unwrap();
        assert_eq!(handle.join().unwrap().unwrap(), "done");
    }

    #[test]
    fn pinning_to_a_missing_core_is_an_error() {
        let result = ExecutorBuilder::new("executor-bad-core").pin_to_core(1 << 20).run(async {});
        assert!(result.is_err());
    }

    #[test]
    fn low_priority_queue_runs_tasks() {
        let ran_in = run_local("executor-queue-test", async {
            let queue = low_priority_queue();
            let task = glommio::spawn_local_into(
                async move { glommio::executor().current_task_queue() == queue },
                queue,
            )
            .unwrap();
            task.await
        });
        assert!(ran_in, "the task ran in the low-priority queue");
    }

    #[test]
    fn flush_queue_runs_tasks_beside_the_low_priority_queue() {
        let ran_in = run_local("executor-flush-queue-test", async {
            let flush = flush_queue();
            let background = low_priority_queue();
            let in_flush = glommio::spawn_local_into(
                async move { glommio::executor().current_task_queue() == flush },
                flush,
            )
            .unwrap();
            let in_background = glommio::spawn_local_into(
                async move { glommio::executor().current_task_queue() == background },
                background,
            )
            .unwrap();
            (in_flush.await, in_background.await)
        });
        assert_eq!(ran_in, (true, true), "each task ran in its own queue");
    }

    /// A background task that only computes (no system call, so glommio's own preempt timer is
    /// never seen) still lets another queue's task run before it is done, at its yield points.
    #[test]
    fn a_sliced_task_lets_other_queues_run_at_its_yield_points() {
        let ran_while_busy = run_local("executor-slice-test", async {
            let busy_done = Rc::new(Cell::new(false));
            let done = busy_done.clone();
            let busy = glommio::spawn_local_into(
                Sliced::new(async move {
                    // Far longer than the slice, whatever this machine's speed.
                    busy_steps(200, Pace::Urgent).await;
                    done.set(true);
                }),
                low_priority_queue(),
            )
            .unwrap();
            // Let the busy task start first.
            glommio::executor().yield_task_queue_now().await;
            let done = busy_done.clone();
            let other = glommio::spawn_local_into(async move { !done.get() }, serving_queue()).unwrap();
            let ran_while_busy = other.await;
            busy.await;
            ran_while_busy
        });
        assert!(ran_while_busy, "the other queue's task ran while the sliced task was still busy");
    }
}
