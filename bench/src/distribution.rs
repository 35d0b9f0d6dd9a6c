//! YCSB's request distributions: which key number an operation touches.
//!
//! They follow YCSB's core generators (`site.ycsb.generator`), so runs are comparable with YCSB's:
//! - [`Zipfian`]: Gray et al., "Quickly Generating Billion-Record Synthetic Databases" (SIGMOD
//!   1994), as YCSB's `ZipfianGenerator` implements it, with the incremental zeta update when the
//!   item count grows.
//! - [`ScrambledZipfian`]: YCSB's default for workloads A, B, C and F. A zipfian draw over ten
//!   billion items, hashed with FNV-1a 64 and reduced modulo the key count, so the popular keys are
//!   spread over the key space instead of clustered at its start.
//! - [`Latest`]: YCSB's `SkewedLatestGenerator` for workload D: the most recently inserted keys are
//!   the most popular, `newest - zipfian(count)`.
//! - uniform: every key equally likely.
//!
//! The random source comes in from the caller, so a seeded generator makes a run repeatable.

use rand::Rng;

/// YCSB's default zipfian constant (`zipfian.constant` / `ZIPFIAN_CONSTANT`).
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Items YCSB's scrambled zipfian draws from before hashing (`ScrambledZipfianGenerator.ITEM_COUNT`).
const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;

/// zeta(10^10, 0.99), precomputed by YCSB (`ScrambledZipfianGenerator.ZETAN`): summing ten billion
/// terms at start-up would take seconds.
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the value's eight low-to-high bytes, then the absolute
/// value as a signed 64-bit number (Java's `Math.abs`), so the result matches YCSB's key order.
pub fn fnv_hash_64(mut value: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    for _ in 0..8 {
        let octet = value & 0xff;
        value >>= 8;
        hash ^= octet;
        hash = hash.wrapping_mul(FNV_PRIME_64);
    }
    (hash as i64).wrapping_abs() as u64
}

/// zeta(n, theta) summed over items `start+1 ..= n`, added to `initial`.
fn zeta(start: u64, n: u64, theta: f64, initial: f64) -> f64 {
    (start..n).fold(initial, |sum, item| sum + 1.0 / ((item + 1) as f64).powf(theta))
}

/// `exponent` as an `i32` when it is within 1e-9 of one (the largest 1024, beyond which
/// `powi`'s repeated products lose more precision than `powf`).
fn whole_exponent(exponent: f64) -> Option<i32> {
    let rounded = exponent.round();
    ((1.0..=1024.0).contains(&rounded) && (exponent - rounded).abs() < 1e-9).then_some(rounded as i32)
}

/// Zipfian draws over `[0, items)`: item 0 is the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_two_theta: f64,
    zeta_n: f64,
    eta: f64,
    /// 1 + 0.5^theta: draws below it (times zeta) are the second item. Computed once, not per
    /// draw.
    second_item_below: f64,
    /// `alpha` when it is a whole number to within rounding (YCSB's theta 0.99 gives 100):
    /// each draw then raises to it by multiplications (`powi`) instead of `powf`, which was
    /// 3% of the load generator's CPU at a million draws a second. The two differ by far less
    /// than the gap between two items' boundaries.
    alpha_whole: Option<i32>,
}

impl Zipfian {
    /// Draws over `[0, items)` with constant `theta` (YCSB's default is [`ZIPFIAN_CONSTANT`]).
    pub fn new(items: u64, theta: f64) -> Self {
        Self::with_zeta(items, theta, zeta(0, items, theta, 0.0))
    }

