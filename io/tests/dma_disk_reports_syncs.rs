//! A disk given a sync observer tells it of every fdatasync of its files, by file name, and of
//! nothing else (writes and reads are not syncs); a disk without one reports nothing.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ringkv_io::{run_local, DmaDisk, SyncObserver};
use ringkv_storage::{Disk, DiskFile};

#[derive(Default)]
struct Recorded(RefCell<Vec<String>>);

impl SyncObserver for Recorded {
    fn synced(&self, file: &str, _elapsed: Duration) {
        self.0.borrow_mut().push(file.to_string());
    }
}

#[test]
fn dma_disk_reports_syncs() {
    let temporary =
        tempfile::Builder::new().prefix("dma-disk-syncs-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let directory = temporary.path().to_path_buf();
    let synced = run_local("dma-disk-reports-syncs", async move {
        let recorded = Rc::new(Recorded::default());
        let observed = DmaDisk::open(&directory).await.unwrap().observe_syncs(recorded.clone());
        let wal = observed.create("00000000000000000001.wal").await.unwrap();
        wal.write_at(0, &[7u8; 4096]).await.unwrap();
        wal.sync().await.unwrap();
        wal.sync().await.unwrap();
        let table = observed.create("000002.sst").await.unwrap();
        table.write_at(0, &[8u8; 4096]).await.unwrap();
        table.sync().await.unwrap();
        assert_eq!(table.read_at(0, 4096).await.unwrap(), vec![8u8; 4096]);
        // Unobserved: its syncs go unreported.
        let plain = DmaDisk::open(&directory).await.unwrap();
        let other = plain.create("000003.sst").await.unwrap();
        other.write_at(0, &[9u8; 4096]).await.unwrap();
        other.sync().await.unwrap();
        let synced = recorded.0.borrow().clone();
        synced
    });
    assert_eq!(synced, ["00000000000000000001.wal", "00000000000000000001.wal", "000002.sst"]);
}
