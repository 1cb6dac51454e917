//! Replica placement: which brokers hold the replicas of a new topic's partitions and of
//! partitions that CreatePartitions adds, and the checks on an assignment a client names.
//!
//! Automatic placement is Kafka's rack-unaware striping (`AdminUtils`
//! `assignReplicasToBrokersRackUnaware`, which the ZooKeeper controller used and the admin
//! tools still use; KRaft's `StripedReplicaPlacer` stripes the same way over racks): over
//! the sorted broker list, partition `p`'s first replica (its preferred leader) is broker
//! `(p + start_index) % n`, so leaders go round-robin; the other replicas follow it at a
//! distance `1 + (shift + j) % (n - 1)`, and the shift grows by one every `n` partitions,
//! so the partitions a broker leads have their followers spread over the other brokers.
//! Kafka draws the start index and the shift at random; here the caller draws them
//! ([`StripeStart`]) and placement is a pure function of its inputs.
//!
//! What this placement guarantees (the property tests check each): every partition gets
//! `replication_factor` distinct brokers; leaders differ by at most one partition between
//! brokers, for any partition count; when the partition count is a multiple of the broker
//! count every broker holds exactly `partitions * replication_factor / brokers` replicas,
//! and otherwise the counts differ by at most `replication_factor` (the last, partial
//! round of leaders covers only part of the list).
//!
//! Manual assignments are checked as KRaft's `ReplicationControlManager` checks them
//! (`validateManualPartitionAssignment`, `createTopic`, `createPartitions`), with its
//! messages, so a client sees the answers a Kafka controller gives.

use thiserror::Error;

use crate::BrokerId;

/// Where the stripe of a new topic starts. Kafka draws both numbers at random below the
/// broker count (`RAND.nextInt(brokers)`); values at or above it are taken modulo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeStart {
    /// Index, in the sorted broker list, of partition 0's first replica (its leader).
    pub start_index: usize,
    /// The follower shift of the first round of partitions (Kafka's `nextReplicaShift`):
    /// the second replica sits `1 + shift % (brokers - 1)` places after the first.
    pub replica_shift: usize,
}

/// The brokers an explicit assignment is checked against.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSets<'a> {
    /// Every registered broker, fenced or not: a manual assignment may name any of them.
    pub registered: &'a [BrokerId],
    /// Registered brokers that are unfenced and not in controlled shutdown: a new
    /// partition's ISR is its replicas among these, and must not be empty.
    pub usable: &'a [BrokerId],
}

