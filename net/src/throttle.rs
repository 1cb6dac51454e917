//! A log line that repeats for as long as a condition lasts (every produce to a full
//! disk fails the same way) is written at most once per interval, with how many were
//! held back since the last one: the condition stays visible, and the log file (often on
//! that same full disk) does not grow by a line per request.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// One per kind of line, per shard.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle { every, last: Cell::new(None), held_back: Cell::new(0) }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back since
    /// the last one; `None` (and one more held back) otherwise.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let due =
            !self.last.get().is_some_and(|last| now.saturating_duration_since(last) < self.every);
        if due {
            self.last.set(Some(now));
            Some(self.held_back.replace(0))
        } else {
            self.held_back.set(self.held_back.get() + 1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let throttle = LogThrottle::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(throttle.admit(start), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(throttle.admit(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.admit(start + Duration::from_millis(1000)), Some(3));
        assert_eq!(throttle.admit(start + Duration::from_millis(1500)), None);
        assert_eq!(throttle.admit(start + Duration::from_secs(60)), Some(1));
        assert_eq!(throttle.admit(start + Duration::from_secs(61)), Some(0));
    }
}
