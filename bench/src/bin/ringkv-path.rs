//! `ringkv-path`: the cost of one request on the server's and the client's path, counted rather
//! than timed, so that a change's effect shows through this machine's noise.
//!
//! ```text
//!  server       frames ─▶ FrameDecoder ─▶ Frames::requests ─▶ Handler (engine on an in-memory disk)
//!               ─▶ encode reply            (no sockets, no executor: runs under callgrind)
//!  client       tokio client, P requests in flight ─▶ a running node   (runs under callgrind)
//!  allocations  a node and a tokio client in this process; a counting allocator tells each
//!               thread's heap allocations per request, server shards and client apart
//!  peer         one replicated write's frames: the coordinator encodes a Replicate into a link's
//!               outbox, the replica reads it and encodes its ack, the coordinator reads the ack
//! ```
//!
//! Instructions per request come from running `server` or `client` under
//! `valgrind --tool=callgrind` twice with different `--ops` and dividing the difference of the
//! totals by the difference of the counts (`bench/compare/instructions.sh` does it), so start-up
//! and loading cancel out. glommio's io_uring loop does not run under valgrind, hence the
//! in-process server path and the tokio adapter of the client (it shares the request and reply
//! handling of every adapter).

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use flatbuffers::FlatBufferBuilder;
use futures_lite::future::block_on;
use ringkv_shard::{Handler, HybridClock, Node, NodeConfig, ShardError, SyncSetting};
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::{Engine, EngineOptions, PendingWrite, SyncMode};
use ringkv_wire::response::Reply;
use ringkv_wire::{
    encode_read_reply_into, encode_request_into, encode_response_into, Command, FrameDecoder, FramedRequest,
    Operation, OperationRef, Request, Response, SingleRequest,
};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser)]
#[command(name = "ringkv-path", about = "Counts the work of one request on ringkv's server and client paths")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The server's request path in this process: decode, execute on an engine over an
    /// in-memory disk, encode the reply. No sockets and no executor.
    Server(Load),
    /// The tokio client against a running node (load it first: `ringkv-bench load`).
    Client {
        #[command(flatten)]
        load: Load,
        /// The node's client address.
        #[arg(long, default_value = "127.0.0.1:7379")]
        addr: SocketAddr,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
    },
    /// One replicated write's peer frames, both ends, in this process: Replicate encoded into an
    /// outbox and read back, its ack encoded and read back.
    Peer {
        /// Replicated writes counted.
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// How the frames are encoded: laid out by hand (what links do), or through the
        /// FlatBuffers builder, for comparison.
        #[arg(long, value_enum, default_value_t = PeerEncoder::Hand)]
        encoder: PeerEncoder,
    },
    /// A one-shard node and a tokio client in this process: heap allocations per request on
    /// the shard's thread and on the client's, after a warm-up.
    Allocations {
        #[command(flatten)]
        load: Load,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
        /// Record the call stacks of the shard thread's first N allocations while counting,
        /// and print how many came from where and each call stack, most frequent first (the
        /// recording's own allocations are not counted; recording slows the shard, which can
        /// change how many requests each event-loop turn carries).
        #[arg(long, default_value_t = 0)]
        trace: u64,
        /// Frames shown per recorded call stack, from the allocation upwards.
        #[arg(long, default_value_t = 12)]
        trace_depth: usize,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct Load {
    /// The operation every request carries.
    #[arg(long, value_enum, default_value_t = Op::Get)]
    op: Op,
    /// Requests counted.
    #[arg(long, default_value_t = 100_000)]
    ops: u64,
    /// Keys, `user000000000000` onwards (as `ringkv-bench load` writes them), 100-byte values.
    #[arg(long, default_value_t = 10_000)]
    records: u64,
    /// Server: flush the loaded keys to a table before counting, so that reads go through the
    /// table path (filter, index, block cache, block search) instead of the memtable's.
    #[arg(long)]
    from_tables: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum PeerEncoder {
    Hand,
    Builder,
}

#[derive(Clone, Copy, ValueEnum)]
enum Op {
    Get,
    Put,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Mode::Server(load) => server(load),
        Mode::Client { load, addr, pipeline } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            let client = local
                .block_on(&runtime, ringkv_client::tokio::Client::connect(addr))
                .context("connecting")?;
            let client = Rc::new(client);
            // Routed once, so that the first request's topology fetch is not counted.
            local.block_on(&runtime, run(client.clone(), Load { ops: pipeline as u64, ..load }, pipeline))?;
            counted_client(&runtime, &local, client, load, pipeline.max(1))
        }
        Mode::Allocations { load, pipeline, trace, trace_depth } => {
            allocations(load, pipeline.max(1), trace)?;
            print_traces(trace_depth);
            Ok(())
        }
        Mode::Peer { ops, encoder } => {
            let replicated = counted_peer(ops, encoder)?;
            println!("{replicated} replicated writes encoded, read and acknowledged");
            Ok(())
        }
    }
}

