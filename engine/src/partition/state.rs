//! The replication state of one partition replica, sans-I/O: its role and leader epoch,
//! log end offset and high watermark, and its leader-epoch cache. Every change comes in
//! as an event (an append landed in the log, the log was truncated, the replica became
//! leader or follower, the leader told a follower its high watermark) and the invariants
//! are asserted after each, in release builds too:
//!
//! - the high watermark never passes the log end offset;
//! - on a leader the high watermark never goes back;
//! - the leader epoch never goes back, and appended offsets are dense (each append starts
//!   where the log ended);
//! - the epoch cache's epochs and start offsets both increase.
//!
//! A leader's high watermark is the lowest log end offset over the in-sync replicas
//! ([`ReplicaSet`]: the followers' ends come from their fetches); with one replica (a
//! single broker) that is its own log end offset after every append.

use super::epochs::LeaderEpochCache;
use super::isr::ReplicaSet;

/// Whether this replica takes writes from clients or copies them from a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// Why a request's idea of the leader epoch does not match this replica's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochMismatch {
    /// The client knows a newer epoch than this replica (Kafka's UNKNOWN_LEADER_EPOCH:
    /// this replica has not heard of the leader change yet).
    FromTheFuture { current: i32, requested: i32 },
    /// The client's epoch is older (FENCED_LEADER_EPOCH: it should refresh its metadata).
    Stale { current: i32, requested: i32 },
}

impl std::fmt::Display for EpochMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FromTheFuture { current, requested } => {
                write!(f, "leader epoch {requested} is newer than this replica's {current}")
            }
            Self::Stale { current, requested } => {
                write!(f, "leader epoch {requested} is older than the current {current}")
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    role: Role,
    leader_epoch: i32,
    log_end_offset: i64,
    high_watermark: i64,
    epochs: LeaderEpochCache,
    /// A leader's followers and ISR (empty on a follower).
    set: ReplicaSet,
}

impl ReplicaState {
    /// The state of a replica whose log ends at `log_end_offset`, with the epochs known
    /// from its checkpoint, before it is told its role. The high watermark starts at the
    /// log end: with one replica everything in the log was acknowledged by the whole
    /// in-sync set (a replicated partition's starts lower: [`Self::start_high_watermark`]).
    pub fn new(log_end_offset: i64, epochs: LeaderEpochCache) -> Self {
        assert!(log_end_offset >= 0);
        let leader_epoch = epochs.latest_epoch().unwrap_or(0);
        let state = Self {
            role: Role::Follower,
            leader_epoch,
            log_end_offset,
            high_watermark: log_end_offset,
            epochs,
            set: ReplicaSet::default(),
        };
        state.check();
        state
    }

