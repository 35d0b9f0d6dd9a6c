//! [`ReadTimeouts`]: when a client connection is closed for being slow or idle.
//!
//! - A frame (or Redis command) that has started arriving must finish within `frame_timeout_ms`;
//!   otherwise the connection is closed, so a client that trickles bytes (a slowloris) cannot
//!   hold a socket and a receive buffer for as long as it likes.
//! - With `client_idle_timeout_ms` set, a connection that sends nothing for that long, with
//!   nothing in flight and nothing left to write, is closed.
//!
//! The timers race the socket read and fire only to close: a read is never cancelled to be
//! tried again. Closures are counted over the whole process and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

/// Connections closed because a frame did not finish in time, since the process started.
static FRAMES_TIMED_OUT: AtomicU64 = AtomicU64::new(0);

/// Connections closed for being idle, since the process started.
static IDLE_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Why a connection's read gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// A frame started and did not finish within the frame timeout.
    Frame,
    /// Nothing arrived, and nothing was running, for the idle timeout.
    Idle,
}

impl Expired {
    /// Counts the closure and logs the count: every closure at debug level, and at info level
    /// the first and then every power of two, so a flood of them cannot flood the log.
    pub fn count(self) {
        let (counter, what) = match self {
            Expired::Frame => (&FRAMES_TIMED_OUT, "a frame did not finish within frame_timeout_ms"),
            Expired::Idle => (&IDLE_CLOSED, "idle past client_idle_timeout_ms"),
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if total.is_power_of_two() {
            info!(closed = total, "closed client connections: {what}");
        } else {
            tracing::debug!(closed = total, "closed a client connection: {what}");
        }
    }

    /// How many connections were closed for this reason so far, in this process.
    pub fn total(self) -> u64 {
        match self {
            Expired::Frame => FRAMES_TIMED_OUT.load(Ordering::Relaxed),
            Expired::Idle => IDLE_CLOSED.load(Ordering::Relaxed),
        }
    }
}

/// The deadlines of one connection's reads.
#[derive(Debug)]
pub struct ReadTimeouts {
    frame: Duration,
    idle: Option<Duration>,
    /// When the bytes of the unfinished frame at the front of the buffer began to arrive.
    frame_started: Option<Instant>,
}

impl ReadTimeouts {
    /// Deadlines of `frame` for a started frame, and `idle` (if any) between requests.
    pub fn new(frame: Duration, idle: Option<Duration>) -> Self {
        ReadTimeouts { frame, idle, frame_started: None }
    }

    /// Call after each read, once the complete frames were taken: `buffered` bytes of an
    /// unfinished frame remain; `took_frames` tells whether any frame was completed by this read
    /// (then what remains is a new frame, begun now).
    pub fn after_read(&mut self, buffered: usize, took_frames: bool) {
        if buffered == 0 {
            self.frame_started = None;
        } else if took_frames || self.frame_started.is_none() {
            self.frame_started = Some(Instant::now());
        }
    }

    /// Completes when the connection should be closed: the frame in progress ran out of time,
    /// or (with an idle timeout) a whole idle period passed while `busy` said nothing was
    /// running. Otherwise never.
    pub async fn expired(&self, busy: impl Fn() -> bool) -> Expired {
        if let Some(started) = self.frame_started {
            let deadline = started + self.frame;
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            return Expired::Frame;
        }
        let Some(idle) = self.idle else {
            return std::future::pending().await;
        };
        loop {
            glommio::timer::sleep(idle).await;
            if !busy() {
                return Expired::Idle;
            }
        }
    }
}
