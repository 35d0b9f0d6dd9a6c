//! [`RequestMemory`]: the shard's budget for request bytes received and not yet answered, and
//! [`read_into`], the one way every connection of the shard reads from its socket.
//!
//! ```text
//!  socket ─read_into─▶ receive buffer (its whole allocation charged) ─split─▶ request (its bytes
//!                      │                                                      charged until answered)
//!                      └─ growing it needs room in the budget: none ─▶ wait (the socket is not read)
//! ```
//!
//! Past the budget the shard stops reading from its sockets, so TCP flow control holds the
//! clients back, instead of growing. Receive buffers grow with the bytes that actually arrived,
//! never with what a length prefix declares: a client that declares a 1 MiB frame and sends ten
//! bytes holds one small buffer. Connections that hold budget without finishing their frames are
//! closed by the frame timeout, which gives the budget back.
//!
//! What is counted: the allocation of every receive buffer (its capacity, or the whole frame it
//! is receiving when a prefix declared one: the memory itself still grows only as bytes come)
//! beyond a first chunk (64 KiB) every connection has for itself, and, on the client and shard
//! ports, that much of each request's frame until its reply is queued. The chunks are bounded
//! by `connections_max`; they keep connections that wait for the budget from holding it. Not counted: replies (bounded
//! per connection by `outbox_bytes_max`), and the bytes of requests answered at once, which stay
//! in the receive buffer's allocation until it is replaced.

use std::cell::Cell;
use std::rc::Rc;

use bytes::BytesMut;
use event_listener::Event;
use futures_lite::io::{AsyncRead, AsyncReadExt};

/// Smallest read worth making without growing the buffer first.
const READ_BYTES_MIN: usize = 4 << 10;

/// A shard's budget of request bytes, shared by all its connections.
#[derive(Debug)]
pub struct RequestMemory {
    max_bytes: usize,
    used_bytes: Cell<usize>,
    /// Bytes were given back: waiting readers check again.
    released: Event,
    /// Times a reader had to wait for room, for the logs.
    waits: Cell<u64>,
}

impl RequestMemory {
    /// A budget of `max_bytes`.
    pub fn new(max_bytes: usize) -> Rc<Self> {
        Rc::new(RequestMemory {
            max_bytes,
            used_bytes: Cell::new(0),
            released: Event::new(),
            waits: Cell::new(0),
        })
    }

    /// The budget.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bytes charged now.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    /// How many times a reader waited for room so far.
    pub fn waits(&self) -> u64 {
        self.waits.get()
    }

    /// Charges `bytes`, waiting until the budget has room for them. A request larger than the
    /// whole budget is charged once nothing else is (the configuration keeps the budget above
    /// the largest frame, so this only matters to tests).
    pub async fn charge(self: &Rc<Self>, bytes: usize) -> Charge {
        let mut waited = false;
        loop {
            let listener = self.released.listen();
            let used = self.used_bytes.get();
            if used + bytes <= self.max_bytes || used == 0 {
                self.used_bytes.set(used + bytes);
                return Charge { memory: self.clone(), bytes };
            }
            if !waited {
                waited = true;
                self.waits.set(self.waits.get() + 1);
            }
            listener.await;
        }
    }

    /// A charge of nothing, to split from or grow later.
    pub fn empty(self: &Rc<Self>) -> Charge {
        Charge { memory: self.clone(), bytes: 0 }
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used_bytes.set(self.used_bytes.get() - bytes);
        self.released.notify(usize::MAX);
    }
}

