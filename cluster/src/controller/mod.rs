//! The active controller's decisions: requests from brokers (registrations, heartbeats,
//! intents to create, delete, grow, configure, elect and reassign) and the passage of time
//! turned into batches of metadata records, against the committed image. Pure: no I/O, no
//! clock of its own; the quorum thread ([`runtime`]) stores each batch through Raft before
//! the next decision is taken, so every decision sees every earlier one.

pub mod node;
pub mod rpc;
pub mod runtime;
#[cfg(test)]
mod sim;

use sluice_engine::metadata::{
    BrokerEndpoint, MetadataImage, MetadataRecord, PartitionChangeRecord, PartitionRecord,
    TopicMetadata, NO_LEADER,
};
use tracing::{info, warn};

use crate::election::{self, PartitionChange, PartitionState};
use crate::liveness::{Heartbeat, Liveness, Registered, Transition};
use crate::placement::{self, BrokerSets, PlacementError, StripeStart};
use crate::reassignment;
use crate::rng::SplitMix64;
use crate::BrokerId;
use rpc::{code, Intent, NewTopic, Outcome};

/// The internal topics whose replication factor has its own property.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// What an internal topic gets when its replication factor is not set: min(3, brokers).
pub const INTERNAL_REPLICATION_FACTOR_MAX: i16 = 3;

/// The broker properties the controller decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub session_timeout_ms: u64,
    pub unclean_leader_election: bool,
    /// `num.partitions`: a CreateTopics with -1 partitions.
    pub num_partitions: i32,
    /// `default.replication.factor`: a CreateTopics with -1.
    pub default_replication_factor: i16,
    pub offsets_topic_replication_factor: Option<i16>,
    pub transaction_state_log_replication_factor: Option<i16>,
    /// `leader.imbalance.per.broker.percentage`.
    pub leader_imbalance_percentage: u32,
    /// The broker in this controller's own process (a combined node): a registration of
    /// it with a new incarnation is this process restarted, so it replaces the previous
    /// one at once instead of waiting for that session to time out.
    pub local_broker: Option<BrokerId>,
}

#[cfg(test)]
impl Settings {
    /// Kafka's defaults with `session_timeout_ms`, one partition and one replica a topic.
    pub(crate) fn for_tests(session_timeout_ms: u64) -> Self {
        Settings {
            session_timeout_ms,
            unclean_leader_election: false,
            num_partitions: 1,
            default_replication_factor: 1,
            offsets_topic_replication_factor: None,
            transaction_state_log_replication_factor: None,
            leader_imbalance_percentage: 10,
            local_broker: None,
        }
    }
}

/// A batch of records to store, and what to answer once it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub records: Vec<MetadataRecord>,
    pub answer: T,
}

/// See the module documentation. One per active term: [`Controller::new`] rebuilds the
/// brokers' sessions from the image when this node becomes the active controller.
#[derive(Debug)]
pub struct Controller {
    settings: Settings,
    liveness: Liveness,
    /// The placement's random start (Kafka's `assignReplicasToBrokers` picks it at
    /// random); a seed makes a simulation replay exactly.
    rng: SplitMix64,
}

/// Why a broker leaves the ISRs it is in.
#[derive(Debug, Clone, Copy)]
enum Handler {
    Fenced,
    ControlledShutdown,
}

/// A partition's state as the election functions take it.
pub fn partition_state(record: &PartitionRecord) -> PartitionState {
    PartitionState {
        replicas: record.replicas.clone(),
        isr: record.isr.clone(),
        leader: record.leader,
        leader_epoch: record.leader_epoch,
        partition_epoch: record.partition_epoch,
        adding_replicas: record.adding.clone(),
        removing_replicas: record.removing.clone(),
    }
}

/// The record of a decided change to a partition.
pub fn change_record(
    topic_id: [u8; 16],
    partition: i32,
    change: &PartitionChange,
) -> MetadataRecord {
    MetadataRecord::PartitionChange(PartitionChangeRecord {
        topic_id,
        partition,
        leader: change.leader,
        isr: change.isr.clone(),
        replicas: change.replicas.clone(),
        adding: change.adding_replicas.clone(),
        removing: change.removing_replicas.clone(),
    })
}

