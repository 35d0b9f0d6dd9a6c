//! [`RequestParser`]: cuts a byte stream into Redis requests, incrementally and within bounds.
//!
//! A request is either a multibulk array (`*<n>\r\n` then `n` bulk strings `$<len>\r\n<bytes>\r\n`,
//! what every client library sends) or an inline command (one line of words separated by spaces,
//! what a person types into `telnet`). Bytes arrive in any pieces; [`RequestParser::next_request`]
//! returns a request only once all of it is buffered, so a request split anywhere parses exactly
//! as it does in one piece.
//!
//! Every length is checked before anything is reserved for it: a bulk string at most
//! [`BULK_BYTES_MAX`], an array at most [`ARGUMENTS_MAX`] elements, all bulk strings of one
//! request at most [`REQUEST_BYTES_MAX`] together, an inline line at most [`INLINE_BYTES_MAX`].
//! A request that breaks one, or is not RESP at all, is a [`ProtocolError`]: the stream is out
//! of step from there on, so the connection answers it and closes, as Redis does.

use std::ops::Range;

use crate::limits::{BATCH_OPERATIONS_MAX, KEY_BYTES_MAX, KEY_BYTES_MIN, VALUE_BYTES_MAX};
use bytes::{Buf, Bytes, BytesMut};

/// Longest bulk string accepted: one maximal value and slack. A value between
/// `VALUE_BYTES_MAX` and this parses, and the command refuses it with an error naming the limit;
/// above this the request is not read at all.
pub const BULK_BYTES_MAX: usize = VALUE_BYTES_MAX + (64 << 10);

/// Most arguments in one request: a full batch of key-value pairs (`MSET`), the command name and
/// a little room.
pub const ARGUMENTS_MAX: usize = 2 * BATCH_OPERATIONS_MAX + 8;

/// Most bulk bytes in one request, all arguments together: a few maximal values. Bounds the
/// receive buffer one connection can make the shard hold.
pub const REQUEST_BYTES_MAX: usize = 4 * BULK_BYTES_MAX;

/// Longest inline command line, its line ending included.
pub const INLINE_BYTES_MAX: usize = 64 << 10;

/// Longest length header (`*` or `$`, digits, `\r\n`): a sign and 19 digits are more than any
/// bound above needs.
const HEADER_BYTES_MAX: usize = 32;

/// Arguments reserved up front for a request; more grow the vector as they are parsed, so a
/// hostile array length never reserves more than this.
const ARGUMENTS_RESERVED_MAX: usize = 16;

/// Why the byte stream is not a Redis request. The `Display` text follows Redis's own
/// "Protocol error" replies and names the broken bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidArrayLength,
    #[error("Protocol error: multibulk of {length} arguments is above the limit of {ARGUMENTS_MAX} (ARGUMENTS_MAX)")]
    ArrayTooLong { length: u64 },
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: bulk string of {length} bytes is above the limit of {BULK_BYTES_MAX} bytes (BULK_BYTES_MAX)")]
    BulkTooLong { length: u64 },
    #[error("Protocol error: request of more than {REQUEST_BYTES_MAX} bulk bytes (REQUEST_BYTES_MAX)")]
    RequestTooLarge,
    #[error("Protocol error: expected '$', got '{found}'")]
    ExpectedBulk { found: char },
    #[error("Protocol error: bulk string not followed by CRLF")]
    MissingCrlf,
    #[error("Protocol error: too big inline request (above {INLINE_BYTES_MAX} bytes, INLINE_BYTES_MAX)")]
    InlineTooLong,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: unexpected end of stream inside a request")]
    Truncated,
}

/// Appends a request as every client library sends it, a multibulk array of `arguments`, to
/// `out`: what [`RequestParser`] reads back. For clients of a Redis-protocol port (the load
/// generator's, the tests').
pub fn encode_request(arguments: &[&[u8]], out: &mut Vec<u8>) {
    use std::io::Write;
    write!(out, "*{}\r\n", arguments.len()).expect("writing to a Vec cannot fail");
    for argument in arguments {
        write!(out, "${}\r\n", argument.len()).expect("writing to a Vec cannot fail");
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
}

/// Buffers received bytes and hands out whole requests.
#[derive(Default)]
pub struct RequestParser {
    buffer: BytesMut,
}

/// A GET, or a SET without options, laid out as every client library sends it (a multibulk
/// array), with a key and value within ringkv's limits: read in place by
/// [`RequestParser::simple_at`], nothing cut from the receive buffer. The ranges are positions
/// in [`RequestParser::buffered`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimpleRequest {
    Get { key: Range<usize> },
    Set { key: Range<usize>, value: Range<usize> },
}

