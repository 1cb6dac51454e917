//! The write side of the replica manager: a client's Produce on a partition, the
//! coordinators' records in their internal topics, and transaction markers.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalSender};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;
use sluice_engine::io::IoMode;
use sluice_engine::log::LogError;
use sluice_engine::partition::{AppendError, Appended, LeaderAppend};
use sluice_engine::producer::Marker;
use sluice_engine::timer::{DelayedOperation, Watched};
use tracing::{debug, error, warn};

use super::types::{ProducePart, ProduceResult};
use super::{Partition, ReplicaManager};
use crate::coordinator_host::Write;
use crate::error::{code, from_append_error, KafkaError};
use crate::group::OFFSETS_TOPIC;
use crate::txn::TXN_TOPIC;

/// How long a coordinator's record waits for the in-sync replicas (Kafka's
/// `offsets.commit.timeout.ms` default) before its request fails with REQUEST_TIMED_OUT.
const INTERNAL_REPLICATION_TIMEOUT_MS: u64 = 5_000;

/// An acks=all append waiting for the in-sync replicas (Kafka's DelayedProduce): the
/// high watermark of `tp` must reach `required` while this broker still leads at `epoch`.
#[derive(Debug, Clone)]
pub struct Replication {
    pub tp: TopicPartition,
    pub required: i64,
    pub epoch: i32,
}

/// A produce request's acks=all appends parked in the purgatory until all are replicated
/// (or leadership moved), or the request's timeout.
pub struct ProduceWaiter {
    waits: Vec<Replication>,
    notify: LocalSender<()>,
}

impl ProduceWaiter {
    pub fn wake(&self) {
        let _ = self.notify.try_send(());
    }
}

/// What a parked produce checks: the shard's partitions.
pub struct HighWatermarks<'a>(pub &'a HashMap<TopicPartition, Rc<Partition>>);

impl<'a> DelayedOperation<HighWatermarks<'a>> for ProduceWaiter {
    fn try_complete(&mut self, partitions: &mut HighWatermarks<'a>) -> bool {
        self.waits.iter().all(|wait| match partitions.0.get(&wait.tp) {
            Some(partition) => {
                !partition.replica.is_at(true, wait.epoch)
                    || partition.replica.high_watermark() >= wait.required
            }
            None => true,
        })
    }
}

impl ReplicaManager {
    /// The high watermark of `tp` moved: acks=all produces and consumer fetches waiting
    /// on it may complete.
    pub(super) fn on_high_watermark(&self, tp: &TopicPartition) {
        self.on_append(tp);
        let partitions = self.partitions.borrow();
        let completed = self
            .produce_waiters
            .with(|waiters| waiters.check_key(tp, &mut HighWatermarks(&partitions)));
        for done in completed {
            done.op.wake();
        }
    }

