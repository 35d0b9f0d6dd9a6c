//! Feeds arbitrary bytes through the frame decoder, in chunks whose sizes the input chooses, and
//! every frame that comes out through both parsers. Nothing may panic; the fast paths (single
//! Get, Put and Delete requests and single-outcome replies, read field by field) agree with the
//! generic verified parsers on every frame; whatever parses as a request satisfies the limits;
//! a frame that parses survives a re-encode round trip through the builder and through the
//! hand-laid encoders.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringkv_wire::request::parse_request_verified;
use ringkv_wire::response::parse_response_verified;
use ringkv_wire::{
    encode_read_reply_into, encode_request, encode_request_into, encode_response, parse_request,
    parse_response, LentValue, Outcome, Reply,
};

fuzz_target!(|data: &[u8]| {
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    ringkv_fuzz::each_streamed_frame(data, |frame| check_frame(frame, &mut builder));
});

fn check_frame(frame: &Bytes, builder: &mut flatbuffers::FlatBufferBuilder<'static>) {
    let request = parse_request(frame);
    assert_eq!(request, parse_request_verified(frame), "the request fast path agrees with the verifier");
    if let Ok(request) = request {
        request.validate().expect("a parsed request satisfies the limits");
        let encoded =
            Bytes::copy_from_slice(encode_request(builder, &request).expect("a parsed request encodes"));
        assert_eq!(parse_request(&encoded).expect("a re-encoded request parses"), request);
        let mut out = BytesMut::new();
        encode_request_into(builder, &request, &mut out).expect("a parsed request encodes into a buffer");
        assert_eq!(parse_request(&out.freeze()).expect("a request encoded by hand parses"), request);
    }
    let response = parse_response(frame);
    assert_eq!(response, parse_response_verified(frame), "the reply fast path agrees with the verifier");
    if let Ok(response) = response {
        if let Ok(encoded) = encode_response(builder, &response) {
            let encoded = Bytes::copy_from_slice(encoded);
            assert_eq!(parse_response(&encoded).expect("a re-encoded response parses"), response);
        }
        let found = match &response.reply {
            Reply::Single(Outcome::Value { value, version, expires_at_ms }) => {
                Some(Some(LentValue { value: &value[..], version: *version, expires_at_ms: *expires_at_ms }))
            }
            Reply::Single(Outcome::NotFound) => Some(None),
            _ => None,
        };
        if let Some(found) = found {
            let mut out = BytesMut::new();
            if encode_read_reply_into(builder, response.id, found, &mut out).is_ok() {
                assert_eq!(
                    parse_response(&out.freeze()).expect("a read reply laid out by hand parses"),
                    response
                );
            }
        }
    }
}