/// Why a placement or an explicit assignment was refused. Each variant names the Kafka
/// error code it is answered with; the messages are Kafka's controller messages (without
/// the topic name, which the caller knows and these functions do not).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    /// Kafka's `INVALID_PARTITIONS` (37).
    #[error("Number of partitions was set to an invalid non-positive value.")]
    PartitionCountNotPositive { partition_count: i32 },
    /// Kafka's `INVALID_REPLICATION_FACTOR` (38).
    #[error("Replication factor must be larger than 0, or -1 to use the default value.")]
    ReplicationFactorNotPositive { replication_factor: i16 },
    /// Kafka's `INVALID_REPLICATION_FACTOR` (38): more replicas than brokers to hold them.
    #[error(
        "Unable to replicate the partition {replication_factor} time(s): The target \
         replication factor of {replication_factor} cannot be reached because only \
         {broker_count} broker(s) are registered."
    )]
    TooFewBrokers { replication_factor: i16, broker_count: usize },
    /// Kafka's `INVALID_PARTITIONS` (37): CreatePartitions asked for the current count.
    #[error("Topic already has {partition_count} partition(s).")]
    PartitionCountUnchanged { partition_count: usize },
    /// Kafka's `INVALID_PARTITIONS` (37): CreatePartitions asked for fewer partitions.
    #[error(
        "The topic currently has {partition_count_current} partition(s); \
         {partition_count} would not be an increase."
    )]
    PartitionCountDecrease { partition_count_current: usize, partition_count: i32 },
    /// Kafka's `UNKNOWN_SERVER_ERROR` (-1): CreatePartitions on a topic with no
    /// partitions, a state the controller never writes.
    #[error("Invalid state: the topic appears to have no partitions.")]
    NoExistingPartitions,
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39).
    #[error("The manual partition assignment includes an empty replica list.")]
    EmptyReplicaList,
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39).
    #[error(
        "The manual partition assignment includes broker {broker}, but no such broker is \
         registered."
    )]
    UnknownBroker { broker: BrokerId },
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39).
    #[error("The manual partition assignment includes the broker {broker} more than once.")]
    DuplicateBroker { broker: BrokerId },
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): partitions of one topic differ in length.
    #[error(
        "The manual partition assignment includes a partition with {replica_count} \
         replica(s), but this is not consistent with previous partitions, which have \
         {replication_factor} replica(s)."
    )]
    InconsistentReplicationFactor { replica_count: usize, replication_factor: usize },
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): CreateTopics named a partition twice.
    #[error("Found multiple manual partition assignments for partition {partition}")]
    MultipleAssignments { partition: i32 },
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): CreateTopics left a gap in the indexes.
    #[error("partitions should be a consecutive 0-based integer sequence")]
    NonConsecutivePartitions,
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): CreatePartitions assignments do not
    /// match the number of partitions added.
    #[error(
        "Attempted to add {additional} additional partition(s), but only \
         {assignment_count} assignment(s) were specified."
    )]
    AssignmentCountMismatch { additional: usize, assignment_count: usize },
    /// Kafka's `INVALID_REPLICA_ASSIGNMENT` (39): no replica could join the ISR.
    #[error(
        "All brokers specified in the manual partition assignment for partition \
         {partition} are fenced or in controlled shutdown."
    )]
    NoUsableReplica { partition: i32 },
}

/// Places the replicas of a new topic (CreateTopics without an explicit assignment):
/// partition `p` of the answer lists its replicas, preferred leader first.
///
/// `brokers` are the brokers that may hold replicas (live, unfenced); they are sorted and
/// deduplicated here, as Kafka sorts them by id before striping.
pub fn assign_replicas(
    partition_count: i32,
    replication_factor: i16,
    brokers: &[BrokerId],
    start: StripeStart,
) -> Result<Vec<Vec<BrokerId>>, PlacementError> {
    if partition_count < 1 {
        return Err(PlacementError::PartitionCountNotPositive { partition_count });
    }
    let brokers = sorted_distinct(brokers);
    let replication_factor_usize = check_replication_factor(replication_factor, &brokers)?;
    let count = usize::try_from(partition_count).expect("checked positive above");
    Ok(stripe(&brokers, Stripe { partition_first: 0, count, start }, replication_factor_usize))
}

/// Places the replicas of the partitions CreatePartitions adds to a topic whose current
/// assignment is `existing` (indexed by partition), growing it to `partition_count`.
///
/// The new partitions continue the topic's striping as Kafka's `AdminZkClient`
/// `createNewPartitionsAssignment` does: the replication factor is partition 0's, the
/// partition ids continue from `existing.len()`, and both the start index and the shift
/// are the index of the first sorted broker whose id is at least partition 0's first
/// replica (0 when there is none), so the leaders continue round-robin from there.
pub fn assign_partition_increase(
    existing: &[Vec<BrokerId>],
    partition_count: i32,
    brokers: &[BrokerId],
) -> Result<Vec<Vec<BrokerId>>, PlacementError> {
    let additional = check_partition_increase(existing.len(), partition_count)?;
    let brokers = sorted_distinct(brokers);
    let partition_zero = existing.first().ok_or(PlacementError::NoExistingPartitions)?;
    let replication_factor = i16::try_from(partition_zero.len()).unwrap_or(i16::MAX);
    let replication_factor_usize = check_replication_factor(replication_factor, &brokers)?;
    let leader_zero = partition_zero.first().copied().unwrap_or(BrokerId::MIN);
    let start_index = brokers.iter().position(|&broker| broker >= leader_zero).unwrap_or(0);
    let start = StripeStart { start_index, replica_shift: start_index };
    let stripe_spec = Stripe { partition_first: existing.len(), count: additional, start };
    Ok(stripe(&brokers, stripe_spec, replication_factor_usize))
}

