//! The group coordinator of one shard: the groups whose `__consumer_offsets` partition
//! the shard owns, their members and rebalances, and their committed offsets.
//!
//! State changes are synchronous under one `RefCell` borrow; answers to parked requests
//! (a JoinGroup waiting for the rebalance, a SyncGroup waiting for the leader) go out
//! through one-shot channels; records are written to the group's partition after the
//! borrow ends. Timeouts (member sessions, the join and sync phases of a rebalance, the
//! initial rebalance delay, pending member ids) are entries on a timing wheel driven by
//! the shard's clock. An entry names the group and what to check, and is checked against
//! the group when it fires (a heartbeat moves a member's deadline without touching the
//! wheel; the session entry re-arms itself until the deadline has really passed).
//!
//! The state machine is Kafka's classic one (`GroupCoordinator.scala`, `ClassicGroup`):
//! Empty -> PreparingRebalance -> CompletingRebalance -> Stable, and Dead once deleted.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalSender};
use kafka_protocol::indexmap::IndexMap;
use tracing::{debug, info, warn};

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::{Clock, SystemClock};
use sluice_engine::timer::{DriverOptions, TimerDriver, TimingWheel, WheelOptions};

use super::records::{self, GroupValue, MemberValue, OffsetValue, OffsetsKey};
use super::*;
use crate::error::code;
use crate::shard::{Replayed, Shard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// A JoinGroup parked until the rebalance completes.
    join: Option<LocalSender<JoinOutcome>>,
    /// A SyncGroup parked until the leader's assignment is stored.
    sync: Option<LocalSender<SyncOutcome>>,
    /// Monotonic ms after which the member is gone unless it is heard from.
    deadline_ms: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

struct Group {
    id: String,
    state: State,
    /// Wall-clock ms of the last state change (offsets of an empty group expire from it).
    state_since_ms: i64,
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    /// In join order: the first member leads when the leader is gone.
    members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their monotonic deadline.
    pending: HashMap<String, u64>,
    /// Static members: instance id -> member id.
    instances: HashMap<String, String>,
    offsets: HashMap<TopicPartition, Committed>,
    /// Offsets committed in open transactions, by producer id (TxnOffsetCommit): they
    /// become `offsets` when the transaction commits.
    pending_txn: HashMap<i64, HashMap<TopicPartition, Committed>>,
    /// Bumped on each rebalance; timers of an older one are stale.
    rebalance: u64,
    /// During the initial delayed join: the time left of the rebalance timeout.
    initial_delay_left_ms: Option<u64>,
    new_member_added: bool,
    /// Whether a group record is stored (a delete then needs a tombstone).
    stored: bool,
}

impl Group {
    fn new(id: &str, now_wall_ms: i64) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            state_since_ms: now_wall_ms,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            instances: HashMap::new(),
            offsets: HashMap::new(),
            pending_txn: HashMap::new(),
            rebalance: 0,
            initial_delay_left_ms: None,
            new_member_added: false,
            stored: false,
        }
    }

    fn set_state(&mut self, state: State, now_wall_ms: i64) {
        self.state = state;
        self.state_since_ms = now_wall_ms;
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else { return Vec::new() };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for member in members {
            candidates.retain(|name| member.protocols.iter().any(|(n, _)| n == name));
        }
        candidates
    }

    /// Whether a member with these protocols may join: same protocol type, and (unless the
    /// group is empty) a protocol in common with every member.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(name, _)| candidates.contains(name))
    }

    /// Each member votes for its most preferred protocol among those all support; the
    /// most votes wins, ties going to the earlier member's preference.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = Vec::new();
        for member in self.members.values() {
            let Some((choice, _)) =
                member.protocols.iter().find(|(name, _)| candidates.contains(name))
            else {
                continue;
            };
            match votes.iter_mut().find(|(name, _)| name == choice) {
                Some((_, count)) => *count += 1,
                None => votes.push((choice.clone(), 1)),
            }
        }
        let best = votes.iter().map(|(_, count)| *count).max()?;
        votes.into_iter().find(|(_, count)| *count == best).map(|(name, _)| name)
    }

    fn max_rebalance_timeout_ms(&self) -> u64 {
        self.members.values().map(|m| m.rebalance_timeout_ms.max(0) as u64).max().unwrap_or(0)
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join.is_some())
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    /// The JoinGroup answer for `member_id` in the current generation.
    fn join_outcome(&self, member_id: &str, skip_assignment: bool) -> JoinOutcome {
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if self.is_leader(member_id) {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
            skip_assignment,
        }
    }

    /// The group record as Kafka stores it.
    fn value(&self) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: self.state_since_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Topics the members subscribe to, when the group speaks the consumer protocol.
    fn subscribed_topics(&self) -> Option<HashSet<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.clone()?;
        let mut topics = HashSet::new();
        for member in self.members.values() {
            let mut bytes = member.metadata_for(&protocol);
            if bytes.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([bytes[0], bytes[1]]);
            let _ = bytes::Buf::get_i16(&mut bytes);
            if let Ok(subscription) =
                ConsumerProtocolSubscription::decode(&mut bytes, version.clamp(0, 3))
            {
                topics.extend(subscription.topics.iter().map(|t| t.to_string()));
            }
        }
        Some(topics)
    }
}

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

pub type GroupTimers = TimerDriver<TimingWheel<GroupTimer>, SystemClock>;

/// A record to write to a group's partition: key and value (None: a tombstone).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// Everything a shard's coordinator holds.
pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    pub timers: GroupTimers,
    /// `__consumer_offsets` partitions owned here whose records are loaded.
    loaded: RefCell<HashSet<i32>>,
}

