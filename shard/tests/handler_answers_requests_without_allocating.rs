//! The request path a connection runs for keys its shard owns (frames decoded and parsed, a
//! cached read answered in place, a put applied in place and answered once acknowledged,
//! replies encoded into an outbox) makes no heap allocation per request: a counting allocator
//! sees the same number of allocations for N and for 2N requests, but for the one copy of each
//! put's value that the memtable keeps (data, not overhead) and the in-memory disk's copy of
//! each block a group commit writes.
//!
//! Sockets and the executor are left out (glommio's reactor allocates per event-loop turn, not
//! per request; `ringkv-path allocations` measures the whole node).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use futures_lite::future::block_on;
use ringkv_shard::{Handler, HybridClock};
use ringkv_storage::disk::memory::MemDisk;
use ringkv_storage::{Engine, EngineOptions, PendingWrite, SyncMode};
use ringkv_wire::{
    encode_read_reply_into, encode_request_into, encode_response_into, Command, FrameDecoder, FramedRequest,
    Operation, OperationRef, Reply, Request, Response,
};

/// Values are this long, a length nothing else on the path allocates, so the memtable's copies
/// of them can be counted apart.
const VALUE_BYTES: usize = 777;

/// Keys the requests spread over.
const KEYS: u64 = 500;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// Allocations (and reallocations) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Of those, allocations of exactly [`VALUE_BYTES`]: copies of values.
    static VALUE_COPIES: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting per thread (the test harness runs other tests on other
/// threads).
struct Counting;

fn count(size: usize) {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    if size == VALUE_BYTES {
        let _ = VALUE_COPIES.try_with(|count| count.set(count.get() + 1));
    }
}

// SAFETY: every call is passed on unchanged to the system allocator; counting touches only
// const-initialised thread-local cells, which never allocate.
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

/// Allocations and value copies this thread made while `work` ran.
fn counted<T>(work: impl FnOnce() -> T) -> (T, u64, u64) {
    let (allocations, copies) = (ALLOCATIONS.with(Cell::get), VALUE_COPIES.with(Cell::get));
    let result = work();
    (result, ALLOCATIONS.with(Cell::get) - allocations, VALUE_COPIES.with(Cell::get) - copies)
}

fn key(index: u64) -> Bytes {
    Bytes::from(format!("user{index:012}"))
}

/// A shard's handler on an in-memory disk, every key written once, syncing every commit.
fn loaded_handler() -> Handler<MemDisk> {
    let options = EngineOptions { sync: SyncMode::Always, ..EngineOptions::default() };
    let engine = block_on(Engine::open(MemDisk::new(), options)).unwrap();
    let handler = Handler::new(Rc::new(engine), HybridClock::new(1), ringkv_io::clock::now_ms);
    for index in 0..KEYS {
        let put =
            Operation::Put { key: key(index), value: Bytes::from(vec![b'v'; VALUE_BYTES]), ttl_ms: None };
        block_on(handler.execute(put)).unwrap();
    }
    handler
}

/// The frames of `count` requests carrying `operation` over the keys in turn, numbered from 1.
fn frames(count: u64, operation: impl Fn(Bytes) -> Operation) -> BytesMut {
    let mut builder = FlatBufferBuilder::new();
    let mut input = BytesMut::new();
    for index in 0..count {
        let command = Command::Single(operation(key(index % KEYS)));
        let request = Request { id: index + 1, command, consistency: None };
        encode_request_into(&mut builder, &request, &mut input).unwrap();
    }
    input
}

/// The reusable state of one connection: its decoder, reply builder, outbox and commit queue.
struct Connection {
    decoder: FrameDecoder,
    builder: FlatBufferBuilder<'static>,
    outbox: BytesMut,
    commits: VecDeque<(u64, PendingWrite)>,
}

impl Connection {
    fn new() -> Self {
        Connection {
            decoder: FrameDecoder::with_capacity(64 << 10),
            builder: FlatBufferBuilder::with_capacity(1024),
            outbox: BytesMut::with_capacity(64 << 10),
            commits: VecDeque::new(),
        }
    }

    /// Answers every request of `input`, arriving in 64 KiB reads; returns how many were
    /// answered and how many group commits carried the writes. Writes of one read are
    /// acknowledged together, oldest first, so one group commit carries them.
    fn serve(&mut self, handler: &Handler<MemDisk>, input: &[u8]) -> (u64, u64) {
        let Connection { decoder, builder, outbox, commits } = self;
        let (mut answered, mut groups) = (0, 0);
        for chunk in input.chunks(64 << 10) {
            decoder.extend_from_slice(chunk);
            // As a connection reads them: a read's frames taken together, a Get answered from
            // them in place.
            while let Some(frames) = decoder.take_frames().unwrap() {
                for (_, request) in frames.requests() {
                    let single = match request {
                        FramedRequest::Single(single) => single,
                        FramedRequest::Other(request) => {
                            panic!("only gets and puts are sent, not {request:?}")
                        }
                    };
                    let id = single.id;
                    match single.operation {
                        OperationRef::Get { key } => {
                            let found = handler.read_now(key, |found, unsettled| {
                                assert!(unsettled.is_none(), "every key read was acknowledged, so durable");
                                let found = found.unwrap().expect("every key was written");
                                encode_read_reply_into(builder, id, Some(found), outbox).unwrap();
                            });
                            found.expect("every key is in memory");
                            answered += 1;
                        }
                        _ => {
                            let Command::Single(operation) = frames.to_request(&single).command else {
                                unreachable!("a single request")
                            };
                            let write =
                                handler.write_now(&operation).expect("the memtable has room").unwrap();
                            commits.push_back((id, write));
                        }
                    }
                    if outbox.len() > 32 << 10 {
                        outbox.clear();
                    }
                }
            }
            groups += u64::from(!commits.is_empty());
            while let Some((id, write)) = commits.pop_front() {
                let outcome = block_on(handler.acknowledged(write)).unwrap();
                let response = Response { id, reply: Reply::Single(outcome) };
                encode_response_into(builder, &response, outbox).unwrap();
                answered += 1;
                if outbox.len() > 32 << 10 {
                    outbox.clear();
                }
            }
        }
        (answered, groups)
    }
}

#[test]
fn cached_reads_allocate_nothing_per_request() {
    let handler = loaded_handler();
    let get = |key| Operation::Get { key };
    let (few, many) = (frames(2_000, get), frames(4_000, get));
    let mut connection = Connection::new();
    // The first run grows the connection's buffers to what the load needs.
    assert_eq!(connection.serve(&handler, &few).0, 2_000);
    let ((answered, _), allocations_few, _) = counted(|| connection.serve(&handler, &few));
    assert_eq!(answered, 2_000);
    let ((answered, _), allocations_many, _) = counted(|| connection.serve(&handler, &many));
    assert_eq!(answered, 4_000);
    assert_eq!(
        allocations_many, allocations_few,
        "twice the reads made {allocations_many} allocations against {allocations_few}"
    );
}

#[test]
fn writes_allocate_only_the_value_the_memtable_keeps() {
    let handler = loaded_handler();
    let value = Bytes::from(vec![b'w'; VALUE_BYTES]);
    let put = |key| Operation::Put { key, value: value.clone(), ttl_ms: None };
    let (few, many) = (frames(2_000, put), frames(4_000, put));
    let mut connection = Connection::new();
    assert_eq!(connection.serve(&handler, &few).0, 2_000);
    let ((answered, groups_few), allocations_few, copies_few) = counted(|| connection.serve(&handler, &few));
    assert_eq!(answered, 2_000);
    let ((answered, groups_many), allocations_many, copies_many) =
        counted(|| connection.serve(&handler, &many));
    assert_eq!(answered, 4_000);
    // One copy of each value, in the memtable.
    assert_eq!((copies_few, copies_many), (2_000, 4_000));
    // Besides those, two allocations per group commit: the in-memory disk keeps a copy of every
    // block written to it (a real disk takes it into the device), and the group's leader runs
    // the write and sync boxed (see `WalWriter::commit_through`). Nothing per request.
    let overhead_few = allocations_few - copies_few - 2 * groups_few;
    let overhead_many = allocations_many - copies_many - 2 * groups_many;
    assert!(groups_many > groups_few, "{groups_many} group commits against {groups_few}");
    assert_eq!(
        overhead_many, overhead_few,
        "twice the writes made {overhead_many} allocations besides their values and group commits, \
         against {overhead_few}"
    );
}
