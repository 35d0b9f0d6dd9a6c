//! Runs one storage engine's background work on the current glommio executor.
//!
//! The engine itself has no runtime: it exposes `run_flushes`, `run_compactions` and `sync`. This
//! service spawns flushes into a queue of normal priority (writers stall while a sealed memtable
//! waits for its flush), compactions into a low-priority task queue (they only take the CPU that
//! foreground requests leave), both preempted every millisecond while they run so that serving
//! tasks see their finished I/O without waiting for a whole flush or compaction step, and, when the engine runs with `SyncMode::Periodic`, a timer task that makes
//! the WAL durable every interval. `stop` ends all three and closes the engine.
//!
//! The sync timer is stopped by a signal it waits on next to its sleep, never by cancelling the
//! task: cancelled in the middle of a WAL commit, the engine would have to fail-stop.

use crate::clock::now_ms;
use crate::dma_disk::{DmaDisk, SyncObserver};
use crate::executor::{flush_queue, low_priority_queue, Sliced};
use event_listener::Event;
use futures_util::future::{select, Either};
use glommio::task::JoinHandle;
use ringkv_storage::{Engine, EngineOptions, StorageError, SyncMode};
use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

/// An open engine on a DMA disk with its background tasks running.
pub struct EngineService {
    engine: Rc<Engine<DmaDisk>>,
    flushes: JoinHandle<Result<(), StorageError>>,
    compactions: JoinHandle<Result<(), StorageError>>,
    syncer: Option<JoinHandle<()>>,
    stopping: Rc<Cell<bool>>,
    stop_requested: Rc<Event>,
}

impl EngineService {
    /// Opens (recovering) the engine in `directory` and starts its background tasks. Must be
    /// called inside a glommio executor.
    pub async fn open(directory: impl AsRef<Path>, options: EngineOptions) -> Result<Self, StorageError> {
        Self::open_observed(directory, options, None).await
    }

    /// [`EngineService::open`], with `sync_observer` (when given) told of every file sync the
    /// engine completes.
    pub async fn open_observed(
        directory: impl AsRef<Path>,
        options: EngineOptions,
        sync_observer: Option<Rc<dyn SyncObserver>>,
    ) -> Result<Self, StorageError> {
        let path = directory.as_ref().display().to_string();
        let mut disk = DmaDisk::open(directory)
            .await
            .map_err(|error| StorageError::io("open directory", path, error))?;
        if let Some(observer) = sync_observer {
            disk = disk.observe_syncs(observer);
        }
        let engine = Rc::new(Engine::open(disk, options).await?);
        Ok(Self::start(engine))
    }

    /// Starts the background tasks of an open engine.
    pub fn start(engine: Rc<Engine<DmaDisk>>) -> Self {
        let stopping = Rc::new(Cell::new(false));
        let stop_requested = Rc::new(Event::new());
        let flushed = engine.clone();
        let flushes =
            glommio::spawn_local_into(Sliced::new(async move { flushed.run_flushes().await }), flush_queue())
                .expect("the queue was just created on this executor")
                .detach();
        let compacted = engine.clone();
        let compactions = glommio::spawn_local_into(
            Sliced::new(async move { compacted.run_compactions(now_ms).await }),
            low_priority_queue(),
        )
        .expect("the queue was just created on this executor")
        .detach();
        let syncer = match engine.options().sync {
            SyncMode::Always => None,
            SyncMode::Periodic { interval_ms } => {
                let synced = engine.clone();
                let stopped = stopping.clone();
                let stop_requested = stop_requested.clone();
                let interval = Duration::from_millis(interval_ms.max(1));
                Some(
                    glommio::spawn_local(async move {
                        while !stopped.get() {
                            let stop = stop_requested.listen();
                            if stopped.get() {
                                break;
                            }
                            let sleep = std::pin::pin!(glommio::timer::sleep(interval));
                            if let Either::Right(_) = select(sleep, stop).await {
                                break;
                            }
                            if let Err(error) = synced.sync().await {
                                tracing::error!(%error, "periodic WAL sync failed");
                                break;
                            }
                        }
                    })
                    .detach(),
                )
            }
        };
        EngineService { engine, flushes, compactions, syncer, stopping, stop_requested }
    }

    /// The engine, to serve requests with.
    pub fn engine(&self) -> &Rc<Engine<DmaDisk>> {
        &self.engine
    }

    /// Stops the background tasks, waits for them, then makes every write durable and closes the
    /// engine. Returns the error that poisoned the engine, if one did.
    pub async fn stop(self) -> Result<(), StorageError> {
        self.stopping.set(true);
        self.stop_requested.notify(usize::MAX);
        self.engine.stop_maintenance();
        let flushed = self.flushes.await.unwrap_or(Ok(()));
        let compacted = self.compactions.await.unwrap_or(Ok(()));
        if let Some(syncer) = self.syncer {
            syncer.await;
        }
        let closed = self.engine.close().await;
        flushed.and(compacted).and(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::run_local;
    use bytes::Bytes;

    #[test]
    fn background_flushes_happen_and_stop_closes_the_engine() {
        let directory = tempfile::tempdir().unwrap();
        run_local("engine-service-test", async {
            let options = EngineOptions {
                sync: SyncMode::Periodic { interval_ms: 1 },
                memtable_bytes_max: 32 << 10,
                ..EngineOptions::default()
            };
            let service = EngineService::open(directory.path(), options.clone()).await.unwrap();
            let engine = service.engine().clone();
            for index in 0..2000u32 {
                let key = Bytes::from(format!("key{index:05}"));
                engine.put(key, Bytes::from(vec![7u8; 64]), 1, None).await.unwrap();
                glommio::yield_if_needed().await;
            }
            // The maintenance task flushes in the background; wait for it (bounded).
            for _ in 0..2000 {
                if engine.stats().flushes > 0 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert!(engine.stats().flushes > 0, "the maintenance task never flushed");
            service.stop().await.unwrap();
            assert!(matches!(
                engine.put(Bytes::from_static(b"k"), Bytes::new(), 1, None).await,
                Err(StorageError::Closed)
            ));

            let reopened = EngineService::open(directory.path(), options).await.unwrap();
            for index in (0..2000u32).step_by(97) {
                let key = format!("key{index:05}");
                assert!(reopened.engine().get(key.as_bytes(), 0).await.unwrap().is_some(), "{key} lost");
            }
            reopened.stop().await.unwrap();
        });
    }
}
