//! [`parse_command`] turns a request's arguments into a [`RespCommand`]; [`run`] carries out a
//! [`DataCommand`] through the shard's [`Router`], exactly as a native request would go.
//!
//! ```text
//!  arguments ─parse_command─┬─ Session(..)  connection state: PING, HELLO, CLIENT, COMMAND ...
//!                           ├─ Data(..)     ─run─▶ Router::execute / Router::answer ─▶ RespReply
//!                           └─ Err(reply)   arity, syntax, limits, unknown command
//! ```
//!
//! ringkv's operations are get, put (with a TTL), delete, compare-and-swap against a version
//! (or absence), batches of those and scans. Redis commands map onto them:
//! - GET, SET, SETEX, PSETEX, DEL, UNLINK, EXISTS, MGET: gets, puts and deletes; the multi-key
//!   ones as one batch, each key on its own (not atomically).
//! - MSET, MSETNX of several keys: atomic where it can be, when every key lives on one shard
//!   and keys have one copy ([`Router::write_atomically`]: one WAL record). Elsewhere MSET
//!   writes each key on its own (a batch) and MSETNX is refused.
//! - SET NX/XX/GET, SETNX, GETEX, EXPIRE, PEXPIRE, PERSIST, INCR/DECR/INCRBY/DECRBY, MSETNX of one
//!   key: read the key, then compare-and-swap against the version read, retried up to
//!   [`CAS_ATTEMPTS_MAX`] times when another write came between. With several copies of each
//!   key the compare-and-swap runs Paxos over the key's replicas.
//! - TTL, PTTL: a read, which returns the value's expiry with it (-2 for a missing key, -1 for
//!   one that never expires, else the time left by this node's clock). SET KEEPTTL, INCR and
//!   friends write the expiry read back; EXPIRE's NX/XX/GT/LT, PERSIST and GETEX PERSIST decide
//!   from it (PERSIST of a key without an expiry writes nothing).
//! - SCAN: one page of the node's scan in token order; the cursor is the token to resume at.

use std::rc::Rc;

use bytes::Bytes;
use ringkv_io::now_ms;
use ringkv_wire::limits::{SCAN_LIMIT_MAX, TTL_MS_MAX, VALUE_BYTES_MAX};
use ringkv_wire::token::token;
use ringkv_wire::{
    Command, Expected, Failure, Operation, Outcome, Reply, Scan, ScanEnd, ScanPage, ScanStart,
};

use crate::resp::command_table::{self, COMMANDS};
use crate::resp::pattern;
use crate::resp::reply::RespReply;
use crate::router::Router;

/// Attempts a read-then-compare-and-swap command makes before giving up on a key other writers
/// keep changing. Each lost attempt means another writer's swap won, so the key moves on; on a
/// cluster, eight clients incrementing one key gave up about once in a hundred increments with
/// 16 attempts.
pub const CAS_ATTEMPTS_MAX: usize = 64;

/// Entries `SCAN` returns per call when the client gives no COUNT, as Redis does.
const SCAN_COUNT_DEFAULT: u32 = 10;

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum RespCommand {
    /// Answered by the connection from its own state.
    Session(SessionCommand),
    /// Needs the store.
    Data(DataCommand),
}

/// Commands about the connection or the server.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionCommand {
    Ping(Option<Bytes>),
    Echo(Bytes),
    /// `HELLO [protover] [AUTH user pass] [SETNAME name]`.
    Hello {
        protocol: Option<i64>,
        name: Option<Bytes>,
        /// The user and password of `AUTH`.
        auth: Option<(Bytes, Bytes)>,
    },
    /// `AUTH [user] password`; without a user, the default one.
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    Quit,
    Select,
    CommandCount,
    CommandInfo(Vec<Bytes>),
    CommandDocs(Vec<Bytes>),
    ClientSetName(Bytes),
    ClientGetName,
    ClientId,
    ClientInfo,
    ClientSetInfo,
    /// `INFO [section ...]`: the sections asked for, lower case; empty for the default ones.
    Info(Vec<String>),
}

/// How a write sets the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry.
    Never,
    /// This many milliseconds from now (at least 1).
    In(u64),
    /// At this Unix time in milliseconds, which may be past (the key then goes at once).
    At(u64),
    /// Whatever expiry the key has now (SET KEEPTTL).
    Keep,
}

impl Expiry {
    /// The TTL to write with, `Err(())` when the moment is already past. `current` is the
    /// key's expiry as read (Unix milliseconds), which [`Expiry::Keep`] writes back: as the
    /// time left by this node's clock, at least 1 ms, since a write carries a TTL.
    fn ttl_ms(self, current: Option<u64>) -> Result<Option<u64>, ()> {
        match self {
            Expiry::Never => Ok(None),
            Expiry::Keep => Ok(current.map(|at_ms| at_ms.saturating_sub(now_ms()).max(1))),
            Expiry::In(ttl_ms) => Ok(Some(ttl_ms)),
            Expiry::At(at_ms) => {
                let now = now_ms();
                if at_ms <= now {
                    Err(())
                } else {
                    Ok(Some(at_ms - now))
                }
            }
        }
    }
}

/// `SET`'s condition on the key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// NX: only when the key does not exist.
    Absent,
    /// XX: only when it exists.
    Present,
}

/// The keys a command touches, by token (`ringkv_wire::token`): one for most commands, held
/// without an allocation. Two keys with the same token count as one key, which can only make a
/// command wait for another it need not have waited for.
pub type CommandKeys = smallvec::SmallVec<[u64; 1]>;

/// Commands that read or write keys.
#[derive(Debug, Clone, PartialEq)]
pub enum DataCommand {
    Get(Bytes),
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Expiry,
        condition: Condition,
        get: bool,
        reply_integer: bool,
    },
    GetDel(Bytes),
    /// `GETEX`; `expiry` `None` leaves the expiry alone (a plain read).
    GetEx {
        key: Bytes,
        expiry: Option<Expiry>,
    },
    Delete(Vec<Bytes>),
    Exists(Vec<Bytes>),
    MultiGet(Vec<Bytes>),
    MultiSet(Vec<(Bytes, Bytes)>),
    /// MSETNX of one key.
    SetIfAbsent(Bytes, Bytes),
    /// MSETNX of several keys.
    MultiSetIfAbsent(Vec<(Bytes, Bytes)>),
    Expire {
        key: Bytes,
        expiry: Expiry,
        only_if: ExpireIf,
    },
    Ttl(Bytes, TimeUnit),
    Persist(Bytes),
    IncrementBy(Bytes, i64),
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: u32,
        strings_only: bool,
    },
    DbSize,
    /// INFO with the keyspace section: the rest of the text, already written.
    InfoWithKeyspace(String),
}

