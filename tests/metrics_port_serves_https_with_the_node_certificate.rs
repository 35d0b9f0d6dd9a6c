//! With TLS on, the metrics port speaks HTTPS with the node's certificate: a client that trusts
//! the cluster's CA and checks the certificate for 127.0.0.1 scrapes it (with the bearer token
//! of the configuration file), a scrape without the token is refused 401 inside TLS, and a
//! plaintext HTTP request gets no metrics.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::metrics::{exchange, metrics_body, parse, total};
use common::tls::Authority;
use common::{Server, LISTENER, SHARDS};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

const TOKEN: &str = "https-metrics-token-0123456789";

/// `GET /metrics` over TLS, trusting `ca_file` and checking the certificate for 127.0.0.1.
fn https_get(port: u16, ca_file: &Path, headers: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    exchange(&mut stream, headers)
}

#[test]
fn metrics_port_serves_https_with_the_node_certificate() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let authority = Authority::new(root.path(), "cluster");
    let identity = authority.issue(root.path(), "node");
    let config = root.path().join("node.toml");
    std::fs::write(&config, format!("metrics_token = \"{TOKEN}\"\n")).unwrap();
    let mut args = identity.serve_args();
    args.extend([
        "--config".to_string(),
        config.display().to_string(),
        "--metrics-listen".to_string(),
        LISTENER.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(&root.path().join("data"), &args);
    let metrics_port = server.listener_port(0);

    let served = https_get(metrics_port, &identity.ca_file, &format!("Authorization: Bearer {TOKEN}\r\n"));
    let samples = parse(&metrics_body(&served));
    assert_eq!(total(&samples, "ringkv_shard_figures_available", &[]), SHARDS as u64);

    let refused = https_get(metrics_port, &identity.ca_file, "");
    assert!(refused.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{refused}");
    assert!(refused.contains("\r\nWWW-Authenticate: Bearer "), "{refused}");

    // Plain HTTP to the TLS port: the handshake fails and no figure is ever sent.
    let mut plain = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    plain
        .write_all(format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("HTTP/1.1 200") && !answer.contains("ringkv_"), "{answer}");
    drop(server);
}
