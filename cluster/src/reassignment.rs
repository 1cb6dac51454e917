//! Partition reassignment (KIP-455) as KRaft runs it: AlterPartitionReassignments starts
//! one by widening the replica set, the ISR catching up completes it, and a cancellation
//! reverts it. Each step is a [`PartitionChange`] built by [`crate::election`]'s change
//! builder, as Kafka's `ReplicationControlManager` builds them with `PartitionChangeBuilder`.
//!
//! The steps (Kafka's `changePartitionReassignment`, `PartitionReassignmentReplicas`,
//! `cancelPartitionReassignment`, `PartitionReassignmentRevert`):
//! 1. [`start`]: the replicas become the target followed by the replicas being removed;
//!    `adding = target - current`, `removing = current - target` (both in ascending broker
//!    order, as Kafka keeps them in a sorted set). The new replicas start fetching.
//! 2. Progress: every change to the partition (an AlterPartition ISR from the leader,
//!    [`crate::election::alter_isr`], or a broker fenced) first checks
//!    [`complete_if_ready`]: once every target replica is in the ISR (the ISR without the
//!    removing replicas must hold all of the target, and not be empty), the replicas become
//!    the target, the ISR loses the removed replicas, adding and removing empty, and a
//!    leader that was removed is replaced from the target. Removing replicas bumps the leader
//!    epoch even when the leader stays. A start whose target is already in sync (a reorder,
//!    or shrinking the replication factor) completes in the same change.
//! 3. [`cancel`]: back to the replicas before the reassignment (the replicas without the
//!    adding ones, in their order), the ISR without the adding ones. If that ISR would be
//!    empty (only adding replicas were in sync), Kafka puts the first original replica in it,
//!    which is an unclean election and is refused unless unclean election is allowed.
//!
//! A reassignment started while another is in progress is computed against the current,
//! widened replica list, as Kafka does; Sluice sets adding and removing to the new plan's
//! even when one of them is empty (Kafka's builder keeps the previous plan's list then).

use thiserror::Error;

use crate::election::{self, ChangeTarget, Election, PartitionChange, PartitionState};
use crate::placement::{self, PlacementError};
use crate::BrokerId;

/// The replica lists of a reassignment (Kafka's `PartitionReassignmentReplicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassignmentReplicas {
    /// The target replicas, then the ones being removed.
    pub replicas: Vec<BrokerId>,
    /// Target replicas not in the current list, ascending.
    pub adding: Vec<BrokerId>,
    /// Current replicas not in the target, ascending.
    pub removing: Vec<BrokerId>,
}

impl ReassignmentReplicas {
    /// The lists for moving a partition from `current` to `target` replicas.
    pub fn new(current: &[BrokerId], target: &[BrokerId]) -> Self {
        let removing = sorted_difference(current, target);
        let adding = sorted_difference(target, current);
        let mut replicas = target.to_vec();
        replicas.extend_from_slice(&removing);
        Self { replicas, adding, removing }
    }
}

/// A reassignment's final replicas and ISR (Kafka's `CompletedReassignment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedReassignment {
    /// The target replicas, in the target's order.
    pub replicas: Vec<BrokerId>,
    /// The ISR without the removed replicas; holds every target replica.
    pub isr: Vec<BrokerId>,
}

/// Why a reassignment could not start or be cancelled, with the Kafka error code it is
/// answered with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReassignmentError {
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): the target is empty, names a broker twice
    /// or names an unregistered broker.
    #[error(transparent)]
    InvalidTarget(#[from] PlacementError),
    /// Kafka's `NO_REASSIGNMENT_IN_PROGRESS` (85): a cancellation with nothing to cancel.
    #[error("No partition reassignment is in progress.")]
    NoReassignmentInProgress,
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): only replicas being added are in sync, and
    /// unclean leader election is not allowed for the topic.
    #[error(
        "Unable to revert the partition assignment because it would require an unclean \
         leader election."
    )]
    UncleanRevertRefused,
}

