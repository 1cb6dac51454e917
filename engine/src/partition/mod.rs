//! One partition replica: the log and everything kept beside it that gives the log its
//! Kafka meaning — the replication state (leader epoch, high watermark, the leader-epoch
//! cache and its `leader-epoch-checkpoint`), the idempotent producers' sequences, the open
//! and aborted transactions. Lives on the shard that owns the partition and is never
//! shared across threads.
//!
//! Two ways in for records, as in Kafka's `UnifiedLog`:
//! - [`Replica::append_as_leader`]: a client's produce. Validates the batches, checks and
//!   stages producer sequences (pipelined requests are checked against each other in
//!   arrival order), stamps the leader epoch (and LogAppendTime), assigns offsets;
//! - [`Replica::append_as_follower`]: batches copied from the leader keep the leader's
//!   offsets and epochs; they must continue the log exactly.
//!
//! The decisions (offsets, epochs, high watermark) are in [`state::ReplicaState`], a
//! sans-I/O state machine with its invariants asserted; this type adds the log's I/O.

pub mod epochs;
pub mod isr;
pub mod state;

#[cfg(test)]
mod tests;

use std::cell::{Ref, RefCell, RefMut};
use std::path::Path;
use std::rc::Rc;

use thiserror::Error;
use tracing::{error, warn};

use crate::batch::{self, BatchError, BatchIter};
use crate::checkpoint::TopicPartition;
use crate::clock::Clock;
use crate::log::{AppendInfo, Log, LogError, LogOptions, OpenHints};
use crate::producer::{
    encode_marker, BatchIdentity, LoggedBatch, Marker, ProducerStates, SequenceError, Verdict,
};
use crate::replay::{self, ReplayError};
use crate::txnindex::{self, AbortedTxn, TxnIndex};
use epochs::{EpochFileError, LeaderEpochCache};
use state::{EpochMismatch, ReplicaState, Role};

