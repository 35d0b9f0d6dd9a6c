//! [`DataDirectory`]: a node's data directory, locked for the life of the process, and the
//! [`Placement`] its data was written with.
//!
//! ```text
//!  DATA_DIR/
//!  ├── LOCK        flock(2)-ed while a node runs; holds its pid for the operator
//!  ├── NODE        the placement the data was written with, one `name = value` line each:
//!  │                 shards = 2
//!  │                 vnodes_per_shard = 16
//!  │                 node_id = 0
//!  │                 tokens = 1844674407370955161,9223372036854775807
//!  ├── shard-0/    shard 0's storage engine (WAL, SSTables, manifest; REBUILDING while it
//!  │               restores lost data or joins a cluster, see `mark_rebuilding`)
//!  └── shard-1/    ...
//! ```
//!
//! Two processes writing one engine would corrupt it, so the lock is taken before anything is
//! opened, and refused with a clear message while another process holds it. The kernel drops a
//! `flock` when its holder exits, however it exits, so a crash leaves no stale lock behind.
//!
//! Every setting that decides where a key lives is recorded in `NODE` at the first start and
//! checked at every later one: the shard count and the vnodes per shard place keys on shards,
//! the node id is in every version the node wrote, and the node's ring tokens decide which keys
//! the node holds at all. Opening the directory with another value would hide every key that
//! moved, so a mismatch is refused with the setting, the recorded value and the given one
//! (moving data is the cluster's streaming rebalance, not a restart). A `NODE` file from before
//! the other settings were recorded holds only `shards = N`; its first open adopts the given
//! values for the rest.
//!
//! `NODE` is plain `name = value` lines, not TOML: TOML integers are signed 64-bit, and tokens
//! use the whole unsigned range.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ringkv_storage::REBUILDING_FILE;

use crate::error::ShardError;

/// Name of the lock file.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Name of the file recording the [`Placement`] and the node's tokens.
pub const NODE_FILE_NAME: &str = "NODE";

/// The settings that place keys on this node's shards, recorded at the first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Number of shards.
    pub shards: usize,
    /// Token ranges per shard.
    pub vnodes_per_shard: usize,
    /// The node id, in the low bits of every version the node wrote.
    pub node_id: u16,
}

/// A locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirectory {
    path: PathBuf,
    placement: Placement,
    tokens: Vec<u64>,
    /// Whether `NODE` was there before this open: the node ran here before.
    started_before: bool,
    /// Holds the `flock`; closing the file releases it.
    _lock: File,
}

