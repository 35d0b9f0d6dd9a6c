//! [`FrameDecoder`]: cuts a byte stream into frames, sans I/O. Client connections and peer links
//! share it: both protocols frame the same way, under the same frame limit
//! ([`crate::limits::PEER_FRAME_BYTES_MAX`] equals [`FRAME_BYTES_MAX`]).
//!
//! A frame is a little-endian `u32` payload length followed by that many payload bytes. This is
//! exactly a FlatBuffers size-prefixed buffer, which is why the decoder hands out whole frames
//! (prefix included): the FlatBuffers verifier checks alignment relative to the start of the
//! prefix.
//!
//! ```text
//!  socket bytes ──extend_from_slice──▶ buffer ──next_frame──▶ Ok(Some(frame)) ─▶ parse_request
//!                                          └─────────────▶ Ok(None): need more bytes
//!                                          └─────────────▶ Err: close the connection
//! ```

use bytes::{Buf, Bytes, BytesMut};
use flatbuffers::VerifierOptions;

use crate::error::WireError;
use crate::limits::{FRAME_BYTES_MAX, FRAME_LENGTH_PREFIX_BYTES, VERIFIER_OPTIONS};

/// Splits an incoming byte stream into frames without doing any I/O: feed it what the socket
/// returned, then pull frames until it answers `Ok(None)`.
///
/// The length prefix is checked against [`FRAME_BYTES_MAX`] (and against zero) as soon as its
/// four bytes arrive, and memory for a frame is never reserved ahead of its bytes, so a hostile prefix costs
/// nothing. Frames come out as [`Bytes`] that share the decoder's buffer: no copy.
///
/// After an error the stream is out of step; every later call returns the same error and the
/// caller should close the connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
    failure: Option<WireError>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder whose buffer starts with room for `capacity_bytes`, so that typical small
    /// frames never make it grow.
    pub fn with_capacity(capacity_bytes: usize) -> Self {
        Self { buffer: BytesMut::with_capacity(capacity_bytes), failure: None }
    }

    /// Appends bytes received from the peer.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The buffer itself, for reading from a socket straight into it (for example with
    /// `tokio::io::AsyncReadExt::read_buf`) instead of copying through
    /// [`FrameDecoder::extend_from_slice`]. Only append to it (replacing it with a larger copy of
    /// itself is appending nothing).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Bytes received and not yet handed out as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete frame, length prefix included, ready for
    /// [`crate::parse_request`], [`crate::parse_response`] or [`crate::parse_peer`]. `Ok(None)`
    /// means more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let Some(payload_bytes) = self.peek_payload_length()? else {
            return Ok(None);
        };
        let frame_bytes = FRAME_LENGTH_PREFIX_BYTES + payload_bytes;
        if self.buffer.len() < frame_bytes {
            // Nothing is reserved for the rest of the frame: the buffer grows with the bytes
            // that arrive, so a prefix that promises a large frame costs nothing until it is sent.
            return Ok(None);
        }
        Ok(Some(self.buffer.split_to(frame_bytes).freeze()))
    }

    /// Every complete frame received so far, cut from the buffer together: a reader that
    /// handles a read's frames in place (borrowing them from [`Frames`]) pays for one cut per
    /// read instead of one per frame. `Ok(None)` means more bytes are needed. When a bad length
    /// prefix follows complete frames, those come first and the error with the next call, as
    /// [`FrameDecoder::next_frame`] would return them.
    pub fn take_frames(&mut self) -> Result<Option<Frames>, WireError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let mut end = 0;
        while let Some(prefix) = self.buffer[end..].first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() {
            match check_payload_length(u32::from_le_bytes(*prefix)) {
                Ok(payload_bytes) => {
                    let frame_end = end + FRAME_LENGTH_PREFIX_BYTES + payload_bytes;
                    if frame_end > self.buffer.len() {
                        break;
                    }
                    end = frame_end;
                }
                Err(error) => {
                    self.failure = Some(error.clone());
                    if end == 0 {
                        self.buffer.advance(self.buffer.len());
                        return Err(error);
                    }
                    let frames = Frames { bytes: self.buffer.split_to(end).freeze() };
                    self.buffer.advance(self.buffer.len());
                    return Ok(Some(frames));
                }
            }
        }
        if end == 0 {
            return Ok(None);
        }
        Ok(Some(Frames { bytes: self.buffer.split_to(end).freeze() }))
    }

    /// The whole size (length prefix included) of the frame at the front of the buffer, once a
    /// valid prefix for it has arrived: a reader can size its next read by it, growing the
    /// buffer no further than the frame.
    pub fn declared_frame_bytes(&self) -> Option<usize> {
        let prefix = self.buffer.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>()?;
        let payload_bytes = check_payload_length(u32::from_le_bytes(*prefix)).ok()?;
        Some(FRAME_LENGTH_PREFIX_BYTES + payload_bytes)
    }

    /// Call when the peer has closed its side: an error when the stream stopped inside a frame.
    pub fn check_end_of_stream(&self) -> Result<(), WireError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        Err(WireError::malformed(format!(
            "stream ended inside a frame, {} bytes after the last complete frame",
            self.buffer.len()
        )))
    }

    /// The validated payload length of the frame at the front of the buffer, once its prefix has
    /// arrived.
    fn peek_payload_length(&mut self) -> Result<Option<usize>, WireError> {
        let Some(prefix) = self.buffer.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        match check_payload_length(u32::from_le_bytes(*prefix)) {
            Ok(payload_bytes) => Ok(Some(payload_bytes)),
            Err(error) => {
                self.failure = Some(error.clone());
                // Nothing after a bad prefix can be interpreted; drop it rather than hold it.
                self.buffer.advance(self.buffer.len());
                Err(error)
            }
        }
    }
}

