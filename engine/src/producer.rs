//! Idempotent producer state of one partition: per producer id, its epoch and the
//! sequence ranges and offsets of its last five batches. Kafka's `ProducerStateManager`
//! rules, sans-I/O: a batch continues the producer's sequence (accepted), repeats one of
//! the cached batches (a duplicate: answered with the original offsets, not written
//! again), or is refused (out of order, old epoch, unknown producer).
//!
//! Appends are pipelined (up to five requests in flight per connection), so a batch is
//! checked and staged *before* its append completes, in arrival order, and the next batch
//! is checked against it; [`ProducerStates::appended`] fills in the offsets, or
//! [`ProducerStates::append_failed`] forgets the producer so that its next batch is
//! refused and the client resets its sequence rather than having a lost batch counted as
//! written.

use std::collections::{BTreeSet, HashMap, VecDeque};

use thiserror::Error;

use crate::batch::{self, Batch};

pub use crate::limits::CACHED_BATCHES;

const SNAPSHOT_VERSION: i16 = 1;
/// pid 8 + epoch 2 + last sequence 4 + last offset 8 + delta 4 + timestamp 8 + coordinator
/// epoch 4 + transaction first offset 8.
const SNAPSHOT_ENTRY_BYTES: usize = 46;

/// Why a batch is refused. The names are Kafka's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    /// The batch's epoch is older than the producer's.
    InvalidProducerEpoch,
    /// A gap (or a jump backwards) in the sequence.
    OutOfOrderSequence,
    /// No state for this producer and the batch does not start a sequence.
    UnknownProducerId,
    /// A duplicate of a batch whose append has not finished: retry later.
    DuplicateInFlight,
}

/// What to do with a checked batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it (it is staged: call `appended` or `append_failed`).
    Append,
    /// Already written at these offsets: answer with them, write nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// The producer fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIdentity {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    /// `first_sequence + last_offset_delta`, wrapping past `i32::MAX` to 0.
    pub last_sequence: i32,
}

impl BatchIdentity {
    pub fn new(producer_id: i64, epoch: i16, first_sequence: i32, last_offset_delta: i32) -> Self {
        let last = (i64::from(first_sequence) + i64::from(last_offset_delta)) % (1i64 << 31);
        BatchIdentity { producer_id, epoch, first_sequence, last_sequence: last as i32 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedBatch {
    first_sequence: i32,
    last_sequence: i32,
    /// `None` while the append is in flight.
    offsets: Option<(i64, i64)>,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    /// The first offset of the producer's open transaction on this partition.
    txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last transaction marker.
    coordinator_epoch: i32,
    /// The max timestamp of the producer's last batch.
    last_timestamp: i64,
}

/// Why a producer snapshot cannot be read. Every kind means the same to the caller (skip
/// the snapshot and replay the log); the kinds tell a log line, and the fuzz target,
/// which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("{len} bytes is too short")]
    TooShort { len: usize },
    #[error("version {version}")]
    Version { version: i16 },
    #[error("CRC mismatch")]
    Crc,
    #[error("count {count}")]
    Count { count: i32 },
    #[error("{len} bytes for {count} entries")]
    Length { len: usize, count: usize },
    #[error("producer id {producer_id}: offset delta {delta} for last offset {last_offset}")]
    OffsetDelta { producer_id: i64, delta: i32, last_offset: i64 },
    #[error("producer id {producer_id} twice")]
    Duplicate { producer_id: i64 },
}

/// Every idempotent producer's state on one partition, and the open transactions.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    /// Open transactions as (first offset, producer id): the smallest first offset is
    /// where the stable part of the log ends (the last stable offset).
    ongoing: BTreeSet<(i64, i64)>,
}

/// A transaction that a marker ended on this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    /// The offset of the transaction's first batch here (`None`: the transaction wrote
    /// nothing to this partition, only the marker).
    pub first_offset: Option<i64>,
    /// The marker's offset.
    pub last_offset: i64,
    pub committed: bool,
}

/// A producer as DescribeProducers shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerView {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
    /// -1 when no transaction is open.
    pub current_txn_start_offset: i64,
}

