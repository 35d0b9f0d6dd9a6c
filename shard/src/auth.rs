//! Client authentication: the users a node accepts ([`UserConfig`], `[[users]]` in the
//! configuration), the check of a user's password in constant time ([`ClientAuth`]), and the
//! per-connection gate ([`Gate`]) that lets only `Auth` and `Ping` through until an `Auth`
//! succeeds.
//!
//! ```text
//!  request ─▶ Gate ─┬─ authenticated, or no users configured ───────────▶ served
//!                   ├─ Auth: right password ─ Authenticated ─▶ later requests served
//!                   ├─ Auth: wrong user or password ─ AuthFailed, logged, counted ─▶ closed
//!                   ├─ Ping ─────────────────────────────────────────────▶ served
//!                   └─ anything else ─ Unauthenticated ──────────────────▶ answered, kept open
//! ```
//!
//! Passwords are kept as their SHA-256 digests and a presented password is hashed and compared
//! with every user's digest with [`subtle`]'s constant-time equality, so the time a check takes
//! depends neither on how much of a password matched nor on its length, nor on which user it
//! belongs to.

use std::fmt;
use std::net::SocketAddr;

use ringkv_wire::{Command, Credentials, ErrorCode, Failure, Reply, Request, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tracing::warn;

use crate::metrics::{Protocol, ShardMetrics};

/// A secret from the configuration (a password, the cluster secret). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// `text` as a secret.
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<hidden>")
    }
}

/// One user clients may authenticate as: `[[users]]` in the configuration file.
///
/// ```toml
/// [[users]]
/// name = "default"    # the user of a bare `AUTH password`, and of clients that name none
/// password = "a long random string"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: Secret,
}

/// The users a shard accepts, each with the SHA-256 digest of its password.
pub struct ClientAuth {
    users: Vec<(String, [u8; 32])>,
}

impl ClientAuth {
    /// Accepts `users`; with none, every connection is served without authenticating.
    pub fn new(users: &[UserConfig]) -> Self {
        ClientAuth {
            users: users.iter().map(|user| (user.name.clone(), digest(user.password.expose()))).collect(),
        }
    }

