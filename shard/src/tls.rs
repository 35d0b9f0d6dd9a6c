//! TLS on the node's ports, through rustls (ring provider, TLS 1.3 only).
//!
//! ```text
//!  tls_cert_file + tls_key_file ─┬─ client ports (native, per shard, RESP): server side,
//!                                │  client certificates only when tls_client_ca_file is set
//!  tls_ca_file ──────────────────┼─ peer port: server side, the peer's certificate required and
//!                                │  verified against tls_ca_file (mutual TLS)
//!                                ├─ peer links: client side, presents the node certificate and
//!                                │  verifies the remote node's against tls_ca_file, for the IP
//!                                │  address it dialled
//!                                └─ metrics port (HTTPS): the client ports' configuration
//! ```
//!
//! A connection's handshake must finish within the frame timeout, or the connection is closed:
//! a client that opens a socket and never completes its handshake holds it no longer than a
//! client that never completes a frame. Decrypted bytes go through the same request-memory
//! accounting as plaintext ones; rustls itself holds at most about one record (16 KiB) per
//! direction per connection. The metrics port is served apart, by an ordinary thread with
//! rustls's blocking API: there the handshake and the request head share one deadline
//! (`metrics::http::IO_TIMEOUT`).
//!
//! The gossip channel (UDP datagrams) is not covered: TLS protects the TCP peer links that carry
//! replication; gossip datagrams carry membership only.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::future::or;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use ringkv_readiness::PolledStream;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::{debug, info};

use crate::config::NodeConfig;
use crate::stop_signal::StopSignal;

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Some TLS settings are set and others they need are not.
    #[error("{0}")]
    Incomplete(String),
    /// A PEM file could not be read or holds nothing usable.
    #[error("{field} {path}: {reason}")]
    Pem { field: &'static str, path: String, reason: String },
    /// The private key is not the one of the certificate.
    #[error("tls_key_file {key} does not match the certificate in tls_cert_file {cert}")]
    KeyMismatch { cert: String, key: String },
    /// rustls refused the certificates or keys.
    #[error("{what}: {source}")]
    Rustls { what: &'static str, source: rustls::Error },
}

/// The node's TLS configurations, built once per shard from [`NodeConfig`].
#[derive(Clone)]
pub struct TlsSettings {
    /// For the client ports.
    client_ports: TlsAcceptor,
    /// The client ports' configuration, for the metrics port (served by an ordinary thread).
    client_ports_config: Arc<ServerConfig>,
    /// For the peer port: client certificates required.
    peer_port: TlsAcceptor,
    /// For peer links this node opens.
    peer_links: TlsConnector,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TlsSettings")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

fn read_certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |reason: String| TlsError::Pem { field, path: path_text(path), reason };
    let bytes = std::fs::read(path).map_err(|error| pem(error.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem(format!("is not valid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(pem("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string()));
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = |reason: String| TlsError::Pem { field: "tls_key_file", path: path_text(path), reason };
    let bytes = std::fs::read(path).map_err(|error| pem(error.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => {
            pem("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string())
        }
        error => pem(format!("is not valid PEM: {error}")),
    })
}

fn read_roots(field: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(field, path)? {
        roots.add(certificate).map_err(|error| TlsError::Pem {
            field,
            path: path_text(path),
            reason: format!("holds a certificate that cannot be a trust anchor: {error}"),
        })?;
    }
    Ok(Arc::new(roots))
}

impl TlsSettings {
    /// The node's TLS settings, or `None` when TLS is off (no `tls_cert_file`). Checks that the
    /// files exist, parse, and that the key belongs to the certificate.
    pub fn load(config: &NodeConfig) -> Result<Option<TlsSettings>, TlsError> {
        let (cert_path, key_path, ca_path) =
            match (&config.tls_cert_file, &config.tls_key_file, &config.tls_ca_file) {
                (None, None, None) => {
                    if config.tls_client_ca_file.is_some() {
                        return Err(TlsError::Incomplete(
                        "tls_client_ca_file is set but tls_cert_file is not: client certificates need TLS"
                            .into(),
                    ));
                    }
                    return Ok(None);
                }
                (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
                _ => return Err(TlsError::Incomplete(
                    "TLS needs tls_cert_file, tls_key_file and tls_ca_file together (the CA verifies the \
                     other nodes on peer links)"
                        .into(),
                )),
            };
        let provider = provider();
        let certificates = read_certificates("tls_cert_file", cert_path)?;
        let key = read_key(key_path)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|source| TlsError::Rustls { what: "tls_key_file", source })?;
        match CertifiedKey::new(certificates.clone(), signing_key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::KeyMismatch { cert: path_text(cert_path), key: path_text(key_path) });
            }
        }
        let peer_roots = read_roots("tls_ca_file", ca_path)?;
        let client_roots = config
            .tls_client_ca_file
            .as_deref()
            .map(|path| read_roots("tls_client_ca_file", path))
            .transpose()?;

        let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
                      what: &'static str|
         -> Result<Arc<ServerConfig>, TlsError> {
            let rustls = |source| TlsError::Rustls { what, source };
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(rustls)?;
            let builder = match verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier),
                None => builder.with_no_client_auth(),
            };
            let config = builder.with_single_cert(certificates.clone(), key.clone_key()).map_err(rustls)?;
            Ok(Arc::new(config))
        };
        let client_verifier = |roots: Arc<RootCertStore>, what: &'static str| {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| TlsError::Rustls { what, source: rustls::Error::General(error.to_string()) })
        };
        let client_ports_config = server(
            client_roots.map(|roots| client_verifier(roots, "tls_client_ca_file")).transpose()?,
            "client ports",
        )?;
        let peer_port = TlsAcceptor::from(server(
            Some(client_verifier(peer_roots.clone(), "tls_ca_file")?),
            "peer port",
        )?);
        let server_verifier = WebPkiServerVerifier::builder_with_provider(peer_roots, provider.clone())
            .build()
            .map_err(|error| TlsError::Rustls {
                what: "tls_ca_file",
                source: rustls::Error::General(error.to_string()),
            })?;
        let links = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls { what: "peer links", source })?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(certificates.clone(), key.clone_key())
            .map_err(|source| TlsError::Rustls { what: "peer links", source })?;
        Ok(Some(TlsSettings {
            client_ports: TlsAcceptor::from(client_ports_config.clone()),
            client_ports_config,
            peer_port,
            peer_links: TlsConnector::from(Arc::new(links)),
        }))
    }

    /// The server configuration of the metrics port: the client ports' (the node's certificate,
    /// and client certificates only when `tls_client_ca_file` is set).
    pub fn metrics_port(&self) -> Arc<ServerConfig> {
        self.client_ports_config.clone()
    }

    /// Handshakes with a client on a client port (native, shard or RESP).
    pub async fn accept_client(
        &self,
        stream: TcpStream,
        timeout: Duration,
        stop: &StopSignal,
    ) -> Option<Stream> {
        accept(&self.client_ports, stream, timeout, stop).await
    }

    /// Handshakes with another node on the peer port; its certificate must verify.
    pub async fn accept_peer(
        &self,
        stream: TcpStream,
        timeout: Duration,
        stop: &StopSignal,
    ) -> Option<Stream> {
        accept(&self.peer_port, stream, timeout, stop).await
    }

    /// Handshakes, as a client, with the node whose peer port is `address`, presenting this
    /// node's certificate and verifying the remote one for the address's IP.
    pub async fn connect_peer(&self, stream: TcpStream, address: SocketAddr) -> io::Result<Stream> {
        let name = ServerName::IpAddress(address.ip().into());
        let tls = self.peer_links.connect(name, PolledStream::new(stream)).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

/// Handshakes failed or timed out since the process started.
static HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);