/// What a producer batch in the log says, for rebuilding the state from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedBatch {
    pub identity: BatchIdentity,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub transactional: bool,
    /// A control batch: the marker it holds (`None` for data batches).
    pub marker: Option<Marker>,
}

/// A transaction marker: the control record of a control batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub committed: bool,
    pub coordinator_epoch: i32,
}

/// The control attribute of a batch (bit 5).
const ATTR_CONTROL: i16 = 0x20;

/// Kafka's control record types (the key's second field).
pub const CONTROL_ABORT: i16 = 0;
pub const CONTROL_COMMIT: i16 = 1;

impl LoggedBatch {
    /// The producer fields of a batch in the log; `None` for batches without a producer
    /// id (plain producers). A control batch whose record does not decode as a marker
    /// yields no marker (Kafka has other control types; none end a transaction).
    pub fn of(batch: &Batch<'_>) -> Option<LoggedBatch> {
        if batch.producer_id() < 0 {
            return None;
        }
        let marker = if batch.is_control() { marker_of(batch) } else { None };
        Some(LoggedBatch {
            identity: BatchIdentity::new(
                batch.producer_id(),
                batch.producer_epoch(),
                batch.base_sequence(),
                batch.last_offset_delta(),
            ),
            base_offset: batch.base_offset(),
            last_offset: batch.last_offset(),
            max_timestamp: batch.max_timestamp(),
            transactional: batch.is_transactional(),
            marker,
        })
    }
}

/// The marker in a control batch: its one record's key is (version i16, type i16) and
/// its value (version i16, coordinator epoch i32).
pub fn marker_of(batch: &Batch<'_>) -> Option<Marker> {
    let records = batch.records_bytes();
    let (_length, used) = batch::read_varint(records)?;
    let body = records.get(used..)?;
    // attributes i8, timestampDelta varlong, offsetDelta varint, key length varint.
    let mut at = 1usize;
    for _ in 0..2 {
        let (_, used) = batch::read_varint(body.get(at..)?)?;
        at += used;
    }
    let (key_length, used) = batch::read_varint(body.get(at..)?)?;
    at += used;
    if key_length < 4 {
        return None;
    }
    let key = body.get(at..at + 4)?;
    at += usize::try_from(key_length).ok()?;
    let kind = i16::from_be_bytes([key[2], key[3]]);
    let (value_length, used) = batch::read_varint(body.get(at..)?)?;
    at += used;
    let coordinator_epoch = if value_length >= 6 {
        let value = body.get(at..at + 6)?;
        i32::from_be_bytes([value[2], value[3], value[4], value[5]])
    } else {
        0
    };
    match kind {
        CONTROL_ABORT => Some(Marker { committed: false, coordinator_epoch }),
        CONTROL_COMMIT => Some(Marker { committed: true, coordinator_epoch }),
        _ => None,
    }
}