impl DataDirectory {
    /// Creates the directory if needed, takes its lock, and checks `placement` and `tokens`
    /// against what `NODE` records, or records them on first use.
    ///
    /// `tokens` are the node's ring tokens, in any order. Empty means "no tokens yet": an empty
    /// list on either side is never compared, and the first non-empty list given is recorded.
    pub fn open(path: &Path, placement: Placement, tokens: &[u64]) -> Result<Self, ShardError> {
        std::fs::create_dir_all(path).map_err(|error| ShardError::data_directory("creating", path, error))?;
        let lock_path = path.join(LOCK_FILE_NAME);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|error| ShardError::data_directory("opening", &lock_path, error))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(ShardError::DataDirectoryLocked { path: path.to_path_buf(), lock: lock_path });
            }
            return Err(ShardError::data_directory("locking", &lock_path, error));
        }
        // The pid is for people reading the file; the lock itself is the flock.
        let write_pid = |lock: &mut File| -> io::Result<()> {
            lock.set_len(0)?;
            writeln!(lock, "{}", std::process::id())
        };
        write_pid(&mut lock).map_err(|error| ShardError::data_directory("writing", &lock_path, error))?;

        let started_before = path.join(NODE_FILE_NAME).exists();
        let tokens = check_placement(path, placement, tokens)?;
        Ok(DataDirectory { path: path.to_path_buf(), placement, tokens, started_before, _lock: lock })
    }

    /// Whether the node ran in this directory before (it recorded its placement then): a shard
    /// whose storage files are gone has lost data, not started afresh.
    pub fn started_before(&self) -> bool {
        self.started_before
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The placement the directory was opened with, which is the one it records.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The node's ring tokens as recorded, in ascending order: the ones given at this open or,
    /// when none were given, at an earlier one. Empty while no open has given any.
    pub fn tokens(&self) -> &[u64] {
        &self.tokens
    }

    /// The directory of shard `shard_id`'s storage engine.
    pub fn shard_path(&self, shard_id: u32) -> PathBuf {
        self.path.join(format!("shard-{shard_id}"))
    }

    /// Marks shard `shard_id`'s engine as rebuilding before it opens (the engine's own
    /// [`REBUILDING_FILE`]): the shard then answers no replica read of a range until
    /// anti-entropy has restored it. For a node that joins a cluster holding data. The mark is
    /// synced with the directories that hold it, so a crash after this leaves it in place; a
    /// crash before it leaves `NODE` with empty shards, which the next start treats as lost data
    /// and gates the same way.
    pub fn mark_rebuilding(&self, shard_id: u32) -> Result<(), ShardError> {
        let shard_path = self.shard_path(shard_id);
        let mark = shard_path.join(REBUILDING_FILE);
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(&shard_path)?;
            File::create(&mark)?.sync_all()?;
            File::open(&shard_path)?.sync_all()?;
            File::open(&self.path)?.sync_all()
        };
        write().map_err(|error| ShardError::data_directory("writing", &mark, error))
    }
}

/// What `NODE` holds. The fields after `shards` are `None` in a file written before they were
/// recorded.
#[derive(Debug, PartialEq, Eq)]
struct NodeRecord {
    shards: usize,
    vnodes_per_shard: Option<usize>,
    node_id: Option<u16>,
    tokens: Option<Vec<u64>>,
}

impl NodeRecord {
    fn parse(text: &str) -> Result<Self, String> {
        let mut shards = None;
        let mut vnodes_per_shard = None;
        let mut node_id = None;
        let mut tokens = None;
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
            let (name, value) =
                line.split_once('=').ok_or_else(|| format!("line {line:?} is not `name = value`"))?;
            let (name, value) = (name.trim(), value.trim());
            fn number<T: std::str::FromStr>(line: &str, value: &str) -> Result<T, String> {
                value.parse().map_err(|_| format!("{line:?}: {value:?} is not a number in range"))
            }
            let repeated = match name {
                "shards" => shards.replace(number(line, value)?).is_some(),
                "vnodes_per_shard" => vnodes_per_shard.replace(number(line, value)?).is_some(),
                "node_id" => node_id.replace(number(line, value)?).is_some(),
                "tokens" => {
                    let list = value
                        .split(',')
                        .map(str::trim)
                        .filter(|token| !token.is_empty())
                        .map(|token| number(line, token))
                        .collect::<Result<Vec<u64>, String>>()?;
                    tokens.replace(list).is_some()
                }
                other => return Err(format!("unknown setting {other:?}")),
            };
            if repeated {
                return Err(format!("setting {name:?} appears twice"));
            }
        }
        let shards = shards.ok_or("no `shards` line")?;
        Ok(NodeRecord { shards, vnodes_per_shard, node_id, tokens })
    }

    fn render(&self) -> String {
        let mut text = format!("shards = {}\n", self.shards);
        if let Some(vnodes_per_shard) = self.vnodes_per_shard {
            let _ = writeln!(text, "vnodes_per_shard = {vnodes_per_shard}");
        }
        if let Some(node_id) = self.node_id {
            let _ = writeln!(text, "node_id = {node_id}");
        }
        if let Some(tokens) = &self.tokens {
            let list: Vec<String> = tokens.iter().map(u64::to_string).collect();
            let _ = writeln!(text, "tokens = {}", list.join(","));
        }
        text
    }
}

