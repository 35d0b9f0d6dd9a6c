//! [`Handoff`]: this shard's hinted handoff: the hints it keeps for replicas that were down or
//! did not answer in time, one durable log per destination under `shard-N/hints/node-<id>/`,
//! and the queue each destination's replay takes from.
//!
//! The decisions (bounds, hint window, grace, replay throttle) are
//! `ringkv_replication::hints::HintBook`'s; the records are `ringkv_storage::hints::HintLog`'s,
//! the WAL's own format and sync rules. The hints also stay in memory, in order, for replay:
//! that memory is bounded by the same byte bounds as the logs.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use ringkv_io::DmaDisk;
use ringkv_replication::hints::{HintBook, HintCounters, HintSettings};
use ringkv_storage::hints::{HintLog, StoredHint};
use ringkv_storage::{Entry, StorageError};
use tracing::{info, warn};

/// Hint log segments roll at this size.
const HINT_SEGMENT_BYTES_MAX: u64 = 8 << 20;

fn destination_directory(directory: &std::path::Path, destination: u16) -> PathBuf {
    directory.join(format!("node-{destination}"))
}

/// This shard's hints.
pub struct Handoff {
    shard: u32,
    directory: PathBuf,
    book: RefCell<HintBook>,
    logs: RefCell<BTreeMap<u16, Rc<HintLog<DmaDisk>>>>,
    queues: RefCell<BTreeMap<u16, VecDeque<StoredHint>>>,
    /// Highest sequence number appended to each log, and whether a sync task runs for it.
    appended: RefCell<BTreeMap<u16, u64>>,
    syncing: RefCell<BTreeMap<u16, bool>>,
    sync_failures: Cell<u64>,
    /// Destinations whose hints were all synced since their figures were last logged, and when
    /// figures were last logged.
    drained: RefCell<BTreeMap<u16, bool>>,
    logged_ms: Cell<u64>,
    /// The counters when figures were last logged: hints dropped past a bound are logged too,
    /// though no sync follows them.
    logged_counters: Cell<HintCounters>,
    /// A log is being opened; the others wait for `opened`.
    opening: Cell<bool>,
    opened: event_listener::Event,
}

