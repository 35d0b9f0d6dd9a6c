//! A full disk is an operating condition: on a small filesystem of its own (a loop-mounted ext4
//! image), a node whose free space falls to `--disk-reserve-bytes` refuses writes with
//! `DiskFull` while reads go on, accepts writes again once space is freed (no restart), and
//! exits 0 on SIGTERM while full. With no reserve and the filesystem filled to the last block,
//! a write error poisons the engine: writes fail with `StorageFailed` (never `Unavailable`), and
//! SIGTERM still exits 0.
//!
//! Mounting needs root; without it the test says so and checks nothing else.

use crate::common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::{Client, Server};
use ringkv_wire::{ErrorCode, Failure, Operation, Outcome};

/// A loop-mounted ext4 filesystem, unmounted when dropped.
struct SmallFilesystem {
    mount_point: PathBuf,
}

impl SmallFilesystem {
    fn mount(root: &Path, bytes: u64) -> Option<SmallFilesystem> {
        let image = root.join("disk.img");
        File::create(&image).unwrap().set_len(bytes).unwrap();
        let mount_point = root.join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        let formatted = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status().ok()?.success();
        let mounted = formatted
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount_point)
                .status()
                .ok()?
                .success();
        mounted.then_some(SmallFilesystem { mount_point })
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

fn available_bytes(path: &Path) -> u64 {
    let path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and room for one statvfs, read only when the call succeeds.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) }, 0);
    let stats = unsafe { stats.assume_init() };
    stats.f_bavail * stats.f_frsize
}

/// Writes zeros to `path` until `leave` bytes are free (or, with `leave` 0, until the
/// filesystem refuses), and syncs.
fn fill(path: &Path, leave: u64) {
    let mut file = File::create(path).unwrap();
    let block = vec![0u8; 64 << 10];
    loop {
        let available = available_bytes(path.parent().unwrap());
        if leave > 0 && available <= leave {
            break;
        }
        let size = if leave > 0 { (available - leave).min(block.len() as u64) as usize } else { block.len() };
        if file.write_all(&block[..size.max(4096)]).is_err() || file.sync_all().is_err() {
            break;
        }
    }
    let _ = file.sync_all();
}

fn put(client: &mut Client, key: &str, value: &[u8]) -> Result<Outcome, Failure> {
    client.execute(Operation::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::copy_from_slice(value),
        ttl_ms: None,
    })
}

/// Puts until one is refused (the engine looks at the free space every few writes); the failure.
fn put_until_refused(client: &mut Client, key: &str) -> Failure {
    for round in 0..2000 {
        if let Err(failure) = put(client, key, format!("value {round}").as_bytes()) {
            return failure;
        }
    }
    panic!("2000 writes were accepted on a full disk");
}

#[test]
fn server_refuses_writes_on_a_full_disk_and_resumes() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let Some(filesystem) = SmallFilesystem::mount(root.path(), 96 << 20) else {
        eprintln!("skipped: cannot mount a loop filesystem here (root and mkfs.ext4 are needed)");
        return;
    };
    let data_dir = filesystem.mount_point.join("data");
    let filler = filesystem.mount_point.join("filler");
    let reserve: u64 = 16 << 20;
    let mut server = Server::start_with(&data_dir, &["--disk-reserve-bytes", &reserve.to_string()]);
    let mut client = server.client();
    client.put(b"kept", b"before the disk filled");

    // Down to half the reserve: writes are refused with DiskFull, reads go on.
    fill(&filler, reserve / 2);
    let failure = put_until_refused(&mut client, "refused");
    assert_eq!(failure.code, ErrorCode::DiskFull, "{}", failure.message);
    assert!(failure.message.contains("disk_reserve_bytes"), "{}", failure.message);
    assert_eq!(client.get_value(b"kept").as_deref(), Some(&b"before the disk filled"[..]));

    // Space comes back: writes resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    put(&mut client, "resumed", b"after space was freed").expect("a write once space was freed");
    assert_eq!(client.get_value(b"resumed").as_deref(), Some(&b"after space was freed"[..]));

    // Full again, then SIGTERM: a clean exit.
    fill(&filler, reserve / 2);
    let failure = put_until_refused(&mut client, "refused-again");
    assert_eq!(failure.code, ErrorCode::DiskFull, "{}", failure.message);
    drop(client);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM with the disk full exited with {status}:\n{}", server.log());
    std::fs::remove_file(&filler).unwrap();

    // No reserve, and the filesystem filled to its last block: a write fails, the engine is
    // poisoned and says so with its own code; SIGTERM still exits cleanly.
    server.extra_args = vec!["--disk-reserve-bytes".into(), "0".into()];
    server.restart();
    let mut client = server.client();
    assert_eq!(client.get_value(b"resumed").as_deref(), Some(&b"after space was freed"[..]));
    fill(&filler, 0);
    let big = vec![7u8; 256 << 10];
    let mut failures = Vec::new();
    for round in 0..400 {
        if let Err(failure) = put(&mut client, &format!("big-{}", round % 8), &big) {
            failures.push(failure);
            if failures.len() == 3 {
                break;
            }
        }
    }
    assert!(!failures.is_empty(), "every write succeeded on a filesystem with no room");
    for failure in &failures {
        assert_eq!(failure.code, ErrorCode::StorageFailed, "{}", failure.message);
    }
    drop(client);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM with the engine poisoned exited with {status}:\n{}", server.log());
}