/// Kafka's `maybeCompleteReassignment`: given a partition's replica lists and the ISR a
/// change is about to write, the final replicas and ISR if the reassignment is complete.
/// `None` when no reassignment is in progress or some target replica is not in sync.
pub fn complete_if_ready(
    replicas: &[BrokerId],
    adding: &[BrokerId],
    removing: &[BrokerId],
    isr: &[BrokerId],
) -> Option<CompletedReassignment> {
    if adding.is_empty() && removing.is_empty() {
        return None;
    }
    let isr_new: Vec<BrokerId> =
        isr.iter().copied().filter(|member| !removing.contains(member)).collect();
    let replicas_new: Vec<BrokerId> =
        replicas.iter().copied().filter(|replica| !removing.contains(replica)).collect();
    if isr_new.is_empty() || replicas_new.is_empty() {
        return None;
    }
    if !replicas_new.iter().all(|replica| isr_new.contains(replica)) {
        return None;
    }
    Some(CompletedReassignment { replicas: replicas_new, isr: isr_new })
}

/// AlterPartitionReassignments with target replicas: checks the target as Kafka checks a
/// manual assignment (without a replication factor, which a reassignment may change) and
/// returns the change that starts the reassignment, or completes it at once when the target
/// is already in sync. `None` when the target is the current replica list.
pub fn start(
    state: &PartitionState,
    target: &[BrokerId],
    registered: &[BrokerId],
    usable: impl Fn(BrokerId) -> bool,
) -> Result<Option<PartitionChange>, ReassignmentError> {
    placement::validate_replicas(target, registered, None)?;
    let plan = ReassignmentReplicas::new(&state.replicas, target);
    let mut change_target = ChangeTarget::unchanged(state, Election::Online);
    change_target.replicas = plan.replicas;
    change_target.adding = plan.adding;
    change_target.removing = plan.removing;
    Ok(election::build(state, change_target, &usable))
}

/// AlterPartitionReassignments with null replicas: cancels the reassignment in progress
/// and returns the change back to the original replicas.
pub fn cancel(
    state: &PartitionState,
    usable: impl Fn(BrokerId) -> bool,
    unclean_leader_election: bool,
) -> Result<Option<PartitionChange>, ReassignmentError> {
    if !state.is_reassigning() {
        return Err(ReassignmentError::NoReassignmentInProgress);
    }
    let original: Vec<BrokerId> = state
        .replicas
        .iter()
        .copied()
        .filter(|replica| !state.adding_replicas.contains(replica))
        .collect();
    let mut isr: Vec<BrokerId> = state
        .isr
        .iter()
        .copied()
        .filter(|member| !state.adding_replicas.contains(member))
        .collect();
    if isr.is_empty() {
        if !unclean_leader_election {
            return Err(ReassignmentError::UncleanRevertRefused);
        }
        // The adding replicas always come from outside the original list, so the original
        // list is the pre-reassignment one and was never empty.
        let first = *original.first().expect("a partition had replicas before reassigning");
        isr.push(first);
    }
    let election = if unclean_leader_election { Election::Unclean } else { Election::Online };
    let change_target = ChangeTarget {
        isr,
        replicas: original,
        adding: Vec::new(),
        removing: Vec::new(),
        election,
    };
    Ok(election::build(state, change_target, &usable))
}

