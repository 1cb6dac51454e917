//! The group coordinator of one shard: the groups whose `__consumer_offsets` partition
//! the shard owns, their members and rebalances, and their committed offsets.
//!
//! State changes are synchronous under one `RefCell` borrow; answers to parked requests
//! (a JoinGroup waiting for the rebalance, a SyncGroup waiting for the leader) go out
//! through one-shot channels; records are written to the group's partition after the
//! borrow ends. Timeouts (member sessions, the join and sync phases of a rebalance, the
//! initial rebalance delay, pending member ids) are entries on a timing wheel driven by
//! the host's clock. An entry names the group and what to check, and is checked against
//! the group when it fires (a heartbeat moves a member's deadline without touching the
//! wheel; the session entry re-arms itself until the deadline has really passed).
//!
//! The state machine is Kafka's classic one (`GroupCoordinator.scala`, `ClassicGroup`):
//! Empty -> PreparingRebalance -> CompletingRebalance -> Stable, and Dead once deleted.
//!
//! The coordinator sees the broker only through [`CoordinatorHost`], so its tests run it
//! on a `ManualClock` with an in-memory host. By concern: `state` (a group and the pure
//! functions over it), `membership` (joins, syncs, heartbeats, leaves, the rebalance and
//! its timers), `offsets` (commits, fetches, deletes, expiry, replay at start-up); this
//! file holds the coordinator itself, the dispatch of a call, and the admin calls.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::rc::Rc;

use bytes::Bytes;
use tracing::{info, warn};

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;
use sluice_engine::timer::{DriverOptions, TimerDriver, TimingWheel, WheelOptions};

use super::records;
use super::*;
pub use crate::coordinator_host::Write;
use crate::coordinator_host::{CoordinatorHost, NotServing, Replayed};
use crate::error::{code, KafkaError};
pub use state::State;
use state::{tombstones, Group};

mod membership;
mod offsets;
mod state;
#[cfg(test)]
mod tests;

/// What a timer entry asks the coordinator to check when it fires.
#[derive(Debug, Clone)]
pub enum TimerKind {
    /// Has the member been heard from within its session timeout?
    Session(String),
    /// Did the member handed this id with MEMBER_ID_REQUIRED come back?
    Pending(String),
    /// The join phase of rebalance number `u64` is over (or its initial delay step).
    Join(u64),
    /// The sync phase of rebalance `u64` is over.
    Sync(u64),
}

#[derive(Debug, Clone)]
pub struct GroupTimer {
    pub group: String,
    pub kind: TimerKind,
}

/// The group timers, driven by the host's clock (a test's `ManualClock` moves them).
pub type GroupTimers<C> = TimerDriver<TimingWheel<GroupTimer>, C>;

/// Why a group operation that answers one error for the whole request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    NotServing(#[from] NotServing),
    #[error("the group id is empty")]
    InvalidGroupId,
    #[error("no such group")]
    GroupIdNotFound,
    /// OffsetDelete on a group with members whose subscriptions cannot be read.
    #[error("the group has members")]
    NonEmptyGroup,
    /// Writing the group's records failed.
    #[error("storing group records failed: {}", .0.message)]
    Store(KafkaError),
}

