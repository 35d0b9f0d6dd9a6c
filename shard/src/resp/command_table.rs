//! [`COMMANDS`]: every Redis command ringkv serves, with what `COMMAND` reports about it.

use crate::resp::reply::RespReply;

/// What `COMMAND INFO` and `COMMAND DOCS` say about one command, in Redis's terms.
pub struct CommandSpec {
    /// Lower case, as Redis reports names.
    pub name: &'static str,
    /// Arguments including the name; negative: at least that many.
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// Positions of the first and last key and the step between keys (0, 0, 0: no keys; a
    /// last key of -1: through the last argument).
    pub keys: (i64, i64, i64),
    pub group: &'static str,
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec { name, arity, flags, keys, group, summary }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const CONNECTION: &[&str] = &["fast", "loading", "stale"];

/// Every command served. Anything else is an unknown command.
pub const COMMANDS: &[CommandSpec] = &[
    spec("ping", -1, CONNECTION, (0, 0, 0), "connection", "Returns the server's liveliness response."),
    spec("echo", 2, CONNECTION, (0, 0, 0), "connection", "Returns the given string."),
    spec(
        "hello",
        -1,
        CONNECTION,
        (0, 0, 0),
        "connection",
        "Handshakes with the server, choosing RESP2 or RESP3.",
    ),
    spec(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        (0, 0, 0),
        "connection",
        "Authenticates the connection: AUTH password (the default user) or AUTH user password.",
    ),
    spec("quit", -1, CONNECTION, (0, 0, 0), "connection", "Closes the connection."),
    spec("select", 2, CONNECTION, (0, 0, 0), "connection", "Selects database 0, the only one."),
    spec(
        "client",
        -2,
        CONNECTION,
        (0, 0, 0),
        "connection",
        "SETNAME, GETNAME, ID, INFO, SETINFO of this connection.",
    ),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        (0, 0, 0),
        "server",
        "Returns information about the commands served.",
    ),
    spec("info", -1, &["loading", "stale"], (0, 0, 0), "server", "Returns information about the server."),
    spec("dbsize", 1, &["readonly"], (0, 0, 0), "server", "Returns the number of keys (a full scan)."),
    spec("get", 2, READ, (1, 1, 1), "string", "Returns the value of a key."),
    spec(
        "set",
        -3,
        WRITE,
        (1, 1, 1),
        "string",
        "Sets the value of a key, with an optional expiry and condition.",
    ),
    spec("setnx", 3, WRITE, (1, 1, 1), "string", "Sets a key only if it does not exist."),
    spec("setex", 4, WRITE, (1, 1, 1), "string", "Sets a key with an expiry in seconds."),
    spec("psetex", 4, WRITE, (1, 1, 1), "string", "Sets a key with an expiry in milliseconds."),
    spec("getdel", 2, &["write", "fast"], (1, 1, 1), "string", "Returns a key's value and deletes it."),
    spec(
        "getex",
        -2,
        &["write", "fast"],
        (1, 1, 1),
        "string",
        "Returns a key's value and changes its expiry.",
    ),
    spec("del", -2, &["write"], (1, -1, 1), "keyspace", "Deletes keys."),
    spec("unlink", -2, &["write", "fast"], (1, -1, 1), "keyspace", "Deletes keys."),
    spec("exists", -2, READ, (1, -1, 1), "keyspace", "Counts the keys given that exist."),
    spec("mget", -2, READ, (1, -1, 1), "string", "Returns the values of keys."),
    spec("mset", -3, WRITE, (1, -1, 2), "string", "Sets keys (each on its own, not atomically)."),
    spec("msetnx", -3, WRITE, (1, -1, 2), "string", "Sets a key only if it does not exist (one key only)."),
    spec("expire", -3, &["write", "fast"], (1, 1, 1), "keyspace", "Sets a key's expiry in seconds."),
    spec("pexpire", -3, &["write", "fast"], (1, 1, 1), "keyspace", "Sets a key's expiry in milliseconds."),
    spec("ttl", 2, READ, (1, 1, 1), "keyspace", "Returns -2 for a missing key; the expiry is not readable."),
    spec("pttl", 2, READ, (1, 1, 1), "keyspace", "Returns -2 for a missing key; the expiry is not readable."),
    spec("persist", 2, &["write", "fast"], (1, 1, 1), "keyspace", "Removes a key's expiry."),
    spec("incr", 2, &["write", "denyoom", "fast"], (1, 1, 1), "string", "Adds one to a key's integer value."),
    spec(
        "decr",
        2,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Subtracts one from a key's integer value.",
    ),
    spec("incrby", 3, &["write", "denyoom", "fast"], (1, 1, 1), "string", "Adds to a key's integer value."),
    spec(
        "decrby",
        3,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Subtracts from a key's integer value.",
    ),
    spec("scan", -2, &["readonly"], (0, 0, 0), "keyspace", "Iterates over keys in token order."),
];

/// The spec of `name` (any case).
pub fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

impl CommandSpec {
    /// Whether `arguments` (the name included) fit the arity.
    pub fn arity_admits(&self, arguments: usize) -> bool {
        let arguments = arguments as i64;
        if self.arity >= 0 {
            arguments == self.arity
        } else {
            arguments >= -self.arity
        }
    }

    /// The entry `COMMAND INFO` gives: name, arity, flags, first key, last key, step, ACL
    /// categories, tips, key specifications, subcommands.
    pub fn info(&self) -> RespReply {
        let (first, last, step) = self.keys;
        RespReply::Array(vec![
            RespReply::text(self.name),
            RespReply::Integer(self.arity),
            RespReply::Array(self.flags.iter().map(|&flag| RespReply::Simple(flag)).collect()),
            RespReply::Integer(first),
            RespReply::Integer(last),
            RespReply::Integer(step),
            RespReply::Array(vec![RespReply::Simple(acl_category(self.group))]),
            RespReply::Array(Vec::new()),
            RespReply::Array(Vec::new()),
            RespReply::Array(Vec::new()),
        ])
    }

    /// The entry `COMMAND DOCS` gives.
    pub fn docs(&self) -> RespReply {
        RespReply::Map(vec![
            (RespReply::text("summary"), RespReply::text(self.summary)),
            (RespReply::text("since"), RespReply::text("1.0.0")),
            (RespReply::text("group"), RespReply::text(self.group)),
        ])
    }
}

fn acl_category(group: &str) -> &'static str {
    match group {
        "connection" => "@connection",
        "server" => "@admin",
        "string" => "@string",
        _ => "@keyspace",
    }
}
