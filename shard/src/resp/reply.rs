//! [`RespReply`]: an answer to one Redis request, and its encoding in RESP2 or RESP3.
//!
//! RESP3 (chosen with `HELLO 3`) differs from RESP2 only in the types this server uses for
//! nulls and maps: a null is `_` instead of `$-1`, a map is `%` instead of a flat array of
//! keys and values, and a double is `,`. Everything else encodes the same.

use bytes::{BufMut, Bytes, BytesMut};

/// Which protocol version a connection speaks: 2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// One reply, owned, so a request task can hand it to the connection's writer.
#[derive(Clone, Debug, PartialEq)]
pub enum RespReply {
    /// `+OK`
    Ok,
    /// A simple string (no CR or LF inside).
    Simple(&'static str),
    /// An error line: its text starts with the error kind (`ERR`, `WRONGTYPE` ...).
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// The absent value: `$-1` in RESP2, `_` in RESP3.
    Null,
    Array(Vec<RespReply>),
    /// Pairs: a map in RESP3, a flat array in RESP2.
    Map(Vec<(RespReply, RespReply)>),
    /// A floating-point number: a double in RESP3, a bulk string in RESP2.
    Double(f64),
}

impl RespReply {
    /// A bulk string of `text`.
    pub fn text(text: impl Into<String>) -> Self {
        RespReply::Bulk(Bytes::from(text.into()))
    }

    /// A `-ERR <message>` reply.
    pub fn error(message: impl std::fmt::Display) -> Self {
        RespReply::Error(format!("ERR {message}"))
    }

    /// Appends the encoding in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        match self {
            RespReply::Ok => out.put_slice(b"+OK\r\n"),
            RespReply::Simple(text) => line(out, b'+', text.as_bytes()),
            RespReply::Error(text) => {
                // An error line cannot hold a line break; a message with one is cut there.
                let text = text.split(['\r', '\n']).next().unwrap_or_default();
                line(out, b'-', text.as_bytes());
            }
            RespReply::Integer(value) => encode_integer(out, *value),
            RespReply::Bulk(bytes) => encode_bulk(out, bytes),
            RespReply::Null => encode_null(protocol, out),
            RespReply::Array(items) => {
                header(out, b'*', items.len());
                for item in items {
                    item.encode(protocol, out);
                }
            }
            RespReply::Map(pairs) => {
                match protocol {
                    Protocol::Resp2 => header(out, b'*', pairs.len() * 2),
                    Protocol::Resp3 => header(out, b'%', pairs.len()),
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
            RespReply::Double(value) => {
                let text = if value.is_infinite() {
                    if *value > 0.0 {
                        "inf".to_string()
                    } else {
                        "-inf".to_string()
                    }
                } else {
                    value.to_string()
                };
                match protocol {
                    Protocol::Resp2 => encode_bulk(out, text.as_bytes()),
                    Protocol::Resp3 => line(out, b',', text.as_bytes()),
                }
            }
        }
    }
}

/// Appends a bulk string.
pub fn encode_bulk(out: &mut BytesMut, bytes: &[u8]) {
    out.reserve(bytes.len() + 16);
    header(out, b'$', bytes.len());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// Appends the absent value.
pub fn encode_null(protocol: Protocol, out: &mut BytesMut) {
    match protocol {
        Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
        Protocol::Resp3 => out.put_slice(b"_\r\n"),
    }
}

fn encode_integer(out: &mut BytesMut, value: i64) {
    out.put_u8(b':');
    out.put_slice(value.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

fn header(out: &mut BytesMut, marker: u8, length: usize) {
    out.put_u8(marker);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = length;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
}

fn line(out: &mut BytesMut, marker: u8, text: &[u8]) {
    out.put_u8(marker);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &RespReply, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        let map = RespReply::Map(vec![(RespReply::text("proto"), RespReply::Integer(3))]);
        assert_eq!(encoded(&map, Protocol::Resp2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(&map, Protocol::Resp3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(&RespReply::Null, Protocol::Resp2), "$-1\r\n");
        assert_eq!(encoded(&RespReply::Null, Protocol::Resp3), "_\r\n");
        assert_eq!(encoded(&RespReply::Integer(-12), Protocol::Resp2), ":-12\r\n");
        assert_eq!(encoded(&RespReply::Double(1.5), Protocol::Resp3), ",1.5\r\n");
        assert_eq!(encoded(&RespReply::Double(1.5), Protocol::Resp2), "$3\r\n1.5\r\n");
        let array = RespReply::Array(vec![RespReply::Ok, RespReply::Bulk(Bytes::new())]);
        assert_eq!(encoded(&array, Protocol::Resp2), "*2\r\n+OK\r\n$0\r\n\r\n");
        assert_eq!(encoded(&RespReply::error("bad\r\nline"), Protocol::Resp2), "-ERR bad\r\n");
    }
}