/// Checks a CreatePartitions count against the topic's current partition count and
/// returns how many partitions are added (Kafka's `INVALID_PARTITIONS` otherwise).
pub fn check_partition_increase(
    partition_count_current: usize,
    partition_count: i32,
) -> Result<usize, PlacementError> {
    let requested = usize::try_from(partition_count).unwrap_or(0);
    if requested == partition_count_current && partition_count >= 0 {
        return Err(PlacementError::PartitionCountUnchanged {
            partition_count: partition_count_current,
        });
    }
    if partition_count < 0 || requested < partition_count_current {
        return Err(PlacementError::PartitionCountDecrease {
            partition_count_current,
            partition_count,
        });
    }
    Ok(requested - partition_count_current)
}

/// Checks one partition's explicit replica list as KRaft's
/// `validateManualPartitionAssignment` does, in its order: not empty; then, over the
/// brokers in ascending id order, each registered and none twice; then, when the topic's
/// replication factor is known, the list has that length. Reassignment targets are checked
/// with `replication_factor: None`, since a reassignment may change it.
pub fn validate_replicas(
    replicas: &[BrokerId],
    registered: &[BrokerId],
    replication_factor: Option<usize>,
) -> Result<(), PlacementError> {
    if replicas.is_empty() {
        return Err(PlacementError::EmptyReplicaList);
    }
    let mut sorted = replicas.to_vec();
    sorted.sort_unstable();
    let mut previous: Option<BrokerId> = None;
    for &broker in &sorted {
        if !registered.contains(&broker) {
            return Err(PlacementError::UnknownBroker { broker });
        }
        if previous == Some(broker) {
            return Err(PlacementError::DuplicateBroker { broker });
        }
        previous = Some(broker);
    }
    match replication_factor {
        Some(replication_factor) if replication_factor != replicas.len() => {
            Err(PlacementError::InconsistentReplicationFactor {
                replica_count: replicas.len(),
                replication_factor,
            })
        }
        _ => Ok(()),
    }
}

/// Checks the explicit assignment of a CreateTopics request, given as
/// `(partition index, replicas)` pairs in request order, and returns the replica lists
/// indexed by partition. As in KRaft's `createTopic`: each list is checked against the
/// first one's length, no partition is named twice, every partition has a usable replica
/// (its ISR would be empty otherwise), and the indexes are exactly `0..count`.
pub fn validate_create_topic_assignment(
    assignments: &[(i32, Vec<BrokerId>)],
    brokers: BrokerSets<'_>,
) -> Result<Vec<Vec<BrokerId>>, PlacementError> {
    let mut by_partition: std::collections::BTreeMap<i32, &Vec<BrokerId>> =
        std::collections::BTreeMap::new();
    let mut replication_factor: Option<usize> = None;
    for (partition, replicas) in assignments {
        if by_partition.contains_key(partition) {
            return Err(PlacementError::MultipleAssignments { partition: *partition });
        }
        validate_replicas(replicas, brokers.registered, replication_factor)?;
        replication_factor = Some(replicas.len());
        if !replicas.iter().any(|broker| brokers.usable.contains(broker)) {
            return Err(PlacementError::NoUsableReplica { partition: *partition });
        }
        by_partition.insert(*partition, replicas);
    }
    let consecutive = by_partition
        .keys()
        .enumerate()
        .all(|(index, &partition)| usize::try_from(partition).is_ok_and(|p| p == index));
    if !consecutive {
        return Err(PlacementError::NonConsecutivePartitions);
    }
    Ok(by_partition.into_values().cloned().collect())
}

