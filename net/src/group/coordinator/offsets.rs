//! Committed offsets: OffsetCommit and TxnOffsetCommit, OffsetFetch, OffsetDelete,
//! their expiry by `offsets.retention.minutes`, and the replay of a `__consumer_offsets`
//! partition at start-up.

use std::collections::HashSet;
use std::rc::Rc;

use tracing::{debug, info, warn};

use super::records::{self, OffsetsKey};
use super::state::*;
use super::*;

impl<H: CoordinatorHost> Coordinator<H> {
    // ---- offsets ----

    pub(super) async fn commit(&self, host: &Rc<H>, args: CommitArgs) -> Vec<i16> {
        let all = |error| vec![error; args.partitions.len()];
        // Kafka accepts the empty group id in OffsetCommit "for backwards compatibility"
        // (a consumer of the days before KIP-289 committed under it), but not in
        // TxnOffsetCommit (`GroupCoordinator.isValidGroupId`).
        if args.group.is_empty() && args.txn.is_some() {
            return all(code::INVALID_GROUP_ID);
        }
        if let Err(error) = self.check_serving(host, &args.group) {
            return all(error.code());
        }
        let now = host.clock().monotonic_ms();
        let wall = host.clock().wall_ms();
        let max_metadata = host.group_config().offset_metadata_max_bytes;
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
            for part in &args.partitions {
                let known = host
                    .partition_count(&part.tp.topic)
                    .is_some_and(|count| part.tp.partition >= 0 && part.tp.partition < count);
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
        if let Err(error) = append_group_txn::<H>(host, &args.group, writes, args.txn).await {
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
    pub fn complete_txn(&self, host: &H, partition: i32, producer_id: i64, commit: bool) {
        let partitions = host.partition_count(OFFSETS_TOPIC).unwrap_or(1);
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

    pub(super) fn fetch_offsets(
        &self,
        host: &H,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<(TopicPartition, Committed)>, NotServing> {
        self.check_serving(host, group_id)?;
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

    pub(super) async fn delete_offsets(
        &self,
        host: &Rc<H>,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<i16>, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_serving(host, group_id)?;
        let mut results = Vec::with_capacity(partitions.len());
        let mut writes = Vec::new();
        {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(group_id).filter(|g| g.state != State::Dead) else {
                return Err(GroupError::GroupIdNotFound);
            };
            let subscribed = match group.state {
                State::Empty => HashSet::new(),
                _ => match group.subscribed_topics() {
                    Some(topics) => topics,
                    None => return Err(GroupError::NonEmptyGroup),
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
            append_group::<H>(host, group_id, writes).await.map_err(|error| {
                warn!(group = group_id, message = %error.message, "deleting offsets failed");
                GroupError::Store(error)
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

    /// Drops the offsets of groups empty for longer than `offsets.retention.minutes`
    /// (standalone commits: offsets older than that), and groups left with nothing.
    pub async fn expire_offsets(&self, host: &Rc<H>) {
        let retention = i64::try_from(host.group_config().offsets_retention_ms).unwrap_or(i64::MAX);
        let wall = host.clock().wall_ms();
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
                if let Err(error) = append_group::<H>(host, &group_id, writes).await {
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
    pub fn load(&self, host: &H, partition: i32, records: Vec<Replayed>) {
        let now = host.clock().monotonic_ms();
        let wall = host.clock().wall_ms();
        let mut groups = self.groups.borrow_mut();
        let (mut offsets, mut metadata, mut skipped) = (0usize, 0usize, 0usize);
        for record in records {
            let (key, value, producer_id) = match record {
                Replayed::Record { key, value, producer_id } => (key, value, producer_id),
                Replayed::Marker { producer_id, commit } => {
                    let partitions = host.partition_count(OFFSETS_TOPIC).unwrap_or(1);
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
        let partitions = host.partition_count(OFFSETS_TOPIC).unwrap_or(1);
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
        info!(
            shard = host.shard_id(),
            partition, offsets, metadata, skipped, "consumer offsets loaded"
        );
    }
}
