//! Writes and reads larger than the executor's registered DMA memory (1 MiB by default) still
//! work: glommio falls back to ordinary aligned allocations for their buffers.

use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};

#[test]
fn dma_disk_large_blocks() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-large-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().to_path_buf();
    const BYTES: usize = 3 << 20;
    let data: Vec<u8> = (0..BYTES).map(|index| (index / 4096 % 256) as u8 ^ (index % 7) as u8).collect();

    run_local("dma-disk-large-blocks", async move {
        let disk = DmaDisk::open(&directory).await.unwrap();
        let file = disk.create("big.sst").await.unwrap();
        file.write_at(0, &data).await.unwrap();
        file.sync().await.unwrap();
        assert_eq!(file.size().await.unwrap(), BYTES as u64);
        assert_eq!(file.read_at(0, BYTES).await.unwrap(), data);
        let (start, len) = (12_345, (2 << 20) + 17);
        assert_eq!(file.read_at(start as u64, len).await.unwrap(), &data[start..start + len]);
        // Past the end from the middle of a large file: only what exists.
        assert_eq!(file.read_at((BYTES - 100) as u64, 1 << 20).await.unwrap(), &data[BYTES - 100..]);
    });
}