/// Why a replica could not open.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("rebuilding producer state: {0}")]
    Replay(#[from] ReplayError),
    #[error("{0}")]
    Epochs(#[from] EpochFileError),
}

/// Why an append was refused or failed. Each maps to one Kafka error code (in the
/// broker's error module).
#[derive(Debug, Error)]
pub enum AppendError {
    /// A batch failed validation (structure, CRC, size).
    #[error("{0}")]
    Batch(#[from] BatchError),
    /// A batch a client may not write (Kafka's INVALID_RECORD).
    #[error("{0}")]
    Refused(&'static str),
    /// The request's bytes are not whole batches.
    #[error("{0}")]
    Malformed(&'static str),
    /// A producer's sequence or epoch does not continue its state.
    #[error("batch of producer {} epoch {} sequence {}: {}", .batch.producer_id, .batch.epoch, .batch.first_sequence, sequence_reason(*.error))]
    Sequence { error: SequenceError, batch: BatchIdentity },
    /// A duplicate batch among others in one request (only a request holding just the
    /// duplicate is answered with the original offsets).
    #[error("a duplicate batch among others in one request")]
    DuplicateAmongOthers,
    /// A follower's batches do not continue its log (offsets) or its history (epochs).
    #[error("follower append: {0}")]
    NotContinuous(String),
    /// A follower's epoch does not match the request's.
    #[error("{0}")]
    Epoch(EpochMismatch),
    /// This replica does not take this kind of append in its role.
    #[error("this replica is the {0:?}")]
    WrongRole(Role),
    #[error("{0}")]
    Log(#[from] LogError),
}

/// Why a follower could not truncate its log.
#[derive(Debug, Error)]
pub enum TruncateError {
    /// Only a follower truncates to its leader's history.
    #[error("this replica is the {0:?}")]
    WrongRole(Role),
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("rebuilding producer state: {0}")]
    Replay(#[from] ReplayError),
    #[error("rewriting the aborted-transaction index: {0}")]
    TxnIndex(#[from] std::io::Error),
}

/// Why DeleteRecords could not move the log start.
#[derive(Debug, Error)]
pub enum DeleteRecordsError {
    #[error("offset {offset} is past the high watermark {high_watermark}")]
    PastHighWatermark { offset: i64, high_watermark: i64 },
    #[error("{0}")]
    Log(#[from] LogError),
}

fn sequence_reason(error: SequenceError) -> &'static str {
    match error {
        SequenceError::InvalidProducerEpoch => "an old epoch",
        SequenceError::OutOfOrderSequence => "a sequence out of order",
        SequenceError::UnknownProducerId => "an unknown producer not at sequence 0",
        SequenceError::DuplicateInFlight => "a retry of a batch in flight",
    }
}

/// How a leader appends a client's batches.
#[derive(Debug, Clone, Copy)]
pub struct LeaderAppend {
    /// `message.timestamp.type=LogAppendTime`: the broker's time replaces the batches'
    /// timestamps (and the CRC is recomputed, so it is checked first).
    pub log_append_time_ms: Option<i64>,
    pub max_message_bytes: usize,
}

/// What a leader append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Written at these offsets.
    Written(AppendInfo),
    /// The request repeats a batch already written at `base_offset`: nothing was written.
    Duplicate { base_offset: i64 },
}

/// A batch of a produce request: where it is in the request's bytes and what it says.
struct Extent {
    start: usize,
    size: usize,
    identity: Option<BatchIdentity>,
    count: i64,
    transactional: bool,
    max_timestamp: i64,
}

/// See the module documentation.
pub struct Replica {
    tp: TopicPartition,
    log: Log,
    state: RefCell<ReplicaState>,
    /// Producers' sequences and open transactions (rebuilt at open from the shutdown
    /// snapshot and the log after it).
    producers: RefCell<ProducerStates>,
    /// Aborted transactions, by segment (the `.txnindex` files).
    aborted: RefCell<TxnIndex>,
}

impl Replica {
    /// Opens (recovers) the log in `dir`, rebuilds the producer state and reads the
    /// leader-epoch checkpoint, then leads at `leader_epoch` (`lead`), or follows the
    /// leader of that epoch. A follower records no epoch of its own: its epochs are those
    /// of the batches it has, which is what its `LastFetchedEpoch` must say. A log without
    /// a checkpoint was written by a single broker that never changed leader: all of it is
    /// epoch 0.
    pub async fn open(
        tp: TopicPartition,
        dir: &Path,
        options: LogOptions,
        hints: OpenHints,
        clock: Rc<dyn Clock>,
        leader_epoch: i32,
        lead: bool,
    ) -> Result<Replica, OpenError> {
        let log = Log::open(dir, options, hints, clock).await?;
        let rebuilt = replay::rebuild_producer_state(&log).await?;
        tracing::debug!(
            partition = %tp,
            log_end_offset = log.log_end_offset(),
            producers = rebuilt.producers.len(),
            snapshot_offset = ?rebuilt.snapshot_offset,
            producer_batches_replayed = rebuilt.batches_replayed,
            aborted_transactions = rebuilt.aborted.len(),
            "partition open"
        );
        let mut set_aside = true;
        let stored = match epochs::read(dir) {
            // A checkpoint from another history (a Kafka partition directory adopted with
            // its leader changes) knows epochs this broker never led at: leading at an
            // older one would break the epochs' order, so it is set aside, as is one that
            // does not parse. Either way this broker answers as it did before it kept
            // epochs; the file stays for an operator to look at.
            Ok(Some(cache)) if cache.latest_epoch().is_some_and(|latest| latest > leader_epoch) => {
                warn!(partition = %tp, latest = cache.latest_epoch(), leader_epoch, "leader-epoch checkpoint from a later epoch than this broker leads at: set aside");
                None
            }
            Ok(stored) => {
                set_aside = false;
                stored
            }
            Err(error) => {
                warn!(partition = %tp, %error, "leader-epoch checkpoint unreadable: set aside");
                None
            }
        };
        let written = stored.is_some();
        let mut cache = stored.unwrap_or_else(|| implicit_epochs(&log));
        let log_end_offset = log.log_end_offset();
        // The log may have lost its tail in recovery, or its head to retention, since the
        // checkpoint was written.
        let mut changed = cache.truncate_from_end(log_end_offset);
        if log.log_start_offset() < log_end_offset {
            changed |= cache.truncate_from_start(log.log_start_offset());
        }
        let mut state = ReplicaState::new(log_end_offset, cache);
        if lead {
            changed |= state.become_leader(leader_epoch);
        } else {
            state.become_follower(leader_epoch);
        }
        let replica = Replica {
            tp,
            log,
            state: RefCell::new(state),
            producers: RefCell::new(rebuilt.producers),
            aborted: RefCell::new(rebuilt.aborted),
        };
        let set_aside = set_aside && dir.join(epochs::LEADER_EPOCH_FILE).exists();
        if changed && !set_aside && (written || !replica.epochs_are_implicit()) {
            epochs::write(dir, replica.state.borrow().epochs())?;
        }
        Ok(replica)
    }

    pub fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    /// The log, for reads, retention, flushing and its options. Appends go through the
    /// replica, which keeps its state in step with the log end.
    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn leader_epoch(&self) -> i32 {
        self.state.borrow().leader_epoch()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().log_end_offset()
    }

    /// The offset below which every record is on all in-sync replicas: what consumers
    /// may read.
    pub fn high_watermark(&self) -> i64 {
        self.state.borrow().high_watermark()
    }

    /// The last stable offset: below it every transaction has ended (committed or
    /// aborted); read_committed consumers read up to it.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.producers
            .borrow()
            .first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Where a fetch may read up to: the high watermark, or the last stable offset for
    /// read_committed.
    pub fn fetch_bound(&self, read_committed: bool) -> i64 {
        if read_committed {
            self.last_stable_offset()
        } else {
            self.high_watermark()
        }
    }

    /// Checks a request's `current_leader_epoch` (-1: not checked).
    pub fn check_leader_epoch(&self, current_leader_epoch: i32) -> Result<(), EpochMismatch> {
        self.state.borrow().check_epoch(current_leader_epoch)
    }

    /// Where `epoch` ended on this replica (OffsetForLeaderEpoch).
    pub fn end_offset_for(&self, epoch: i32) -> (i32, i64) {
        self.state.borrow().end_offset_for(epoch)
    }

    pub fn producers(&self) -> Ref<'_, ProducerStates> {
        self.producers.borrow()
    }

    pub fn producers_mut(&self) -> RefMut<'_, ProducerStates> {
        self.producers.borrow_mut()
    }

    /// The aborted transactions overlapping `[fetch_offset, upper)`, as (producer id,
    /// first offset), for a read_committed fetch.
    pub fn aborted_between(&self, fetch_offset: i64, upper: i64) -> Vec<(i64, i64)> {
        self.aborted.borrow().collect(fetch_offset, upper)
    }

    /// Appends a client's batches (laid out back to back in `bytes`, rewritten in place:
    /// offsets, the leader epoch, and with LogAppendTime the timestamps and CRC). Refuses
    /// control batches and transactional batches without a producer id; checks idempotent
    /// producers' sequences before anything is written.
    pub async fn append_as_leader(
        &self,
        bytes: &mut [u8],
        options: LeaderAppend,
    ) -> Result<Appended, AppendError> {
        let role = self.state.borrow().role();
        if role != Role::Leader {
            return Err(AppendError::WrongRole(role));
        }
        let extents = parse_extents(bytes, options)?;
        // Idempotent producers: check sequences and stage the batches before appending,
        // in arrival order, so pipelined requests are checked against each other.
        let staged = match self.check_sequences(&extents)? {
            Ok(staged) => staged,
            Err(base_offset) => return Ok(Appended::Duplicate { base_offset }),
        };
        let epoch = self.leader_epoch();
        for extent in &extents {
            let batch = &mut bytes[extent.start..extent.start + extent.size];
            batch::set_partition_leader_epoch(batch, epoch);
            if let Some(now_ms) = options.log_append_time_ms {
                batch::set_log_append_time(batch, now_ms);
            }
        }
        // The producer state and the replication state move with the log end, in the
        // same step: in direct mode the append returns only once its write has landed, and
        // meanwhile a read_committed fetch must already see a new transaction as open.
        let mut epochs_changed = false;
        let on_appended = |info: &AppendInfo| {
            epochs_changed =
                self.state.borrow_mut().appended_as_leader(info.base_offset, info.last_offset + 1);
            if staged.is_empty() {
                return;
            }
            let mut producers = self.producers.borrow_mut();
            let mut offset = info.base_offset;
            for extent in &extents {
                if let Some(identity) = extent.identity {
                    producers.appended(identity, offset, offset + extent.count - 1);
                    producers.touch(identity.producer_id, extent.max_timestamp);
                    if extent.transactional {
                        producers.begin_txn(identity.producer_id, identity.epoch, offset);
                    }
                }
                offset += extent.count;
            }
        };
        let admit = || self.admit(Role::Leader, Some(epoch));
        let appended = self.log.append_admitted(bytes, admit, on_appended).await;
        self.after_epochs_change(epochs_changed);
        match appended {
            Ok(info) => Ok(Appended::Written(info)),
            Err(error) => {
                let mut producers = self.producers.borrow_mut();
                for identity in staged {
                    producers.append_failed(identity.producer_id);
                }
                Err(error.into())
            }
        }
    }

    /// Checks the idempotent batches against the producer state. `Ok(Ok(staged))`: the
    /// staged batches (maybe none); `Ok(Err(offset))`: the request is a duplicate of the
    /// batch written at `offset`.
    fn check_sequences(
        &self,
        extents: &[Extent],
    ) -> Result<Result<Vec<BatchIdentity>, i64>, AppendError> {
        let mut producers = self.producers.borrow_mut();
        let mut staged = Vec::new();
        let single = extents.len() == 1;
        for identity in extents.iter().filter_map(|extent| extent.identity) {
            let refused = match producers.check(identity) {
                Ok(Verdict::Append) => {
                    staged.push(identity);
                    continue;
                }
                Ok(Verdict::Duplicate { base_offset, .. }) if single => {
                    return Ok(Err(base_offset))
                }
                Ok(Verdict::Duplicate { .. }) => AppendError::DuplicateAmongOthers,
                Err(error) => AppendError::Sequence { error, batch: identity },
            };
            for identity in staged {
                producers.append_failed(identity.producer_id);
            }
            return Err(refused);
        }
        Ok(Ok(staged))
    }

    /// Appends batches copied from the leader, keeping their offsets and epochs: they must
    /// start at this replica's log end and be dense, and no batch may carry an epoch older
    /// than one this replica already has.
    pub async fn append_as_follower(&self, bytes: &mut [u8]) -> Result<AppendInfo, AppendError> {
        let role = self.state.borrow().role();
        if role != Role::Follower {
            return Err(AppendError::WrongRole(role));
        }
        let mut expected = self.log_end_offset();
        let mut latest_epoch = self.state.borrow().epochs().latest_epoch().unwrap_or(-1);
        let mut batch_epochs = Vec::new();
        let mut logged = Vec::new();
        for batch in BatchIter::new(bytes) {
            let batch = batch?;
            if batch.base_offset() != expected {
                return Err(AppendError::NotContinuous(format!(
                    "batch at offset {} where the log ends at {expected}",
                    batch.base_offset()
                )));
            }
            let epoch = batch.partition_leader_epoch();
            if epoch < latest_epoch {
                return Err(AppendError::NotContinuous(format!(
                    "batch of leader epoch {epoch} after epoch {latest_epoch}"
                )));
            }
            latest_epoch = epoch;
            batch_epochs.push((epoch, batch.base_offset()));
            logged.extend(LoggedBatch::of(&batch));
            expected = batch.last_offset() + 1;
        }
        let mut epochs_changed = false;
        let on_appended = |info: &AppendInfo| {
            // The log assigned offsets from its end, which is where the batches start: the
            // leader's offsets are kept as they are.
            epochs_changed = self.state.borrow_mut().appended_as_follower(
                info.base_offset,
                info.last_offset + 1,
                &batch_epochs,
            );
            let mut producers = self.producers.borrow_mut();
            for batch in &logged {
                if let Some(done) = producers.replay(batch) {
                    if let (false, Some(first_offset)) = (done.committed, done.first_offset) {
                        let next = done.last_offset + 1;
                        let lso = producers.first_unstable_offset().map_or(next, |f| f.min(next));
                        let entry = AbortedTxn {
                            producer_id: done.producer_id,
                            first_offset,
                            last_offset: done.last_offset,
                            last_stable_offset: lso,
                        };
                        self.index_aborted(entry);
                    }
                }
            }
        };
        let admit = || self.admit(Role::Follower, None);
        let appended = self.log.append_admitted(bytes, admit, on_appended).await;
        self.after_epochs_change(epochs_changed);
        Ok(appended?)
    }

    /// An append may go ahead only in the role (and leader epoch) it was prepared for: it
    /// is asked with the log held, so a role change cannot slip between it and the write.
    fn admit(&self, role: Role, epoch: Option<i32>) -> Result<(), String> {
        let state = self.state.borrow();
        if state.role() != role {
            return Err(format!("prepared as {role:?}, the replica is now the {:?}", state.role()));
        }
        match epoch {
            Some(epoch) if epoch != state.leader_epoch() => Err(format!(
                "prepared at leader epoch {epoch}, the replica is at {}",
                state.leader_epoch()
            )),
            _ => Ok(()),
        }
    }

    /// A follower cuts its log at `offset`, where its history and its leader's part (found
    /// with OffsetForLeaderEpoch): the batch holding `offset` and everything after it go.
    /// What is kept beside the log follows: the log end offset, high watermark and epochs;
    /// the aborted-transaction index, in memory and in the cut segment's `.txnindex`; the
    /// producer snapshots past the cut (a later start must not take one for this history);
    /// and the producer state, rebuilt from what remains, as Kafka reloads it. Returns the
    /// new log end offset. Appends must not run meanwhile (a follower's fetcher appends and
    /// truncates one at a time).
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, TruncateError> {
        let role = self.state.borrow().role();
        if role != Role::Follower {
            return Err(TruncateError::WrongRole(role));
        }
        let end = self.log.truncate_to(offset).await?;
        let changed = self.state.borrow_mut().truncated_to(end);
        self.after_epochs_change(changed);
        let dir = self.log.dir();
        // Earlier segments end before the last one starts, so only its file can hold
        // entries past the cut (the segments after the cut are gone with their files).
        if let Some(&base) = self.log.segment_base_offsets().last() {
            let mut aborted = self.aborted.borrow_mut();
            aborted.truncate(end);
            txnindex::rewrite(dir, base, aborted.segment(base))?;
        }
        for snapshot in replay::snapshot_offsets(dir).into_iter().filter(|&at| at > end) {
            let path = dir.join(crate::log::segment_file_name(snapshot, "snapshot"));
            if let Err(error) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), %error, "removing a producer snapshot past the cut");
            }
        }
        let rebuilt = replay::rebuild_producer_state(&self.log).await?;
        *self.producers.borrow_mut() = rebuilt.producers;
        *self.aborted.borrow_mut() = rebuilt.aborted;
        Ok(end)
    }

    /// A follower whose log ends before its leader's log start (the leader's retention
    /// deleted what it still needs) starts over, empty, at `offset`: its segments,
    /// epochs, producer snapshots and state and aborted transactions all go, as Kafka's
    /// `truncateFullyAndStartAt`. Returns the new log end offset.
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<i64, TruncateError> {
        let role = self.state.borrow().role();
        if role != Role::Follower {
            return Err(TruncateError::WrongRole(role));
        }
        let start = self.log.truncate_fully_and_start_at(offset).await?;
        self.state.borrow_mut().restarted_at(start);
        let dir = self.log.dir();
        for snapshot in replay::snapshot_offsets(dir) {
            let path = dir.join(crate::log::segment_file_name(snapshot, "snapshot"));
            if let Err(error) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), %error, "removing a producer snapshot of a log started over");
            }
        }
        let rebuilt = replay::rebuild_producer_state(&self.log).await?;
        *self.producers.borrow_mut() = rebuilt.producers;
        *self.aborted.borrow_mut() = rebuilt.aborted;
        self.after_epochs_change(true);
        Ok(start)
    }

    /// A follower learns the leader's high watermark.
    pub fn follow_high_watermark(&self, leader_high_watermark: i64) {
        self.state.borrow_mut().follow_high_watermark(leader_high_watermark);
    }

    /// At open, before the replica serves anyone: the high watermark starts at `offset`
    /// (the `replication-offset-checkpoint`'s, or the log start) rather than the log end,
    /// as a replicated partition's must (see [`ReplicaState::start_high_watermark`]).
    pub fn start_high_watermark(&self, offset: i64) {
        let start = self.log.log_start_offset();
        self.state.borrow_mut().start_high_watermark(offset, start);
    }

    /// Whether this replica leads its partition.
    pub fn is_leader(&self) -> bool {
        self.state.borrow().role() == Role::Leader
    }

    /// Becomes the leader at `epoch` (a leader change). The epoch starts at the log end.
    ///
    /// Waits for the appends before it to finish (they hold the log from their admission
    /// check until the log end has moved); appends after it were prepared in the old role
    /// and are refused at admission.
    pub async fn become_leader(&self, epoch: i32) {
        let _held = self.log.exclusive().await;
        let changed = self.state.borrow_mut().become_leader(epoch);
        self.after_epochs_change(changed);
    }

    /// Becomes a follower of the leader of `epoch` (after the appends before it).
    pub async fn become_follower(&self, epoch: i32) {
        let _held = self.log.exclusive().await;
        self.state.borrow_mut().become_follower(epoch);
    }

    /// The role and epoch, unless they are already these (nothing to wait for).
    pub fn is_at(&self, leader: bool, epoch: i32) -> bool {
        let state = self.state.borrow();
        (state.role() == Role::Leader) == leader && state.leader_epoch() == epoch
    }

    /// A leader learns its replicas and ISR as stored. Returns whether the high watermark
    /// moved.
    pub fn update_replica_set(
        &self,
        local: i32,
        replicas: &[i32],
        isr: &[i32],
        now_ms: u64,
    ) -> bool {
        self.state.borrow_mut().update_replica_set(local, replicas, isr, now_ms)
    }

    /// A follower fetched from `fetch_offset` (see [`ReplicaState::follower_fetched`]).
    pub fn follower_fetched(&self, broker: i32, fetch_offset: i64, now_ms: u64) -> Option<bool> {
        self.state.borrow_mut().follower_fetched(broker, fetch_offset, now_ms)
    }

    /// How many replicas are in sync, the leader included.
    pub fn isr_len(&self) -> usize {
        self.state.borrow().replica_set().isr_len()
    }

    /// The ISR this leader should ask the controller for, if it should (see
    /// [`isr::ReplicaSet::proposed_isr`]).
    pub fn proposed_isr(&self, local: i32, now_ms: u64, lag_max_ms: u64) -> Option<Vec<i32>> {
        let state = self.state.borrow();
        if state.role() != Role::Leader {
            return None;
        }
        state.replica_set().proposed_isr(
            local,
            state.high_watermark(),
            state.current_epoch_start(),
            now_ms,
            lag_max_ms,
        )
    }

    /// The latest leader epoch in this replica's log (-1: none): a follower's
    /// `LastFetchedEpoch`.
    pub fn latest_log_epoch(&self) -> i32 {
        self.state.borrow().epochs().latest_epoch().unwrap_or(-1)
    }

    /// Writes a transaction marker (a control batch) for producer `producer_id` at
    /// `epoch`, then ends the producer's transaction here: the last stable offset moves,
    /// and an abort goes into the aborted-transaction index. `Ok(None)`: the marker is
    /// stale (an older epoch than the partition has seen; that transaction was already
    /// ended by a newer one) and nothing was written.
    pub async fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: Marker,
        now_ms: i64,
    ) -> Result<Option<(AppendInfo, Vec<u8>)>, AppendError> {
        if let Err(error) = self.producers.borrow().check_marker(producer_id, epoch) {
            warn!(partition = %self.tp, producer_id, epoch, ?error, "stale transaction marker not written");
            return Ok(None);
        }
        let mut bytes = encode_marker(producer_id, epoch, marker, now_ms);
        batch::set_partition_leader_epoch(&mut bytes, self.leader_epoch());
        let info = self.append_internal(&mut bytes, |_| {}).await?;
        let done =
            self.producers.borrow_mut().complete_txn(producer_id, epoch, marker, info.base_offset);
        if let (false, Some(first_offset)) = (marker.committed, done.first_offset) {
            let entry = AbortedTxn {
                producer_id,
                first_offset,
                last_offset: info.base_offset,
                last_stable_offset: self.last_stable_offset(),
            };
            self.index_aborted(entry);
        }
        Ok(Some((info, bytes)))
    }

    /// Appends batches the broker itself built (coordinator records, markers), already
    /// stamped, as the leader; `on_appended` runs when the log end moves.
    pub async fn append_internal(
        &self,
        bytes: &mut [u8],
        on_appended: impl FnOnce(&AppendInfo),
    ) -> Result<AppendInfo, AppendError> {
        let role = self.state.borrow().role();
        if role != Role::Leader {
            return Err(AppendError::WrongRole(role));
        }
        let epoch = self.leader_epoch();
        let mut epochs_changed = false;
        let appended = self
            .log
            .append_admitted(
                bytes,
                || self.admit(Role::Leader, Some(epoch)),
                |info| {
                    epochs_changed = self
                        .state
                        .borrow_mut()
                        .appended_as_leader(info.base_offset, info.last_offset + 1);
                    on_appended(info);
                },
            )
            .await;
        self.after_epochs_change(epochs_changed);
        Ok(appended?)
    }

    /// Moves the log start offset to `offset` (DeleteRecords; -1 means the high
    /// watermark), which may not pass the high watermark, and deletes the segments wholly
    /// below it. Returns the new log start.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, DeleteRecordsError> {
        let high_watermark = self.high_watermark();
        let offset = if offset == -1 { high_watermark } else { offset };
        if offset < 0 || offset > high_watermark {
            return Err(DeleteRecordsError::PastHighWatermark { offset, high_watermark });
        }
        let start = self.log.advance_log_start_offset(offset)?;
        self.log_start_moved();
        // Whole segments below the new start go now rather than at the next retention pass.
        if let Err(error) = self.apply_retention().await {
            warn!(partition = %self.tp, %error, "deleting segments after DeleteRecords failed");
        }
        Ok(start)
    }

    /// Applies the retention settings (deletes whole segments) and forgets what went with
    /// them (aborted-transaction entries, leader epochs before the new log start).
    pub async fn apply_retention(&self) -> Result<Vec<i64>, LogError> {
        let deleted = self.log.apply_retention().await?;
        if !deleted.is_empty() {
            let live = self.log.segment_base_offsets();
            self.aborted.borrow_mut().retain_segments(&live);
            self.log_start_moved();
        }
        Ok(deleted)
    }

    fn log_start_moved(&self) {
        let start = self.log.log_start_offset();
        let changed = self.state.borrow_mut().log_start_moved(start);
        self.after_epochs_change(changed);
    }

    /// Adds an aborted transaction to the index and to the `.txnindex` file of the segment
    /// holding its marker.
    fn index_aborted(&self, entry: AbortedTxn) {
        let bases = self.log.segment_base_offsets();
        replay::record_abort(self.log.dir(), &bases, &mut self.aborted.borrow_mut(), entry);
    }

    /// Writes the producer snapshot at the log end (see [`replay::write_snapshot`]); a
    /// failure only costs the next start a longer replay.
    pub fn write_snapshot(&self) {
        let end = self.log.log_end_offset();
        let producers = self.producers.borrow();
        if let Err(error) = replay::write_snapshot(self.log.dir(), end, &producers) {
            warn!(partition = %self.tp, %error, "writing the producer snapshot failed");
        }
    }

    /// Whether the epoch cache says only what an absent checkpoint file says: epoch 0 from
    /// the log start (or nothing). Such a cache is not written, so creating thousands of
    /// partitions costs no file and fsync each.
    fn epochs_are_implicit(&self) -> bool {
        let state = self.state.borrow();
        match state.epochs().entries() {
            [] => true,
            [only] => only.epoch == 0 && only.start_offset <= self.log.log_start_offset(),
            _ => false,
        }
    }

    /// Writes the leader-epoch checkpoint after a change, unless the file would say what
    /// its absence says. Blocking, and rare: a change is a new leader epoch or a
    /// truncation, never an ordinary append. A failed write is logged; the cache in memory
    /// stays right, and a follower's truncation on the next start may go further back
    /// than needed, never less far.
    fn after_epochs_change(&self, changed: bool) {
        if !changed {
            return;
        }
        if self.epochs_are_implicit() && !self.log.dir().join(epochs::LEADER_EPOCH_FILE).exists() {
            return;
        }
        if let Err(error) = epochs::write(self.log.dir(), self.state.borrow().epochs()) {
            error!(partition = %self.tp, %error, "writing the leader epoch checkpoint failed");
        }
    }
}

