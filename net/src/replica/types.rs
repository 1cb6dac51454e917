//! What a shard asks of the replica manager of the shard owning a partition, and what it
//! answers: one part per partition of a Produce, Fetch, ListOffsets or
//! OffsetForLeaderEpoch request. They travel between shards in mesh messages.

use bytes::BytesMut;
use sluice_engine::checkpoint::TopicPartition;

use crate::error::KafkaError;
use crate::zerocopy::RecordBytes;

#[derive(Debug)]
pub struct ProducePart {
    pub tp: TopicPartition,
    /// The partition's record batches, mutable: the log assigns offsets in place. They
    /// are usually the request frame's own bytes (see `handlers::produce`), not a copy.
    pub records: Option<BytesMut>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResult {
    pub error: Option<KafkaError>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

impl ProduceResult {
    pub fn failed(error: KafkaError) -> Self {
        Self { error: Some(error), base_offset: -1, log_append_time_ms: -1, log_start_offset: -1 }
    }
}

#[derive(Debug, Clone)]
pub struct FetchPart {
    pub tp: TopicPartition,
    pub offset: i64,
    pub max_bytes: u64,
    pub current_leader_epoch: i32,
    /// Isolation level read_committed: read up to the last stable offset.
    pub read_committed: bool,
    /// The fetching follower's broker id; -1 for a consumer.
    pub replica_id: i32,
    /// A follower's `LastFetchedEpoch` (v12+; -1: none).
    pub last_fetched_epoch: i32,
}

/// A partition a parked fetch waits on: it wakes when the partition's bound (high
/// watermark, or last stable offset for read_committed; the log end for a follower)
/// passes `seen`.
#[derive(Debug, Clone)]
pub struct Watch {
    pub tp: TopicPartition,
    pub seen: i64,
    pub read_committed: bool,
    /// A follower's fetch: it waits for the log end, not the high watermark.
    pub follower: bool,
}

#[derive(Debug, Clone)]
pub struct FetchResult {
    pub error: Option<KafkaError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// read_committed: the aborted transactions (producer id, first offset) overlapping
    /// the records; `None` for read_uncommitted.
    pub aborted: Option<Vec<(i64, i64)>>,
    pub records: RecordBytes,
    /// With NOT_LEADER_OR_FOLLOWER: the leader (id, epoch) the metadata names, for v12+'s
    /// `CurrentLeader` (KIP-951).
    pub current_leader: Option<(i32, i32)>,
    /// A follower's fetch whose `LastFetchedEpoch` this leader's history does not continue:
    /// the (epoch, end offset) it should truncate to (v12+'s `DivergingEpoch`, KIP-320).
    pub diverging_epoch: Option<(i32, i64)>,
}

impl FetchResult {
    pub fn failed(error: KafkaError) -> Self {
        Self {
            error: Some(error),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted: None,
            records: RecordBytes::default(),
            current_leader: None,
            diverging_epoch: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListOffsetsPart {
    pub tp: TopicPartition,
    pub timestamp: i64,
    pub current_leader_epoch: i32,
    /// Isolation level read_committed: "latest" is the last stable offset.
    pub read_committed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResult {
    pub error: Option<KafkaError>,
    pub timestamp: i64,
    pub offset: i64,
    /// The partition's leader epoch when the offset was found.
    pub leader_epoch: i32,
}

impl ListOffsetsResult {
    pub fn failed(error: KafkaError) -> Self {
        Self { error: Some(error), timestamp: -1, offset: -1, leader_epoch: -1 }
    }
}

#[derive(Debug, Clone)]
pub struct EpochPart {
    pub tp: TopicPartition,
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

/// Kafka's special ListOffsets timestamps.
pub mod list_offsets {
    pub const LATEST: i64 = -1;
    pub const EARLIEST: i64 = -2;
    pub const MAX_TIMESTAMP: i64 = -3;
    pub const EARLIEST_LOCAL: i64 = -4;
    pub const LATEST_TIERED: i64 = -5;
}
