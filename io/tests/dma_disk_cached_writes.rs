//! Writes through the page cache (`write_cached_at`) and O_DIRECT writes and reads of the same
//! file see each other, the sync covers both, and what was synced reads back after the file is
//! opened again.

use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};

#[test]
fn dma_disk_cached_writes() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-cached-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().to_path_buf();

    run_local("dma-disk-cached-writes", async move {
        let disk = DmaDisk::open(&directory).await.unwrap();
        let file = disk.create("1.wal").await.unwrap();
        // Zeros ahead, written directly, as the WAL grows a segment.
        file.write_at(0, &[0u8; 4 * 4096]).await.unwrap();
        file.write_cached_at(0, &[1u8; 4096]).await.unwrap();
        file.write_cached_at(4096, &[2u8; 2 * 4096]).await.unwrap();
        // A direct read sees the cached bytes (the kernel writes them back first).
        let read = file.read_at(0, 4 * 4096).await.unwrap();
        assert_eq!(&read[..4096], &[1u8; 4096][..]);
        assert_eq!(&read[4096..3 * 4096], &[2u8; 2 * 4096][..]);
        assert_eq!(&read[3 * 4096..], &[0u8; 4096][..]);
        // A direct write over a cached range wins, and a cached write after it again.
        file.write_at(4096, &[3u8; 4096]).await.unwrap();
        file.write_cached_at(2 * 4096, &[4u8; 4096]).await.unwrap();
        file.sync().await.unwrap();
        assert_eq!(file.size().await.unwrap(), 4 * 4096);
        drop(file);

        let again = disk.open("1.wal").await.unwrap();
        let read = again.read_at(0, 4 * 4096).await.unwrap();
        let expected: Vec<u8> = [1u8, 3, 4, 0].iter().flat_map(|&byte| [byte; 4096]).collect();
        assert_eq!(read, expected);
        // Unaligned cached writes are refused like direct ones.
        let error = again.write_cached_at(100, &[5u8; 4096]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    });
}
