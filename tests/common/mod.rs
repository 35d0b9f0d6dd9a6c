//! Test support: starts the real `ringkv` binary on free ports and talks to it with a tiny
//! blocking client over `std::net::TcpStream` and `ringkv-wire`.
//!
//! Nothing here measures time. Waits (for the server to come up, for a reply) have generous
//! deadlines that only turn a hang into a failure with the server's log attached.

#![allow(dead_code)]

pub mod async_client;
pub mod bench;
pub mod cluster;
pub mod healing;
pub mod metrics;
pub mod resp;
pub mod tls;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use ringkv_wire::generated as fb;
use ringkv_wire::{
    encode_request, parse_response, Command as WireCommand, Consistency, Expected, Failure, FrameDecoder,
    Operation, Outcome, Reply, Request, Response, Topology,
};

/// Tests that may run at once. Most start one or several nodes and spend their time waiting on
/// them (the whole binary keeps about half a core busy), so two at a time finish the suite in
/// two thirds of the time even on a two-core machine with a third process burning a core; more
/// than two would let a machine with many test threads start dozens of nodes at once.
const TESTS_AT_ONCE: usize = 2;

/// Holds the integration tests to [`TESTS_AT_ONCE`] at a time, for the whole test: a slot is
/// taken before the test's first node starts and given back when the guard drops, also when
/// the test panics.
pub fn test_slot() -> TestSlot {
    let mut running = TEST_SLOTS.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    while *running == TESTS_AT_ONCE {
        running = TEST_SLOTS.freed.wait(running).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    *running += 1;
    TestSlot
}

struct TestSlots {
    running: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

static TEST_SLOTS: TestSlots =
    TestSlots { running: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() };

/// One of the [`TESTS_AT_ONCE`] slots, given back on drop.
#[must_use = "the slot is given back as soon as it is dropped"]
pub struct TestSlot;

impl Drop for TestSlot {
    fn drop(&mut self) {
        *TEST_SLOTS.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) -= 1;
        TEST_SLOTS.freed.notify_one();
    }
}

/// Shards every test server runs: the machine has two cores.
pub const SHARDS: usize = 2;

/// Longest wait for the server to start or stop, or for one reply.
const DEADLINE: Duration = Duration::from_secs(60);

/// Ports one server takes: the client port, one per shard, and one peer port per shard.
pub const PORTS_PER_SERVER: usize = 1 + 2 * SHARDS;

/// Ports handed out in this process; each server takes PORTS_PER_SERVER consecutive ports.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Test ports stay in `[PORTS_START, PORTS_END)`, below the kernel's ephemeral range (32768 and
/// up by default). A port in that range can be the one the kernel picks as the local port of a
/// connection to it: polling a server that is not listening yet then connects the socket to
/// itself, and the poll reads back its own request as the answer.
const PORTS_START: u16 = 10_000;
const PORTS_END: u16 = 32_000;

/// A port range start that differs between test processes, so that test binaries running at
/// the same time (other agents, CI) rarely collide; collisions are detected and retried anyway.
fn next_port_block(stride: usize) -> u16 {
    let stride = stride as u16;
    if NEXT_PORT.load(Ordering::SeqCst) == 0 {
        let start = PORTS_START + (std::process::id() % 1000) as u16 * 16;
        let _ = NEXT_PORT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    }
    loop {
        let port = NEXT_PORT.fetch_add(stride, Ordering::SeqCst);
        if port <= PORTS_END - stride {
            return port;
        }
        let _ = NEXT_PORT.compare_exchange(port + stride, PORTS_START, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A free loopback port, for a server started with [`run_to_exit`] (a running [`Server`] gets its
/// listener ports through [`LISTENER_PORT`]). It takes a whole server's block from the same
/// counter as the servers, so it can serve as a client port whose shard ports are free too, and
/// like them it lies below the kernel's ephemeral range (see [`PORTS_START`]).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = next_port_block(PORTS_PER_SERVER);
        if ports_free(&[port]) {
            return port;
        }
    }
    panic!("no free port for a test listener");
}

/// Whether `ports` are all free right now.
fn ports_free(ports: &[u16]) -> bool {
    ports.iter().all(|&port| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok())
}

/// In the extra arguments of [`Server::start_with`], stands for a port the harness picks with the
/// server's own ports, afresh on each start attempt; the test reads it back with
/// [`Server::listener_port`]. A port picked once outside the retries would doom every retry if
/// another process took it.
pub const LISTENER_PORT: &str = "{listener-port}";

/// A loopback address on a [`LISTENER_PORT`].
pub const LISTENER: &str = "127.0.0.1:{listener-port}";

/// A running `ringkv serve`.
pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub client_port: u16,
    /// The ports given for [`LISTENER_PORT`]s, in the order they appear in the extra arguments.
    pub listener_ports: Vec<u16>,
    pub extra_args: Vec<String>,
}

/// Arguments every test server gets: small memory, two shards.
fn base_args(data_dir: &Path, client_port: u16) -> Vec<String> {
    [
        "serve",
        "--data-dir",
        data_dir.to_str().expect("UTF-8 temporary path"),
        "--listen",
        &format!("127.0.0.1:{client_port}"),
        "--shards",
        &SHARDS.to_string(),
        "--peer-listen",
        &format!("127.0.0.1:{}", client_port + 1 + SHARDS as u16),
        "--io-memory-bytes",
        "262144",
        "--memtable-bytes-max",
        "1048576",
        "--block-cache-bytes",
        "1048576",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

fn spawn(args: &[String], log_path: &Path) -> Child {
    let log = File::options().create(true).append(true).open(log_path).expect("server log file");
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env("RINGKV_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting the ringkv binary")
}

impl Server {
    /// Starts a server on fresh ports with its data in `data_dir` (created if missing; the log
    /// goes next to it), and waits until every port answers a ping.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// Like [`Server::start`], with extra command-line flags ([`LISTENER_PORT`] in them is replaced).
    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> Server {
        let listeners = extra_args.iter().map(|arg| arg.matches(LISTENER_PORT).count()).sum::<usize>();
        let mut last_log = String::new();
        for _attempt in 0..20 {
            let client_port = next_port_block(PORTS_PER_SERVER + listeners);
            let ports: Vec<u16> =
                (0..(PORTS_PER_SERVER + listeners) as u16).map(|offset| client_port + offset).collect();
            if !ports_free(&ports) {
                continue;
            }
            let listener_ports = ports[PORTS_PER_SERVER..].to_vec();
            let mut unused = listener_ports.iter();
            let extra_args = extra_args
                .iter()
                .map(|arg| {
                    let mut arg = arg.to_string();
                    while arg.contains(LISTENER_PORT) {
                        let port = unused.next().expect("one port per listener");
                        arg = arg.replacen(LISTENER_PORT, &port.to_string(), 1);
                    }
                    arg
                })
                .collect();
            let mut server = Server {
                child: None,
                data_dir: data_dir.to_path_buf(),
                log_path: log_path_for(data_dir),
                client_port,
                listener_ports,
                extra_args,
            };
            let log_start = server.log().len();
            if server.launch() {
                return server;
            }
            // Lost a race for a port (the log says so); try another block.
            last_log = server.log().get(log_start..).unwrap_or_default().to_string();
            if !last_log.contains("listening on") {
                panic!("server failed to start:\n{last_log}");
            }
        }
        panic!("no free ports for a test server; the last attempt's log:\n{last_log}");
    }

    /// The port given for the `index`th [`LISTENER_PORT`] in the extra arguments.
    pub fn listener_port(&self, index: usize) -> u16 {
        self.listener_ports[index]
    }

    /// Starts the binary on this server's ports and data directory; true once every port
    /// answers, false if the process exited first.
    fn launch(&mut self) -> bool {
        let mut args = base_args(&self.data_dir, self.client_port);
        args.extend(self.extra_args.iter().cloned());
        self.child = Some(spawn(&args, &self.log_path));
        let deadline = Instant::now() + DEADLINE;
        let mut waiting = self.ports();
        // A TLS port answers no plaintext ping: there, accepting a connection is the sign.
        let tls = self.extra_args.iter().any(|arg| arg == "--tls-cert-file");
        let ready = |port: u16| {
            if tls {
                TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            } else {
                pings(port)
            }
        };
        while !waiting.is_empty() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                eprintln!("server exited during start-up with {status}");
                return false;
            }
            assert!(Instant::now() < deadline, "server did not come up:\n{}", self.log());
            waiting.retain(|&port| !ready(port));
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Starts the server again on the same ports and data directory (after a stop or kill).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        assert!(self.launch(), "server failed to restart:\n{}", self.log());
    }

    /// The client port and every shard port.
    pub fn ports(&self) -> Vec<u16> {
        (0..=SHARDS as u16).map(|offset| self.client_port + offset).collect()
    }

    /// The port shard `shard_id` alone listens on.
    pub fn shard_port(&self, shard_id: u32) -> u16 {
        self.client_port + 1 + shard_id as u16
    }

    /// A client on the shared client port.
    pub fn client(&self) -> Client {
        Client::connect(self.client_port)
    }

    /// A client on shard `shard_id`'s own port.
    pub fn shard_client(&self, shard_id: u32) -> Client {
        Client::connect(self.shard_port(shard_id))
    }

    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of our own child process.
        let sent = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill({signal}) failed");
    }

    /// Sends SIGTERM without waiting; see [`Server::wait_for_exit`].
    pub fn signal_terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_for_exit()
    }

    /// Sends SIGINT and waits for the process to exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal(libc::SIGINT);
        self.wait_for_exit()
    }

    /// Sends SIGKILL and waits for the process to die.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_for_exit();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_path_for(data_dir: &Path) -> PathBuf {
    let name = data_dir.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    data_dir.with_file_name(format!("{name}.log"))
}

