//! The checksummed frame around every block of a table:
//! `payload_len u32 | payload | crc32c u32 over payload_len and payload`, then zero padding to
//! the next 4 KiB boundary (the padding is not part of the frame).

use crate::disk::{DiskFile, ALIGNMENT};
use crate::error::{Result, StorageError};
use bytes::Bytes;

/// Bytes a frame adds around its payload: the length before it and the checksum after it.
pub(crate) const FRAME_OVERHEAD_BYTES: usize = 8;
/// Bytes of the length field that opens a frame.
const LENGTH_BYTES: usize = 4;

/// Opens a frame at the end of `out` by reserving its length field; returns where it starts.
/// The payload is then appended to `out` directly, so blocks are encoded without a copy.
pub(crate) fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    start
}

/// Closes the frame begun at `start`: fills in its length, appends its checksum, then pads `out`
/// with zeros to a multiple of [`ALIGNMENT`]. `out` must begin at an aligned file offset, which
/// makes the next frame start on a page boundary. Returns the frame's length without padding.
pub(crate) fn seal(out: &mut Vec<u8>, start: usize) -> usize {
    let payload_len = out.len() - start - LENGTH_BYTES;
    let payload_len = u32::try_from(payload_len).expect("a frame payload fits in u32");
    out[start..start + LENGTH_BYTES].copy_from_slice(&payload_len.to_le_bytes());
    let checksum = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
    let frame_len = out.len() - start;
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
    frame_len
}

/// Where the payload of the frame that starts at `start` and is `frame_len` bytes long lies in
/// the buffer holding it.
pub(crate) fn payload_range(start: usize, frame_len: usize) -> std::ops::Range<usize> {
    start + LENGTH_BYTES..start + frame_len - (FRAME_OVERHEAD_BYTES - LENGTH_BYTES)
}

/// Checks a frame read from `file_name` at `offset` and returns its payload as a zero-copy
/// slice. `frame` must be exactly the frame's bytes, as the index or the footer sized it.
pub(crate) fn verify(frame: Bytes, file_name: &str, offset: u64) -> Result<Bytes> {
    if frame.len() < FRAME_OVERHEAD_BYTES {
        return Err(StorageError::corruption(file_name, offset, "frame shorter than its header"));
    }
    let checksum_at = frame.len() - 4;
    let expected = u32::from_le_bytes(frame[checksum_at..].try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(&frame[..checksum_at]);
    if expected != actual {
        return Err(StorageError::ChecksumMismatch { file: file_name.to_string(), offset, expected, actual });
    }
    let payload_len = u32::from_le_bytes(frame[..LENGTH_BYTES].try_into().expect("4 bytes")) as usize;
    if payload_len != frame.len() - FRAME_OVERHEAD_BYTES {
        return Err(StorageError::corruption(
            file_name,
            offset,
            format!("frame says {payload_len} payload bytes but the frame is {} bytes", frame.len()),
        ));
    }
    Ok(frame.slice(LENGTH_BYTES..checksum_at))
}

/// Reads exactly `len` bytes at `offset`; a file that ends sooner is corrupt (truncated).
pub(crate) async fn read_exact<F: DiskFile>(
    file: &F,
    file_name: &str,
    offset: u64,
    len: usize,
) -> Result<Bytes> {
    let bytes =
        file.read_at(offset, len).await.map_err(|error| StorageError::io("read", file_name, error))?;
    if bytes.len() != len {
        return Err(StorageError::corruption(
            file_name,
            offset,
            format!("file ends after {} of {len} bytes expected here", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Reads the frame of `len` bytes at `offset` and returns its verified payload.
pub(crate) async fn read<F: DiskFile>(file: &F, file_name: &str, offset: u64, len: usize) -> Result<Bytes> {
    let frame = read_exact(file, file_name, offset, len).await?;
    verify(frame, file_name, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_verify_round_trips_and_pads() {
        let mut out = Vec::new();
        let start = begin(&mut out);
        out.extend_from_slice(b"payload");
        let frame_len = seal(&mut out, start);
        assert_eq!(frame_len, 7 + FRAME_OVERHEAD_BYTES);
        assert_eq!(out.len(), ALIGNMENT);
        let frame = Bytes::from(out).slice(..frame_len);
        assert_eq!(&verify(frame, "t", 0).unwrap()[..], b"payload");
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut out = Vec::new();
        let start = begin(&mut out);
        out.extend_from_slice(b"some payload bytes");
        let frame_len = seal(&mut out, start);
        for bit in 0..frame_len * 8 {
            let mut damaged = out[..frame_len].to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(verify(Bytes::from(damaged), "t", 0).is_err(), "bit {bit}");
        }
        assert!(matches!(
            verify(Bytes::from_static(&[0, 0, 0]), "t", 0),
            Err(StorageError::Corruption { .. })
        ));
    }
}
