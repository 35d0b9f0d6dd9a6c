//! The `/metrics` endpoint: a small HTTP/1.x server on one ordinary thread of the node, apart
//! from the shards' executors, answering each scrape with [`super::render`] of every shard.
//!
//! Scrapes are served one at a time, each connection closed after its answer; a client gets
//! [`IO_TIMEOUT`] to send its request and read the answer, so a stuck scraper delays others by
//! at most that. A request head longer than [`REQUEST_BYTES_MAX`] is refused.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::ShardMetrics;
use crate::error::ShardError;

/// Bytes of request head read at most.
pub const REQUEST_BYTES_MAX: usize = 8 << 10;

/// How long a scraper may take to send its request, and to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The running endpoint; stops when dropped.
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `address` and serves `/metrics` of `shards` (shard i at index i) on a thread.
    pub fn start(address: SocketAddr, shards: Vec<Arc<ShardMetrics>>) -> Result<Self, ShardError> {
        let listener = TcpListener::bind(address).map_err(|source| ShardError::Listen { address, source })?;
        let address = listener.local_addr().map_err(|source| ShardError::Listen { address, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::Builder::new()
            .name("ringkv-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    match stream {
                        Ok(stream) => {
                            if let Err(error) = answer(stream, &shards) {
                                debug!(%error, "a metrics scrape failed");
                            }
                        }
                        Err(error) => {
                            warn!(%error, "accepting a metrics scrape failed");
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .map_err(|source| ShardError::Listen { address, source })?;
        info!(metrics = %address, "serving Prometheus metrics at /metrics");
        Ok(MetricsServer { address, stop, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept with a connection of our own; the loop sees the flag and ends.
        let mut wake = self.address;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => [127, 0, 0, 1].into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woken = TcpStream::connect_timeout(&wake, IO_TIMEOUT).is_ok();
        if let Some(thread) = self.thread.take() {
            if woken {
                let _ = thread.join();
            }
        }
    }
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, shards: &[Arc<ShardMetrics>]) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() >= REQUEST_BYTES_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "request head too long\n");
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = head.split(|&byte| byte == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&byte| byte == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|&byte| byte == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = super::render(shards);
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(header.as_bytes())?;
            stream.write_all(body.as_bytes())
        }
        (b"GET", _) => respond(&mut stream, "404 Not Found", "ringkv serves its metrics at /metrics\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", "only GET /metrics is served\n"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{OperationKind, RequestOutcome};

    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_metrics_and_refuses_other_paths() {
        let shard = Arc::new(ShardMetrics::default());
        shard.request(OperationKind::Get, RequestOutcome::NotFound, Duration::from_micros(5));
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), vec![shard]).unwrap();
        let response = get(server.address(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"));
        assert!(response
            .contains("ringkv_requests_total{shard=\"0\",operation=\"get\",outcome=\"not_found\"} 1\n"));
        assert!(get(server.address(), "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(server.address(), "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // Exactly the bound and no end of head: the server reads it all, then refuses.
        let mut long = "GET /metrics HTTP/1.1\r\nX: ".to_string();
        long.push_str(&"a".repeat(REQUEST_BYTES_MAX - long.len()));
        assert!(get(server.address(), &long).starts_with("HTTP/1.1 431"));
        drop(server);
    }
}