/// The counted part of the peer mode (callgrind's `--toggle-collect=*counted_peer`): `ops`
/// replicated writes of a 16-byte key and a 100-byte value, each a Replicate frame from the
/// coordinator's outbox to the replica and an ack back, through the frame decoder as a link reads
/// them. Returns how many round trips completed.
#[inline(never)]
fn counted_peer(ops: u64, encoder: PeerEncoder) -> anyhow::Result<u64> {
    use ringkv_wire::peer::{PeerEntry, PeerEnvelope, PeerMessage, PeerValue};
    use ringkv_wire::{encode_peer, encode_peer_into, parse_peer_shared};

    let encode = |builder: &mut FlatBufferBuilder<'static>, envelope: &PeerEnvelope, outbox: &mut Vec<u8>| {
        match encoder {
            PeerEncoder::Hand => encode_peer_into(builder, envelope, outbox),
            PeerEncoder::Builder => {
                encode_peer(builder, envelope).map(|frame| outbox.extend_from_slice(frame))
            }
        }
    };
    let value = value(0);
    let keys: Vec<Bytes> = (0..1024).map(key).collect();
    let (mut coordinator_builder, mut replica_builder) = (FlatBufferBuilder::new(), FlatBufferBuilder::new());
    let (mut to_replica, mut to_coordinator) = (Vec::new(), Vec::new());
    let (mut replica_decoder, mut coordinator_decoder) = (FrameDecoder::new(), FrameDecoder::new());
    let mut acknowledged = 0;
    for index in 0..ops {
        let replicate = PeerEnvelope {
            origin_node: 1,
            origin_shard: 0,
            request_id: index,
            message: PeerMessage::Replicate {
                key: keys[(index % 1024) as usize].clone(),
                entry: PeerEntry {
                    version: index << 10,
                    value: PeerValue::Live { data: value.clone(), expires_at_ms: None },
                },
            },
        };
        to_replica.clear();
        encode(&mut coordinator_builder, &replicate, &mut to_replica)?;
        replica_decoder.buffer_mut().extend_from_slice(&to_replica);
        let frame = replica_decoder.next_frame()?.context("a whole Replicate frame")?;
        let received = parse_peer_shared(&frame)?;
        let ack = PeerEnvelope {
            origin_node: 2,
            origin_shard: 0,
            request_id: received.request_id,
            message: PeerMessage::ReplicateAck { result: Ok(()) },
        };
        to_coordinator.clear();
        encode(&mut replica_builder, &ack, &mut to_coordinator)?;
        coordinator_decoder.buffer_mut().extend_from_slice(&to_coordinator);
        let frame = coordinator_decoder.next_frame()?.context("a whole ack frame")?;
        if parse_peer_shared(&frame)?.request_id == index {
            acknowledged += 1;
        }
    }
    Ok(acknowledged)
}

fn key(index: u64) -> Bytes {
    Bytes::from(format!("user{index:012}"))
}

fn value(index: u64) -> Bytes {
    let mut value = vec![b'v'; 100];
    value[..8].copy_from_slice(&index.to_le_bytes());
    Bytes::from(value)
}

/// The keys and one value, made before counting starts so that making them is not counted.
struct Operations {
    op: Op,
    keys: Vec<Bytes>,
    value: Bytes,
}

