//! The group coordinator against an in-memory host: time moves only through the host's
//! `ManualClock`, and timers fire when a test advances it (`Harness::advance`), the way
//! the shard's timer driver fires them when the real clock gets there.

#![allow(clippy::unwrap_used)]

use std::rc::Rc;

use bytes::Bytes;
use glommio::Task;

use super::records::{self, OffsetsKey};
use super::*;
use crate::config::{GroupConfig, TxnConfig};
use crate::coordinator_host::fake::{self, FakeHost, INTERNAL_PARTITIONS, TOPIC};

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const DELAY_MS: u64 = 3_000;

struct Harness {
    host: Rc<FakeHost>,
    coordinator: Rc<Coordinator<FakeHost>>,
}

impl Harness {
    fn new(config: GroupConfig) -> Harness {
        let host = FakeHost::new(config, TxnConfig::default());
        let coordinator = Rc::new(Coordinator::new(host.clock.clone()));
        for partition in 0..INTERNAL_PARTITIONS {
            coordinator.mark_loaded(partition);
        }
        Harness { host, coordinator }
    }

    /// Kafka's defaults, with retention short enough to reach in a test.
    fn with_defaults() -> Harness {
        Harness::new(GroupConfig { offsets_retention_ms: 60_000, ..GroupConfig::default() })
    }

    async fn call(&self, call: GroupCall) -> GroupAnswer {
        self.coordinator.call(&self.host, call).await
    }

    /// Runs `call` in its own task: JoinGroup and SyncGroup park until the group moves.
    fn spawn(&self, call: GroupCall) -> Task<GroupAnswer> {
        let (host, coordinator) = (self.host.clone(), self.coordinator.clone());
        glommio::spawn_local(async move { coordinator.call(&host, call).await })
    }

    /// Moves the clock by `ms` and fires every timer due by then, as the timer driver
    /// does when it wakes; then lets parked requests see their answers.
    async fn advance(&self, ms: u64) {
        let fire = |timer| self.coordinator.on_timer(&self.host, timer);
        fake::advance(&self.host.clock, &self.coordinator.timers, ms, fire).await;
        settle().await;
    }

    async fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let args = HeartbeatArgs {
            group: group.to_string(),
            generation,
            member_id: member_id.to_string(),
            instance_id: None,
        };
        match self.call(GroupCall::Heartbeat(args)).await {
            GroupAnswer::Heartbeat(error) => error,
            other => panic!("not a heartbeat answer: {other:?}"),
        }
    }

    async fn describe(&self, group: &str) -> GroupDescription {
        match self.call(GroupCall::Describe(vec![group.to_string()])).await {
            GroupAnswer::Describe(mut groups) => groups.remove(0),
            other => panic!("not a describe answer: {other:?}"),
        }
    }

    async fn commit(&self, group: &str, offsets: &[(i32, i64)]) -> Vec<i16> {
        let args = CommitArgs {
            group: group.to_string(),
            generation: -1,
            member_id: String::new(),
            instance_id: None,
            partitions: offsets
                .iter()
                .map(|&(partition, offset)| CommitPart {
                    tp: TopicPartition::new(TOPIC, partition),
                    offset,
                    leader_epoch: -1,
                    metadata: Some(format!("at {offset}")),
                })
                .collect(),
            txn: None,
        };
        match self.call(GroupCall::Commit(args)).await {
            GroupAnswer::Commit(errors) => errors,
            other => panic!("not a commit answer: {other:?}"),
        }
    }

    /// Every committed offset of `group`: (partition of `TOPIC`, offset).
    async fn fetch_all(&self, group: &str) -> Vec<(i32, i64)> {
        let call = GroupCall::FetchOffsets {
            group: group.to_string(),
            partitions: None,
            require_stable: false,
        };
        match self.call(call).await {
            GroupAnswer::FetchOffsets(Ok(found)) => found
                .into_iter()
                .map(|(tp, committed)| (tp.partition, committed.unwrap().offset))
                .collect(),
            other => panic!("not a fetch answer: {other:?}"),
        }
    }

    /// Joins `group` as a new member with the one protocol "range".
    fn join(&self, group: &str, client: &str) -> Task<GroupAnswer> {
        self.spawn(GroupCall::Join(join_args(group, "", client)))
    }
}

