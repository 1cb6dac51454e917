//! A shard's copy of the cluster metadata (Kafka's `MetadataCache`): the image of every
//! metadata record applied so far, and the offset of the last one. The controller sends
//! each stored record with its offset; a shard applies them strictly in order. A record
//! that does not apply, or one that arrives out of order, leaves the copy *fenced*: the
//! shard closes its listener and connections as at shutdown, answers other shards'
//! requests for its partitions and coordinators as a shard that is gone (see
//! `Shard::handle`), and refuses every later record, instead of answering from a history
//! no writer ever wrote; the admin request that made the change fails.
//!
//! Lives on one shard; never shared across threads.

use std::cell::{Ref, RefCell};

use sluice_engine::metadata::{MetadataError, MetadataImage, MetadataRecord};
use thiserror::Error;

/// Why a shard's copy of the metadata can no longer be trusted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Fenced {
    #[error("metadata record {offset} arrived where record {expected} was due")]
    OutOfOrder { offset: i64, expected: i64 },
    #[error("metadata record {offset} does not apply: {reason}")]
    Rejected { offset: i64, reason: String },
}

#[derive(Debug, Default)]
pub struct MetadataCache {
    image: RefCell<MetadataImage>,
    fenced: RefCell<Option<Fenced>>,
}

impl MetadataCache {
    pub fn new(image: MetadataImage) -> Self {
        Self { image: RefCell::new(image), fenced: RefCell::new(None) }
    }

    /// The image. Do not hold across an `.await`.
    pub fn image(&self) -> Ref<'_, MetadataImage> {
        self.image.borrow()
    }

    /// The offset of the last record applied (-1: none).
    pub fn offset(&self) -> i64 {
        self.image.borrow().offset()
    }

    /// Why this copy stopped following the metadata log, if it did.
    pub fn fenced(&self) -> Option<Fenced> {
        self.fenced.borrow().clone()
    }

    /// Applies the record stored at `offset`. Fails, and fences the copy for good, when
    /// the record is not the next one or does not apply.
    pub fn apply(&self, offset: i64, record: &MetadataRecord) -> Result<(), Fenced> {
        if let Some(fenced) = self.fenced() {
            return Err(fenced);
        }
        let expected = self.image.borrow().next_offset();
        let outcome = if offset != expected {
            Err(Fenced::OutOfOrder { offset, expected })
        } else {
            self.image.borrow_mut().apply(record).map_err(|error: MetadataError| Fenced::Rejected {
                offset,
                reason: error.to_string(),
            })
        };
        if let Err(fenced) = &outcome {
            *self.fenced.borrow_mut() = Some(fenced.clone());
        }
        outcome
    }

    /// The leader epoch of a partition, from its placement; 0 for a partition without one
    /// (a one-node broker's, led by it since it was created).
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.image
            .borrow()
            .topic(topic)
            .and_then(|t| t.placement(partition))
            .map_or(0, |p| p.leader_epoch)
    }

    /// Whether this broker holds a replica of the partition: its placement names `node`,
    /// or it has no placement (a one-node broker's partitions before the cluster placed
    /// them).
    pub fn hosts(&self, node: i32, topic: &str, partition: i32) -> bool {
        let image = self.image.borrow();
        let Some(t) = image.topic(topic) else { return false };
        if partition < 0 || partition >= t.partitions {
            return false;
        }
        t.placement(partition).map_or(true, |p| p.replicas.contains(&node))
    }

    /// The leader of a partition and its epoch; `None` without a placement.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<(i32, i32)> {
        let image = self.image.borrow();
        image.topic(topic)?.placement(partition).map(|p| (p.leader, p.leader_epoch))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn create(name: &str, id: u8) -> MetadataRecord {
        let mut topic_id = [0u8; 16];
        topic_id[0] = id;
        MetadataRecord::CreateTopic {
            name: name.into(),
            topic_id,
            partitions: 1,
            replication_factor: 1,
            configs: vec![],
        }
    }

    #[test]
    fn records_apply_in_order_and_a_gap_fences_the_copy() {
        let cache = MetadataCache::new(MetadataImage::default());
        cache.apply(0, &create("a", 1)).unwrap();
        assert_eq!(cache.offset(), 0);
        let gap = cache.apply(2, &create("b", 2)).unwrap_err();
        assert_eq!(gap, Fenced::OutOfOrder { offset: 2, expected: 1 });
        // Fenced for good: even the record that was due is refused now.
        assert_eq!(cache.apply(1, &create("b", 2)).unwrap_err(), gap);
        assert_eq!(cache.fenced(), Some(gap));
        assert!(cache.image().topic("b").is_none());
    }

    #[test]
    fn a_record_that_does_not_apply_fences_the_copy() {
        let cache = MetadataCache::new(MetadataImage::default());
        cache.apply(0, &create("a", 1)).unwrap();
        let duplicate = cache.apply(1, &create("a", 2)).unwrap_err();
        assert!(matches!(duplicate, Fenced::Rejected { offset: 1, .. }), "{duplicate:?}");
        assert_eq!(cache.offset(), 0, "the image is unchanged");
        assert!(cache.fenced().is_some());
    }
}