/// Bytes charged to a [`RequestMemory`]; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    memory: Rc<RequestMemory>,
    bytes: usize,
}

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves up to `bytes` of this charge into a charge of its own (for a request cut from a
    /// receive buffer, which takes that much of the buffer's allocation with it).
    pub fn split(&mut self, bytes: usize) -> Charge {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Charge { memory: self.memory.clone(), bytes }
    }

    /// Takes `other` into this charge.
    fn absorb(&mut self, mut other: Charge) {
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Gives back whatever this charge holds above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if self.bytes > bytes {
            self.memory.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

/// The capacity a receive buffer holding `len` bytes in `capacity` should grow to before the
/// next read, or `None` when it has room enough. `declared` is the total size of the message at
/// the front of the buffer when a length prefix announced it. The buffer grows by at most what it
/// already holds (at least `chunk`), and never past the declared message: memory follows the
/// bytes that arrived, not a prefix's promise.
pub fn capacity_for_read(
    len: usize,
    capacity: usize,
    chunk: usize,
    declared: Option<usize>,
) -> Option<usize> {
    let spare = capacity - len;
    let needed = declared.filter(|&total| total > len).map(|total| total - len);
    // Room for a read worth making (or for the rest of the frame): no growth.
    if spare > 0 && spare >= READ_BYTES_MIN.min(chunk).min(needed.unwrap_or(usize::MAX)) {
        return None;
    }
    let wanted = match needed {
        Some(needed) => needed.min(len.max(chunk)),
        None => chunk.max(len / 2),
    };
    Some(len + wanted)
}

/// How much one read asks for: it follows what the reads before it returned, up to a chunk.
///
/// A read must hand the socket initialised bytes, so every byte it offers is zeroed first.
/// Offering the whole 64 KiB chunk to a socket that holds a few pipelined requests zeroed
/// 64 KiB per read, several percent of a node's CPU on cached reads. The window doubles after
/// a read that filled it and halves after one that used under a quarter of it, between
/// [`READ_BYTES_MIN`] and the chunk, so the zeroing follows the traffic.
///
/// It also remembers how far the receive buffer's allocation has been written (by reads, or by
/// zeroing), so a read zeroes only bytes that nothing wrote before: a peer link reading 64 KiB
/// windows zeroed 64 KiB per read, about a tenth of a cluster node's CPU with the page faults of
/// fresh allocations.
#[derive(Debug, Clone, Copy)]
pub struct ReadWindow {
    chunk: usize,
    next: usize,
    /// Address one past the last initialised byte of the buffer's allocation, and the address
    /// the allocation ends at (which names the allocation). Both 0 until the first read.
    initialised_end: usize,
    allocation_end: usize,
}

impl ReadWindow {
    /// A window of at most `chunk` bytes, starting small.
    pub fn new(chunk: usize) -> Self {
        ReadWindow { chunk, next: READ_BYTES_MIN.min(chunk), initialised_end: 0, allocation_end: 0 }
    }

    /// Bytes of `buffer` past its length, up to `end`, known to be initialised: written by an
    /// earlier read or zeroed into this same allocation. 0 when the allocation is not the one
    /// this window saw last.
    fn initialised_past_len(&self, buffer: &BytesMut, end: usize) -> usize {
        let base = buffer.as_ptr() as usize;
        if base + buffer.capacity() != self.allocation_end {
            return 0;
        }
        self.initialised_end.clamp(base + buffer.len(), base + end) - (base + buffer.len())
    }

    /// `buffer`'s bytes up to its length are initialised, and so is whatever this window knew of
    /// in the same allocation.
    fn note_initialised(&mut self, buffer: &BytesMut) {
        let base = buffer.as_ptr() as usize;
        let allocation_end = base + buffer.capacity();
        let end = base + buffer.len();
        if allocation_end != self.allocation_end {
            self.allocation_end = allocation_end;
            self.initialised_end = end;
        } else {
            self.initialised_end = self.initialised_end.max(end);
        }
    }

    /// The most a connection reads at once, and what it holds without charging the budget.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Bytes the next read asks for.
    pub fn next(&self) -> usize {
        self.next
    }

    /// Adapts to a read that returned `read` bytes.
    fn observe(&mut self, read: usize) {
        let floor = READ_BYTES_MIN.min(self.chunk);
        if read >= self.next {
            self.next = (self.next * 2).min(self.chunk);
        } else if read < self.next / 4 {
            self.next = (self.next / 2).max(floor);
        }
    }
}

/// Reads once from `reader` into `buffer`, at most the window's next read, growing the buffer
/// first when it lacks room (see [`capacity_for_read`]). `charge` covers the buffer's allocation
/// and the whole of the frame in progress (`declared`), less a first chunk; it is brought up to
/// them first, waiting for room in the budget. Returns the bytes read (0 at the end of the
/// stream).
pub async fn read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    charge: &mut Charge,
    window: &mut ReadWindow,
    declared: Option<usize>,
) -> std::io::Result<usize> {
    let chunk = window.chunk;
    // Bytes cut from the buffer since the last read took their share of the allocation with
    // them (or were answered): the buffer's charge is what remains, or the whole frame in
    // progress. A declared frame is charged whole before any more of it is read, so a
    // connection never waits for the budget in the middle of a frame: one that holds budget
    // is always reading, and sees its client go away. The first `chunk` bytes of every
    // connection are its own, not charged: a connection waiting for the budget holds nothing of
    // it, so connections waiting can never hold all of it (which would leave none reading).
    let declared_bytes = declared.unwrap_or(0);
    let charged = |capacity: usize| capacity.max(declared_bytes).saturating_sub(chunk);
    charge.shrink_to(charged(buffer.capacity()));
    let mut growth = capacity_for_read(buffer.len(), buffer.capacity(), chunk, declared);
    if let Some(capacity) = growth {
        // Every request cut from the allocation has been answered: take the allocation back
        // (moving a partial frame to its front) instead of a fresh one, which would be mapped,
        // faulted in and unmapped again. Not one grown for a large frame: that goes back to the
        // allocator rather than stay charged to an idle connection.
        let need = capacity - buffer.len();
        if buffer.try_reclaim(need) && buffer.capacity() <= capacity.max(2 * chunk) {
            growth = None;
        }
    }
    let wanted = charged(growth.unwrap_or(buffer.capacity()));
    if wanted > charge.bytes {
        let memory = charge.memory.clone();
        let more = memory.charge(wanted - charge.bytes).await;
        charge.absorb(more);
    }
    if let Some(capacity) = growth {
        // The old allocation's charge moves to the new one; the old one is freed here unless
        // requests cut from it still run (they carry charges of their own).
        let mut grown = BytesMut::with_capacity(capacity);
        grown.extend_from_slice(buffer);
        *buffer = grown;
        charge.shrink_to(charged(capacity));
        // The new allocation may end where a freed one did: nothing past its length is known.
        window.allocation_end = 0;
    }
    window.note_initialised(buffer);
    let start = buffer.len();
    // The rest of a declared frame is read whole (up to a chunk) whatever the window says.
    let rest_of_frame = declared_bytes.saturating_sub(start).min(chunk);
    let end = buffer.capacity().min(start + window.next.max(rest_of_frame));
    // A read must be handed initialised bytes; zero only those nothing has written yet.
    let initialised = window.initialised_past_len(buffer, end);
    // SAFETY: `end` is within the capacity, and the `initialised` bytes past the length were
    // written into this same allocation before (by a read or by zeroing; the window tracks the
    // allocation by its end address, and only this function moves or replaces it). Truncating
    // and `try_reclaim` keep an allocation's bytes as they are.
    unsafe { buffer.set_len(start + initialised) };
    buffer.resize(end, 0);
    window.note_initialised(buffer);
    let read = reader.read(&mut buffer[start..end]).await;
    let count = *read.as_ref().unwrap_or(&0);
    buffer.truncate(start + count);
    if end - start >= window.next {
        window.observe(count);
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_grows_with_received_bytes_up_to_the_declared_frame() {
        let chunk = 64 << 10;
        // Empty: one chunk.
        assert_eq!(capacity_for_read(0, 0, chunk, None), Some(chunk));
        // A 1 MiB frame declared, 10 bytes arrived in a fresh chunk: no growth.
        assert_eq!(capacity_for_read(10, chunk, chunk, Some(1 << 20)), None);
        // Full chunk: doubles, not the declared size.
        assert_eq!(capacity_for_read(chunk, chunk, chunk, Some(1 << 20)), Some(2 * chunk));
        // Near the end of the frame: exactly the frame.
        assert_eq!(capacity_for_read(1 << 19, 1 << 19, chunk, Some((1 << 19) + 5)), Some((1 << 19) + 5));
        // The whole frame fits already.
        assert_eq!(capacity_for_read(1000, 2000, chunk, Some(1500)), None);
        // No frame announced: room for a small read is enough.
        assert_eq!(capacity_for_read(100, chunk, chunk, None), None);
    }

    /// Hands out `data` in reads of the sizes given, in turn.
    struct Trickle {
        data: Vec<u8>,
        position: usize,
        sizes: Vec<usize>,
        reads: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buffer: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let size = self.sizes[self.reads % self.sizes.len()];
            let count = size.min(buffer.len()).min(self.data.len() - self.position);
            let start = self.position;
            buffer[..count].copy_from_slice(&self.data[start..start + count]);
            self.position += count;
            self.reads += 1;
            std::task::Poll::Ready(Ok(count))
        }
    }

    #[test]
    fn reads_reuse_an_answered_allocation_and_deliver_every_byte() {
        let chunk = 64 << 10;
        let data: Vec<u8> = (0..(4usize << 20)).map(|i| (i * 7 + i / 4093) as u8).collect();
        let mut reader =
            Trickle { data: data.clone(), position: 0, sizes: vec![300, 70_000, 5_000, 20_000, 1], reads: 0 };
        let memory = RequestMemory::new(1 << 30);
        let mut charge = memory.empty();
        let mut window = ReadWindow::new(chunk);
        let mut buffer = BytesMut::new();
        let mut received = Vec::new();
        let mut allocations = std::collections::HashSet::new();
        loop {
            let read = futures_lite::future::block_on(read_into(
                &mut reader,
                &mut buffer,
                &mut charge,
                &mut window,
                None,
            ))
            .unwrap();
            if read == 0 {
                break;
            }
            allocations.insert(buffer.as_ptr() as usize + buffer.capacity());
            // Requests cut from the front and answered at once; a partial one stays behind.
            let keep = buffer.len() % 97;
            let request = buffer.split_to(buffer.len() - keep);
            received.extend_from_slice(&request);
        }
        received.extend_from_slice(&buffer);
        assert!(received == data, "bytes were lost, reordered or altered");
        // Without taking answered allocations back, 4 MiB in 64 KiB reads took a fresh
        // allocation every chunk or so.
        assert!(allocations.len() <= 4, "{} allocations", allocations.len());
    }

    #[test]
    fn the_read_window_follows_the_reads() {
        let chunk = 64 << 10;
        let mut window = ReadWindow::new(chunk);
        assert_eq!(window.next(), READ_BYTES_MIN);
        // Full reads double it up to the chunk.
        for _ in 0..10 {
            let next = window.next();
            window.observe(next);
        }
        assert_eq!(window.next(), chunk);
        // Reads using under a quarter halve it, down to the minimum; in between it holds.
        window.observe(chunk / 2);
        assert_eq!(window.next(), chunk);
        window.observe(100);
        assert_eq!(window.next(), chunk / 2);
        for _ in 0..10 {
            window.observe(100);
        }
        assert_eq!(window.next(), READ_BYTES_MIN);
        // Never above a small chunk.
        let mut small = ReadWindow::new(1000);
        small.observe(1000);
        assert_eq!(small.next(), 1000);
    }

    #[test]
    fn charges_wait_for_room_and_come_back_when_dropped() {
        let memory = RequestMemory::new(100);
        let first = futures_lite::future::block_on(memory.charge(60));
        assert_eq!(memory.used_bytes(), 60);
        let mut second = futures_lite::future::block_on(memory.charge(40));
        let third = memory.charge(10);
        futures_lite::pin!(third);
        assert!(futures_lite::future::block_on(futures_lite::future::poll_once(&mut third)).is_none());
        let split = second.split(30);
        assert_eq!(split.bytes(), 30);
        drop(split);
        let third = futures_lite::future::block_on(third);
        assert_eq!(memory.used_bytes(), 60 + 10 + 10);
        assert_eq!(memory.waits(), 1);
        drop((first, second, third));
        assert_eq!(memory.used_bytes(), 0);
    }
}
