//! Dropping a `DmaDiskFile` without `close` must not leak its descriptor: glommio queues the
//! close on the ring, and `run_local` runs a last reactor cycle so the queue reaches the kernel.

use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};
use std::path::Path;

/// This process's descriptors open on `directory` or on files in it: other tests in the binary
/// open and close descriptors of their own at the same time, so a count of them all would not
/// tell.
fn open_descriptors_under(directory: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(directory))
        .count()
}

#[test]
fn dma_disk_drop_closes_files() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-drop-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().canonicalize().unwrap();
    const FILES: usize = 32;

    let opened = directory.clone();
    let (sizes, open_while_running) = run_local("dma-disk-drop", async move {
        let disk = DmaDisk::open(&opened).await.unwrap();
        let mut sizes = Vec::new();
        for index in 0..FILES {
            let file = disk.create(&format!("{index:06}.sst")).await.unwrap();
            file.write_at(0, &[index as u8; 4096]).await.unwrap();
            sizes.push(file.size().await.unwrap());
            // `file` is dropped here, without close.
        }
        // Files dropped mid-run are closed by later reactor cycles; the last one's close rides
        // on the final cycle. The disk itself is still open here: the count shows that the
        // check sees descriptors on the directory at all.
        (sizes, open_descriptors_under(&opened))
    });
    assert_eq!(sizes, vec![4096; FILES]);
    assert!(open_while_running > 0, "the open disk holds no descriptor on its directory to see");
    let leaked = open_descriptors_under(&directory);
    assert_eq!(leaked, 0, "{leaked} descriptors left open on the directory or its files");
}
