//! Partition leadership and ISR changes, decided as KRaft's `PartitionChangeBuilder` decides
//! them: one function per controller event (a broker fenced, unfenced or shutting down,
//! ElectLeaders, AlterPartition) takes a partition's state and returns the change to write,
//! or `None` when nothing changes.
//!
//! The rules, all Kafka's (`PartitionChangeBuilder`, `ReplicationControlManager`
//! `generateLeaderAndIsrUpdates`, with eligible leader replicas (KIP-966) off):
//! - A leader is elected from the ISR, among replicas the controller accepts as leaders
//!   (unfenced and not in controlled shutdown: the usability predicate every function takes),
//!   in replica order; a current leader that is still acceptable keeps leading.
//! - The ISR never becomes empty. When the last ISR member is fenced or shuts down it stays
//!   in the ISR and the partition has no leader ([`NO_LEADER`]), because that replica is the
//!   one known to hold every committed record: when it comes back it leads again
//!   (`PartitionChangeBuilder.build` sets the ISR only when the target ISR is non-empty).
//! - With unclean leader election (`unclean.leader.election.enable`) and no acceptable ISR
//!   member, the first acceptable replica leads and the ISR becomes just it: committed
//!   records may be lost, so [`PartitionChange::unclean`] says so (Kafka also marks the
//!   partition's leader recovery state RECOVERING).
//! - The leader epoch goes up by one exactly when the leader changes (also to or from
//!   [`NO_LEADER`]), and when a reassignment takes replicas out of the replica set (see
//!   [`crate::reassignment`]); the partition epoch goes up by one with every change.
//!   KRaft before metadata version 3.6 also bumped the leader epoch when the ISR shrank
//!   (KAFKA-15021); Sluice follows 3.6 and later.
//! - Every change also completes a reassignment whose target replicas are all in the new
//!   ISR, as the builder does before it elects.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::reassignment;
use crate::BrokerId;

/// The leader of a partition that has none (Kafka's `LeaderConstants.NO_LEADER`).
pub const NO_LEADER: BrokerId = -1;

/// Kafka's default `leader.imbalance.per.broker.percentage`.
pub const LEADER_IMBALANCE_PER_BROKER_PERCENTAGE_DEFAULT: u32 = 10;

/// A partition's replication state as the controller stores it (Kafka's
/// `PartitionRegistration`, without directories, ELR and leader recovery state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Every replica, preferred leader first. During a reassignment: the target replicas,
    /// then the replicas being removed.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas: never empty, always a subset of `replicas`.
    pub isr: Vec<BrokerId>,
    /// The leader, a member of the ISR, or [`NO_LEADER`].
    pub leader: BrokerId,
    /// Goes up with every leader change; replicas fence stale leaders with it.
    pub leader_epoch: i32,
    /// Goes up with every change to this state (Kafka's partition epoch, the ZooKeeper
    /// version of old); AlterPartition requests must name the current one.
    pub partition_epoch: i32,
    /// Replicas a reassignment is adding (KIP-455); empty when none is in progress.
    pub adding_replicas: Vec<BrokerId>,
    /// Replicas a reassignment is removing (KIP-455); empty when none is in progress.
    pub removing_replicas: Vec<BrokerId>,
}

impl PartitionState {
    /// The state of a newly created partition, as KRaft's `createTopic` and
    /// `createPartitions` write it: the ISR is the usable replicas in replica order, the
    /// first of them leads, both epochs are 0. `None` when no replica is usable, which Kafka
    /// answers with `INVALID_REPLICATION_FACTOR` for a placed topic and
    /// `INVALID_REPLICA_ASSIGNMENT` for a manual assignment.
    pub fn new(replicas: Vec<BrokerId>, usable: impl Fn(BrokerId) -> bool) -> Option<Self> {
        let isr: Vec<BrokerId> =
            replicas.iter().copied().filter(|&broker| usable(broker)).collect();
        let leader = *isr.first()?;
        Some(Self {
            replicas,
            isr,
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        })
    }

    /// The first replica, which Kafka calls the preferred leader.
    pub fn preferred_leader(&self) -> Option<BrokerId> {
        self.replicas.first().copied()
    }

    /// Whether some replica leads (Kafka's `hasLeader`).
    pub fn has_leader(&self) -> bool {
        self.leader != NO_LEADER
    }

    /// Whether the preferred leader leads (Kafka's `hasPreferredLeader`).
    pub fn has_preferred_leader(&self) -> bool {
        self.preferred_leader() == Some(self.leader)
    }