fn join_args(group: &str, member_id: &str, client: &str) -> JoinArgs {
    JoinArgs {
        group: group.to_string(),
        member_id: member_id.to_string(),
        instance_id: None,
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".to_string(),
        protocols: vec![("range".to_string(), Bytes::from(format!("subscription of {client}")))],
        client: Client { id: client.to_string(), host: "/127.0.0.1".to_string() },
        require_known_member_id: false,
    }
}

/// Lets spawned tasks run until they park again (no real time passes).
async fn settle() {
    for _ in 0..10 {
        futures_lite::future::yield_now().await;
    }
}

async fn joined(task: Task<GroupAnswer>) -> JoinOutcome {
    match task.await {
        GroupAnswer::Join(outcome) => outcome,
        other => panic!("not a join answer: {other:?}"),
    }
}

async fn synced(task: Task<GroupAnswer>) -> SyncOutcome {
    match task.await {
        GroupAnswer::Sync(outcome) => outcome,
        other => panic!("not a sync answer: {other:?}"),
    }
}

fn sync_args(
    group: &str,
    generation: i32,
    member_id: &str,
    assignments: &[(&str, &str)],
) -> SyncArgs {
    SyncArgs {
        group: group.to_string(),
        generation,
        member_id: member_id.to_string(),
        instance_id: None,
        protocol_type: Some("consumer".to_string()),
        protocol: Some("range".to_string()),
        assignments: assignments
            .iter()
            .map(|(member, assignment)| (member.to_string(), Bytes::from(assignment.to_string())))
            .collect(),
    }
}

/// Two members join within the initial delay, sync, and are stable: (leader, follower,
/// generation). The second member's arrival extends the delay by one more step.
async fn stable_pair(harness: &Harness, group: &str) -> (String, String, i32) {
    let first = harness.join(group, "client-a");
    settle().await;
    let second = harness.join(group, "client-b");
    harness.advance(DELAY_MS).await;
    harness.advance(DELAY_MS).await;
    let (first, second) = (joined(first).await, joined(second).await);
    assert_eq!((first.error, second.error), (code::NONE, code::NONE));
    assert_eq!(first.generation, second.generation);
    assert_eq!(first.leader, first.member_id, "the first member leads");
    assert_eq!(first.members.len(), 2, "the leader sees every member");
    assert!(second.members.is_empty(), "a follower sees none");
    let generation = first.generation;
    let (leader, follower) = (first.member_id, second.member_id);

    let follower_sync =
        harness.spawn(GroupCall::Sync(sync_args(group, generation, &follower, &[])));
    settle().await;
    let assignments = [(leader.as_str(), "partition 0"), (follower.as_str(), "partition 1")];
    let leader_sync =
        harness.spawn(GroupCall::Sync(sync_args(group, generation, &leader, &assignments)));
    let (leader_sync, follower_sync) = (synced(leader_sync).await, synced(follower_sync).await);
    assert_eq!(leader_sync.error, code::NONE);
    assert_eq!(leader_sync.assignment, Bytes::from("partition 0"));
    assert_eq!(follower_sync.error, code::NONE);
    assert_eq!(follower_sync.assignment, Bytes::from("partition 1"));
    (leader, follower, generation)
}