    /// Like [`Zipfian::new`] with zeta(items, theta) given, for item counts too large to sum.
    fn with_zeta(items: u64, theta: f64, zeta_n: f64) -> Self {
        assert!(items > 0, "a zipfian distribution needs at least one item");
        let zeta_two_theta = zeta(0, 2, theta, 0.0);
        let mut zipfian = Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_two_theta,
            zeta_n,
            eta: 0.0,
            second_item_below: 1.0 + 0.5f64.powf(theta),
            alpha_whole: whole_exponent(1.0 / (1.0 - theta)),
        };
        zipfian.eta = zipfian.eta_for(items);
        zipfian
    }

    fn eta_for(&self, items: u64) -> f64 {
        (1.0 - (2.0 / items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta_two_theta / self.zeta_n)
    }

    /// Grows the item count to `items`, adding only the new terms to zeta as YCSB does. The count
    /// never shrinks: the latest distribution only ever sees more keys.
    fn grow_to(&mut self, items: u64) {
        if items > self.items {
            self.zeta_n = zeta(self.items, items, self.theta, self.zeta_n);
            self.items = items;
            self.eta = self.eta_for(items);
        }
    }

    /// One draw in `[0, items)`.
    pub fn next(&mut self, random: &mut impl Rng) -> u64 {
        let uniform: f64 = random.gen();
        let scaled = uniform * self.zeta_n;
        if scaled < 1.0 {
            return 0;
        }
        if scaled < self.second_item_below {
            return 1;
        }
        let base = self.eta * uniform - self.eta + 1.0;
        let power = match self.alpha_whole {
            Some(alpha) => base.powi(alpha),
            None => base.powf(self.alpha),
        };
        let draw = (self.items as f64 * power) as u64;
        draw.min(self.items - 1)
    }
}

/// YCSB's scrambled zipfian over `[0, items)`.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    items: u64,
    zipfian: Zipfian,
}

impl ScrambledZipfian {
    /// Draws over `[0, items)` with YCSB's constant 0.99.
    pub fn new(items: u64) -> Self {
        assert!(items > 0, "a distribution needs at least one item");
        let zipfian = Zipfian::with_zeta(SCRAMBLED_ITEM_COUNT, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN);
        ScrambledZipfian { items, zipfian }
    }

    pub fn next(&mut self, random: &mut impl Rng) -> u64 {
        fnv_hash_64(self.zipfian.next(random)) % self.items
    }
}

/// YCSB's skewed-latest distribution: `newest - zipfian(count)`, over keys `[0, count)`.
#[derive(Clone, Debug)]
pub struct Latest {
    zipfian: Zipfian,
}

impl Latest {
    /// Draws over the `items` keys written so far.
    pub fn new(items: u64) -> Self {
        Latest { zipfian: Zipfian::new(items, ZIPFIAN_CONSTANT) }
    }

    /// One draw among the first `items` keys (the key count now; it only grows), favouring the
    /// highest numbers.
    pub fn next(&mut self, items: u64, random: &mut impl Rng) -> u64 {
        self.zipfian.grow_to(items);
        let items = items.max(1);
        items - 1 - self.zipfian.next(random).min(items - 1)
    }
}

/// Which distribution picks the keys that operations read and update.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform,
    Zipfian(ScrambledZipfian),
    Latest(Latest),
}

