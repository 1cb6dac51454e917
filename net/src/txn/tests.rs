//! The transaction coordinator against an in-memory host: producer ids from a counter,
//! markers and state records kept in a journal, and time moved by hand through the
//! host's `ManualClock` (`Harness::advance` fires the timers that are due, the way the
//! shard's timer driver does).

#![allow(clippy::unwrap_used)]

use std::rc::Rc;

use sluice_engine::checkpoint::TopicPartition;

use super::coordinator::TxnCoordinator;
use super::records::{self, TxnStatus};
use super::*;
use crate::config::{GroupConfig, TxnConfig};
use crate::coordinator_host::fake::{
    self, FakeHost, FIRST_PRODUCER_ID, INTERNAL_PARTITIONS, TOPIC,
};
use crate::error::code;

const TIMEOUT_MS: i32 = 10_000;

struct Harness {
    host: Rc<FakeHost>,
    coordinator: TxnCoordinator<FakeHost>,
}

impl Harness {
    fn new() -> Harness {
        let host = FakeHost::new(GroupConfig::default(), TxnConfig::default());
        let coordinator = TxnCoordinator::new(host.clock.clone());
        for partition in 0..INTERNAL_PARTITIONS {
            coordinator.mark_loaded(partition);
        }
        Harness { host, coordinator }
    }

    async fn call(&self, call: TxnCall) -> TxnAnswer {
        self.coordinator.call(&self.host, call).await
    }

    async fn init(&self, id: &str) -> Result<(i64, i16), i16> {
        let call =
            TxnCall::InitProducerId { id: id.into(), timeout_ms: TIMEOUT_MS, expected: None };
        match self.call(call).await {
            TxnAnswer::ProducerId(answer) => answer,
            other => panic!("not an InitProducerId answer: {other:?}"),
        }
    }

    async fn add(
        &self,
        id: &str,
        (producer_id, epoch): (i64, i16),
        partitions: &[i32],
    ) -> Vec<i16> {
        let partitions = partitions.iter().map(|&p| TopicPartition::new(TOPIC, p)).collect();
        match self
            .call(TxnCall::AddPartitions { id: id.into(), producer_id, epoch, partitions })
            .await
        {
            TxnAnswer::AddPartitions(errors) => errors,
            other => panic!("not an AddPartitions answer: {other:?}"),
        }
    }

    async fn end(&self, id: &str, (producer_id, epoch): (i64, i16), commit: bool) -> i16 {
        match self.call(TxnCall::End { id: id.into(), producer_id, epoch, commit }).await {
            TxnAnswer::End(error) => error,
            other => panic!("not an EndTxn answer: {other:?}"),
        }
    }

    async fn describe(&self, id: &str) -> TxnDescription {
        match self.call(TxnCall::Describe(vec![id.into()])).await {
            TxnAnswer::Describe(mut found) => found.remove(0),
            other => panic!("not a describe answer: {other:?}"),
        }
    }

    /// Moves the clock by `ms` and runs every timer due by then, as the timer driver does.
    async fn advance(&self, ms: u64) {
        let fire = |timer| self.coordinator.on_timer(&self.host, timer);
        fake::advance(&self.host.clock, &self.coordinator.timers, ms, fire).await;
    }

    /// The statuses stored for `id` in `__transaction_state`, in order.
    fn stored_statuses(&self, id: &str) -> Vec<TxnStatus> {
        let partition = txn_partition(id, INTERNAL_PARTITIONS);
        let mut statuses = Vec::new();
        for (to, writes, _) in self.host.appends(TXN_TOPIC) {
            for (key, value) in writes {
                if to == partition && records::decode_key(&key).unwrap() == id {
                    statuses.push(records::decode_value(&value.unwrap()).unwrap().status);
                }
            }
        }
        statuses
    }
}

fn tps(partitions: &[i32]) -> Vec<TopicPartition> {
    partitions.iter().map(|&p| TopicPartition::new(TOPIC, p)).collect()
}

#[test]
fn a_committed_transaction_writes_commit_markers() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::new();
        let producer = harness.init("tx").await.unwrap();
        assert_eq!(producer, (FIRST_PRODUCER_ID, 0));
        assert_eq!(harness.add("tx", producer, &[0, 1]).await, [code::NONE, code::NONE]);
        assert_eq!(harness.describe("tx").await.state, "Ongoing");
        assert!(harness.host.markers().is_empty());

        assert_eq!(harness.end("tx", producer, true).await, code::NONE);
        assert_eq!(harness.host.markers(), [(FIRST_PRODUCER_ID, 0, true, tps(&[0, 1]))]);
        let description = harness.describe("tx").await;
        assert_eq!(description.state, "CompleteCommit");
        assert!(description.partitions.is_empty());
        assert_eq!(
            harness.stored_statuses("tx"),
            [
                TxnStatus::Empty,
                TxnStatus::Ongoing,
                TxnStatus::PrepareCommit,
                TxnStatus::CompleteCommit
            ]
        );
        // A retried EndTxn is answered the same; the other outcome is refused.
        assert_eq!(harness.end("tx", producer, true).await, code::NONE);
        assert_eq!(harness.end("tx", producer, false).await, code::INVALID_TXN_STATE);
        assert_eq!(harness.host.markers().len(), 1);
    });
}

