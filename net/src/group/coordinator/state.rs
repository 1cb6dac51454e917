//! A group's state as the coordinator keeps it (members, generation, offsets) and the
//! pure functions over it: protocol selection, the stored record, restoring from it.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use glommio::channels::local_channel::LocalSender;
use kafka_protocol::indexmap::IndexMap;

use super::records::{self, GroupValue, MemberValue, OffsetValue, OffsetsKey};
use super::Write;
use crate::error::code;
use crate::group::*;

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

pub(super) struct Member {
    pub(super) id: String,
    pub(super) instance_id: Option<String>,
    pub(super) client_id: String,
    pub(super) client_host: String,
    pub(super) session_timeout_ms: i32,
    pub(super) rebalance_timeout_ms: i32,
    pub(super) protocol_type: String,
    pub(super) protocols: Vec<(String, Bytes)>,
    pub(super) assignment: Bytes,
    /// A JoinGroup parked until the rebalance completes.
    pub(super) join: Option<LocalSender<JoinOutcome>>,
    /// A SyncGroup parked until the leader's assignment is stored.
    pub(super) sync: Option<LocalSender<SyncOutcome>>,
    /// Monotonic ms after which the member is gone unless it is heard from.
    pub(super) deadline_ms: u64,
}

impl Member {
    pub(super) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    pub(super) fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

pub(super) struct Group {
    pub(super) id: String,
    pub(super) state: State,
    /// Wall-clock ms of the last state change (offsets of an empty group expire from it).
    pub(super) state_since_ms: i64,
    pub(super) protocol_type: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) generation: i32,
    pub(super) leader: Option<String>,
    /// In join order: the first member leads when the leader is gone.
    pub(super) members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their monotonic deadline.
    pub(super) pending: HashMap<String, u64>,
    /// Static members: instance id -> member id.
    pub(super) instances: HashMap<String, String>,
    pub(super) offsets: HashMap<TopicPartition, Committed>,
    /// Offsets committed in open transactions, by producer id (TxnOffsetCommit): they
    /// become `offsets` when the transaction commits.
    pub(super) pending_txn: HashMap<i64, HashMap<TopicPartition, Committed>>,
    /// Bumped on each rebalance; timers of an older one are stale.
    pub(super) rebalance: u64,
    /// During the initial delayed join: the time left of the rebalance timeout.
    pub(super) initial_delay_left_ms: Option<u64>,
    pub(super) new_member_added: bool,
    /// Whether a group record is stored (a delete then needs a tombstone).
    pub(super) stored: bool,
}

impl Group {
    pub(super) fn new(id: &str, now_wall_ms: i64) -> Group {
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

    pub(super) fn set_state(&mut self, state: State, now_wall_ms: i64) {
        self.state = state;
        self.state_since_ms = now_wall_ms;
    }

    /// Protocols every member supports.
    pub(super) fn candidate_protocols(&self) -> Vec<String> {
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
    pub(super) fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
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
    pub(super) fn select_protocol(&self) -> Option<String> {
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

    pub(super) fn max_rebalance_timeout_ms(&self) -> u64 {
        self.members.values().map(|m| m.rebalance_timeout_ms.max(0) as u64).max().unwrap_or(0)
    }

    pub(super) fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join.is_some())
    }

    pub(super) fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    /// The JoinGroup answer for `member_id` in the current generation.
    pub(super) fn join_outcome(&self, member_id: &str, skip_assignment: bool) -> JoinOutcome {
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
    pub(super) fn value(&self) -> GroupValue {
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
    pub(super) fn subscribed_topics(&self) -> Option<HashSet<String>> {
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

/// Updates a rejoining member's protocols and timeouts.
pub(super) fn update_member(member: &mut Member, args: &JoinArgs) {
    member.protocols = args.protocols.clone();
    member.protocol_type = args.protocol_type.clone();
    member.session_timeout_ms = args.session_timeout_ms;
    member.rebalance_timeout_ms = args.rebalance_timeout_ms;
    member.client_id = args.client.id.clone();
    member.client_host = args.client.host.clone();
}

/// UNKNOWN_MEMBER_ID for a member the group does not have, FENCED_INSTANCE_ID for a
/// static member whose instance now belongs to another member id.
pub(super) fn fenced_or_unknown(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Option<i16> {
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
pub(super) fn remove_member_only(group: &mut Group, member_id: &str) -> Option<Member> {
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

pub(super) fn clear_membership(group: &mut Group, wall: i64) {
    group.members.clear();
    group.instances.clear();
    group.leader = None;
    group.protocol = None;
    group.set_state(State::Empty, wall);
}

/// A group as its stored record says: stable with its members and their assignments,
/// or empty. Members must heartbeat within their session timeout from now.
pub(super) fn restore(group: &mut Group, value: GroupValue, now: u64, wall: i64) {
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

pub(super) fn committed_from(value: &OffsetValue) -> Committed {
    Committed {
        offset: value.offset,
        leader_epoch: value.leader_epoch,
        metadata: value.metadata.clone(),
        commit_timestamp_ms: value.commit_timestamp_ms,
    }
}

pub(super) fn offset_write(
    group: &str,
    tp: &TopicPartition,
    committed: Option<&Committed>,
) -> Write {
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
pub(super) fn group_write(group: &str, value: Option<&GroupValue>) -> Write {
    let key = records::encode_key(&OffsetsKey::Group { group: group.to_string() });
    (key, value.map(records::encode_group_value))
}

/// Tombstones for everything stored of a group.
pub(super) fn tombstones(group: &Group) -> Vec<Write> {
    let mut writes: Vec<Write> =
        group.offsets.keys().map(|tp| offset_write(&group.id, tp, None)).collect();
    writes.push(group_write(&group.id, None));
    writes
}
