//! A small pipelined Redis client (RESP2 `GET` and `SET`) on a glommio `TcpStream`, so the load
//! generator drives Redis exactly as it drives ringkv: the same tasks, the same pipeline depth.
//!
//! ```text
//!  get/set ─▶ encode into the output buffer, queue a reply slot ─▶ writer task: write_all
//!  reader task: read ─▶ decode replies in order ─▶ fill the oldest slot ─▶ wake its caller
//! ```
//!
//! Redis answers a connection's requests in the order sent, so replies are matched to callers
//! by a FIFO of slots instead of ids. The callers bound the requests in flight (the run's
//! `--pipeline` tasks per connection), so the slot queue never outgrows the pipeline depth.
//! Spec: <https://redis.io/docs/latest/develop/reference/protocol-spec/> (RESP2).

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringkv_wire::resp::encode_request;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest wait for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest bulk string accepted in a reply; longer means the stream is not what we think it is.
const BULK_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Why a Redis call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// The connection could not be opened.
    #[error("connecting to {address}: {reason}")]
    Connect { address: SocketAddr, reason: String },
    /// The connection closed or failed with the request in flight.
    #[error("connection lost: {reason}")]
    ConnectionLost { reason: String },
    /// The server sent bytes that are not RESP2.
    #[error("server broke the protocol: {reason}")]
    Protocol { reason: String },
    /// The server answered with an error reply (`-ERR ...`).
    #[error("server error: {message}")]
    Server { message: String },
    /// The server answered with a reply of the wrong kind for the command.
    #[error("unexpected reply to {command}: {reply:?}")]
    UnexpectedReply { command: &'static str, reply: Reply },
}

impl RedisError {
    /// A short name for the error's kind, for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisError::Connect { .. } => "connect",
            RedisError::ConnectionLost { .. } => "connection_lost",
            RedisError::Protocol { .. } => "protocol",
            RedisError::Server { .. } => "server",
            RedisError::UnexpectedReply { .. } => "unexpected_reply",
        }
    }
}

/// One RESP2 reply. Arrays are not needed by `GET` and `SET` and are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// A bulk string, or `None` for the null bulk string (`$-1`, a missing key).
    Bulk(Option<Vec<u8>>),
}