    /// Whether a reassignment is in progress (Kafka's `isReassigning`).
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    fn assert_invariants(&self) {
        assert!(!self.isr.is_empty(), "the ISR is never empty");
        for member in &self.isr {
            assert!(self.replicas.contains(member), "ISR member {member} is a replica");
        }
        if self.leader != NO_LEADER {
            assert!(self.isr.contains(&self.leader), "the leader is in the ISR");
        }
    }
}

/// How a change picks a leader (Kafka's `PartitionChangeBuilder.Election`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// The preferred leader if it is in the ISR and acceptable; otherwise as `Online`.
    Preferred,
    /// Keep the partition online from the ISR only.
    Online,
    /// As `Online`, then any acceptable replica outside the ISR (data may be lost).
    Unclean,
}

/// A change to one partition (Kafka's `PartitionChangeRecord`): the fields that change,
/// and the state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionChange {
    /// The leader, when this change sets it; setting it bumps the leader epoch, so a
    /// reassignment that removes replicas sets it to the unchanged leader.
    pub leader: Option<BrokerId>,
    /// The new ISR, when it changes.
    pub isr: Option<Vec<BrokerId>>,
    /// The new replica list, when it changes.
    pub replicas: Option<Vec<BrokerId>>,
    /// The new adding replicas, when they change.
    pub adding_replicas: Option<Vec<BrokerId>>,
    /// The new removing replicas, when they change.
    pub removing_replicas: Option<Vec<BrokerId>>,
    /// The leader came from outside the ISR: records the old ISR held may be lost.
    pub unclean: bool,
    /// The partition's state with the change applied.
    pub state: PartitionState,
}

/// Why an ElectLeaders request did not elect, with the Kafka error code it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ElectionError {
    /// Kafka's `ELECTION_NOT_NEEDED` (84): PREFERRED and the preferred leader leads, or
    /// UNCLEAN and the partition has a leader.
    #[error("Leader election not needed for topic partition.")]
    ElectionNotNeeded,
    /// Kafka's `PREFERRED_LEADER_NOT_AVAILABLE` (80): the preferred leader is not in the ISR
    /// or not usable, and the current leader stays.
    #[error("The preferred leader was not available.")]
    PreferredLeaderNotAvailable,
    /// Kafka's `ELIGIBLE_LEADERS_NOT_AVAILABLE` (83): UNCLEAN and no replica is usable.
    #[error("Eligible topic partition leaders are not available.")]
    EligibleLeadersNotAvailable,
}

/// Why an AlterPartition ISR was refused, with the Kafka error code it is answered with.
/// The request's leader and partition epochs are the caller's to check first
/// (`FENCED_LEADER_EPOCH`, `INVALID_UPDATE_VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum IsrChangeError {
    /// Kafka's `INVALID_REQUEST` (42): the ISR names a broker that is not a replica.
    #[error("the new ISR names broker {broker}, which is not a replica")]
    NotAReplica { broker: BrokerId },
    /// Kafka's `INVALID_REQUEST` (42): the ISR names a broker twice.
    #[error("the new ISR names broker {broker} more than once")]
    DuplicateMember { broker: BrokerId },
    /// Kafka's `INVALID_REQUEST` (42): the ISR must always include the current leader.
    #[error("the new ISR does not include the leader {leader}")]
    LeaderNotInIsr { leader: BrokerId },
    /// Kafka's `INELIGIBLE_REPLICA` (107): a member is fenced, shutting down or unknown.
    #[error("the new ISR names broker {broker}, which is fenced or shutting down")]
    IneligibleReplica { broker: BrokerId },
}

/// Kafka's `handleBrokerFenced` for one partition: `broker` (whose session expired, or
/// which asked to be fenced or to shut down now) leaves the ISR and, if it led, a new leader
/// is elected. `None` when `broker` is not in the ISR: Kafka visits only those partitions.
pub fn handle_broker_fenced(
    state: &PartitionState,
    broker: BrokerId,
    usable: impl Fn(BrokerId) -> bool,
    unclean_leader_election: bool,
) -> Option<PartitionChange> {
    remove_from_isr(state, broker, &usable, unclean_leader_election)
}

/// Kafka's `handleBrokerInControlledShutdown` for one partition: the shutting-down broker
/// leaves the ISR and its leadership moves to another usable ISR member, before the broker
/// is told it may stop. KRaft does exactly what fencing does (both call
/// `generateLeaderAndIsrUpdates` with the broker to remove), so the broker also stays in a
/// one-member ISR, leaderless, when no other replica is in sync.
pub fn handle_broker_controlled_shutdown(
    state: &PartitionState,
    broker: BrokerId,
    usable: impl Fn(BrokerId) -> bool,
    unclean_leader_election: bool,
) -> Option<PartitionChange> {
    remove_from_isr(state, broker, &usable, unclean_leader_election)
}