/// EXPIRE's conditions on the key's current expiry (Redis 7's NX, XX, GT, LT); none set: always.
/// A key without an expiry counts as expiring never, later than any time (as in Redis).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireIf {
    /// NX: only when the key has no expiry.
    pub none: bool,
    /// XX: only when it has one.
    pub some: bool,
    /// GT: only when the new expiry is later than the current one.
    pub later: bool,
    /// LT: only when it is earlier.
    pub earlier: bool,
}

impl ExpireIf {
    /// Parses EXPIRE's options, refusing the combinations Redis refuses, with its errors.
    fn parse(options: &[Bytes]) -> Result<Self, RespReply> {
        let mut only_if = ExpireIf::default();
        for option in options {
            match &option.to_ascii_uppercase()[..] {
                b"NX" => only_if.none = true,
                b"XX" => only_if.some = true,
                b"GT" => only_if.later = true,
                b"LT" => only_if.earlier = true,
                _ => {
                    return Err(RespReply::error(format!(
                        "Unsupported option {}",
                        String::from_utf8_lossy(option)
                    )))
                }
            }
        }
        if only_if.none && (only_if.some || only_if.later || only_if.earlier) {
            return Err(RespReply::error("NX and XX, GT or LT options at the same time are not compatible"));
        }
        if only_if.later && only_if.earlier {
            return Err(RespReply::error("GT and LT options at the same time are not compatible"));
        }
        Ok(only_if)
    }

    /// Whether a key whose expiry is `current` (`None`: never) takes the new expiry `new_at_ms`.
    pub fn admits(self, current: Option<u64>, new_at_ms: u64) -> bool {
        match current {
            None => !self.some && !self.later,
            Some(current) => {
                !self.none && (!self.later || new_at_ms > current) && (!self.earlier || new_at_ms < current)
            }
        }
    }
}

/// Seconds or milliseconds, for TTL and PTTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Seconds,
    Milliseconds,
}

impl DataCommand {
    /// The tokens of the keys the command reads or writes; `None` when it reads the whole
    /// keyspace.
    pub fn keys(&self) -> Option<CommandKeys> {
        Some(match self {
            DataCommand::Get(key)
            | DataCommand::Set { key, .. }
            | DataCommand::GetDel(key)
            | DataCommand::GetEx { key, .. }
            | DataCommand::SetIfAbsent(key, _)
            | DataCommand::Expire { key, .. }
            | DataCommand::Ttl(key, _)
            | DataCommand::Persist(key)
            | DataCommand::IncrementBy(key, _) => smallvec::smallvec![token(key)],
            DataCommand::Delete(keys) | DataCommand::Exists(keys) | DataCommand::MultiGet(keys) => {
                keys.iter().map(|key| token(key)).collect()
            }
            DataCommand::MultiSet(pairs) | DataCommand::MultiSetIfAbsent(pairs) => {
                pairs.iter().map(|(key, _)| token(key)).collect()
            }
            DataCommand::Scan { .. } | DataCommand::DbSize | DataCommand::InfoWithKeyspace(_) => return None,
        })
    }
}

/// Redis's reply for a wrong number of arguments.
fn wrong_arity(name: &str) -> RespReply {
    RespReply::error(format!("wrong number of arguments for '{name}' command"))
}

fn syntax_error() -> RespReply {
    RespReply::error("syntax error")
}

fn not_integer() -> RespReply {
    RespReply::error("value is not an integer or out of range")
}

/// Redis's reply for a command it does not know, quoting the first arguments.
pub fn unknown_command(arguments: &[Bytes]) -> RespReply {
    let name = String::from_utf8_lossy(&arguments[0]);
    let name: String = name.chars().take(128).collect();
    let mut quoted = String::new();
    for argument in &arguments[1..] {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        let text = String::from_utf8_lossy(argument);
        let text: String = text.chars().take(room).collect();
        quoted.push_str(&format!("'{text}' "));
    }
    RespReply::error(format!("unknown command '{name}', with args beginning with: {quoted}"))
}