/// What one parse attempt found.
enum Parsed {
    /// A whole request, and the bytes it took.
    Request(Vec<Span>, usize),
    /// Bytes that carry no request (an empty inline line), to skip.
    Skip(usize),
    /// More bytes are needed.
    Incomplete,
}

impl RequestParser {
    /// A parser with `capacity` bytes of buffer reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        RequestParser { buffer: BytesMut::with_capacity(capacity) }
    }

    /// The receive buffer, for reading from a socket straight into it. Only append to it
    /// (replacing it with a larger copy of itself appends nothing).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Appends received bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet handed out.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole request (its arguments, the command name first), `None` when more bytes
    /// are needed. The arguments are slices of the receive buffer: nothing is copied.
    pub fn next_request(&mut self) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            match parse(&self.buffer)? {
                Parsed::Incomplete => return Ok(None),
                Parsed::Skip(length) => self.buffer.advance(length),
                Parsed::Request(spans, length) => {
                    let request = self.buffer.split_to(length).freeze();
                    let arguments = spans.into_iter().map(|span| slice_of(&request, &span)).collect();
                    return Ok(Some(arguments));
                }
            }
        }
    }

    /// The bytes buffered and not yet handed out or consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buffer
    }

    /// The request starting `at` bytes into [`RequestParser::buffered`] and where it ends, when
    /// it is whole and a [`SimpleRequest`]; `None` for anything else, to be read with
    /// [`RequestParser::next_request`] (after [`RequestParser::consume`] up to it). What it
    /// returns is exactly what `next_request` would: it only skips the cuts.
    pub fn simple_at(&self, at: usize) -> Option<(SimpleRequest, usize)> {
        parse_simple(&self.buffer, at)
    }

    /// Drops the first `bytes` buffered bytes: requests read in place and answered.
    pub fn consume(&mut self, bytes: usize) {
        self.buffer.advance(bytes);
    }

    /// Cuts the first `bytes` buffered bytes out as shared bytes, for what read in place must
    /// outlive the buffer's next read.
    pub fn cut(&mut self, bytes: usize) -> Bytes {
        self.buffer.split_to(bytes).freeze()
    }

    /// At the end of the stream: an error when a request was left half-sent.
    pub fn check_end_of_stream(&self) -> Result<(), ProtocolError> {
        if self.buffer.iter().all(|byte| byte.is_ascii_whitespace()) {
            Ok(())
        } else {
            Err(ProtocolError::Truncated)
        }
    }
}

/// Where one argument lies in the request's bytes: a range, or (for an inline argument with
/// escapes) bytes of its own.
enum Span {
    Range(usize, usize),
    Owned(Vec<u8>),
}

fn slice_of(request: &Bytes, span: &Span) -> Bytes {
    match span {
        Span::Range(start, end) => request.slice(*start..*end),
        Span::Owned(bytes) => Bytes::copy_from_slice(bytes),
    }
}

/// `*<count>\r\n$3\r\n<name>\r\n`: the head of a GET (two arguments) or SET (three).
const SIMPLE_HEAD_BYTES: usize = 13;

/// Most digits [`parse_simple`] reads in a bulk length: enough for [`VALUE_BYTES_MAX`].
const SIMPLE_LENGTH_DIGITS_MAX: usize = 7;

/// See [`RequestParser::simple_at`]. Every check the general parse makes holds here or the
/// request falls through to it, so errors keep their one source.
fn parse_simple(buffer: &[u8], at: usize) -> Option<(SimpleRequest, usize)> {
    let head = buffer.get(at..at.checked_add(SIMPLE_HEAD_BYTES)?)?;
    if head[0] != b'*' || &head[2..8] != b"\r\n$3\r\n" || &head[11..13] != b"\r\n" {
        return None;
    }
    let (count, name) = (head[1], &head[8..11]);
    let (key, end) = simple_bulk(buffer, at + SIMPLE_HEAD_BYTES, KEY_BYTES_MAX)?;
    if key.len() < KEY_BYTES_MIN {
        return None;
    }
    if count == b'2' && name.eq_ignore_ascii_case(b"GET") {
        return Some((SimpleRequest::Get { key }, end));
    }
    if count == b'3' && name.eq_ignore_ascii_case(b"SET") {
        let (value, end) = simple_bulk(buffer, end, VALUE_BYTES_MAX)?;
        return Some((SimpleRequest::Set { key, value }, end));
    }
    None
}

