//! `DmaDisk::remove_gently`: a large file shrinks step by step under a name the engine never
//! lists, then is gone; a file whose gentle removal a crash interrupted is removed when the
//! directory is opened again.

use ringkv_io::dma_disk::{REMOVAL_STEP_BYTES, REMOVING_SUFFIX};
use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};

#[test]
fn dma_disk_removes_large_files_gently() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-gentle-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().to_path_buf();

    run_local("dma-disk-gentle", {
        let directory = directory.clone();
        async move {
            let disk = DmaDisk::open(&directory).await.unwrap();
            // Several steps' worth, and not a whole number of them.
            let length = 2 * REMOVAL_STEP_BYTES + (1 << 20);
            let big = disk.create("big").await.unwrap();
            big.write_at(length - 4096, &[7u8; 4096]).await.unwrap();
            big.sync().await.unwrap();
            drop(big);
            disk.create("kept").await.unwrap();
            disk.sync_dir().await.unwrap();

            disk.remove_gently("big").await.unwrap();
            assert_eq!(disk.list().await.unwrap(), vec!["kept".to_string()]);
            assert!(!directory.join("big").exists());
            assert!(!directory.join(format!("big{REMOVING_SUFFIX}")).exists(), "nothing left behind");
            assert!(disk.remove_gently("big").await.is_err(), "a missing file is an error");
        }
    });

    // A removal a crash interrupted: the renamed, half-shrunk file is still there.
    let leftover = directory.join(format!("0001.wal{REMOVING_SUFFIX}"));
    std::fs::write(&leftover, vec![1u8; 8192]).unwrap();
    run_local("dma-disk-gentle-reopen", {
        let directory = directory.clone();
        async move {
            let disk = DmaDisk::open(&directory).await.unwrap();
            assert_eq!(disk.list().await.unwrap(), vec!["kept".to_string()]);
        }
    });
    assert!(!leftover.exists(), "opening the directory removed the leftover");
}