/// A decimal `i64`, as Redis reads integers (no spaces, no plus sign).
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.starts_with('+') || text.len() > 20 {
        return None;
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// Checks a key against ringkv's limits, with the limit's name in the error.
fn check_key(key: &Bytes) -> Result<(), RespReply> {
    Operation::Get { key: key.clone() }.validate().map_err(RespReply::error)
}

/// Checks a key and value against ringkv's limits.
fn check_pair(key: &Bytes, value: &Bytes) -> Result<(), RespReply> {
    Operation::Put { key: key.clone(), value: value.clone(), ttl_ms: None }
        .validate()
        .map_err(RespReply::error)
}

/// An expiry amount as a relative TTL in milliseconds; `command` names the command in Redis's
/// error.
fn relative_expiry(amount: &[u8], unit_ms: u64, command: &str) -> Result<Expiry, RespReply> {
    let amount = parse_i64(amount).ok_or_else(not_integer)?;
    if amount <= 0 {
        return Err(RespReply::error(format!("invalid expire time in '{command}' command")));
    }
    let ttl_ms =
        (amount as u64).checked_mul(unit_ms).filter(|&ttl_ms| ttl_ms <= TTL_MS_MAX).ok_or_else(|| {
            RespReply::error(format!(
            "invalid expire time in '{command}' command: above the TTL limit of {TTL_MS_MAX} ms (TTL_MS_MAX)"
        ))
        })?;
    Ok(Expiry::In(ttl_ms))
}

/// An absolute expiry (EXAT/PXAT).
fn absolute_expiry(amount: &[u8], unit_ms: u64, command: &str) -> Result<Expiry, RespReply> {
    let amount = parse_i64(amount).ok_or_else(not_integer)?;
    if amount <= 0 {
        return Err(RespReply::error(format!("invalid expire time in '{command}' command")));
    }
    let at_ms = (amount as u64)
        .checked_mul(unit_ms)
        .filter(|&at_ms| at_ms <= now_ms().saturating_add(TTL_MS_MAX))
        .ok_or_else(|| {
            RespReply::error(format!(
                "invalid expire time in '{command}' command: above the TTL limit of {TTL_MS_MAX} ms (TTL_MS_MAX)"
            ))
        })?;
    Ok(Expiry::At(at_ms))
}

/// Parses a request's arguments (the command name first; never empty).
pub fn parse_command(arguments: &[Bytes]) -> Result<RespCommand, RespReply> {
    let Some(spec) = command_table::find(&arguments[0]) else {
        return Err(unknown_command(arguments));
    };
    if !spec.arity_admits(arguments.len()) {
        return Err(wrong_arity(spec.name));
    }
    let rest = &arguments[1..];
    let session = |command| Ok(RespCommand::Session(command));
    let data = |command| Ok(RespCommand::Data(command));
    match spec.name {
        "ping" => match rest {
            [] => session(SessionCommand::Ping(None)),
            [message] => session(SessionCommand::Ping(Some(message.clone()))),
            _ => Err(wrong_arity("ping")),
        },
        "echo" => session(SessionCommand::Echo(rest[0].clone())),
        "hello" => parse_hello(rest),
        "auth" => match rest {
            [password] => session(SessionCommand::Auth { user: None, password: password.clone() }),
            [user, password] => {
                session(SessionCommand::Auth { user: Some(user.clone()), password: password.clone() })
            }
            _ => Err(RespReply::error("syntax error")),
        },
        "quit" => session(SessionCommand::Quit),
        "select" => match parse_i64(&rest[0]) {
            Some(0) => session(SessionCommand::Select),
            Some(_) => Err(RespReply::error("DB index is out of range")),
            None => Err(not_integer()),
        },
        "command" => parse_command_command(rest),
        "client" => parse_client(rest),
        "info" => {
            let sections =
                rest.iter().map(|section| String::from_utf8_lossy(section).to_ascii_lowercase()).collect();
            session(SessionCommand::Info(sections))
        }
        "dbsize" => data(DataCommand::DbSize),
        "get" => {
            check_key(&rest[0])?;
            data(DataCommand::Get(rest[0].clone()))
        }
        "set" => parse_set(rest),
        "setnx" => {
            check_pair(&rest[0], &rest[1])?;
            data(DataCommand::Set {
                key: rest[0].clone(),
                value: rest[1].clone(),
                expiry: Expiry::Never,
                condition: Condition::Absent,
                get: false,
                reply_integer: true,
            })
        }
        "setex" | "psetex" => {
            let unit_ms = if spec.name == "setex" { 1000 } else { 1 };
            let expiry = relative_expiry(&rest[1], unit_ms, spec.name)?;
            check_pair(&rest[0], &rest[2])?;
            data(DataCommand::Set {
                key: rest[0].clone(),
                value: rest[2].clone(),
                expiry,
                condition: Condition::Always,
                get: false,
                reply_integer: false,
            })
        }
        "getdel" => {
            check_key(&rest[0])?;
            data(DataCommand::GetDel(rest[0].clone()))
        }
        "getex" => parse_getex(rest),
        "del" | "unlink" | "exists" | "mget" => {
            for key in rest {
                check_key(key)?;
            }
            let keys = rest.to_vec();
            data(match spec.name {
                "exists" => DataCommand::Exists(keys),
                "mget" => DataCommand::MultiGet(keys),
                _ => DataCommand::Delete(keys),
            })
        }
        "mset" | "msetnx" => {
            if !rest.len().is_multiple_of(2) {
                return Err(wrong_arity(spec.name));
            }
            let mut pairs = Vec::with_capacity(rest.len() / 2);
            for pair in rest.chunks_exact(2) {
                check_pair(&pair[0], &pair[1])?;
                pairs.push((pair[0].clone(), pair[1].clone()));
            }
            if spec.name == "mset" {
                return data(DataCommand::MultiSet(pairs));
            }
            match &pairs[..] {
                [(key, value)] => data(DataCommand::SetIfAbsent(key.clone(), value.clone())),
                _ => data(DataCommand::MultiSetIfAbsent(pairs)),
            }
        }
        "expire" | "pexpire" => {
            check_key(&rest[0])?;
            let only_if = ExpireIf::parse(&rest[2..])?;
            let unit_ms: i64 = if spec.name == "expire" { 1000 } else { 1 };
            let amount = parse_i64(&rest[1]).ok_or_else(not_integer)?;
            let expiry = if amount <= 0 {
                // Redis deletes a key given an expiry in the past.
                Expiry::At(0)
            } else {
                relative_expiry(&rest[1], unit_ms as u64, spec.name)?
            };
            data(DataCommand::Expire { key: rest[0].clone(), expiry, only_if })
        }
        "ttl" | "pttl" => {
            check_key(&rest[0])?;
            let unit = if spec.name == "ttl" { TimeUnit::Seconds } else { TimeUnit::Milliseconds };
            data(DataCommand::Ttl(rest[0].clone(), unit))
        }
        "persist" => {
            check_key(&rest[0])?;
            data(DataCommand::Persist(rest[0].clone()))
        }
        "incr" | "decr" => {
            check_key(&rest[0])?;
            let delta = if spec.name == "incr" { 1 } else { -1 };
            data(DataCommand::IncrementBy(rest[0].clone(), delta))
        }
        "incrby" | "decrby" => {
            check_key(&rest[0])?;
            let amount = parse_i64(&rest[1]).ok_or_else(not_integer)?;
            let delta = if spec.name == "incrby" {
                amount
            } else {
                amount.checked_neg().ok_or_else(|| RespReply::error("decrement would overflow"))?
            };
            data(DataCommand::IncrementBy(rest[0].clone(), delta))
        }
        "scan" => parse_scan(rest),
        other => unreachable!("{other} is in the command table but not parsed"),
    }
}

fn parse_hello(rest: &[Bytes]) -> Result<RespCommand, RespReply> {
    let Some((version, options)) = rest.split_first() else {
        return Ok(RespCommand::Session(SessionCommand::Hello { protocol: None, name: None, auth: None }));
    };
    let protocol = parse_i64(version).ok_or_else(|| {
        RespReply::Error("ERR Protocol version is not an integer or out of range".to_string())
    })?;
    let mut name = None;
    let mut auth = None;
    let mut at = 0;
    while at < options.len() {
        let option = options[at].to_ascii_uppercase();
        match &option[..] {
            b"AUTH" if at + 2 < options.len() => {
                auth = Some((options[at + 1].clone(), options[at + 2].clone()));
                at += 3;
            }
            b"SETNAME" if at + 1 < options.len() => {
                name = Some(options[at + 1].clone());
                at += 2;
            }
            _ => {
                return Err(RespReply::error(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&options[at])
                )))
            }
        }
    }
    Ok(RespCommand::Session(SessionCommand::Hello { protocol: Some(protocol), name, auth }))
}