/// Kafka's `handleBrokerUnfenced` for one partition without a leader (Kafka visits every
/// leaderless partition): `broker` counts as usable even if `usable` still says otherwise,
/// and an ISR member (with unclean election, any replica) is elected. `None` when the
/// partition has a leader or none can be elected.
pub fn handle_broker_unfenced(
    state: &PartitionState,
    broker: BrokerId,
    usable: impl Fn(BrokerId) -> bool,
    unclean_leader_election: bool,
) -> Option<PartitionChange> {
    if state.has_leader() {
        return None;
    }
    let acceptable = |replica: BrokerId| replica == broker || usable(replica);
    let election = if unclean_leader_election { Election::Unclean } else { Election::Online };
    build(state, ChangeTarget::unchanged(state, election), &acceptable)
}

/// ElectLeaders with election type PREFERRED (and the auto leader rebalance): the
/// preferred leader leads if it is in the ISR and usable. As Kafka's builder does, a
/// leaderless partition whose preferred leader is unavailable gets another ISR member.
pub fn elect_preferred(
    state: &PartitionState,
    usable: impl Fn(BrokerId) -> bool,
) -> Result<PartitionChange, ElectionError> {
    if state.has_preferred_leader() {
        return Err(ElectionError::ElectionNotNeeded);
    }
    let target = ChangeTarget::unchanged(state, Election::Preferred);
    build(state, target, &usable).ok_or(ElectionError::PreferredLeaderNotAvailable)
}

/// ElectLeaders with election type UNCLEAN, whatever the topic's
/// `unclean.leader.election.enable`: only for a partition without a leader; an ISR member
/// if one is usable, otherwise the first usable replica with the ISR reset to it.
pub fn elect_unclean(
    state: &PartitionState,
    usable: impl Fn(BrokerId) -> bool,
) -> Result<PartitionChange, ElectionError> {
    if state.has_leader() {
        return Err(ElectionError::ElectionNotNeeded);
    }
    let target = ChangeTarget::unchanged(state, Election::Unclean);
    build(state, target, &usable).ok_or(ElectionError::EligibleLeadersNotAvailable)
}

/// AlterPartition: the leader reports a new ISR (grown by caught-up followers or shrunk by
/// lagging ones). Checked as KRaft's `validateAlterPartitionData` checks the ISR, then
/// applied; the change completes a reassignment once every target replica is in sync.
pub fn alter_isr(
    state: &PartitionState,
    isr: &[BrokerId],
    usable: impl Fn(BrokerId) -> bool,
) -> Result<Option<PartitionChange>, IsrChangeError> {
    for (index, &broker) in isr.iter().enumerate() {
        if !state.replicas.contains(&broker) {
            return Err(IsrChangeError::NotAReplica { broker });
        }
        if isr[..index].contains(&broker) {
            return Err(IsrChangeError::DuplicateMember { broker });
        }
    }
    if !isr.contains(&state.leader) {
        return Err(IsrChangeError::LeaderNotInIsr { leader: state.leader });
    }
    if let Some(&broker) = isr.iter().find(|&&broker| !usable(broker)) {
        return Err(IsrChangeError::IneligibleReplica { broker });
    }
    let mut target = ChangeTarget::unchanged(state, Election::Online);
    target.isr = isr.to_vec();
    Ok(build(state, target, &usable))
}

/// One broker's share in the leader imbalance check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerLeaderImbalance {
    /// The broker this share is about.
    pub broker: BrokerId,
    /// Partitions whose preferred leader (first replica) is this broker.
    pub partition_count_preferred: usize,
    /// Of those, the partitions another broker leads, or nobody.
    pub partition_count_not_led: usize,
}

impl BrokerLeaderImbalance {
    /// Whether the share not led is above `percentage` per cent (Kafka compares
    /// `notLed / preferred > percentage / 100`; here in integers, so exactly).
    pub fn is_above(&self, percentage: u32) -> bool {
        let not_led = u64::try_from(self.partition_count_not_led).unwrap_or(u64::MAX);
        let preferred = u64::try_from(self.partition_count_preferred).unwrap_or(u64::MAX);
        not_led.saturating_mul(100) > u64::from(percentage).saturating_mul(preferred)
    }
}

