//! One small deterministic random generator for every seeded decision (the pool's jitter, the
//! autoscaler's scrape sample, the simulator's and the load generator's arrivals): SplitMix64,
//! the same sequence on every platform and every version of every dependency.

/// SplitMix64 (Steele, Lea and Flood 2014): 64 bits of state, one add and two multiplies per
/// draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform draw in 0..=max.
    pub fn below_or_at(&mut self, max: u64) -> u64 {
        let z = self.next_u64();
        match max.checked_add(1) {
            Some(n) => z % n,
            None => z,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_fixed() {
        // The reference values of SplitMix64 from seed 0 (the algorithm's published test).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn floats_are_in_the_unit_interval() {
        let mut r = SplitMix64(7);
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
        assert_eq!(r.below_or_at(0), 0);
    }
}
