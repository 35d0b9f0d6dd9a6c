//! The `/metrics` endpoint: a small HTTP/1.x server on one ordinary thread of the node, apart
//! from the shards' executors, answering each scrape with [`super::render`] of every shard and
//! the figures each shard answers with at that moment.
//!
//! ```text
//!  accept ─▶ TLS handshake (when the node has TLS) ─▶ request head ─▶ bearer token (when set)
//!     ├─ missing or wrong token ─▶ 401, WWW-Authenticate: Bearer
//!     └─ GET /metrics ─▶ ask every shard for its figures ─▶ wait (FIGURES_TIMEOUT at most)
//!                      ─▶ render ─▶ 200 text/plain; version=0.0.4
//! ```
//!
//! Scrapes are served one at a time, each connection closed after its answer. A client gets
//! [`IO_TIMEOUT`] in all to finish its TLS handshake and send its request head, however it
//! spreads its bytes, and [`IO_TIMEOUT`] again to read the answer; shards get
//! [`FIGURES_TIMEOUT`] to answer. A stuck scraper or shard therefore delays the next scrape by
//! at most `2 × IO_TIMEOUT + FIGURES_TIMEOUT`. A request head longer than [`REQUEST_BYTES_MAX`]
//! is refused.
//!
//! The token is compared as a SHA-256 digest with [`subtle`]'s constant-time equality, so the
//! time a check takes says nothing about how much of a guess matched, nor about its length.
//!
//! A token from a file is read again whenever the file changes (its modification time, size or
//! inode), checked before each request, so a token is rotated by rewriting or replacing the
//! file, without a restart. A file that changes into something unusable (missing, empty, too
//! short) is logged once and leaves the previous token in force.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use super::figures::FiguresAsker;
use super::{FiguresUnavailable, ShardFigures, ShardMetrics};
use crate::auth::Secret;
use crate::error::ShardError;

/// Bytes of request head read at most.
pub const REQUEST_BYTES_MAX: usize = 8 << 10;

/// How long a scraper may take to hand over its request (TLS handshake included), and again to
/// read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a scrape waits for the shards' figures; a shard that has not answered by then is
/// left out of that scrape.
pub const FIGURES_TIMEOUT: Duration = Duration::from_secs(2);

/// Who may scrape, and over what.
#[derive(Clone, Default)]
pub struct Access {
    /// Serve HTTPS with this configuration (the node's client-port TLS settings).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require `Authorization: Bearer <token>` on every request.
    pub token: Option<Secret>,
    /// The file `token` came from, read again when it changes.
    pub token_file: Option<PathBuf>,
}

/// One shard as the endpoint sees it: the counters it reads directly, and where it asks for
/// the figures the shard alone can read.
pub struct ShardSource {
    pub metrics: Arc<ShardMetrics>,
    pub figures: FiguresAsker,
}

