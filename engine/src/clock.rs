//! Time as an input: every engine component takes its clock from here so that tests drive
//! time by hand (timers, `segment.ms`, retention) instead of sleeping.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time. Monotonic milliseconds drive timers and intervals; wall-clock
/// milliseconds since the Unix epoch are what Kafka stores in record timestamps.
pub trait Clock {
    /// Milliseconds on a monotonic clock with an arbitrary origin.
    fn monotonic_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch (Kafka's timestamp unit).
    fn wall_ms(&self) -> i64;
}

/// The real clock. The only place in the engine that reads the system's time.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wall_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            // A wall clock before 1970 is a misconfigured machine; Kafka would store a
            // negative timestamp too, so keep the sign rather than panic.
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    monotonic_ms: Rc<Cell<u64>>,
    wall_ms: Rc<Cell<i64>>,
}

impl ManualClock {
    pub fn new(wall_ms: i64) -> Self {
        Self { monotonic_ms: Rc::new(Cell::new(0)), wall_ms: Rc::new(Cell::new(wall_ms)) }
    }

    /// Moves both clocks forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.monotonic_ms.set(self.monotonic_ms.get() + ms);
        let delta = i64::try_from(ms).unwrap_or(i64::MAX);
        self.wall_ms.set(self.wall_ms.get().saturating_add(delta));
    }

    /// Sets the wall clock only (for timestamp-based tests; the monotonic clock never
    /// goes back).
    pub fn set_wall_ms(&self, wall_ms: i64) {
        self.wall_ms.set(wall_ms);
    }
}

impl Clock for ManualClock {
    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.get()
    }

    fn wall_ms(&self) -> i64 {
        self.wall_ms.get()
    }
}
