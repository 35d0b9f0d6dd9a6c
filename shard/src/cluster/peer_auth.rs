//! Peer authentication with the cluster secret (`cluster_secret`): a challenge-response when a
//! peer link opens, and a tag on every membership datagram. The secret never crosses the wire.
//!
//! ```text
//!  opener (PeerLink)                                   acceptor (peer port)
//!   "RKVA" ‖ nonce_o (32 bytes, from the OS) ───────────▶
//!          ◀─────────── nonce_a (32 bytes, from the OS) ‖ HMAC(k, "acceptor" ‖ nonce_o ‖ nonce_a)
//!   checks the acceptor's tag (constant time)
//!   HMAC(k, "opener" ‖ nonce_o ‖ nonce_a) ──────────────▶ checks the opener's tag
//!   then the peer protocol as before: Hello, requests, replies
//! ```
//!
//! `k` is SHA-256 of the secret, and each HMAC-SHA256 names its role, so a tag one side sends can
//! never be replayed as the other's. Fresh nonces on both sides mean a recorded handshake proves
//! nothing on a later link. Either side closes the connection, and logs it, when the other's tag
//! is wrong; the acceptor reads nothing of the peer protocol before the opener has proved itself.
//!
//! Membership datagrams (foca over UDP) carry `HMAC(k, "gossip" ‖ datagram)` after their bytes;
//! one without a valid tag is dropped before it is parsed. The tag authenticates the sender but
//! does not stop a captured datagram from being replayed; foca's incarnation numbers make a
//! stale one harmless.

use std::io::{Read, Write};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an opener sends first, so an acceptor tells a peer that authenticates from one that
/// does not (a node without `cluster_secret`, or something else entirely).
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"RKVA";

/// Bytes of each nonce.
pub const NONCE_BYTES: usize = 32;

/// Bytes of each tag (a full HMAC-SHA256).
pub const TAG_BYTES: usize = 32;

const OPENER: &[u8] = b"ringkv peer link opener";
const ACCEPTOR: &[u8] = b"ringkv peer link acceptor";
const GOSSIP: &[u8] = b"ringkv gossip datagram";

/// Why a peer handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerAuthError {
    #[error("reading or writing the handshake failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer did not start an authenticated handshake (no cluster_secret on its side?)")]
    NotAuthenticating,
    #[error("the peer does not know the cluster secret (its proof is wrong)")]
    WrongSecret,
    #[error("the operating system gave no random bytes: {0}")]
    Random(getrandom::Error),
}

/// The key every node of the cluster derives from the cluster secret. `Debug` hides it.
#[derive(Clone, Copy)]
pub struct PeerKey([u8; 32]);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PeerKey(<hidden>)")
    }
}

impl PeerKey {
    /// The key for `secret`.
    pub fn from_secret(secret: &[u8]) -> Self {
        PeerKey(Sha256::digest(secret).into())
    }

    fn tag(&self, label: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, label: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        bool::from(self.tag(label, parts).ct_eq(tag))
    }

    /// Appends the gossip tag to `datagram`.
    pub fn sign_datagram(&self, datagram: &mut Vec<u8>) {
        let tag = self.tag(GOSSIP, &[datagram]);
        datagram.extend_from_slice(&tag);
    }

    /// The datagram without its tag, when the tag is right.
    pub fn open_datagram<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let body_bytes = datagram.len().checked_sub(TAG_BYTES)?;
        let (body, tag) = datagram.split_at(body_bytes);
        self.verify(GOSSIP, &[body], tag).then_some(body)
    }
}

fn nonce() -> Result<[u8; NONCE_BYTES], PeerAuthError> {
    let mut nonce = [0; NONCE_BYTES];
    getrandom::getrandom(&mut nonce).map_err(PeerAuthError::Random)?;
    Ok(nonce)
}

/// The opener's first message.
fn opening(nonce: &[u8; NONCE_BYTES]) -> [u8; 4 + NONCE_BYTES] {
    let mut message = [0; 4 + NONCE_BYTES];
    message[..4].copy_from_slice(&HANDSHAKE_MAGIC);
    message[4..].copy_from_slice(nonce);
    message
}