/// Decodes one reply from the start of `buffer`: the reply and the bytes it took, or `None`
/// when the buffer does not hold a whole reply yet.
pub fn decode_reply(buffer: &[u8]) -> Result<Option<(Reply, usize)>, RedisError> {
    let protocol = |reason: String| RedisError::Protocol { reason };
    let Some(line_end) = buffer.windows(2).position(|window| window == b"\r\n") else {
        return Ok(None);
    };
    let Some((&marker, line)) = buffer[..line_end].split_first() else {
        return Err(protocol("empty reply line".into()));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let after_line = line_end + 2;
    let reply = match marker {
        b'+' => Reply::Simple(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Integer(text().parse().map_err(|_| protocol(format!("bad integer {:?}", text())))?),
        b'$' => {
            let length: i64 =
                text().parse().map_err(|_| protocol(format!("bad bulk length {:?}", text())))?;
            if length < 0 {
                return Ok(Some((Reply::Bulk(None), after_line)));
            }
            let length = length as usize;
            if length > BULK_BYTES_MAX {
                return Err(protocol(format!("bulk string of {length} bytes")));
            }
            let end = after_line + length;
            if buffer.len() < end + 2 {
                return Ok(None);
            }
            if &buffer[end..end + 2] != b"\r\n" {
                return Err(protocol("bulk string not followed by CRLF".into()));
            }
            return Ok(Some((Reply::Bulk(Some(buffer[after_line..end].to_vec())), end + 2)));
        }
        other => return Err(protocol(format!("unsupported reply type {:?}", other as char))),
    };
    Ok(Some((reply, after_line)))
}

/// Where a caller waits for its reply.
#[derive(Default)]
struct Slot {
    reply: RefCell<Option<Result<Reply, RedisError>>>,
    waker: Cell<Option<Waker>>,
}

impl Slot {
    fn fill(&self, reply: Result<Reply, RedisError>) {
        *self.reply.borrow_mut() = Some(reply);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// State shared by the callers and the connection's reader and writer tasks.
#[derive(Default)]
struct Shared {
    output: RefCell<Vec<u8>>,
    waiting: RefCell<VecDeque<Rc<Slot>>>,
    writer_waker: Cell<Option<Waker>>,
    closed: RefCell<Option<String>>,
}

impl Shared {
    /// Fails every waiting caller and stops the tasks; the first reason given wins.
    fn close(&self, reason: &str) {
        if self.closed.borrow().is_none() {
            *self.closed.borrow_mut() = Some(reason.to_string());
        }
        for slot in self.waiting.borrow_mut().drain(..) {
            slot.fill(Err(RedisError::ConnectionLost { reason: reason.to_string() }));
        }
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }
}

/// One pipelined connection to a Redis server. Concurrent calls from tasks on the executor that
/// opened it share the connection; dropping the handle closes it.
pub struct RedisConnection {
    shared: Rc<Shared>,
}

impl Drop for RedisConnection {
    fn drop(&mut self) {
        self.shared.close("connection dropped");
    }
}

impl RedisConnection {
    /// Connects and starts the reader and writer tasks on the current executor.
    pub async fn connect(address: SocketAddr) -> Result<Self, RedisError> {
        let connect_error =
            |error: glommio::GlommioError<()>| RedisError::Connect { address, reason: error.to_string() };
        let stream = TcpStream::connect_timeout(address, CONNECT_TIMEOUT).await.map_err(connect_error)?;
        // Requests are small and latency matters more than packet count.
        stream
            .set_nodelay(true)
            .map_err(|error| RedisError::Connect { address, reason: error.to_string() })?;
        // Read as the native client reads (see `ringkv_readiness`), so both stores are driven
        // by the same socket handling.
        let (mut reader, mut writer) = futures_lite::io::split(ringkv_readiness::PolledStream::new(stream));
        let shared = Rc::new(Shared::default());

        let reading = Rc::clone(&shared);
        glommio::spawn_local(async move {
            let mut chunk = vec![0u8; READ_CHUNK_BYTES];
            let mut pending = Vec::new();
            loop {
                let read = match reader.read(&mut chunk).await {
                    Ok(0) => break reading.close("closed by the server"),
                    Ok(read) => read,
                    Err(error) => break reading.close(&error.to_string()),
                };
                pending.extend_from_slice(&chunk[..read]);
                if let Err(error) = Self::dispatch_replies(&reading, &mut pending) {
                    break reading.close(&error.to_string());
                }
                if reading.closed_reason().is_some() {
                    break;
                }
            }
        })
        .detach();

        let writing = Rc::clone(&shared);
        glommio::spawn_local(async move {
            loop {
                let bytes = poll_fn(|context| {
                    if writing.closed_reason().is_some() {
                        return Poll::Ready(None);
                    }
                    let mut output = writing.output.borrow_mut();
                    if output.is_empty() {
                        writing.writer_waker.set(Some(context.waker().clone()));
                        return Poll::Pending;
                    }
                    // Everything queued since the last write goes out in one write: that is
                    // where pipelining saves system calls.
                    Poll::Ready(Some(std::mem::take(&mut *output)))
                })
                .await;
                let Some(bytes) = bytes else { break };
                if let Err(error) = writer.write_all(&bytes).await {
                    writing.close(&error.to_string());
                    break;
                }
            }
            // Closing our side makes the server close its side, which ends the reader task.
            let _ = writer.close().await;
        })
        .detach();

        Ok(RedisConnection { shared })
    }

    /// Hands every whole reply in `pending` to the oldest waiting caller, and drops its bytes.
    fn dispatch_replies(shared: &Shared, pending: &mut Vec<u8>) -> Result<(), RedisError> {
        let mut consumed = 0;
        while let Some((reply, length)) = decode_reply(&pending[consumed..])? {
            consumed += length;
            let slot = shared.waiting.borrow_mut().pop_front().ok_or_else(|| RedisError::Protocol {
                reason: "a reply arrived with no request waiting".into(),
            })?;
            slot.fill(Ok(reply));
        }
        pending.drain(..consumed);
        Ok(())
    }

    /// Sends one command and waits for its reply.
    async fn call(&self, arguments: &[&[u8]]) -> Result<Reply, RedisError> {
        if let Some(reason) = self.shared.closed_reason() {
            return Err(RedisError::ConnectionLost { reason });
        }
        let slot = Rc::new(Slot::default());
        encode_request(arguments, &mut self.shared.output.borrow_mut());
        self.shared.waiting.borrow_mut().push_back(Rc::clone(&slot));
        if let Some(waker) = self.shared.writer_waker.take() {
            waker.wake();
        }
        poll_fn(|context| match slot.reply.borrow_mut().take() {
            Some(reply) => Poll::Ready(reply),
            None => {
                slot.waker.set(Some(context.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// `GET key`: whether the key has a value.
    pub async fn get(&self, key: &[u8]) -> Result<bool, RedisError> {
        match self.call(&[b"GET", key]).await? {
            Reply::Bulk(value) => Ok(value.is_some()),
            Reply::Error(message) => Err(RedisError::Server { message }),
            reply => Err(RedisError::UnexpectedReply { command: "GET", reply }),
        }
    }

    /// `SET key value`.
    pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), RedisError> {
        match self.call(&[b"SET", key, value]).await? {
            Reply::Simple(status) if status == "OK" => Ok(()),
            Reply::Error(message) => Err(RedisError::Server { message }),
            reply => Err(RedisError::UnexpectedReply { command: "SET", reply }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_reply_kind_and_waits_for_whole_replies() {
        let stream = b"+OK\r\n-ERR wrong\r\n:42\r\n$-1\r\n$5\r\nhel\r\n\r\n";
        let mut replies = Vec::new();
        let mut at = 0;
        while let Some((reply, length)) = decode_reply(&stream[at..]).unwrap() {
            replies.push(reply);
            at += length;
        }
        assert_eq!(at, stream.len());
        assert_eq!(
            replies,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR wrong".into()),
                Reply::Integer(42),
                Reply::Bulk(None),
                Reply::Bulk(Some(b"hel\r\n".to_vec())),
            ]
        );
        // Every strict prefix of a reply is incomplete, not an error.
        let bulk = b"$5\r\nhello\r\n";
        for end in 0..bulk.len() {
            assert_eq!(decode_reply(&bulk[..end]).unwrap(), None, "prefix of {end} bytes");
        }
    }

    #[test]
    fn refuses_what_is_not_resp2() {
        assert!(matches!(decode_reply(b"?what\r\n"), Err(RedisError::Protocol { .. })));
        assert!(matches!(decode_reply(b"$3\r\nabcXY"), Err(RedisError::Protocol { .. })));
        assert!(matches!(decode_reply(b":x\r\n"), Err(RedisError::Protocol { .. })));
    }
}