/// Complete frames, back to back, length prefixes included (from [`FrameDecoder::take_frames`]).
#[derive(Debug, Clone)]
pub struct Frames {
    bytes: Bytes,
}

impl Frames {
    /// All the frames' bytes: a frame that must outlive the read is cut from them with
    /// [`Bytes::slice`] or [`Bytes::slice_ref`].
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Each frame's range in [`Frames::bytes`], in order.
    pub fn ranges(&self) -> FrameRanges<'_> {
        self.ranges_from(0)
    }

    /// [`Frames::ranges`] from the frame that starts at `at` (the end of one of them, or 0).
    pub fn ranges_from(&self, at: usize) -> FrameRanges<'_> {
        FrameRanges { bytes: &self.bytes, at }
    }
}

/// The ranges of [`Frames::ranges`].
#[derive(Debug, Clone)]
pub struct FrameRanges<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Iterator for FrameRanges<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        // The decoder checked every prefix and that each frame is whole.
        let prefix = self.bytes[self.at..].first_chunk::<FRAME_LENGTH_PREFIX_BYTES>()?;
        let start = self.at;
        self.at += FRAME_LENGTH_PREFIX_BYTES + u32::from_le_bytes(*prefix) as usize;
        Some(start..self.at)
    }
}

/// Checks a length prefix against the frame limits.
pub(crate) fn check_payload_length(payload_bytes: u32) -> Result<usize, WireError> {
    if payload_bytes == 0 {
        return Err(WireError::FrameEmpty);
    }
    // Compare as u64 so that no prefix value can wrap on any target.
    if u64::from(payload_bytes) > FRAME_BYTES_MAX as u64 {
        return Err(WireError::FrameTooLarge {
            length_bytes: u64::from(payload_bytes),
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    Ok(payload_bytes as usize)
}

/// Verifies a whole frame (length prefix included) as a FlatBuffer rooted at `T`, with the
/// crate's tight [`VERIFIER_OPTIONS`]. Every accessor on the result is then safe to call.
pub(crate) fn verified_root<'frame, T>(frame: &'frame [u8]) -> Result<T::Inner, WireError>
where
    T: 'frame + flatbuffers::Follow<'frame> + flatbuffers::Verifiable,
{
    verified_root_with::<T>(frame, &VERIFIER_OPTIONS)
}

/// [`verified_root`] with other verifier options: the peer protocol's are tighter.
pub(crate) fn verified_root_with<'frame, T>(
    frame: &'frame [u8],
    options: &VerifierOptions,
) -> Result<T::Inner, WireError>
where
    T: 'frame + flatbuffers::Follow<'frame> + flatbuffers::Verifiable,
{
    let Some(prefix) = frame.first_chunk::<FRAME_LENGTH_PREFIX_BYTES>() else {
        return Err(WireError::malformed(format!(
            "frame of {} bytes has no complete length prefix",
            frame.len()
        )));
    };
    let payload_bytes = check_payload_length(u32::from_le_bytes(*prefix))?;
    // FlatBuffers itself ignores the size prefix; a frame assembled by hand could disagree with
    // it, and everything after this point trusts the two to match.
    if payload_bytes != frame.len() - FRAME_LENGTH_PREFIX_BYTES {
        return Err(WireError::malformed(format!(
            "length prefix says {payload_bytes} bytes but the frame carries {}",
            frame.len() - FRAME_LENGTH_PREFIX_BYTES
        )));
    }
    Ok(flatbuffers::size_prefixed_root_with_opts::<T>(options, frame)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    fn stream_of_three() -> (Vec<u8>, Vec<Vec<u8>>) {
        let frames = vec![frame(b"a"), frame(&[7u8; 300]), frame(b"third frame")];
        (frames.concat(), frames)
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let (stream, frames) = stream_of_three();
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        for expected in &frames {
            assert_eq!(decoder.next_frame().unwrap().as_deref(), Some(&expected[..]));
        }
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert_eq!(decoder.buffered_bytes(), 0);
        decoder.check_end_of_stream().unwrap();
    }

    /// Every frame `next_frame` hands out, one at a time.
    fn next_frames(decoder: &mut FrameDecoder) -> Vec<Vec<u8>> {
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            decoded.push(frame.to_vec());
        }
        decoded
    }

    /// Every frame `take_frames` hands out, each batch's frames through `ranges`.
    fn taken(decoder: &mut FrameDecoder) -> Vec<Vec<u8>> {
        let mut decoded = Vec::new();
        while let Some(frames) = decoder.take_frames().unwrap() {
            decoded.extend(frames.ranges().map(|range| frames.bytes()[range].to_vec()));
        }
        decoded
    }

    /// Frames one at a time and taken together, the stream split at every byte.
    #[test]
    fn frames_split_at_every_byte_boundary() {
        let (stream, frames) = stream_of_three();
        for take in [next_frames as fn(&mut FrameDecoder) -> Vec<Vec<u8>>, taken] {
            for split in 0..=stream.len() {
                let mut decoder = FrameDecoder::new();
                let mut decoded = Vec::new();
                for part in [&stream[..split], &stream[split..]] {
                    decoder.extend_from_slice(part);
                    decoded.extend(take(&mut decoder));
                }
                assert_eq!(decoded, frames, "split at {split}");
                assert_eq!(decoder.buffered_bytes(), 0);
            }
        }
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        let all = decoder.take_frames().unwrap().expect("three whole frames");
        assert_eq!(all.ranges().count(), 3);
        assert_eq!(all.bytes().len(), stream.len());
    }

    #[test]
    fn frames_fed_one_byte_at_a_time() {
        let (stream, frames) = stream_of_three();
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        for byte in &stream {
            decoder.extend_from_slice(std::slice::from_ref(byte));
            while let Some(frame) = decoder.next_frame().unwrap() {
                decoded.push(frame.to_vec());
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn four_gibibyte_prefix_is_refused_before_reserving() {
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&u32::MAX.to_le_bytes());
        let capacity_before = decoder.buffer_mut().capacity();
        assert_eq!(
            decoder.next_frame(),
            Err(WireError::FrameTooLarge { length_bytes: u64::from(u32::MAX), max_bytes: FRAME_BYTES_MAX })
        );
        assert!(decoder.buffer_mut().capacity() <= capacity_before, "the decoder reserved memory");
        // The stream is out of step: the error sticks.
        decoder.extend_from_slice(&frame(b"ok"));
        assert!(matches!(decoder.next_frame(), Err(WireError::FrameTooLarge { .. })));
    }

    #[test]
    fn one_byte_above_the_limit_is_refused_and_the_limit_itself_is_not() {
        assert!(matches!(
            check_payload_length(FRAME_BYTES_MAX as u32 + 1),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert_eq!(check_payload_length(FRAME_BYTES_MAX as u32), Ok(FRAME_BYTES_MAX));
    }

    #[test]
    fn zero_length_prefix_is_refused() {
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(decoder.next_frame(), Err(WireError::FrameEmpty));
        assert_eq!(decoder.check_end_of_stream(), Err(WireError::FrameEmpty));
    }

    #[test]
    fn partial_frame_reserves_nothing_beyond_the_bytes_received() {
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&frame(&[1u8; 10_000])[..100]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert!(decoder.buffer_mut().capacity() < 10_000, "reserved for bytes not received");
        assert_eq!(decoder.declared_frame_bytes(), Some(FRAME_LENGTH_PREFIX_BYTES + 10_000));
    }

    #[test]
    fn stream_ending_inside_a_frame_is_malformed() {
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&frame(b"hello")[..6]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert!(matches!(decoder.check_end_of_stream(), Err(WireError::Malformed { .. })));
    }
    #[test]
    fn frames_before_a_bad_prefix_come_first_then_the_error() {
        let (stream, frames) = stream_of_three();
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&stream);
        decoder.extend_from_slice(&[0, 0, 0, 0, 9, 9]);
        let first = decoder.take_frames().unwrap().expect("the whole frames before the bad prefix");
        let decoded: Vec<_> = first.ranges().map(|range| first.bytes()[range].to_vec()).collect();
        assert_eq!(decoded, frames);
        assert_eq!(decoder.take_frames().unwrap_err(), WireError::FrameEmpty);
        // The error sticks, and nothing after the bad prefix is held.
        decoder.extend_from_slice(&frame(b"ok"));
        assert_eq!(decoder.take_frames().unwrap_err(), WireError::FrameEmpty);
        assert_eq!(decoder.check_end_of_stream(), Err(WireError::FrameEmpty));
    }

    #[test]
    fn a_partial_frame_stays_behind_the_frames_taken() {
        let (stream, frames) = stream_of_three();
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&stream[..stream.len() - 1]);
        assert_eq!(taken(&mut decoder), frames[..2].to_vec());
        assert_eq!(decoder.declared_frame_bytes(), Some(frames[2].len()));
        decoder.extend_from_slice(&stream[stream.len() - 1..]);
        assert_eq!(taken(&mut decoder), frames[2..].to_vec());
    }
}
