//! When both memtables are full, a stalled writer flushes the sealed memtable itself. A
//! maintenance task that wakes up meanwhile must wait for that flush, not spin: on a glommio
//! executor a task that never awaits something pending holds the core, so the writer's flush
//! (and everything else on the shard) would never run again.
//!
//! The spin happens inside one `poll` and cannot be interrupted, so the scenario runs on its own
//! thread and the test fails if it has not finished after a generous minute (the work itself is
//! a few milliseconds).

use crate::common;

use common::{Acknowledged, CrashPointDisk, Write};
use futures_executor::block_on;
use ringkv_storage::{Engine, EngineOptions, SyncMode};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

type Task<'a> = Pin<Box<dyn Future<Output = ringkv_storage::Result<()>> + 'a>>;

fn scenario() -> ringkv_storage::EngineStats {
    // Periodic sync: a put resolves without touching the disk, so the writer fills both
    // memtables and stalls before maintenance is first polled.
    let options = EngineOptions {
        sync: SyncMode::Periodic { interval_ms: 1_000 },
        memtable_bytes_max: 4 << 10,
        ..EngineOptions::default()
    };
    // Every disk operation yields once, so the writer's own flush is in progress when maintenance
    // is first polled.
    let disk = CrashPointDisk::yielding(vec![], Rc::new(Acknowledged::default()), |_| false);
    let engine = block_on(Engine::open(disk, options)).unwrap();
    let writes: Vec<Write> = (0..40).map(|index| Write::put(index, index, 1_000)).collect();
    let writer: Task = Box::pin(async {
        // Fills the active memtable, which is sealed, then the next one, then stalls and
        // flushes the sealed memtable itself.
        for (index, write) in writes.iter().enumerate() {
            write.issue(&engine, index).await?;
        }
        engine.stop_maintenance();
        Ok(())
    });
    let maintenance: Task = Box::pin(engine.run_maintenance(|| 0));
    let outputs = common::drive_in_order(vec![writer, maintenance]);
    for output in outputs {
        output.unwrap();
    }
    for (index, write) in writes.iter().enumerate() {
        let found = block_on(engine.get(&write.key, 0)).unwrap().map(|found| found.value);
        assert_eq!(found.as_ref(), write.value.as_ref(), "write {index}");
    }
    engine.stats()
}

#[test]
fn engine_maintenance_waits_while_a_stalled_writer_flushes() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let stats = scenario();
        let _ = done.send(stats);
    });
    let stats = match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(stats) => stats,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "run_maintenance did not return: it spins on `flush_sealed` returning Ok at once while \
             another flush is in progress"
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario panicked (see above)"),
    };
    assert!(stats.flushes >= 2, "{stats:?}");
}