/// Checks the explicit assignments of a CreatePartitions request for a topic whose current
/// assignment is `existing`, growing it to `partition_count`, as KRaft's
/// `createPartitions` does: one assignment per added partition, each a valid list of the
/// topic's replication factor (partition 0's) with at least one usable replica.
pub fn validate_create_partitions_assignment(
    existing: &[Vec<BrokerId>],
    partition_count: i32,
    assignments: &[Vec<BrokerId>],
    brokers: BrokerSets<'_>,
) -> Result<Vec<Vec<BrokerId>>, PlacementError> {
    let additional = check_partition_increase(existing.len(), partition_count)?;
    let partition_zero = existing.first().ok_or(PlacementError::NoExistingPartitions)?;
    if assignments.len() != additional {
        return Err(PlacementError::AssignmentCountMismatch {
            additional,
            assignment_count: assignments.len(),
        });
    }
    let replication_factor = Some(partition_zero.len());
    for (offset, replicas) in assignments.iter().enumerate() {
        validate_replicas(replicas, brokers.registered, replication_factor)?;
        if !replicas.iter().any(|broker| brokers.usable.contains(broker)) {
            let partition = i32::try_from(existing.len() + offset).unwrap_or(i32::MAX);
            return Err(PlacementError::NoUsableReplica { partition });
        }
    }
    Ok(assignments.to_vec())
}

/// Which partitions one striping pass places.
#[derive(Debug, Clone, Copy)]
struct Stripe {
    partition_first: usize,
    count: usize,
    start: StripeStart,
}

/// The striping itself, written from the description of `assignReplicasToBrokersRackUnaware`.
/// `brokers` is sorted, distinct and at least `replication_factor` long.
fn stripe(brokers: &[BrokerId], stripe: Stripe, replication_factor: usize) -> Vec<Vec<BrokerId>> {
    let broker_count = brokers.len();
    assert!(replication_factor >= 1);
    assert!(replication_factor <= broker_count);
    let start_index = stripe.start.start_index % broker_count;
    let mut shift = stripe.start.replica_shift % broker_count;
    let mut assignment = Vec::with_capacity(stripe.count);
    for partition in stripe.partition_first..stripe.partition_first + stripe.count {
        // A new round of leaders: move the followers one place further, so that the
        // brokers following a given leader change from round to round.
        if partition > 0 && partition % broker_count == 0 {
            shift += 1;
        }
        let leader_index = (partition + start_index) % broker_count;
        let mut replicas = Vec::with_capacity(replication_factor);
        replicas.push(brokers[leader_index]);
        for follower in 0..replication_factor - 1 {
            // Distances 1..broker_count-1, distinct for distinct followers because
            // replication_factor - 1 <= broker_count - 1: no broker is named twice.
            let distance = 1 + (shift + follower) % (broker_count - 1);
            replicas.push(brokers[(leader_index + distance) % broker_count]);
        }
        assignment.push(replicas);
    }
    assignment
}

fn check_replication_factor(
    replication_factor: i16,
    brokers: &[BrokerId],
) -> Result<usize, PlacementError> {
    let Ok(replication_factor_usize) = usize::try_from(replication_factor) else {
        return Err(PlacementError::ReplicationFactorNotPositive { replication_factor });
    };
    if replication_factor_usize == 0 {
        return Err(PlacementError::ReplicationFactorNotPositive { replication_factor });
    }
    if replication_factor_usize > brokers.len() {
        return Err(PlacementError::TooFewBrokers {
            replication_factor,
            broker_count: brokers.len(),
        });
    }
    Ok(replication_factor_usize)
}

