//! Snapshots of the scheduler: [`plan`] makes the plan the watch program copies by, [`state`]
//! types its copies into a [`SchedulerState`], [`facts`] gives each request's immutable facts.
//! Imports [`crate::inspect`] (CPython layout, vLLM names) and the stages before it (decode,
//! plan, resolve); [`crate::live::correlate`] and [`crate::live::shadow`] import it, never
//! the reverse.

pub mod facts;
pub mod plan;
pub mod state;

pub use facts::{LiveRequests, RequestInfo, RequestSource};
pub use plan::{engine_config, Capture, CaptureError};
pub use state::{RequestState, SchedulerState};

pub use crate::schema::run_info::Budgets;

#[cfg(test)]
pub(crate) mod tests {
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
}
