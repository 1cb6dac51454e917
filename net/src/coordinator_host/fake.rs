//! An in-memory [`CoordinatorHost`] for the coordinators' unit tests: a `ManualClock`
//! that moves only when a test says so, a journal of what the coordinators wrote
//! (internal-partition appends and transaction markers, in order), and producer ids
//! counted up from [`FIRST_PRODUCER_ID`]. One shard owning every partition.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::{Clock, ManualClock};
use sluice_engine::timer::{TimerDriver, TimingWheel};

use super::{CoordinatorHost, Replayed, Write};
use crate::config::{GroupConfig, TxnConfig};
use crate::error::KafkaError;
use crate::group::OFFSETS_TOPIC;
use crate::txn::TXN_TOPIC;

/// Partitions of each internal topic: more than one, so that placement by id matters.
pub const INTERNAL_PARTITIONS: i32 = 4;
/// A user topic the tests commit offsets for and put in transactions.
pub const TOPIC: &str = "orders";
pub const TOPIC_PARTITIONS: i32 = 3;
pub const FIRST_PRODUCER_ID: i64 = 1_000;
/// The wall clock at the start of a test (2023-11-14).
pub const START_WALL_MS: i64 = 1_700_000_000_000;

/// One thing a coordinator wrote, in the order it wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Append { tp: TopicPartition, writes: Vec<Write>, txn: Option<(i64, i16)> },
    Markers { producer_id: i64, epoch: i16, commit: bool, partitions: Vec<TopicPartition> },
}

/// An append to one partition: (partition, records, transaction).
pub type Appended = (i32, Vec<Write>, Option<(i64, i16)>);

pub struct FakeHost {
    pub clock: ManualClock,
    pub groups: GroupConfig,
    pub txns: TxnConfig,
    pub topics: RefCell<HashMap<String, i32>>,
    pub stopping: Cell<bool>,
    pub journal: RefCell<Vec<Written>>,
    next_producer_id: Cell<i64>,
}

impl FakeHost {
    pub fn new(groups: GroupConfig, txns: TxnConfig) -> Rc<FakeHost> {
        let topics = HashMap::from([
            (OFFSETS_TOPIC.to_string(), INTERNAL_PARTITIONS),
            (TXN_TOPIC.to_string(), INTERNAL_PARTITIONS),
            (TOPIC.to_string(), TOPIC_PARTITIONS),
        ]);
        Rc::new(FakeHost {
            clock: ManualClock::new(START_WALL_MS),
            groups,
            txns,
            topics: RefCell::new(topics),
            stopping: Cell::new(false),
            journal: RefCell::new(Vec::new()),
            next_producer_id: Cell::new(FIRST_PRODUCER_ID),
        })
    }

    /// The appends to `topic` so far.
    pub fn appends(&self, topic: &str) -> Vec<Appended> {
        self.journal
            .borrow()
            .iter()
            .filter_map(|written| match written {
                Written::Append { tp, writes, txn } if tp.topic == topic => {
                    Some((tp.partition, writes.clone(), *txn))
                }
                _ => None,
            })
            .collect()
    }

    /// The markers written so far: (producer id, epoch, commit, partitions).
    pub fn markers(&self) -> Vec<(i64, i16, bool, Vec<TopicPartition>)> {
        self.journal
            .borrow()
            .iter()
            .filter_map(|written| match written {
                Written::Markers { producer_id, epoch, commit, partitions } => {
                    Some((*producer_id, *epoch, *commit, partitions.clone()))
                }
                Written::Append { .. } => None,
            })
            .collect()
    }

    /// What a restarted coordinator would replay from `tp`: its records, and the
    /// markers written to it, in order.
    pub fn replay(&self, tp: &TopicPartition) -> Vec<Replayed> {
        let mut replayed = Vec::new();
        for written in self.journal.borrow().iter() {
            match written {
                Written::Append { tp: to, writes, txn } if to == tp => {
                    replayed.extend(writes.iter().map(|(key, value)| Replayed::Record {
                        key: key.clone().into(),
                        value: value.clone().map(Into::into),
                        producer_id: txn.map(|(producer_id, _)| producer_id),
                    }));
                }
                Written::Markers { producer_id, commit, partitions, .. }
                    if partitions.contains(tp) =>
                {
                    replayed.push(Replayed::Marker { producer_id: *producer_id, commit: *commit });
                }
                _ => {}
            }
        }
        replayed
    }
}

impl CoordinatorHost for FakeHost {
    type Clock = ManualClock;

    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    fn shard_id(&self) -> usize {
        0
    }

    fn group_config(&self) -> &GroupConfig {
        &self.groups
    }

    fn txn_config(&self) -> &TxnConfig {
        &self.txns
    }

    fn partition_count(&self, topic: &str) -> Option<i32> {
        self.topics.borrow().get(topic).copied()
    }

    fn owns(&self, _tp: &TopicPartition) -> bool {
        true
    }

    fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    async fn append_internal(
        &self,
        tp: &TopicPartition,
        writes: Vec<Write>,
        txn: Option<(i64, i16)>,
    ) -> Result<(), KafkaError> {
        // The shard's append writes nothing for nothing.
        if !writes.is_empty() {
            self.journal.borrow_mut().push(Written::Append { tp: tp.clone(), writes, txn });
        }
        Ok(())
    }

    async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, KafkaError> {
        let id = self.next_producer_id.get();
        self.next_producer_id.set(id + 1);
        Ok(id)
    }

    async fn write_txn_markers(
        self: &Rc<Self>,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError> {
        self.journal.borrow_mut().push(Written::Markers {
            producer_id,
            epoch,
            commit,
            partitions: partitions.to_vec(),
        });
        Ok(())
    }
}

/// Moves `clock` by `ms` and fires every timer of `timers` due by then through `fire`, as
/// the timer driver does when it wakes. A timer re-armed in the past fires again at once;
/// a bug that keeps doing so would spin here forever, so it fails the test instead.
pub async fn advance<T: 'static, F, Fut>(
    clock: &ManualClock,
    timers: &TimerDriver<TimingWheel<T>, ManualClock>,
    ms: u64,
    mut fire: F,
) where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    clock.advance_ms(ms);
    for round in 0.. {
        let now = clock.monotonic_ms();
        assert!(round < 1_000, "timers keep firing at {now} ms");
        let mut expired = Vec::new();
        timers.with(|wheel| wheel.advance(now, &mut expired));
        if expired.is_empty() {
            break;
        }
        for (_, timer) in expired {
            fire(timer).await;
        }
    }
}
