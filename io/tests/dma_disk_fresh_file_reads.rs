//! Regression test for glommio's iopoll probe bug (see `io/src/dma_disk.rs`):
//! on a fresh directory, a file created empty, written and synced must read back. Without the
//! work-around in `DmaDisk::open`, the first DMA open (of the empty file) poisons glommio's
//! per-device probe and every read fails with EOPNOTSUPP (os error 95).
//!
//! The directory is made under Cargo's target directory, not a possibly-tmpfs `/tmp`: on tmpfs
//! glommio skips O_DIRECT and the probe, and this test would prove nothing.

use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|index| (index % 251) as u8 ^ seed).collect()
}

#[test]
fn dma_disk_fresh_file_reads() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-fresh-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // A directory that does not exist yet: `open` creates it.
    let directory = temporary.path().join("shard-0");

    run_local("dma-disk-fresh-file-reads", async move {
        let disk = DmaDisk::open(&directory).await.unwrap();
        let file = disk.create("000001.wal").await.unwrap();
        assert_eq!(file.size().await.unwrap(), 0);

        let first = pattern(4096, 0x11);
        let second = pattern(8192, 0x22);
        file.write_at(0, &first).await.unwrap();
        file.write_at(4096, &second).await.unwrap();
        file.sync().await.unwrap();
        assert_eq!(file.size().await.unwrap(), 12288);

        let mut expected = first.clone();
        expected.extend_from_slice(&second);

        // Aligned reads: whole file, one block, a block in the middle.
        assert_eq!(file.read_at(0, 12288).await.unwrap(), expected);
        assert_eq!(file.read_at(0, 4096).await.unwrap(), first);
        assert_eq!(file.read_at(4096, 4096).await.unwrap(), &second[..4096]);

        // Unaligned offsets and lengths, including ones crossing a block boundary.
        assert_eq!(file.read_at(1, 10).await.unwrap(), &expected[1..11]);
        assert_eq!(file.read_at(4000, 200).await.unwrap(), &expected[4000..4200]);
        assert_eq!(file.read_at(777, 9000).await.unwrap(), &expected[777..9777]);

        // Reads past the end are short, with exactly the bytes that exist.
        assert_eq!(file.read_at(8192, 8192).await.unwrap(), &expected[8192..]);
        assert_eq!(file.read_at(12000, 1000).await.unwrap(), &expected[12000..]);
        assert_eq!(file.read_at(10001, 4096).await.unwrap(), &expected[10001..]);
        assert!(file.read_at(12288, 10).await.unwrap().is_empty());
        assert!(file.read_at(20000, 4096).await.unwrap().is_empty());
        assert!(file.read_at(100, 0).await.unwrap().is_empty());

        // A second fresh file on the same device reads back too.
        let other = disk.create("000002.sst").await.unwrap();
        other.write_at(0, &second).await.unwrap();
        other.sync().await.unwrap();
        assert_eq!(other.read_at(5, 8000).await.unwrap(), &second[5..8005]);
    });
}
