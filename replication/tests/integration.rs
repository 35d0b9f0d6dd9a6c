//! The replication logic over simulated networks, in one binary: each module is one
//! behaviour, named for what it checks. One binary links once, where a binary per file linked
//! the crate and its dependencies once per file.
//!
//! Cargo does not find the files under `tests/` by itself (`autotests = false`): a new one
//! needs its `mod` line below, and the workspace's `every_test_file_is_a_module` test fails
//! until it has one.

mod membership_network;
mod paxos_network;
mod quorum_network;
mod write_refusals;
