//! Dropping a `DmaDiskFile` without `close` must not leak its descriptor: glommio queues the
//! close on the ring, and `run_local` runs a last reactor cycle so the queue reaches the kernel.

use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn dma_disk_drop_closes_files() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-drop-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().to_path_buf();
    const FILES: usize = 32;

    // Whatever an executor itself leaves behind, measure it with one that opens no files.
    let before_empty = open_descriptors();
    run_local("dma-disk-drop-baseline", async {});
    let executor_residue = open_descriptors().saturating_sub(before_empty);

    let before = open_descriptors();
    let sizes = run_local("dma-disk-drop", async move {
        let disk = DmaDisk::open(&directory).await.unwrap();
        let mut sizes = Vec::new();
        for index in 0..FILES {
            let file = disk.create(&format!("{index:06}.sst")).await.unwrap();
            file.write_at(0, &[index as u8; 4096]).await.unwrap();
            sizes.push(file.size().await.unwrap());
            // `file` is dropped here, without close.
        }
        // Files dropped mid-run are closed by later reactor cycles; the last one's close rides
        // on the final cycle.
        sizes
    });
    assert_eq!(sizes, vec![4096; FILES]);
    let leaked = open_descriptors().saturating_sub(before);
    assert!(
        leaked <= executor_residue,
        "{leaked} descriptors left open (executor alone leaves {executor_residue})"
    );
}
