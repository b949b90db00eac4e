//! A seeded generator for the tests that feed random input to readers and decoders.

/// xorshift64*: a seeded generator without a dependency.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Small numbers, extremes and anything, as a hostile target could hold.
    pub fn word(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX - self.below(16),
            2 | 3 => self.below(300),
            4 => u64::from(u32::MAX) - self.below(4),
            _ => self.next(),
        }
    }
}
