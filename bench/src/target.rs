//! The store a run measures, named by a URL: `ringkv://host:port` (the native client's glommio
//! adapter, shard-aware) or `redis://host:port` (the RESP2 client in [`crate::redis`]).

use crate::redis::{RedisConnection, RedisError};
use crate::ycsb::key_name;
use ringkv_client::glommio::Client;
use ringkv_client::{ClientOptions, Credentials, ScanEnd, ScanStart};
use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Which protocol a target speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Ringkv,
    Redis,
}

impl Protocol {
    /// Whether the load generator can scan key ranges on this protocol: ringkv has ordered range
    /// reads; the Redis client speaks only `GET` and `SET`, and a Redis hash table keeps no key
    /// order to scan in.
    pub fn supports_scans(self) -> bool {
        match self {
            Protocol::Ringkv => true,
            Protocol::Redis => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ringkv => "ringkv://",
            Protocol::Redis => "redis://",
        }
    }
}

/// A store to measure: its protocol and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub address: SocketAddr,
    url: String,
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.url)
    }
}

impl FromStr for Target {
    type Err = String;

    /// Parses `ringkv://host:port` or `redis://host:port`; the host is resolved now, so that no
    /// executor blocks on a name lookup later.
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (protocol, rest) = if let Some(rest) = url.strip_prefix("ringkv://") {
            (Protocol::Ringkv, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (Protocol::Redis, rest)
        } else {
            return Err(format!("{url:?}: a target is ringkv://host:port or redis://host:port"));
        };
        let address = rest
            .trim_end_matches('/')
            .to_socket_addrs()
            .map_err(|error| format!("{url:?}: {error}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: the host resolves to no address"))?;
        Ok(Target { protocol, address, url: url.to_string() })
    }
}

/// Why an operation against a target failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ringkv(#[from] ringkv_client::Error),
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The target's protocol has no such operation.
    #[error("{protocol} targets do not support {operation}")]
    Unsupported { protocol: &'static str, operation: &'static str },
}

impl StoreError {
    /// A short name for the error's kind, for counting errors by kind.
    pub fn kind(&self) -> String {
        match self {
            StoreError::Ringkv(error) => match (error, error.code()) {
                (_, Some(code)) => format!("server_{code:?}").to_lowercase(),
                (ringkv_client::Error::Timeout { .. }, _) => "timeout".into(),
                (ringkv_client::Error::ConnectionLost { .. }, _) => "connection_lost".into(),
                (ringkv_client::Error::Connect { .. }, _) => "connect".into(),
                (ringkv_client::Error::Protocol(_), _) => "protocol".into(),
                _ => "client".into(),
            },
            StoreError::Redis(error) => error.kind().into(),
            StoreError::Unsupported { .. } => "unsupported".into(),
        }
    }
}

/// Most keys tried to find one routed to each shard.
const WARM_UP_KEYS_MAX: u64 = 10_000;

/// Opens the client's connection to every shard with one request each, one at a time.
///
/// The client opens a shard's connection on first use, and tasks that find no connection at the
/// same moment each open one, the later replacing (and failing the requests on) the earlier. A run
/// starts `--pipeline` requests at once, so without this the first burst loses most of them.
async fn open_every_shard_connection(client: &Client) -> Result<(), StoreError> {
    let shards = client.topology().map_or(1, |topology| topology.shards.len().max(1));
    let mut opened = HashSet::new();
    for number in 0..WARM_UP_KEYS_MAX {
        if opened.len() >= shards {
            break;
        }
        let key = key_name(number);
        if opened.insert(client.route(&key).address) {
            client.get(&key).await?;
        }
    }
    Ok(())
}

/// The credentials in `RINGKV_PASSWORD` (and `RINGKV_USER`, else the default user), as the
/// `ringkv` command-line client reads them, for a node with users configured.
pub fn credentials_from_env() -> Option<Credentials> {
    let password = std::env::var("RINGKV_PASSWORD").ok()?;
    let user = std::env::var("RINGKV_USER").unwrap_or_else(|_| ringkv_client::DEFAULT_USER.to_owned());
    Some(Credentials::new(user, password.into_bytes()))
}

/// One "connection" of a run: a ringkv client (one socket per shard, requests pipelined on each)
/// or one Redis connection. Used only on the executor that opened it.
pub enum Store {
    Ringkv(Client),
    Redis(RedisConnection),
}

impl Store {
    /// Connects to `target`, allowing `in_flight_max` requests in flight per socket, over TLS
    /// when `tls` is set (ringkv targets only).
    pub async fn connect(
        target: &Target,
        in_flight_max: usize,
        tls: Option<ringkv_client::TlsOptions>,
    ) -> Result<Store, StoreError> {
        match target.protocol {
            Protocol::Ringkv => {
                let options = ClientOptions {
                    in_flight_max,
                    credentials: credentials_from_env(),
                    tls,
                    ..ClientOptions::default()
                };
                let client = Client::connect_with(target.address, options).await?;
                open_every_shard_connection(&client).await?;
                Ok(Store::Ringkv(client))
            }
            Protocol::Redis => Ok(Store::Redis(RedisConnection::connect(target.address).await?)),
        }
    }

    /// Reads `key`; whether it had a value.
    pub async fn read(&self, key: &[u8]) -> Result<bool, StoreError> {
        match self {
            Store::Ringkv(client) => Ok(client.get(key).await?.is_some()),
            Store::Redis(connection) => Ok(connection.get(key).await?),
        }
    }

    /// Reads up to `count` live keys in token order from `start`'s position (inclusive), paging
    /// when the server cuts a page short at its byte cap; whether any key was found.
    pub async fn scan(&self, start: &[u8], count: u32) -> Result<bool, StoreError> {
        match self {
            Store::Ringkv(client) => {
                let mut start = ScanStart::key(start);
                let mut read = 0u32;
                while read < count {
                    let page = client.scan(start, ScanEnd::Last, count - read).await?;
                    read += page.entries.len() as u32;
                    match page.next_start {
                        Some(next) => start = ScanStart::After(next),
                        None => break,
                    }
                }
                Ok(read > 0)
            }
            Store::Redis(_) => {
                Err(StoreError::Unsupported { protocol: Protocol::Redis.name(), operation: "scans" })
            }
        }
    }

    /// Writes `value` under `key`.
    pub async fn write(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match self {
            Store::Ringkv(client) => client.put(key, value).await.map(drop).map_err(StoreError::from),
            Store::Redis(connection) => Ok(connection.set(key, value).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes_and_refuses_others() {
        let ringkv: Target = "ringkv://127.0.0.1:7379".parse().unwrap();
        assert_eq!((ringkv.protocol, ringkv.address.port()), (Protocol::Ringkv, 7379));
        let redis: Target = "redis://127.0.0.1:6379/".parse().unwrap();
        assert_eq!((redis.protocol, redis.address.port()), (Protocol::Redis, 6379));
        assert!("http://127.0.0.1:80".parse::<Target>().is_err());
        assert!("ringkv://127.0.0.1".parse::<Target>().is_err());
    }
}