/// The epochs of a log that has no checkpoint file: a broker that never changed leader
/// wrote all of it at epoch 0.
fn implicit_epochs(log: &Log) -> LeaderEpochCache {
    let mut cache = LeaderEpochCache::default();
    if log.log_end_offset() > log.log_start_offset() {
        cache.assign(0, log.log_start_offset());
    }
    cache
}

/// Splits a produce request's records into batches and checks each: structure and size
/// (the CRC too with LogAppendTime, which rewrites it; otherwise `Log::append` checks it
/// once before anything is written), no control batches, no transactional batch without
/// a producer id, nothing after the last batch.
fn parse_extents(bytes: &[u8], options: LeaderAppend) -> Result<Vec<Extent>, AppendError> {
    if bytes.is_empty() {
        return Err(AppendError::Malformed("no records"));
    }
    let mut extents = Vec::new();
    let mut at = 0usize;
    for batch in BatchIter::new(bytes) {
        let batch = batch?;
        if options.log_append_time_ms.is_some() {
            batch.validate(options.max_message_bytes)?;
        } else {
            batch.validate_structure(options.max_message_bytes)?;
        }
        // Markers are the coordinator's to write; a transaction needs a producer id.
        if batch.is_control() {
            return Err(AppendError::Refused("control batches are written by the broker only"));
        }
        if batch.is_transactional() && batch.producer_id() < 0 {
            return Err(AppendError::Refused("a transactional batch without a producer id"));
        }
        let identity = (batch.producer_id() >= 0).then(|| {
            BatchIdentity::new(
                batch.producer_id(),
                batch.producer_epoch(),
                batch.base_sequence(),
                batch.last_offset_delta(),
            )
        });
        extents.push(Extent {
            start: at,
            size: batch.size(),
            identity,
            count: i64::from(batch.last_offset_delta()) + 1,
            transactional: batch.is_transactional(),
            max_timestamp: batch.max_timestamp(),
        });
        at += batch.size();
    }
    if at != bytes.len() {
        return Err(AppendError::Malformed("trailing bytes"));
    }
    Ok(extents)
}
