//! The broker's link to the controller quorum, on shard 0. A metadata change a client
//! asks for (CreateTopics, DeleteTopics, CreatePartitions, configs, producer ids, leader
//! elections, reassignments) is forwarded to the active controller as an intent through
//! the broker's agent (`sluice_cluster::agent`), on glommio's blocking pool so shard 0
//! keeps serving meanwhile. The controller decides, stores the records through Raft and
//! answers with the offset of the last one; the request is answered once every shard of
//! this broker has applied the metadata that far.
//!
//! The records themselves arrive, in order, from the agent's metadata fetcher: shard 0
//! polls for them ([`Controller::pump`]) and has every shard apply each batch (see
//! [`crate::metadata_cache`]); a shard that cannot fences itself and stops serving.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_cluster::agent::{BrokerAgent, MetadataUpdate};
use sluice_cluster::controller::rpc::{
    ControllerRequest, ControllerResponse, Intent, NewTopic, Outcome,
};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::metadata::MetadataRecord;
use sluice_engine::sync::FifoLock;
use tracing::{error, info, warn};

use crate::error::{code, KafkaError};

use crate::limits::{
    CONTROLLER_WRITE_TIMEOUT, METADATA_PUMP_INTERVAL, OFFLINE_REASONS_QUOTED, PRODUCER_ID_BLOCK,
};
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

/// Producer id blocks remembered by offset until this broker's own write takes its block.
const PRODUCER_BLOCKS_KEPT: usize = 1024;

/// See the module documentation. Lives on shard 0 only.
pub struct Controller {
    agent: Arc<BrokerAgent>,
    /// Taken by the pump.
    updates: RefCell<Option<Receiver<MetadataUpdate>>>,
    /// The partitions each applied record created that could not be opened, by offset,
    /// until the write that waits for them takes them.
    offline_by_offset: RefCell<BTreeMap<i64, Vec<(TopicPartition, String)>>>,
    /// The end of each producer id block stored, by offset.
    producer_blocks: RefCell<BTreeMap<i64, i64>>,
    /// The last offset every shard applied.
    applied_everywhere: Cell<i64>,
    /// One forwarded change at a time from this broker (the controller serializes them
    /// anyway; this keeps the offsets waited for in order).
    lock: FifoLock,
    /// The next producer id to hand out, and the end of this broker's block.
    next_producer_id: Cell<i64>,
    producer_ids_end: Cell<i64>,
    /// One producer id allocation at a time.
    producer_ids: FifoLock,
}

/// The intent of a change a handler describes as a record.
pub(crate) fn intent_of(record: MetadataRecord) -> Result<Intent, KafkaError> {
    Ok(match record {
        MetadataRecord::CreateTopic { name, topic_id, partitions, replication_factor, configs } => {
            Intent::CreateTopic(NewTopic {
                name,
                topic_id,
                partitions,
                replication_factor,
                assignments: Vec::new(),
                configs,
            })
        }
        MetadataRecord::DeleteTopic { name } => Intent::DeleteTopic { name },
        MetadataRecord::CreatePartitions { name, partitions } => {
            Intent::CreatePartitions { name, partitions, assignments: Vec::new() }
        }
        MetadataRecord::SetTopicConfigs { name, configs } => {
            Intent::SetTopicConfigs { name, configs }
        }
        other => {
            return Err(KafkaError::new(
                code::INVALID_REQUEST,
                format!("{other:?} is the controller's to write"),
            ))
        }
    })
}

fn kafka_error(outcome: Outcome) -> KafkaError {
    KafkaError::new(outcome.code, outcome.message)
}

impl Controller {
    /// `applied`: the offset the shards' images start at.
    pub fn new(agent: Arc<BrokerAgent>, updates: Receiver<MetadataUpdate>, applied: i64) -> Self {
        Self {
            agent,
            updates: RefCell::new(Some(updates)),
            offline_by_offset: RefCell::new(BTreeMap::new()),
            applied_everywhere: Cell::new(applied),
            producer_blocks: RefCell::new(BTreeMap::new()),
            lock: FifoLock::new(),
            next_producer_id: Cell::new(0),
            producer_ids_end: Cell::new(0),
            producer_ids: FifoLock::new(),
        }
    }