impl Operations {
    fn new(load: Load) -> Self {
        let operations =
            Operations { op: load.op, keys: (0..load.records.max(1)).map(key).collect(), value: value(0) };
        // A `Bytes` made from a `Vec` allocates its shared header on its first clone: take that
        // first clone now, so the requests counted later clone without allocating.
        operations.keys.iter().chain([&operations.value]).for_each(|bytes| drop(bytes.clone()));
        operations
    }

    /// The `index`th operation, on a key spread over the key space.
    fn get(&self, index: u64) -> Operation {
        let position = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.keys.len() as u64;
        let key = self.keys[position as usize].clone();
        match self.op {
            Op::Get => Operation::Get { key },
            Op::Put => Operation::Put { key, value: self.value.clone(), ttl_ms: None },
        }
    }
}

/// Decodes, executes and answers `load.ops` requests the way a connection does for keys its
/// shard owns: frames arrive in 64 KiB reads, cached reads are answered in place, writes are
/// applied in place and answered once acknowledged (as a connection's committer answers them),
/// replies gather in one outbox that is "sent" (cleared) when it passes 32 KiB.
fn server(load: Load) -> anyhow::Result<()> {
    let options = EngineOptions { sync: SyncMode::Always, ..EngineOptions::default() };
    let engine = block_on(Engine::open(MemDisk::new(), options)).context("opening the engine")?;
    let handler = Handler::new(Rc::new(engine), HybridClock::new(1), ringkv_io::clock::now_ms);
    for index in 0..load.records {
        let put = Operation::Put { key: key(index), value: value(index), ttl_ms: None };
        block_on(handler.execute(put)).map_err(|failure| anyhow::anyhow!("loading: {failure:?}"))?;
    }
    if load.from_tables {
        // A flush caches the blocks it writes, so reads find them without the disk.
        block_on(handler.engine().flush()).context("flushing the loaded keys")?;
    }
    let mut builder = FlatBufferBuilder::new();
    let mut input = BytesMut::new();
    let operations = Operations::new(load);
    for index in 0..load.ops {
        let request =
            Request { id: index + 1, command: Command::Single(operations.get(index)), consistency: None };
        encode_request_into(&mut builder, &request, &mut input)?;
    }
    let answered = counted_server(&handler, &mut builder, &input)?;
    if answered != load.ops {
        bail!("answered {answered} of {} requests", load.ops);
    }
    println!("server path: {answered} requests answered");
    Ok(())
}

/// The counted part of [`server`] (callgrind's `--toggle-collect=*counted_server`).
#[inline(never)]
fn counted_server(
    handler: &Handler<MemDisk>,
    builder: &mut FlatBufferBuilder<'static>,
    input: &[u8],
) -> anyhow::Result<u64> {
    let mut decoder = FrameDecoder::with_capacity(64 << 10);
    let mut outbox = BytesMut::with_capacity(64 << 10);
    // Writes of one read are applied as they are decoded and acknowledged after, oldest first,
    // as a connection's commit queue does, so that one WAL group commit carries them.
    let mut commits: VecDeque<(u64, PendingWrite)> = VecDeque::new();
    let mut answered = 0u64;
    for chunk in input.chunks(64 << 10) {
        decoder.extend_from_slice(chunk);
        // As a connection reads them: a read's frames are taken together, and a single Get is
        // answered from them in place, nothing cut from them.
        while let Some(frames) = decoder.take_frames()? {
            for (_, request) in frames.requests() {
                let request = match request {
                    FramedRequest::Single(SingleRequest {
                        id, operation: OperationRef::Get { key }, ..
                    }) => {
                        let encoded = handler.read_now(key, |found, unsettled| {
                            // A server would hold the reply of a read of a write not yet durable.
                            unsettled.is_none().then(|| {
                                encode_read_reply_into(builder, id, found.ok().flatten(), &mut outbox)
                            })
                        });
                        match encoded {
                            Some(Some(encoded)) => encoded?,
                            Some(None) => {
                                bail!("a read found a write not yet durable: every key read is written first")
                            }
                            None => bail!(
                                "a read needed the disk: the engine was expected to hold every key in memory \
                                 or its block cache"
                            ),
                        }
                        answered += 1;
                        if outbox.len() > 32 << 10 {
                            outbox.clear();
                        }
                        continue;
                    }
                    FramedRequest::Single(single) => frames.to_request(&single),
                    FramedRequest::Other(parsed) => parsed.map_err(|error| anyhow::anyhow!("{error}"))?,
                };
                let id = request.id;
                match request.command {
                    Command::Single(operation) => match handler.write_now(&operation) {
                        Some(Ok(write)) => commits.push_back((id, write)),
                        Some(Err(failure)) => bail!("a write was refused: {failure:?}"),
                        None => bail!("a write had to wait: the memtable was expected to have room"),
                    },
                    _ => bail!("only single operations are generated"),
                }
                answered += 1;
                if outbox.len() > 32 << 10 {
                    outbox.clear();
                }
            }
        }
        while let Some((id, write)) = commits.pop_front() {
            let reply = match block_on(handler.acknowledged(write)) {
                Ok(outcome) => Reply::Single(outcome),
                Err(failure) => Reply::Failed(failure),
            };
            encode_response_into(builder, &Response { id, reply }, &mut outbox)?;
            if outbox.len() > 32 << 10 {
                outbox.clear();
            }
        }
    }
    Ok(answered)
}

