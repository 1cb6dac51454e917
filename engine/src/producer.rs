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

use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer: the most a client keeps in flight per partition.
pub const CACHED_BATCHES: usize = 5;

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
}

/// Every idempotent producer's state on one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
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

    /// The staged batch was not written: forget the producer, so its next batch gets
    /// UNKNOWN_PRODUCER_ID (unless it restarts its sequence) instead of a duplicate
    /// answer for data that is not there.
    pub fn append_failed(&mut self, producer_id: i64) {
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
}