/// Checks `placement` and `tokens` against the directory's `NODE` file, recording whatever the
/// file does not hold yet, and returns the recorded tokens.
fn check_placement(path: &Path, placement: Placement, tokens: &[u64]) -> Result<Vec<u64>, ShardError> {
    let node_path = path.join(NODE_FILE_NAME);
    let mut given_tokens = tokens.to_vec();
    given_tokens.sort_unstable();
    let given = NodeRecord {
        shards: placement.shards,
        vnodes_per_shard: Some(placement.vnodes_per_shard),
        node_id: Some(placement.node_id),
        tokens: Some(given_tokens),
    };
    let recorded = match std::fs::read_to_string(&node_path) {
        Ok(text) => NodeRecord::parse(&text).map_err(|reason| {
            ShardError::data_directory(
                "reading",
                &node_path,
                io::Error::new(io::ErrorKind::InvalidData, format!("{reason} in {text:?}")),
            )
        })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            write_node_file(path, &node_path, &given)?;
            return Ok(given.tokens.unwrap_or_default());
        }
        Err(error) => return Err(ShardError::data_directory("reading", &node_path, error)),
    };

    if recorded.shards != placement.shards {
        return Err(ShardError::ShardCountChanged {
            path: path.to_path_buf(),
            recorded: recorded.shards,
            requested: placement.shards,
        });
    }
    let changed = |setting: &'static str, recorded: String, given: String, remedy: String| {
        Err(ShardError::PlacementChanged { path: path.to_path_buf(), setting, recorded, given, remedy })
    };
    if let Some(vnodes_per_shard) = recorded.vnodes_per_shard {
        if vnodes_per_shard != placement.vnodes_per_shard {
            return changed(
                "vnodes_per_shard",
                vnodes_per_shard.to_string(),
                placement.vnodes_per_shard.to_string(),
                format!("start with --vnodes-per-shard {vnodes_per_shard}"),
            );
        }
    }
    if let Some(node_id) = recorded.node_id {
        if node_id != placement.node_id {
            return changed(
                "node_id",
                node_id.to_string(),
                placement.node_id.to_string(),
                format!("start with --node-id {node_id}"),
            );
        }
    }
    let given_tokens = given.tokens.as_deref().unwrap_or_default();
    let recorded_tokens = recorded.tokens.as_deref().unwrap_or_default();
    if !recorded_tokens.is_empty() && !given_tokens.is_empty() && recorded_tokens != given_tokens {
        return changed(
            "tokens",
            describe_tokens(recorded_tokens),
            describe_tokens(given_tokens),
            "a node keeps the ring tokens it first started with".to_string(),
        );
    }

    // Adopt what the file does not hold yet: the settings an older file never recorded, and
    // the first tokens given.
    let adopted = NodeRecord {
        shards: recorded.shards,
        vnodes_per_shard: given.vnodes_per_shard,
        node_id: given.node_id,
        tokens: Some(if recorded_tokens.is_empty() { given_tokens } else { recorded_tokens }.to_vec()),
    };
    if adopted != recorded {
        write_node_file(path, &node_path, &adopted)?;
    }
    Ok(adopted.tokens.unwrap_or_default())
}

/// Writes `NODE` atomically: a temporary file, synced, renamed into place, then the directory
/// synced. A crash leaves either the old file or the complete new one.
fn write_node_file(directory: &Path, node_path: &Path, record: &NodeRecord) -> Result<(), ShardError> {
    let text = record.render();
    // Whatever is written must read back as written.
    assert_eq!(NodeRecord::parse(&text).as_ref(), Ok(record), "NODE record does not round-trip");
    let temporary = directory.join(format!("{NODE_FILE_NAME}.tmp"));
    let write = || -> io::Result<()> {
        let mut file = File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, node_path)?;
        File::open(directory)?.sync_all()
    };
    write().map_err(|error| ShardError::data_directory("writing", node_path, error))
}