/// Runs `ringkv serve` in the foreground with `args` and returns its exit status and output:
/// for start-ups that are expected to fail.
pub fn run_to_exit(args: &[String]) -> (ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env("RINGKV_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("running the ringkv binary");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// The arguments [`Server`] would start a server with, for [`run_to_exit`].
pub fn serve_args(data_dir: &Path, client_port: u16) -> Vec<String> {
    base_args(data_dir, client_port)
}

/// Whether a ping on `port` gets a pong.
fn pings(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    // Connected to itself, not to a server (see PORTS_START).
    if stream.local_addr().ok() == stream.peer_addr().ok() {
        return false;
    }
    let mut client = Client::from_stream(stream);
    client.send(&Request { consistency: None, id: 1, command: WireCommand::Ping });
    matches!(client.receive_or_closed(), Some(Response { id: 1, reply: Reply::Pong }))
}

/// A blocking client for tests: sends requests, reads responses, nothing clever.
pub struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
    builder: FlatBufferBuilder<'static>,
    next_id: u64,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Client::from_stream(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connecting to the server"),
        )
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, decoder: FrameDecoder::new(), builder: FlatBufferBuilder::new(), next_id: 1 }
    }

    /// The socket, for tests that write to it from another thread.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Encodes and sends one request (checked against the limits, like a real client).
    pub fn send(&mut self, request: &Request) {
        let frame = encode_request(&mut self.builder, request).expect("a valid request");
        self.stream.write_all(frame).expect("sending a request");
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("sending bytes");
    }

    /// Sends bytes as they are; false if the server already closed the connection.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Closes the sending side: the server sees end of stream.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutting down the write side");
    }

    /// The next response; `None` when the server closed the connection (cleanly or not).
    pub fn receive_or_closed(&mut self) -> Option<Response> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("the server sent a bad frame") {
                return Some(parse_response(&frame).expect("the server sent a bad response"));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(read) => self.decoder.extend_from_slice(&chunk[..read]),
                Err(error) if error.kind() == ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("reading a response: {error}"),
            }
        }
    }

    /// The next response; panics if the connection closes.
    pub fn receive(&mut self) -> Response {
        self.receive_or_closed().expect("the server closed the connection")
    }

    /// True when the server has closed the connection and sends nothing more.
    pub fn is_closed(&mut self) -> bool {
        self.receive_or_closed().is_none()
    }

    /// Sends `command` and returns its reply, checking the id.
    pub fn call(&mut self, command: WireCommand) -> Reply {
        self.call_at(command, None)
    }

    /// Sends `command` at `consistency` (the node's default when `None`) and returns its reply.
    pub fn call_at(&mut self, command: WireCommand, consistency: Option<Consistency>) -> Reply {
        let id = self.next_id();
        self.send(&Request { consistency, id, command });
        let response = self.receive();
        assert_eq!(response.id, id, "reply to another request: {response:?}");
        response.reply
    }

    /// Runs one operation; its outcome, or the failure.
    pub fn execute(&mut self, operation: Operation) -> Result<Outcome, Failure> {
        self.execute_at(operation, None)
    }

    /// Runs one operation at `consistency`; its outcome, or the failure.
    pub fn execute_at(
        &mut self,
        operation: Operation,
        consistency: Option<Consistency>,
    ) -> Result<Outcome, Failure> {
        match self.call_at(WireCommand::Single(operation), consistency) {
            Reply::Single(outcome) => Ok(outcome),
            Reply::Failed(failure) => Err(failure),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn get(&mut self, key: &[u8]) -> Outcome {
        self.execute(Operation::Get { key: Bytes::copy_from_slice(key) }).expect("get failed")
    }

    /// The value of `key`, if any.
    pub fn get_value(&mut self, key: &[u8]) -> Option<Bytes> {
        match self.get(key) {
            Outcome::Value { value, .. } => Some(value),
            Outcome::NotFound => None,
            other => panic!("unexpected get outcome {other:?}"),
        }
    }

    /// Puts and returns the version.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> u64 {
        self.put_with_ttl(key, value, None)
    }

    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> u64 {
        let operation =
            Operation::Put { key: Bytes::copy_from_slice(key), value: Bytes::copy_from_slice(value), ttl_ms };
        match self.execute(operation).expect("put failed") {
            Outcome::Written { version } => version,
            other => panic!("unexpected put outcome {other:?}"),
        }
    }

    /// Deletes and returns the version.
    pub fn delete(&mut self, key: &[u8]) -> u64 {
        match self.execute(Operation::Delete { key: Bytes::copy_from_slice(key) }).expect("delete failed") {
            Outcome::Written { version } => version,
            other => panic!("unexpected delete outcome {other:?}"),
        }
    }

    pub fn compare_and_swap(&mut self, key: &[u8], expected: Expected, value: &[u8]) -> Outcome {
        self.execute(Operation::CompareAndSwap {
            key: Bytes::copy_from_slice(key),
            expected,
            value: Bytes::copy_from_slice(value),
            ttl_ms: None,
        })
        .expect("compare-and-swap failed")
    }

    pub fn topology(&mut self) -> Topology {
        match self.call(WireCommand::Topology) {
            Reply::Topology(topology) => topology,
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

/// A put frame built without the client-side limit checks, as a misbehaving client would send.
pub fn unchecked_put_frame(id: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let key = builder.create_vector(key);
    let value = builder.create_vector(value);
    let put =
        fb::Put::create(&mut builder, &fb::PutArgs { key: Some(key), value: Some(value), ttl_ms: None });
    let request = fb::Request::create(
        &mut builder,
        &fb::RequestArgs {
            id,
            command_type: fb::Command::Put,
            command: Some(put.as_union_value()),
            consistency: fb::Consistency::Default,
        },
    );
    builder.finish_size_prefixed(request, None);
    builder.finished_data().to_vec()
}

/// A valid request frame, encoded with the checks.
pub fn request_frame(request: &Request) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    encode_request(&mut builder, request).expect("a valid request").to_vec()
}

/// Keys that the server's ring places on shard `shard_id`, `count` of them.
pub fn keys_on_shard(topology: &Topology, shard_id: u32, count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|index| format!("key-{index}").into_bytes())
        .filter(|key| {
            let token = ringkv_shard::token(key);
            topology.shard_for_token(token).map(|shard| shard.shard_id) == Some(shard_id)
        })
        .take(count)
        .collect()
}