fn sorted_distinct(brokers: &[BrokerId]) -> Vec<BrokerId> {
    let mut sorted = brokers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const START_ZERO: StripeStart = StripeStart { start_index: 0, replica_shift: 0 };

    #[test]
    fn stripes_as_kafkas_documented_example() {
        // The table in Kafka's AdminUtils doc comment: 5 brokers, 10 partitions, RF 3,
        // start index 0 and shift 0 (p0..p4 first replicas on brokers 0..4, p5..p9 again).
        let assignment = assign_replicas(10, 3, &[0, 1, 2, 3, 4], START_ZERO).unwrap();
        let expected: Vec<Vec<BrokerId>> = vec![
            vec![0, 1, 2],
            vec![1, 2, 3],
            vec![2, 3, 4],
            vec![3, 4, 0],
            vec![4, 0, 1],
            // Second round: the shift grew to 1, followers start two places on.
            vec![0, 2, 3],
            vec![1, 3, 4],
            vec![2, 4, 0],
            vec![3, 0, 1],
            vec![4, 1, 2],
        ];
        assert_eq!(assignment, expected);
    }

    #[test]
    fn start_index_and_shift_move_leaders_and_followers() {
        let start = StripeStart { start_index: 2, replica_shift: 1 };
        let assignment = assign_replicas(3, 2, &[10, 20, 30, 40], start).unwrap();
        assert_eq!(assignment, vec![vec![30, 10], vec![40, 20], vec![10, 30]]);
    }

    #[test]
    fn brokers_are_sorted_before_striping() {
        let sorted = assign_replicas(6, 2, &[1, 2, 3], START_ZERO).unwrap();
        let unsorted = assign_replicas(6, 2, &[3, 1, 2, 2], START_ZERO).unwrap();
        assert_eq!(sorted, unsorted);
    }

    #[test]
    fn refuses_more_replicas_than_brokers_with_kafkas_message() {
        let error = assign_replicas(1, 3, &[1, 2], START_ZERO).unwrap_err();
        assert_eq!(error, PlacementError::TooFewBrokers { replication_factor: 3, broker_count: 2 });
        assert_eq!(
            error.to_string(),
            "Unable to replicate the partition 3 time(s): The target replication factor of 3 \
             cannot be reached because only 2 broker(s) are registered."
        );
        let error = assign_replicas(1, 1, &[], START_ZERO).unwrap_err();
        assert_eq!(error, PlacementError::TooFewBrokers { replication_factor: 1, broker_count: 0 });
    }

    #[test]
    fn refuses_non_positive_counts() {
        assert_eq!(
            assign_replicas(0, 1, &[1], START_ZERO).unwrap_err(),
            PlacementError::PartitionCountNotPositive { partition_count: 0 }
        );
        assert_eq!(
            assign_replicas(1, 0, &[1], START_ZERO).unwrap_err(),
            PlacementError::ReplicationFactorNotPositive { replication_factor: 0 }
        );
        assert_eq!(
            assign_replicas(1, -1, &[1], START_ZERO).unwrap_err(),
            PlacementError::ReplicationFactorNotPositive { replication_factor: -1 }
        );
    }

    #[test]
    fn partition_increase_continues_the_stripe() {
        // A topic made with start index 1 on brokers 0..3: partition 0 led by broker 1.
        let brokers = [0, 1, 2, 3];
        let start = StripeStart { start_index: 1, replica_shift: 1 };
        let existing = assign_replicas(2, 2, &brokers, start).unwrap();
        assert_eq!(existing, vec![vec![1, 3], vec![2, 0]]);
        let added = assign_partition_increase(&existing, 5, &brokers).unwrap();
        // Kafka: start index = index of the first broker >= 1 = 1, shift 1, partition ids
        // 2, 3, 4; leaders (p + 1) % 4 continue where the topic left off.
        assert_eq!(added, vec![vec![3, 1], vec![0, 2], vec![1, 0]]);
        let leaders: Vec<BrokerId> = existing.iter().chain(&added).map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 0, 1]);
    }

    #[test]
    fn partition_increase_when_partition_zeros_leader_is_gone() {
        // Partition 0's leader (broker 9) is above every live broker: start at index 0.
        let added = assign_partition_increase(&[vec![9, 1]], 3, &[1, 2, 3]).unwrap();
        assert_eq!(added, vec![vec![2, 3], vec![3, 1]]);
    }

    #[test]
    fn partition_increase_refuses_no_increase_and_too_few_brokers() {
        let existing = vec![vec![1, 2], vec![2, 1]];
        let error = assign_partition_increase(&existing, 2, &[1, 2]).unwrap_err();
        assert_eq!(error, PlacementError::PartitionCountUnchanged { partition_count: 2 });
        assert_eq!(error.to_string(), "Topic already has 2 partition(s).");
        let error = assign_partition_increase(&existing, 1, &[1, 2]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "The topic currently has 2 partition(s); 1 would not be an increase."
        );
        assert_eq!(
            assign_partition_increase(&existing, -5, &[1, 2]).unwrap_err(),
            PlacementError::PartitionCountDecrease {
                partition_count_current: 2,
                partition_count: -5
            }
        );
        assert_eq!(
            assign_partition_increase(&[], 3, &[1]).unwrap_err(),
            PlacementError::NoExistingPartitions
        );
        assert_eq!(
            assign_partition_increase(&existing, 3, &[1]).unwrap_err(),
            PlacementError::TooFewBrokers { replication_factor: 2, broker_count: 1 }
        );
    }

    #[test]
    fn validate_replicas_checks_in_kafkas_order() {
        let registered = [1, 2, 3];
        assert_eq!(
            validate_replicas(&[], &registered, None),
            Err(PlacementError::EmptyReplicaList)
        );
        assert_eq!(
            validate_replicas(&[3, 1, 3], &registered, None),
            Err(PlacementError::DuplicateBroker { broker: 3 })
        );
        // Ascending order: broker 2 is seen twice before broker 7 is found unknown.
        assert_eq!(
            validate_replicas(&[7, 2, 2], &registered, None),
            Err(PlacementError::DuplicateBroker { broker: 2 })
        );
        assert_eq!(
            validate_replicas(&[7, 1], &registered, None),
            Err(PlacementError::UnknownBroker { broker: 7 })
        );
        assert_eq!(
            validate_replicas(&[1, 2], &registered, Some(3)),
            Err(PlacementError::InconsistentReplicationFactor {
                replica_count: 2,
                replication_factor: 3
            })
        );
        assert_eq!(validate_replicas(&[2, 1, 3], &registered, Some(3)), Ok(()));
        assert_eq!(
            PlacementError::UnknownBroker { broker: 7 }.to_string(),
            "The manual partition assignment includes broker 7, but no such broker is registered."
        );
        assert_eq!(
            PlacementError::DuplicateBroker { broker: 3 }.to_string(),
            "The manual partition assignment includes the broker 3 more than once."
        );
    }

    #[test]
    fn create_topic_assignment_is_ordered_and_checked() {
        let brokers = BrokerSets { registered: &[1, 2, 3], usable: &[1, 2] };
        let assignment =
            validate_create_topic_assignment(&[(1, vec![2, 3]), (0, vec![1, 2])], brokers).unwrap();
        assert_eq!(assignment, vec![vec![1, 2], vec![2, 3]]);

        let twice = validate_create_topic_assignment(&[(0, vec![1]), (0, vec![2])], brokers);
        assert_eq!(twice, Err(PlacementError::MultipleAssignments { partition: 0 }));
        let gap = validate_create_topic_assignment(&[(0, vec![1]), (2, vec![2])], brokers);
        assert_eq!(gap, Err(PlacementError::NonConsecutivePartitions));
        let negative = validate_create_topic_assignment(&[(-1, vec![1])], brokers);
        assert_eq!(negative, Err(PlacementError::NonConsecutivePartitions));
        let lengths = validate_create_topic_assignment(&[(0, vec![1, 2]), (1, vec![2])], brokers);
        assert_eq!(
            lengths,
            Err(PlacementError::InconsistentReplicationFactor {
                replica_count: 1,
                replication_factor: 2
            })
        );
        let fenced_only = validate_create_topic_assignment(&[(0, vec![3])], brokers);
        assert_eq!(fenced_only, Err(PlacementError::NoUsableReplica { partition: 0 }));
    }

    #[test]
    fn create_partitions_assignment_is_checked() {
        let brokers = BrokerSets { registered: &[1, 2, 3], usable: &[1, 2, 3] };
        let existing = vec![vec![1, 2]];
        let added =
            validate_create_partitions_assignment(&existing, 3, &[vec![2, 3], vec![3, 1]], brokers)
                .unwrap();
        assert_eq!(added, vec![vec![2, 3], vec![3, 1]]);
        let error = validate_create_partitions_assignment(&existing, 3, &[vec![2, 3]], brokers)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Attempted to add 2 additional partition(s), but only 1 assignment(s) were specified."
        );
        let error = validate_create_partitions_assignment(&existing, 2, &[vec![3]], brokers);
        assert_eq!(
            error,
            Err(PlacementError::InconsistentReplicationFactor {
                replica_count: 1,
                replication_factor: 2
            })
        );
        let fenced = BrokerSets { registered: &[1, 2, 3], usable: &[1] };
        let error = validate_create_partitions_assignment(&existing, 2, &[vec![2, 3]], fenced);
        assert_eq!(error, Err(PlacementError::NoUsableReplica { partition: 1 }));
    }

    fn counts(assignment: &[Vec<BrokerId>], leaders_only: bool) -> BTreeMap<BrokerId, usize> {
        let mut counts = BTreeMap::new();
        for replicas in assignment {
            let taken = if leaders_only { 1 } else { replicas.len() };
            for &broker in &replicas[..taken] {
                *counts.entry(broker).or_insert(0) += 1;
            }
        }
        counts
    }

    fn spread(counts: &BTreeMap<BrokerId, usize>, brokers: &[BrokerId]) -> usize {
        let all: Vec<usize> =
            brokers.iter().map(|broker| counts.get(broker).copied().unwrap_or(0)).collect();
        all.iter().max().unwrap() - all.iter().min().unwrap()
    }

    proptest! {
        #[test]
        fn placement_properties(
            broker_count in 1usize..12,
            partition_count in 1i32..100,
            replication_factor_seed in 0usize..12,
            start_index in 0usize..24,
            replica_shift in 0usize..24,
        ) {
            let brokers: Vec<BrokerId> = (0..broker_count).map(|b| 100 + 3 * b as BrokerId).collect();
            let replication_factor = 1 + replication_factor_seed % broker_count;
            let rf = i16::try_from(replication_factor).unwrap();
            let start = StripeStart { start_index, replica_shift };
            let assignment = assign_replicas(partition_count, rf, &brokers, start).unwrap();
            prop_assert_eq!(assignment.len(), partition_count as usize);
            for replicas in &assignment {
                prop_assert_eq!(replicas.len(), replication_factor);
                let distinct: BTreeSet<BrokerId> = replicas.iter().copied().collect();
                prop_assert_eq!(distinct.len(), replication_factor);
                prop_assert!(replicas.iter().all(|broker| brokers.contains(broker)));
            }
            // Leaders go round-robin: at most one apart, whatever the partition count.
            prop_assert!(spread(&counts(&assignment, true), &brokers) <= 1);
            let replica_spread = spread(&counts(&assignment, false), &brokers);
            if partition_count as usize % broker_count == 0 {
                prop_assert_eq!(replica_spread, 0);
            } else {
                prop_assert!(replica_spread <= replication_factor);
            }
        }

        #[test]
        fn partition_increase_properties(
            broker_count in 1usize..10,
            partition_count in 1i32..40,
            added in 1i32..40,
            replication_factor_seed in 0usize..10,
            start_index in 0usize..10,
        ) {
            let brokers: Vec<BrokerId> = (0..broker_count as BrokerId).collect();
            let replication_factor = 1 + replication_factor_seed % broker_count;
            let rf = i16::try_from(replication_factor).unwrap();
            let start = StripeStart { start_index, replica_shift: start_index };
            let existing = assign_replicas(partition_count, rf, &brokers, start).unwrap();
            let new = assign_partition_increase(&existing, partition_count + added, &brokers).unwrap();
            prop_assert_eq!(new.len(), added as usize);
            for replicas in &new {
                let distinct: BTreeSet<BrokerId> = replicas.iter().copied().collect();
                prop_assert_eq!(distinct.len(), replication_factor);
            }
            // The new partitions' leaders go round-robin too.
            prop_assert!(spread(&counts(&new, true), &brokers) <= 1);
        }
    }
}
