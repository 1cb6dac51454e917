//! The controller of a single-node broker: the one writer of the metadata log, on shard
//! 0. A change is checked against shard 0's image, appended (the write and its fdatasync
//! run on glommio's blocking thread pool, so shard 0 keeps serving its partitions
//! meanwhile), then sent with its offset to every shard, which applies it in order (see
//! [`crate::metadata_cache`]). The admin request is answered once every shard applied it
//! — or with an error naming the shard that could not, which then stops serving.
//!
//! The cluster controller will replace this with a Raft quorum replicating the same
//! records; the shards' side (apply in offset order, fence on failure) stays.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::metadata::{MetadataError, MetadataLog, MetadataRecord};
use sluice_engine::sync::FifoLock;
use tracing::{error, info, warn};

use crate::error::{code, from_metadata_error, KafkaError};

use crate::limits::{OFFLINE_REASONS_QUOTED, PRODUCER_ID_BLOCK};
use crate::shard::{Shard, ShardRequest, ShardResponse};

/// What applying a stored metadata change did: the partitions it created that could not
/// be opened, with why (they exist, offline).
#[derive(Debug, Default)]
pub struct Applied {
    pub offline: Vec<(TopicPartition, String)>,
}

impl Applied {
    /// The error CreateTopics and CreatePartitions answer for a topic some of whose new
    /// partitions could not be opened: KAFKA_STORAGE_ERROR ("disk error when trying to
    /// access log file on the disk"), with how many and why in the message.
    pub fn storage_error(&self) -> Option<KafkaError> {
        if self.offline.is_empty() {
            return None;
        }
        let mut offline: Vec<&(TopicPartition, String)> = self.offline.iter().collect();
        offline.sort_by_key(|(tp, _)| tp.partition);
        let quoted: Vec<String> = offline
            .iter()
            .take(OFFLINE_REASONS_QUOTED)
            .map(|(tp, reason)| format!("{tp}: {reason}"))
            .collect();
        let more = offline.len().saturating_sub(OFFLINE_REASONS_QUOTED);
        let message = format!(
            "the topic is stored, but {} of its new partitions could not be opened and are offline ({}{})",
            offline.len(),
            quoted.join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() },
        );
        Some(KafkaError::new(code::KAFKA_STORAGE_ERROR, message))
    }
}

/// See the module documentation. Lives on shard 0 only.
pub struct Controller {
    /// Shared with the blocking pool's thread for the duration of one append.
    log: Arc<Mutex<MetadataLog>>,
    /// One metadata change at a time, from validation to every shard having applied it.
    lock: FifoLock,
    /// The next producer id to hand out; ids up to the image's `producer_ids_end` are
    /// allocated (stored), so none is reused after a restart.
    next_producer_id: Cell<i64>,
    /// One producer id allocation at a time.
    producer_ids: FifoLock,
}

impl Controller {
    pub fn new(log: MetadataLog, producer_ids_end: i64) -> Self {
        Self {
            log: Arc::new(Mutex::new(log)),
            lock: FifoLock::new(),
            next_producer_id: Cell::new(producer_ids_end),
            producer_ids: FifoLock::new(),
        }
    }

    /// Checks `record` and, unless `validate_only`, stores it and has every shard apply
    /// it.
    pub async fn change(
        &self,
        shard: &Rc<Shard>,
        record: MetadataRecord,
        validate_only: bool,
    ) -> Result<Applied, KafkaError> {
        let _permit = self.lock.lock().await;
        if let Some(fenced) = shard.metadata_cache.fenced() {
            return Err(KafkaError::new(code::NOT_CONTROLLER, fenced.to_string()));
        }
        let offset = {
            let image = shard.metadata();
            image.check(&record).map_err(|e| from_metadata_error(&e))?;
            image.next_offset()
        };
        // The controller's copy is checked against the log itself: a record goes out with
        // the offset it really takes, or not at all.
        let log_offset = self.log.lock().unwrap_or_else(PoisonError::into_inner).next_offset();
        if log_offset != offset {
            error!(log_offset, offset, "the controller's metadata copy is not at the log's end");
            return Err(KafkaError::new(
                code::NOT_CONTROLLER,
                format!("metadata copy at offset {offset}, log at {log_offset}"),
            ));
        }
        if validate_only {
            return Ok(Applied::default());
        }
        let log = self.log.clone();
        let stored = record.clone();
        let appended = glommio::executor()
            .spawn_blocking(move || {
                // glommio's pool does not catch a panic: its future would never finish and
                // this lock would be held for good. A panic while appending (the frame's
                // self-check) is an error like any other, and the log is reopened at the
                // next start.
                let append = || log.lock().unwrap_or_else(PoisonError::into_inner).append(&stored);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(append)).unwrap_or_else(
                    |_| {
                        Err(MetadataError::Io {
                            path: "metadata log".into(),
                            source: std::io::Error::other("the append panicked"),
                        })
                    },
                )
            })
            .await;
        appended.map_err(|error| {
            error!(%error, "writing the metadata log failed");
            from_metadata_error(&error)
        })?;
        info!(offset, ?record, "metadata change stored");
        // Every shard applies it, and says which of its partitions it could not open.
        let mut applied = Applied::default();
        let mut failed = Vec::new();
        for target in 0..shard.shards() {
            let answer = if target == shard.id {
                ShardResponse::Applied(shard.apply_metadata(offset, &record).await)
            } else {
                shard.remote(target, ShardRequest::Apply { offset, record: record.clone() }).await
            };
            match answer {
                ShardResponse::Applied(Ok(answer)) => applied.offline.extend(answer.offline),
                ShardResponse::Applied(Err(reason)) => {
                    failed.push(format!("shard {target}: {reason}"))
                }
                _ => warn!(shard = target, "shard did not apply a metadata change (stopping?)"),
            }
        }
        if !failed.is_empty() {
            return Err(KafkaError::new(
                code::UNKNOWN_SERVER_ERROR,
                format!("the change is stored but not applied everywhere ({})", failed.join("; ")),
            ));
        }
        Ok(applied)
    }

    /// The next producer id, storing a new block of them first when the stored ones are
    /// used up.
    pub async fn allocate_producer_id(&self, shard: &Rc<Shard>) -> Result<i64, KafkaError> {
        let _permit = self.producer_ids.lock().await;
        let next = self.next_producer_id.get();
        if next >= shard.metadata().producer_ids_end() {
            let end = next + PRODUCER_ID_BLOCK;
            self.change(shard, MetadataRecord::ProducerIds { end }, false).await?;
        }
        self.next_producer_id.set(next + 1);
        Ok(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_error_says_how_many_partitions_are_offline_and_quotes_the_first() {
        assert!(Applied::default().storage_error().is_none());
        let applied = Applied {
            offline: (0..5)
                .rev()
                .map(|p| (TopicPartition::new("t", p), format!("reason {p}")))
                .collect(),
        };
        let error = applied.storage_error().unwrap();
        assert_eq!(error.code, code::KAFKA_STORAGE_ERROR);
        assert_eq!(
            error.message,
            "the topic is stored, but 5 of its new partitions could not be opened and are \
             offline (t-0: reason 0; t-1: reason 1; t-2: reason 2; and 2 more)"
        );
    }
}
