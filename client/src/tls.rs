//! [`TlsOptions`]: talking to a node whose ports speak TLS (rustls, ring provider, TLS 1.3).
//!
//! The client verifies the node's certificate against the CA certificates it is given. The
//! name checked is the IP address of the port it connects to (nodes hand out shard ports as
//! addresses), unless [`TlsOptions::with_server_name`] names one to check on every connection.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why TLS options could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    /// The server name is neither a DNS name nor an IP address.
    #[error("TLS server name {name:?} is neither a DNS name nor an IP address")]
    ServerName { name: String },
    /// rustls refused the certificates or keys.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How a client speaks TLS to the nodes. Cheap to clone.
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("TlsOptions").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl PartialEq for TlsOptions {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for TlsOptions {}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |reason: String| TlsError::Pem { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|error| pem(error.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem(format!("is not valid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(pem("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certificates)
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file at `ca_file`, and no other.
    pub fn from_ca_file(ca_file: impl AsRef<Path>) -> Result<TlsOptions, TlsError> {
        Self::with_identity(ca_file, None)
    }

    /// Like [`TlsOptions::from_ca_file`], and presents a client certificate (PEM chain and
    /// key), for nodes that ask for one (`tls_client_ca_file`).
    pub fn from_ca_file_with_client_certificate(
        ca_file: impl AsRef<Path>,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<TlsOptions, TlsError> {
        Self::with_identity(ca_file, Some((cert_file.as_ref(), key_file.as_ref())))
    }

    fn with_identity(
        ca_file: impl AsRef<Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<TlsOptions, TlsError> {
        let ca_file = ca_file.as_ref();
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(ca_file)? {
            roots.add(certificate).map_err(|error| TlsError::Pem {
                path: ca_file.display().to_string(),
                reason: format!("holds a certificate that cannot be a trust anchor: {error}"),
            })?;
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let certificates = read_certificates(cert_file)?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|error| TlsError::Pem {
                    path: key_file.display().to_string(),
                    reason: format!("holds no usable PEM private key: {error}"),
                })?;
                builder.with_client_auth_cert(certificates, key)?
            }
        };
        Ok(TlsOptions { config: Arc::new(config), server_name: None })
    }

    /// Checks `name` (a DNS name or an IP address) in every node's certificate, instead of the
    /// IP address connected to.
    pub fn with_server_name(mut self, name: &str) -> Result<TlsOptions, TlsError> {
        let parsed = ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::ServerName { name: name.to_string() })?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The name to verify in the certificate of the node at `address`.
    pub fn server_name(&self, address: SocketAddr) -> ServerName<'static> {
        self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(address.ip().into()))
    }

    /// Runs the handshake on a blocking socket and returns the stream to read and write
    /// plaintext through: for programs that speak to a node's port directly.
    pub fn connect_std(
        &self,
        mut stream: std::net::TcpStream,
        address: SocketAddr,
    ) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
        let connection = self.handshake_blocking(&mut stream, address).map_err(explain)?;
        Ok(rustls::StreamOwned::new(connection, stream))
    }

    /// Runs the handshake on a blocking socket; the connection is ready to use after it.
    pub(crate) fn handshake_blocking(
        &self,
        stream: &mut std::net::TcpStream,
        address: SocketAddr,
    ) -> io::Result<rustls::ClientConnection> {
        let mut connection = rustls::ClientConnection::new(self.config.clone(), self.server_name(address))
            .map_err(io::Error::other)?;
        while connection.is_handshaking() {
            connection.complete_io(stream)?;
        }
        // The last handshake message may still be buffered.
        while connection.wants_write() {
            connection.write_tls(stream)?;
        }
        Ok(connection)
    }
}

/// Turns an I/O error from a handshake into one that says what went wrong in words an operator
/// acts on (rustls reports certificate problems as invalid data).
pub(crate) fn explain(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::InvalidData {
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS handshake failed: {error}"))
    } else {
        error
    }
}