/// The record of a new partition.
fn new_partition(topic_id: [u8; 16], partition: i32, state: &PartitionState) -> MetadataRecord {
    MetadataRecord::Partition(PartitionRecord {
        topic_id,
        partition,
        replicas: state.replicas.clone(),
        isr: state.isr.clone(),
        leader: state.leader,
        leader_epoch: state.leader_epoch,
        partition_epoch: state.partition_epoch,
        adding: state.adding_replicas.clone(),
        removing: state.removing_replicas.clone(),
    })
}

/// The records that turn a one-node broker's metadata (topics without placements) into a
/// cluster's: everything the image holds, and every partition placed on `node` alone,
/// leading it at epoch 0 — what the single node always was.
pub fn adopt_single_node(image: &MetadataImage, node: BrokerId) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for record in image.snapshot_records() {
        let topic = match &record {
            MetadataRecord::CreateTopic { name, .. } => image.topic(name),
            _ => None,
        };
        records.push(record);
        let Some(topic) = topic else { continue };
        for partition in 0..topic.partitions {
            if topic.placement(partition).is_some() {
                continue;
            }
            records.push(MetadataRecord::Partition(PartitionRecord::new(
                topic.topic_id,
                partition,
                vec![node],
            )));
        }
    }
    records
}

fn placement_code(error: &PlacementError) -> i16 {
    match error {
        PlacementError::PartitionCountNotPositive { .. }
        | PlacementError::PartitionCountUnchanged { .. }
        | PlacementError::PartitionCountDecrease { .. }
        | PlacementError::NoExistingPartitions
        | PlacementError::AssignmentCountMismatch { .. } => code::INVALID_PARTITIONS,
        PlacementError::ReplicationFactorNotPositive { .. }
        | PlacementError::TooFewBrokers { .. } => code::INVALID_REPLICATION_FACTOR,
        PlacementError::EmptyReplicaList
        | PlacementError::UnknownBroker { .. }
        | PlacementError::DuplicateBroker { .. }
        | PlacementError::InconsistentReplicationFactor { .. }
        | PlacementError::MultipleAssignments { .. }
        | PlacementError::NonConsecutivePartitions
        | PlacementError::NoUsableReplica { .. } => code::INVALID_REPLICA_ASSIGNMENT,
    }
}

impl Controller {
    /// The controller of a new active term: every registered broker's session starts
    /// `now_ms` (Kafka's new active controller does the same, so no broker is fenced for
    /// heartbeats the previous controller received).
    pub fn new(settings: Settings, image: &MetadataImage, now_ms: u64, seed: u64) -> Self {
        let mut liveness = Liveness::new(settings.session_timeout_ms);
        for broker in image.brokers() {
            liveness.restore(
                broker.id,
                broker.incarnation_id,
                broker.epoch,
                broker.fenced,
                broker.shutting_down,
                now_ms,
            );
        }
        Controller { settings, liveness, rng: SplitMix64::new(seed) }
    }

