//! The members this node has known, kept in `DATA_DIR/PEERS` so a restart remembers the cluster.
//!
//! Without it a restarted node would see only itself until gossip reaches it, cap the
//! replication factor at one node, and acknowledge writes it alone holds. With it, the members
//! known before the restart are on the ring from the first request (as down until gossip says
//! otherwise), so a write that cannot reach its quorum is refused instead; and the node
//! announces itself to them as well as to its seeds (Cassandra keeps `system.peers` for the
//! same reason).
//!
//! One line per member, fields separated by spaces:
//! `node_id generation peer_address client_address shard_port_base shards vnodes_per_shard tokens`
//! with the tokens comma-separated. The file is replaced atomically (temporary file, fsync,
//! rename, directory fsync). It is written rarely (when a member joins or changes address), from
//! the membership task, with blocking calls on a file of a few hundred bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use ringkv_replication::NodeIdentity;

/// Name of the file, in the data directory.
pub const PEERS_FILE_NAME: &str = "PEERS";

/// Reads the members recorded in `directory`; none when there is no file yet. A line that
/// does not parse is an error naming it: the file is ours, so damage is worth a stop.
pub fn load(directory: &Path) -> io::Result<BTreeMap<u16, NodeIdentity>> {
    let path = directory.join(PEERS_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(error),
    };
    let mut members = BTreeMap::new();
    for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let identity = parse_line(line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: line {} does not parse: {line}", path.display(), number + 1),
            )
        })?;
        members.insert(identity.node_id, identity);
    }
    Ok(members)
}

fn parse_line(line: &str) -> Option<NodeIdentity> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [node_id, generation, peer_address, client_address, shard_port_base, shards, vnodes_per_shard, tokens] =
        fields[..]
    else {
        return None;
    };
    let tokens = if tokens.is_empty() {
        Vec::new()
    } else {
        tokens.split(',').map(|token| token.parse().ok()).collect::<Option<Vec<u64>>>()?
    };
    Some(NodeIdentity {
        node_id: node_id.parse().ok()?,
        generation: generation.parse().ok()?,
        peer_address: peer_address.parse().ok()?,
        client_address: client_address.parse().ok()?,
        shard_port_base: shard_port_base.parse().ok()?,
        shards: shards.parse().ok()?,
        vnodes_per_shard: vnodes_per_shard.parse().ok()?,
        tokens,
    })
}

/// Replaces the recorded members with `members`.
pub fn save(directory: &Path, members: &BTreeMap<u16, NodeIdentity>) -> io::Result<()> {
    let mut text = String::new();
    for identity in members.values() {
        let tokens: Vec<String> = identity.tokens.iter().map(u64::to_string).collect();
        text.push_str(&format!(
            "{} {} {} {} {} {} {} {}\n",
            identity.node_id,
            identity.generation,
            identity.peer_address,
            identity.client_address,
            identity.shard_port_base,
            identity.shards,
            identity.vnodes_per_shard,
            tokens.join(",")
        ));
    }
    let temporary = directory.join(format!("{PEERS_FILE_NAME}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&temporary, directory.join(PEERS_FILE_NAME))?;
    File::open(directory)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(node_id: u16) -> NodeIdentity {
        NodeIdentity {
            node_id,
            generation: 1_795_000_000_000 + u64::from(node_id),
            peer_address: format!("127.0.0.1:{}", 8000 + node_id).parse().unwrap(),
            client_address: format!("127.0.0.1:{}", 7000 + node_id).parse().unwrap(),
            shard_port_base: 7100 + node_id,
            shards: 2,
            vnodes_per_shard: 16,
            tokens: vec![u64::MAX, 0, 12345],
        }
    }

    #[test]
    fn members_survive_a_save_and_load() {
        let directory = tempfile::tempdir().unwrap();
        assert!(load(directory.path()).unwrap().is_empty());
        let members: BTreeMap<u16, NodeIdentity> = [1, 2, 3].map(|node| (node, identity(node))).into();
        save(directory.path(), &members).unwrap();
        assert_eq!(load(directory.path()).unwrap(), members);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_the_line() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join(PEERS_FILE_NAME), "1 2 not-an-address\n").unwrap();
        let error = load(directory.path()).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