/// The result of the leader imbalance check: every broker's share, and the partitions to
/// hand back to their preferred leader with [`elect_preferred`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderImbalance<K> {
    /// One entry per broker that is some partition's preferred leader, by broker id.
    pub brokers: Vec<BrokerLeaderImbalance>,
    /// By broker id, then in input order.
    pub partitions_to_move: Vec<K>,
}

/// The periodic check behind `auto.leader.rebalance.enable`, as the ZooKeeper controller's
/// `checkAndTriggerAutoLeaderRebalance` makes it: per broker, the share of partitions whose
/// preferred leader it is but which it does not lead; for each broker above
/// `leader.imbalance.per.broker.percentage` (default
/// [`LEADER_IMBALANCE_PER_BROKER_PERCENTAGE_DEFAULT`]), its partitions where the preferred
/// leader is usable and in the ISR and no reassignment is in progress are listed to move.
/// KRaft's controller moves every imbalanced partition whatever the percentage, which is
/// this check with `imbalance_percentage_per_broker = 0`.
pub fn leader_imbalance<'a, K>(
    partitions: impl IntoIterator<Item = (K, &'a PartitionState)>,
    imbalance_percentage_per_broker: u32,
    usable: impl Fn(BrokerId) -> bool,
) -> LeaderImbalance<K> {
    struct Share<K> {
        preferred: usize,
        not_led: usize,
        movable: Vec<K>,
    }
    let mut shares: BTreeMap<BrokerId, Share<K>> = BTreeMap::new();
    for (key, state) in partitions {
        let Some(preferred) = state.preferred_leader() else { continue };
        let share = shares.entry(preferred).or_insert(Share {
            preferred: 0,
            not_led: 0,
            movable: Vec::new(),
        });
        share.preferred += 1;
        if state.leader == preferred {
            continue;
        }
        share.not_led += 1;
        if usable(preferred) && state.isr.contains(&preferred) && !state.is_reassigning() {
            share.movable.push(key);
        }
    }
    let mut imbalance = LeaderImbalance { brokers: Vec::new(), partitions_to_move: Vec::new() };
    for (broker, share) in shares {
        let broker_imbalance = BrokerLeaderImbalance {
            broker,
            partition_count_preferred: share.preferred,
            partition_count_not_led: share.not_led,
        };
        if broker_imbalance.is_above(imbalance_percentage_per_broker) {
            imbalance.partitions_to_move.extend(share.movable);
        }
        imbalance.brokers.push(broker_imbalance);
    }
    imbalance
}

/// What a change aims at before the leader is elected: the builder's `target*` fields.
#[derive(Debug, Clone)]
pub(crate) struct ChangeTarget {
    pub(crate) isr: Vec<BrokerId>,
    pub(crate) replicas: Vec<BrokerId>,
    pub(crate) adding: Vec<BrokerId>,
    pub(crate) removing: Vec<BrokerId>,
    pub(crate) election: Election,
}

impl ChangeTarget {
    pub(crate) fn unchanged(state: &PartitionState, election: Election) -> Self {
        Self {
            isr: state.isr.clone(),
            replicas: state.replicas.clone(),
            adding: state.adding_replicas.clone(),
            removing: state.removing_replicas.clone(),
            election,
        }
    }
}

/// Fencing and controlled shutdown alike: `broker` leaves the target ISR and is never an
/// acceptable leader, even for an unclean election.
fn remove_from_isr(
    state: &PartitionState,
    broker: BrokerId,
    usable: &dyn Fn(BrokerId) -> bool,
    unclean_leader_election: bool,
) -> Option<PartitionChange> {
    if !state.isr.contains(&broker) {
        return None;
    }
    let election = if unclean_leader_election { Election::Unclean } else { Election::Online };
    let mut target = ChangeTarget::unchanged(state, election);
    target.isr.retain(|&member| member != broker);
    let acceptable = |replica: BrokerId| replica != broker && usable(replica);
    build(state, target, &acceptable)
}

