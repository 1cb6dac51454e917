//! The read side of the replica manager: Fetch (and its purgatory of parked long polls),
//! ListOffsets, DeleteRecords, OffsetForLeaderEpoch, DescribeProducers, and the
//! coordinators' replay of their internal topics.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalSender};
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::partition::DeleteRecordsError;
use sluice_engine::producer::ProducerView;
use sluice_engine::replay;
use sluice_engine::timer::{DelayedOperation, Watched};
use tracing::{debug, error};

use super::types::{
    list_offsets, EpochPart, FetchPart, FetchResult, ListOffsetsPart, ListOffsetsResult, Watch,
};
use super::{Partition, ReplicaManager};
use crate::coordinator_host::Replayed;
use crate::error::{code, from_epoch_mismatch, from_log_error, KafkaError};
use crate::zerocopy::{FileRange, RecordBytes};

/// A fetch parked until one of its partitions grows past the offset it last saw.
pub struct FetchWaiter {
    positions: Vec<Watch>,
    notify: LocalSender<()>,
}

impl FetchWaiter {
    /// Wakes the parked fetch (it answers with what it has).
    pub fn wake(&self) {
        let _ = self.notify.try_send(());
    }
}

/// What a parked fetch checks: the shard's partitions.
pub struct LogEnds<'a>(&'a HashMap<TopicPartition, Rc<Partition>>);

impl<'a> DelayedOperation<LogEnds<'a>> for FetchWaiter {
    fn try_complete(&mut self, ends: &mut LogEnds<'a>) -> bool {
        self.positions.iter().any(|watch| match ends.0.get(&watch.tp) {
            Some(partition) if watch.follower => partition.replica.log_end_offset() > watch.seen,
            Some(partition) => partition.replica.fetch_bound(watch.read_committed) > watch.seen,
            // Deleted or moved: the fetch answers now with the error.
            None => true,
        })
    }
}

/// Why an internal topic's partition could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadRecordsError {
    #[error("{}", .0.message)]
    Unavailable(KafkaError),
    #[error("{0}")]
    Replay(#[from] sluice_engine::replay::ReplayError),
}

impl ReplicaManager {
    /// Wakes the fetches waiting on `tp`.
    pub(super) fn on_append(&self, tp: &TopicPartition) {
        let partitions = self.partitions.borrow();
        let completed =
            self.fetch_waiters.with(|waiters| waiters.check_key(tp, &mut LogEnds(&partitions)));
        for done in completed {
            done.op.wake();
        }
    }

    pub async fn fetch(&self, part: FetchPart) -> FetchResult {
        let partition = match self.leader(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return FetchResult::failed(error),
        };
        let replica = &partition.replica;
        if let Err(mismatch) = replica.check_leader_epoch(part.current_leader_epoch) {
            return FetchResult::failed(from_epoch_mismatch(mismatch));
        }
        let follower = part.replica_id >= 0;
        if follower {
            if let Some(diverging) = self.follower_fetched(&partition, &part) {
                return diverging;
            }
        }
        let high_watermark = replica.high_watermark();
        let last_stable_offset = replica.last_stable_offset();
        // A follower copies the whole log; clients read what the ISR has.
        let bound = if follower {
            replica.log_end_offset()
        } else if part.read_committed {
            last_stable_offset
        } else {
            high_watermark
        };
        let log_start_offset = replica.log_start_offset();
        let aborted = part.read_committed.then(|| replica.aborted_between(part.offset, bound));
        let answer = |error: Option<KafkaError>, records: RecordBytes| FetchResult {
            error,
            high_watermark,
            last_stable_offset,
            log_start_offset,
            aborted: aborted.clone(),
            records,
            current_leader: None,
            diverging_epoch: None,
        };
        let none = RecordBytes::default;
        let readable_end = if follower { bound } else { high_watermark };
        if part.offset < log_start_offset || part.offset > readable_end {
            let message =
                format!("offset {} is outside [{log_start_offset}, {readable_end}]", part.offset);
            return answer(Some(KafkaError::new(code::OFFSET_OUT_OF_RANGE, message)), none());
        }
        if part.offset >= bound || part.max_bytes == 0 {
            return answer(None, none());
        }
        // Direct mode: a tail fetch is served from the batches just appended.
        if let Some(batches) = partition.recent.read(part.offset, part.max_bytes, bound) {
            return answer(None, RecordBytes::Cached(batches));
        }
        let slice = match replica.log().read(part.offset, part.max_bytes, bound, true).await {
            Ok(slice) => slice,
            Err(error) => return answer(Some(from_log_error(&error)), none()),
        };
        let Some(file) = slice.file.as_ref() else { return answer(None, none()) };
        // Page-cache mode: hand out the file range; the connection's writer sends it with
        // sendfile. Direct mode: the DMA read is the one copy.
        match file.shared_fd() {
            Ok(Some(fd)) => {
                let range = FileRange { fd, position: slice.position, len: slice.bytes };
                return answer(None, RecordBytes::File(range));
            }
            Ok(None) => {}
            Err(error) => {
                error!(partition = %part.tp, %error, "fetch: cannot share the segment file");
                let error = KafkaError::new(code::KAFKA_STORAGE_ERROR, error.to_string());
                return answer(Some(error), none());
            }
        }
        match slice.read().await {
            Ok(bytes) => answer(None, RecordBytes::Memory(Bytes::copy_from_slice(&bytes))),
            Err(error) => {
                error!(partition = %part.tp, %error, "fetch read failed");
                answer(Some(from_log_error(&error)), none())
            }
        }
    }