    pub fn agent(&self) -> &Arc<BrokerAgent> {
        &self.agent
    }

    /// Applies the metadata the agent fetches, in order, on every shard, until the shard
    /// stops. Runs as a task on shard 0.
    pub async fn pump(self: Rc<Self>, shard: Rc<Shard>) {
        let Some(updates) = self.updates.borrow_mut().take() else { return };
        while !shard.stopping() {
            let update = match updates.try_recv() {
                Ok(update) => update,
                Err(TryRecvError::Empty) => {
                    glommio::timer::sleep(METADATA_PUMP_INTERVAL).await;
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
            };
            match update {
                MetadataUpdate::Records { first_offset, records } => {
                    self.apply_everywhere(&shard, first_offset, records).await;
                }
                MetadataUpdate::Snapshot(image) => {
                    // Only a broker more than the controller's retained records behind
                    // gets one while running. Rather than reconcile every partition in
                    // place, the broker stops (as on SIGTERM: logs flushed, checkpoints
                    // written); started again, it catches up from the snapshot.
                    error!(
                        offset = image.offset(),
                        applied = shard.metadata_cache.offset(),
                        "this broker fell behind the controller's retained metadata; the broker stops: start it again to catch up from the snapshot"
                    );
                    shard.stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    async fn apply_everywhere(
        &self,
        shard: &Rc<Shard>,
        first_offset: i64,
        records: Vec<MetadataRecord>,
    ) {
        let count = i64::try_from(records.len()).unwrap_or(i64::MAX);
        {
            let mut blocks = self.producer_blocks.borrow_mut();
            for (index, record) in records.iter().enumerate() {
                if let MetadataRecord::ProducerIds { end } = record {
                    blocks.insert(first_offset + index as i64, *end);
                }
            }
            // Other brokers' blocks are of no use here; keep the latest few for the write
            // that waits for its own.
            while blocks.len() > PRODUCER_BLOCKS_KEPT {
                blocks.pop_first();
            }
        }
        let mut failed = Vec::new();
        for target in 0..shard.shards() {
            let answer = if target == shard.id {
                ShardResponse::Applied(shard.apply_metadata_batch(first_offset, &records).await)
            } else {
                let request = ShardRequest::Apply { first_offset, records: records.clone() };
                shard.remote(target, request).await
            };
            match answer {
                ShardResponse::Applied(Ok(applied)) => {
                    let mut offline = self.offline_by_offset.borrow_mut();
                    for (offset, tp, reason) in applied.offline_at {
                        offline.entry(offset).or_default().push((tp, reason));
                    }
                }
                ShardResponse::Applied(Err(reason)) => {
                    failed.push(format!("shard {target}: {reason}"))
                }
                _ => warn!(shard = target, "shard did not apply metadata (stopping?)"),
            }
        }
        if !failed.is_empty() {
            error!(failed = %failed.join("; "), "metadata not applied on every shard; those shards stopped serving");
            return;
        }
        self.applied_everywhere.set(first_offset + count - 1);
        self.agent.applied(first_offset + count - 1);
    }

    /// Forwards a change (as an intent) to the active controller; unless `validate_only`,
    /// waits until this broker applied what it stored.
    pub async fn change(
        &self,
        shard: &Rc<Shard>,
        intent: Intent,
        validate_only: bool,
    ) -> Result<Applied, KafkaError> {
        let (mut outcomes, last_offset) = self.write(shard, vec![intent], validate_only).await?;
        let outcome = outcomes.pop().unwrap_or_else(Outcome::ok);
        if !outcome.is_ok() {
            return Err(kafka_error(outcome));
        }
        Ok(self.take_applied(last_offset))
    }

    /// Forwards intents; the outcome of each once this broker applied what was stored.
    pub async fn write(
        &self,
        shard: &Rc<Shard>,
        intents: Vec<Intent>,
        validate_only: bool,
    ) -> Result<(Vec<Outcome>, i64), KafkaError> {
        let _permit = self.lock.lock().await;
        if let Some(fenced) = shard.metadata_cache.fenced() {
            return Err(KafkaError::new(code::NOT_CONTROLLER, fenced.to_string()));
        }
        let before = self.applied_everywhere.get();
        let agent = self.agent.clone();
        let written = glommio::executor()
            .spawn_blocking(move || {
                // glommio's pool does not catch a panic: its future would never finish.
                let call = || agent.write(intents, validate_only, CONTROLLER_WRITE_TIMEOUT);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|_| {
                    Err(Outcome::error(code::UNKNOWN_SERVER_ERROR, "the controller call panicked"))
                })
            })
            .await
            .map_err(kafka_error)?;
        let (outcomes, last_offset) = written;
        if last_offset > before {
            self.wait_applied(shard, last_offset).await?;
            info!(offset = last_offset, "metadata change stored and applied");
        }
        Ok((outcomes, last_offset))
    }

    /// Waits until every shard applied the metadata up to `offset`.
    async fn wait_applied(&self, shard: &Rc<Shard>, offset: i64) -> Result<(), KafkaError> {
        let deadline = Instant::now() + CONTROLLER_WRITE_TIMEOUT;
        while self.applied_everywhere.get() < offset {
            if let Some(fenced) = shard.metadata_cache.fenced() {
                return Err(KafkaError::new(code::UNKNOWN_SERVER_ERROR, fenced.to_string()));
            }
            if Instant::now() >= deadline || shard.stopping() {
                return Err(KafkaError::new(
                    code::REQUEST_TIMED_OUT,
                    format!("the change is stored at offset {offset} but not yet applied here"),
                ));
            }
            glommio::timer::sleep(METADATA_PUMP_INTERVAL).await;
        }
        Ok(())
    }

    /// The partitions that could not be opened by records up to `last_offset`.
    fn take_applied(&self, last_offset: i64) -> Applied {
        let mut offline_by_offset = self.offline_by_offset.borrow_mut();
        let rest = offline_by_offset.split_off(&(last_offset + 1));
        let taken = std::mem::replace(&mut *offline_by_offset, rest);
        Applied { offline: taken.into_values().flatten().collect() }
    }

    /// The next producer id, from a new block the controller stores when this broker's
    /// block is used up (blocks are the brokers' own: ids are never handed out twice).
    pub async fn allocate_producer_id(&self, shard: &Rc<Shard>) -> Result<i64, KafkaError> {
        let _permit = self.producer_ids.lock().await;
        let next = self.next_producer_id.get();
        if next >= self.producer_ids_end.get() {
            let intent = Intent::AllocateProducerIds { count: PRODUCER_ID_BLOCK };
            let (mut outcomes, last_offset) = self.write(shard, vec![intent], false).await?;
            if let Some(outcome) = outcomes.pop().filter(|o| !o.is_ok()) {
                return Err(kafka_error(outcome));
            }
            let end = self.producer_blocks.borrow_mut().remove(&last_offset).ok_or_else(|| {
                KafkaError::new(code::UNKNOWN_SERVER_ERROR, "the producer id block was not seen")
            })?;
            self.producer_blocks.borrow_mut().retain(|&offset, _| offset > last_offset);
            self.next_producer_id.set(end - PRODUCER_ID_BLOCK);
            self.producer_ids_end.set(end);
        }
        let id = self.next_producer_id.get();
        self.next_producer_id.set(id + 1);
        Ok(id)
    }

    /// A request that reads from the active controller (DescribeMetadataQuorum,
    /// ListPartitionReassignments), on the blocking pool.
    pub async fn call(&self, request: ControllerRequest) -> Result<ControllerResponse, KafkaError> {
        let agent = self.agent.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let call = || agent.call(&request, CONTROLLER_WRITE_TIMEOUT);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
                    .unwrap_or_else(|_| Err("the controller call panicked".to_string()))
            })
            .await
            .map_err(|reason| KafkaError::new(code::REQUEST_TIMED_OUT, reason))
    }

    /// Asks the controller to let this broker stop, leadership moved away first; waits up
    /// to `timeout` (on the blocking pool).
    pub async fn controlled_shutdown(&self, timeout: Duration) -> bool {
        let agent = self.agent.clone();
        glommio::executor().spawn_blocking(move || agent.controlled_shutdown(timeout)).await
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