/// A control batch holding one transaction marker, as the broker writes it: producer id
/// and epoch of the transaction, transactional and control attributes, no sequence.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    timestamp: i64,
) -> Vec<u8> {
    let kind = if marker.committed { CONTROL_COMMIT } else { CONTROL_ABORT };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let record = batch::Record { key: Some(key), value: Some(value), timestamp };
    let options = batch::EncodeOptions {
        producer_id,
        producer_epoch,
        base_sequence: -1,
        transactional: true,
        ..batch::EncodeOptions::default()
    };
    let mut bytes = batch::encode_batch(&[record], options);
    let at = batch::OFFSET_ATTRIBUTES;
    let attributes = i16::from_be_bytes([bytes[at], bytes[at + 1]]) | ATTR_CONTROL;
    bytes[at..at + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[batch::OFFSET_ATTRIBUTES..]);
    bytes[batch::OFFSET_CRC..batch::OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks a batch and, when it is to be appended, stages it.
    pub fn check(&mut self, batch: BatchIdentity) -> Result<Verdict, SequenceError> {
        let producer = self.producers.get(&batch.producer_id);
        if let Some(producer) = producer {
            if batch.epoch < producer.epoch {
                return Err(SequenceError::InvalidProducerEpoch);
            }
            if batch.epoch == producer.epoch {
                let same = producer.batches.iter().find(|cached| {
                    cached.first_sequence == batch.first_sequence
                        && cached.last_sequence == batch.last_sequence
                });
                if let Some(cached) = same {
                    return match cached.offsets {
                        Some((base_offset, last_offset)) => {
                            Ok(Verdict::Duplicate { base_offset, last_offset })
                        }
                        None => Err(SequenceError::DuplicateInFlight),
                    };
                }
                let expected = producer.batches.back().map(|b| next_sequence(b.last_sequence));
                if expected.is_some_and(|expected| batch.first_sequence != expected)
                    || (expected.is_none() && batch.first_sequence != 0)
                {
                    return Err(SequenceError::OutOfOrderSequence);
                }
            } else if batch.first_sequence != 0 {
                // A new epoch starts its sequence at 0.
                return Err(SequenceError::OutOfOrderSequence);
            }
        } else if batch.first_sequence != 0 {
            return Err(SequenceError::UnknownProducerId);
        }
        let producer = self.producers.entry(batch.producer_id).or_default();
        if batch.epoch != producer.epoch {
            producer.epoch = batch.epoch;
            producer.batches.clear();
        }
        producer.batches.push_back(CachedBatch {
            first_sequence: batch.first_sequence,
            last_sequence: batch.last_sequence,
            offsets: None,
        });
        while producer.batches.len() > CACHED_BATCHES {
            producer.batches.pop_front();
        }
        Ok(Verdict::Append)
    }

    /// The staged batch was written at `base_offset..=last_offset`.
    pub fn appended(&mut self, batch: BatchIdentity, base_offset: i64, last_offset: i64) {
        let Some(producer) = self.producers.get_mut(&batch.producer_id) else { return };
        if producer.epoch != batch.epoch {
            return;
        }
        if let Some(cached) = producer.batches.iter_mut().rev().find(|cached| {
            cached.first_sequence == batch.first_sequence && cached.offsets.is_none()
        }) {
            cached.offsets = Some((base_offset, last_offset));
        }
    }

    /// The first offset of a transactional batch just appended: opens the producer's
    /// transaction on this partition unless one is open.
    pub fn begin_txn(&mut self, producer_id: i64, epoch: i16, first_offset: i64) {
        let producer = self.producers.entry(producer_id).or_default();
        if epoch > producer.epoch {
            producer.epoch = epoch;
            producer.batches.clear();
        }
        if producer.txn_first_offset.is_none() {
            producer.txn_first_offset = Some(first_offset);
            self.ongoing.insert((first_offset, producer_id));
        }
    }

    /// Checks a transaction marker before it is written: a marker of an older epoch than
    /// the producer's is fenced.
    pub fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), SequenceError> {
        match self.producers.get(&producer_id) {
            Some(producer) if epoch < producer.epoch => Err(SequenceError::InvalidProducerEpoch),
            _ => Ok(()),
        }
    }

    /// A marker was written at `offset`: the producer's transaction here is over. A new
    /// epoch (a fenced producer's transaction aborted by the coordinator) takes over.
    pub fn complete_txn(
        &mut self,
        producer_id: i64,
        epoch: i16,
        marker: Marker,
        offset: i64,
    ) -> CompletedTxn {
        let producer = self.producers.entry(producer_id).or_default();
        if epoch > producer.epoch {
            producer.epoch = epoch;
            producer.batches.clear();
        }
        producer.coordinator_epoch = marker.coordinator_epoch;
        let first_offset = producer.txn_first_offset.take();
        if let Some(first) = first_offset {
            self.ongoing.remove(&(first, producer_id));
        }
        CompletedTxn { producer_id, first_offset, last_offset: offset, committed: marker.committed }
    }

    /// The first offset of the oldest open transaction: the last stable offset, when
    /// below the high watermark.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.first().map(|&(offset, _)| offset)
    }

    /// The open transactions, oldest first, as (first offset, producer id).
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().copied()
    }

    /// Replays a producer batch read back from the log (recovery): no checks, the log is
    /// the truth. Returns the completed transaction when the batch is a marker.
    pub fn replay(&mut self, logged: &LoggedBatch) -> Option<CompletedTxn> {
        let id = logged.identity;
        if let Some(marker) = logged.marker {
            return Some(self.complete_txn(id.producer_id, id.epoch, marker, logged.base_offset));
        }
        let producer = self.producers.entry(id.producer_id).or_default();
        if id.epoch != producer.epoch {
            producer.epoch = id.epoch;
            producer.batches.clear();
        }
        producer.last_timestamp = logged.max_timestamp;
        if id.first_sequence >= 0 {
            producer.batches.retain(|b| b.first_sequence != id.first_sequence);
            producer.batches.push_back(CachedBatch {
                first_sequence: id.first_sequence,
                last_sequence: id.last_sequence,
                offsets: Some((logged.base_offset, logged.last_offset)),
            });
            while producer.batches.len() > CACHED_BATCHES {
                producer.batches.pop_front();
            }
        }
        if logged.transactional {
            self.begin_txn(id.producer_id, id.epoch, logged.base_offset);
        }
        None
    }

    /// Notes the max timestamp of a producer's batch (for DescribeProducers).
    pub fn touch(&mut self, producer_id: i64, timestamp: i64) {
        if let Some(producer) = self.producers.get_mut(&producer_id) {
            producer.last_timestamp = timestamp;
        }
    }

    /// Every producer, by id, for DescribeProducers.
    pub fn views(&self) -> Vec<ProducerView> {
        let mut views: Vec<ProducerView> = self
            .producers
            .iter()
            .map(|(&producer_id, p)| ProducerView {
                producer_id,
                epoch: p.epoch,
                last_sequence: p.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp: p.last_timestamp,
                coordinator_epoch: p.coordinator_epoch,
                current_txn_start_offset: p.txn_first_offset.unwrap_or(-1),
            })
            .collect();
        views.sort_by_key(|v| v.producer_id);
        views
    }

    /// Kafka's producer snapshot file (`<offset>.snapshot`, version 1): version i16,
    /// CRC-32C u32 of the rest, then an i32 count of entries (producer id i64, epoch i16,
    /// last sequence i32, last offset i64, offset delta i32, timestamp i64, coordinator
    /// epoch i32, current transaction first offset i64). Like Kafka's, it keeps only each
    /// producer's last batch.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut entries = Vec::with_capacity(4 + self.producers.len() * SNAPSHOT_ENTRY_BYTES);
        entries.extend_from_slice(&(self.producers.len() as i32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for id in ids {
            let p = &self.producers[id];
            let last = p.batches.back().and_then(|b| b.offsets.map(|o| (b, o)));
            let (last_sequence, last_offset, delta) = match last {
                Some((b, (base, last))) => (b.last_sequence, last, (last - base) as i32),
                None => (-1, -1, 0),
            };
            entries.extend_from_slice(&id.to_be_bytes());
            entries.extend_from_slice(&p.epoch.to_be_bytes());
            entries.extend_from_slice(&last_sequence.to_be_bytes());
            entries.extend_from_slice(&last_offset.to_be_bytes());
            entries.extend_from_slice(&delta.to_be_bytes());
            entries.extend_from_slice(&p.last_timestamp.to_be_bytes());
            entries.extend_from_slice(&p.coordinator_epoch.to_be_bytes());
            entries.extend_from_slice(&p.txn_first_offset.unwrap_or(-1).to_be_bytes());
        }
        let mut out = Vec::with_capacity(6 + entries.len());
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&entries).to_be_bytes());
        out.extend_from_slice(&entries);
        out
    }

    /// Reads a snapshot written by [`encode_snapshot`] (or by Kafka).
    pub fn decode_snapshot(bytes: &[u8]) -> Result<ProducerStates, SnapshotError> {
        if bytes.len() < 10 {
            return Err(SnapshotError::TooShort { len: bytes.len() });
        }
        let version = i16::from_be_bytes([bytes[0], bytes[1]]);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { version });
        }
        let crc = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let entries = &bytes[6..];
        if crc32c::crc32c(entries) != crc {
            return Err(SnapshotError::Crc);
        }
        let count = i32::from_be_bytes([entries[0], entries[1], entries[2], entries[3]]);
        let count = usize::try_from(count).map_err(|_| SnapshotError::Count { count })?;
        if entries.len() != 4 + count * SNAPSHOT_ENTRY_BYTES {
            return Err(SnapshotError::Length { len: entries.len(), count });
        }
        let mut states = ProducerStates::default();
        for entry in entries[4..].chunks_exact(SNAPSHOT_ENTRY_BYTES) {
            let i64_at = |at: usize| i64::from_be_bytes(entry[at..at + 8].try_into().expect("8"));
            let i32_at = |at: usize| i32::from_be_bytes(entry[at..at + 4].try_into().expect("4"));
            let producer_id = i64_at(0);
            let epoch = i16::from_be_bytes([entry[8], entry[9]]);
            let last_sequence = i32_at(10);
            let last_offset = i64_at(14);
            let delta = i32_at(22);
            let txn_first = i64_at(38);
            let mut producer = Producer {
                epoch,
                batches: VecDeque::new(),
                txn_first_offset: (txn_first >= 0).then_some(txn_first),
                coordinator_epoch: i32_at(34),
                last_timestamp: i64_at(26),
            };
            if last_sequence >= 0 && last_offset >= 0 {
                // The batch's first offset, last offset - delta, is never negative.
                if delta < 0 || i64::from(delta) > last_offset {
                    return Err(SnapshotError::OffsetDelta { producer_id, delta, last_offset });
                }
                let first_offset = last_offset - i64::from(delta);
                let first = (i64::from(last_sequence) - i64::from(delta)).rem_euclid(1 << 31);
                producer.batches.push_back(CachedBatch {
                    first_sequence: first as i32,
                    last_sequence,
                    offsets: Some((first_offset, last_offset)),
                });
            }
            // One entry per producer: a second would replace the first in the map but
            // leave the first's open transaction behind, holding the last stable offset.
            if states.producers.contains_key(&producer_id) {
                return Err(SnapshotError::Duplicate { producer_id });
            }
            if let Some(first) = producer.txn_first_offset {
                states.ongoing.insert((first, producer_id));
            }
            states.producers.insert(producer_id, producer);
        }
        Ok(states)
    }

    /// The staged batch was not written: forget the producer, so its next batch gets
    /// UNKNOWN_PRODUCER_ID (unless it restarts its sequence) instead of a duplicate
    /// answer for data that is not there.
    pub fn append_failed(&mut self, producer_id: i64) {
        // An open transaction stays open: its earlier batches are in the log.
        if let Some(producer) = self.producers.get_mut(&producer_id) {
            if producer.txn_first_offset.is_some() {
                producer.batches.clear();
                return;
            }
        }
        self.producers.remove(&producer_id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(pid: i64, epoch: i16, first: i32, count: i32) -> BatchIdentity {
        BatchIdentity::new(pid, epoch, first, count - 1)
    }

    #[test]
    fn in_order_batches_append_and_repeats_are_duplicates() {
        let mut states = ProducerStates::default();
        let first = batch(7, 0, 0, 10);
        assert_eq!(states.check(first), Ok(Verdict::Append));
        // A retry while the first append is in flight.
        assert_eq!(states.check(first), Err(SequenceError::DuplicateInFlight));
        states.appended(first, 100, 109);
        assert_eq!(
            states.check(first),
            Ok(Verdict::Duplicate { base_offset: 100, last_offset: 109 })
        );
        let second = batch(7, 0, 10, 5);
        assert_eq!(states.check(second), Ok(Verdict::Append));
        states.appended(second, 110, 114);
        assert_eq!(states.check(batch(7, 0, 20, 1)), Err(SequenceError::OutOfOrderSequence));
        assert_eq!(states.check(batch(7, 0, 5, 1)), Err(SequenceError::OutOfOrderSequence));
    }

    #[test]
    fn pipelined_batches_are_checked_against_staged_ones() {
        let mut states = ProducerStates::default();
        let batches: Vec<BatchIdentity> = (0..5).map(|i| batch(1, 0, i * 2, 2)).collect();
        for b in &batches {
            assert_eq!(states.check(*b), Ok(Verdict::Append));
        }
        for (i, b) in batches.iter().enumerate() {
            states.appended(*b, i as i64 * 2, i as i64 * 2 + 1);
        }
        assert_eq!(
            states.check(batches[2]),
            Ok(Verdict::Duplicate { base_offset: 4, last_offset: 5 })
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for i in 0..6 {
            let b = batch(1, 0, i, 1);
            states.check(b).unwrap();
            states.appended(b, i64::from(i), i64::from(i));
        }
        // Batch 0 fell out of the cache: a retry of it is now out of order.
        assert_eq!(states.check(batch(1, 0, 0, 1)), Err(SequenceError::OutOfOrderSequence));
        assert!(matches!(states.check(batch(1, 0, 1, 1)), Ok(Verdict::Duplicate { .. })));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut states = ProducerStates::default();
        let b = batch(3, 2, 0, 1);
        states.check(b).unwrap();
        states.appended(b, 0, 0);
        assert_eq!(states.check(batch(3, 1, 1, 1)), Err(SequenceError::InvalidProducerEpoch));
        assert_eq!(states.check(batch(3, 3, 5, 1)), Err(SequenceError::OutOfOrderSequence));
        assert_eq!(states.check(batch(3, 3, 0, 1)), Ok(Verdict::Append));
        // The old epoch is fenced for good.
        assert_eq!(states.check(batch(3, 2, 1, 1)), Err(SequenceError::InvalidProducerEpoch));
    }

    #[test]
    fn unknown_producers_must_start_at_zero_and_failures_forget() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(9, 0, 4, 1)), Err(SequenceError::UnknownProducerId));
        let b = batch(9, 0, 0, 3);
        states.check(b).unwrap();
        states.append_failed(9);
        assert!(states.is_empty());
        assert_eq!(states.check(batch(9, 0, 3, 1)), Err(SequenceError::UnknownProducerId));
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let mut states = ProducerStates::default();
        // Sequence 0 first, then a batch ending exactly at i32::MAX.
        let start = batch(1, 0, 0, i32::MAX - 1);
        states.check(start).unwrap();
        states.appended(start, 0, i64::from(i32::MAX) - 2);
        let last = batch(1, 0, i32::MAX - 1, 2);
        assert_eq!(last.last_sequence, i32::MAX);
        assert_eq!(states.check(last), Ok(Verdict::Append));
        assert_eq!(batch(1, 0, i32::MAX, 3).last_sequence, 1);
        assert_eq!(states.check(batch(1, 0, 0, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn transactions_hold_the_last_stable_offset_until_their_marker() {
        let mut states = ProducerStates::default();
        assert_eq!(states.first_unstable_offset(), None);
        states.begin_txn(1, 0, 10);
        states.begin_txn(1, 0, 20); // already open: the first offset stays
        states.begin_txn(2, 0, 15);
        assert_eq!(states.first_unstable_offset(), Some(10));
        let abort = Marker { committed: false, coordinator_epoch: 3 };
        let done = states.complete_txn(1, 0, abort, 30);
        assert_eq!(
            done,
            CompletedTxn {
                producer_id: 1,
                first_offset: Some(10),
                last_offset: 30,
                committed: false
            }
        );
        assert_eq!(states.first_unstable_offset(), Some(15));
        let commit = Marker { committed: true, coordinator_epoch: 3 };
        assert_eq!(states.complete_txn(2, 0, commit, 31).first_offset, Some(15));
        assert_eq!(states.first_unstable_offset(), None);
        // A marker for a partition the transaction never wrote to.
        assert_eq!(states.complete_txn(5, 0, commit, 32).first_offset, None);
        // A marker with a bumped epoch fences the old one.
        assert_eq!(states.check_marker(1, 0), Ok(()));
        states.complete_txn(1, 1, abort, 33);
        assert_eq!(states.check_marker(1, 0), Err(SequenceError::InvalidProducerEpoch));
        assert_eq!(states.check(batch(1, 0, 0, 1)), Err(SequenceError::InvalidProducerEpoch));
    }

    #[test]
    fn markers_round_trip_through_the_batch_format() {
        for committed in [true, false] {
            let marker = Marker { committed, coordinator_epoch: 7 };
            let bytes = encode_marker(42, 3, marker, 1_700_000_000_000);
            let (parsed, rest) = Batch::parse(&bytes).unwrap();
            assert!(rest.is_empty());
            parsed.validate(1 << 20).unwrap();
            assert!(parsed.is_control() && parsed.is_transactional());
            let logged = LoggedBatch::of(&parsed).unwrap();
            assert_eq!(logged.marker, Some(marker));
            assert_eq!(logged.identity.producer_id, 42);
            assert_eq!(logged.identity.epoch, 3);
        }
    }

    #[test]
    fn replay_and_snapshots_restore_sequences_and_open_transactions() {
        let mut states = ProducerStates::default();
        let logged = |pid, epoch, first, count: i32, base: i64, transactional| LoggedBatch {
            identity: BatchIdentity::new(pid, epoch, first, count - 1),
            base_offset: base,
            last_offset: base + i64::from(count) - 1,
            max_timestamp: 1000 + base,
            transactional,
            marker: None,
        };
        assert_eq!(states.replay(&logged(1, 0, 0, 5, 0, false)), None);
        states.replay(&logged(1, 0, 5, 5, 5, false));
        states.replay(&logged(2, 4, 0, 2, 10, true));
        let mut marker = logged(3, 0, -1, 1, 12, true);
        marker.marker = Some(Marker { committed: true, coordinator_epoch: 0 });
        states.replay(&logged(3, 0, 0, 1, 11, true));
        let done = states.replay(&marker).unwrap();
        assert_eq!(done.first_offset, Some(11));
        assert_eq!(states.first_unstable_offset(), Some(10));
        assert_eq!(
            states.check(batch(1, 0, 5, 5)),
            Ok(Verdict::Duplicate { base_offset: 5, last_offset: 9 })
        );
        let restored = ProducerStates::decode_snapshot(&states.encode_snapshot()).unwrap();
        assert_eq!(restored.views(), states.views());
        assert_eq!(restored.first_unstable_offset(), Some(10));
        let mut restored = restored;
        assert_eq!(
            restored.check(batch(1, 0, 5, 5)),
            Ok(Verdict::Duplicate { base_offset: 5, last_offset: 9 })
        );
        assert_eq!(restored.check(batch(1, 0, 10, 1)), Ok(Verdict::Append));
        let mut corrupt = states.encode_snapshot();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(ProducerStates::decode_snapshot(&corrupt).is_err());
    }

    /// Found by the `producer_snapshot` fuzz target: a snapshot (with a good CRC) naming a
    /// producer twice, each entry with an open transaction, decoded to one producer and
    /// two open transactions; the first never ends, so the last stable offset stuck there.
    #[test]
    fn a_snapshot_naming_a_producer_twice_is_refused() {
        let mut states = ProducerStates::default();
        states.begin_txn(7, 0, 100);
        let one = states.encode_snapshot();
        let entry = &one[10..];
        let mut entries = 2i32.to_be_bytes().to_vec();
        entries.extend_from_slice(entry);
        let mut second = entry.to_vec();
        second[38..46].copy_from_slice(&200i64.to_be_bytes()); // another first offset
        entries.extend_from_slice(&second);
        let mut twice = SNAPSHOT_VERSION.to_be_bytes().to_vec();
        twice.extend_from_slice(&crc32c::crc32c(&entries).to_be_bytes());
        twice.extend_from_slice(&entries);
        let error = ProducerStates::decode_snapshot(&twice).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("producer id 7 twice"));
    }

    /// Found by the `producer_snapshot` fuzz target: an entry whose offset delta is
    /// negative (Kafka writes last offset - first offset) and whose last offset is near
    /// i64::MAX panicked the decoder with an overflow in debug builds.
    #[test]
    fn a_negative_offset_delta_is_refused() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(batch(7, 0, 0, 1)), Ok(Verdict::Append));
        states.appended(batch(7, 0, 0, 1), 5, 5);
        let mut bytes = states.encode_snapshot();
        // Entry fields after the 10-byte header: last offset at 14, offset delta at 22.
        bytes[10 + 14..10 + 22].copy_from_slice(&i64::MAX.to_be_bytes());
        bytes[10 + 22..10 + 26].copy_from_slice(&(-1i32).to_be_bytes());
        let crc = crc32c::crc32c(&bytes[6..]);
        bytes[2..6].copy_from_slice(&crc.to_be_bytes());
        let error = ProducerStates::decode_snapshot(&bytes).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("producer id 7: offset delta -1 for last offset 9223372036854775807")
        );
    }
}
