//! The real thing: a process running the engine on a `DmaDisk` (O_DIRECT through io_uring) with
//! `SyncMode::Always` and 16 concurrent writers is killed with SIGKILL part-way through, and every
//! write it acknowledged must be readable afterwards with the right value.
//!
//! The test binary runs itself as the child: `engine_sigkill_child` (ignored in ordinary runs) is
//! started with `--ignored --exact` and the data directory in `RINGKV_SIGKILL_CHILD_DIR`. The child
//! prints `ack <key> end` only after the put of `<key>` resolved `Ok`, so every complete line the
//! parent reads names an acknowledged write. The parent kills the child a random 50 to 400 ms
//! after its first acknowledgement, reopens the engine on the same directory and checks every key
//! acknowledged so far. Three rounds run on the same directory, each recovering what the previous
//! ones left (tables, WAL segments, perhaps torn tails or orphan tables).
//!
//! The directory is made under Cargo's target directory, not a possibly-tmpfs `/tmp`, so the
//! writes really go through O_DIRECT to a block device.

use bytes::Bytes;
use ringkv_io::{run_local, DmaDisk, EngineService};
use ringkv_storage::{Engine, EngineOptions, SyncMode};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CHILD_DIRECTORY_ENV: &str = "RINGKV_SIGKILL_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "RINGKV_SIGKILL_CHILD_ROUND";
const CHILD_TEST_NAME: &str = "engine_sigkill::engine_sigkill_child";
const WRITERS: usize = 16;
/// Puts per writer, a bound in case the parent never kills the child.
const PUTS_PER_WRITER_MAX: u64 = 20_000;
const ROUNDS: u64 = 3;

fn options() -> EngineOptions {
    EngineOptions {
        sync: SyncMode::Always,
        // Small memtables, so the run flushes and compacts while the writers go on.
        memtable_bytes_max: 64 << 10,
        block_cache_bytes: 1 << 20,
        wal_segment_bytes_max: 1 << 20,
        compaction_width_min: 2,
        compaction_width_max: 4,
        ..EngineOptions::default()
    }
}

fn key(round: u64, writer: usize, index: u64) -> String {
    format!("r{round}-w{writer:02}-{index:08}")
}

/// The value written under `key`: derived from it, so the parent can check it.
fn value(key: &str) -> Bytes {
    Bytes::from(key.bytes().cycle().take(120).collect::<Vec<u8>>())
}

/// A random number below `bound`, from the standard library's randomly seeded hasher.
fn random_below(bound: u64) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish() % bound
}

// Runs as part of `cargo test -p ringkv-io --test integration engine_sigkill`: the parent test
// starts this binary again with `--ignored --exact engine_sigkill::engine_sigkill_child` and the
// child's environment.
#[test]
#[ignore = "the child process of engine_sigkill_keeps_every_acknowledged_write, which starts it"]
fn engine_sigkill_child() {
    // Run by hand (`cargo test -- --ignored`), it is not a child and has nothing to do.
    let Ok(directory) = std::env::var(CHILD_DIRECTORY_ENV) else { return };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).expect("started with a round").parse().unwrap();
    run_local("engine-sigkill-child", async move {
        let service = EngineService::open(&directory, options()).await.expect("open the engine");
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let engine = service.engine().clone();
            writers.push(glommio::spawn_local(async move {
                for index in 0..PUTS_PER_WRITER_MAX {
                    let key = key(round, writer, index);
                    let version = round << 40 | index;
                    if let Err(error) = engine.put(Bytes::from(key.clone()), value(&key), version, None).await
                    {
                        eprintln!("put {key} failed: {error}");
                        std::process::exit(3);
                    }
                    // One write(2) per line, after the put resolved: the line means "acknowledged".
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "ack {key} end").unwrap();
                    stdout.flush().unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await;
        }
        service.stop().await.unwrap();
    });
}

/// Runs one child round and returns the keys it acknowledged before it was killed.
fn run_child(directory: &Path, round: u64, delay: Duration) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST_NAME, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIRECTORY_ENV, directory)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (sender, acknowledged) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            // A line cut short by the kill has no " end" and is not counted.
            if let Some(key) = line.strip_prefix("ack ").and_then(|rest| rest.strip_suffix(" end")) {
                if sender.send(key.to_string()).is_err() {
                    break;
                }
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Waiting for the first acknowledgement is bounded only to turn a broken child into a
    // failure instead of a hang; the bound says nothing about speed.
    let first = acknowledged.recv_timeout(Duration::from_secs(120));
    if first.is_ok() {
        std::thread::sleep(delay);
    }
    // `Child::kill` sends SIGKILL: no destructor, no flush, no close runs in the child.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let errors = errors.join().unwrap();
    let first =
        first.unwrap_or_else(|_| panic!("round {round}: the child acknowledged nothing; stderr:\n{errors}"));
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child should die of SIGKILL, not end by itself ({status}); stderr:\n{errors}"
    );
    let mut keys = vec![first];
    keys.extend(acknowledged.try_iter());
    keys
}

#[test]
fn engine_sigkill_keeps_every_acknowledged_write() {
    let temporary =
        tempfile::Builder::new().prefix("engine-sigkill-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().join("shard-0");
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        // A different delay each round: 50-150, 167-267 and 284-384 ms.
        let delay = Duration::from_millis(50 + round * 117 + random_below(100));
        let keys = run_child(&directory, round, delay);
        assert!(!keys.is_empty(), "round {round}");
        acknowledged.extend(keys);

        let directory = directory.clone();
        let checked = acknowledged.clone();
        let (report, stats) = run_local("engine-sigkill-check", async move {
            let disk = DmaDisk::open(&directory).await.unwrap();
            let engine = Engine::open(disk, options())
                .await
                .unwrap_or_else(|error| panic!("round {round}: reopening after SIGKILL failed: {error}"));
            for key in &checked {
                let found = engine.get(key.as_bytes(), 0).await.unwrap();
                let found = found.unwrap_or_else(|| panic!("round {round}: acknowledged {key} is missing"));
                assert_eq!(found.value, value(key), "round {round}: {key}");
            }
            let report = engine.recovery().clone();
            let stats = engine.stats();
            engine.close().await.unwrap();
            (report, stats)
        });
        assert!(
            report.tables_opened > 0 || report.records_replayed > 0,
            "round {round}: recovery found nothing: {report:?} {stats:?}"
        );
    }
}