    /// Whether connections must authenticate before they are served.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether `credentials` name a user and its password. Every user's digest is compared,
    /// in constant time, whatever matched.
    pub fn check(&self, credentials: &Credentials) -> bool {
        let presented = digest(&credentials.password);
        let mut matched = Choice::from(0);
        for (name, password) in &self.users {
            // User names are not secret; only the password comparison must not leak.
            let same_user = Choice::from(u8::from(name.as_bytes() == credentials.user.as_bytes()));
            matched |= same_user & password.ct_eq(&presented);
        }
        bool::from(matched)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What the gate decided about one request.
pub enum Admission {
    /// Serve the request.
    Serve(Request),
    /// Send this answer instead, and keep the connection.
    Answer(Response),
    /// Send this answer and close the connection.
    Close(Response),
}

/// One connection's authentication state.
pub struct Gate {
    authenticated: bool,
    /// The client's address, for the log of a failed attempt.
    peer: Option<SocketAddr>,
}

impl Gate {
    /// A gate for a new connection: open when `auth` requires nothing.
    pub fn new(auth: &ClientAuth) -> Self {
        Gate { authenticated: !auth.required(), peer: None }
    }

    /// The gate names `peer` when it logs a failed attempt (connections are not in a span of
    /// their own unless debug logs are on: see `connection::spawn_connection`).
    pub fn with_peer(self, peer: Option<SocketAddr>) -> Self {
        Gate { peer, ..self }
    }

    /// Whether the connection has authenticated (or needs not).
    pub fn is_open(&self) -> bool {
        self.authenticated
    }

    /// Checks `credentials` against `auth`: the gate opens on success; a failure is logged and
    /// counted under `protocol`.
    pub fn authenticate(
        &mut self,
        auth: &ClientAuth,
        credentials: &Credentials,
        protocol: Protocol,
        metrics: &ShardMetrics,
    ) -> bool {
        if !auth.required() || auth.check(credentials) {
            self.authenticated = true;
            return true;
        }
        metrics.connections(protocol).auth_failures.add(1);
        warn!(
            user = %credentials.user,
            protocol = protocol.label(),
            peer = %crate::connection::DisplayPeer(self.peer),
            "authentication failed"
        );
        false
    }

    /// Decides about one request of the native protocol.
    pub fn admit(&mut self, request: Request, auth: &ClientAuth, metrics: &ShardMetrics) -> Admission {
        let id = request.id;
        match &request.command {
            Command::Auth(credentials) => {
                if self.authenticate(auth, credentials, Protocol::Native, metrics) {
                    Admission::Answer(Response { id, reply: Reply::Authenticated })
                } else {
                    Admission::Close(Response {
                        id,
                        reply: Reply::Failed(Failure::new(ErrorCode::AuthFailed, "wrong user or password")),
                    })
                }
            }
            _ if self.authenticated => Admission::Serve(request),
            Command::Ping => Admission::Serve(request),
            _ => Admission::Answer(Response {
                id,
                reply: Reply::Failed(Failure::new(
                    ErrorCode::Unauthenticated,
                    "the node requires authentication: send Auth first",
                )),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_wire::Operation;

    fn users() -> Vec<UserConfig> {
        vec![
            UserConfig { name: "default".into(), password: Secret::new("first secret") },
            UserConfig { name: "app".into(), password: Secret::new("second secret") },
        ]
    }

    fn request(id: u64, command: Command) -> Request {
        Request { id, command, consistency: None }
    }

    fn get() -> Command {
        Command::Single(Operation::Get { key: bytes::Bytes::from_static(b"k") })
    }

    #[test]
    fn each_user_needs_its_own_password() {
        let auth = ClientAuth::new(&users());
        assert!(auth.required());
        assert!(auth.check(&Credentials::new("default", "first secret")));
        assert!(auth.check(&Credentials::new("app", "second secret")));
        assert!(!auth.check(&Credentials::new("app", "first secret")));
        assert!(!auth.check(&Credentials::new("default", "first secre")));
        assert!(!auth.check(&Credentials::new("nobody", "first secret")));
        assert!(!auth.check(&Credentials::new("default", "")));
    }

    #[test]
    fn without_users_everything_passes() {
        let auth = ClientAuth::new(&[]);
        let metrics = ShardMetrics::default();
        let mut gate = Gate::new(&auth);
        assert!(gate.is_open());
        assert!(matches!(gate.admit(request(1, get()), &auth, &metrics), Admission::Serve(_)));
        let auth_request = request(2, Command::Auth(Credentials::new("anyone", "anything")));
        assert!(matches!(
            gate.admit(auth_request, &auth, &metrics),
            Admission::Answer(Response { reply: Reply::Authenticated, .. })
        ));
    }

    #[test]
    fn the_gate_lets_only_auth_and_ping_through_until_auth_succeeds() {
        let auth = ClientAuth::new(&users());
        let metrics = ShardMetrics::default();
        let mut gate = Gate::new(&auth);
        let refused = gate.admit(request(1, get()), &auth, &metrics);
        match refused {
            Admission::Answer(Response { id: 1, reply: Reply::Failed(failure) }) => {
                assert_eq!(failure.code, ErrorCode::Unauthenticated)
            }
            _ => panic!("an unauthenticated get must be refused"),
        }
        assert!(matches!(gate.admit(request(2, Command::Ping), &auth, &metrics), Admission::Serve(_)));
        assert!(matches!(gate.admit(request(3, Command::Topology), &auth, &metrics), Admission::Answer(_)));
        let right = request(4, Command::Auth(Credentials::new("app", "second secret")));
        assert!(matches!(
            gate.admit(right, &auth, &metrics),
            Admission::Answer(Response { id: 4, reply: Reply::Authenticated })
        ));
        assert!(matches!(gate.admit(request(5, get()), &auth, &metrics), Admission::Serve(_)));
        assert_eq!(metrics.connections(Protocol::Native).auth_failures.get(), 0);
    }

    #[test]
    fn a_wrong_password_closes_and_is_counted() {
        let auth = ClientAuth::new(&users());
        let metrics = ShardMetrics::default();
        let mut gate = Gate::new(&auth);
        let wrong = request(1, Command::Auth(Credentials::new("app", "guess")));
        match gate.admit(wrong, &auth, &metrics) {
            Admission::Close(Response { id: 1, reply: Reply::Failed(failure) }) => {
                assert_eq!(failure.code, ErrorCode::AuthFailed)
            }
            _ => panic!("a wrong password must close the connection"),
        }
        assert!(!gate.is_open());
        assert_eq!(metrics.connections(Protocol::Native).auth_failures.get(), 1);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = format!("{:?}", users());
        assert!(!text.contains("secret"), "{text}");
    }
}