#[test]
fn two_members_join_sync_then_heartbeat() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::with_defaults();
        let (leader, follower, generation) = stable_pair(&harness, "g").await;
        assert_eq!(generation, 1);
        let description = harness.describe("g").await;
        assert_eq!(description.state, "Stable");
        assert_eq!(description.protocol, "range");
        assert_eq!(description.members.len(), 2);
        assert_eq!(harness.heartbeat("g", generation, &leader).await, code::NONE);
        assert_eq!(harness.heartbeat("g", generation, &follower).await, code::NONE);
        assert_eq!(harness.heartbeat("g", generation + 1, &leader).await, code::ILLEGAL_GENERATION);
        assert_eq!(harness.heartbeat("g", generation, "stranger").await, code::UNKNOWN_MEMBER_ID);
        // The assignment is stored in the group's partition, as Kafka's group record.
        let partition = offsets_partition("g", INTERNAL_PARTITIONS);
        let stored = harness.host.appends(OFFSETS_TOPIC);
        let (to, writes, _) = stored.last().unwrap();
        assert_eq!(*to, partition);
        assert_eq!(
            records::decode_key(&writes[0].0).unwrap(),
            OffsetsKey::Group { group: "g".into() }
        );
        let value = records::decode_group_value(writes[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(value.generation, generation);
        assert_eq!(value.members.len(), 2);
    });
}

#[test]
fn a_silent_member_times_out_and_the_group_rebalances() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::with_defaults();
        let (leader, follower, generation) = stable_pair(&harness, "g").await;
        // Halfway through the session only the leader is heard from.
        harness.advance(SESSION_MS as u64 / 2).await;
        assert_eq!(harness.heartbeat("g", generation, &leader).await, code::NONE);
        assert_eq!(harness.describe("g").await.members.len(), 2);
        // Past the follower's session, within the leader's.
        harness.advance(SESSION_MS as u64 / 2 + 1).await;
        let description = harness.describe("g").await;
        assert_eq!(description.state, "PreparingRebalance");
        let members: Vec<&str> = description.members.iter().map(|m| m.member_id.as_str()).collect();
        assert_eq!(members, [leader.as_str()]);
        assert_eq!(harness.heartbeat("g", generation, &leader).await, code::REBALANCE_IN_PROGRESS);
        assert_eq!(harness.heartbeat("g", generation, &follower).await, code::UNKNOWN_MEMBER_ID);
        // The leader rejoins: it is everyone, so the next generation starts at once.
        let rejoined =
            joined(harness.spawn(GroupCall::Join(join_args("g", &leader, "client-a")))).await;
        assert_eq!(rejoined.error, code::NONE);
        assert_eq!(rejoined.generation, generation + 1);
        assert_eq!(rejoined.members.len(), 1);
    });
}

#[test]
fn the_initial_rebalance_waits_for_more_members() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::with_defaults();
        let first = harness.join("g", "client-a");
        harness.advance(DELAY_MS - 1_000).await;
        let second = harness.join("g", "client-b");
        settle().await;
        // The delay ends with a new member since it started: it runs once more.
        harness.advance(1_000).await;
        assert_eq!(harness.describe("g").await.state, "PreparingRebalance");
        harness.advance(DELAY_MS - 1).await;
        assert_eq!(harness.describe("g").await.state, "PreparingRebalance");
        harness.advance(1).await;
        assert_eq!(harness.describe("g").await.state, "CompletingRebalance");
        let (first, second) = (joined(first).await, joined(second).await);
        assert_eq!(first.generation, 1);
        assert_eq!(second.generation, 1);
        assert_eq!(first.members.len(), 2);
    });
}

#[test]
fn without_an_initial_delay_the_first_member_is_answered_at_once() {
    sluice_engine::runtime::run_local(async {
        let harness =
            Harness::new(GroupConfig { initial_rebalance_delay_ms: 0, ..Default::default() });
        let first = joined(harness.join("g", "client-a")).await;
        assert_eq!(first.error, code::NONE);
        assert_eq!(first.generation, 1);
        assert_eq!(harness.describe("g").await.state, "CompletingRebalance");
    });
}