impl GroupError {
    /// The error code the client gets.
    pub fn code(&self) -> i16 {
        match self {
            GroupError::NotServing(not_serving) => not_serving.code(),
            GroupError::InvalidGroupId => code::INVALID_GROUP_ID,
            GroupError::GroupIdNotFound => code::GROUP_ID_NOT_FOUND,
            GroupError::NonEmptyGroup => code::NON_EMPTY_GROUP,
            GroupError::Store(_) => code::COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// Everything a shard's coordinator holds. Generic over its host (the shard, or a test's
/// in-memory host): see [`crate::coordinator_host`].
pub struct Coordinator<H: CoordinatorHost> {
    groups: RefCell<HashMap<String, Group>>,
    pub timers: GroupTimers<H::Clock>,
    /// `__consumer_offsets` partitions owned here whose records are loaded.
    loaded: RefCell<HashSet<i32>>,
    host: PhantomData<fn(&H)>,
}

impl<H: CoordinatorHost> Coordinator<H> {
    /// A coordinator whose timers run on `clock`: the host's clock.
    pub fn new(clock: H::Clock) -> Self {
        let wheel = TimingWheel::new(WheelOptions {
            start_ms: clock.monotonic_ms(),
            ..WheelOptions::default()
        });
        Coordinator {
            groups: RefCell::new(HashMap::new()),
            timers: TimerDriver::new(wheel, clock, DriverOptions::DEFAULT),
            loaded: RefCell::new(HashSet::new()),
            host: PhantomData,
        }
    }

    pub fn mark_loaded(&self, partition: i32) {
        self.loaded.borrow_mut().insert(partition);
    }

    pub fn forget_partition(&self, partition: i32, partitions: i32) {
        self.loaded.borrow_mut().remove(&partition);
        self.groups.borrow_mut().retain(|id, _| offsets_partition(id, partitions) != partition);
    }

    /// The broker is stopping: parked JoinGroup and SyncGroup requests are answered
    /// NOT_COORDINATOR now (clients look the coordinator up again and retry), so that
    /// connections drain at once instead of waiting out a rebalance.
    pub fn shutdown(&self) {
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            for member in group.members.values_mut() {
                if let Some(join) = member.join.take() {
                    let _ = join.try_send(JoinOutcome::failed(code::NOT_COORDINATOR, &member.id));
                }
                if let Some(sync) = member.sync.take() {
                    let _ = sync.try_send(SyncOutcome::failed(code::NOT_COORDINATOR));
                }
            }
        }
    }

    fn schedule(&self, deadline_ms: u64, group: &str, kind: TimerKind) {
        let timer = GroupTimer { group: group.to_string(), kind };
        if let Err(error) = self.timers.with(|wheel| wheel.add(deadline_ms, timer)) {
            // Bounded at 16M entries: only a runaway could fill it. The group then lacks a
            // timeout; say so loudly.
            warn!(group, %error, "group timer not scheduled");
        }
    }

    /// A new member id: `<client id or instance id>-<uuid>` like Kafka's.
    fn new_member_id(&self, prefix: &str) -> String {
        let id = uuid::Uuid::from_bytes(sluice_engine::metadata::new_topic_id());
        format!("{prefix}-{}", id.as_hyphenated())
    }

    /// Why this shard cannot serve `group` now, if it cannot.
    fn check_serving(&self, host: &H, group: &str) -> Result<(), NotServing> {
        // The caller saw the topic before routing here; this shard does not know it yet
        // while the controller is still applying its creation shard by shard (the
        // controller's own shard first). Retriable: COORDINATOR_NOT_AVAILABLE here made
        // librdkafka drop a manual assignment's offset fetch and never fetch.
        let Some(partitions) = host.partition_count(OFFSETS_TOPIC) else {
            return Err(NotServing::LoadInProgress);
        };
        let partition = offsets_partition(group, partitions);
        if !host.owns(&TopicPartition::new(OFFSETS_TOPIC, partition)) {
            return Err(NotServing::NotCoordinator);
        }
        if !self.loaded.borrow().contains(&partition) {
            return Err(NotServing::LoadInProgress);
        }
        Ok(())
    }

    /// Runs a group call on this (the coordinator) shard.
    pub async fn call(&self, host: &Rc<H>, call: GroupCall) -> GroupAnswer {
        match call {
            GroupCall::Join(args) => GroupAnswer::Join(self.join(host, args).await),
            GroupCall::Sync(args) => GroupAnswer::Sync(self.sync(host, args).await),
            GroupCall::Heartbeat(args) => GroupAnswer::Heartbeat(self.heartbeat(host, &args)),
            GroupCall::Leave { group, members } => {
                GroupAnswer::Leave(self.leave(host, &group, &members))
            }
            GroupCall::Commit(args) => GroupAnswer::Commit(self.commit(host, args).await),
            GroupCall::FetchOffsets { group, partitions, require_stable } => {
                let found = self.fetch_offsets(host, &group, partitions).map_err(NotServing::code);
                GroupAnswer::FetchOffsets(found.map(|found| {
                    found
                        .into_iter()
                        .map(|(tp, committed)| {
                            if require_stable && self.has_pending(&group, &tp) {
                                (tp, Err(code::UNSTABLE_OFFSET_COMMIT))
                            } else {
                                (tp, Ok(committed))
                            }
                        })
                        .collect()
                }))
            }
            GroupCall::DeleteOffsets { group, partitions } => {
                let deleted = self.delete_offsets(host, &group, &partitions).await;
                GroupAnswer::DeleteOffsets(deleted.map_err(|error| error.code()))
            }
            GroupCall::Describe(groups) => GroupAnswer::Describe(
                groups.iter().map(|group| self.describe(host, group)).collect(),
            ),
            GroupCall::List { states } => GroupAnswer::List(self.list(&states)),
            GroupCall::Delete(groups) => {
                let mut results = Vec::with_capacity(groups.len());
                for group in groups {
                    let error = self.delete_group(host, &group).await;
                    results.push((group, error));
                }
                GroupAnswer::Delete(results)
            }
        }
    }

    // ---- admin ----

    fn describe(&self, host: &H, group_id: &str) -> GroupDescription {
        let mut description = GroupDescription {
            group: group_id.to_string(),
            state: State::Dead.name().to_string(),
            ..Default::default()
        };
        if let Err(error) = self.check_serving(host, group_id) {
            description.error = error.code();
            return description;
        }
        let groups = self.groups.borrow();
        let Some(group) = groups.get(group_id) else { return description };
        description.state = group.state.name().to_string();
        description.protocol_type = group.protocol_type.clone().unwrap_or_default();
        let stable = group.state == State::Stable;
        if stable {
            description.protocol = group.protocol.clone().unwrap_or_default();
        }
        let protocol = group.protocol.clone().unwrap_or_default();
        description.members = group
            .members
            .values()
            .map(|m| MemberDescription {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable { m.metadata_for(&protocol) } else { Bytes::new() },
                assignment: if stable { m.assignment.clone() } else { Bytes::new() },
            })
            .collect();
        description
    }

    fn list(&self, states: &[String]) -> Vec<GroupListing> {
        let groups = self.groups.borrow();
        let mut listings: Vec<GroupListing> = groups
            .values()
            .filter(|g| g.state != State::Dead)
            .filter(|g| {
                states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .map(|g| GroupListing {
                group: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name().to_string(),
            })
            .collect();
        listings.sort_by(|a, b| a.group.cmp(&b.group));
        listings
    }

    /// The empty group id is a group like any other here, as in Kafka: it is where
    /// OffsetCommit puts offsets committed under it.
    async fn delete_group(&self, host: &Rc<H>, group_id: &str) -> i16 {
        if let Err(error) = self.check_serving(host, group_id) {
            return error.code();
        }
        let writes = {
            let groups = self.groups.borrow();
            match groups.get(group_id) {
                None => return code::GROUP_ID_NOT_FOUND,
                Some(group) if group.state == State::Dead => return code::GROUP_ID_NOT_FOUND,
                Some(group) if group.state != State::Empty => return code::NON_EMPTY_GROUP,
                Some(group) => tombstones(group),
            }
        };
        if let Err(error) = append_group::<H>(host, group_id, writes).await {
            warn!(group = group_id, message = %error.message, "deleting a group failed");
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        let mut groups = self.groups.borrow_mut();
        if groups.get(group_id).is_some_and(|g| g.state == State::Empty) {
            groups.remove(group_id);
            info!(group = group_id, "group deleted");
        }
        code::NONE
    }
}

/// Appends group records (offset commits, group metadata, tombstones) to the group's
/// partition of `__consumer_offsets`, as one batch.
async fn append_group<H: CoordinatorHost>(
    host: &H,
    group: &str,
    writes: Vec<Write>,
) -> Result<(), KafkaError> {
    append_group_txn::<H>(host, group, writes, None).await
}

/// [`append_group`] as part of a transaction (TxnOffsetCommit): a transactional batch of
/// that producer (id, epoch). Fails without the offsets topic even when there is nothing
/// to write, as the shard's own append did.
async fn append_group_txn<H: CoordinatorHost>(
    host: &H,
    group: &str,
    writes: Vec<Write>,
    txn: Option<(i64, i16)>,
) -> Result<(), KafkaError> {
    let partitions = host
        .partition_count(OFFSETS_TOPIC)
        .ok_or_else(|| KafkaError::new(code::COORDINATOR_NOT_AVAILABLE, "no offsets topic"))?;
    let tp = TopicPartition::new(OFFSETS_TOPIC, offsets_partition(group, partitions));
    host.append_internal(&tp, writes, txn).await
}