    /// A follower's fetch: first its history (KIP-320: if the leader's log does not
    /// continue the follower's `LastFetchedEpoch` up to its fetch offset, the answer is
    /// where they part, and the follower truncates there), then its progress: its log end
    /// is its fetch offset, which may move the high watermark (waking acks=all produces and
    /// consumers) and the ISR.
    fn follower_fetched(&self, partition: &Partition, part: &FetchPart) -> Option<FetchResult> {
        use sluice_engine::clock::Clock;
        let replica = &partition.replica;
        if part.last_fetched_epoch >= 0 {
            let (epoch, end_offset) = replica.end_offset_for(part.last_fetched_epoch);
            if epoch < part.last_fetched_epoch || end_offset < part.offset {
                let mut result = FetchResult::failed(KafkaError::new(code::NONE, ""));
                result.error = None;
                result.high_watermark = replica.high_watermark();
                result.last_stable_offset = replica.last_stable_offset();
                result.log_start_offset = replica.log_start_offset();
                result.diverging_epoch = Some((epoch, end_offset));
                return Some(result);
            }
        }
        if part.offset > replica.log_end_offset() {
            // Ahead of the leader (a history this leader does not have, from a follower
            // that sent no epoch): answered out of range below, and it truncates.
            return None;
        }
        match replica.follower_fetched(part.replica_id, part.offset, self.clock.monotonic_ms()) {
            Some(true) => self.on_high_watermark(&part.tp),
            Some(false) => {}
            None => {
                debug!(partition = %part.tp, replica = part.replica_id, "fetch from a broker that is not a replica");
            }
        }
        None
    }

    /// Parks until one of `positions` grows past what its fetch saw, or `wait_ms` passes.
    pub async fn watch(&self, positions: Vec<Watch>, wait_ms: u64) {
        use sluice_engine::clock::Clock;
        let (sender, receiver) = local_channel::new_bounded(1);
        let keys: Vec<TopicPartition> = positions.iter().map(|watch| watch.tp.clone()).collect();
        let deadline_ms = self.clock.monotonic_ms().saturating_add(wait_ms);
        let waiter = FetchWaiter { positions, notify: sender };
        let parked = {
            let partitions = self.partitions.borrow();
            self.fetch_waiters.with(|waiters| {
                waiters.try_complete_else_watch(
                    waiter,
                    keys,
                    deadline_ms,
                    &mut LogEnds(&partitions),
                )
            })
        };
        match parked {
            Ok(Watched::Completed(_)) => {}
            Ok(Watched::Parked(_)) => {
                let _ = receiver.recv().await;
            }
            Err(rejected) => {
                // Purgatory full: wait out the time without being woken early.
                debug!(error = ?rejected.error, "fetch purgatory full");
                glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
            }
        }
    }