    fn usable(&self) -> impl Fn(BrokerId) -> bool + '_ {
        |broker| self.liveness.is_usable(broker)
    }

    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// BrokerRegistration. The broker epoch is the offset its record takes (as Kafka's
    /// is); a retry of the same incarnation keeps it. A restarted broker whose previous
    /// incarnation was still in ISRs is fenced out of them first.
    pub fn register(
        &mut self,
        image: &MetadataImage,
        broker: BrokerId,
        incarnation_id: [u8; 16],
        endpoints: Vec<BrokerEndpoint>,
        rack: Option<String>,
        now_ms: u64,
    ) -> Result<Decision<i64>, Outcome> {
        if broker < 0 {
            return Err(Outcome::error(code::INVALID_REQUEST, format!("broker id {broker}")));
        }
        let mut records = Vec::new();
        let mut scratch = image.clone();
        let replaced =
            self.liveness.registration(broker).is_some_and(|r| r.incarnation_id != incarnation_id);
        if replaced && self.settings.local_broker == Some(broker) {
            self.liveness.fence(broker);
        }
        // A replaced incarnation that was not fenced leaves the ISRs it shares with others
        // first (it may have lost what it had not flushed); where it is the only one in
        // sync there is no better replica, and it leads again as soon as it is unfenced.
        // The records go before the registration, so the epoch is the record's offset
        // after them.
        if replaced && image.broker(broker).is_some_and(|b| !b.fenced) {
            records.extend(self.restart_records(&scratch, broker));
            for record in &records {
                scratch
                    .apply(record)
                    .map_err(|e| Outcome::error(code::UNKNOWN_SERVER_ERROR, e.to_string()))?;
            }
        }
        let epoch = scratch.next_offset();
        match self.liveness.register(broker, incarnation_id, epoch, now_ms) {
            Ok(Registered::Retry { broker_epoch }) => {
                Ok(Decision { records: Vec::new(), answer: broker_epoch })
            }
            Ok(Registered::New { .. } | Registered::Replaced { .. }) => {
                records.push(MetadataRecord::RegisterBroker {
                    id: broker,
                    epoch,
                    incarnation_id,
                    endpoints,
                    rack,
                });
                info!(broker, epoch, "broker registered");
                Ok(Decision { records, answer: epoch })
            }
            Err(error) => {
                let code = match error {
                    crate::liveness::LivenessError::DuplicateBrokerRegistration { .. } => {
                        code::DUPLICATE_BROKER_REGISTRATION
                    }
                    _ => code::STALE_BROKER_EPOCH,
                };
                Err(Outcome::error(code, error.to_string()))
            }
        }
    }

    /// The records that fence `broker`: its registration change, and every partition whose
    /// ISR holds it loses it (a new leader where it led).
    fn fence_records(&self, image: &MetadataImage, broker: BrokerId) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if let Some(b) = image.broker(broker) {
            if !b.fenced {
                records.push(MetadataRecord::ChangeBroker {
                    id: broker,
                    epoch: b.epoch,
                    fenced: true,
                    shutting_down: false,
                });
            }
        }
        records.extend(self.leave_isrs(image, broker, 1, Handler::Fenced));
        records
    }

    /// The changes that take `broker` out of the ISRs of `isr_min` or more members, each
    /// decided by `handler` (fencing or controlled shutdown: KRaft treats both alike), a
    /// new leader elected where it led.
    fn leave_isrs(
        &self,
        image: &MetadataImage,
        broker: BrokerId,
        isr_min: usize,
        handler: Handler,
    ) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        let usable = |id: BrokerId| id != broker && self.liveness.is_usable(id);
        for_each_partition(image, |topic, partition, record| {
            if !record.isr.contains(&broker) || record.isr.len() < isr_min {
                return;
            }
            let state = partition_state(record);
            let usable: &dyn Fn(BrokerId) -> bool = &usable;
            let change = match handler {
                Handler::Fenced => {
                    election::handle_broker_fenced(&state, broker, usable, self.unclean(topic))
                }
                Handler::ControlledShutdown => election::handle_broker_controlled_shutdown(
                    &state,
                    broker,
                    usable,
                    self.unclean(topic),
                ),
            };
            if let Some(change) = change {
                records.push(change_record(topic.topic_id, partition, &change));
            }
        });
        records
    }

    /// The records that take a restarted broker's previous incarnation out of the ISRs it
    /// shares with other replicas.
    fn restart_records(&self, image: &MetadataImage, broker: BrokerId) -> Vec<MetadataRecord> {
        self.leave_isrs(image, broker, 2, Handler::Fenced)
    }

    fn unclean(&self, topic: &TopicMetadata) -> bool {
        match topic.configs.get("unclean.leader.election.enable").map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            _ => self.settings.unclean_leader_election,
        }
    }

    /// BrokerHeartbeat: the answer (fenced, may shut down) and the records of the
    /// transition it caused, if any.
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        broker: BrokerId,
        epoch: i64,
        metadata_offset: i64,
        want_shutdown: bool,
        now_ms: u64,
    ) -> Result<Decision<(bool, bool)>, Outcome> {
        let leads = image_leads(image, broker);
        let heartbeat = Heartbeat {
            broker,
            broker_epoch: epoch,
            now_ms,
            wants_fence: false,
            wants_shutdown: want_shutdown,
            caught_up: metadata_offset >= epoch,
        };
        let reply = self
            .liveness
            .heartbeat(heartbeat, leads)
            .map_err(|e| Outcome::error(code::STALE_BROKER_EPOCH, e.to_string()))?;
        let mut records = Vec::new();
        match reply.transition {
            None => {}
            Some(Transition::Unfence) => {
                records.push(MetadataRecord::ChangeBroker {
                    id: broker,
                    epoch,
                    fenced: false,
                    shutting_down: false,
                });
                let usable = |id: BrokerId| id == broker || self.liveness.is_usable(id);
                for_each_partition(image, |topic, partition, record| {
                    if record.leader != NO_LEADER || !record.replicas.contains(&broker) {
                        return;
                    }
                    let state = partition_state(record);
                    let unclean = self.unclean(topic);
                    if let Some(change) =
                        election::handle_broker_unfenced(&state, broker, usable, unclean)
                    {
                        records.push(change_record(topic.topic_id, partition, &change));
                    }
                });
                info!(broker, "broker unfenced");
            }
            Some(Transition::EnterControlledShutdown) => {
                records.push(MetadataRecord::ChangeBroker {
                    id: broker,
                    epoch,
                    fenced: false,
                    shutting_down: true,
                });
                records.extend(self.leave_isrs(image, broker, 1, Handler::ControlledShutdown));
                info!(broker, "broker in controlled shutdown");
            }
            Some(Transition::Fence | Transition::ShutdownNow) => {
                records = self.fence_records(image, broker);
                info!(broker, "broker fenced at its request");
            }
        }
        Ok(Decision { records, answer: (reply.is_fenced, reply.should_shut_down) })
    }

    /// The passage of time: fences the first broker whose session expired (one per pass,
    /// as Kafka, so that each fencing's elections see the previous one's).
    pub fn tick(&mut self, image: &MetadataImage, now_ms: u64) -> Vec<MetadataRecord> {
        // A restarted broker keeps leading the partitions whose only in-sync replica it is
        // while it registers, fenced until its heartbeats show it caught up; if it goes
        // silent for a session before that, those partitions lose it as a leader as any
        // fenced broker's would (otherwise nothing would ever move them).
        let session_ms = self.settings.session_timeout_ms;
        let silent_leader = image.brokers().filter(|b| b.fenced).map(|b| b.id).find(|&id| {
            image_leads(image, id)
                && self
                    .liveness
                    .registration(id)
                    .map_or(true, |r| r.heartbeat_last_ms.saturating_add(session_ms) < now_ms)
        });
        if let Some(broker) = silent_leader {
            warn!(
                broker,
                "a fenced broker still leading went silent: its partitions lose it as leader"
            );
            return self.leave_isrs(image, broker, 1, Handler::Fenced);
        }
        let Some(&broker) = self.liveness.expired(now_ms).first() else { return Vec::new() };
        warn!(
            broker,
            session_timeout_ms = self.settings.session_timeout_ms,
            "broker session expired: fencing it"
        );
        let records = self.fence_records(image, broker);
        self.liveness.fence(broker);
        records
    }

    /// `auto.leader.rebalance.enable`: preferred leaders back where they are usable, for
    /// brokers above the imbalance percentage.
    pub fn rebalance(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut keyed = Vec::new();
        for_each_partition(image, |topic, partition, record| {
            keyed.push(((topic.topic_id, partition), partition_state(record)));
        });
        let imbalance = election::leader_imbalance(
            keyed.iter().map(|(key, state)| (*key, state)),
            self.settings.leader_imbalance_percentage,
            self.usable(),
        );
        let mut records = Vec::new();
        for (topic_id, partition) in imbalance.partitions_to_move {
            let Some((_, state)) = keyed.iter().find(|(key, _)| *key == (topic_id, partition))
            else {
                continue;
            };
            if let Ok(change) = election::elect_preferred(state, self.usable()) {
                records.push(change_record(topic_id, partition, &change));
            }
        }
        records
    }

    /// Checks the intents one after another, each against the image as the earlier ones
    /// leave it; the records of those that pass are the batch (none when
    /// `validate_only`).
    pub fn write(
        &mut self,
        image: &MetadataImage,
        intents: &[Intent],
        validate_only: bool,
    ) -> Decision<Vec<Outcome>> {
        let mut scratch = image.clone();
        let mut records = Vec::new();
        let mut outcomes = Vec::new();
        for intent in intents {
            let (outcome, batch) = match self.intent(&scratch, intent) {
                Ok((outcome, batch)) => (outcome, batch),
                Err(outcome) => (outcome, Vec::new()),
            };
            let mut applied = scratch.clone();
            let stored = batch.iter().try_for_each(|record| applied.apply(record));
            match stored {
                Ok(()) => {
                    scratch = applied;
                    if !validate_only {
                        records.extend(batch);
                    }
                    outcomes.push(outcome);
                }
                Err(error) => {
                    outcomes.push(Outcome::error(code::UNKNOWN_SERVER_ERROR, error.to_string()))
                }
            }
        }
        Decision { records, answer: outcomes }
    }

    fn intent(
        &mut self,
        image: &MetadataImage,
        intent: &Intent,
    ) -> Result<(Outcome, Vec<MetadataRecord>), Outcome> {
        match intent {
            Intent::CreateTopic(topic) => self.create_topic(image, topic),
            Intent::DeleteTopic { name } => {
                if image.topic(name).is_none() {
                    return Err(Outcome::error(
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic {name} does not exist"),
                    ));
                }
                Ok((Outcome::ok(), vec![MetadataRecord::DeleteTopic { name: name.clone() }]))
            }
            Intent::CreatePartitions { name, partitions, assignments } => {
                self.create_partitions(image, name, *partitions, assignments)
            }
            Intent::SetTopicConfigs { name, configs } => {
                if image.topic(name).is_none() {
                    return Err(Outcome::error(
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic {name} does not exist"),
                    ));
                }
                let record = MetadataRecord::SetTopicConfigs {
                    name: name.clone(),
                    configs: configs.clone(),
                };
                Ok((Outcome::ok(), vec![record]))
            }
            Intent::AllocateProducerIds { count } => {
                if *count < 1 {
                    return Err(Outcome::error(code::INVALID_REQUEST, "count below 1"));
                }
                let end = image.producer_ids_end().saturating_add(*count);
                Ok((Outcome::ok(), vec![MetadataRecord::ProducerIds { end }]))
            }
            Intent::ElectLeaders { unclean, partitions } => {
                Ok(self.elect_leaders(image, *unclean, partitions))
            }
            Intent::Reassign { topic, partition, target } => {
                self.reassign(image, topic, *partition, target.as_deref())
            }
            Intent::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_partition(
                image,
                topic,
                *partition,
                (*leader, *leader_epoch, *partition_epoch),
                isr,
            ),
        }
    }

    fn replication_factor(&self, topic: &NewTopic) -> i16 {
        if topic.replication_factor != -1 {
            return topic.replication_factor;
        }
        let internal = match topic.name.as_str() {
            OFFSETS_TOPIC => Some(self.settings.offsets_topic_replication_factor),
            TRANSACTION_STATE_TOPIC => Some(self.settings.transaction_state_log_replication_factor),
            _ => None,
        };
        match internal {
            Some(Some(factor)) => factor,
            Some(None) => {
                let brokers = self.liveness.brokers_usable().len();
                INTERNAL_REPLICATION_FACTOR_MAX
                    .min(i16::try_from(brokers).unwrap_or(i16::MAX))
                    .max(1)
            }
            None => self.settings.default_replication_factor,
        }
    }

    fn create_topic(
        &mut self,
        image: &MetadataImage,
        topic: &NewTopic,
    ) -> Result<(Outcome, Vec<MetadataRecord>), Outcome> {
        if image.topic(&topic.name).is_some() {
            return Err(Outcome::error(
                code::TOPIC_ALREADY_EXISTS,
                format!("Topic '{}' already exists.", topic.name),
            ));
        }
        let registered = self.liveness.brokers_registered();
        let usable_brokers = self.liveness.brokers_usable();
        let assignment = if topic.assignments.is_empty() {
            let partitions = if topic.partitions == -1 {
                self.settings.num_partitions
            } else {
                topic.partitions
            };
            let start = StripeStart {
                start_index: (self.next_random() % 1_000_003) as usize,
                replica_shift: (self.next_random() % 1_000_003) as usize,
            };
            placement::assign_replicas(
                partitions,
                self.replication_factor(topic),
                &usable_brokers,
                start,
            )
        } else {
            let brokers = BrokerSets { registered: &registered, usable: &usable_brokers };
            placement::validate_create_topic_assignment(&topic.assignments, brokers)
        }
        .map_err(|e| Outcome::error(placement_code(&e), e.to_string()))?;
        let partitions = i32::try_from(assignment.len()).unwrap_or(i32::MAX);
        let replication_factor =
            assignment.first().map_or(0, |r| i16::try_from(r.len()).unwrap_or(i16::MAX));
        let mut records = vec![MetadataRecord::CreateTopic {
            name: topic.name.clone(),
            topic_id: topic.topic_id,
            partitions,
            replication_factor,
            configs: topic.configs.clone(),
        }];
        for (index, replicas) in assignment.into_iter().enumerate() {
            let state = PartitionState::new(replicas, self.usable()).ok_or_else(|| {
                Outcome::error(
                    code::INVALID_REPLICATION_FACTOR,
                    format!("no usable broker among the replicas of partition {index}"),
                )
            })?;
            records.push(new_partition(topic.topic_id, index as i32, &state));
        }
        Ok((Outcome::ok(), records))
    }

    fn create_partitions(
        &mut self,
        image: &MetadataImage,
        name: &str,
        partitions: i32,
        assignments: &[Vec<BrokerId>],
    ) -> Result<(Outcome, Vec<MetadataRecord>), Outcome> {
        let Some(topic) = image.topic(name) else {
            return Err(Outcome::error(
                code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name} does not exist"),
            ));
        };
        let existing: Vec<Vec<BrokerId>> = (0..topic.partitions)
            .map(|p| topic.placement(p).map(|r| r.replicas.clone()).unwrap_or_default())
            .collect();
        let registered = self.liveness.brokers_registered();
        let usable_brokers = self.liveness.brokers_usable();
        let added = if assignments.is_empty() {
            placement::assign_partition_increase(&existing, partitions, &usable_brokers)
        } else {
            let brokers = BrokerSets { registered: &registered, usable: &usable_brokers };
            placement::validate_create_partitions_assignment(
                &existing,
                partitions,
                assignments,
                brokers,
            )
        }
        .map_err(|e| Outcome::error(placement_code(&e), e.to_string()))?;
        let mut records =
            vec![MetadataRecord::CreatePartitions { name: name.to_string(), partitions }];
        for (offset, replicas) in added.into_iter().enumerate() {
            let index = topic.partitions + offset as i32;
            let state = PartitionState::new(replicas, self.usable()).ok_or_else(|| {
                Outcome::error(
                    code::INVALID_REPLICATION_FACTOR,
                    format!("no usable broker among the replicas of partition {index}"),
                )
            })?;
            records.push(new_partition(topic.topic_id, index, &state));
        }
        Ok((Outcome::ok(), records))
    }

    fn elect_leaders(
        &self,
        image: &MetadataImage,
        unclean: bool,
        partitions: &[(String, i32)],
    ) -> (Outcome, Vec<MetadataRecord>) {
        let mut wanted = partitions.to_vec();
        if wanted.is_empty() {
            for_each_partition(image, |topic, partition, _| {
                wanted.push((topic.name.clone(), partition))
            });
        }
        let mut outcome = Outcome::ok();
        let mut records = Vec::new();
        for (name, partition) in wanted {
            let found = image.topic(&name).and_then(|t| t.placement(partition).map(|r| (t, r)));
            let Some((topic, record)) = found else {
                outcome.partitions.push((
                    name,
                    partition,
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    "This server does not host this topic-partition.".into(),
                ));
                continue;
            };
            let state = partition_state(record);
            let elected = if unclean {
                election::elect_unclean(&state, self.usable())
            } else {
                election::elect_preferred(&state, self.usable())
            };
            match elected {
                Ok(change) => {
                    records.push(change_record(topic.topic_id, partition, &change));
                    outcome.partitions.push((name, partition, code::NONE, String::new()));
                }
                Err(error) => {
                    let code = match error {
                        election::ElectionError::ElectionNotNeeded => code::ELECTION_NOT_NEEDED,
                        election::ElectionError::PreferredLeaderNotAvailable => {
                            code::PREFERRED_LEADER_NOT_AVAILABLE
                        }
                        election::ElectionError::EligibleLeadersNotAvailable => {
                            code::ELIGIBLE_LEADERS_NOT_AVAILABLE
                        }
                    };
                    outcome.partitions.push((name, partition, code, error.to_string()));
                }
            }
        }
        (outcome, records)
    }

    fn reassign(
        &self,
        image: &MetadataImage,
        name: &str,
        partition: i32,
        target: Option<&[BrokerId]>,
    ) -> Result<(Outcome, Vec<MetadataRecord>), Outcome> {
        let (topic, record) = placed(image, name, partition)?;
        let state = partition_state(record);
        let registered = self.liveness.brokers_registered();
        let change = match target {
            Some(target) => reassignment::start(&state, target, &registered, self.usable()),
            None => reassignment::cancel(&state, self.usable(), self.unclean(topic)),
        }
        .map_err(|e| {
            let code = match e {
                reassignment::ReassignmentError::NoReassignmentInProgress => {
                    code::NO_REASSIGNMENT_IN_PROGRESS
                }
                _ => code::INVALID_REPLICA_ASSIGNMENT,
            };
            Outcome::error(code, e.to_string())
        })?;
        let records = change.iter().map(|c| change_record(topic.topic_id, partition, c)).collect();
        Ok((Outcome::ok(), records))
    }
}

