//! Arbitrary bytes as a Redis-protocol byte stream. Fed whole, and again in chunks whose size the
//! input chooses, the parser must hand out the same requests and stop at the same error: how TCP
//! splits a stream never changes what it means. Nothing may panic, and every request is within
//! the bounds the parser promises. Read as the Redis port reads it (GETs and plain SETs in place
//! where they lie, the rest by the general parse), the stream means the same too.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringkv_wire::resp::{ProtocolError, RequestParser, SimpleRequest, ARGUMENTS_MAX, REQUEST_BYTES_MAX};

/// The requests a stream holds, and the error that ended it, if any. `in_place`: GETs and plain
/// SETs are read in place first (`RequestParser::simple_at`), as the Redis port does, each as
/// the arguments it stands for.
fn parse(
    chunks: &mut dyn Iterator<Item = &[u8]>,
    in_place: bool,
) -> (Vec<Vec<Bytes>>, Option<ProtocolError>) {
    let mut parser = RequestParser::with_capacity(16);
    let mut requests = Vec::new();
    for chunk in chunks {
        parser.extend_from_slice(chunk);
        loop {
            let mut at = 0;
            while let Some((request, end)) = parser.simple_at(at).filter(|_| in_place) {
                let buffered = parser.buffered();
                let slice = |range: std::ops::Range<usize>| Bytes::copy_from_slice(&buffered[range]);
                // The command name lies after `*<count>\r\n$3\r\n`.
                let name = slice(at + 8..at + 11);
                requests.push(match request {
                    SimpleRequest::Get { key } => vec![name, slice(key)],
                    SimpleRequest::Set { key, value } => vec![name, slice(key), slice(value)],
                });
                at = end;
            }
            parser.consume(at);
            match parser.next_request() {
                Ok(Some(request)) => {
                    assert!(!request.is_empty(), "a request has a command name");
                    assert!(request.len() <= ARGUMENTS_MAX, "at most ARGUMENTS_MAX arguments");
                    let bytes: usize = request.iter().map(Bytes::len).sum();
                    assert!(bytes <= REQUEST_BYTES_MAX, "at most REQUEST_BYTES_MAX bytes");
                    requests.push(request);
                }
                Ok(None) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    let end = parser.check_end_of_stream().err();
    (requests, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_selector, stream)) = data.split_first() else { return };
    let whole = parse(&mut std::iter::once(stream), false);
    let chunk_bytes = usize::from(chunk_selector).max(1);
    let chunked = parse(&mut stream.chunks(chunk_bytes), false);
    assert_eq!(whole, chunked, "a stream parses the same whatever its pieces");
    let in_place = parse(&mut stream.chunks(chunk_bytes), true);
    assert_eq!(whole, in_place, "requests read in place mean what the general parse reads");
});