    pub async fn list_offsets(&self, part: ListOffsetsPart) -> ListOffsetsResult {
        let failed = ListOffsetsResult::failed;
        let partition = match self.leader(&part.tp) {
            Ok(partition) => partition,
            Err(error) => return failed(error),
        };
        let replica = &partition.replica;
        if let Err(mismatch) = replica.check_leader_epoch(part.current_leader_epoch) {
            return failed(from_epoch_mismatch(mismatch));
        }
        let leader_epoch = replica.leader_epoch();
        let found =
            |timestamp, offset| ListOffsetsResult { error: None, timestamp, offset, leader_epoch };
        let log = replica.log();
        match part.timestamp {
            list_offsets::LATEST => found(-1, replica.fetch_bound(part.read_committed)),
            list_offsets::EARLIEST | list_offsets::EARLIEST_LOCAL => {
                found(-1, log.log_start_offset())
            }
            // No tiered storage: nothing is tiered.
            list_offsets::LATEST_TIERED => found(-1, -1),
            list_offsets::MAX_TIMESTAMP => match log.max_timestamp_and_offset() {
                Some(max) => found(max.timestamp, max.offset),
                None => found(-1, -1),
            },
            timestamp if timestamp >= 0 => match log.offset_for_timestamp(timestamp).await {
                Ok(Some(hit)) => found(hit.timestamp, hit.offset),
                Ok(None) => found(-1, -1),
                Err(error) => failed(from_log_error(&error)),
            },
            other => failed(KafkaError::new(code::INVALID_REQUEST, format!("timestamp {other}"))),
        }
    }

    pub async fn delete_records(
        &self,
        tp: &TopicPartition,
        offset: i64,
    ) -> Result<i64, KafkaError> {
        let partition = self.leader(tp)?;
        partition.replica.delete_records(offset).await.map_err(|error| match error {
            DeleteRecordsError::PastHighWatermark { .. } => {
                KafkaError::new(code::OFFSET_OUT_OF_RANGE, error.to_string())
            }
            DeleteRecordsError::Log(error) => from_log_error(&error),
        })
    }

    pub fn offset_for_leader_epoch(&self, part: &EpochPart) -> Result<(i32, i64), KafkaError> {
        let partition = self.leader(&part.tp)?;
        let replica = &partition.replica;
        replica.check_leader_epoch(part.current_leader_epoch).map_err(from_epoch_mismatch)?;
        Ok(replica.end_offset_for(part.leader_epoch))
    }

    pub fn producers(&self, tp: &TopicPartition) -> Result<Vec<ProducerView>, KafkaError> {
        Ok(self.leader(tp)?.replica.producers().views())
    }

    /// Every record of a partition, oldest first, with the transaction markers: the
    /// coordinators' replay of their internal topics when they take a partition over. Up
    /// to the log end, not the high watermark, as Kafka's classic coordinators load: a
    /// leader newly elected from the ISR has every acknowledged record, but may not have
    /// learnt the high watermark that covers the last ones yet.
    pub async fn read_all_records(
        &self,
        tp: &TopicPartition,
    ) -> Result<Vec<Replayed>, ReadRecordsError> {
        use kafka_protocol::records::RecordBatchDecoder;
        let partition = self.get(tp).map_err(ReadRecordsError::Unavailable)?;
        let replica = &partition.replica;
        let (start, end) = (replica.log_start_offset(), replica.log_end_offset());
        let mut records = Vec::new();
        replay::for_each_chunk(replica.log(), start, end, |offset, chunk| {
            let mut buffer = Bytes::copy_from_slice(chunk);
            let sets = RecordBatchDecoder::decode_all(&mut buffer).map_err(|e| e.to_string())?;
            for set in sets {
                for record in set.records {
                    if record.offset < offset {
                        continue;
                    }
                    if record.control {
                        // Key: version i16, type i16 (0 abort, 1 commit).
                        let kind = record.key.as_ref().filter(|k| k.len() >= 4).map(|k| k[3]);
                        if let Some(kind) = kind.filter(|&k| k <= 1) {
                            records.push(Replayed::Marker {
                                producer_id: record.producer_id,
                                commit: kind == 1,
                            });
                        }
                        continue;
                    }
                    if let Some(key) = record.key {
                        let producer_id = record.transactional.then_some(record.producer_id);
                        records.push(Replayed::Record { key, value: record.value, producer_id });
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(records)
    }
}