impl Handoff {
    /// Opens the hints kept in `directory` (created if missing) and reads them back.
    pub async fn open(
        shard: u32,
        directory: PathBuf,
        settings: HintSettings,
    ) -> Result<Rc<Self>, StorageError> {
        let handoff = Handoff {
            shard,
            directory: directory.clone(),
            book: RefCell::new(HintBook::new(settings)),
            logs: RefCell::new(BTreeMap::new()),
            queues: RefCell::new(BTreeMap::new()),
            appended: RefCell::new(BTreeMap::new()),
            syncing: RefCell::new(BTreeMap::new()),
            sync_failures: Cell::new(0),
            drained: RefCell::new(BTreeMap::new()),
            logged_ms: Cell::new(0),
            logged_counters: Cell::new(HintCounters::default()),
            opening: Cell::new(false),
            opened: event_listener::Event::new(),
        };
        let destinations: Vec<u16> = match std::fs::read_dir(&directory) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("node-")?.parse().ok())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(StorageError::io("list", directory.display().to_string(), error)),
        };
        for destination in destinations {
            let (log, recovery) = handoff.open_log(destination).await?;
            let mut book = handoff.book.borrow_mut();
            for hint in &recovery.hints {
                book.recovered(destination, hint.log_bytes() as u64, hint.down_since_ms);
            }
            if !recovery.hints.is_empty() || recovery.torn_tail_bytes > 0 {
                info!(
                    shard,
                    destination,
                    hints = recovery.hints.len(),
                    torn_tail_bytes = recovery.torn_tail_bytes,
                    "hints recovered"
                );
            }
            handoff.queues.borrow_mut().insert(destination, recovery.hints.into());
            handoff.logs.borrow_mut().insert(destination, Rc::new(log));
        }
        Ok(Rc::new(handoff))
    }

    async fn open_log(
        &self,
        destination: u16,
    ) -> Result<(HintLog<DmaDisk>, ringkv_storage::hints::HintRecovery), StorageError> {
        let path = destination_directory(&self.directory, destination);
        let disk = DmaDisk::open(&path)
            .await
            .map_err(|error| StorageError::io("open", path.display().to_string(), error))?;
        HintLog::open(disk, HINT_SEGMENT_BYTES_MAX).await
    }

    async fn log(&self, destination: u16) -> Result<Rc<HintLog<DmaDisk>>, StorageError> {
        loop {
            if let Some(log) = self.logs.borrow().get(&destination) {
                return Ok(log.clone());
            }
            // One opening at a time: two writers created on one directory would race for the
            // same segment file.
            if !self.opening.replace(true) {
                break;
            }
            let listener = self.opened.listen();
            if !self.opening.get() {
                continue;
            }
            listener.await;
        }
        let opened = self.open_log(destination).await;
        let result = opened.map(|(log, _)| {
            let log = Rc::new(log);
            self.logs.borrow_mut().insert(destination, log.clone());
            log
        });
        self.opening.set(false);
        self.opened.notify(usize::MAX);
        result
    }

    /// The counters.
    pub fn counters(&self) -> HintCounters {
        self.book.borrow().counters()
    }

    /// Bytes of hints kept, in all, and for `destination`.
    pub fn bytes(&self, destination: u16) -> (u64, u64) {
        let book = self.book.borrow();
        (book.bytes(), book.destination_bytes(destination))
    }

    /// Hint log syncs that failed.
    pub fn sync_failures(&self) -> u64 {
        self.sync_failures.get()
    }

    /// Membership saw `destination` go down.
    pub fn mark_down(&self, destination: u16, now_ms: u64) {
        self.book.borrow_mut().mark_down(destination, now_ms);
    }

    /// Membership saw `destination` come up.
    pub fn mark_up(&self, destination: u16) {
        self.book.borrow_mut().mark_up(destination);
    }

    /// Destinations with hints waiting.
    pub fn waiting(&self) -> Vec<u16> {
        self.queues.borrow().iter().filter(|(_, queue)| !queue.is_empty()).map(|(&node, _)| node).collect()
    }

    /// Keeps a hint of `entry` under `key` for `destination`, unless a bound or the hint window
    /// refuses it (then it is dropped and counted: anti-entropy repairs it).
    pub async fn store(self: &Rc<Self>, destination: u16, key: Bytes, entry: Entry, now_ms: u64) {
        let mut hint = StoredHint { key, entry, written_at_ms: now_ms, down_since_ms: now_ms };
        let bytes = hint.log_bytes() as u64;
        match self.book.borrow_mut().admit(destination, bytes, now_ms) {
            Ok(down_since_ms) => hint.down_since_ms = down_since_ms,
            Err(refusal) => {
                tracing::debug!(destination, %refusal, "hint dropped");
                return;
            }
        }
        let log = match self.log(destination).await {
            Ok(log) => log,
            Err(error) => {
                warn!(destination, %error, "the hint log cannot be opened; hint dropped");
                self.book.borrow_mut().released(destination, bytes, false);
                return;
            }
        };
        match log.append(&hint) {
            Ok(seq) => {
                self.appended.borrow_mut().insert(destination, seq);
                self.queues.borrow_mut().entry(destination).or_default().push_back(hint);
                self.sync_in_background(destination, log);
            }
            Err(error) => {
                warn!(destination, %error, "a hint could not be logged; hint dropped");
                self.book.borrow_mut().released(destination, bytes, false);
            }
        }
    }

    /// One task per destination syncs what was appended (group commit: a sync covers every hint
    /// appended while the previous one ran).
    fn sync_in_background(self: &Rc<Self>, destination: u16, log: Rc<HintLog<DmaDisk>>) {
        if self.syncing.borrow().get(&destination).copied().unwrap_or(false) {
            return;
        }
        self.syncing.borrow_mut().insert(destination, true);
        let handoff = self.clone();
        glommio::spawn_local(async move {
            let mut synced = 0;
            loop {
                let target = handoff.appended.borrow().get(&destination).copied().unwrap_or(0);
                if target <= synced {
                    break;
                }
                if let Err(error) = log.sync_through(target).await {
                    handoff.sync_failures.set(handoff.sync_failures.get() + 1);
                    warn!(destination, %error, "syncing hints failed; they are kept in memory only");
                    break;
                }
                synced = target;
            }
            handoff.syncing.borrow_mut().insert(destination, false);
            handoff.drained.borrow_mut().insert(destination, true);
        })
        .detach();
    }

    /// Logs, at most once a second, how many hints each destination has kept durably since the
    /// last figures (an operator watching an outage sees the hints grow and stay bounded).
    pub fn log_durable(&self, now_ms: u64) {
        if now_ms.saturating_sub(self.logged_ms.get()) < 1_000 {
            return;
        }
        let book = self.book.borrow();
        let counters = book.counters();
        let drained = std::mem::take(&mut *self.drained.borrow_mut());
        let mut destinations: Vec<u16> = drained.keys().copied().collect();
        if counters != self.logged_counters.get() {
            destinations.extend(book.destinations_with_hints());
        }
        destinations.sort_unstable();
        destinations.dedup();
        if destinations.is_empty() {
            return;
        }
        self.logged_ms.set(now_ms);
        self.logged_counters.set(counters);
        for destination in destinations {
            let (kept, kept_bytes) =
                (book.destination_hints(destination), book.destination_bytes(destination));
            let (shard_bytes, dropped_full, dropped_window) =
                (book.bytes(), counters.dropped_full, counters.dropped_window);
            // "durable" only when every hint appended was synced since the last figures.
            if drained.contains_key(&destination)
                && !self.syncing.borrow().get(&destination).copied().unwrap_or(false)
            {
                info!(
                    shard = self.shard,
                    destination, kept, kept_bytes, shard_bytes, dropped_full, dropped_window, "hints durable"
                );
            } else {
                info!(
                    shard = self.shard,
                    destination, kept, kept_bytes, shard_bytes, dropped_full, dropped_window, "hints kept"
                );
            }
        }
    }

    /// Takes up to the replay budget's worth of `destination`'s hints at `now_ms`; hints past
    /// the grace period are dropped (counted) on the way. Give back what could not be delivered
    /// with [`Handoff::give_back`], and report the rest with [`Handoff::delivered`].
    pub fn take_for_replay(&self, destination: u16, now_ms: u64, hints_max: usize) -> Vec<StoredHint> {
        let mut book = self.book.borrow_mut();
        let mut budget = book.replay_budget(now_ms);
        let mut queues = self.queues.borrow_mut();
        let Some(queue) = queues.get_mut(&destination) else { return Vec::new() };
        let mut taken = Vec::new();
        while taken.len() < hints_max {
            let Some(hint) = queue.front() else { break };
            let bytes = hint.log_bytes() as u64;
            if book.expired(hint.written_at_ms, now_ms) {
                queue.pop_front();
                book.released(destination, bytes, false);
                continue;
            }
            if bytes > budget {
                break;
            }
            budget -= bytes;
            book.spend(bytes);
            taken.push(queue.pop_front().expect("front exists"));
        }
        taken
    }

    /// Puts hints that could not be delivered back at the front of the queue, in order.
    pub fn give_back(&self, destination: u16, hints: Vec<StoredHint>) {
        let mut queues = self.queues.borrow_mut();
        let queue = queues.entry(destination).or_default();
        for hint in hints.into_iter().rev() {
            queue.push_front(hint);
        }
    }

    /// A hint was delivered. Once a destination's queue is empty its log is dropped, and its
    /// outage is over (hints are replayed only to a destination up): the next hint for it, after
    /// a timeout say, starts a new hint window.
    pub async fn delivered(&self, destination: u16, hint: &StoredHint) {
        self.book.borrow_mut().released(destination, hint.log_bytes() as u64, true);
        let empty = self.queues.borrow().get(&destination).is_none_or(VecDeque::is_empty);
        if empty {
            self.book.borrow_mut().mark_up(destination);
            self.clear_log(destination).await;
        }
    }

    async fn clear_log(&self, destination: u16) {
        let log = self.logs.borrow().get(&destination).cloned();
        if let Some(log) = log {
            if let Err(error) = log.clear().await {
                warn!(destination, %error, "clearing a delivered hint log failed; its hints may replay again");
            }
        }
    }

    /// `destination` left the cluster: every hint for it is purged, its log dropped.
    pub async fn purge(&self, destination: u16) {
        let purged = self.book.borrow_mut().purge(destination);
        self.queues.borrow_mut().remove(&destination);
        self.clear_log(destination).await;
        if purged > 0 {
            info!(destination, purged, "hints purged: the node left the cluster");
        }
    }
}