    /// At open, before the replica serves anyone: the high watermark starts at `offset`
    /// (within the log) instead of the log end. A replicated partition's log may end
    /// with records not every in-sync replica had; they count once the ISR has them.
    pub fn start_high_watermark(&mut self, offset: i64, log_start_offset: i64) {
        self.high_watermark = offset.max(log_start_offset).clamp(0, self.log_end_offset);
        self.check();
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    /// A leader's view of its followers and ISR.
    pub fn replica_set(&self) -> &ReplicaSet {
        &self.set
    }

    /// Where the current leader epoch started in this replica's log (its log end when
    /// it has no entry for it).
    pub fn current_epoch_start(&self) -> i64 {
        match self.epochs.latest() {
            Some(latest) if latest.epoch == self.leader_epoch => latest.start_offset,
            _ => self.log_end_offset,
        }
    }

    /// A leader learns its placement: replicas and ISR as stored. Returns whether the high
    /// watermark moved (a smaller ISR may let it rise).
    pub fn update_replica_set(
        &mut self,
        local: i32,
        replicas: &[i32],
        isr: &[i32],
        now_ms: u64,
    ) -> bool {
        assert_eq!(self.role, Role::Leader, "a follower keeps no replica set");
        self.set.update(local, replicas, isr, now_ms);
        self.maybe_advance_high_watermark()
    }

    /// A follower of this leader fetched from `fetch_offset`. `None` when `broker` is not
    /// one of its followers; otherwise whether the high watermark moved.
    pub fn follower_fetched(
        &mut self,
        broker: i32,
        fetch_offset: i64,
        now_ms: u64,
    ) -> Option<bool> {
        assert_eq!(self.role, Role::Leader, "a follower was fetched from");
        if !self.set.fetched(broker, fetch_offset, self.log_end_offset, now_ms) {
            return None;
        }
        Some(self.maybe_advance_high_watermark())
    }

    fn maybe_advance_high_watermark(&mut self) -> bool {
        let candidate = self.set.min_isr_end(self.log_end_offset);
        if candidate > self.high_watermark {
            self.set_high_watermark(candidate);
            return true;
        }
        false
    }

    /// This replica leads from `epoch` on; its epoch starts at the current log end.
    /// Returns whether the epoch cache changed (its file must be written).
    pub fn become_leader(&mut self, epoch: i32) -> bool {
        assert!(epoch >= self.leader_epoch, "leader epoch {epoch} after {}", self.leader_epoch);
        self.role = Role::Leader;
        self.leader_epoch = epoch;
        let changed = self.epochs.assign(epoch, self.log_end_offset);
        self.check();
        changed
    }

    /// This replica follows the leader of `epoch`.
    pub fn become_follower(&mut self, epoch: i32) {
        assert!(epoch >= self.leader_epoch, "leader epoch {epoch} after {}", self.leader_epoch);
        self.role = Role::Follower;
        self.set.clear();
        self.leader_epoch = epoch;
        self.check();
    }

    /// Checks a request's `current_leader_epoch` (-1: the client does not know it and
    /// asks for no check).
    pub fn check_epoch(&self, requested: i32) -> Result<(), EpochMismatch> {
        let current = self.leader_epoch;
        if requested < 0 || requested == current {
            Ok(())
        } else if requested > current {
            Err(EpochMismatch::FromTheFuture { current, requested })
        } else {
            Err(EpochMismatch::Stale { current, requested })
        }
    }

    /// A leader's append of `[base_offset, end_offset)` became part of the log. With the
    /// leader as its only in-sync replica, the high watermark follows. Returns whether the
    /// epoch cache changed.
    pub fn appended_as_leader(&mut self, base_offset: i64, end_offset: i64) -> bool {
        assert_eq!(self.role, Role::Leader, "a follower appended as leader");
        self.advance_log_end(base_offset, end_offset);
        let changed = self.epochs.assign(self.leader_epoch, base_offset);
        self.maybe_advance_high_watermark();
        self.check();
        changed
    }

    /// A follower copied the leader's batches: `batch_epochs` are (partition leader
    /// epoch, base offset) of each, in order. Returns whether the epoch cache changed.
    pub fn appended_as_follower(
        &mut self,
        base_offset: i64,
        end_offset: i64,
        batch_epochs: &[(i32, i64)],
    ) -> bool {
        assert_eq!(self.role, Role::Follower, "a leader appended as follower");
        self.advance_log_end(base_offset, end_offset);
        let mut changed = false;
        for &(epoch, offset) in batch_epochs {
            changed |= self.epochs.assign(epoch, offset);
        }
        self.check();
        changed
    }

    /// The leader's high watermark, as a follower learns it from a fetch answer: a
    /// follower's own is the smaller of it and its log end.
    pub fn follow_high_watermark(&mut self, leader_high_watermark: i64) {
        assert_eq!(self.role, Role::Follower);
        self.high_watermark = leader_high_watermark.min(self.log_end_offset).max(0);
        self.check();
    }

    /// The log was cut to `end_offset` (a follower truncating to its leader's history,
    /// or recovery). Returns whether the epoch cache changed.
    pub fn truncated_to(&mut self, end_offset: i64) -> bool {
        assert!(end_offset >= 0);
        assert!(end_offset <= self.log_end_offset, "truncation past the log end");
        self.log_end_offset = end_offset;
        self.high_watermark = self.high_watermark.min(end_offset);
        let changed = self.epochs.truncate_from_end(end_offset);
        self.check();
        changed
    }

    /// The log was emptied and starts at `offset` now (a follower that fell behind its
    /// leader's log start). Its epochs go with its records.
    pub fn restarted_at(&mut self, offset: i64) {
        assert_eq!(self.role, Role::Follower, "only a follower starts over");
        assert!(offset >= 0);
        self.log_end_offset = offset;
        self.high_watermark = offset;
        self.epochs = LeaderEpochCache::default();
        self.check();
    }

    /// The log start moved to `log_start_offset` (retention or DeleteRecords). Returns
    /// whether the epoch cache changed.
    pub fn log_start_moved(&mut self, log_start_offset: i64) -> bool {
        assert!(log_start_offset <= self.log_end_offset, "log start past the log end");
        self.epochs.truncate_from_start(log_start_offset)
    }

    /// Where `epoch` ended on this replica (OffsetForLeaderEpoch).
    pub fn end_offset_for(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset)
    }

    fn advance_log_end(&mut self, base_offset: i64, end_offset: i64) {
        assert_eq!(base_offset, self.log_end_offset, "offsets not dense");
        assert!(end_offset > base_offset, "an empty append");
        self.log_end_offset = end_offset;
    }

    fn set_high_watermark(&mut self, high_watermark: i64) {
        assert!(
            high_watermark >= self.high_watermark || self.role == Role::Follower,
            "a leader's high watermark went back from {} to {high_watermark}",
            self.high_watermark
        );
        self.high_watermark = high_watermark;
        self.check();
    }