/// The change builder, in the builder's order: complete a reassignment the target ISR
/// allows, elect, bump the leader epoch for removed replicas, set the ISR (never to empty),
/// set the assignment; `None` if nothing changes.
pub(crate) fn build(
    state: &PartitionState,
    mut target: ChangeTarget,
    acceptable: &dyn Fn(BrokerId) -> bool,
) -> Option<PartitionChange> {
    state.assert_invariants();
    let completed = reassignment::complete_if_ready(
        &target.replicas,
        &target.adding,
        &target.removing,
        &target.isr,
    );
    if let Some(completed) = completed {
        target.replicas = completed.replicas;
        target.isr = completed.isr;
        target.adding.clear();
        target.removing.clear();
    }

    let mut leader: Option<BrokerId> = None;
    let mut isr: Option<Vec<BrokerId>> = None;
    let (elected, unclean) = elect(state, &target, acceptable);
    let unclean = unclean && elected != state.leader;
    if elected != state.leader {
        leader = Some(elected);
        if unclean {
            // The new leader's log is all there is now: the ISR is just it.
            isr = Some(vec![elected]);
        }
    }
    // Replicas leaving the replica set must see a new leader epoch, so that a removed
    // replica cannot keep fetching (or be counted) under the old one.
    if leader.is_none() && !state.replicas.iter().all(|replica| target.replicas.contains(replica)) {
        leader = Some(state.leader);
    }
    if isr.is_none() && !target.isr.is_empty() && target.isr != state.isr {
        isr = Some(target.isr.clone());
    }
    let replicas = (!target.replicas.is_empty() && target.replicas != state.replicas)
        .then(|| target.replicas.clone());
    let adding_replicas = (target.adding != state.adding_replicas).then(|| target.adding.clone());
    let removing_replicas =
        (target.removing != state.removing_replicas).then(|| target.removing.clone());

    let nothing = leader.is_none()
        && isr.is_none()
        && replicas.is_none()
        && adding_replicas.is_none()
        && removing_replicas.is_none();
    if nothing {
        return None;
    }
    let mut next = state.clone();
    if let Some(leader) = leader {
        next.leader = leader;
        next.leader_epoch += 1;
    }
    if let Some(isr) = &isr {
        next.isr.clone_from(isr);
    }
    if let Some(replicas) = &replicas {
        next.replicas.clone_from(replicas);
    }
    if let Some(adding) = &adding_replicas {
        next.adding_replicas.clone_from(adding);
    }
    if let Some(removing) = &removing_replicas {
        next.removing_replicas.clone_from(removing);
    }
    next.partition_epoch += 1;
    next.assert_invariants();
    Some(PartitionChange {
        leader,
        isr,
        replicas,
        adding_replicas,
        removing_replicas,
        unclean,
        state: next,
    })
}