impl Coordinator {
    pub fn new(clock: SystemClock) -> Coordinator {
        let wheel = TimingWheel::new(WheelOptions {
            start_ms: clock.monotonic_ms(),
            ..WheelOptions::default()
        });
        Coordinator {
            groups: RefCell::new(HashMap::new()),
            timers: TimerDriver::new(wheel, clock, DriverOptions::DEFAULT),
            loaded: RefCell::new(HashSet::new()),
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

    /// The error for a group this shard cannot serve now, if any.
    fn check_serving(&self, shard: &Shard, group: &str) -> Result<(), i16> {
        let partitions = shard.metadata().topic(OFFSETS_TOPIC).map(|t| t.partitions);
        // The caller saw the topic before routing here; this shard does not know it yet
        // while the controller is still applying its creation shard by shard (the
        // controller's own shard first). Retriable: COORDINATOR_NOT_AVAILABLE here made
        // librdkafka drop a manual assignment's offset fetch and never fetch.
        let Some(partitions) = partitions else { return Err(code::COORDINATOR_LOAD_IN_PROGRESS) };
        let partition = offsets_partition(group, partitions);
        if shard.owner_of(&TopicPartition::new(OFFSETS_TOPIC, partition)) != shard.id {
            return Err(code::NOT_COORDINATOR);
        }
        if !self.loaded.borrow().contains(&partition) {
            return Err(code::COORDINATOR_LOAD_IN_PROGRESS);
        }
        Ok(())
    }

    /// Runs a group call on this (the coordinator) shard.
    pub async fn call(&self, shard: &Rc<Shard>, call: GroupCall) -> GroupAnswer {
        match call {
            GroupCall::Join(args) => GroupAnswer::Join(self.join(shard, args).await),
            GroupCall::Sync(args) => GroupAnswer::Sync(self.sync(shard, args).await),
            GroupCall::Heartbeat(args) => GroupAnswer::Heartbeat(self.heartbeat(shard, &args)),
            GroupCall::Leave { group, members } => {
                GroupAnswer::Leave(self.leave(shard, &group, &members))
            }
            GroupCall::Commit(args) => GroupAnswer::Commit(self.commit(shard, args).await),
            GroupCall::FetchOffsets { group, partitions, require_stable } => {
                GroupAnswer::FetchOffsets(self.fetch_offsets(shard, &group, partitions).map(
                    |found| {
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
                    },
                ))
            }
            GroupCall::DeleteOffsets { group, partitions } => {
                GroupAnswer::DeleteOffsets(self.delete_offsets(shard, &group, &partitions).await)
            }
            GroupCall::Describe(groups) => GroupAnswer::Describe(
                groups.iter().map(|group| self.describe(shard, group)).collect(),
            ),
            GroupCall::List { states } => GroupAnswer::List(self.list(&states)),
            GroupCall::Delete(groups) => {
                let mut results = Vec::with_capacity(groups.len());
                for group in groups {
                    let error = self.delete_group(shard, &group).await;
                    results.push((group, error));
                }
                GroupAnswer::Delete(results)
            }
        }
    }

    // ---- membership ----

    async fn join(&self, shard: &Rc<Shard>, args: JoinArgs) -> JoinOutcome {
        let failed = |error| JoinOutcome::failed(error, &args.member_id);
        if args.group.is_empty() {
            return failed(code::INVALID_GROUP_ID);
        }
        if shard.stopping() {
            return failed(code::NOT_COORDINATOR);
        }
        if let Err(error) = self.check_serving(shard, &args.group) {
            return failed(error);
        }
        let limits = &shard.config.groups;
        if args.session_timeout_ms < limits.min_session_timeout_ms
            || args.session_timeout_ms > limits.max_session_timeout_ms
        {
            return failed(code::INVALID_SESSION_TIMEOUT);
        }
        let now = shard.clock.monotonic_ms();
        let wall = shard.clock.wall_ms();
        let (sender, receiver) = local_channel::new_bounded(1);
        let mut writes = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            if !args.member_id.is_empty() && !groups.contains_key(&args.group) {
                return failed(code::UNKNOWN_MEMBER_ID);
            }
            let group =
                groups.entry(args.group.clone()).or_insert_with(|| Group::new(&args.group, wall));
            if group.state == State::Dead {
                return failed(code::COORDINATOR_NOT_AVAILABLE);
            }
            if !group.supports(&args.protocol_type, &args.protocols) {
                return failed(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            let answer = if args.member_id.is_empty() {
                self.join_new(shard, group, &args, sender, now, wall)
            } else {
                self.join_known(shard, group, &args, sender, now, wall)
            };
            if let Some(answer) = answer {
                return answer;
            }
            self.maybe_complete_join(shard, group, now, wall, &mut writes);
        }
        self.write_detached(shard, &args.group, writes);
        receiver.recv().await.unwrap_or_else(|| failed(code::COORDINATOR_NOT_AVAILABLE))
    }

    /// A join without a member id. `Some`: answered now; `None`: parked on `sender`.
    fn join_new(
        &self,
        shard: &Shard,
        group: &mut Group,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        if let Some(instance) = &args.instance_id {
            let member_id = self.new_member_id(instance);
            if let Some(old_id) = group.instances.get(instance).cloned() {
                return self
                    .replace_static(shard, group, &old_id, member_id, args, sender, now, wall);
            }
            return self.add_and_park(shard, group, member_id, args, sender, now, wall);
        }
        let prefix = if args.client.id.is_empty() { "member" } else { args.client.id.as_str() };
        let member_id = self.new_member_id(prefix);
        if args.require_known_member_id {
            let deadline = now + args.session_timeout_ms as u64;
            group.pending.insert(member_id.clone(), deadline);
            self.schedule(deadline, &group.id, TimerKind::Pending(member_id.clone()));
            return Some(JoinOutcome::failed(code::MEMBER_ID_REQUIRED, &member_id));
        }
        self.add_and_park(shard, group, member_id, args, sender, now, wall)
    }

    /// A join with a member id.
    fn join_known(
        &self,
        shard: &Shard,
        group: &mut Group,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        let member_id = args.member_id.clone();
        if group.pending.remove(&member_id).is_some() {
            return self.add_and_park(shard, group, member_id, args, sender, now, wall);
        }
        if let Some(error) = fenced_or_unknown(group, &member_id, args.instance_id.as_deref()) {
            return Some(JoinOutcome::failed(error, &member_id));
        }
        let is_leader = group.is_leader(&member_id);
        let Some(member) = group.members.get_mut(&member_id) else {
            return Some(JoinOutcome::failed(code::UNKNOWN_MEMBER_ID, &member_id));
        };
        member.deadline_ms = now + member.session_timeout_ms as u64;
        let unchanged = member.same_protocols(&args.protocols);
        match group.state {
            State::PreparingRebalance => {
                update_member(member, args);
                if let Some(previous) = member.join.replace(sender) {
                    let _ = previous
                        .try_send(JoinOutcome::failed(code::REBALANCE_IN_PROGRESS, &member_id));
                }
                None
            }
            // The member lost its JoinGroup answer: send it again.
            State::CompletingRebalance if unchanged => Some(group.join_outcome(&member_id, false)),
            // A follower with nothing new gets the current generation; a leader rejoining
            // (or anyone with new metadata) starts a rebalance.
            State::Stable if unchanged && !is_leader => Some(group.join_outcome(&member_id, false)),
            State::CompletingRebalance | State::Stable => {
                update_member(member, args);
                member.join = Some(sender);
                self.prepare_rebalance(
                    shard,
                    group,
                    now,
                    wall,
                    "member rejoined with new metadata",
                );
                None
            }
            State::Empty | State::Dead => {
                Some(JoinOutcome::failed(code::UNKNOWN_MEMBER_ID, &member_id))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_and_park(
        &self,
        shard: &Shard,
        group: &mut Group,
        member_id: String,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        if group.members.len() >= shard.config.groups.max_size {
            return Some(JoinOutcome::failed(code::GROUP_MAX_SIZE_REACHED, &member_id));
        }
        if group.members.is_empty() {
            group.protocol_type = Some(args.protocol_type.clone());
        }
        let deadline_ms = now + args.session_timeout_ms as u64;
        let member = Member {
            id: member_id.clone(),
            instance_id: args.instance_id.clone(),
            client_id: args.client.id.clone(),
            client_host: args.client.host.clone(),
            session_timeout_ms: args.session_timeout_ms,
            rebalance_timeout_ms: args.rebalance_timeout_ms,
            protocol_type: args.protocol_type.clone(),
            protocols: args.protocols.clone(),
            assignment: Bytes::new(),
            join: Some(sender),
            sync: None,
            deadline_ms,
        };
        if let Some(instance) = &args.instance_id {
            group.instances.insert(instance.clone(), member_id.clone());
        }
        group.members.insert(member_id.clone(), member);
        group.new_member_added = true;
        self.schedule(deadline_ms, &group.id, TimerKind::Session(member_id.clone()));
        debug!(group = %group.id, member = %member_id, "member joins");
        match group.state {
            State::Empty | State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(shard, group, now, wall, "member joined");
            }
            State::PreparingRebalance | State::Dead => {}
        }
        None
    }

    /// A static member came back with a new member id (KIP-345): the old id is fenced, the
    /// member keeps its place and, when nothing changed, a stable group does not rebalance.
    #[allow(clippy::too_many_arguments)]
    fn replace_static(
        &self,
        shard: &Shard,
        group: &mut Group,
        old_id: &str,
        new_id: String,
        args: &JoinArgs,
        sender: LocalSender<JoinOutcome>,
        now: u64,
        wall: i64,
    ) -> Option<JoinOutcome> {
        let Some(mut member) = group.members.shift_remove(old_id) else {
            return self.add_and_park(shard, group, new_id, args, sender, now, wall);
        };
        if let Some(join) = member.join.take() {
            let _ = join.try_send(JoinOutcome::failed(code::FENCED_INSTANCE_ID, old_id));
        }
        if let Some(sync) = member.sync.take() {
            let _ = sync.try_send(SyncOutcome::failed(code::FENCED_INSTANCE_ID));
        }
        let unchanged = member.same_protocols(&args.protocols);
        member.id = new_id.clone();
        member.client_id = args.client.id.clone();
        member.client_host = args.client.host.clone();
        member.session_timeout_ms = args.session_timeout_ms;
        member.rebalance_timeout_ms = args.rebalance_timeout_ms;
        member.deadline_ms = now + args.session_timeout_ms as u64;
        if let Some(instance) = &args.instance_id {
            group.instances.insert(instance.clone(), new_id.clone());
        }
        let was_leader = group.is_leader(old_id);
        if was_leader {
            group.leader = Some(new_id.clone());
        }
        self.schedule(member.deadline_ms, &group.id, TimerKind::Session(new_id.clone()));
        info!(group = %group.id, old = old_id, new = %new_id, "static member replaced");
        match group.state {
            State::Stable if unchanged => {
                group.members.insert(new_id.clone(), member);
                // The stored record names the old member id; the next store replaces it.
                Some(group.join_outcome(&new_id, was_leader))
            }
            State::PreparingRebalance => {
                update_member(&mut member, args);
                member.join = Some(sender);
                group.members.insert(new_id, member);
                None
            }
            _ => {
                update_member(&mut member, args);
                member.join = Some(sender);
                group.members.insert(new_id, member);
                self.prepare_rebalance(shard, group, now, wall, "static member rejoined");
                None
            }
        }
    }

    /// Starts a rebalance: members must rejoin within the rebalance timeout. A group
    /// leaving Empty first waits `group.initial.rebalance.delay.ms` for more members.
    fn prepare_rebalance(&self, shard: &Shard, group: &mut Group, now: u64, wall: i64, why: &str) {
        if group.state == State::CompletingRebalance {
            for member in group.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(sync) = member.sync.take() {
                    let _ = sync.try_send(SyncOutcome::failed(code::REBALANCE_IN_PROGRESS));
                }
            }
        }
        let was_empty = group.state == State::Empty;
        group.set_state(State::PreparingRebalance, wall);
        group.rebalance += 1;
        let rebalance_timeout = group.max_rebalance_timeout_ms();
        let delay = shard.config.groups.initial_rebalance_delay_ms;
        let wait = if was_empty && delay > 0 {
            let first = delay.min(rebalance_timeout);
            group.initial_delay_left_ms = Some(rebalance_timeout.saturating_sub(first));
            group.new_member_added = false;
            first
        } else {
            group.initial_delay_left_ms = None;
            rebalance_timeout
        };
        info!(group = %group.id, generation = group.generation, reason = why, "preparing rebalance");
        self.schedule(now + wait, &group.id, TimerKind::Join(group.rebalance));
    }

    /// Completes the join phase when every member has rejoined.
    fn maybe_complete_join(
        &self,
        shard: &Shard,
        group: &mut Group,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
    ) {
        if group.state == State::PreparingRebalance
            && group.initial_delay_left_ms.is_none()
            && group.all_joined()
        {
            self.complete_join(shard, group, now, wall, writes);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the generation moves
    /// on, and every parked JoinGroup is answered (the leader with all members).
    fn complete_join(
        &self,
        _shard: &Shard,
        group: &mut Group,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
    ) {
        let gone: Vec<String> =
            group.members.values().filter(|m| m.join.is_none()).map(|m| m.id.clone()).collect();
        for member_id in gone {
            info!(group = %group.id, member = %member_id, "member did not rejoin in time");
            remove_member_only(group, &member_id);
        }
        group.initial_delay_left_ms = None;
        group.generation += 1;
        if group.members.is_empty() {
            group.protocol = None;
            group.leader = None;
            group.set_state(State::Empty, wall);
            info!(group = %group.id, generation = group.generation, "group is empty");
            writes.push(group_write(&group.id, Some(&group.value())));
            group.stored = true;
            return;
        }
        group.protocol = group.select_protocol();
        if !group.leader.as_ref().is_some_and(|leader| group.members.contains_key(leader)) {
            group.leader = group.members.keys().next().cloned();
        }
        group.set_state(State::CompletingRebalance, wall);
        info!(
            group = %group.id,
            generation = group.generation,
            members = group.members.len(),
            protocol = group.protocol.as_deref().unwrap_or(""),
            "rebalance: join complete"
        );
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let outcome = group.join_outcome(&id, false);
            if let Some(member) = group.members.get_mut(&id) {
                member.deadline_ms = now + member.session_timeout_ms as u64;
                if let Some(join) = member.join.take() {
                    let _ = join.try_send(outcome);
                }
            }
        }
        let timeout = group.max_rebalance_timeout_ms();
        self.schedule(now + timeout, &group.id, TimerKind::Sync(group.rebalance));
    }

    /// Removes a member (left, session expired) and moves the group on.
    #[allow(clippy::too_many_arguments)]
    fn remove_member(
        &self,
        shard: &Shard,
        group: &mut Group,
        member_id: &str,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
        why: &str,
    ) {
        if let Some(mut member) = remove_member_only(group, member_id) {
            if let Some(join) = member.join.take() {
                let _ = join.try_send(JoinOutcome::failed(code::UNKNOWN_MEMBER_ID, member_id));
            }
            if let Some(sync) = member.sync.take() {
                let _ = sync.try_send(SyncOutcome::failed(code::UNKNOWN_MEMBER_ID));
            }
        }
        info!(group = %group.id, member = member_id, reason = why, "member removed");
        match group.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(shard, group, now, wall, why);
                self.maybe_complete_join(shard, group, now, wall, writes);
            }
            State::PreparingRebalance => self.maybe_complete_join(shard, group, now, wall, writes),
            State::Empty | State::Dead => {}
        }
    }

    async fn sync(&self, shard: &Rc<Shard>, args: SyncArgs) -> SyncOutcome {
        if args.group.is_empty() {
            return SyncOutcome::failed(code::INVALID_GROUP_ID);
        }
        if shard.stopping() {
            return SyncOutcome::failed(code::NOT_COORDINATOR);
        }
        if let Err(error) = self.check_serving(shard, &args.group) {
            return SyncOutcome::failed(error);
        }
        let now = shard.clock.monotonic_ms();
        let (sender, receiver) = local_channel::new_bounded(1);
        let store = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&args.group) else {
                return SyncOutcome::failed(code::UNKNOWN_MEMBER_ID);
            };
            if let Some(error) =
                fenced_or_unknown(group, &args.member_id, args.instance_id.as_deref())
            {
                return SyncOutcome::failed(error);
            }
            if args.generation != group.generation {
                return SyncOutcome::failed(code::ILLEGAL_GENERATION);
            }
            if args.protocol_type.as_ref().is_some_and(|t| Some(t) != group.protocol_type.as_ref())
                || args.protocol.as_ref().is_some_and(|p| Some(p) != group.protocol.as_ref())
            {
                return SyncOutcome::failed(code::INCONSISTENT_GROUP_PROTOCOL);
            }
            let is_leader = group.is_leader(&args.member_id);
            let (protocol_type, protocol) = (group.protocol_type.clone(), group.protocol.clone());
            let Some(member) = group.members.get_mut(&args.member_id) else {
                return SyncOutcome::failed(code::UNKNOWN_MEMBER_ID);
            };
            member.deadline_ms = now + member.session_timeout_ms as u64;
            match group.state {
                State::Empty | State::Dead => return SyncOutcome::failed(code::UNKNOWN_MEMBER_ID),
                State::PreparingRebalance => {
                    return SyncOutcome::failed(code::REBALANCE_IN_PROGRESS)
                }
                State::Stable => {
                    return SyncOutcome {
                        error: code::NONE,
                        protocol_type,
                        protocol,
                        assignment: member.assignment.clone(),
                    }
                }
                State::CompletingRebalance => {
                    member.sync = Some(sender);
                }
            }
            if is_leader {
                let assignments: HashMap<String, Bytes> = args.assignments.into_iter().collect();
                let mut value = group.value();
                for stored in &mut value.members {
                    stored.assignment =
                        assignments.get(&stored.member_id).cloned().unwrap_or_default();
                }
                Some((group.generation, assignments, value))
            } else {
                None
            }
        };
        if let Some((generation, assignments, value)) = store {
            let written = shard
                .append_group_records(&args.group, vec![group_write(&args.group, Some(&value))])
                .await;
            let now = shard.clock.monotonic_ms();
            let wall = shard.clock.wall_ms();
            let mut groups = self.groups.borrow_mut();
            if let Some(group) = groups.get_mut(&args.group) {
                if group.generation == generation && group.state == State::CompletingRebalance {
                    match written {
                        Ok(()) => {
                            group.stored = true;
                            group.set_state(State::Stable, wall);
                            let (protocol_type, protocol) =
                                (group.protocol_type.clone(), group.protocol.clone());
                            for member in group.members.values_mut() {
                                member.assignment =
                                    assignments.get(&member.id).cloned().unwrap_or_default();
                                if let Some(sync) = member.sync.take() {
                                    let _ = sync.try_send(SyncOutcome {
                                        error: code::NONE,
                                        protocol_type: protocol_type.clone(),
                                        protocol: protocol.clone(),
                                        assignment: member.assignment.clone(),
                                    });
                                }
                            }
                            info!(group = %group.id, generation, "group is stable");
                        }
                        Err(error) => {
                            warn!(group = %group.id, %error.message, "storing the assignment failed");
                            for member in group.members.values_mut() {
                                if let Some(sync) = member.sync.take() {
                                    let _ = sync.try_send(SyncOutcome::failed(
                                        code::COORDINATOR_NOT_AVAILABLE,
                                    ));
                                }
                            }
                            self.prepare_rebalance(shard, group, now, wall, "store failed");
                        }
                    }
                }
            }
        }
        receiver.recv().await.unwrap_or_else(|| SyncOutcome::failed(code::REBALANCE_IN_PROGRESS))
    }

    fn heartbeat(&self, shard: &Shard, args: &HeartbeatArgs) -> i16 {
        if args.group.is_empty() {
            return code::INVALID_GROUP_ID;
        }
        if let Err(error) = self.check_serving(shard, &args.group) {
            return error;
        }
        let now = shard.clock.monotonic_ms();
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups.get_mut(&args.group) else { return code::UNKNOWN_MEMBER_ID };
        if let Some(error) = fenced_or_unknown(group, &args.member_id, args.instance_id.as_deref())
        {
            return error;
        }
        if args.generation != group.generation {
            return code::ILLEGAL_GENERATION;
        }
        let state = group.state;
        if let Some(member) = group.members.get_mut(&args.member_id) {
            member.deadline_ms = now + member.session_timeout_ms as u64;
        }
        match state {
            State::Empty | State::Dead => code::UNKNOWN_MEMBER_ID,
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            State::CompletingRebalance | State::Stable => code::NONE,
        }
    }

    fn leave(&self, shard: &Rc<Shard>, group_id: &str, leaving: &[Leaving]) -> LeaveOutcome {
        if group_id.is_empty() {
            return LeaveOutcome { error: code::INVALID_GROUP_ID, members: Vec::new() };
        }
        if let Err(error) = self.check_serving(shard, group_id) {
            return LeaveOutcome { error, members: Vec::new() };
        }
        let now = shard.clock.monotonic_ms();
        let wall = shard.clock.wall_ms();
        let mut writes = Vec::new();
        let mut results = Vec::with_capacity(leaving.len());
        {
            let mut groups = self.groups.borrow_mut();
            let mut group = groups.get_mut(group_id);
            for one in leaving {
                let error = match group.as_deref_mut() {
                    None => code::UNKNOWN_MEMBER_ID,
                    Some(group) => self.leave_one(shard, group, one, now, wall, &mut writes),
                };
                results.push((one.member_id.clone(), one.instance_id.clone(), error));
            }
        }
        self.write_detached(shard, group_id, writes);
        LeaveOutcome { error: code::NONE, members: results }
    }

    fn leave_one(
        &self,
        shard: &Shard,
        group: &mut Group,
        one: &Leaving,
        now: u64,
        wall: i64,
        writes: &mut Vec<Write>,
    ) -> i16 {
        let member_id = match (&one.instance_id, one.member_id.is_empty()) {
            (Some(instance), true) => match group.instances.get(instance) {
                Some(id) => id.clone(),
                None => return code::UNKNOWN_MEMBER_ID,
            },
            _ => one.member_id.clone(),
        };
        if group.pending.remove(&member_id).is_some() {
            return code::NONE;
        }
        if let Some(error) = fenced_or_unknown(group, &member_id, one.instance_id.as_deref()) {
            return error;
        }
        self.remove_member(shard, group, &member_id, now, wall, writes, "member left");
        code::NONE
    }

    /// A timer fired.
    pub async fn on_timer(&self, shard: &Rc<Shard>, timer: GroupTimer) {
        let now = shard.clock.monotonic_ms();
        let wall = shard.clock.wall_ms();
        let mut writes = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&timer.group) else { return };
            match timer.kind {
                TimerKind::Session(member_id) => {
                    let Some(member) = group.members.get(&member_id) else { return };
                    // Parked in a rebalance, a member is alive; its session restarts
                    // when the rebalance answers it.
                    let rearm = if member.join.is_some() || member.sync.is_some() {
                        Some(now + member.session_timeout_ms as u64)
                    } else if member.deadline_ms > now {
                        Some(member.deadline_ms)
                    } else {
                        None
                    };
                    match rearm {
                        Some(at) => self.schedule(at, &group.id, TimerKind::Session(member_id)),
                        None => self.remove_member(
                            shard,
                            group,
                            &member_id,
                            now,
                            wall,
                            &mut writes,
                            "session timed out",
                        ),
                    }
                }
                TimerKind::Pending(member_id) => {
                    if group.pending.get(&member_id).is_some_and(|deadline| *deadline <= now) {
                        group.pending.remove(&member_id);
                        self.maybe_complete_join(shard, group, now, wall, &mut writes);
                    }
                }
                TimerKind::Join(rebalance) => {
                    if rebalance != group.rebalance || group.state != State::PreparingRebalance {
                        return;
                    }
                    if let Some(left) = group.initial_delay_left_ms {
                        if group.new_member_added && left > 0 {
                            let step = shard.config.groups.initial_rebalance_delay_ms.min(left);
                            group.initial_delay_left_ms = Some(left - step);
                            group.new_member_added = false;
                            self.schedule(now + step, &group.id, TimerKind::Join(rebalance));
                            return;
                        }
                    }
                    self.complete_join(shard, group, now, wall, &mut writes);
                }
                TimerKind::Sync(rebalance) => {
                    if rebalance != group.rebalance || group.state != State::CompletingRebalance {
                        return;
                    }
                    let silent: Vec<String> = group
                        .members
                        .values()
                        .filter(|m| m.sync.is_none())
                        .map(|m| m.id.clone())
                        .collect();
                    for member_id in silent {
                        info!(group = %group.id, member = %member_id, "no SyncGroup in time");
                        remove_member_only(group, &member_id);
                    }
                    self.prepare_rebalance(shard, group, now, wall, "sync timed out");
                    self.maybe_complete_join(shard, group, now, wall, &mut writes);
                }
            }
        }
        let group = timer.group;
        if let Err(error) = shard.append_group_records(&group, writes).await {
            warn!(%group, message = %error.message, "writing a group record failed");
        }
    }

    /// Writes group records without waiting (state changes that answer no request).
    fn write_detached(&self, shard: &Rc<Shard>, group: &str, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let shard = shard.clone();
        let group = group.to_string();
        glommio::spawn_local(async move {
            if let Err(error) = shard.append_group_records(&group, writes).await {
                warn!(%group, message = %error.message, "writing a group record failed");
            }
        })
        .detach();
    }

    // ---- offsets ----

    async fn commit(&self, shard: &Rc<Shard>, args: CommitArgs) -> Vec<i16> {
        let all = |error| vec![error; args.partitions.len()];
        // Kafka accepts the empty group id in OffsetCommit "for backwards compatibility"
        // (a consumer of the days before KIP-289 committed under it), but not in
        // TxnOffsetCommit (`GroupCoordinator.isValidGroupId`).
        if args.group.is_empty() && args.txn.is_some() {
            return all(code::INVALID_GROUP_ID);
        }
        if let Err(error) = self.check_serving(shard, &args.group) {
            return all(error);
        }
        let now = shard.clock.monotonic_ms();
        let wall = shard.clock.wall_ms();
        let max_metadata = shard.config.groups.offset_metadata_max_bytes;
        {
            let mut groups = self.groups.borrow_mut();
            let group = match groups.get_mut(&args.group) {
                Some(group) => group,
                None if args.generation < 0 => groups
                    .entry(args.group.clone())
                    .or_insert_with(|| Group::new(&args.group, wall)),
                None => return all(code::ILLEGAL_GENERATION),
            };
            let error = match group.state {
                State::Dead => Some(code::COORDINATOR_NOT_AVAILABLE),
                State::Empty if args.generation < 0 => None,
                // A transactional commit without group metadata (TxnOffsetCommit before
                // v3, or a producer outside the group) is not checked against members.
                _ if args.txn.is_some() && args.generation < 0 => None,
                _ => fenced_or_unknown(group, &args.member_id, args.instance_id.as_deref()).or(
                    if args.generation != group.generation {
                        Some(code::ILLEGAL_GENERATION)
                    } else if group.state == State::CompletingRebalance {
                        Some(code::REBALANCE_IN_PROGRESS)
                    } else {
                        None
                    },
                ),
            };
            if let Some(error) = error {
                return all(error);
            }
            if let Some(member) = group.members.get_mut(&args.member_id) {
                member.deadline_ms = now + member.session_timeout_ms as u64;
            }
        }
        let mut results = Vec::with_capacity(args.partitions.len());
        let mut writes = Vec::new();
        let mut accepted = Vec::new();
        {
            let metadata = shard.metadata();
            for part in &args.partitions {
                let known = metadata
                    .topic(&part.tp.topic)
                    .is_some_and(|t| part.tp.partition >= 0 && part.tp.partition < t.partitions);
                let text = part.metadata.clone().unwrap_or_default();
                let error = if !known {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else if text.len() > max_metadata {
                    code::OFFSET_METADATA_TOO_LARGE
                } else {
                    let committed = Committed {
                        offset: part.offset,
                        leader_epoch: part.leader_epoch,
                        metadata: text,
                        commit_timestamp_ms: wall,
                    };
                    writes.push(offset_write(&args.group, &part.tp, Some(&committed)));
                    accepted.push((part.tp.clone(), committed));
                    code::NONE
                };
                results.push(error);
            }
        }
        if writes.is_empty() {
            return results;
        }
        if let Err(error) = shard.append_group_records_txn(&args.group, writes, args.txn).await {
            warn!(group = %args.group, message = %error.message, "storing offsets failed");
            let failed = if error.code == code::INVALID_PRODUCER_EPOCH {
                error.code
            } else {
                code::COORDINATOR_NOT_AVAILABLE
            };
            for result in &mut results {
                if *result == code::NONE {
                    *result = failed;
                }
            }
            return results;
        }
        let mut groups = self.groups.borrow_mut();
        let group =
            groups.entry(args.group.clone()).or_insert_with(|| Group::new(&args.group, wall));
        if group.state == State::Dead {
            group.set_state(State::Empty, wall);
        }
        match args.txn {
            Some((producer_id, _)) => {
                group.pending_txn.entry(producer_id).or_default().extend(accepted)
            }
            None => group.offsets.extend(accepted),
        }
        results
    }

    /// A transaction marker was written to `__consumer_offsets` partition `partition`:
    /// the offsets the producer committed in the transaction take effect (commit) or are
    /// dropped (abort).
    pub fn complete_txn(&self, shard: &Shard, partition: i32, producer_id: i64, commit: bool) {
        let partitions = shard.metadata().topic(OFFSETS_TOPIC).map_or(1, |t| t.partitions);
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            if offsets_partition(&group.id, partitions) != partition {
                continue;
            }
            let Some(offsets) = group.pending_txn.remove(&producer_id) else { continue };
            debug!(group = %group.id, partition, producer_id, commit, offsets = offsets.len(), "transactional offsets completed");
            if commit {
                group.offsets.extend(offsets);
            }
        }
    }

    /// Whether `tp` has an offset committed in a transaction that is still open (OffsetFetch
    /// with require_stable answers UNSTABLE_OFFSET_COMMIT then).
    pub fn has_pending(&self, group_id: &str, tp: &TopicPartition) -> bool {
        self.groups
            .borrow()
            .get(group_id)
            .is_some_and(|g| g.pending_txn.values().any(|offsets| offsets.contains_key(tp)))
    }

    fn fetch_offsets(
        &self,
        shard: &Shard,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<(TopicPartition, Committed)>, i16> {
        self.check_serving(shard, group_id)?;
        let groups = self.groups.borrow();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        Ok(match partitions {
            Some(partitions) => partitions
                .into_iter()
                .map(|tp| {
                    let committed =
                        offsets.and_then(|o| o.get(&tp)).cloned().unwrap_or(Committed::NONE);
                    (tp, committed)
                })
                .collect(),
            None => {
                let mut all: Vec<(TopicPartition, Committed)> = offsets
                    .map(|o| o.iter().map(|(tp, c)| (tp.clone(), c.clone())).collect())
                    .unwrap_or_default();
                all.sort_by(|a, b| (&a.0.topic, a.0.partition).cmp(&(&b.0.topic, b.0.partition)));
                all
            }
        })
    }

    async fn delete_offsets(
        &self,
        shard: &Rc<Shard>,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<i16>, i16> {
        if group_id.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        self.check_serving(shard, group_id)?;
        let mut results = Vec::with_capacity(partitions.len());
        let mut writes = Vec::new();
        {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(group_id).filter(|g| g.state != State::Dead) else {
                return Err(code::GROUP_ID_NOT_FOUND);
            };
            let subscribed = match group.state {
                State::Empty => HashSet::new(),
                _ => match group.subscribed_topics() {
                    Some(topics) => topics,
                    None => return Err(code::NON_EMPTY_GROUP),
                },
            };
            for tp in partitions {
                if subscribed.contains(&tp.topic) {
                    results.push(code::GROUP_SUBSCRIBED_TO_TOPIC);
                } else {
                    if group.offsets.contains_key(tp) {
                        writes.push(offset_write(group_id, tp, None));
                    }
                    results.push(code::NONE);
                }
            }
        }
        if !writes.is_empty() {
            shard.append_group_records(group_id, writes).await.map_err(|error| {
                warn!(group = group_id, message = %error.message, "deleting offsets failed");
                code::COORDINATOR_NOT_AVAILABLE
            })?;
        }
        let mut groups = self.groups.borrow_mut();
        if let Some(group) = groups.get_mut(group_id) {
            for (tp, result) in partitions.iter().zip(&results) {
                if *result == code::NONE {
                    group.offsets.remove(tp);
                }
            }
        }
        Ok(results)
    }

    // ---- admin ----

    fn describe(&self, shard: &Shard, group_id: &str) -> GroupDescription {
        let mut description = GroupDescription {
            group: group_id.to_string(),
            state: State::Dead.name().to_string(),
            ..Default::default()
        };
        if let Err(error) = self.check_serving(shard, group_id) {
            description.error = error;
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
    async fn delete_group(&self, shard: &Rc<Shard>, group_id: &str) -> i16 {
        if let Err(error) = self.check_serving(shard, group_id) {
            return error;
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
        if let Err(error) = shard.append_group_records(group_id, writes).await {
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

    /// Drops the offsets of groups empty for longer than `offsets.retention.minutes`
    /// (standalone commits: offsets older than that), and groups left with nothing.
    pub async fn expire_offsets(&self, shard: &Rc<Shard>) {
        let retention = i64::try_from(shard.config.groups.offsets_retention_ms).unwrap_or(i64::MAX);
        let wall = shard.clock.wall_ms();
        let mut work: Vec<(String, Vec<TopicPartition>, bool, Vec<Write>)> = Vec::new();
        {
            let groups = self.groups.borrow();
            for group in groups.values().filter(|g| g.state == State::Empty) {
                let expired: Vec<TopicPartition> = group
                    .offsets
                    .iter()
                    .filter(|(_, c)| {
                        let since = if group.protocol_type.is_some() {
                            group.state_since_ms
                        } else {
                            c.commit_timestamp_ms
                        };
                        wall.saturating_sub(since) >= retention
                    })
                    .map(|(tp, _)| tp.clone())
                    .collect();
                let dead = expired.len() == group.offsets.len();
                if expired.is_empty() && !dead {
                    continue;
                }
                let mut writes: Vec<Write> =
                    expired.iter().map(|tp| offset_write(&group.id, tp, None)).collect();
                if dead && group.stored {
                    writes.push(group_write(&group.id, None));
                }
                work.push((group.id.clone(), expired, dead, writes));
            }
        }
        for (group_id, expired, dead, writes) in work {
            if !writes.is_empty() {
                if let Err(error) = shard.append_group_records(&group_id, writes).await {
                    warn!(group = %group_id, message = %error.message, "expiring offsets failed");
                    continue;
                }
            }
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&group_id) else { continue };
            for tp in &expired {
                group.offsets.remove(tp);
            }
            info!(group = %group_id, offsets = expired.len(), "expired committed offsets");
            if dead && group.state == State::Empty && group.offsets.is_empty() {
                groups.remove(&group_id);
            }
        }
    }

    // ---- loading ----

    /// Replays one `__consumer_offsets` partition's records into groups and offsets.
    pub fn load(&self, shard: &Shard, partition: i32, records: Vec<Replayed>) {
        let now = shard.clock.monotonic_ms();
        let wall = shard.clock.wall_ms();
        let mut groups = self.groups.borrow_mut();
        let (mut offsets, mut metadata, mut skipped) = (0usize, 0usize, 0usize);
        for record in records {
            let (key, value, producer_id) = match record {
                Replayed::Record { key, value, producer_id } => (key, value, producer_id),
                Replayed::Marker { producer_id, commit } => {
                    let partitions =
                        shard.metadata().topic(OFFSETS_TOPIC).map_or(1, |t| t.partitions);
                    for group in groups.values_mut() {
                        if offsets_partition(&group.id, partitions) != partition {
                            continue;
                        }
                        if let Some(pending) = group.pending_txn.remove(&producer_id) {
                            if commit {
                                group.offsets.extend(pending);
                            }
                        }
                    }
                    continue;
                }
            };
            let key = match records::decode_key(&key) {
                Ok(key) => key,
                Err(error) => {
                    skipped += 1;
                    debug!(partition, %error, "skipping a __consumer_offsets record");
                    continue;
                }
            };
            match key {
                OffsetsKey::Offset { group, topic, partition: p } => {
                    let tp = TopicPartition::new(topic, p);
                    match value.map(|v| records::decode_offset_value(&v)) {
                        None => {
                            if let Some(g) = groups.get_mut(&group) {
                                g.offsets.remove(&tp);
                            }
                        }
                        Some(Ok(value)) => {
                            let g = groups
                                .entry(group.clone())
                                .or_insert_with(|| Group::new(&group, wall));
                            match producer_id {
                                Some(pid) => {
                                    g.pending_txn
                                        .entry(pid)
                                        .or_default()
                                        .insert(tp, committed_from(&value));
                                }
                                None => {
                                    g.offsets.insert(tp, committed_from(&value));
                                }
                            }
                            offsets += 1;
                        }
                        Some(Err(error)) => {
                            skipped += 1;
                            warn!(partition, %group, %error, "corrupt offset record skipped");
                        }
                    }
                }
                OffsetsKey::Group { group } => match value.map(|v| records::decode_group_value(&v))
                {
                    None => {
                        if let Some(g) = groups.get_mut(&group) {
                            clear_membership(g, wall);
                            g.stored = false;
                        }
                    }
                    Some(Ok(value)) => {
                        let g =
                            groups.entry(group.clone()).or_insert_with(|| Group::new(&group, wall));
                        restore(g, value, now, wall);
                        metadata += 1;
                    }
                    Some(Err(error)) => {
                        skipped += 1;
                        warn!(partition, %group, %error, "corrupt group record skipped");
                    }
                },
            }
        }
        // Groups whose tombstones left nothing.
        let partitions = shard.metadata().topic(OFFSETS_TOPIC).map_or(1, |t| t.partitions);
        groups.retain(|id, g| {
            offsets_partition(id, partitions) != partition
                || g.stored
                || !g.offsets.is_empty()
                || !g.pending_txn.is_empty()
                || !g.members.is_empty()
        });
        let mut timers = Vec::new();
        for group in groups.values() {
            for member in group.members.values() {
                timers.push((member.deadline_ms, group.id.clone(), member.id.clone()));
            }
        }
        drop(groups);
        for (deadline, group, member) in timers {
            self.schedule(deadline, &group, TimerKind::Session(member));
        }
        self.mark_loaded(partition);
        info!(shard = shard.id, partition, offsets, metadata, skipped, "consumer offsets loaded");
    }
}

/// Updates a rejoining member's protocols and timeouts.
fn update_member(member: &mut Member, args: &JoinArgs) {
    member.protocols = args.protocols.clone();
    member.protocol_type = args.protocol_type.clone();
    member.session_timeout_ms = args.session_timeout_ms;
    member.rebalance_timeout_ms = args.rebalance_timeout_ms;
    member.client_id = args.client.id.clone();
    member.client_host = args.client.host.clone();
}

/// UNKNOWN_MEMBER_ID for a member the group does not have, FENCED_INSTANCE_ID for a
/// static member whose instance now belongs to another member id.
fn fenced_or_unknown(group: &Group, member_id: &str, instance_id: Option<&str>) -> Option<i16> {
    if let Some(instance) = instance_id {
        match group.instances.get(instance) {
            Some(current) if current != member_id => return Some(code::FENCED_INSTANCE_ID),
            None if !group.members.contains_key(member_id) => return Some(code::UNKNOWN_MEMBER_ID),
            _ => {}
        }
    }
    if group.members.contains_key(member_id) {
        None
    } else {
        Some(code::UNKNOWN_MEMBER_ID)
    }
}

/// Takes a member out of the group (and its static instance), nothing else.
fn remove_member_only(group: &mut Group, member_id: &str) -> Option<Member> {
    let member = group.members.shift_remove(member_id)?;
    if let Some(instance) = &member.instance_id {
        if group.instances.get(instance).is_some_and(|id| id == member_id) {
            group.instances.remove(instance);
        }
    }
    if group.is_leader(member_id) {
        group.leader = None;
    }
    Some(member)
}

fn clear_membership(group: &mut Group, wall: i64) {
    group.members.clear();
    group.instances.clear();
    group.leader = None;
    group.protocol = None;
    group.set_state(State::Empty, wall);
}

/// A group as its stored record says: stable with its members and their assignments,
/// or empty. Members must heartbeat within their session timeout from now.
fn restore(group: &mut Group, value: GroupValue, now: u64, wall: i64) {
    clear_membership(group, wall);
    group.stored = true;
    group.generation = value.generation;
    group.protocol_type = (!value.protocol_type.is_empty()).then_some(value.protocol_type);
    group.protocol = value.protocol;
    group.leader = value.leader;
    for stored in value.members {
        let protocol = group.protocol.clone().unwrap_or_default();
        if let Some(instance) = &stored.group_instance_id {
            group.instances.insert(instance.clone(), stored.member_id.clone());
        }
        group.members.insert(
            stored.member_id.clone(),
            Member {
                id: stored.member_id,
                instance_id: stored.group_instance_id,
                client_id: stored.client_id,
                client_host: stored.client_host,
                session_timeout_ms: stored.session_timeout_ms,
                rebalance_timeout_ms: stored.rebalance_timeout_ms,
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                protocols: vec![(protocol, stored.subscription)],
                assignment: stored.assignment,
                join: None,
                sync: None,
                deadline_ms: now + stored.session_timeout_ms.max(0) as u64,
            },
        );
    }
    let state = if group.members.is_empty() { State::Empty } else { State::Stable };
    group.state = state;
    group.state_since_ms =
        if value.current_state_timestamp_ms > 0 { value.current_state_timestamp_ms } else { wall };
    if !group.leader.as_ref().is_some_and(|l| group.members.contains_key(l)) {
        group.leader = group.members.keys().next().cloned();
    }
}

fn committed_from(value: &OffsetValue) -> Committed {
    Committed {
        offset: value.offset,
        leader_epoch: value.leader_epoch,
        metadata: value.metadata.clone(),
        commit_timestamp_ms: value.commit_timestamp_ms,
    }
}

fn offset_write(group: &str, tp: &TopicPartition, committed: Option<&Committed>) -> Write {
    let key = records::encode_key(&OffsetsKey::Offset {
        group: group.to_string(),
        topic: tp.topic.clone(),
        partition: tp.partition,
    });
    let value = committed.map(|c| {
        records::encode_offset_value(&OffsetValue {
            offset: c.offset,
            leader_epoch: c.leader_epoch,
            metadata: c.metadata.clone(),
            commit_timestamp_ms: c.commit_timestamp_ms,
            expire_timestamp_ms: -1,
        })
    });
    (key, value)
}

/// The group record (None: its tombstone).
fn group_write(group: &str, value: Option<&GroupValue>) -> Write {
    let key = records::encode_key(&OffsetsKey::Group { group: group.to_string() });
    (key, value.map(records::encode_group_value))
}

/// Tombstones for everything stored of a group.
fn tombstones(group: &Group) -> Vec<Write> {
    let mut writes: Vec<Write> =
        group.offsets.keys().map(|tp| offset_write(&group.id, tp, None)).collect();
    writes.push(group_write(&group.id, None));
    writes
}
