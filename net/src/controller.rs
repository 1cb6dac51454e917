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

use sluice_engine::metadata::{MetadataLog, MetadataRecord};
use sluice_engine::sync::FifoLock;
use tracing::{error, info, warn};

use crate::error::{code, from_metadata_error, KafkaError};
use crate::shard::{Applied, Shard, ShardRequest, ShardResponse};

/// Producer ids stored per metadata record.
const PRODUCER_ID_BLOCK: i64 = 1000;

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
        let offset = {
            let image = shard.metadata();
            image.check(&record).map_err(|e| from_metadata_error(&e))?;
            image.next_offset()
        };
        if validate_only {
            return Ok(Applied::default());
        }
        let log = self.log.clone();
        let stored = record.clone();
        let appended = glommio::executor()
            .spawn_blocking(move || {
                // A panic on the pool thread while appending leaves a file the log itself
                // marks poisoned: the next append fails and says so.
                log.lock().unwrap_or_else(PoisonError::into_inner).append(&stored)
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