/// The bulk string `$<length>\r\n<bytes>\r\n` at `at` when it is whole, its length is written
/// in at most [`SIMPLE_LENGTH_DIGITS_MAX`] digits and is at most `bytes_max`: where its bytes
/// lie and where it ends.
fn simple_bulk(buffer: &[u8], at: usize, bytes_max: usize) -> Option<(Range<usize>, usize)> {
    if *buffer.get(at)? != b'$' {
        return None;
    }
    let digits_start = at + 1;
    let mut length = 0usize;
    let mut digits_end = digits_start;
    loop {
        let byte = *buffer.get(digits_end)?;
        if byte == b'\r' {
            break;
        }
        if !byte.is_ascii_digit() || digits_end - digits_start == SIMPLE_LENGTH_DIGITS_MAX {
            return None;
        }
        length = length * 10 + usize::from(byte - b'0');
        digits_end += 1;
    }
    if digits_end == digits_start || *buffer.get(digits_end + 1)? != b'\n' || length > bytes_max {
        return None;
    }
    let start = digits_end + 2;
    let end = start + length;
    if buffer.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((start..end, end + 2))
}

/// Parses one request at the start of `buffer` without consuming anything.
fn parse(buffer: &[u8]) -> Result<Parsed, ProtocolError> {
    match buffer.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => parse_multibulk(buffer),
        Some(_) => parse_inline(buffer),
    }
}

/// The signed number of a header line `<marker><digits>\r\n` at `at`, and where the line ends;
/// `None` when the line is not all buffered yet.
fn header(buffer: &[u8], at: usize, invalid: ProtocolError) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buffer[at + 1..];
    let window = &rest[..rest.len().min(HEADER_BYTES_MAX)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        return if rest.len() >= HEADER_BYTES_MAX { Err(invalid) } else { Ok(None) };
    };
    // The line is `digits\r\n`: a bare `\n` or anything but an optional minus and digits fails.
    if newline == 0 || window[newline - 1] != b'\r' {
        return Err(invalid);
    }
    let digits = &window[..newline - 1];
    let number = std::str::from_utf8(digits).ok().and_then(parse_integer).ok_or(invalid)?;
    Ok(Some((number, at + 1 + newline + 1)))
}