fn sorted_difference(from: &[BrokerId], without: &[BrokerId]) -> Vec<BrokerId> {
    let mut difference: Vec<BrokerId> =
        from.iter().copied().filter(|broker| !without.contains(broker)).collect();
    difference.sort_unstable();
    difference.dedup();
    difference
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::election::{alter_isr, handle_broker_fenced, NO_LEADER};

    const REGISTERED: &[BrokerId] = &[1, 2, 3, 4, 5, 6];

    fn partition(replicas: &[BrokerId], isr: &[BrokerId], leader: BrokerId) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: 3,
            partition_epoch: 7,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    #[test]
    fn replica_lists_of_a_move() {
        let plan = ReassignmentReplicas::new(&[3, 1, 2], &[5, 2, 4]);
        assert_eq!(plan.replicas, vec![5, 2, 4, 1, 3]);
        assert_eq!(plan.adding, vec![4, 5]);
        assert_eq!(plan.removing, vec![1, 3]);
    }

    #[test]
    fn move_to_new_brokers_waits_for_them_then_completes() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let started = start(&state, &[4, 5, 6], REGISTERED, |_| true).unwrap().unwrap();
        assert_eq!(started.replicas, Some(vec![4, 5, 6, 1, 2, 3]));
        assert_eq!(started.adding_replicas, Some(vec![4, 5, 6]));
        assert_eq!(started.removing_replicas, Some(vec![1, 2, 3]));
        assert_eq!(started.leader, None, "adding replicas does not bump the leader epoch");
        assert_eq!(started.state.partition_epoch, 8);
        let state = started.state;

        // Two of three new replicas in sync: not yet.
        let partial = alter_isr(&state, &[1, 2, 3, 4, 5], |_| true).unwrap().unwrap();
        assert_eq!(partial.state.replicas, vec![4, 5, 6, 1, 2, 3]);
        assert_eq!(partial.state.isr, vec![1, 2, 3, 4, 5]);
        assert!(partial.state.is_reassigning());

        // All in sync: the old replicas go, and the leader (removed) is replaced.
        let state = partial.state;
        let done = alter_isr(&state, &[1, 2, 3, 4, 5, 6], |_| true).unwrap().unwrap();
        assert_eq!(done.replicas, Some(vec![4, 5, 6]));
        assert_eq!(done.isr, Some(vec![4, 5, 6]));
        assert_eq!(done.adding_replicas, Some(vec![]));
        assert_eq!(done.removing_replicas, Some(vec![]));
        assert_eq!(done.leader, Some(4));
        assert_eq!(done.state.leader_epoch, 4);
        assert!(!done.state.is_reassigning());
    }

    #[test]
    fn completion_keeps_a_leader_in_the_target_but_bumps_its_epoch() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let started = start(&state, &[1, 4], REGISTERED, |_| true).unwrap().unwrap();
        assert_eq!(started.state.replicas, vec![1, 4, 2, 3]);
        let done = alter_isr(&started.state, &[1, 2, 3, 4], |_| true).unwrap().unwrap();
        assert_eq!(done.state.replicas, vec![1, 4]);
        assert_eq!(done.state.isr, vec![1, 4]);
        assert_eq!(done.leader, Some(1), "the leader field is set to force the bump");
        assert_eq!(done.state.leader, 1);
        assert_eq!(done.state.leader_epoch, 4);
    }

    #[test]
    fn shrinking_the_replication_factor_completes_at_once() {
        // 3 -> 1: the target replica is in sync already.
        let state = partition(&[1, 2, 3], &[1, 2, 3], 2);
        let done = start(&state, &[3], REGISTERED, |_| true).unwrap().unwrap();
        assert_eq!(done.state.replicas, vec![3]);
        assert_eq!(done.state.isr, vec![3]);
        assert_eq!(done.state.leader, 3);
        assert_eq!(done.state.leader_epoch, 4);
        assert!(!done.state.is_reassigning());
        assert_eq!(done.adding_replicas, None, "never set, so not written");
        assert_eq!(done.removing_replicas, None);
    }

    #[test]
    fn growing_the_replication_factor_waits_for_the_new_replicas() {
        // 1 -> 3.
        let state = partition(&[1], &[1], 1);
        let started = start(&state, &[1, 2, 3], REGISTERED, |_| true).unwrap().unwrap();
        assert_eq!(started.state.replicas, vec![1, 2, 3]);
        assert_eq!(started.state.adding_replicas, vec![2, 3]);
        assert!(started.state.removing_replicas.is_empty());
        let partial = alter_isr(&started.state, &[1, 2], |_| true).unwrap().unwrap();
        assert!(partial.state.is_reassigning());
        let done = alter_isr(&partial.state, &[1, 2, 3], |_| true).unwrap().unwrap();
        assert_eq!(done.state.replicas, vec![1, 2, 3]);
        assert_eq!(done.state.isr, vec![1, 2, 3]);
        assert!(!done.state.is_reassigning());
        assert_eq!(done.leader, None, "nothing removed, same leader: no leader epoch bump");
        assert_eq!(done.state.leader_epoch, 3);
    }

    #[test]
    fn reordering_completes_at_once_and_same_target_is_no_change() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let reordered = start(&state, &[3, 2, 1], REGISTERED, |_| true).unwrap().unwrap();
        assert_eq!(reordered.replicas, Some(vec![3, 2, 1]));
        assert_eq!(reordered.leader, None);
        assert!(!reordered.state.is_reassigning());
        assert_eq!(start(&state, &[1, 2, 3], REGISTERED, |_| true).unwrap(), None);
    }

    #[test]
    fn target_is_validated() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let empty = start(&state, &[], REGISTERED, |_| true).unwrap_err();
        assert_eq!(empty, ReassignmentError::InvalidTarget(PlacementError::EmptyReplicaList));
        let twice = start(&state, &[4, 4], REGISTERED, |_| true).unwrap_err();
        assert_eq!(
            twice,
            ReassignmentError::InvalidTarget(PlacementError::DuplicateBroker { broker: 4 })
        );
        let unknown = start(&state, &[1, 9], REGISTERED, |_| true).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "The manual partition assignment includes broker 9, but no such broker is registered."
        );
    }

    #[test]
    fn cancel_goes_back_to_the_original_replicas() {
        let state = partition(&[1, 2, 3], &[1, 2, 3], 1);
        let started = start(&state, &[4, 5, 3], REGISTERED, |_| true).unwrap().unwrap();
        let partial = alter_isr(&started.state, &[1, 2, 3, 4], |_| true).unwrap().unwrap();
        let cancelled = cancel(&partial.state, |_| true, false).unwrap().unwrap();
        // Kafka's original replicas are the widened list without the adding ones, so the
        // order is the target's, then the removed ones': not the order before.
        assert_eq!(cancelled.state.replicas, vec![3, 1, 2]);
        assert_eq!(cancelled.state.isr, vec![1, 2, 3]);
        assert!(!cancelled.state.is_reassigning());
        assert_eq!(cancelled.state.leader, 1);
        // Broker 4 (added) left the replica set: the leader epoch goes up.
        assert_eq!(cancelled.state.leader_epoch, 4);
        assert_eq!(
            cancel(&cancelled.state, |_| true, false),
            Err(ReassignmentError::NoReassignmentInProgress)
        );
    }

    #[test]
    fn cancel_that_needs_an_unclean_election() {
        // Only the added replica is in sync (the originals were fenced and dropped).
        let mut state = partition(&[4, 1, 2], &[4], 4);
        state.adding_replicas = vec![4];
        state.removing_replicas = vec![1, 2];
        assert_eq!(
            cancel(&state, |broker| broker != 1, false),
            Err(ReassignmentError::UncleanRevertRefused)
        );
        let reverted = cancel(&state, |broker| broker != 1, true).unwrap().unwrap();
        assert_eq!(reverted.state.replicas, vec![1, 2]);
        // Kafka puts the first original replica in the ISR; it is fenced, so the unclean
        // election takes the next usable replica and the ISR becomes just it.
        assert_eq!(reverted.state.leader, 2);
        assert_eq!(reverted.state.isr, vec![2]);
        assert!(reverted.unclean);
    }

    #[test]
    fn fencing_during_a_reassignment_keeps_it_going() {
        let state = partition(&[1, 2], &[1, 2], 1);
        let started = start(&state, &[3, 4], REGISTERED, |_| true).unwrap().unwrap();
        let fenced = handle_broker_fenced(&started.state, 1, |b| b != 1, false).unwrap();
        assert_eq!(fenced.state.leader, 2, "the removing replica 2 still leads");
        assert_eq!(fenced.state.isr, vec![2]);
        assert!(fenced.state.is_reassigning());
        let done = alter_isr(&fenced.state, &[2, 3, 4], |b| b != 1).unwrap().unwrap();
        assert_eq!(done.state.replicas, vec![3, 4]);
        assert_eq!(done.state.leader, 3);
        assert_ne!(done.state.leader, NO_LEADER);
    }

    #[test]
    fn complete_if_ready_needs_every_target_replica_in_sync() {
        assert_eq!(complete_if_ready(&[1, 2], &[], &[], &[1, 2]), None, "nothing in progress");
        assert_eq!(complete_if_ready(&[3, 1], &[3], &[1], &[1]), None);
        assert_eq!(complete_if_ready(&[3, 1], &[3], &[1], &[1, 3]).unwrap().isr, vec![3]);
        // Removing everything in sync leaves an empty ISR: never complete.
        assert_eq!(complete_if_ready(&[3, 1], &[], &[1], &[1]), None);
    }
}