/// Tokens for an error message: every token of a short list, the first few of a long one.
fn describe_tokens(tokens: &[u64]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = tokens.iter().take(SHOWN).map(u64::to_string).collect();
    if tokens.len() <= SHOWN {
        format!("[{}]", shown.join(", "))
    } else {
        format!("[{}, ... {} more] ({} tokens)", shown.join(", "), tokens.len() - SHOWN, tokens.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACEMENT: Placement = Placement { shards: 2, vnodes_per_shard: 16, node_id: 7 };

    fn node_file(root: &Path) -> String {
        std::fs::read_to_string(root.join(NODE_FILE_NAME)).unwrap()
    }

    /// Opens, expecting a `PlacementChanged` refusal, and returns its message.
    fn refused(root: &Path, placement: Placement, tokens: &[u64], setting: &str) -> String {
        let error = DataDirectory::open(root, placement, tokens).unwrap_err();
        match &error {
            ShardError::PlacementChanged { setting: named, .. } => assert_eq!(*named, setting, "{error}"),
            other => panic!("expected {setting} to be refused, got {other}"),
        }
        error.to_string()
    }

    #[test]
    fn second_open_is_refused_until_the_first_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let first = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap();
        let refused = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap_err();
        assert!(matches!(refused, ShardError::DataDirectoryLocked { .. }), "{refused}");
        assert!(refused.to_string().contains("in use by another ringkv process"));
        drop(first);
        DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap();
    }

    #[test]
    fn first_open_records_the_whole_placement() {
        let root = tempfile::tempdir().unwrap();
        let directory = DataDirectory::open(root.path(), PLACEMENT, &[u64::MAX, 5, 1 << 63]).unwrap();
        assert_eq!(directory.placement(), PLACEMENT);
        assert_eq!(directory.tokens(), &[5, 1 << 63, u64::MAX]);
        assert_eq!(directory.shard_path(1), root.path().join("shard-1"));
        assert_eq!(
            node_file(root.path()),
            "shards = 2\nvnodes_per_shard = 16\nnode_id = 7\ntokens = 5,9223372036854775808,18446744073709551615\n"
        );
        assert!(!root.path().join("NODE.tmp").exists(), "the temporary file was left behind");
        assert!(!directory.started_before());
        drop(directory);
        // The same settings open again, tokens in any order.
        let again = DataDirectory::open(root.path(), PLACEMENT, &[1 << 63, u64::MAX, 5]).unwrap();
        assert!(again.started_before());
    }

    #[test]
    fn shard_count_is_recorded_and_checked() {
        let root = tempfile::tempdir().unwrap();
        drop(DataDirectory::open(root.path(), Placement { shards: 3, ..PLACEMENT }, &[]).unwrap());
        let refused = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap_err();
        assert!(
            matches!(refused, ShardError::ShardCountChanged { recorded: 3, requested: 2, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("--shards 3"), "{refused}");
    }

    #[test]
    fn another_vnode_count_is_refused_naming_both_values() {
        let root = tempfile::tempdir().unwrap();
        drop(DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap());
        let message =
            refused(root.path(), Placement { vnodes_per_shard: 8, ..PLACEMENT }, &[], "vnodes_per_shard");
        assert!(message.contains("vnodes_per_shard = 16"), "{message}");
        assert!(message.contains("vnodes_per_shard = 8"), "{message}");
        assert!(message.contains("--vnodes-per-shard 16"), "{message}");
    }

    #[test]
    fn another_node_id_is_refused_naming_both_values() {
        let root = tempfile::tempdir().unwrap();
        drop(DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap());
        let message = refused(root.path(), Placement { node_id: 8, ..PLACEMENT }, &[], "node_id");
        assert!(message.contains("node_id = 7") && message.contains("node_id = 8"), "{message}");
        assert!(message.contains("--node-id 7"), "{message}");
    }

    #[test]
    fn other_tokens_are_refused_naming_both_lists() {
        let root = tempfile::tempdir().unwrap();
        drop(DataDirectory::open(root.path(), PLACEMENT, &[10, 20]).unwrap());
        let message = refused(root.path(), PLACEMENT, &[10, 30], "tokens");
        assert!(message.contains("tokens = [10, 20]") && message.contains("tokens = [10, 30]"), "{message}");
        // A subset is another ring position too.
        refused(root.path(), PLACEMENT, &[10], "tokens");
    }

    #[test]
    fn long_token_lists_are_shortened_in_messages() {
        let tokens: Vec<u64> = (1..=20).collect();
        assert_eq!(describe_tokens(&tokens), "[1, 2, 3, 4, 5, 6, 7, 8, ... 12 more] (20 tokens)");
        assert_eq!(describe_tokens(&[]), "[]");
    }

    #[test]
    fn empty_tokens_are_never_compared_and_the_first_list_given_is_recorded() {
        let root = tempfile::tempdir().unwrap();
        // No tokens yet: nothing to compare with what comes later.
        drop(DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap());
        let directory = DataDirectory::open(root.path(), PLACEMENT, &[3, 1]).unwrap();
        assert_eq!(directory.tokens(), &[1, 3]);
        drop(directory);
        // A caller without tokens opens a directory that has them, and learns them.
        let directory = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap();
        assert_eq!(directory.tokens(), &[1, 3]);
        drop(directory);
        assert!(node_file(root.path()).contains("tokens = 1,3\n"));
        refused(root.path(), PLACEMENT, &[2], "tokens");
    }

    #[test]
    fn a_directory_of_the_older_format_adopts_the_new_settings() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(NODE_FILE_NAME), "shards = 2\n").unwrap();
        let directory = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap();
        assert_eq!(directory.placement(), PLACEMENT);
        drop(directory);
        assert_eq!(node_file(root.path()), "shards = 2\nvnodes_per_shard = 16\nnode_id = 7\ntokens = \n");
        // From now on the adopted values are checked.
        refused(root.path(), Placement { vnodes_per_shard: 32, ..PLACEMENT }, &[], "vnodes_per_shard");
        refused(root.path(), Placement { node_id: 0, ..PLACEMENT }, &[], "node_id");
    }

    #[test]
    fn a_directory_of_the_older_format_still_checks_its_shard_count() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(NODE_FILE_NAME), "shards = 4\n").unwrap();
        let refused = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap_err();
        assert!(matches!(refused, ShardError::ShardCountChanged { recorded: 4, .. }), "{refused}");
        // Nothing was adopted from a refused open.
        assert_eq!(node_file(root.path()), "shards = 4\n");
    }

    #[test]
    fn an_unreadable_node_file_is_an_error_not_a_fresh_start() {
        for content in [
            "",
            "garbage",
            "shards = two\n",
            "shards = 2\nshards = 2\n",
            "shards = 2\ncolour = blue\n",
            "shards = 2\nnode_id = 70000\n",
            "shards = 2\ntokens = 1,x\n",
            "vnodes_per_shard = 16\n",
        ] {
            let root = tempfile::tempdir().unwrap();
            std::fs::write(root.path().join(NODE_FILE_NAME), content).unwrap();
            let error = DataDirectory::open(root.path(), PLACEMENT, &[]).unwrap_err();
            assert!(matches!(error, ShardError::DataDirectory { op: "reading", .. }), "{content:?}: {error}");
            assert_eq!(node_file(root.path()), content, "a bad file was overwritten");
        }
    }

    #[test]
    fn node_records_round_trip() {
        let records = [
            NodeRecord { shards: 1, vnodes_per_shard: None, node_id: None, tokens: None },
            NodeRecord { shards: 1024, vnodes_per_shard: Some(1), node_id: Some(1023), tokens: Some(vec![]) },
            NodeRecord {
                shards: 2,
                vnodes_per_shard: Some(16),
                node_id: Some(0),
                tokens: Some(vec![0, u64::MAX]),
            },
        ];
        for record in records {
            assert_eq!(NodeRecord::parse(&record.render()), Ok(record));
        }
    }
}