impl Controller {
    /// AlterPartition (Kafka's `ReplicationControlManager.alterPartition`): only the
    /// current leader at the current leader epoch and partition epoch changes the ISR.
    fn alter_partition(
        &self,
        image: &MetadataImage,
        name: &str,
        partition: i32,
        (leader, leader_epoch, partition_epoch): (BrokerId, i32, i32),
        isr: &[BrokerId],
    ) -> Result<(Outcome, Vec<MetadataRecord>), Outcome> {
        let (topic, record) = placed(image, name, partition)?;
        let state = partition_state(record);
        if state.leader != leader {
            return Err(Outcome::error(
                code::NOT_LEADER_OR_FOLLOWER,
                format!(
                    "broker {leader} does not lead {name}-{partition} (leader {})",
                    state.leader
                ),
            ));
        }
        if leader_epoch != state.leader_epoch {
            return Err(Outcome::error(
                code::FENCED_LEADER_EPOCH,
                format!("leader epoch {leader_epoch}, the partition is at {}", state.leader_epoch),
            ));
        }
        if partition_epoch != state.partition_epoch {
            return Err(Outcome::error(
                code::INVALID_UPDATE_VERSION,
                format!(
                    "partition epoch {partition_epoch}, the partition is at {}",
                    state.partition_epoch
                ),
            ));
        }
        let change = election::alter_isr(&state, isr, self.usable()).map_err(|e| {
            let code = match e {
                election::IsrChangeError::IneligibleReplica { .. } => code::INELIGIBLE_REPLICA,
                _ => code::INVALID_REQUEST,
            };
            Outcome::error(code, e.to_string())
        })?;
        let records = change.iter().map(|c| change_record(topic.topic_id, partition, c)).collect();
        Ok((Outcome::ok(), records))
    }
}

/// A partition's topic and placement, or UNKNOWN_TOPIC_OR_PARTITION.
fn placed<'a>(
    image: &'a MetadataImage,
    name: &str,
    partition: i32,
) -> Result<(&'a TopicMetadata, &'a PartitionRecord), Outcome> {
    image.topic(name).and_then(|t| t.placement(partition).map(|r| (t, r))).ok_or_else(|| {
        Outcome::error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!("{name}-{partition} does not exist"),
        )
    })
}

/// Calls `f` for every placed partition, topics by name, partitions in order.
pub fn for_each_partition(
    image: &MetadataImage,
    mut f: impl FnMut(&TopicMetadata, i32, &PartitionRecord),
) {
    for topic in image.topics() {
        for (&partition, record) in &topic.placements {
            f(topic, partition, record);
        }
    }
}

/// Whether `broker` leads some partition.
fn image_leads(image: &MetadataImage, broker: BrokerId) -> bool {
    image.topics().any(|t| t.placements.values().any(|p| p.leader == broker))
}

#[cfg(test)]
mod tests;