/// The running endpoint; stops when dropped.
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `address` and serves `/metrics` of `shards` (shard i at index i) on a thread.
    pub fn start(address: SocketAddr, shards: Vec<ShardSource>, access: Access) -> Result<Self, ShardError> {
        let listener = TcpListener::bind(address).map_err(|source| ShardError::Listen { address, source })?;
        let address = listener.local_addr().map_err(|source| ShardError::Listen { address, source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let scheme = if access.tls.is_some() { "https" } else { "http" };
        let token_required = access.token.is_some();
        let token = access.token.as_ref().map(|token| BearerToken {
            digest: digest(token.expose()),
            file: access.token_file.clone().map(|path| WatchedFile { path, seen: None }),
        });
        let mut endpoint = Endpoint { token, shards };
        let tls = access.tls;
        let thread = thread::Builder::new()
            .name("ringkv-metrics".into())
            .spawn(move || {
                let mut refused = 0u64;
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let stream = match stream {
                        Ok(stream) => stream,
                        Err(error) => {
                            warn!(%error, "accepting a metrics scrape failed");
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let peer = stream.peer_addr().ok();
                    match endpoint.serve(stream, tls.as_ref()) {
                        Ok(Served::Answered) => {}
                        Ok(Served::Refused) => {
                            refused += 1;
                            // Logged at powers of two, so a scraper with a wrong token cannot
                            // fill the log.
                            if refused.is_power_of_two() {
                                warn!(
                                    refused,
                                    ?peer,
                                    "metrics scrapes refused: missing or wrong bearer token"
                                );
                            }
                        }
                        Err(error) => debug!(%error, ?peer, "a metrics scrape failed"),
                    }
                }
            })
            .map_err(|source| ShardError::Listen { address, source })?;
        info!(metrics = %address, scheme, token_required, "serving Prometheus metrics at /metrics");
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

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// How a connection ended, when it did not fail.
enum Served {
    /// Answered (metrics, or 404, 405, 431).
    Answered,
    /// Answered 401: no token, or the wrong one.
    Refused,
}

/// What the serving thread owns.
struct Endpoint {
    /// The bearer token, when one is required.
    token: Option<BearerToken>,
    shards: Vec<ShardSource>,
}

/// The bearer token scrapes must present.
struct BearerToken {
    /// Its SHA-256.
    digest: [u8; 32],
    /// The file it comes from, if it does.
    file: Option<WatchedFile>,
}

/// A token file and what it looked like when last read.
struct WatchedFile {
    path: PathBuf,
    /// Its stamp when last read (`None`: it could not be read); nothing before the first read.
    seen: Option<Option<FileStamp>>,
}

/// What tells one version of a file from the next without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path`, or `None` when it cannot be read.
    fn of(path: &std::path::Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp { modified: metadata.modified().ok(), len: metadata.len(), inode: metadata.ino() })
    }
}

impl BearerToken {
    /// Reads the token file again if it changed since it was last read. A file that no longer
    /// holds a usable token is logged once and the token stays as it was.
    fn refresh(&mut self) {
        let Some(file) = &mut self.file else { return };
        let stamp = FileStamp::of(&file.path);
        if file.seen == Some(stamp) {
            return;
        }
        let first = file.seen.is_none();
        file.seen = Some(stamp);
        match crate::config::read_metrics_token_file(&file.path) {
            Ok(token) => {
                let digest = digest(token.expose());
                if digest != self.digest {
                    info!(path = %file.path.display(), "metrics bearer token read again from its changed file");
                    self.digest = digest;
                }
            }
            // At start the node read it, so a failure now means it changed in between.
            Err(error) => warn!(
                %error,
                first,
                "the metrics token file changed and holds no usable token; the previous token stays"
            ),
        }
    }
}

impl Endpoint {
    /// Serves one connection, over TLS when `tls` is set.
    fn serve(&mut self, stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Served> {
        let mut stream = DeadlineStream::new(stream);
        match tls {
            None => self.answer(&mut stream),
            Some(config) => {
                let connection = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let served = self.answer(&mut tls)?;
                tls.conn.send_close_notify();
                tls.flush()?;
                Ok(served)
            }
        }
    }

    /// Reads one request head from `stream` and answers it.
    fn answer<S: Read + Write + Rearm>(&mut self, stream: &mut S) -> io::Result<Served> {
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            if head.len() >= REQUEST_BYTES_MAX {
                respond(stream, "431 Request Header Fields Too Large", &[], "request head too long\n")?;
                return Ok(Served::Answered);
            }
            let read = stream.read(&mut chunk)?;
            if read == 0 {
                return Ok(Served::Answered);
            }
            head.extend_from_slice(&chunk[..read]);
        }
        let mut lines =
            head.split(|&byte| byte == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(|&byte| byte == b' ');
        let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let path = target.split(|&byte| byte == b'?').next().unwrap_or_default();
        if let Some(token) = &mut self.token {
            token.refresh();
            let expected = &token.digest;
            let presented = lines.take_while(|line| !line.is_empty()).find_map(bearer_token);
            let matches = presented.is_some_and(|token| bool::from(digest(token).ct_eq(expected)));
            if !matches {
                // RFC 6750 §3: a request without credentials gets the bare challenge; one with
                // the wrong token is told it is invalid.
                let challenge = match presented {
                    None => "WWW-Authenticate: Bearer realm=\"ringkv metrics\"",
                    Some(_) => "WWW-Authenticate: Bearer realm=\"ringkv metrics\", error=\"invalid_token\"",
                };
                stream.rearm();
                respond(stream, "401 Unauthorized", &[challenge], "a bearer token is required\n")?;
                return Ok(Served::Refused);
            }
        }
        match (method, path) {
            (b"GET", b"/metrics") => {
                let body = self.render();
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.rearm();
                stream.write_all(header.as_bytes())?;
                stream.write_all(body.as_bytes())?;
                stream.flush()?;
            }
            (b"GET", _) => respond(stream, "404 Not Found", &[], "ringkv serves its metrics at /metrics\n")?,
            _ => respond(stream, "405 Method Not Allowed", &[], "only GET /metrics is served\n")?,
        }
        Ok(Served::Answered)
    }

    /// Asks every shard for its figures, then waits for all of them up to one deadline, and
    /// renders.
    fn render(&self) -> String {
        let deadline = Instant::now() + FIGURES_TIMEOUT;
        let asked: Vec<_> = self.shards.iter().map(|shard| shard.figures.ask()).collect();
        let figures: Vec<Result<ShardFigures, FiguresUnavailable>> = asked
            .into_iter()
            .enumerate()
            .map(|(shard, asked)| {
                asked.and_then(|pending| pending.wait(deadline)).inspect_err(
                    |reason| warn!(shard, %reason, "a shard's storage and cluster figures are missing from a scrape"),
                )
            })
            .collect();
        let metrics: Vec<Arc<ShardMetrics>> = self.shards.iter().map(|shard| shard.metrics.clone()).collect();
        super::render(&metrics, &figures)
    }
}

/// The token of an `Authorization: Bearer <token>` header line; the header name and the scheme
/// are case-insensitive (RFC 9110 §5.1, §11.1).
fn bearer_token(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&byte| byte == b':')?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !name.eq_ignore_ascii_case(b"authorization") {
        return None;
    }
    let value = value.trim_ascii();
    let (scheme, token) = value.split_at(value.iter().position(|&byte| byte == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

fn respond<S: Write>(stream: &mut S, status: &str, headers: &[&str], body: &str) -> io::Result<()> {
    let mut response = format!("HTTP/1.1 {status}\r\n");
    for header in headers {
        response.push_str(header);
        response.push_str("\r\n");
    }
    response.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// Gives the connection a fresh [`IO_TIMEOUT`], for the answer.
trait Rearm {
    fn rearm(&mut self);
}

/// A TCP connection whose reads and writes all end by one deadline, however the peer spreads
/// its bytes: each blocking call may wait only for the time left.
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn new(stream: TcpStream) -> Self {
        DeadlineStream { stream, deadline: Instant::now() + IO_TIMEOUT }
    }

    fn time_left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the scrape ran out of time"));
        }
        Ok(left)
    }
}

impl Rearm for DeadlineStream {
    fn rearm(&mut self) {
        self.deadline = Instant::now() + IO_TIMEOUT;
    }
}

impl Rearm for rustls::StreamOwned<rustls::ServerConnection, DeadlineStream> {
    fn rearm(&mut self) {
        self.sock.rearm();
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.time_left()?))?;
        self.stream.read(buffer)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.time_left()?))?;
        self.stream.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::figures;
    use crate::metrics::{OperationKind, RequestOutcome};

    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// A shard whose figures are never answered: its end of the channel is gone, as when the
    /// shard has stopped, so scrapes see it unavailable at once.
    fn stopped_shard(metrics: Arc<ShardMetrics>) -> ShardSource {
        let (figures, inbox) = figures::channel(1);
        drop(inbox);
        ShardSource { metrics, figures }
    }

    #[test]
    fn serves_metrics_and_refuses_other_paths() {
        let shard = Arc::new(ShardMetrics::default());
        shard.request(OperationKind::Get, RequestOutcome::NotFound, Duration::from_micros(5));
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            vec![stopped_shard(shard)],
            Access::default(),
        )
        .unwrap();
        let response = get(server.address(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"));
        assert!(response
            .contains("ringkv_requests_total{shard=\"0\",operation=\"get\",outcome=\"not_found\"} 1\n"));
        assert!(response.contains("ringkv_shard_figures_available{shard=\"0\"} 0\n"), "{response}");
        assert!(get(server.address(), "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(server.address(), "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // Exactly the bound and no end of head: the server reads it all, then refuses.
        let mut long = "GET /metrics HTTP/1.1\r\nX: ".to_string();
        long.push_str(&"a".repeat(REQUEST_BYTES_MAX - long.len()));
        assert!(get(server.address(), &long).starts_with("HTTP/1.1 431"));
        drop(server);
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("metrics-token");
        let first = "first-token-of-enough-bytes";
        std::fs::write(&path, format!("{first}\n")).unwrap();
        let access = Access {
            tls: None,
            token: Some(crate::config::read_metrics_token_file(&path).unwrap()),
            token_file: Some(path.clone()),
        };
        let shard = Arc::new(ShardMetrics::default());
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), vec![stopped_shard(shard)], access).unwrap();
        let status = |token: &str| {
            let answer = get(
                server.address(),
                &format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"),
            );
            answer.split(' ').nth(1).unwrap_or_default().to_string()
        };
        assert_eq!(status(first), "200");

        // Rotated the usual way: a new file renamed over the old one.
        let second = "second-token-of-enough-bytes";
        let staged = directory.path().join("metrics-token.new");
        std::fs::write(&staged, second).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        assert_eq!(status(first), "401");
        assert_eq!(status(second), "200");

        // Rewritten in place.
        let third = "the-third-token-of-enough-bytes";
        std::fs::write(&path, third).unwrap();
        assert_eq!(status(second), "401");
        assert_eq!(status(third), "200");

        // A file that no longer holds a usable token, or is gone, leaves the last one in force.
        std::fs::write(&path, "short").unwrap();
        assert_eq!(status("short"), "401");
        assert_eq!(status(third), "200");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(status(third), "200");
        // And a usable one again takes over.
        let fourth = "fourth-token-of-enough-bytes!";
        std::fs::write(&path, fourth).unwrap();
        assert_eq!(status(third), "401");
        assert_eq!(status(fourth), "200");
    }

    #[test]
    fn a_token_once_set_is_required_on_every_request() {
        let token = "a-token-of-enough-bytes";
        let access = Access { tls: None, token: Some(Secret::new(token)), token_file: None };
        let shard = Arc::new(ShardMetrics::default());
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), vec![stopped_shard(shard)], access).unwrap();
        let scrape =
            |headers: &str| get(server.address(), &format!("GET /metrics HTTP/1.1\r\n{headers}\r\n"));

        let missing = scrape("Host: x\r\n");
        assert!(missing.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{missing}");
        assert!(missing.contains("\r\nWWW-Authenticate: Bearer realm=\"ringkv metrics\"\r\n"), "{missing}");
        assert!(!missing.contains("ringkv_requests_total"), "{missing}");
        for wrong in [
            "Authorization: Bearer a-token-of-enough-bytez\r\n",
            "Authorization: Bearer a-token-of-enough-bytes-and-more\r\n",
            "Authorization: Bearer a-token\r\n",
            "Authorization: Basic YS10b2tlbi1vZi1lbm91Z2gtYnl0ZXM=\r\n",
            "X-Authorization: Bearer a-token-of-enough-bytes\r\n",
        ] {
            let refused = scrape(wrong);
            assert!(refused.starts_with("HTTP/1.1 401 "), "{wrong}: {refused}");
            assert!(refused.contains("\r\nWWW-Authenticate: Bearer "), "{wrong}: {refused}");
        }
        assert!(
            scrape("Authorization: Bearer wrong-token-wrong-token\r\n").contains("error=\"invalid_token\"")
        );
        // Other paths are refused without the token too: nothing is served to a stranger.
        assert!(get(server.address(), "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 401 "));

        // Header names and the scheme are case-insensitive.
        for right in
            [format!("Authorization: Bearer {token}\r\n"), format!("authorization:   bearer {token}  \r\n")]
        {
            let served = scrape(&format!("Host: x\r\n{right}"));
            assert!(served.starts_with("HTTP/1.1 200 OK\r\n"), "{right}: {served}");
            assert!(served.contains("ringkv_requests_total"), "{served}");
        }
    }

    #[test]
    fn a_shard_that_never_answers_is_left_out_of_the_scrape_not_waited_for() {
        // Shard 0 answers from its executor; shard 1's queue is there but nothing takes from it,
        // as when its executor is stuck.
        let (answering, inbox) = figures::channel(figures::PENDING_REQUESTS_MAX);
        let (stuck, _never_read) = figures::channel(figures::PENDING_REQUESTS_MAX);
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let shard = thread::spawn(move || {
            ringkv_io::run_local("metrics-http-test", async move {
                let stop = std::rc::Rc::new(crate::StopSignal::new());
                let task = {
                    let stop = stop.clone();
                    glommio::spawn_local(async move {
                        let figures = || ShardFigures {
                            storage: ringkv_storage::EngineStats { flushes: 3, ..Default::default() },
                            background: ringkv_io::executor::BackgroundHeld { holds: 5, held_nanos: 1_000 },
                            ..ShardFigures::default()
                        };
                        inbox.answer_until_stopped(&stop, figures).await;
                    })
                };
                while finished.try_recv().is_err() {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                stop.trigger();
                task.await;
            })
        });
        let sources = vec![
            ShardSource { metrics: Arc::default(), figures: answering },
            ShardSource { metrics: Arc::default(), figures: stuck },
        ];
        let server =
            MetricsServer::start("127.0.0.1:0".parse().unwrap(), sources, Access::default()).unwrap();
        let response = get(server.address(), "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("ringkv_shard_figures_available{shard=\"0\"} 1\n"), "{response}");
        assert!(response.contains("ringkv_shard_figures_available{shard=\"1\"} 0\n"), "{response}");
        assert!(response.contains("ringkv_flushes_total{shard=\"0\"} 3\n"), "{response}");
        assert!(response.contains("ringkv_background_holds_total{shard=\"0\"} 5\n"), "{response}");
        assert!(!response.contains("ringkv_flushes_total{shard=\"1\"}"), "{response}");
        // The counters every shard keeps itself are there for both.
        assert!(response.contains("ringkv_wal_syncs_total{shard=\"1\"} 0\n"), "{response}");
        drop(server);
        done.send(()).unwrap();
        shard.join().unwrap();
    }

    #[test]
    fn a_client_trickling_its_request_is_cut_off_and_the_next_scrape_served() {
        let server = MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            vec![stopped_shard(Arc::default())],
            Access::default(),
        )
        .unwrap();
        // One byte at a time, never ending its head: each read succeeds well within any
        // per-read timeout, so only a deadline over the whole request ends it.
        let mut trickler = TcpStream::connect(server.address()).unwrap();
        trickler.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
        let trickling = thread::spawn(move || {
            for _ in 0..6_000 {
                if trickler.write_all(b"a").is_err() {
                    return true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            false
        });
        // Queued behind the trickler on the one serving thread.
        let response = get(server.address(), "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(trickling.join().unwrap(), "the server closed the trickling connection");
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization_headers_only() {
        assert_eq!(bearer_token(b"Authorization: Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"AUTHORIZATION:BEARER   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Authorization: Bearerabc"), None, "the scheme ends at a space");
        assert_eq!(bearer_token(b"Authorization: Basic abc"), None);
        assert_eq!(bearer_token(b"Authorization: Bearer"), None);
        assert_eq!(bearer_token(b"Host: Bearer abc"), None);
    }
}
