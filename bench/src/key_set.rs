//! Which key numbers in `[0, num)` a run has written: one bit each.
//!
//! It lets `readrandom` check every read against what was written (a read that finds a key never
//! written, or misses one that was, is an engine bug) and gives the live key count that memory
//! and space figures are divided by.

/// A set of key numbers below a fixed bound.
pub struct KeySet {
    words: Vec<u64>,
    len: u64,
}

impl KeySet {
    /// An empty set of numbers below `bound`.
    pub fn new(bound: u64) -> Self {
        KeySet { words: vec![0; bound.div_ceil(64) as usize], len: 0 }
    }

    /// Adds `number`.
    pub fn insert(&mut self, number: u64) {
        let (word, bit) = ((number / 64) as usize, number % 64);
        let mask = 1u64 << bit;
        if self.words[word] & mask == 0 {
            self.words[word] |= mask;
            self.len += 1;
        }
    }

    /// Whether `number` was added.
    pub fn contains(&self, number: u64) -> bool {
        self.words[(number / 64) as usize] & (1u64 << (number % 64)) != 0
    }

    /// Numbers added.
    pub fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_number_once() {
        let mut set = KeySet::new(130);
        for number in [0, 63, 64, 129, 64] {
            set.insert(number);
        }
        assert_eq!(set.len(), 4);
        assert!(set.contains(129) && set.contains(0) && !set.contains(1));
    }
}
