//! The engine on glommio's DMA files and the disk beneath it, in one binary: each module is one
//! behaviour, named for what it checks. One binary links once, where a binary per file linked
//! the crate and its dependencies once per file.
//!
//! Cargo does not find the files under `tests/` by itself (`autotests = false`): a new one
//! needs its `mod` line below, and the workspace's `every_test_file_is_a_module` test fails
//! until it has one.

mod dma_disk_cached_writes;
mod dma_disk_directory_ops;
mod dma_disk_drop_closes_files;
mod dma_disk_fresh_file_reads;
mod dma_disk_large_blocks;
mod dma_disk_open_detects_poisoned_probe;
mod dma_disk_removes_large_files_gently;
mod dma_disk_reports_syncs;
mod engine_on_dma_disk;
mod engine_sigkill;