/// The counted part of the client mode (callgrind's `--toggle-collect=*counted_client`).
#[inline(never)]
fn counted_client(
    runtime: &tokio::runtime::Runtime,
    local: &tokio::task::LocalSet,
    client: Rc<ringkv_client::tokio::Client>,
    load: Load,
    pipeline: usize,
) -> anyhow::Result<()> {
    local.block_on(runtime, run(client, load, pipeline))
}

/// Runs `load.ops` requests through the tokio client with `pipeline` in flight; fails on any
/// error or a read that finds nothing.
async fn run(client: Rc<ringkv_client::tokio::Client>, load: Load, pipeline: usize) -> anyhow::Result<()> {
    run_operations(client, Rc::new(Operations::new(load)), load.ops, pipeline).await
}

/// [`run`] with the operations made beforehand: `ops` of them.
async fn run_operations(
    client: Rc<ringkv_client::tokio::Client>,
    operations: Rc<Operations>,
    ops: u64,
    pipeline: usize,
) -> anyhow::Result<()> {
    let per_task = ops / pipeline as u64;
    let mut tasks = Vec::with_capacity(pipeline);
    for task in 0..pipeline as u64 {
        let client = client.clone();
        let operations = operations.clone();
        tasks.push(tokio::task::spawn_local(async move {
            for step in 0..per_task {
                let index = task * per_task + step;
                match operations.get(index) {
                    Operation::Get { key } => {
                        if client.get(&key).await?.is_none() {
                            bail!("{key:?} not found: load the node first");
                        }
                    }
                    Operation::Put { key, value, .. } => {
                        client.put(&key, &value).await?;
                    }
                    _ => unreachable!("only gets and puts are generated"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("client path: {} requests answered", per_task * pipeline as u64);
    Ok(())
}

/// Heap allocations per request on the shard thread and on the client thread: a node runs in
/// this process, the client loads it, warms up, then counts over `load.ops` requests; the call
/// stacks of the shard thread's first `trace` counted allocations are recorded.
fn allocations(load: Load, pipeline: usize, trace: u64) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let (node, addr) = start_node(directory.path())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let counted = runtime.block_on(tokio::task::LocalSet::new().run_until(async {
        wait_for(addr).await?;
        fill(addr, load.records).await?;
        // Connected, routed, warmed up and with its keys made before counting starts, so that
        // only the requests are counted.
        let client = Rc::new(ringkv_client::tokio::Client::connect(addr).await.context("connecting")?);
        let operations = Rc::new(Operations::new(load));
        run_operations(client.clone(), operations.clone(), load.ops.min(20_000), pipeline).await?;
        TRACES.lock().expect("no panic while recording").reserve_exact(trace as usize);
        TRACES_LEFT.store(trace, Ordering::Relaxed);
        let before = Counts::now();
        run_operations(client, operations, load.ops, pipeline).await?;
        let counted = Counts::now().since(&before);
        TRACES_LEFT.store(0, Ordering::Relaxed);
        anyhow::Ok(counted)
    }));
    node.stop_handle().stop();
    node.wait()?;
    let counted = counted?;
    let per = |count: u64| count as f64 / load.ops as f64;
    println!(
        "heap allocations per request: server shard {:.3} ({:.1} bytes), client {:.3} ({:.1} bytes), other threads {:.3}",
        per(counted.allocations[SERVER]),
        per(counted.bytes[SERVER]),
        per(counted.allocations[CLIENT]),
        per(counted.bytes[CLIENT]),
        per(counted.allocations[OTHER]),
    );
    Ok(())
}

/// A one-shard node in `parent`, on a port the system said was free. Between that answer and
/// the node's bind another socket may take the port (or the peer port above it), so a start
/// that finds its address in use is tried again on another.
fn start_node(parent: &std::path::Path) -> anyhow::Result<(Node, SocketAddr)> {
    const ATTEMPTS: usize = 20;
    for attempt in 1..=ATTEMPTS {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = NodeConfig {
            data_dir: parent.join(format!("node-{attempt}")),
            listen: addr,
            shards: Some(1),
            sync: SyncSetting::Always,
            ..NodeConfig::default()
        };
        match Node::start(config) {
            Ok(node) => return Ok((node, addr)),
            Err(ShardError::Listen { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempt < ATTEMPTS => {}
            Err(error) => return Err(error).context("starting the node"),
        }
    }
    unreachable!("the last attempt returns")
}

/// Writes every key once, `user000000000000` onwards.
async fn fill(addr: SocketAddr, records: u64) -> anyhow::Result<()> {
    let client = ringkv_client::tokio::Client::connect(addr).await.context("connecting")?;
    for index in 0..records {
        client.put(key(index), value(index)).await?;
    }
    Ok(())
}

async fn wait_for(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the node did not listen on {addr}")
}

const SERVER: usize = 0;
const CLIENT: usize = 1;
const OTHER: usize = 2;
const UNKNOWN: u8 = u8::MAX;
const RESOLVING: u8 = u8::MAX - 1;

static ALLOCATIONS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static BYTES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

thread_local! {
    static ROLE: Cell<u8> = const { Cell::new(UNKNOWN) };
    /// This thread is recording an allocation's call stack: its own allocations are not
    /// counted or recorded.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

/// Server allocations whose call stacks are still to be recorded (`allocations --trace`).
static TRACES_LEFT: AtomicU64 = AtomicU64::new(0);

/// The recorded call stacks, unresolved (symbols are looked up when they are printed).
static TRACES: Mutex<Vec<Backtrace>> = Mutex::new(Vec::new());

/// Prints the recorded call stacks grouped by their first `depth` frames past the allocator,
/// most frequent first.
fn print_traces(depth: usize) {
    let traces = std::mem::take(&mut *TRACES.lock().expect("no panic while recording"));
    if traces.is_empty() {
        return;
    }
    let mut stacks: HashMap<Vec<String>, usize> = HashMap::new();
    let mut origins: HashMap<&'static str, usize> = HashMap::new();
    for trace in &traces {
        let frames = caller_frames(trace, usize::MAX);
        *origins.entry(origin(&frames)).or_default() += 1;
        *stacks.entry(frames.into_iter().take(depth).collect()).or_default() += 1;
    }
    let mut origins: Vec<_> = origins.into_iter().collect();
    origins.sort_by(|(a_origin, a), (b_origin, b)| b.cmp(a).then_with(|| a_origin.cmp(b_origin)));
    let origins: Vec<String> = origins.iter().map(|(origin, count)| format!("{origin} {count}")).collect();
    println!("\n{} shard-thread allocations recorded; by origin: {}", traces.len(), origins.join(", "));
    let mut stacks: Vec<_> = stacks.into_iter().collect();
    stacks.sort_by(|(a_frames, a), (b_frames, b)| b.cmp(a).then_with(|| a_frames.cmp(b_frames)));
    println!("\nBy call stack:");
    for (frames, count) in stacks {
        println!("\n{count} ×");
        for frame in frames {
            println!("    {frame}");
        }
    }
}

/// Where an allocation comes from, by the first of its callers (innermost first) that is
/// glommio's or ringkv's: `memtable value` for the copy of a written value the memtable keeps
/// (data, not overhead), else the crate.
fn origin(frames: &[String]) -> &'static str {
    for frame in frames {
        let name = frame.trim_start_matches('<');
        if name.starts_with("ringkv_shard::handler::owned") {
            return "memtable value";
        }
        for crate_name in ["glommio", "ringkv_shard", "ringkv_storage", "ringkv_wire", "ringkv_io"] {
            if name.starts_with(crate_name) && name[crate_name.len()..].starts_with("::") {
                return crate_name;
            }
        }
    }
    "other"
}

/// The frames of `trace` above the allocator, leaving out the counting allocator's own and the
/// standard library's, at most `depth`, each `function (file:line)`.
fn caller_frames(trace: &Backtrace, depth: usize) -> Vec<String> {
    let text = trace.to_string();
    let mut frames: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(location) = line.strip_prefix("at ") {
            if let Some(last) = frames.last_mut() {
                let short = location.rsplit_once("/src/").map_or(location, |(_, path)| path);
                last.push_str(&format!(" ({short})"));
            }
        } else if let Some((number, function)) = line.split_once(": ") {
            if number.chars().all(|c| c.is_ascii_digit()) {
                frames.push(function.to_string());
            }
        }
    }
    let allocator = |frame: &String| {
        ["std::backtrace", "ringkv_path::", "<ringkv_path::", "__rust", "__rdl"]
            .iter()
            .any(|prefix| frame.starts_with(prefix))
    };
    // The standard library's own frames (boxes, vectors, maps, future adapters) say less than
    // the code that called them, and would use up the depth.
    let plumbing = |frame: &String| {
        ["alloc::", "<alloc::", "core::", "<core::", "std::", "<std::"]
            .iter()
            .any(|prefix| frame.starts_with(prefix))
    };
    frames.into_iter().skip_while(allocator).filter(|frame| !plumbing(frame)).take(depth).collect()
}

/// Records the call stack of this server allocation if `--trace` asked for more (the
/// recording's own allocations are not counted).
fn record(role: usize) {
    if role != SERVER || TRACES_LEFT.load(Ordering::Relaxed) == 0 {
        return;
    }
    if TRACES_LEFT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_err() {
        return;
    }
    RECORDING.with(|recording| recording.set(true));
    let trace = Backtrace::force_capture();
    TRACES.lock().expect("no panic while recording").push(trace);
    RECORDING.with(|recording| recording.set(false));
}

struct Counts {
    allocations: [u64; 3],
    bytes: [u64; 3],
}

impl Counts {
    fn now() -> Self {
        Counts {
            allocations: ALLOCATIONS.each_ref().map(|count| count.load(Ordering::Relaxed)),
            bytes: BYTES.each_ref().map(|count| count.load(Ordering::Relaxed)),
        }
    }

    fn since(&self, before: &Counts) -> Counts {
        Counts {
            allocations: std::array::from_fn(|role| self.allocations[role] - before.allocations[role]),
            bytes: std::array::from_fn(|role| self.bytes[role] - before.bytes[role]),
        }
    }
}

/// The thread's role, from its name: the node names its shard threads `ringkv-shard-N`; the
/// client runs on the main thread.
fn role() -> usize {
    ROLE.try_with(|role| match role.get() {
        UNKNOWN => {
            role.set(RESOLVING);
            let resolved = match std::thread::current().name() {
                Some(name) if name.starts_with("ringkv-shard") => SERVER,
                Some("main") => CLIENT,
                _ => OTHER,
            };
            role.set(resolved as u8);
            resolved
        }
        RESOLVING => OTHER,
        known => usize::from(known),
    })
    .unwrap_or(OTHER)
}

fn count(size: usize) {
    if RECORDING.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let role = role();
    record(role);
    ALLOCATIONS[role].fetch_add(1, Ordering::Relaxed);
    BYTES[role].fetch_add(size as u64, Ordering::Relaxed);
}

/// The system allocator, counting allocations (and reallocations) per thread role.
struct Counting;

// SAFETY: every call is passed on unchanged to the system allocator; counting touches only
// atomics and thread-local cells, never the heap from inside the allocator except through
// `thread::current`, whose allocation re-enters as `RESOLVING` and is counted as "other", and
// through recording a call stack (`--trace`), whose allocations re-enter while `RECORDING` is set
// and are passed through uncounted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}