/// How many TLS handshakes the node's ports refused or gave up on so far, in this process.
pub fn handshakes_failed() -> u64 {
    HANDSHAKES_FAILED.load(Ordering::Relaxed)
}

fn count_failure(peer: Option<SocketAddr>, reason: &str) {
    let total = HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed) + 1;
    if total.is_power_of_two() {
        info!(failed = total, ?peer, "TLS handshakes failed: {reason}");
    } else {
        debug!(failed = total, ?peer, "a TLS handshake failed: {reason}");
    }
}

async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    stop: &StopSignal,
) -> Option<Stream> {
    let peer = stream.peer_addr().ok();
    let handshake = async { Some(acceptor.accept(PolledStream::new(stream)).await) };
    let gave_up = async {
        or(glommio::timer::sleep(timeout), stop.wait()).await;
        None
    };
    match or(handshake, gave_up).await {
        Some(Ok(tls)) => Some(Stream::Tls(Box::new(tls.into()))),
        Some(Err(error)) => {
            count_failure(peer, &error.to_string());
            None
        }
        None => {
            count_failure(peer, "the handshake did not finish within frame_timeout_ms");
            None
        }
    }
}

/// A connection, with or without TLS, read through the shard's epoll set while the shard is
/// busy (see `ringkv_readiness`).
pub enum Stream {
    Plain(PolledStream),
    Tls(Box<futures_rustls::TlsStream<PolledStream>>),
}

impl Stream {
    /// A connection without TLS.
    pub fn plain(stream: TcpStream) -> Self {
        Stream::Plain(PolledStream::new(stream))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream.get_ref(),
            Stream::Tls(tls) => tls.get_ref().0.get_ref(),
        }
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr().map_err(io::Error::from)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr().map_err(io::Error::from)
    }

    /// Turns Nagle's algorithm off (or on).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on).map_err(io::Error::from)
    }
}

/// A connection accepted on a client port, after the TLS handshake when `tls` is set; `None`
/// when the handshake failed, timed out or the shard stopped (the socket is closed).
pub async fn client_stream(
    stream: TcpStream,
    tls: Option<&TlsSettings>,
    timeout: Duration,
    stop: &StopSignal,
) -> Option<Stream> {
    match tls {
        None => Some(Stream::plain(stream)),
        Some(tls) => tls.accept_client(stream, timeout, stop).await,
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_close(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_close(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_close(context),
        }
    }
}