impl KeyChooser {
    /// The key number of the next operation when `items` keys exist.
    pub fn next(&mut self, items: u64, random: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform => random.gen_range(0..items.max(1)),
            KeyChooser::Zipfian(zipfian) => zipfian.next(random),
            KeyChooser::Latest(latest) => latest.next(items, random),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const DRAWS: usize = 200_000;

    fn counts(items: u64, mut draw: impl FnMut(&mut SmallRng) -> u64) -> Vec<u64> {
        let mut random = SmallRng::seed_from_u64(42);
        let mut counts = vec![0u64; items as usize];
        for _ in 0..DRAWS {
            let item = draw(&mut random);
            assert!(item < items, "{item} is out of range");
            counts[item as usize] += 1;
        }
        counts
    }

    #[test]
    fn whole_exponents_draw_what_powf_draws() {
        assert_eq!(whole_exponent(1.0 / (1.0 - ZIPFIAN_CONSTANT)), Some(100));
        assert_eq!(whole_exponent(1.0 / (1.0 - 0.9)), Some(10));
        assert_eq!(whole_exponent(1.0 / (1.0 - 0.75)), Some(4));
        assert_eq!(whole_exponent(1.0 / (1.0 - 0.8)), Some(5));
        assert_eq!(whole_exponent(1.0 / (1.0 - 0.7)), None);
        assert_eq!(whole_exponent(1.0 / (1.0 - 0.9999)), None);
        // The same uniform draws through powi and through powf give the same items.
        let mut fast = Zipfian::with_zeta(SCRAMBLED_ITEM_COUNT, ZIPFIAN_CONSTANT, SCRAMBLED_ZETAN);
        assert_eq!(fast.alpha_whole, Some(100));
        let mut exact = fast.clone();
        exact.alpha_whole = None;
        let mut one = SmallRng::seed_from_u64(7);
        let mut other = SmallRng::seed_from_u64(7);
        let differing = (0..DRAWS).filter(|_| fast.next(&mut one) != exact.next(&mut other)).count();
        assert_eq!(differing, 0, "powi and powf disagreed on {differing} of {DRAWS} draws");
    }

    #[test]
    fn zipfian_top_item_has_its_theoretical_share() {
        let items = 1000;
        let mut zipfian = Zipfian::new(items, ZIPFIAN_CONSTANT);
        let counts = counts(items, |random| zipfian.next(random));
        // Item 0's probability is 1 / zeta(n, theta).
        let expected = DRAWS as f64 / zeta(0, items, ZIPFIAN_CONSTANT, 0.0);
        let actual = counts[0] as f64;
        assert!((actual - expected).abs() / expected < 0.05, "top item {actual}, expected {expected}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_spreads_the_hot_keys() {
        let items = 1000;
        let mut scrambled = ScrambledZipfian::new(items);
        let mut counts = counts(items, |random| scrambled.next(random));
        let hottest = counts.iter().enumerate().max_by_key(|(_, count)| **count).unwrap().0;
        assert_ne!(hottest, 0, "scrambling moves the most popular item away from the start");
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_ten: u64 = counts[..10].iter().sum();
        // Ten of a thousand keys take far more than their uniform 1% of the draws.
        assert!(top_ten as f64 > DRAWS as f64 * 0.1, "top ten keys took {top_ten}");
    }

    #[test]
    fn latest_favours_recent_keys() {
        let items = 1000;
        let mut latest = Latest::new(10);
        let counts = counts(items, |random| latest.next(items, random));
        let newest_tenth: u64 = counts[900..].iter().sum();
        let oldest_tenth: u64 = counts[..100].iter().sum();
        assert!(counts[999] > counts[998] && counts[998] > counts[900]);
        assert!(newest_tenth > 5 * oldest_tenth, "newest {newest_tenth}, oldest {oldest_tenth}");
    }

    #[test]
    fn latest_follows_a_growing_key_count() {
        let mut random = SmallRng::seed_from_u64(1);
        let mut latest = Latest::new(100);
        let grown = latest.next(5000, &mut random);
        assert!(grown < 5000);
        assert_eq!(latest.zipfian.items, 5000);
        let summed = zeta(0, 5000, ZIPFIAN_CONSTANT, 0.0);
        assert!((latest.zipfian.zeta_n - summed).abs() < 1e-9, "incremental zeta matches a fresh sum");
    }

    #[test]
    fn uniform_covers_the_range_evenly() {
        let items = 100;
        let mut chooser = KeyChooser::Uniform;
        let counts = counts(items, |random| chooser.next(items, random));
        let expected = (DRAWS as u64 / items) as f64;
        for count in counts {
            assert!((count as f64 - expected).abs() / expected < 0.2, "{count} against {expected}");
        }
    }

    #[test]
    fn fnv_hash_matches_ycsb() {
        // FNV-1a 64 of eight zero bytes, as YCSB computes it (positive, so abs leaves it alone).
        let mut hash = FNV_OFFSET_BASIS_64;
        for _ in 0..8 {
            hash = hash.wrapping_mul(FNV_PRIME_64);
        }
        assert_eq!(fnv_hash_64(0), (hash as i64).wrapping_abs() as u64);
        assert_ne!(fnv_hash_64(1), fnv_hash_64(2));
    }
}
