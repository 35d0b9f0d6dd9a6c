//! What several fuzz targets share.

use bytes::Bytes;
use ringkv_wire::FrameDecoder;

/// Feeds `data` through the frame decoder as a byte stream and hands `check` every frame that
/// comes out. The first byte picks the chunk size, so that frames split across reads are
/// explored as well as whole ones. A framing error must be one that closes the connection.
pub fn each_streamed_frame(data: &[u8], mut check: impl FnMut(&Bytes)) {
    let Some((&chunk_selector, stream)) = data.split_first() else { return };
    let chunk_bytes = usize::from(chunk_selector).max(1);
    let mut decoder = FrameDecoder::new();
    for chunk in stream.chunks(chunk_bytes) {
        decoder.extend_from_slice(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                Err(error) => {
                    assert!(error.closes_connection());
                    return;
                }
            }
        }
    }
    let _ = decoder.check_end_of_stream();
}
