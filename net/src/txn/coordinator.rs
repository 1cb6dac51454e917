//! The transaction coordinator of one host: the transactional ids whose
//! `__transaction_state` partition the host owns.
//!
//! Kafka's state machine (`TransactionCoordinator.scala`, `TransactionMetadata`):
//! Empty -> Ongoing (AddPartitionsToTxn / AddOffsetsToTxn) -> PrepareCommit or
//! PrepareAbort (EndTxn, a timeout, or a new producer fencing the old one) ->
//! CompleteCommit or CompleteAbort once every partition has its marker. Each change is
//! stored before it is acted on, so a restart finds a Prepare state and finishes it.
//!
//! One difference from Kafka: EndTxn answers after the markers are written and the
//! completed state stored (Kafka answers after PrepareCommit is stored and writes the
//! markers in the background, so a client may briefly see CONCURRENT_TRANSACTIONS).
//! An InitProducerId that finds an open transaction aborts it (fencing the old epoch)
//! and then answers with the new epoch, where Kafka answers CONCURRENT_TRANSACTIONS and
//! lets the client retry.
//!
//! Operations on one transactional id run one at a time (a FIFO lock per id); the state
//! sits in a `RefCell` never borrowed across an `await`. Transaction timeouts are
//! entries on a timing wheel driven by the host's clock, checked against the state when
//! they fire. The coordinator sees the broker only through [`CoordinatorHost`], so its
//! tests run it on a `ManualClock` with an in-memory host.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;
use sluice_engine::sync::FifoLock;
use sluice_engine::timer::{DriverOptions, TimerDriver, TimingWheel, WheelOptions};

use super::records::{self, TxnStatus, TxnValue};
use super::*;
use crate::coordinator_host::{CoordinatorHost, NotServing, Replayed};
use crate::error::{code, KafkaError};

/// How often writing the markers of a transaction is tried before giving up for now
/// (the transaction stays in its Prepare state, finished by the next attempt).
const MARKER_ATTEMPTS: u32 = 50;
const MARKER_RETRY: Duration = Duration::from_millis(100);

/// A transaction timeout entry: checked against the state when it fires.
#[derive(Debug, Clone)]
pub struct TxnTimer {
    pub id: String,
    pub producer_id: i64,
    pub epoch: i16,
}

/// The transaction timers, driven by the host's clock (a test's `ManualClock` moves them).
pub type TxnTimers<C> = TimerDriver<TimingWheel<TxnTimer>, C>;

/// Why a transaction operation failed; [`TxnError::code`] is what the client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error(transparent)]
    NotServing(#[from] NotServing),
    #[error("the transaction timeout is out of range")]
    InvalidTimeout,
    /// InitProducerId (KIP-360) named a producer id and epoch that are not current.
    #[error("the producer was fenced by a newer one")]
    ProducerFenced,
    /// The producer id is not the transactional id's.
    #[error("the producer id is not the transactional id's")]
    UnknownProducer,
    #[error("the producer epoch is not the current one")]
    StaleEpoch,
    /// Storing the transaction's state in `__transaction_state` failed.
    #[error("storing transaction state failed: {}", .0.message)]
    Store(KafkaError),
    /// The controller did not hand out a producer id.
    #[error("allocating a producer id failed: {}", .0.message)]
    ProducerId(KafkaError),
    /// The markers could not be written (the transaction stays prepared).
    #[error("writing transaction markers failed: {}", .0.message)]
    Markers(KafkaError),
}

