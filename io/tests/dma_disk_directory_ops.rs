//! Directory operations of `DmaDisk`: create, create-exists, rename (including replacing),
//! remove, list, sync_dir, reopening the directory and reading back; misaligned writes and
//! bad names are errors, not panics.

use ringkv_io::{run_local, DmaDisk, PROBE_FILE_NAME};
use ringkv_storage::{Disk, DiskFile};
use std::io::ErrorKind;

fn page(byte: u8) -> Vec<u8> {
    vec![byte; 4096]
}

#[test]
fn dma_disk_directory_ops() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-ops-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().to_path_buf();

    run_local("dma-disk-directory-ops", {
        let directory = directory.clone();
        async move {
            let disk = DmaDisk::open(&directory).await.unwrap();
            assert_eq!(disk.list().await.unwrap(), Vec::<String>::new(), "the probe marker is hidden");

            let a = disk.create("a").await.unwrap();
            a.write_at(0, &page(1)).await.unwrap();
            a.sync().await.unwrap();
            let exists = disk.create("a").await.err().expect("creating an existing file fails");
            assert_eq!(exists.kind(), ErrorKind::AlreadyExists);
            let a_path = directory.join("a").display().to_string();
            assert!(exists.to_string().contains(&a_path), "error names the file: {exists}");

            let b = disk.create("b").await.unwrap();
            b.write_at(0, &page(2)).await.unwrap();
            b.write_at(4096, &page(3)).await.unwrap();
            b.sync().await.unwrap();
            disk.create("c").await.unwrap().close().await.unwrap();
            disk.sync_dir().await.unwrap();
            assert_eq!(disk.list().await.unwrap(), ["a", "b", "c"]);

            // Misaligned writes are InvalidInput errors and change nothing.
            for (offset, len) in [(1, 4096), (4096, 100), (0, 4097), (512, 512)] {
                let error = a.write_at(offset, &vec![9; len]).await.unwrap_err();
                assert_eq!(error.kind(), ErrorKind::InvalidInput, "offset {offset} len {len}");
            }
            assert_eq!(a.size().await.unwrap(), 4096);

            // Rename replaces the target atomically; the open handle of `b` follows the inode.
            disk.rename("b", "a").await.unwrap();
            assert_eq!(disk.list().await.unwrap(), ["a", "c"]);
            assert_eq!(b.read_at(4096, 4096).await.unwrap(), page(3));
            // The replaced file stays readable through its open handle.
            assert_eq!(a.read_at(0, 4096).await.unwrap(), page(1));

            // Remove, then errors for missing files.
            disk.remove("c").await.unwrap();
            assert_eq!(disk.list().await.unwrap(), ["a"]);
            assert_eq!(disk.remove("c").await.unwrap_err().kind(), ErrorKind::NotFound);
            assert_eq!(disk.open("c").await.err().unwrap().kind(), ErrorKind::NotFound);
            assert_eq!(disk.rename("c", "d").await.unwrap_err().kind(), ErrorKind::NotFound);

            // Names that are not a single component, or the marker's, are refused.
            for name in ["", ".", "..", "../escape", "x/y", PROBE_FILE_NAME] {
                let error = disk.create(name).await.err().expect("bad name refused");
                assert_eq!(error.kind(), ErrorKind::InvalidInput, "name {name:?}");
            }
            disk.sync_dir().await.unwrap();
        }
    });

    // Files, directories and foreign entries made outside the disk.
    std::fs::create_dir(directory.join("subdirectory")).unwrap();

    // A new executor and a fresh open of the same directory see the renamed contents.
    run_local("dma-disk-directory-reopen", async move {
        let disk = DmaDisk::open(&directory).await.unwrap();
        assert_eq!(disk.list().await.unwrap(), ["a"], "directories are not listed");
        let a = disk.open("a").await.unwrap();
        assert_eq!(a.size().await.unwrap(), 8192);
        let mut expected = page(2);
        expected.extend_from_slice(&page(3));
        assert_eq!(a.read_at(0, 8192).await.unwrap(), expected);
        assert_eq!(a.read_at(4090, 100).await.unwrap(), &expected[4090..4190]);

        // Overwrite in place, then read the new block back.
        a.write_at(4096, &page(7)).await.unwrap();
        a.sync().await.unwrap();
        assert_eq!(a.read_at(4096, 4096).await.unwrap(), page(7));
        a.close().await.unwrap();
    });
}