#[test]
fn a_transaction_past_its_timeout_is_aborted() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::new();
        let producer = harness.init("tx").await.unwrap();
        harness.add("tx", producer, &[2]).await;
        harness.advance(TIMEOUT_MS as u64 - 1).await;
        assert_eq!(harness.describe("tx").await.state, "Ongoing");
        assert!(harness.host.markers().is_empty());

        harness.advance(1).await;
        // Aborted with the epoch bumped, which fences the producer.
        assert_eq!(harness.host.markers(), [(FIRST_PRODUCER_ID, 1, false, tps(&[2]))]);
        let description = harness.describe("tx").await;
        assert_eq!(description.state, "CompleteAbort");
        assert_eq!(description.epoch, 1);
        assert_eq!(harness.end("tx", producer, true).await, code::INVALID_PRODUCER_EPOCH);
        // The producer starts over with the next epoch.
        assert_eq!(harness.init("tx").await, Ok((FIRST_PRODUCER_ID, 2)));
    });
}

#[test]
fn a_new_producer_instance_aborts_the_open_transaction() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::new();
        let old = harness.init("tx").await.unwrap();
        harness.add("tx", old, &[0]).await;
        let new = harness.init("tx").await.unwrap();
        assert_eq!(new, (FIRST_PRODUCER_ID, 2));
        assert_eq!(harness.host.markers(), [(FIRST_PRODUCER_ID, 1, false, tps(&[0]))]);
        assert_eq!(harness.add("tx", old, &[1]).await, [code::INVALID_PRODUCER_EPOCH]);
        // The fenced transaction's timer finds nothing left to abort.
        harness.advance(TIMEOUT_MS as u64).await;
        assert_eq!(harness.host.markers().len(), 1);
        let expected = Some((FIRST_PRODUCER_ID, 0));
        let call = TxnCall::InitProducerId { id: "tx".into(), timeout_ms: TIMEOUT_MS, expected };
        let TxnAnswer::ProducerId(answer) = harness.call(call).await else { panic!() };
        assert_eq!(answer, Err(code::PRODUCER_FENCED));
    });
}

#[test]
fn requests_the_coordinator_cannot_take_are_refused_with_kafkas_codes() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::new();
        let call = TxnCall::InitProducerId { id: "tx".into(), timeout_ms: 0, expected: None };
        let TxnAnswer::ProducerId(answer) = harness.call(call).await else { panic!() };
        assert_eq!(answer, Err(code::INVALID_TRANSACTION_TIMEOUT));
        assert_eq!(harness.init("").await, Err(code::INVALID_REQUEST));
        let producer = harness.init("tx").await.unwrap();
        assert_eq!(
            harness.add("tx", producer, &[0, 99]).await,
            [code::OPERATION_NOT_ATTEMPTED, code::UNKNOWN_TOPIC_OR_PARTITION]
        );
        assert_eq!(
            harness.add("tx", (producer.0 + 1, 0), &[0]).await,
            [code::INVALID_PRODUCER_ID_MAPPING]
        );
        assert_eq!(harness.end("tx", producer, true).await, code::INVALID_TXN_STATE);

        let unloaded: TxnCoordinator<FakeHost> = TxnCoordinator::new(harness.host.clock.clone());
        let call =
            TxnCall::End { id: "tx".into(), producer_id: producer.0, epoch: 0, commit: true };
        let TxnAnswer::End(error) = unloaded.call(&harness.host, call).await else { panic!() };
        assert_eq!(error, code::COORDINATOR_LOAD_IN_PROGRESS);
    });
}

#[test]
fn a_prepared_transaction_found_at_load_is_finished() {
    sluice_engine::runtime::run_local(async {
        let harness = Harness::new();
        let producer = harness.init("tx").await.unwrap();
        harness.add("tx", producer, &[0]).await;
        // A stop between storing PrepareCommit and writing the markers: replay up to it.
        let partition = txn_partition("tx", INTERNAL_PARTITIONS);
        let mut replay = harness.host.replay(&TopicPartition::new(TXN_TOPIC, partition));
        let mut value = records::decode_value(&match &replay[replay.len() - 1] {
            crate::coordinator_host::Replayed::Record { value, .. } => value.clone().unwrap(),
            other => panic!("{other:?}"),
        })
        .unwrap();
        value.status = TxnStatus::PrepareCommit;
        replay.push(crate::coordinator_host::Replayed::Record {
            key: records::encode_key("tx").into(),
            value: Some(records::encode_value(&value).into()),
            producer_id: None,
        });
        let restarted: TxnCoordinator<FakeHost> = TxnCoordinator::new(harness.host.clock.clone());
        let unfinished = restarted.load(&harness.host, partition, replay);
        assert_eq!(unfinished, ["tx"]);
        restarted.finish_prepared(&harness.host, "tx").await;
        assert_eq!(harness.host.markers(), [(FIRST_PRODUCER_ID, 0, true, tps(&[0]))]);
        let TxnAnswer::Describe(found) =
            restarted.call(&harness.host, TxnCall::Describe(vec!["tx".into()])).await
        else {
            panic!()
        };
        assert_eq!(found[0].state, "CompleteCommit");
    });
}