impl TxnError {
    /// The error code the client gets.
    pub fn code(&self) -> i16 {
        match self {
            TxnError::NotServing(not_serving) => not_serving.code(),
            TxnError::InvalidTimeout => code::INVALID_TRANSACTION_TIMEOUT,
            TxnError::ProducerFenced => code::PRODUCER_FENCED,
            TxnError::UnknownProducer => code::INVALID_PRODUCER_ID_MAPPING,
            TxnError::StaleEpoch => code::INVALID_PRODUCER_EPOCH,
            // The partition moved or vanished under us: the client should find the
            // coordinator again.
            TxnError::Store(error) => match error.code {
                code::NOT_LEADER_OR_FOLLOWER | code::UNKNOWN_TOPIC_OR_PARTITION => {
                    code::COORDINATOR_NOT_AVAILABLE
                }
                other => other,
            },
            TxnError::ProducerId(error) => error.code,
            TxnError::Markers(_) => code::COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// The transaction coordinator of a host. Generic over its host (the host, or a test's
/// in-memory host): see [`crate::coordinator_host`].
pub struct TxnCoordinator<H: CoordinatorHost> {
    txns: RefCell<HashMap<String, TxnValue>>,
    locks: RefCell<HashMap<String, Rc<FifoLock>>>,
    /// `__transaction_state` partitions owned here whose records are loaded.
    loaded: RefCell<HashSet<i32>>,
    pub timers: TxnTimers<H::Clock>,
    host: PhantomData<fn(&H)>,
}

impl<H: CoordinatorHost> TxnCoordinator<H> {
    /// A coordinator whose timers run on `clock`: the host's clock.
    pub fn new(clock: H::Clock) -> Self {
        let wheel = TimingWheel::new(WheelOptions {
            start_ms: clock.monotonic_ms(),
            ..WheelOptions::default()
        });
        TxnCoordinator {
            txns: RefCell::new(HashMap::new()),
            locks: RefCell::new(HashMap::new()),
            loaded: RefCell::new(HashSet::new()),
            timers: TimerDriver::new(wheel, clock, DriverOptions::DEFAULT),
            host: PhantomData,
        }
    }

    pub fn mark_loaded(&self, partition: i32) {
        self.loaded.borrow_mut().insert(partition);
    }

    /// This broker no longer leads `partition` of `__transaction_state` (of
    /// `partitions`): its transactions are another coordinator's now.
    pub fn forget_partition(&self, partition: i32, partitions: i32) {
        self.loaded.borrow_mut().remove(&partition);
        self.txns.borrow_mut().retain(|id, _| super::txn_partition(id, partitions) != partition);
    }

    fn lock_of(&self, id: &str) -> Rc<FifoLock> {
        self.locks
            .borrow_mut()
            .entry(id.to_string())
            .or_insert_with(|| Rc::new(FifoLock::new()))
            .clone()
    }

    /// Why this host cannot serve transactional id `id` now, if it cannot.
    fn check_serving(&self, host: &H, id: &str) -> Result<(), NotServing> {
        if id.is_empty() {
            return Err(NotServing::InvalidId);
        }
        let Some(partitions) = host.partition_count(TXN_TOPIC) else {
            return Err(NotServing::Unavailable);
        };
        let partition = txn_partition(id, partitions);
        if !host.owns(&TopicPartition::new(TXN_TOPIC, partition)) {
            return Err(NotServing::NotCoordinator);
        }
        if !self.loaded.borrow().contains(&partition) {
            return Err(NotServing::LoadInProgress);
        }
        Ok(())
    }

    pub async fn call(&self, host: &Rc<H>, call: TxnCall) -> TxnAnswer {
        match call {
            TxnCall::InitProducerId { id, timeout_ms, expected } => {
                let answer = self.init(host, &id, timeout_ms, expected).await;
                TxnAnswer::ProducerId(answer.map_err(|error| error.code()))
            }
            TxnCall::AddPartitions { id, producer_id, epoch, partitions } => {
                TxnAnswer::AddPartitions(
                    self.add_partitions(host, &id, producer_id, epoch, &partitions).await,
                )
            }
            TxnCall::End { id, producer_id, epoch, commit } => {
                TxnAnswer::End(self.end(host, &id, producer_id, epoch, commit).await)
            }
            TxnCall::List { states, producer_ids } => {
                TxnAnswer::List(self.list(&states, &producer_ids))
            }
            TxnCall::Describe(ids) => {
                TxnAnswer::Describe(ids.iter().map(|id| self.describe(host, id)).collect())
            }
        }
    }

    /// Stores `value` as the state of `id` (a record in its `__transaction_state`
    /// partition), then makes it the state in memory.
    async fn store(&self, host: &H, id: &str, value: TxnValue) -> Result<(), TxnError> {
        let write = (records::encode_key(id), Some(records::encode_value(&value)));
        let partitions = host.partition_count(TXN_TOPIC).unwrap_or(1);
        let tp = TopicPartition::new(TXN_TOPIC, txn_partition(id, partitions));
        if let Err(error) = host.append_internal(&tp, vec![write], None).await {
            warn!(transactional_id = id, message = %error.message, "storing transaction state failed");
            return Err(TxnError::Store(error));
        }
        debug!(
            transactional_id = id,
            status = value.status.name(),
            epoch = value.producer_epoch,
            "transaction state stored"
        );
        self.txns.borrow_mut().insert(id.to_string(), value);
        Ok(())
    }

    fn schedule_timeout(&self, host: &H, id: &str, value: &TxnValue) {
        let wall = host.clock().wall_ms();
        let left = (value.start_ms + i64::from(value.timeout_ms) - wall).max(0) as u64;
        let deadline = host.clock().monotonic_ms() + left;
        let timer = TxnTimer {
            id: id.to_string(),
            producer_id: value.producer_id,
            epoch: value.producer_epoch,
        };
        if let Err(error) = self.timers.with(|wheel| wheel.add(deadline, timer)) {
            warn!(transactional_id = id, %error, "transaction timeout not scheduled");
        }
    }

    async fn init(
        &self,
        host: &Rc<H>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), TxnError> {
        self.check_serving(host, id)?;
        if timeout_ms <= 0 || i64::from(timeout_ms) > host.txn_config().max_timeout_ms {
            return Err(TxnError::InvalidTimeout);
        }
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let now = host.clock().wall_ms();
        let current = self.txns.borrow().get(id).cloned();
        let fresh = |producer_id: i64, producer_epoch: i16| TxnValue {
            producer_id,
            producer_epoch,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            last_update_ms: now,
            start_ms: -1,
        };
        let Some(mut current) = current.filter(|c| c.status != TxnStatus::Dead) else {
            let producer_id = host.allocate_producer_id().await.map_err(TxnError::ProducerId)?;
            self.store(host, id, fresh(producer_id, 0)).await?;
            info!(transactional_id = id, producer_id, "new transactional producer");
            return Ok((producer_id, 0));
        };
        if let Some((expected_id, expected_epoch)) = expected {
            if expected_id >= 0
                && (expected_id != current.producer_id || expected_epoch != current.producer_epoch)
            {
                return Err(TxnError::ProducerFenced);
            }
        }
        match current.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                // A restart left it half done: finish it first.
                let commit = current.status == TxnStatus::PrepareCommit;
                current = self.complete(host, id, current, commit).await?;
            }
            TxnStatus::Ongoing | TxnStatus::PrepareEpochFence => {
                // A new instance of the producer: fence the old one and abort its
                // transaction with the bumped epoch.
                let fenced = fence(current.clone());
                info!(
                    transactional_id = id,
                    epoch = fenced.producer_epoch,
                    "fencing the previous producer and aborting its transaction"
                );
                current = self.complete(host, id, fenced, false).await?;
            }
            _ => {}
        }
        let next = bump(current, host).await?;
        let value = fresh(next.producer_id, next.producer_epoch);
        self.store(host, id, value).await?;
        Ok((next.producer_id, next.producer_epoch))
    }

    async fn add_partitions(
        &self,
        host: &Rc<H>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TopicPartition],
    ) -> Vec<i16> {
        let all = |error| vec![error; partitions.len()];
        if let Err(error) = self.check_serving(host, id) {
            return all(error.code());
        }
        let unknown: Vec<bool> = partitions
            .iter()
            .map(|tp| {
                !host
                    .partition_count(&tp.topic)
                    .is_some_and(|count| tp.partition >= 0 && tp.partition < count)
            })
            .collect();
        if unknown.iter().any(|&u| u) {
            return unknown
                .iter()
                .map(|&u| {
                    if u {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code::OPERATION_NOT_ATTEMPTED
                    }
                })
                .collect();
        }
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let current = self.txns.borrow().get(id).cloned();
        let mut value = match check_producer(current, producer_id, epoch) {
            Ok(value) => value,
            Err(error) => return all(error.code()),
        };
        match value.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort | TxnStatus::PrepareEpochFence => {
                return all(code::CONCURRENT_TRANSACTIONS)
            }
            TxnStatus::Dead => return all(code::INVALID_PRODUCER_ID_MAPPING),
            _ => {}
        }
        let ongoing = value.status == TxnStatus::Ongoing;
        if ongoing && partitions.iter().all(|tp| value.partitions.contains(tp)) {
            return all(code::NONE);
        }
        let now = host.clock().wall_ms();
        if !ongoing {
            value.partitions.clear();
            value.start_ms = now;
            value.status = TxnStatus::Ongoing;
        }
        value.partitions.extend(partitions.iter().cloned());
        value.last_update_ms = now;
        if let Err(error) = self.store(host, id, value.clone()).await {
            return all(error.code());
        }
        if !ongoing {
            self.schedule_timeout(host, id, &value);
        }
        all(code::NONE)
    }

    async fn end(&self, host: &Rc<H>, id: &str, producer_id: i64, epoch: i16, commit: bool) -> i16 {
        if let Err(error) = self.check_serving(host, id) {
            return error.code();
        }
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let current = self.txns.borrow().get(id).cloned();
        let value = match check_producer(current, producer_id, epoch) {
            Ok(value) => value,
            Err(error) => return error.code(),
        };
        match (value.status, commit) {
            (TxnStatus::Ongoing, _) => match self.complete(host, id, value, commit).await {
                Ok(_) => code::NONE,
                Err(error) => error.code(),
            },
            // A retry of an EndTxn that completed.
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => code::NONE,
            (TxnStatus::PrepareCommit, _) | (TxnStatus::PrepareAbort, _) => {
                let was_commit = value.status == TxnStatus::PrepareCommit;
                if was_commit != commit {
                    return code::INVALID_TXN_STATE;
                }
                match self.complete(host, id, value, commit).await {
                    Ok(_) => code::NONE,
                    Err(error) => error.code(),
                }
            }
            _ => code::INVALID_TXN_STATE,
        }
    }

    /// Ends the transaction in `value`: stores the Prepare state, writes the markers, and
    /// stores the Complete state. Returns the completed state.
    async fn complete(
        &self,
        host: &Rc<H>,
        id: &str,
        mut value: TxnValue,
        commit: bool,
    ) -> Result<TxnValue, TxnError> {
        let now = host.clock().wall_ms();
        let prepare = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
        if value.status != prepare {
            value.status = prepare;
            value.last_update_ms = now;
            self.store(host, id, value.clone()).await?;
        }
        let partitions: Vec<TopicPartition> = value.partitions.iter().cloned().collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match host
                .write_txn_markers(value.producer_id, value.producer_epoch, commit, &partitions)
                .await
            {
                Ok(()) => break,
                Err(error) if attempt < MARKER_ATTEMPTS && !host.is_stopping() => {
                    debug!(transactional_id = id, message = %error.message, "writing markers failed; retrying");
                    glommio::timer::sleep(MARKER_RETRY).await;
                }
                Err(error) => {
                    error!(transactional_id = id, message = %error.message, "writing transaction markers failed; the transaction stays prepared");
                    return Err(TxnError::Markers(error));
                }
            }
        }
        value.status = if commit { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
        value.partitions.clear();
        value.last_update_ms = host.clock().wall_ms();
        self.store(host, id, value.clone()).await?;
        debug!(
            transactional_id = id,
            commit,
            partitions = partitions.len(),
            "transaction completed"
        );
        Ok(value)
    }

    /// A timeout entry fired: abort the transaction if it is still the one the entry was
    /// made for and its time is up, fencing the producer (epoch bump) like Kafka.
    pub async fn on_timer(&self, host: &Rc<H>, timer: TxnTimer) {
        let lock = self.lock_of(&timer.id);
        let _guard = lock.lock().await;
        let current = self.txns.borrow().get(&timer.id).cloned();
        let Some(value) = current else { return };
        if value.status != TxnStatus::Ongoing
            || value.producer_id != timer.producer_id
            || value.producer_epoch != timer.epoch
        {
            return;
        }
        let wall = host.clock().wall_ms();
        if wall < value.start_ms + i64::from(value.timeout_ms) {
            self.schedule_timeout(host, &timer.id, &value);
            return;
        }
        info!(transactional_id = %timer.id, producer_id = value.producer_id, timeout_ms = value.timeout_ms, "transaction timed out; aborting it");
        let fenced = fence(value);
        if let Err(error) = self.complete(host, &timer.id, fenced, false).await {
            warn!(transactional_id = %timer.id, %error, code = error.code(), "aborting a timed-out transaction failed");
        }
    }

    fn list(&self, states: &[String], producer_ids: &[i64]) -> Vec<TxnListing> {
        let mut out: Vec<TxnListing> = self
            .txns
            .borrow()
            .iter()
            .filter(|(_, v)| states.is_empty() || states.iter().any(|s| s == v.status.name()))
            .filter(|(_, v)| producer_ids.is_empty() || producer_ids.contains(&v.producer_id))
            .map(|(id, v)| TxnListing {
                id: id.clone(),
                producer_id: v.producer_id,
                state: v.status.name().to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn describe(&self, host: &H, id: &str) -> TxnDescription {
        let mut out = TxnDescription {
            id: id.to_string(),
            producer_id: -1,
            epoch: -1,
            start_ms: -1,
            ..Default::default()
        };
        if let Err(error) = self.check_serving(host, id) {
            out.error = error.code();
            return out;
        }
        match self.txns.borrow().get(id) {
            None => out.error = code::TRANSACTIONAL_ID_NOT_FOUND,
            Some(v) => {
                out.state = v.status.name().to_string();
                out.timeout_ms = v.timeout_ms;
                out.start_ms = v.start_ms;
                out.producer_id = v.producer_id;
                out.epoch = v.producer_epoch;
                out.partitions = v.partitions.iter().cloned().collect();
            }
        }
        out
    }

    /// Replays one `__transaction_state` partition's records and schedules the timeout
    /// of each open transaction. Returns the transactional ids a stop left half done (in
    /// a Prepare state): the caller runs [`finish_prepared`](Self::finish_prepared) on
    /// each, in the background, since that writes markers through other shards.
    #[must_use = "prepared transactions must be finished"]
    pub fn load(&self, host: &H, partition: i32, replayed: Vec<Replayed>) -> Vec<String> {
        let mut loaded: HashMap<String, TxnValue> = HashMap::new();
        let mut skipped = 0usize;
        for record in replayed {
            let Replayed::Record { key, value, .. } = record else { continue };
            let id = match records::decode_key(&key) {
                Ok(id) => id,
                Err(error) => {
                    skipped += 1;
                    debug!(partition, %error, "skipping a __transaction_state record");
                    continue;
                }
            };
            match value.map(|v| records::decode_value(&v)) {
                None => {
                    loaded.remove(&id);
                }
                Some(Ok(value)) => {
                    loaded.insert(id, value);
                }
                Some(Err(error)) => {
                    skipped += 1;
                    warn!(partition, transactional_id = %id, %error, "corrupt transaction record skipped");
                }
            }
        }
        let count = loaded.len();
        let mut unfinished = Vec::new();
        for (id, value) in &loaded {
            match value.status {
                TxnStatus::Ongoing => self.schedule_timeout(host, id, value),
                TxnStatus::PrepareCommit
                | TxnStatus::PrepareAbort
                | TxnStatus::PrepareEpochFence => unfinished.push(id.clone()),
                _ => {}
            }
        }
        self.txns.borrow_mut().extend(loaded);
        self.mark_loaded(partition);
        info!(
            shard = host.shard_id(),
            partition,
            transactions = count,
            skipped,
            unfinished = unfinished.len(),
            "transaction state loaded"
        );
        unfinished
    }

    /// Finishes a transaction that a stop left in a Prepare state: writes its markers and
    /// stores the completed state.
    pub async fn finish_prepared(&self, host: &Rc<H>, id: &str) {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Some(value) = self.txns.borrow().get(id).cloned() else { return };
        let commit = value.status == TxnStatus::PrepareCommit;
        if let Err(error) = self.complete(host, id, value, commit).await {
            warn!(transactional_id = %id, %error, code = error.code(), "finishing a prepared transaction failed");
        }
    }
}

/// The state after a producer check: the producer id must be the transaction's, and
/// the epoch its current one.
fn check_producer(
    current: Option<TxnValue>,
    producer_id: i64,
    epoch: i16,
) -> Result<TxnValue, TxnError> {
    let Some(value) = current else { return Err(TxnError::UnknownProducer) };
    if value.producer_id != producer_id {
        return Err(TxnError::UnknownProducer);
    }
    if value.producer_epoch != epoch {
        return Err(TxnError::StaleEpoch);
    }
    Ok(value)
}

/// The transaction with its producer's epoch bumped, so that the markers that abort it
/// fence the old producer (at the largest epoch it stays: the next InitProducerId moves
/// to a new producer id).
fn fence(mut value: TxnValue) -> TxnValue {
    value.producer_epoch = value.producer_epoch.saturating_add(1);
    value
}

/// The next epoch of a producer; past the largest epoch, a new producer id at epoch 0.
async fn bump<H: CoordinatorHost>(mut value: TxnValue, host: &Rc<H>) -> Result<TxnValue, TxnError> {
    if value.producer_epoch >= i16::MAX - 1 {
        value.producer_id = host.allocate_producer_id().await.map_err(TxnError::ProducerId)?;
        value.producer_epoch = 0;
    } else {
        value.producer_epoch += 1;
    }
    Ok(value)
}
