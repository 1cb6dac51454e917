//! The write side of the replica manager: a client's Produce on a partition, the
//! coordinators' records in their internal topics, and transaction markers.

use std::rc::Rc;

use bytes::Bytes;
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;
use sluice_engine::io::IoMode;
use sluice_engine::log::LogError;
use sluice_engine::partition::{AppendError, Appended, LeaderAppend};
use sluice_engine::producer::Marker;
use tracing::{debug, error, warn};

use super::types::{ProducePart, ProduceResult};
use super::{Partition, ReplicaManager};
use crate::coordinator_host::Write;
use crate::error::{code, from_append_error, KafkaError};
use crate::group::OFFSETS_TOPIC;
use crate::txn::TXN_TOPIC;

impl ReplicaManager {
    pub async fn produce(&self, acks: i16, part: ProducePart) -> ProduceResult {
        let partition = match self.get(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return ProduceResult::failed(error),
        };
        let (log_append_time, min_insync_replicas, max_message_bytes) = {
            let settings = partition.settings.borrow();
            (settings.log_append_time, settings.min_insync_replicas, settings.log.max_message_bytes)
        };
        // One replica is in sync; acks=all needs min.insync.replicas of them.
        if acks == -1 && min_insync_replicas > 1 {
            return ProduceResult::failed(KafkaError::new(
                code::NOT_ENOUGH_REPLICAS,
                format!("1 in-sync replica, min.insync.replicas is {min_insync_replicas}"),
            ));
        }
        if part.tp.topic == OFFSETS_TOPIC || part.tp.topic == TXN_TOPIC {
            // Kafka's answer: only the coordinators write their internal topics.
            return ProduceResult::failed(KafkaError::new(
                code::INVALID_TOPIC_EXCEPTION,
                format!("cannot append to internal topic {}", part.tp.topic),
            ));
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
                ProduceResult {
                    error: None,
                    base_offset: info.base_offset,
                    log_append_time_ms: if log_append_time { now_ms } else { -1 },
                    log_start_offset: replica.log_start_offset(),
                }
            }
            Ok(Appended::Duplicate { base_offset }) => {
                debug!(partition = %part.tp, duplicate_base_offset = base_offset, "duplicate batch not written again");
                ProduceResult {
                    error: None,
                    base_offset,
                    log_append_time_ms: -1,
                    log_start_offset: replica.log_start_offset(),
                }
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
                ProduceResult::failed(from_append_error(&error))
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
        replica.append_internal(&mut bytes, begin_txn).await.map_err(|error| {
            error!(partition = %tp, %error, "internal record append failed");
            self.note_offline(&partition);
            from_append_error(&error)
        })?;
        self.on_append(tp);
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
