//! What a benchmark writes: keys in db_bench's format and cheap pseudo-random values.
//!
//! Keys follow db_bench (`GenerateKeyFromInt` with no prefixes): the key number's low bytes,
//! big-endian, in the first `min(key_size, 8)` bytes, the rest filled with ASCII `'0'`. So
//! 16-byte keys sort in number order and both tools write the same key space.
//!
//! Values are slices of one buffer of seeded random bytes made up front, as db_bench's
//! `RandomGenerator` does, so making a value costs a copy and no random-number work. A value for
//! the engine is copied into its own allocation, as a server would hand the engine an owned
//! request body: handing out shared slices of the buffer would make the memtable look smaller
//! than it is. A value for a network client, which copies it into the request it sends, is a
//! shared slice: no allocation per request in the load generator.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// Bytes in the value buffer beyond one value: values start at staggered offsets within it.
const VALUE_POOL_BYTES: usize = 1 << 20;

/// Bytes of a key that carry the key number; the rest is padding.
const KEY_NUMBER_BYTES: usize = 8;

/// Turns key numbers into keys of a fixed size.
#[derive(Clone, Copy, Debug)]
pub struct KeyEncoder {
    key_size: usize,
}

impl KeyEncoder {
    /// Keys of exactly `key_size` bytes (at least one).
    pub fn new(key_size: usize) -> Self {
        assert!(key_size > 0, "keys are at least one byte");
        KeyEncoder { key_size }
    }

    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// Distinct key numbers this size can hold: beyond it, different numbers give equal keys.
    pub fn distinct_keys(&self) -> u128 {
        1u128 << (8 * self.key_size.min(KEY_NUMBER_BYTES))
    }

    /// Writes key `number` into `out` (which must be `key_size` long).
    pub fn encode_into(&self, number: u64, out: &mut [u8]) {
        assert_eq!(out.len(), self.key_size);
        let number_bytes = self.key_size.min(KEY_NUMBER_BYTES);
        let big_endian = number.to_be_bytes();
        out[..number_bytes].copy_from_slice(&big_endian[KEY_NUMBER_BYTES - number_bytes..]);
        out[number_bytes..].fill(b'0');
    }

    /// Key `number` in its own allocation.
    pub fn encode(&self, number: u64) -> Bytes {
        let mut key = vec![0; self.key_size];
        self.encode_into(number, &mut key);
        Bytes::from(key)
    }
}

/// Hands out values of a fixed size cut from a pre-generated random buffer.
pub struct ValuePool {
    buffer: Bytes,
    value_size: usize,
    position: usize,
}

impl ValuePool {
    /// A pool of `value_size`-byte values from a buffer filled by a generator seeded with `seed`.
    pub fn new(value_size: usize, seed: u64) -> Self {
        let mut buffer = vec![0; VALUE_POOL_BYTES + value_size];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut buffer);
        ValuePool { buffer: Bytes::from(buffer), value_size, position: 0 }
    }

    /// The next value, copied into its own allocation.
    pub fn next_value(&mut self) -> Bytes {
        let range = self.next_range();
        Bytes::copy_from_slice(&self.buffer[range])
    }

    /// The next value, a slice of the pool's buffer that shares its allocation.
    pub fn next_shared(&mut self) -> Bytes {
        let range = self.next_range();
        self.buffer.slice(range)
    }

    fn next_range(&mut self) -> std::ops::Range<usize> {
        if self.position + self.value_size > self.buffer.len() {
            self.position = 0;
        }
        let range = self.position..self.position + self.value_size;
        // An odd stride, so consecutive values do not line up with each other.
        self.position += self.value_size.max(1) | 1;
        range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_big_endian_numbers_padded_with_ascii_zeros() {
        let encoder = KeyEncoder::new(16);
        assert_eq!(&encoder.encode(0x0102)[..], b"\0\0\0\0\0\0\x01\x0200000000");
        assert!(encoder.encode(1) < encoder.encode(256), "keys sort in number order");
    }

    #[test]
    fn short_keys_keep_the_low_bytes() {
        let encoder = KeyEncoder::new(2);
        assert_eq!(&encoder.encode(0x0a0b0c)[..], &[0x0b, 0x0c]);
        assert_eq!(encoder.distinct_keys(), 1 << 16);
    }

    #[test]
    fn values_have_the_size_asked_and_differ() {
        let mut pool = ValuePool::new(100, 7);
        let first = pool.next_value();
        let second = pool.next_value();
        assert_eq!(first.len(), 100);
        assert_ne!(first, second);
        for _ in 0..100_000 {
            assert_eq!(pool.next_value().len(), 100);
        }
    }

    #[test]
    fn shared_values_are_the_same_sequence_as_copied_ones() {
        let mut copied = ValuePool::new(100, 7);
        let mut shared = ValuePool::new(100, 7);
        for _ in 0..(3 * VALUE_POOL_BYTES / 101) {
            assert_eq!(copied.next_value(), shared.next_shared());
        }
    }
}