/// Opens an authenticated link on `stream` (the side that connected).
pub async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &PeerKey,
) -> Result<(), PeerAuthError> {
    let own = nonce()?;
    stream.write_all(&opening(&own)).await?;
    stream.flush().await?;
    let mut answer = [0; NONCE_BYTES + TAG_BYTES];
    stream.read_exact(&mut answer).await?;
    let (theirs, tag) = answer.split_at(NONCE_BYTES);
    if !key.verify(ACCEPTOR, &[&own, theirs], tag) {
        return Err(PeerAuthError::WrongSecret);
    }
    stream.write_all(&key.tag(OPENER, &[&own, theirs])).await?;
    stream.flush().await?;
    Ok(())
}

/// Accepts an authenticated link on `stream` (the side that listened).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &PeerKey,
) -> Result<(), PeerAuthError> {
    let mut opening = [0; 4 + NONCE_BYTES];
    stream.read_exact(&mut opening).await?;
    if opening[..4] != HANDSHAKE_MAGIC {
        return Err(PeerAuthError::NotAuthenticating);
    }
    let theirs = &opening[4..];
    let own = nonce()?;
    let mut answer = [0; NONCE_BYTES + TAG_BYTES];
    answer[..NONCE_BYTES].copy_from_slice(&own);
    answer[NONCE_BYTES..].copy_from_slice(&key.tag(ACCEPTOR, &[theirs, &own]));
    stream.write_all(&answer).await?;
    stream.flush().await?;
    let mut proof = [0; TAG_BYTES];
    stream.read_exact(&mut proof).await?;
    if !key.verify(OPENER, &[theirs, &own], &proof) {
        return Err(PeerAuthError::WrongSecret);
    }
    Ok(())
}

/// [`open`] on a blocking stream, for command-line tools that talk to a peer port.
pub fn open_blocking<S: Read + Write>(stream: &mut S, key: &PeerKey) -> Result<(), PeerAuthError> {
    let own = nonce()?;
    stream.write_all(&opening(&own))?;
    let mut answer = [0; NONCE_BYTES + TAG_BYTES];
    stream.read_exact(&mut answer)?;
    let (theirs, tag) = answer.split_at(NONCE_BYTES);
    if !key.verify(ACCEPTOR, &[&own, theirs], tag) {
        return Err(PeerAuthError::WrongSecret);
    }
    stream.write_all(&key.tag(OPENER, &[&own, theirs]))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    /// Runs `open` with `opener_key` against `accept` with `acceptor_key` over a socket pair.
    fn handshake(
        opener_key: PeerKey,
        acceptor_key: PeerKey,
    ) -> (Result<(), PeerAuthError>, Result<(), PeerAuthError>) {
        let (opener, acceptor) = std::os::unix::net::UnixStream::pair().unwrap();
        let acceptor_side = std::thread::spawn(move || {
            let mut stream = futures_lite::io::AssertAsync::new(acceptor);
            block_on(accept(&mut stream, &acceptor_key))
        });
        let mut opener = opener;
        let opened = open_blocking(&mut opener, &opener_key);
        drop(opener);
        (opened, acceptor_side.join().unwrap())
    }

    #[test]
    fn the_same_secret_passes_both_ways() {
        let key = PeerKey::from_secret(b"a cluster secret of some length");
        let (opened, accepted) = handshake(key, key);
        opened.unwrap();
        accepted.unwrap();
    }

    #[test]
    fn a_different_secret_fails_on_both_sides() {
        let (opened, accepted) =
            handshake(PeerKey::from_secret(b"the right secret"), PeerKey::from_secret(b"a wrong secret!!"));
        assert!(matches!(opened, Err(PeerAuthError::WrongSecret)), "{opened:?}");
        // The opener hangs up without a proof: the acceptor never sees one.
        assert!(accepted.is_err());
    }

    #[test]
    fn datagram_tags_verify_only_with_the_same_key_and_bytes() {
        let key = PeerKey::from_secret(b"a cluster secret of some length");
        let mut datagram = b"membership bytes".to_vec();
        key.sign_datagram(&mut datagram);
        assert_eq!(key.open_datagram(&datagram), Some(&b"membership bytes"[..]));
        assert_eq!(PeerKey::from_secret(b"another secret here").open_datagram(&datagram), None);
        let mut altered = datagram.clone();
        altered[0] ^= 1;
        assert_eq!(key.open_datagram(&altered), None);
        assert_eq!(key.open_datagram(&datagram[..TAG_BYTES - 1]), None);
        assert!(!format!("{key:?}").contains(char::is_numeric));
    }
}
