//! A partition as a shard holds it: the engine's replica (log, replication and producer
//! state) with the topic's settings and, in direct mode, the cache of its recent batches;
//! and the broker-wide list of partitions that could not be opened.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::partition::Replica;
use sluice_engine::sync::FifoLock;

use crate::config::TopicSettings;
use crate::recent::RecentBatches;

/// One partition replica of this shard. Lives on the shard `shard_of(topic, partition)`.
pub struct Partition {
    pub replica: Replica,
    pub settings: RefCell<TopicSettings>,
    /// Direct mode: the most recently appended batches, for tail fetches.
    pub recent: RecentBatches,
    /// Held by the replica fetcher while it truncates or appends what it fetched, and by
    /// a role change: a follower's copy and its becoming leader never interleave.
    pub replication: FifoLock,
}

impl Partition {
    pub fn tp(&self) -> &TopicPartition {
        self.replica.tp()
    }
}

/// The partitions of the broker that could not be opened, with why. The owning shard
/// writes an entry when an open fails (start-up, CreateTopics, CreatePartitions) and
/// removes it when one succeeds; every shard reads them for its Metadata answers, where
/// an offline partition has no leader (Kafka's answer for a partition whose only replica
/// is offline). Shared by the shards (a lock and a count): it changes only when
/// partitions open, and a Metadata answer looks only while the count is not zero.
#[derive(Debug, Default)]
pub struct OfflinePartitions {
    reasons: std::sync::RwLock<HashMap<TopicPartition, String>>,
    count: AtomicUsize,
}

impl OfflinePartitions {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TopicPartition, String>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.reasons.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicPartition, String>> {
        self.reasons.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, tp: TopicPartition, reason: String) {
        let mut reasons = self.write();
        reasons.insert(tp, reason);
        self.count.store(reasons.len(), Ordering::Release);
    }

    pub fn remove(&self, tp: &TopicPartition) {
        if self.is_empty() {
            return;
        }
        let mut reasons = self.write();
        reasons.remove(tp);
        self.count.store(reasons.len(), Ordering::Release);
    }

    /// Forgets every partition of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        if self.is_empty() {
            return;
        }
        let mut reasons = self.write();
        reasons.retain(|tp, _| tp.topic != topic);
        self.count.store(reasons.len(), Ordering::Release);
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Why `tp` is offline, if it is.
    pub fn reason(&self, tp: &TopicPartition) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        self.read().get(tp).cloned()
    }

    /// The offline partitions of `topic`, sorted.
    pub fn of_topic(&self, topic: &str) -> Vec<i32> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut partitions: Vec<i32> =
            self.read().keys().filter(|tp| tp.topic == topic).map(|tp| tp.partition).collect();
        partitions.sort_unstable();
        partitions
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn offline_partitions_are_counted_forgotten_by_topic_and_listed_sorted() {
        let offline = OfflinePartitions::default();
        assert!(offline.is_empty() && offline.of_topic("t").is_empty());
        offline.insert(TopicPartition::new("t", 7), "no room".into());
        offline.insert(TopicPartition::new("t", 2), "no room".into());
        offline.insert(TopicPartition::new("u", 1), "in the way".into());
        assert_eq!(offline.len(), 3);
        assert_eq!(offline.of_topic("t"), [2, 7]);
        assert_eq!(offline.reason(&TopicPartition::new("u", 1)).unwrap(), "in the way");
        offline.remove(&TopicPartition::new("t", 7));
        offline.forget_topic("u");
        assert_eq!(offline.len(), 1);
        assert_eq!(offline.of_topic("t"), [2]);
        assert_eq!(offline.reason(&TopicPartition::new("u", 1)), None);
    }
}