/// An optional minus and 1 to 19 decimal digits, nothing else (no plus, no spaces).
fn parse_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_multibulk(buffer: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some((count, mut at)) = header(buffer, 0, ProtocolError::InvalidArrayLength)? else {
        return Ok(Parsed::Incomplete);
    };
    if count <= 0 {
        // Redis treats `*0` and `*-1` as an empty request and moves on.
        return Ok(Parsed::Skip(at));
    }
    let count = count as u64;
    if count > ARGUMENTS_MAX as u64 {
        return Err(ProtocolError::ArrayTooLong { length: count });
    }
    let mut spans = Vec::with_capacity((count as usize).min(ARGUMENTS_RESERVED_MAX));
    let mut bulk_bytes = 0usize;
    for _ in 0..count {
        let Some(&marker) = buffer.get(at) else {
            return Ok(Parsed::Incomplete);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk { found: char::from(marker) });
        }
        let Some((length, body)) = header(buffer, at, ProtocolError::InvalidBulkLength)? else {
            return Ok(Parsed::Incomplete);
        };
        if length < 0 {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let length = length as u64;
        if length > BULK_BYTES_MAX as u64 {
            return Err(ProtocolError::BulkTooLong { length });
        }
        let length = length as usize;
        bulk_bytes += length;
        if bulk_bytes > REQUEST_BYTES_MAX {
            return Err(ProtocolError::RequestTooLarge);
        }
        let end = body + length;
        if buffer.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buffer[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        spans.push(Span::Range(body, end));
        at = end + 2;
    }
    Ok(Parsed::Request(spans, at))
}

fn parse_inline(buffer: &[u8]) -> Result<Parsed, ProtocolError> {
    let window = &buffer[..buffer.len().min(INLINE_BYTES_MAX)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        return if buffer.len() >= INLINE_BYTES_MAX {
            Err(ProtocolError::InlineTooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line_end = if newline > 0 && window[newline - 1] == b'\r' { newline - 1 } else { newline };
    let spans = split_inline(&window[..line_end])?;
    if spans.is_empty() {
        return Ok(Parsed::Skip(newline + 1));
    }
    Ok(Parsed::Request(spans, newline + 1))
}

/// Splits an inline line into words: separated by spaces or tabs; a word in double quotes may
/// hold spaces and the escapes `\n \r \t \\ \"` and `\xHH`; in single quotes, only `\'`.
fn split_inline(line: &[u8]) -> Result<Vec<Span>, ProtocolError> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < line.len() {
        if line[at] == b' ' || line[at] == b'\t' {
            at += 1;
            continue;
        }
        match line[at] {
            quote @ (b'"' | b'\'') => {
                let mut word = Vec::new();
                at += 1;
                loop {
                    let Some(&byte) = line.get(at) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    if byte == quote {
                        at += 1;
                        // A closing quote must end the word.
                        if line.get(at).is_some_and(|&next| next != b' ' && next != b'\t') {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        break;
                    }
                    if byte == b'\\' && at + 1 < line.len() {
                        let (unescaped, taken) = unescape(&line[at + 1..], quote);
                        word.extend_from_slice(&unescaped);
                        at += 1 + taken;
                        continue;
                    }
                    word.push(byte);
                    at += 1;
                }
                spans.push(Span::Owned(word));
            }
            _ => {
                let start = at;
                while at < line.len() && line[at] != b' ' && line[at] != b'\t' {
                    at += 1;
                }
                spans.push(Span::Range(start, at));
            }
        }
        if spans.len() > ARGUMENTS_MAX {
            return Err(ProtocolError::ArrayTooLong { length: spans.len() as u64 });
        }
    }
    Ok(spans)
}

/// The bytes one escape after a backslash stands for, and how many bytes it took.
fn unescape(rest: &[u8], quote: u8) -> (Vec<u8>, usize) {
    if quote == b'\'' {
        return if rest[0] == b'\'' { (vec![b'\''], 1) } else { (vec![b'\\'], 0) };
    }
    match rest[0] {
        b'n' => (vec![b'\n'], 1),
        b'r' => (vec![b'\r'], 1),
        b't' => (vec![b'\t'], 1),
        b'a' => (vec![7], 1),
        b'b' => (vec![8], 1),
        b'x' if rest.len() >= 3 => {
            match std::str::from_utf8(&rest[1..3]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                Some(byte) => (vec![byte], 3),
                None => (vec![b'x'], 1),
            }
        }
        other => (vec![other], 1),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn multibulk(arguments: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_request(arguments, &mut bytes);
        bytes
    }

    #[test]
    fn requests_are_arrays_of_bulk_strings() {
        assert_eq!(
            multibulk(&[b"SET", b"user1", b"hello"]),
            b"*3\r\n$3\r\nSET\r\n$5\r\nuser1\r\n$5\r\nhello\r\n"
        );
    }

    fn parse_all(bytes: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut parser = RequestParser::with_capacity(64);
        parser.extend_from_slice(bytes);
        let mut requests = Vec::new();
        while let Some(request) = parser.next_request()? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn words(request: &[Bytes]) -> Vec<&[u8]> {
        request.iter().map(|argument| &argument[..]).collect()
    }

    #[test]
    fn multibulk_and_inline_requests_parse() {
        let mut bytes = multibulk(&[b"SET", b"key", b"va\r\nlue"]);
        bytes.extend_from_slice(b"PING\r\n\r\n  get  \"a b\\x41\\n\" 'it\\'s'\n*0\r\n");
        let requests = parse_all(&bytes).unwrap();
        assert_eq!(requests.len(), 3);
        assert_eq!(words(&requests[0]), [&b"SET"[..], b"key", b"va\r\nlue"]);
        assert_eq!(words(&requests[1]), [&b"PING"[..]]);
        assert_eq!(words(&requests[2]), [&b"get"[..], b"a bA\n", b"it's"]);
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*99999999999\r\n", ProtocolError::ArrayTooLong { length: 99_999_999_999 }),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$2000000\r\n", ProtocolError::BulkTooLong { length: 2_000_000 }),
            (b"*1\r\n$99999999999999999999\r\n", ProtocolError::InvalidBulkLength),
            (b"*x\r\n", ProtocolError::InvalidArrayLength),
            (b"*+1\r\n", ProtocolError::InvalidArrayLength),
            (b"*1\n", ProtocolError::InvalidArrayLength),
            (b"*1\r\n$1 \r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk { found: ':' }),
            (b"*1\r\n$1\r\nabc", ProtocolError::MissingCrlf),
            (b"*11111111111111111111111111111111111111111", ProtocolError::InvalidArrayLength),
            (b"GET \"unterminated\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                parse_all(bytes).err().as_ref(),
                Some(expected),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut many = b"*5\r\n".to_vec();
        for _ in 0..5 {
            many.extend_from_slice(format!("${BULK_BYTES_MAX}\r\n").as_bytes());
            many.extend(std::iter::repeat_n(b'v', BULK_BYTES_MAX));
            many.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse_all(&many).err(), Some(ProtocolError::RequestTooLarge));
        let long_line = vec![b'a'; INLINE_BYTES_MAX + 1];
        assert_eq!(parse_all(&long_line).err(), Some(ProtocolError::InlineTooLong));
    }

    #[test]
    fn a_truncated_request_waits_then_fails_at_end_of_stream() {
        let mut parser = RequestParser::with_capacity(64);
        parser.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nke");
        assert_eq!(parser.next_request(), Ok(None));
        assert_eq!(parser.check_end_of_stream(), Err(ProtocolError::Truncated));
        parser.extend_from_slice(b"y\r\n");
        assert_eq!(words(&parser.next_request().unwrap().unwrap()), [&b"GET"[..], b"key"]);
        assert_eq!(parser.check_end_of_stream(), Ok(()));
    }

    /// What [`RequestParser::next_request`] makes of the request at the start of `bytes`, and
    /// the bytes it took; `None` when it needs more or refuses.
    fn general(bytes: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
        let mut parser = RequestParser::with_capacity(bytes.len());
        parser.extend_from_slice(bytes);
        let request = parser.next_request().ok()??;
        Some((
            request.iter().map(|argument| argument.to_vec()).collect(),
            bytes.len() - parser.buffered_bytes(),
        ))
    }

    /// [`RequestParser::simple_at`] at the start of `bytes`, as the arguments it stands for.
    fn simple(bytes: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
        let mut parser = RequestParser::with_capacity(bytes.len());
        parser.extend_from_slice(bytes);
        let (request, end) = parser.simple_at(0)?;
        let slice = |range: &Range<usize>| bytes[range.clone()].to_vec();
        let arguments = match &request {
            SimpleRequest::Get { key } => vec![bytes[8..11].to_vec(), slice(key)],
            SimpleRequest::Set { key, value } => vec![bytes[8..11].to_vec(), slice(key), slice(value)],
        };
        Some((arguments, end))
    }

    #[test]
    fn gets_and_plain_sets_are_read_in_place() {
        let at_limit = vec![b'k'; KEY_BYTES_MAX];
        let taken: &[&[&[u8]]] = &[
            &[b"GET", b"key:000000012345"],
            &[b"get", b"k"],
            &[b"SET", b"key:000000012345", b"xxx"],
            &[b"sEt", b"k", b""],
            &[b"SET", b"k", b"va\r\nlue"],
            &[b"GET", &at_limit],
        ];
        for arguments in taken {
            let bytes = multibulk(arguments);
            let expected: Vec<Vec<u8>> = arguments.iter().map(|argument| argument.to_vec()).collect();
            assert_eq!(simple(&bytes), Some((expected, bytes.len())), "{arguments:?}");
        }
        let mut two = multibulk(&[b"GET", b"a"]);
        let first = two.len();
        two.extend_from_slice(&multibulk(&[b"SET", b"b", b"v"]));
        let mut parser = RequestParser::with_capacity(64);
        parser.extend_from_slice(&two);
        assert_eq!(parser.simple_at(0), Some((SimpleRequest::Get { key: 17..18 }, first)));
        assert!(
            matches!(parser.simple_at(first), Some((SimpleRequest::Set { .. }, end)) if end == two.len())
        );

        let over_key = vec![b'k'; KEY_BYTES_MAX + 1];
        let over_value = vec![b'v'; VALUE_BYTES_MAX + 1];
        // The general parse answers these (errors naming a limit, other commands, options).
        let passed: &[Vec<u8>] = &[
            multibulk(&[b"GET", b""]),
            multibulk(&[b"GET", &over_key]),
            multibulk(&[b"SET", b"k", &over_value]),
            multibulk(&[b"SET", b"k", b"v", b"EX", b"10"]),
            multibulk(&[b"GET", b"k", b"extra"]),
            multibulk(&[b"DEL", b"k"]),
            multibulk(&[b"GETS", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$00000001\r\nk\r\n".to_vec(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nkX\r\n".to_vec(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r".to_vec(),
            b"*2\r\n$3\r\nGET\r\n$\r\nk\r\n".to_vec(),
            b"*2\r\n$3\r\nGET\r\n$-1\r\n".to_vec(),
            b"GET k\r\n".to_vec(),
        ];
        for bytes in passed {
            assert_eq!(simple(bytes), None, "{:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(64)]));
        }
    }

    fn argument() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            Just(b"\r\n$3\r\n*1".to_vec()),
            proptest::collection::vec(Just(b'x'), 1000..3000),
        ]
    }

    proptest! {
        /// A stream of requests cut into random pieces parses exactly as in one piece.
        #[test]
        fn random_splits_parse_the_same(
            requests in proptest::collection::vec(proptest::collection::vec(argument(), 1..6), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for request in &requests {
                let arguments: Vec<&[u8]> = request.iter().map(Vec::as_slice).collect();
                stream.extend_from_slice(&multibulk(&arguments));
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut parser = RequestParser::with_capacity(16);
            let mut parsed = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                parser.extend_from_slice(&stream[start..cut]);
                start = cut;
                while let Some(request) = parser.next_request().unwrap() {
                    parsed.push(request.iter().map(|argument| argument.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(parsed, requests);
            prop_assert_eq!(parser.buffered_bytes(), 0);
        }

        /// Whatever the in-place read takes, the general parse reads the same way, to the same
        /// end; and every whole GET or plain SET within the limits is taken.
        #[test]
        fn requests_read_in_place_parse_as_in_general(
            name in prop::sample::select(vec![&b"GET"[..], b"get", b"Set", b"SET", b"DEL", b"GEX"]),
            key in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..8),
                proptest::collection::vec(Just(b'k'), KEY_BYTES_MAX - 2..KEY_BYTES_MAX + 2),
            ],
            value in proptest::collection::vec(any::<u8>(), 0..16),
            with_value in any::<bool>(),
            flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut arguments: Vec<&[u8]> = vec![name, &key];
            if with_value {
                arguments.push(&value);
            }
            let mut bytes = multibulk(&arguments);
            let well_formed = flip.is_none() && cut.is_none();
            if let Some((at, byte)) = flip {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Some(at) = cut {
                bytes.truncate(at.index(bytes.len()));
            }
            let taken = simple(&bytes);
            if let Some(taken) = &taken {
                prop_assert_eq!(Some(taken.clone()), general(&bytes));
                prop_assert!(taken.0[0].eq_ignore_ascii_case(b"GET") || taken.0[0].eq_ignore_ascii_case(b"SET"));
            }
            let simple_kind = (name.eq_ignore_ascii_case(b"GET") && !with_value)
                || (name.eq_ignore_ascii_case(b"SET") && with_value);
            if well_formed && simple_kind && (KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len()) {
                prop_assert!(taken.is_some());
            }
        }

        /// Arbitrary bytes, in arbitrary pieces, never panic, and the parser never holds more
        /// than one bounded request's worth of bytes after an answer.
        #[test]
        fn hostile_bytes_never_panic(
            chunks in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    proptest::collection::vec(prop::sample::select(b"*$-:\r\n0123456789 \"'\\x".to_vec()), 0..64),
                ],
                0..16,
            ),
        ) {
            let mut parser = RequestParser::with_capacity(16);
            'feed: for chunk in chunks {
                parser.extend_from_slice(&chunk);
                loop {
                    match parser.next_request() {
                        Ok(Some(request)) => prop_assert!(!request.is_empty() && request.len() <= ARGUMENTS_MAX),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
