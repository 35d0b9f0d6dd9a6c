//! If something on this thread opened an empty DMA file before `DmaDisk::open`, glommio's
//! per-device iopoll answer may already be wrong (see `io/src/dma_disk.rs`). `DmaDisk::open` must then fail
//! at once with a clear error, instead of handing out a disk whose every read fails.

use glommio::io::OpenOptions;
use ringkv_io::{run_local, DmaDisk};
use ringkv_storage::{Disk, DiskFile};
use std::io::ErrorKind;

#[test]
fn dma_disk_open_detects_poisoned_probe() {
    let temporary = tempfile::Builder::new()
        .prefix("dma-disk-poisoned-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let directory = temporary.path().to_path_buf();

    run_local("dma-disk-poisoned-probe", async move {
        // The mistake: the first DMA open on this thread is of a new, empty file.
        let path = directory.join("opened-too-early");
        let early = OpenOptions::new().read(true).write(true).create_new(true).dma_open(&path).await.unwrap();
        let mut block = early.alloc_dma_buffer(4096);
        block.as_bytes_mut().fill(7);
        early.write_at(block, 0).await.unwrap();
        early.fdatasync().await.unwrap();
        let poisoned = match early.read_at_aligned(0, 4096).await {
            Ok(read) => {
                assert_eq!(&read[..], &[7; 4096][..]);
                false
            }
            Err(error) => {
                // glommio's conversion keeps the kind of EOPNOTSUPP (os error 95), not the code.
                assert_eq!(std::io::Error::from(error).kind(), ErrorKind::Unsupported);
                true
            }
        };
        early.close().await.unwrap();

        let opened = DmaDisk::open(directory.join("data")).await;
        if poisoned {
            // This machine shows the glommio bug: the disk must refuse to open, and say why.
            let error = opened.err().expect("open fails on a poisoned probe");
            assert_eq!(error.kind(), ErrorKind::Unsupported);
            assert!(error.to_string().contains("before DmaDisk::open"), "{error}");
        } else {
            // The device really polls (or glommio is fixed): the disk works.
            let disk = opened.unwrap();
            let file = disk.create("a").await.unwrap();
            file.write_at(0, &[1; 4096]).await.unwrap();
            assert_eq!(file.read_at(0, 4096).await.unwrap(), &[1; 4096][..]);
        }
    });
}