/// Kafka's `electLeader`: the leader and whether it came from outside the ISR.
fn elect(
    state: &PartitionState,
    target: &ChangeTarget,
    acceptable: &dyn Fn(BrokerId) -> bool,
) -> (BrokerId, bool) {
    let valid = |replica: BrokerId| target.isr.contains(&replica) && acceptable(replica);
    if target.election == Election::Preferred {
        if let Some(&preferred) = target.replicas.first() {
            if valid(preferred) {
                return (preferred, false);
            }
        }
    }
    if valid(state.leader) {
        return (state.leader, false);
    }
    let skip = usize::from(target.election == Election::Preferred);
    if let Some(&replica) = target.replicas.iter().skip(skip).find(|&&replica| valid(replica)) {
        return (replica, false);
    }
    if target.election == Election::Unclean {
        if let Some(&replica) = target.replicas.iter().find(|&&replica| acceptable(replica)) {
            return (replica, true);
        }
    }
    (NO_LEADER, false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partition(replicas: &[BrokerId], isr: &[BrokerId], leader: BrokerId) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: 5,
            partition_epoch: 10,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    fn all_but(excluded: &'static [BrokerId]) -> impl Fn(BrokerId) -> bool {
        move |broker| !excluded.contains(&broker)
    }

    #[test]
    fn new_partition_leads_from_the_first_usable_replica() {
        let state = PartitionState::new(vec![1, 2, 3], all_but(&[1])).unwrap();
        assert_eq!(state.isr, vec![2, 3]);
        assert_eq!(state.leader, 2);
        assert_eq!((state.leader_epoch, state.partition_epoch), (0, 0));
        assert_eq!(PartitionState::new(vec![1, 2], all_but(&[1, 2])), None);
    }

    #[test]
    fn fenced_follower_leaves_the_isr_and_the_leader_stays() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let change = handle_broker_fenced(&state, 2, all_but(&[2]), false).unwrap();
        assert_eq!(change.leader, None);
        assert_eq!(change.isr, Some(vec![1, 3]));
        assert_eq!(change.state.leader_epoch, 5, "no leader change, no leader epoch bump");
        assert_eq!(change.state.partition_epoch, 11);
        assert!(!change.unclean);
    }

    #[test]
    fn fenced_leader_is_replaced_by_the_next_usable_isr_member_in_replica_order() {
        // Broker 2 is in the ISR but fenced too: broker 3 comes next in replica order.
        let state = partition(&[1, 2, 3], &[3, 1, 2], 1);
        let change = handle_broker_fenced(&state, 1, all_but(&[1, 2]), false).unwrap();
        assert_eq!(change.leader, Some(3));
        assert_eq!(change.isr, Some(vec![3, 2]));
        assert_eq!(change.state.leader, 3);
        assert_eq!(change.state.leader_epoch, 6);
        assert_eq!(change.state.partition_epoch, 11);
    }

    #[test]
    fn the_last_isr_member_stays_in_the_isr_without_a_leader() {
        let state = partition(&[1, 2], &[1], 1);
        let change = handle_broker_fenced(&state, 1, all_but(&[1]), false).unwrap();
        assert_eq!(change.leader, Some(NO_LEADER));
        assert_eq!(change.isr, None, "Kafka never writes an empty ISR");
        assert_eq!(change.state.isr, vec![1]);
        assert_eq!(change.state.leader_epoch, 6, "losing the leader bumps the epoch too");
        // Fencing it again (or a leaderless partition's last member) changes nothing.
        assert_eq!(handle_broker_fenced(&change.state, 1, all_but(&[1]), false), None);
    }

    #[test]
    fn unclean_election_picks_a_usable_replica_outside_the_isr() {
        let state = partition(&[1, 2, 3], &[1], 1);
        let change = handle_broker_fenced(&state, 1, all_but(&[1, 2]), true).unwrap();
        assert_eq!(change.leader, Some(3));
        assert_eq!(change.isr, Some(vec![3]));
        assert!(change.unclean);
        assert_eq!(change.state.leader_epoch, 6);
        // The broker being fenced is never chosen, even if `usable` still says it is.
        let change = handle_broker_fenced(&state, 1, all_but(&[2, 3]), true).unwrap();
        assert_eq!(change.leader, Some(NO_LEADER));
    }

    #[test]
    fn not_in_isr_means_nothing_to_do_on_fencing() {
        let state = partition(&[1, 2, 3], &[1, 2], 1);
        assert_eq!(handle_broker_fenced(&state, 3, all_but(&[3]), true), None);
    }

    #[test]
    fn unfenced_broker_leads_leaderless_partitions_whose_isr_holds_it() {
        let state = partition(&[1, 2], &[2], NO_LEADER);
        // `usable` may not know yet that broker 2 is unfenced: the broker counts anyway.
        let change = handle_broker_unfenced(&state, 2, all_but(&[2]), false).unwrap();
        assert_eq!(change.leader, Some(2));
        assert_eq!(change.isr, None);
        assert_eq!(change.state.leader_epoch, 6);
        // A broker outside the ISR does not lead without unclean election...
        assert_eq!(handle_broker_unfenced(&state, 1, all_but(&[2]), false), None);
        // ...and does with it.
        let change = handle_broker_unfenced(&state, 1, all_but(&[2]), true).unwrap();
        assert_eq!(
            (change.leader, change.isr.clone(), change.unclean),
            (Some(1), Some(vec![1]), true)
        );
        // A partition that has a leader is left alone.
        let led = partition(&[1, 2], &[1], 1);
        assert_eq!(handle_broker_unfenced(&led, 2, |_| true, true), None);
    }

    #[test]
    fn controlled_shutdown_moves_leadership_and_leaves_the_isr() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let change = handle_broker_controlled_shutdown(&state, 1, all_but(&[1]), false).unwrap();
        assert_eq!(change.leader, Some(2));
        assert_eq!(change.isr, Some(vec![2, 3]));
        // Alone in the ISR, it stays there and the partition is leaderless until it returns.
        let alone = partition(&[1, 2], &[1], 1);
        let change = handle_broker_controlled_shutdown(&alone, 1, all_but(&[1]), false).unwrap();
        assert_eq!((change.leader, change.state.isr.clone()), (Some(NO_LEADER), vec![1]));
    }

    #[test]
    fn preferred_election() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 2);
        let change = elect_preferred(&state, |_| true).unwrap();
        assert_eq!(change.leader, Some(1));
        assert_eq!(change.state.leader_epoch, 6);
        assert_eq!(elect_preferred(&change.state, |_| true), Err(ElectionError::ElectionNotNeeded));
        // Preferred fenced, or out of the ISR: the current leader stays.
        assert_eq!(
            elect_preferred(&state, all_but(&[1])),
            Err(ElectionError::PreferredLeaderNotAvailable)
        );
        let out_of_sync = partition(&[1, 2, 3], &[2, 3], 2);
        assert_eq!(
            elect_preferred(&out_of_sync, |_| true),
            Err(ElectionError::PreferredLeaderNotAvailable)
        );
        // Leaderless with the preferred unavailable: Kafka's builder elects another member.
        let leaderless = partition(&[1, 2, 3], &[2, 3], NO_LEADER);
        assert_eq!(elect_preferred(&leaderless, all_but(&[2])).unwrap().leader, Some(3));
    }

    #[test]
    fn unclean_election_by_request() {
        let led = partition(&[1, 2, 3], &[1], 1);
        assert_eq!(elect_unclean(&led, |_| true), Err(ElectionError::ElectionNotNeeded));
        let leaderless = partition(&[1, 2, 3], &[1], NO_LEADER);
        assert_eq!(
            elect_unclean(&leaderless, all_but(&[1, 2, 3])),
            Err(ElectionError::EligibleLeadersNotAvailable)
        );
        // An ISR member first (a clean election), even when asked for an unclean one.
        let clean = elect_unclean(&leaderless, |_| true).unwrap();
        assert_eq!((clean.leader, clean.unclean), (Some(1), false));
        let unclean = elect_unclean(&leaderless, all_but(&[1, 2])).unwrap();
        assert_eq!((unclean.leader, unclean.isr, unclean.unclean), (Some(3), Some(vec![3]), true));
    }

    #[test]
    fn alter_isr_checks_the_new_isr() {
        let state = partition(&[1, 2, 3], &[1], 1);
        let change = alter_isr(&state, &[1, 3], |_| true).unwrap().unwrap();
        assert_eq!(change.isr, Some(vec![1, 3]));
        assert_eq!((change.state.leader_epoch, change.state.partition_epoch), (5, 11));
        assert_eq!(alter_isr(&state, &[1], |_| true), Ok(None));
        assert_eq!(
            alter_isr(&state, &[1, 4], |_| true),
            Err(IsrChangeError::NotAReplica { broker: 4 })
        );
        assert_eq!(
            alter_isr(&state, &[1, 2, 2], |_| true),
            Err(IsrChangeError::DuplicateMember { broker: 2 })
        );
        assert_eq!(
            alter_isr(&state, &[2, 3], |_| true),
            Err(IsrChangeError::LeaderNotInIsr { leader: 1 })
        );
        assert_eq!(
            alter_isr(&state, &[1, 2], all_but(&[2])),
            Err(IsrChangeError::IneligibleReplica { broker: 2 })
        );
    }

    #[test]
    fn leader_imbalance_lists_partitions_above_the_percentage() {
        // Broker 1 prefers 4 partitions and leads 2 (50% not led); broker 2 prefers 10 and
        // leads 9 (10%, not above 10%); broker 3 prefers one and leads it.
        let mut partitions = vec![
            ("a", partition(&[1, 2], &[1, 2], 1)),
            ("b", partition(&[1, 2], &[1, 2], 1)),
            ("c", partition(&[1, 2], &[1, 2], 2)),
            // Broker 1 is out of this one's ISR: it cannot take it back.
            ("d", partition(&[1, 3], &[3], 3)),
        ];
        for _ in 0..9 {
            partitions.push(("e", partition(&[2, 1], &[2, 1], 2)));
        }
        partitions.push(("f", partition(&[2, 1], &[2, 1], 1)));
        partitions.push(("g", partition(&[3, 1], &[3, 1], 3)));
        let report = leader_imbalance(
            partitions.iter().map(|(key, state)| (*key, state)),
            LEADER_IMBALANCE_PER_BROKER_PERCENTAGE_DEFAULT,
            |_| true,
        );
        assert_eq!(
            report.brokers,
            vec![
                BrokerLeaderImbalance {
                    broker: 1,
                    partition_count_preferred: 4,
                    partition_count_not_led: 2
                },
                BrokerLeaderImbalance {
                    broker: 2,
                    partition_count_preferred: 10,
                    partition_count_not_led: 1
                },
                BrokerLeaderImbalance {
                    broker: 3,
                    partition_count_preferred: 1,
                    partition_count_not_led: 0
                },
            ]
        );
        assert_eq!(report.partitions_to_move, vec!["c"]);
        // KRaft's behaviour: every imbalanced partition whose preferred leader can lead.
        let report =
            leader_imbalance(partitions.iter().map(|(key, state)| (*key, state)), 0, |_| true);
        assert_eq!(report.partitions_to_move, vec!["c", "f"]);
        // A preferred leader that is not usable gets nothing back.
        let report =
            leader_imbalance(partitions.iter().map(|(key, state)| (*key, state)), 0, all_but(&[1]));
        assert_eq!(report.partitions_to_move, vec!["f"]);
    }

    /// Catch-up and preferred-election events reach the partitions whose index is theirs
    /// modulo this, so that each reaches several partitions.
    const PICK: usize = 3;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Unfenced,
        Fenced,
        ShuttingDown,
    }

    #[derive(Debug, Clone)]
    enum Event {
        Fence(BrokerId),
        Unfence(BrokerId),
        Shutdown(BrokerId),
        CatchUp(usize),
        Preferred(usize),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..5).prop_map(Event::Fence),
            (0..5).prop_map(Event::Unfence),
            (0..5).prop_map(Event::Shutdown),
            (0..8usize).prop_map(Event::CatchUp),
            (0..8usize).prop_map(Event::Preferred),
        ]
    }

    /// Checks one change against the state before it.
    fn check(before: &PartitionState, change: &PartitionChange, unclean_allowed: bool) {
        let after = &change.state;
        after.assert_invariants();
        assert_eq!(after.replicas, before.replicas, "elections never change the replicas");
        assert_eq!(after.partition_epoch, before.partition_epoch + 1);
        assert!(after.leader_epoch >= before.leader_epoch);
        let leader_changed = after.leader != before.leader;
        assert_eq!(after.leader_epoch, before.leader_epoch + i32::from(leader_changed));
        if leader_changed && after.leader != NO_LEADER && !unclean_allowed {
            assert!(before.isr.contains(&after.leader), "a clean leader was in the ISR");
        }
        if change.unclean {
            assert!(unclean_allowed);
            assert_eq!(after.isr, vec![after.leader]);
        }
    }

    proptest! {
        #[test]
        fn events_keep_the_invariants(
            replica_lists in proptest::collection::vec(
                proptest::sample::subsequence(vec![0, 1, 2, 3, 4], 1..=4).prop_shuffle(), 1..8),
            unclean_allowed in any::<bool>(),
            events in proptest::collection::vec(event(), 0..60),
        ) {
            let mut modes = [Mode::Unfenced; 5];
            let mut states: Vec<PartitionState> = replica_lists
                .into_iter()
                .map(|replicas| PartitionState::new(replicas, |_| true).unwrap())
                .collect();
            for event in events {
                let broker = match event {
                    Event::Fence(b) | Event::Unfence(b) | Event::Shutdown(b) => b,
                    Event::CatchUp(_) | Event::Preferred(_) => NO_LEADER,
                };
                match event {
                    Event::Fence(_) => modes[broker as usize] = Mode::Fenced,
                    Event::Unfence(_) => modes[broker as usize] = Mode::Unfenced,
                    Event::Shutdown(_) if modes[broker as usize] == Mode::Unfenced => {
                        modes[broker as usize] = Mode::ShuttingDown
                    }
                    _ => {}
                }
                let usable = |b: BrokerId| modes[b as usize] == Mode::Unfenced;
                for (index, state) in states.iter_mut().enumerate() {
                    let change = match event {
                        Event::Fence(b) => handle_broker_fenced(state, b, usable, unclean_allowed),
                        Event::Shutdown(b) if modes[b as usize] == Mode::ShuttingDown => {
                            handle_broker_controlled_shutdown(state, b, usable, unclean_allowed)
                        }
                        Event::Shutdown(_) => None,
                        Event::Unfence(b) => handle_broker_unfenced(state, b, usable, unclean_allowed),
                        Event::CatchUp(p) if p % PICK == index % PICK
                            && state.has_leader() => {
                            let mut isr = state.isr.clone();
                            for &replica in &state.replicas {
                                if usable(replica) && !isr.contains(&replica) {
                                    isr.push(replica);
                                }
                            }
                            alter_isr(state, &isr, usable).unwrap()
                        }
                        Event::Preferred(p) if p % PICK == index % PICK => {
                            match elect_preferred(state, usable) {
                                Ok(change) => Some(change),
                                Err(ElectionError::ElectionNotNeeded) => {
                                    prop_assert!(state.has_preferred_leader());
                                    None
                                }
                                Err(_) => None,
                            }
                        }
                        _ => None,
                    };
                    if let Some(change) = change {
                        check(state, &change, unclean_allowed);
                        *state = change.state;
                    }
                    // Liveness: a partition is leaderless only while nobody can lead it.
                    if !state.has_leader() {
                        prop_assert!(!state.isr.iter().any(|&b| usable(b)), "{state:?}");
                        if unclean_allowed {
                            prop_assert!(!state.replicas.iter().any(|&b| usable(b)), "{state:?}");
                        }
                    } else {
                        prop_assert!(usable(state.leader), "a leader is never fenced or leaving");
                    }
                }
            }
        }
    }
}