    /// Waits until every acks=all append of a request is on all in-sync replicas (each
    /// `waits[i]` belongs to `results[i]`), or `timeout_ms`; then answers each as Kafka's
    /// DelayedProduce does: REQUEST_TIMED_OUT if the high watermark did not get there,
    /// NOT_LEADER_OR_FOLLOWER if leadership moved first (the records may be truncated by
    /// the next leader), NOT_ENOUGH_REPLICAS_AFTER_APPEND if it got there with fewer than
    /// `min.insync.replicas` in sync. The client retries all three; idempotent producers
    /// without duplicates.
    pub async fn await_replication(
        &self,
        results: &mut [ProduceResult],
        waits: Vec<Option<Replication>>,
        timeout_ms: u64,
    ) {
        use sluice_engine::clock::Clock;
        let pending: Vec<Replication> = waits.iter().flatten().cloned().collect();
        if pending.is_empty() {
            return;
        }
        let (sender, receiver) = local_channel::new_bounded(1);
        let keys: Vec<TopicPartition> = pending.iter().map(|wait| wait.tp.clone()).collect();
        let deadline_ms = self.clock.monotonic_ms().saturating_add(timeout_ms);
        let waiter = ProduceWaiter { waits: pending, notify: sender };
        let parked = {
            let partitions = self.partitions.borrow();
            self.produce_waiters.with(|waiters| {
                waiters.try_complete_else_watch(
                    waiter,
                    keys,
                    deadline_ms,
                    &mut HighWatermarks(&partitions),
                )
            })
        };
        match parked {
            Ok(Watched::Completed(_)) => {}
            Ok(Watched::Parked(_)) => {
                let _ = receiver.recv().await;
            }
            Err(rejected) => {
                debug!(error = ?rejected.error, "produce purgatory full");
                glommio::timer::sleep(Duration::from_millis(timeout_ms)).await;
            }
        }
        for (result, wait) in results.iter_mut().zip(waits) {
            let Some(wait) = wait else { continue };
            let partition = self.partitions.borrow().get(&wait.tp).cloned();
            let error = match partition {
                None => {
                    Some((code::NOT_LEADER_OR_FOLLOWER, "the partition moved away".to_string()))
                }
                Some(partition) => {
                    let replica = &partition.replica;
                    let min_insync = partition.settings.borrow().min_insync_replicas;
                    if !replica.is_at(true, wait.epoch) {
                        Some((
                            code::NOT_LEADER_OR_FOLLOWER,
                            "leadership moved before the records were replicated".to_string(),
                        ))
                    } else if replica.high_watermark() < wait.required {
                        Some((
                            code::REQUEST_TIMED_OUT,
                            format!(
                                "not replicated to the in-sync replicas within {timeout_ms} ms"
                            ),
                        ))
                    } else if (replica.isr_len() as i64) < i64::from(min_insync) {
                        Some((
                            code::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                            format!(
                                "{} in-sync replicas, min.insync.replicas is {min_insync}",
                                replica.isr_len()
                            ),
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some((code, message)) = error {
                *result = ProduceResult::failed(KafkaError::new(code, message));
            }
        }
    }

    /// Appends one partition's batches as its leader. With acks=all the answer waits
    /// (see [`Self::await_replication`]) for the returned replication, if any.
    pub async fn produce(
        &self,
        acks: i16,
        part: ProducePart,
    ) -> (ProduceResult, Option<Replication>) {
        let partition = match self.leader(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return (ProduceResult::failed(error), None),
        };
        let (log_append_time, min_insync_replicas, max_message_bytes) = {
            let settings = partition.settings.borrow();
            (settings.log_append_time, settings.min_insync_replicas, settings.log.max_message_bytes)
        };
        // acks=all needs min.insync.replicas in sync before anything is written.
        let in_sync = partition.replica.isr_len();
        if acks == -1 && (in_sync as i64) < i64::from(min_insync_replicas) {
            let error = KafkaError::new(
                code::NOT_ENOUGH_REPLICAS,
                format!("{in_sync} in-sync replicas, min.insync.replicas is {min_insync_replicas}"),
            );
            return (ProduceResult::failed(error), None);
        }
        let epoch = partition.replica.leader_epoch();
        // Nothing to wait for when the high watermark is already there (one replica).
        let replication = |required: i64| {
            (acks == -1 && partition.replica.high_watermark() < required).then(|| Replication {
                tp: part.tp.clone(),
                required,
                epoch,
            })
        };
        if part.tp.topic == OFFSETS_TOPIC || part.tp.topic == TXN_TOPIC {
            // Kafka's answer: only the coordinators write their internal topics.
            let error = KafkaError::new(
                code::INVALID_TOPIC_EXCEPTION,
                format!("cannot append to internal topic {}", part.tp.topic),
            );
            return (ProduceResult::failed(error), None);
        }
        // The replica rewrites offsets in place (and with LogAppendTime, timestamps and
        // the CRC): the records are mutable, and usually the request frame itself.
        let mut bytes = part.records.unwrap_or_default();
        let now_ms = self.clock.wall_ms();
        let options = LeaderAppend {
            log_append_time_ms: log_append_time.then_some(now_ms),
            max_message_bytes,
        };
        let replica = &partition.replica;
        match replica.append_as_leader(&mut bytes, options).await {
            Ok(Appended::Written(info)) => {
                if replica.log().options().io_mode == IoMode::Direct {
                    let end = info.last_offset + 1;
                    self.remember(&partition, info.base_offset, end, bytes.freeze());
                }
                self.on_append(&part.tp);
                let result = ProduceResult {
                    error: None,
                    base_offset: info.base_offset,
                    log_append_time_ms: if log_append_time { now_ms } else { -1 },
                    log_start_offset: replica.log_start_offset(),
                };
                (result, replication(info.last_offset + 1))
            }
            Ok(Appended::Duplicate { base_offset }) => {
                debug!(partition = %part.tp, duplicate_base_offset = base_offset, "duplicate batch not written again");
                let result = ProduceResult {
                    error: None,
                    base_offset,
                    log_append_time_ms: -1,
                    log_start_offset: replica.log_start_offset(),
                };
                // A retry of a batch the previous answer did not acknowledge: acknowledged
                // once it is replicated, as the first time.
                (result, replication(base_offset + 1))
            }
            Err(error) => {
                match &error {
                    AppendError::Log(log_error) if !matches!(log_error, LogError::Batch(_)) => {
                        if let Some(held_back) = self.append_failure_admitted() {
                            error!(
                                partition = %part.tp, error = %log_error, failures_not_logged = held_back,
                                "append failed (at most one such line per second per shard)"
                            );
                        }
                    }
                    // As Kafka: a refused sequence, or bytes that are not whole batches, are
                    // the client's to hear about, not the broker's log's.
                    AppendError::Sequence { .. }
                    | AppendError::DuplicateAmongOthers
                    | AppendError::Malformed(_) => {
                        debug!(partition = %part.tp, %error, "produce refused");
                    }
                    _ => warn!(partition = %part.tp, %error, "rejected produce batch"),
                }
                self.note_offline(&partition);
                (ProduceResult::failed(from_append_error(&error)), None)
            }
        }
    }

    /// Appends records (key, value) to an internal topic's partition on this shard, as one
    /// batch; `txn`: a transactional batch of that producer (id, epoch).
    pub async fn append_records(
        &self,
        tp: &TopicPartition,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        if writes.is_empty() {
            return Ok(());
        }
        let partition = self.get(tp)?;
        let replica = &partition.replica;
        if let Some((producer_id, epoch)) = txn {
            // A fenced producer's late write (its transaction was aborted with a newer
            // epoch) must not join the newer epoch's transaction: Kafka's log rejects it
            // the same way.
            if replica.producers().check_marker(producer_id, epoch).is_err() {
                return Err(KafkaError::new(
                    code::INVALID_PRODUCER_EPOCH,
                    format!("producer {producer_id} epoch {epoch} is fenced on {tp}"),
                ));
            }
        }
        let now_ms = self.clock.wall_ms();
        let (producer_id, producer_epoch) = txn.unwrap_or((-1, -1));
        let leader_epoch = replica.leader_epoch();
        let records: Vec<Record> = writes
            .into_iter()
            .enumerate()
            .map(|(index, (key, value))| Record {
                transactional: txn.is_some(),
                control: false,
                delete_horizon: false,
                partition_leader_epoch: leader_epoch,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                // The encoder takes offset deltas from these; the log assigns the base.
                offset: index as i64,
                sequence: -1,
                timestamp: now_ms,
                key: Some(Bytes::from(key)),
                value: value.map(Bytes::from),
                headers: Default::default(),
            })
            .collect();
        let mut buffer = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buffer, &records, &options).map_err(|error| {
            KafkaError::new(code::UNKNOWN_SERVER_ERROR, format!("encoding records: {error}"))
        })?;
        let mut bytes = buffer.to_vec();
        let begin_txn = |info: &sluice_engine::log::AppendInfo| {
            if let Some((producer_id, epoch)) = txn {
                replica.producers_mut().begin_txn(producer_id, epoch, info.base_offset);
            }
        };
        let epoch = replica.leader_epoch();
        let info = replica.append_internal(&mut bytes, begin_txn).await.map_err(|error| {
            error!(partition = %tp, %error, "internal record append failed");
            self.note_offline(&partition);
            from_append_error(&error)
        })?;
        self.on_append(tp);
        // As Kafka's coordinators append (acks=all): a committed offset or transaction
        // state is answered once every in-sync replica has it, so a new coordinator
        // elected from the ISR has it too.
        let required = info.last_offset + 1;
        if replica.high_watermark() < required {
            let mut results = [ProduceResult {
                error: None,
                base_offset: info.base_offset,
                log_append_time_ms: -1,
                log_start_offset: -1,
            }];
            let wait = Replication { tp: tp.clone(), required, epoch };
            self.await_replication(&mut results, vec![Some(wait)], INTERNAL_REPLICATION_TIMEOUT_MS)
                .await;
            let [result] = results;
            if let Some(error) = result.error {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Writes one transaction marker: a control batch in the partition's log, then the
    /// end of the producer's transaction there. `Ok(true)` when a marker was written
    /// (`false`: the partition is gone, or the marker is stale).
    pub async fn write_marker(
        &self,
        tp: &TopicPartition,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<bool, KafkaError> {
        let partition = match self.get(tp) {
            Ok(partition) => partition,
            // Deleted since it joined the transaction: nothing to mark.
            Err(error) if error.code == code::UNKNOWN_TOPIC_OR_PARTITION => return Ok(false),
            Err(error) => return Err(error),
        };
        let marker = Marker { committed: commit, coordinator_epoch: 0 };
        let now_ms = self.clock.wall_ms();
        let written =
            partition.replica.append_marker(producer_id, epoch, marker, now_ms).await.map_err(
                |error| {
                    error!(partition = %tp, %error, "transaction marker append failed");
                    self.note_offline(&partition);
                    from_append_error(&error)
                },
            )?;
        let Some((info, bytes)) = written else { return Ok(false) };
        if partition.replica.log().options().io_mode == IoMode::Direct {
            self.remember(&partition, info.base_offset, info.last_offset + 1, Bytes::from(bytes));
        }
        self.on_append(tp);
        Ok(true)
    }

    /// The partitions on this shard, for the coordinators' marker bookkeeping.
    pub fn partition(&self, tp: &TopicPartition) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(tp).cloned()
    }
}