    fn check(&self) {
        assert!(self.high_watermark >= 0);
        assert!(
            self.high_watermark <= self.log_end_offset,
            "high watermark {} past the log end offset {}",
            self.high_watermark,
            self.log_end_offset
        );
        if let Some(latest) = self.epochs.latest() {
            assert!(latest.epoch <= self.leader_epoch || self.role == Role::Follower);
            assert!(latest.start_offset <= self.log_end_offset);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::partition::epochs::EpochEntry;

    fn leader(log_end_offset: i64, epoch: i32) -> ReplicaState {
        let mut state = ReplicaState::new(log_end_offset, LeaderEpochCache::default());
        state.become_leader(epoch);
        state
    }

    #[test]
    fn a_leader_alone_moves_its_high_watermark_with_each_append() {
        let mut state = leader(0, 0);
        assert_eq!(state.high_watermark(), 0);
        state.appended_as_leader(0, 10);
        assert_eq!((state.log_end_offset(), state.high_watermark()), (10, 10));
        state.appended_as_leader(10, 11);
        assert_eq!(state.high_watermark(), 11);
        assert_eq!(state.end_offset_for(0), (0, 11));
    }

    #[test]
    fn a_new_leader_epoch_starts_at_the_log_end() {
        let mut state = leader(0, 0);
        state.appended_as_leader(0, 5);
        assert!(state.become_leader(3), "a new epoch is a cache change");
        assert!(!state.appended_as_leader(5, 9), "same epoch: no change");
        let entries = state.epochs().entries().to_vec();
        assert_eq!(
            entries,
            [EpochEntry { epoch: 0, start_offset: 0 }, EpochEntry { epoch: 3, start_offset: 5 }]
        );
        assert_eq!(state.end_offset_for(0), (0, 5));
        assert_eq!(state.end_offset_for(2), (0, 5));
        assert_eq!(state.end_offset_for(3), (3, 9));
    }

    #[test]
    fn request_epochs_are_checked_against_the_current_one() {
        let state = leader(0, 4);
        assert_eq!(state.check_epoch(-1), Ok(()));
        assert_eq!(state.check_epoch(4), Ok(()));
        assert_eq!(
            state.check_epoch(5),
            Err(EpochMismatch::FromTheFuture { current: 4, requested: 5 })
        );
        assert_eq!(state.check_epoch(3), Err(EpochMismatch::Stale { current: 4, requested: 3 }));
    }

    #[test]
    fn a_follower_keeps_the_leaders_epochs_and_caps_the_high_watermark() {
        let mut state = ReplicaState::new(0, LeaderEpochCache::default());
        state.become_follower(2);
        assert!(state.appended_as_follower(0, 8, &[(1, 0), (2, 5)]));
        state.follow_high_watermark(20);
        assert_eq!(state.high_watermark(), 8, "never past the own log end");
        state.follow_high_watermark(6);
        assert_eq!(state.high_watermark(), 6);
        assert!(state.truncated_to(5));
        assert_eq!((state.log_end_offset(), state.high_watermark()), (5, 5));
        assert_eq!(state.epochs().latest_epoch(), Some(1));
    }

    /// A replicated partition reopened: its high watermark starts at the checkpointed
    /// one, and rises only as the ISR's log ends are learnt.
    #[test]
    fn a_reopened_leader_waits_for_its_isr_before_its_high_watermark_rises() {
        let mut state = ReplicaState::new(10, LeaderEpochCache::default());
        state.start_high_watermark(4, 0);
        state.become_leader(1);
        assert!(!state.update_replica_set(1, &[1, 2], &[1, 2], 0));
        assert_eq!(state.high_watermark(), 4, "follower 2's end is not known yet");
        assert_eq!(state.follower_fetched(2, 7, 1), Some(true));
        assert_eq!(state.high_watermark(), 7);
        assert_eq!(state.follower_fetched(3, 10, 1), None, "not a replica");
        // Alone in the ISR: the log end.
        assert!(state.update_replica_set(1, &[1, 2], &[1], 2));
        assert_eq!(state.high_watermark(), 10);
        let mut clamped = ReplicaState::new(10, LeaderEpochCache::default());
        clamped.start_high_watermark(50, 3);
        assert_eq!(clamped.high_watermark(), 10, "never past the log end");
        clamped.start_high_watermark(0, 3);
        assert_eq!(clamped.high_watermark(), 3, "never below the log start");
    }

    #[test]
    #[should_panic(expected = "offsets not dense")]
    fn a_gap_in_offsets_is_a_bug() {
        let mut state = leader(0, 0);
        state.appended_as_leader(0, 10);
        state.appended_as_leader(11, 12);
    }

    #[test]
    #[should_panic(expected = "leader epoch 1 after 2")]
    fn the_leader_epoch_never_goes_back() {
        let mut state = leader(0, 2);
        state.become_leader(1);
    }

    #[test]
    #[should_panic(expected = "truncation past the log end")]
    fn truncating_past_the_end_is_a_bug() {
        let mut state = leader(3, 0);
        state.truncated_to(4);
    }
}
