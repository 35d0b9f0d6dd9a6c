//! Feeds arbitrary bytes through the frame decoder, in chunks whose sizes the input chooses, and
//! every frame that comes out through both parsers. Nothing may panic; whatever parses as a
//! request must satisfy the limits, and a frame that parses must survive a re-encode round trip.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringkv_wire::{encode_request, encode_response, parse_request, parse_response, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so that split frames are explored as well as whole
    // ones.
    let Some((&chunk_selector, stream)) = data.split_first() else { return };
    let chunk_bytes = usize::from(chunk_selector).max(1);
    let mut decoder = FrameDecoder::new();
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    for chunk in stream.chunks(chunk_bytes) {
        decoder.extend_from_slice(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => check_frame(&frame, &mut builder),
                Ok(None) => break,
                Err(error) => {
                    assert!(error.closes_connection());
                    return;
                }
            }
        }
    }
    let _ = decoder.check_end_of_stream();
});

fn check_frame(frame: &Bytes, builder: &mut flatbuffers::FlatBufferBuilder<'static>) {
    if let Ok(request) = parse_request(frame) {
        request.validate().expect("a parsed request satisfies the limits");
        let encoded =
            Bytes::copy_from_slice(encode_request(builder, &request).expect("a parsed request encodes"));
        assert_eq!(parse_request(&encoded).expect("a re-encoded request parses"), request);
    }
    if let Ok(response) = parse_response(frame) {
        if let Ok(encoded) = encode_response(builder, &response) {
            let encoded = Bytes::copy_from_slice(encoded);
            assert_eq!(parse_response(&encoded).expect("a re-encoded response parses"), response);
        }
    }
}
