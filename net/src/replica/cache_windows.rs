//! `log.page.cache.window.bytes=auto`: a shard's page-cache budget shared among the logs
//! appended to lately.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use sluice_engine::checkpoint::TopicPartition;

use super::Partition;
use crate::limits::CACHE_WINDOW_ACTIVE;

/// `log.page.cache.window.bytes=auto` on one shard: which logs were appended to lately,
/// and the window each of them gets, its share of the shard's budget.
#[derive(Default)]
pub struct CacheWindows {
    /// Per partition: the log end offset last seen, and when it last moved.
    seen: HashMap<TopicPartition, (i64, Instant)>,
}

impl CacheWindows {
    pub fn adapt(&mut self, partitions: &[Rc<Partition>], budget: u64, now: Instant) {
        let mut seen = HashMap::with_capacity(partitions.len());
        let mut active = 0usize;
        for partition in partitions {
            let end = partition.replica.log().log_end_offset();
            let moved = match self.seen.get(partition.tp()) {
                Some(&(last, at)) if last == end => at,
                Some(_) => now,
                // A log opened since the last look counts once it is appended to.
                None => now.checked_sub(CACHE_WINDOW_ACTIVE).unwrap_or(now),
            };
            if now.saturating_duration_since(moved) < CACHE_WINDOW_ACTIVE {
                active += 1;
            }
            seen.insert(partition.tp().clone(), (end, moved));
        }
        self.seen = seen;
        let window = sluice_engine::writeback::auto_window_bytes(budget, active);
        for partition in partitions {
            if partition.replica.log().cache_window() != window {
                partition.replica.log().set_cache_window(window);
            }
        }
    }
}