fn parse_command_command(rest: &[Bytes]) -> Result<RespCommand, RespReply> {
    let Some((subcommand, names)) = rest.split_first() else {
        let all = COMMANDS.iter().map(|spec| Bytes::from_static(spec.name.as_bytes())).collect();
        return Ok(RespCommand::Session(SessionCommand::CommandInfo(all)));
    };
    let command = match &subcommand.to_ascii_uppercase()[..] {
        b"COUNT" if names.is_empty() => SessionCommand::CommandCount,
        b"INFO" => SessionCommand::CommandInfo(names.to_vec()),
        b"DOCS" => SessionCommand::CommandDocs(names.to_vec()),
        _ => {
            return Err(RespReply::error(format!(
                "unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(subcommand)
            )))
        }
    };
    Ok(RespCommand::Session(command))
}

fn parse_client(rest: &[Bytes]) -> Result<RespCommand, RespReply> {
    let subcommand = rest[0].to_ascii_uppercase();
    let command = match (&subcommand[..], rest.len()) {
        (b"SETNAME", 2) => {
            if rest[1].iter().any(|&byte| byte <= b' ' || byte > b'~') {
                return Err(RespReply::error(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            SessionCommand::ClientSetName(rest[1].clone())
        }
        (b"GETNAME", 1) => SessionCommand::ClientGetName,
        (b"ID", 1) => SessionCommand::ClientId,
        (b"INFO", 1) => SessionCommand::ClientInfo,
        (b"SETINFO", 3) => SessionCommand::ClientSetInfo,
        _ => {
            return Err(RespReply::error(format!(
                "unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&rest[0])
            )))
        }
    };
    Ok(RespCommand::Session(command))
}

fn parse_set(rest: &[Bytes]) -> Result<RespCommand, RespReply> {
    let (key, value) = (&rest[0], &rest[1]);
    check_pair(key, value)?;
    let mut expiry = None;
    let mut condition = Condition::Always;
    let mut get = false;
    let mut at = 2;
    while at < rest.len() {
        let option = rest[at].to_ascii_uppercase();
        let amount = rest.get(at + 1);
        let set_expiry = |expiry_now: &mut Option<Expiry>, parsed: Expiry| {
            if expiry_now.is_some() {
                return Err(syntax_error());
            }
            *expiry_now = Some(parsed);
            Ok(())
        };
        match (&option[..], amount) {
            (b"NX", _) if condition == Condition::Always => condition = Condition::Absent,
            (b"XX", _) if condition == Condition::Always => condition = Condition::Present,
            (b"GET", _) => get = true,
            (b"KEEPTTL", _) => set_expiry(&mut expiry, Expiry::Keep)?,
            (b"EX", Some(amount)) => {
                set_expiry(&mut expiry, relative_expiry(amount, 1000, "set")?)?;
                at += 1;
            }
            (b"PX", Some(amount)) => {
                set_expiry(&mut expiry, relative_expiry(amount, 1, "set")?)?;
                at += 1;
            }
            (b"EXAT", Some(amount)) => {
                set_expiry(&mut expiry, absolute_expiry(amount, 1000, "set")?)?;
                at += 1;
            }
            (b"PXAT", Some(amount)) => {
                set_expiry(&mut expiry, absolute_expiry(amount, 1, "set")?)?;
                at += 1;
            }
            _ => return Err(syntax_error()),
        }
        at += 1;
    }
    Ok(RespCommand::Data(DataCommand::Set {
        key: key.clone(),
        value: value.clone(),
        expiry: expiry.unwrap_or(Expiry::Never),
        condition,
        get,
        reply_integer: false,
    }))
}

fn parse_getex(rest: &[Bytes]) -> Result<RespCommand, RespReply> {
    let key = &rest[0];
    check_key(key)?;
    let expiry = match &rest[1..] {
        [] => None,
        [option] if option.eq_ignore_ascii_case(b"PERSIST") => Some(Expiry::Never),
        [option, amount] => Some(match &option.to_ascii_uppercase()[..] {
            b"EX" => relative_expiry(amount, 1000, "getex")?,
            b"PX" => relative_expiry(amount, 1, "getex")?,
            b"EXAT" => absolute_expiry(amount, 1000, "getex")?,
            b"PXAT" => absolute_expiry(amount, 1, "getex")?,
            _ => return Err(syntax_error()),
        }),
        _ => return Err(syntax_error()),
    };
    Ok(RespCommand::Data(DataCommand::GetEx { key: key.clone(), expiry }))
}

fn parse_scan(rest: &[Bytes]) -> Result<RespCommand, RespReply> {
    let cursor = std::str::from_utf8(&rest[0])
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| RespReply::error("invalid cursor"))?;
    let mut pattern = None;
    let mut count = SCAN_COUNT_DEFAULT;
    let mut strings_only = true;
    let mut at = 1;
    while at < rest.len() {
        let Some(value) = rest.get(at + 1) else {
            return Err(syntax_error());
        };
        match &rest[at].to_ascii_uppercase()[..] {
            b"MATCH" => pattern = Some(value.clone()),
            b"COUNT" => {
                let asked = parse_i64(value).ok_or_else(not_integer)?;
                if asked < 1 {
                    return Err(syntax_error());
                }
                // A page is bounded by ringkv's scan limit whatever the client asks.
                count = asked.min(i64::from(SCAN_LIMIT_MAX)) as u32;
            }
            // Every ringkv value is a string.
            b"TYPE" => strings_only = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax_error()),
        }
        at += 2;
    }
    Ok(RespCommand::Data(DataCommand::Scan { cursor, pattern, count, strings_only }))
}

/// A failure from the store as a Redis error.
pub fn failure_reply(failure: &Failure) -> RespReply {
    RespReply::error(format!("{} ({:?})", failure.message, failure.code))
}

/// A key's live value as read.
struct Found {
    value: Bytes,
    version: u64,
    /// Unix milliseconds; `None` when it never expires.
    expires_at_ms: Option<u64>,
}

/// Reads `key`: its value, version and expiry, or `None`.
async fn read(router: &Rc<Router>, key: &Bytes) -> Result<Option<Found>, RespReply> {
    match router.execute(Operation::Get { key: key.clone() }, None).await {
        Ok(Outcome::Value { value, version, expires_at_ms }) => {
            Ok(Some(Found { value, version, expires_at_ms }))
        }
        Ok(Outcome::NotFound) => Ok(None),
        Ok(other) => Err(RespReply::error(format!("unexpected answer to a read: {other:?}"))),
        Err(failure) => Err(failure_reply(&failure)),
    }
}

/// Writes `value` if the key is still as read (`current`); false when another write came first.
async fn swap(
    router: &Rc<Router>,
    key: &Bytes,
    current: Option<u64>,
    value: Bytes,
    ttl_ms: Option<u64>,
) -> Result<bool, RespReply> {
    let expected = match current {
        Some(version) => Expected::Version(version),
        None => Expected::Absent,
    };
    let operation = Operation::CompareAndSwap { key: key.clone(), expected, value, ttl_ms };
    match router.execute(operation, None).await {
        Ok(Outcome::Written { .. }) => Ok(true),
        Ok(Outcome::CasMismatch { .. }) => Ok(false),
        Ok(other) => Err(RespReply::error(format!("unexpected answer to a compare-and-swap: {other:?}"))),
        Err(failure) => Err(failure_reply(&failure)),
    }
}

async fn write(router: &Rc<Router>, operation: Operation) -> Result<(), RespReply> {
    match router.execute(operation, None).await {
        Ok(_) => Ok(()),
        Err(failure) => Err(failure_reply(&failure)),
    }
}

fn contended(key: &Bytes) -> RespReply {
    RespReply::error(format!(
        "key '{}' changed under {CAS_ATTEMPTS_MAX} attempts in a row (CAS_ATTEMPTS_MAX); retry",
        String::from_utf8_lossy(key)
    ))
}

/// Runs a batch of operations; each result in order.
async fn batch(
    router: &Rc<Router>,
    operations: Vec<Operation>,
) -> Result<Vec<Result<Outcome, Failure>>, RespReply> {
    match router.answer(Command::Batch(operations), None).await {
        Reply::Batch(results) => Ok(results),
        Reply::Failed(failure) => Err(failure_reply(&failure)),
        other => Err(RespReply::error(format!("unexpected answer to a batch: {other:?}"))),
    }
}

/// Carries out `command`; the reply to send.
pub async fn run(router: Rc<Router>, command: DataCommand) -> RespReply {
    match run_fallible(&router, command).await {
        Ok(reply) | Err(reply) => reply,
    }
}

async fn run_fallible(router: &Rc<Router>, command: DataCommand) -> Result<RespReply, RespReply> {
    match command {
        DataCommand::Get(key) => {
            Ok(read(router, &key).await?.map_or(RespReply::Null, |found| RespReply::Bulk(found.value)))
        }
        DataCommand::Set { key, value, expiry, condition, get, reply_integer } => {
            set(router, key, value, expiry, condition, get, reply_integer).await
        }
        DataCommand::GetDel(key) => match read(router, &key).await? {
            None => Ok(RespReply::Null),
            Some(found) => {
                write(router, Operation::Delete { key }).await?;
                Ok(RespReply::Bulk(found.value))
            }
        },
        DataCommand::GetEx { key, expiry: None } => {
            Ok(read(router, &key).await?.map_or(RespReply::Null, |found| RespReply::Bulk(found.value)))
        }
        DataCommand::GetEx { key, expiry: Some(expiry) } => {
            // PERSIST leaves a key without an expiry as it is; the others always rewrite.
            let rewritten = rewrite_expiry(router, &key, |current| {
                (expiry != Expiry::Never || current.is_some()).then_some(expiry)
            })
            .await?;
            Ok(rewritten.value().map_or(RespReply::Null, RespReply::Bulk))
        }
        DataCommand::Delete(keys) => {
            let found = count_present(router, &keys).await?;
            let deletes: Vec<Operation> = keys
                .iter()
                .zip(&found)
                .filter(|(_, &present)| present)
                .map(|(key, _)| Operation::Delete { key: key.clone() })
                .collect();
            let mut deleted = 0;
            // A key listed twice is deleted once, as in Redis.
            let mut seen = std::collections::HashSet::new();
            for operation in &deletes {
                if seen.insert(operation.key().clone()) {
                    deleted += 1;
                }
            }
            for result in batch(router, deletes).await? {
                result.map_err(|failure| failure_reply(&failure))?;
            }
            Ok(RespReply::Integer(deleted))
        }
        DataCommand::Exists(keys) => {
            let found = count_present(router, &keys).await?;
            Ok(RespReply::Integer(found.iter().filter(|&&present| present).count() as i64))
        }
        DataCommand::MultiGet(keys) => {
            let operations = keys.into_iter().map(|key| Operation::Get { key }).collect();
            let mut values = Vec::new();
            for result in batch(router, operations).await? {
                values.push(match result {
                    Ok(Outcome::Value { value, .. }) => RespReply::Bulk(value),
                    Ok(_) => RespReply::Null,
                    Err(failure) => return Err(failure_reply(&failure)),
                });
            }
            Ok(RespReply::Array(values))
        }
        DataCommand::MultiSet(pairs) => {
            let pairs = last_of_each_key(pairs);
            if fits_one_atomic_write(&pairs)
                && write_atomically(router, pairs.clone(), false).await?.is_some()
            {
                return Ok(RespReply::Ok);
            }
            // Keys on several shards (or with several copies): each key on its own.
            let operations =
                pairs.into_iter().map(|(key, value)| Operation::Put { key, value, ttl_ms: None }).collect();
            for result in batch(router, operations).await? {
                result.map_err(|failure| failure_reply(&failure))?;
            }
            Ok(RespReply::Ok)
        }
        DataCommand::MultiSetIfAbsent(pairs) => {
            let pairs = last_of_each_key(pairs);
            if !fits_one_atomic_write(&pairs) {
                return Err(RespReply::error(format!(
                    "MSETNX's keys and values total more than one atomic write holds ({ATOMIC_WRITE_BYTES_MAX} bytes, \
                     VALUE_BYTES_MAX, counting {ATOMIC_ENTRY_OVERHEAD_BYTES} bytes per key beside it)"
                )));
            }
            match write_atomically(router, pairs, true).await? {
                Some(written) => Ok(RespReply::Integer(i64::from(written))),
                None => Err(RespReply::error(
                    "MSETNX of several keys is atomic in ringkv only when every key lives on one shard and keys have \
                     one copy (replication factor 1); these keys do not: use SET NX per key",
                )),
            }
        }
        DataCommand::SetIfAbsent(key, value) => {
            let written = swap(router, &key, None, value, None).await?;
            Ok(RespReply::Integer(i64::from(written)))
        }
        DataCommand::Expire { key, expiry, only_if } => {
            let new_at_ms = match expiry {
                Expiry::In(ttl_ms) => now_ms().saturating_add(ttl_ms),
                Expiry::At(at_ms) => at_ms,
                Expiry::Never | Expiry::Keep => unreachable!("EXPIRE always sets a time"),
            };
            let rewritten =
                rewrite_expiry(router, &key, |current| only_if.admits(current, new_at_ms).then_some(expiry))
                    .await?;
            Ok(RespReply::Integer(i64::from(matches!(rewritten, Rewritten::Changed(_)))))
        }
        DataCommand::Ttl(key, unit) => Ok(RespReply::Integer(match read(router, &key).await? {
            None => -2,
            Some(Found { expires_at_ms: None, .. }) => -1,
            Some(Found { expires_at_ms: Some(at_ms), .. }) => time_left(at_ms, now_ms(), unit),
        })),
        DataCommand::Persist(key) => {
            let rewritten = rewrite_expiry(router, &key, |current| current.map(|_| Expiry::Never)).await?;
            Ok(RespReply::Integer(i64::from(matches!(rewritten, Rewritten::Changed(_)))))
        }
        DataCommand::IncrementBy(key, delta) => increment(router, &key, delta).await,
        DataCommand::Scan { cursor, pattern, count, strings_only } => {
            scan(router, cursor, pattern, count, strings_only).await
        }
        DataCommand::DbSize => Ok(RespReply::Integer(count_keys(router).await? as i64)),
        DataCommand::InfoWithKeyspace(mut text) => {
            let keys = count_keys(router).await?;
            text.push_str("# Keyspace\r\n");
            if keys > 0 {
                text.push_str(&format!("db0:keys={keys}\r\n"));
            }
            Ok(RespReply::text(text))
        }
    }
}

/// Bytes of keys and values one atomic write (one WAL record) holds: one largest value's worth.
const ATOMIC_WRITE_BYTES_MAX: usize = VALUE_BYTES_MAX;

/// Bytes counted per key of an atomic write beside its key and value: the entry's header, with
/// room to spare.
const ATOMIC_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Whether `pairs` fit in one atomic write.
fn fits_one_atomic_write(pairs: &[(Bytes, Bytes)]) -> bool {
    let bytes: usize =
        pairs.iter().map(|(key, value)| key.len() + value.len() + ATOMIC_ENTRY_OVERHEAD_BYTES).sum();
    bytes <= ATOMIC_WRITE_BYTES_MAX
}

/// `pairs` with each key once, holding its last value (a key listed twice ends with its last
/// value in Redis), in the order of their last appearance.
fn last_of_each_key(pairs: Vec<(Bytes, Bytes)>) -> Vec<(Bytes, Bytes)> {
    let mut last = std::collections::HashMap::with_capacity(pairs.len());
    for (index, (key, _)) in pairs.iter().enumerate() {
        last.insert(key.clone(), index);
    }
    pairs
        .into_iter()
        .enumerate()
        .filter(|(index, (key, _))| last[key] == *index)
        .map(|(_, pair)| pair)
        .collect()
}

/// [`Router::write_atomically`] with a failure as a Redis error.
async fn write_atomically(
    router: &Rc<Router>,
    pairs: Vec<(Bytes, Bytes)>,
    only_if_absent: bool,
) -> Result<Option<bool>, RespReply> {
    router.write_atomically(pairs, only_if_absent).await.map_err(|failure| failure_reply(&failure))
}

/// Whether each key has a live value.
async fn count_present(router: &Rc<Router>, keys: &[Bytes]) -> Result<Vec<bool>, RespReply> {
    let operations = keys.iter().map(|key| Operation::Get { key: key.clone() }).collect();
    batch(router, operations)
        .await?
        .into_iter()
        .map(|result| match result {
            Ok(outcome) => Ok(matches!(outcome, Outcome::Value { .. })),
            Err(failure) => Err(failure_reply(&failure)),
        })
        .collect()
}

async fn set(
    router: &Rc<Router>,
    key: Bytes,
    value: Bytes,
    expiry: Expiry,
    condition: Condition,
    get: bool,
    reply_integer: bool,
) -> Result<RespReply, RespReply> {
    // The common case, a plain write, is one put (or one delete, for a moment already past).
    if condition == Condition::Always && !get && expiry != Expiry::Keep {
        match expiry.ttl_ms(None) {
            Ok(ttl_ms) => write(router, Operation::Put { key, value, ttl_ms }).await?,
            Err(()) => write(router, Operation::Delete { key }).await?,
        }
        return Ok(RespReply::Ok);
    }
    let answer = |written: bool, old: Option<Bytes>| {
        if get {
            old.map_or(RespReply::Null, RespReply::Bulk)
        } else if reply_integer {
            RespReply::Integer(i64::from(written))
        } else if written {
            RespReply::Ok
        } else {
            RespReply::Null
        }
    };
    for _ in 0..CAS_ATTEMPTS_MAX {
        // SET NX without GET needs no read: the swap itself requires absence.
        let current = if condition == Condition::Absent && !get { None } else { read(router, &key).await? };
        let holds = match condition {
            Condition::Always => true,
            Condition::Absent => current.is_none(),
            Condition::Present => current.is_some(),
        };
        let (old, version, expires_at_ms) = match current {
            Some(found) => (Some(found.value), Some(found.version), found.expires_at_ms),
            None => (None, None, None),
        };
        if !holds {
            return Ok(answer(false, old));
        }
        let swapped = match expiry.ttl_ms(expires_at_ms) {
            Ok(ttl_ms) => swap(router, &key, version, value.clone(), ttl_ms).await?,
            // Already expired: the write leaves no live value. A delete is not conditional, so
            // it is done only when the key was seen and is still at the version read.
            Err(()) => {
                if version.is_some() {
                    write(router, Operation::Delete { key: key.clone() }).await?;
                }
                true
            }
        };
        if swapped {
            return Ok(answer(true, old));
        }
        if condition == Condition::Absent && !get {
            return Ok(answer(false, None));
        }
    }
    Err(contended(&key))
}

/// What [`rewrite_expiry`] found and did.
enum Rewritten {
    /// The key does not exist.
    Missing,
    /// The key exists, with this value; its expiry stays as it was.
    Unchanged(Bytes),
    /// The key's expiry was rewritten (or the key deleted, for a moment already past).
    Changed(Bytes),
}

impl Rewritten {
    fn value(self) -> Option<Bytes> {
        match self {
            Rewritten::Missing => None,
            Rewritten::Unchanged(value) | Rewritten::Changed(value) => Some(value),
        }
    }
}

/// Rewrites the key's value with the expiry `decide` picks from the current one (`None`: the
/// key never expires); `decide` answering `None` leaves the key alone.
async fn rewrite_expiry(
    router: &Rc<Router>,
    key: &Bytes,
    decide: impl Fn(Option<u64>) -> Option<Expiry>,
) -> Result<Rewritten, RespReply> {
    for _ in 0..CAS_ATTEMPTS_MAX {
        let Some(found) = read(router, key).await? else {
            return Ok(Rewritten::Missing);
        };
        let Some(expiry) = decide(found.expires_at_ms) else {
            return Ok(Rewritten::Unchanged(found.value));
        };
        match expiry.ttl_ms(found.expires_at_ms) {
            Ok(ttl_ms) => {
                if swap(router, key, Some(found.version), found.value.clone(), ttl_ms).await? {
                    return Ok(Rewritten::Changed(found.value));
                }
            }
            Err(()) => {
                write(router, Operation::Delete { key: key.clone() }).await?;
                return Ok(Rewritten::Changed(found.value));
            }
        }
    }
    Err(contended(key))
}

/// TTL's and PTTL's answer for a key expiring at `at_ms` when it is `now_ms`: the milliseconds
/// left, or the seconds rounded to the nearest (as Redis rounds them); 0 rather than negative
/// when this node's clock has passed a moment the storing node's clock has not.
fn time_left(at_ms: u64, now_ms: u64, unit: TimeUnit) -> i64 {
    let left_ms = at_ms.saturating_sub(now_ms).min(i64::MAX as u64);
    match unit {
        TimeUnit::Milliseconds => left_ms as i64,
        TimeUnit::Seconds => left_ms.saturating_add(500) as i64 / 1000,
    }
}

async fn increment(router: &Rc<Router>, key: &Bytes, delta: i64) -> Result<RespReply, RespReply> {
    for _ in 0..CAS_ATTEMPTS_MAX {
        let current = read(router, key).await?;
        let (number, version, expires_at_ms) = match &current {
            Some(found) => {
                (parse_i64(&found.value).ok_or_else(not_integer)?, Some(found.version), found.expires_at_ms)
            }
            None => (0, None, None),
        };
        let next = number
            .checked_add(delta)
            .ok_or_else(|| RespReply::error("increment or decrement would overflow"))?;
        // As in Redis, the number keeps the key's expiry.
        let ttl_ms = Expiry::Keep.ttl_ms(expires_at_ms).unwrap_or(None);
        if swap(router, key, version, Bytes::from(next.to_string()), ttl_ms).await? {
            return Ok(RespReply::Integer(next));
        }
    }
    Err(contended(key))
}

/// The token a cursor resumes at: cursor 0 starts at the ring's start; any other is the token
/// right after the last key returned.
async fn scan(
    router: &Rc<Router>,
    cursor: u64,
    pattern: Option<Bytes>,
    count: u32,
    strings_only: bool,
) -> Result<RespReply, RespReply> {
    let scan = Scan { start: ScanStart::Token(cursor), end: ScanEnd::Last, limit: count };
    let page = scan_page(router, scan).await?;
    let next_cursor = next_cursor(&page);
    let keys = page
        .entries
        .into_iter()
        .filter(|entry| {
            strings_only && pattern.as_ref().is_none_or(|pattern| pattern::matches(pattern, &entry.key))
        })
        .map(|entry| RespReply::Bulk(entry.key))
        .collect();
    Ok(RespReply::Array(vec![RespReply::text(next_cursor.to_string()), RespReply::Array(keys)]))
}

/// The cursor after `page`: 0 when the scan is finished, else the token after the page's last
/// key. Keys sharing that last key's token (a 64-bit hash collision) would be skipped.
pub fn next_cursor(page: &ScanPage) -> u64 {
    match &page.next_start {
        Some(last) => token(last).checked_add(1).unwrap_or(0),
        None => 0,
    }
}

async fn scan_page(router: &Rc<Router>, scan: Scan) -> Result<ScanPage, RespReply> {
    match router.answer(Command::Scan(scan), None).await {
        Reply::Scan(page) => Ok(page),
        Reply::Failed(failure) => Err(failure_reply(&failure)),
        other => Err(RespReply::error(format!("unexpected answer to a scan: {other:?}"))),
    }
}

/// Every live key of the node, counted by paging through a whole scan.
async fn count_keys(router: &Rc<Router>) -> Result<u64, RespReply> {
    let mut scan = Scan { start: ScanStart::Token(0), end: ScanEnd::Last, limit: SCAN_LIMIT_MAX };
    let mut keys = 0u64;
    loop {
        let page = scan_page(router, scan.clone()).await?;
        keys += page.entries.len() as u64;
        match page.next_start {
            Some(last) => scan = scan.resume_after(last),
            None => return Ok(keys),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|word| Bytes::copy_from_slice(word.as_bytes())).collect()
    }

    fn parsed(words: &[&str]) -> Result<RespCommand, RespReply> {
        parse_command(&arguments(words))
    }

    fn error_text(words: &[&str]) -> String {
        match parsed(words) {
            Err(RespReply::Error(text)) => text,
            other => panic!("{words:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn unknown_commands_get_redis_error() {
        assert_eq!(
            error_text(&["FOO", "a", "b"]),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(error_text(&["get"]), "ERR wrong number of arguments for 'get' command");
    }

    #[test]
    fn set_options_parse() {
        assert_eq!(
            parsed(&["set", "k", "v", "px", "1500", "nx", "get"]),
            Ok(RespCommand::Data(DataCommand::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                expiry: Expiry::In(1500),
                condition: Condition::Absent,
                get: true,
                reply_integer: false,
            }))
        );
        assert_eq!(error_text(&["set", "k", "v", "nx", "xx"]), "ERR syntax error");
        assert_eq!(error_text(&["set", "k", "v", "ex", "1", "px", "1"]), "ERR syntax error");
        assert_eq!(error_text(&["set", "k", "v", "ex", "0"]), "ERR invalid expire time in 'set' command");
        assert_eq!(error_text(&["set", "k", "v", "ex", "x"]), "ERR value is not an integer or out of range");
        assert!(matches!(
            parsed(&["set", "k", "v", "keepttl", "xx"]),
            Ok(RespCommand::Data(DataCommand::Set {
                expiry: Expiry::Keep,
                condition: Condition::Present,
                ..
            }))
        ));
        assert_eq!(error_text(&["set", "k", "v", "keepttl", "ex", "1"]), "ERR syntax error");
        assert_eq!(error_text(&["set", "k", "v", "px", "1", "keepttl"]), "ERR syntax error");
    }

    #[test]
    fn expire_options_parse_and_combine_like_redis() {
        let only_if = |words: &[&str]| match parsed(words) {
            Ok(RespCommand::Data(DataCommand::Expire { only_if, .. })) => only_if,
            other => panic!("{words:?} parsed as {other:?}"),
        };
        assert_eq!(only_if(&["expire", "k", "10"]), ExpireIf::default());
        assert_eq!(only_if(&["expire", "k", "10", "nx"]), ExpireIf { none: true, ..ExpireIf::default() });
        assert_eq!(
            only_if(&["pexpire", "k", "10", "XX", "gt"]),
            ExpireIf { some: true, later: true, ..ExpireIf::default() }
        );
        assert_eq!(
            error_text(&["expire", "k", "10", "nx", "xx"]),
            "ERR NX and XX, GT or LT options at the same time are not compatible"
        );
        assert_eq!(
            error_text(&["expire", "k", "10", "gt", "lt"]),
            "ERR GT and LT options at the same time are not compatible"
        );
        assert_eq!(error_text(&["expire", "k", "10", "soon"]), "ERR Unsupported option soon");
    }

    #[test]
    fn expire_conditions_treat_no_expiry_as_never() {
        let nx = ExpireIf { none: true, ..ExpireIf::default() };
        let xx = ExpireIf { some: true, ..ExpireIf::default() };
        let gt = ExpireIf { later: true, ..ExpireIf::default() };
        let lt = ExpireIf { earlier: true, ..ExpireIf::default() };
        let xx_lt = ExpireIf { some: true, earlier: true, ..ExpireIf::default() };
        // A key without an expiry.
        assert!(ExpireIf::default().admits(None, 5));
        assert!(nx.admits(None, 5) && !xx.admits(None, 5));
        assert!(!gt.admits(None, 5) && lt.admits(None, 5) && !xx_lt.admits(None, 5));
        // A key expiring at 100.
        assert!(ExpireIf::default().admits(Some(100), 5));
        assert!(!nx.admits(Some(100), 500) && xx.admits(Some(100), 500));
        assert!(gt.admits(Some(100), 101) && !gt.admits(Some(100), 100) && !gt.admits(Some(100), 99));
        assert!(lt.admits(Some(100), 99) && !lt.admits(Some(100), 100) && xx_lt.admits(Some(100), 1));
    }

    #[test]
    fn time_left_rounds_seconds_like_redis() {
        assert_eq!(time_left(10_000, 1_000, TimeUnit::Milliseconds), 9_000);
        assert_eq!(time_left(10_000, 1_000, TimeUnit::Seconds), 9);
        assert_eq!(time_left(10_499, 1_000, TimeUnit::Seconds), 9);
        assert_eq!(time_left(10_500, 1_000, TimeUnit::Seconds), 10);
        assert_eq!(time_left(1_000, 1_001, TimeUnit::Milliseconds), 0);
        assert_eq!(time_left(1_000, 1_000, TimeUnit::Seconds), 0);
    }

    #[test]
    fn keeping_an_expiry_writes_the_time_left() {
        assert_eq!(Expiry::Keep.ttl_ms(None), Ok(None));
        let later = now_ms() + 3_600_000;
        let kept = Expiry::Keep.ttl_ms(Some(later)).unwrap().unwrap();
        assert!(kept > 0 && kept <= 3_600_000, "{kept}");
        // A moment this node's clock has passed still writes a TTL, the shortest there is.
        assert_eq!(Expiry::Keep.ttl_ms(Some(1)), Ok(Some(1)));
        assert_eq!(Expiry::Never.ttl_ms(Some(later)), Ok(None));
    }

    #[test]
    fn limits_are_named() {
        let long_key = "k".repeat(300);
        assert!(error_text(&["get", &long_key]).contains("KEY_BYTES_MAX"));
        assert!(error_text(&["set", "", "v"]).contains("KEY_BYTES_MAX"));
        let big = "v".repeat(ringkv_wire::limits::VALUE_BYTES_MAX + 1);
        assert!(error_text(&["set", "k", &big]).contains("VALUE_BYTES_MAX"));
        assert!(error_text(&["setex", "k", "999999999999", "v"]).contains("TTL_MS_MAX"));
    }

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"+1", b" 1", b"1 ", b"01", b"-", b"9223372036854775808", b"1.5"] {
            assert_eq!(parse_i64(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn scan_cursor_follows_the_last_token() {
        let page = ScanPage { entries: Vec::new(), next_start: Some(Bytes::from_static(b"key")) };
        assert_eq!(next_cursor(&page), token(b"key") + 1);
        assert_eq!(next_cursor(&ScanPage::default()), 0);
        assert_eq!(error_text(&["scan", "x"]), "ERR invalid cursor");
        assert_eq!(error_text(&["scan", "0", "count", "0"]), "ERR syntax error");
    }

    #[test]
    fn msetnx_of_one_key_is_a_set_nx() {
        assert!(matches!(
            parsed(&["msetnx", "a", "1", "b", "2"]),
            Ok(RespCommand::Data(DataCommand::MultiSetIfAbsent(..)))
        ));
        assert!(matches!(parsed(&["msetnx", "a", "1"]), Ok(RespCommand::Data(DataCommand::SetIfAbsent(..)))));
    }

    #[test]
    fn a_key_listed_twice_keeps_its_last_value() {
        let pair = |key: &'static str, value: &'static str| {
            (Bytes::from_static(key.as_bytes()), Bytes::from_static(value.as_bytes()))
        };
        let pairs = vec![pair("a", "1"), pair("b", "2"), pair("a", "3"), pair("c", "4")];
        assert_eq!(last_of_each_key(pairs), vec![pair("b", "2"), pair("a", "3"), pair("c", "4")]);
    }

    #[test]
    fn an_atomic_write_holds_about_one_largest_value() {
        let pair = |bytes: usize| (Bytes::from_static(b"k"), Bytes::from(vec![0; bytes]));
        assert!(fits_one_atomic_write(&[pair(VALUE_BYTES_MAX - 65)]));
        assert!(!fits_one_atomic_write(&[pair(VALUE_BYTES_MAX / 2), pair(VALUE_BYTES_MAX / 2)]));
        assert!(fits_one_atomic_write(&vec![pair(100); 1000]));
    }
}