#[test]
fn committed_offsets_are_fetched_and_stored() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::with_defaults();
        assert_eq!(harness.commit("g", &[(0, 42), (1, 7)]).await, [code::NONE, code::NONE]);
        assert_eq!(
            harness.commit("g", &[(2, 1), (TOPIC_PARTITIONS_OUT_OF_RANGE, 1)]).await,
            [code::NONE, code::UNKNOWN_TOPIC_OR_PARTITION]
        );
        assert_eq!(harness.fetch_all("g").await, [(0, 42), (1, 7), (2, 1)]);
        let call = GroupCall::FetchOffsets {
            group: "g".into(),
            partitions: Some(vec![TopicPartition::new(TOPIC, 1), TopicPartition::new(TOPIC, 9)]),
            require_stable: true,
        };
        let GroupAnswer::FetchOffsets(Ok(found)) = harness.call(call).await else { panic!() };
        assert_eq!(found[0].1.as_ref().unwrap().offset, 7);
        assert_eq!(found[0].1.as_ref().unwrap().metadata, "at 7");
        assert_eq!(found[1].1.as_ref().unwrap(), &Committed::NONE);
        assert_eq!(harness.fetch_all("other").await, []);
        // Stored in the group's partition: a restarted coordinator replays them.
        let partition = offsets_partition("g", INTERNAL_PARTITIONS);
        let replay = harness.host.replay(&TopicPartition::new(OFFSETS_TOPIC, partition));
        let restarted = Harness {
            host: harness.host.clone(),
            coordinator: Rc::new(Coordinator::new(harness.host.clock.clone())),
        };
        restarted.coordinator.load(&harness.host, partition, replay);
        assert_eq!(restarted.fetch_all("g").await, [(0, 42), (1, 7), (2, 1)]);
    });
}

/// A partition `TOPIC` does not have.
const TOPIC_PARTITIONS_OUT_OF_RANGE: i32 = crate::coordinator_host::fake::TOPIC_PARTITIONS;

#[test]
fn offsets_expire_after_the_retention() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::with_defaults();
        let retention = harness.host.groups.offsets_retention_ms;
        harness.commit("standalone", &[(0, 5)]).await;
        harness.advance(retention / 2).await;
        harness.commit("standalone", &[(1, 6)]).await;
        harness.coordinator.expire_offsets(&harness.host).await;
        assert_eq!(harness.fetch_all("standalone").await, [(0, 5), (1, 6)]);

        harness.advance(retention / 2).await;
        harness.coordinator.expire_offsets(&harness.host).await;
        assert_eq!(harness.fetch_all("standalone").await, [(1, 6)], "the older commit expired");
        let (_, tombstones, _) = harness.host.appends(OFFSETS_TOPIC).last().cloned().unwrap();
        assert_eq!(tombstones.len(), 1);
        assert_eq!(tombstones[0].1, None);

        harness.advance(retention / 2).await;
        harness.coordinator.expire_offsets(&harness.host).await;
        assert_eq!(harness.fetch_all("standalone").await, []);
        let GroupAnswer::List(groups) = harness.call(GroupCall::List { states: vec![] }).await
        else {
            panic!()
        };
        assert!(groups.is_empty(), "a group left with nothing is gone: {groups:?}");
    });
}

#[test]
fn a_group_not_loaded_yet_answers_load_in_progress() {
    sluice_engine::runtime::run_local(async {
        let host = FakeHost::new(GroupConfig::default(), TxnConfig::default());
        let harness = Harness { coordinator: Rc::new(Coordinator::new(host.clock.clone())), host };
        assert_eq!(harness.heartbeat("g", 1, "m").await, code::COORDINATOR_LOAD_IN_PROGRESS);
        let call =
            GroupCall::FetchOffsets { group: "g".into(), partitions: None, require_stable: false };
        let GroupAnswer::FetchOffsets(answer) = harness.call(call).await else { panic!() };
        assert_eq!(answer.unwrap_err(), code::COORDINATOR_LOAD_IN_PROGRESS);
    });
}
