//! A live progress line on a terminal: elapsed time, operations so far, ops/s and p99 over the
//! last second. Nothing is shown when standard error is not a terminal, so scripts and logs get
//! only the final report.
//!
//! The workers on every executor thread add each finished operation to a [`Live`]; a plain thread
//! (not an executor: it only sleeps and prints) reads and resets the window once a second.

use crate::histogram::LatencyRecorder;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the line is redrawn.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the printing thread looks whether the run has ended.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What the workers report as they go.
pub struct Live {
    operations: AtomicU64,
    /// Latencies since the line was last drawn.
    window: Mutex<LatencyRecorder>,
}

impl Live {
    fn window(&self) -> MutexGuard<'_, LatencyRecorder> {
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds one finished operation.
    pub fn record(&self, latency: Duration) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        self.window().record(latency);
    }
}

/// The progress line and the thread that draws it; [`Progress::stop`] ends both.
pub struct Progress {
    live: Arc<Live>,
    stopping: Arc<AtomicBool>,
    printer: JoinHandle<()>,
}

impl Progress {
    /// Starts drawing when standard error is a terminal; `None` otherwise.
    pub fn start_on_terminal() -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let live =
            Arc::new(Live { operations: AtomicU64::new(0), window: Mutex::new(LatencyRecorder::new()) });
        let stopping = Arc::new(AtomicBool::new(false));
        let printer = {
            let (live, stopping) = (Arc::clone(&live), Arc::clone(&stopping));
            std::thread::spawn(move || draw_until_stopped(&live, &stopping))
        };
        Some(Progress { live, stopping, printer })
    }

    /// What the workers record into.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live)
    }

    /// Stops the printing thread and clears the line.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.printer.join();
        eprint!("\r\x1b[2K");
    }
}

fn draw_until_stopped(live: &Live, stopping: &AtomicBool) {
    let started = Instant::now();
    let mut last_drawn = started;
    let mut operations_before = 0;
    while !stopping.load(Ordering::Relaxed) {
        std::thread::sleep(STOP_POLL_INTERVAL);
        if last_drawn.elapsed() < REFRESH_INTERVAL {
            continue;
        }
        let window = std::mem::replace(&mut *live.window(), LatencyRecorder::new());
        let operations = live.operations.load(Ordering::Relaxed);
        let per_second = (operations - operations_before) as f64 / last_drawn.elapsed().as_secs_f64();
        last_drawn = Instant::now();
        operations_before = operations;
        eprint!(
            "\r\x1b[2K{:>5.0} s  {operations:>12} ops  {per_second:>10.0} ops/s  p99 {:>8.0} us",
            started.elapsed().as_secs_f64(),
            window.summary().p99_us
        );
        let _ = std::io::stderr().flush();
    }
}
