//! SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator, for the quorum's
//! election timeouts, the controller's placement start and the simulations, so that a
//! seed replays exactly.

/// See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (0 when `bound` is 0); the modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// A value in `low..=high`.
    #[cfg(test)]
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True `per_mille` times in a thousand.
    #[cfg(test)]
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// What the seeded simulations share: which seeds to run, and a run that panics turned
/// into a failure that names it.
#[cfg(test)]
pub(crate) mod seeds {
    fn env_u64(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
    }

    /// `SLUICE_SIM_SEED` alone, or `SLUICE_SIM_SEEDS` from `SLUICE_SIM_SEED_START`, or
    /// `default_count` from 0.
    pub(crate) fn to_run(default_count: u64) -> Vec<u64> {
        if let Some(seed) = env_u64("SLUICE_SIM_SEED") {
            return vec![seed];
        }
        let start = env_u64("SLUICE_SIM_SEED_START").unwrap_or(0);
        let count = env_u64("SLUICE_SIM_SEEDS").unwrap_or(default_count);
        (start..start + count).collect()
    }

    /// Runs `run`, a panic (the simulation's or raft-rs's) becoming an error.
    pub(crate) fn catching<T>(run: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("panicked: {message}"))
            }
        }
    }
}
