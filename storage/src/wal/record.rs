//! One WAL record: `crc32c u32 | payload_len u32 | seq u64 | payload`.

use bytes::BufMut;

/// Bytes before the payload.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Largest payload a record may carry: one entry with the largest key and value, plus slack.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = crate::VALUE_BYTES_MAX + crate::key::STORED_KEY_BYTES_MAX + 64;

/// Appends a record to `out`. The payload is written by `write_payload`, which must append
/// exactly `payload_len` bytes.
pub fn encode(out: &mut Vec<u8>, seq: u64, payload_len: usize, write_payload: impl FnOnce(&mut Vec<u8>)) {
    assert!(payload_len > 0 && payload_len <= RECORD_PAYLOAD_BYTES_MAX, "record payload out of range");
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(payload_len as u32);
    out.put_u64_le(seq);
    write_payload(out);
    assert_eq!(out.len(), start + RECORD_HEADER_BYTES + payload_len, "payload length mismatch");
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What sits at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record: its sequence number, payload range in the buffer, and total length.
    Record { seq: u64, payload_start: usize, payload_end: usize },
    /// An all-zero header: padding after a group write, or never-written space.
    Zero,
    /// Not a valid record, for the given reason.
    Invalid(&'static str),
}

/// Decodes the record starting at `offset` of `buf`.
pub fn decode(buf: &[u8], offset: usize) -> Decoded {
    let Some(header) = buf.get(offset..offset + RECORD_HEADER_BYTES) else {
        return if buf[offset.min(buf.len())..].iter().all(|&b| b == 0) {
            Decoded::Zero
        } else {
            Decoded::Invalid("record header truncated")
        };
    };
    if header.iter().all(|&b| b == 0) {
        return Decoded::Zero;
    }
    let crc = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let payload_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if payload_len == 0 || payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Decoded::Invalid("record length out of range");
    }
    let payload_start = offset + RECORD_HEADER_BYTES;
    let payload_end = payload_start + payload_len;
    if payload_end > buf.len() {
        return Decoded::Invalid("record truncated");
    }
    if crc32c::crc32c(&buf[offset + 4..payload_end]) != crc {
        return Decoded::Invalid("record checksum mismatch");
    }
    Decoded::Record { seq, payload_start, payload_end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bit_flips_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 5, |out| out.extend_from_slice(b"hello"));
        assert_eq!(decode(&buf, 0), Decoded::Record { seq: 42, payload_start: 16, payload_end: 21 });
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut flipped = buf.clone();
                flipped[byte] ^= 1 << bit;
                assert!(matches!(decode(&flipped, 0), Decoded::Invalid(_)), "flip {byte}/{bit} undetected");
            }
        }
    }

    #[test]
    fn zeros_are_padding_and_truncation_is_invalid() {
        assert_eq!(decode(&[0u8; 40], 0), Decoded::Zero);
        assert_eq!(decode(&[0u8; 8], 0), Decoded::Zero);
        let mut buf = Vec::new();
        encode(&mut buf, 1, 5, |out| out.extend_from_slice(b"hello"));
        assert!(matches!(decode(&buf[..20], 0), Decoded::Invalid(_)));
    }
}
