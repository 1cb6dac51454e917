#![allow(clippy::unwrap_used)]

use super::*;

fn settings() -> Settings {
    Settings::for_tests(9_000)
}

/// A controller and the image its decisions are stored into, as the quorum thread keeps
/// them (minus Raft).
struct Cluster {
    image: MetadataImage,
    controller: Controller,
    epochs: std::collections::BTreeMap<BrokerId, i64>,
}

impl Cluster {
    fn new() -> Self {
        let image = MetadataImage::default();
        let controller = Controller::new(settings(), &image, 0, 7);
        Cluster { image, controller, epochs: Default::default() }
    }

    fn store(&mut self, records: &[MetadataRecord]) {
        for record in records {
            self.image.apply(record).unwrap();
        }
    }

    fn register(&mut self, broker: BrokerId, incarnation: u8, now: u64) -> i64 {
        let endpoint = BrokerEndpoint { name: "PLAINTEXT".into(), host: "h".into(), port: 9000 };
        let decision = self
            .controller
            .register(&self.image, broker, [incarnation; 16], vec![endpoint], None, now)
            .unwrap();
        self.store(&decision.records);
        self.epochs.insert(broker, decision.answer);
        decision.answer
    }

    /// A heartbeat from a broker that has applied everything so far.
    fn heartbeat(&mut self, broker: BrokerId, shutdown: bool, now: u64) -> (bool, bool) {
        let offset = self.image.offset();
        let epoch = self.epochs[&broker];
        let decision =
            self.controller.heartbeat(&self.image, broker, epoch, offset, shutdown, now).unwrap();
        self.store(&decision.records);
        decision.answer
    }

    fn write(&mut self, intents: Vec<Intent>) -> Vec<Outcome> {
        let decision = self.controller.write(&self.image, &intents, false);
        self.store(&decision.records);
        decision.answer
    }

    fn partition(&self, topic: &str, partition: i32) -> PartitionRecord {
        self.image.topic(topic).unwrap().placement(partition).unwrap().clone()
    }

    fn with_brokers(ids: &[BrokerId]) -> Self {
        let mut cluster = Cluster::new();
        for &id in ids {
            cluster.register(id, 1, 0);
            let (fenced, _) = cluster.heartbeat(id, false, 0);
            assert!(!fenced, "broker {id} caught up and is unfenced");
        }
        cluster
    }
}

fn topic(name: &str, partitions: i32, replication_factor: i16) -> Intent {
    Intent::CreateTopic(NewTopic {
        name: name.into(),
        topic_id: [name.len() as u8 + partitions as u8; 16],
        partitions,
        replication_factor,
        assignments: vec![],
        configs: vec![],
    })
}

#[test]
fn a_broker_is_fenced_until_it_has_caught_up_with_its_registration() {
    let mut cluster = Cluster::new();
    let epoch = cluster.register(1, 1, 0);
    assert_eq!(epoch, 0, "the epoch is the registration record's offset");
    assert!(cluster.image.broker(1).unwrap().fenced);
    let decision = cluster.controller.heartbeat(&cluster.image, 1, epoch, -1, false, 10).unwrap();
    assert_eq!(decision.answer, (true, false), "behind its registration: still fenced");
    assert!(decision.records.is_empty());
    assert_eq!(cluster.heartbeat(1, false, 20), (false, false));
    assert!(!cluster.image.broker(1).unwrap().fenced);
    // A heartbeat with a stale epoch is refused.
    let stale = cluster.controller.heartbeat(&cluster.image, 1, epoch + 5, 9, false, 30);
    assert_eq!(stale.unwrap_err().code, code::STALE_BROKER_EPOCH);
}

#[test]
fn replicas_and_leaders_spread_over_every_broker() {
    let mut cluster = Cluster::with_brokers(&[1, 2, 3]);
    let outcomes = cluster.write(vec![topic("t", 6, 3), topic("big", 1, 4)]);
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].code, code::INVALID_REPLICATION_FACTOR, "{:?}", outcomes[1]);
    assert!(cluster.image.topic("big").is_none());
    let mut leaders = std::collections::BTreeMap::new();
    for p in 0..6 {
        let placement = cluster.partition("t", p);
        let mut replicas = placement.replicas.clone();
        replicas.sort_unstable();
        assert_eq!(replicas, vec![1, 2, 3]);
        assert_eq!(placement.isr.len(), 3);
        assert_eq!(placement.leader, placement.replicas[0]);
        *leaders.entry(placement.leader).or_insert(0) += 1;
    }
    assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{leaders:?}");
    assert_eq!(cluster.image.topic("t").unwrap().replication_factor, 3);
}

#[test]
fn a_fenced_leader_hands_its_partitions_to_the_isr_and_returns_as_a_follower() {
    let mut cluster = Cluster::with_brokers(&[1, 2, 3]);
    cluster.write(vec![topic("t", 3, 3)]);
    let led_by_1: Vec<i32> = (0..3).filter(|&p| cluster.partition("t", p).leader == 1).collect();
    assert_eq!(led_by_1.len(), 1);
    // Brokers 2 and 3 heartbeat; 1 falls silent past the session timeout.
    for now in [3_000, 6_000, 9_000] {
        cluster.heartbeat(2, false, now);
        cluster.heartbeat(3, false, now);
        assert!(cluster.controller.tick(&cluster.image, now).is_empty());
    }
    let records = cluster.controller.tick(&cluster.image, 9_001);
    assert!(!records.is_empty());
    cluster.store(&records);
    assert!(cluster.image.broker(1).unwrap().fenced);
    for p in 0..3 {
        let placement = cluster.partition("t", p);
        assert!(!placement.isr.contains(&1), "{placement:?}");
        assert_ne!(placement.leader, 1);
        assert!(placement.isr.contains(&placement.leader));
    }
    let moved = cluster.partition("t", led_by_1[0]);
    assert_eq!(moved.leader_epoch, 1, "a new leader: the leader epoch goes up");
    // Only once: the broker is fenced now.
    for now in [15_000, 20_000] {
        cluster.heartbeat(2, false, now);
        cluster.heartbeat(3, false, now);
    }
    assert!(cluster.controller.tick(&cluster.image, 20_000).is_empty());

    // A restart: a new incarnation, a new epoch above the old one, fenced until caught up.
    let old = cluster.epochs[&1];
    let epoch = cluster.register(1, 2, 20_000);
    assert!(epoch > old);
    assert_eq!(cluster.heartbeat(1, false, 20_001), (false, false));
    // Not back in the ISR (that is the replication's to decide), not the leader; the
    // preferred leader election hands leadership back once it is in sync.
    assert!(!cluster.partition("t", led_by_1[0]).isr.contains(&1));
    let outcome = &cluster.write(vec![Intent::ElectLeaders {
        unclean: false,
        partitions: vec![("t".into(), led_by_1[0])],
    }])[0];
    assert_eq!(outcome.partitions[0].2, code::PREFERRED_LEADER_NOT_AVAILABLE);
}

#[test]
fn the_last_replica_standing_keeps_the_isr_and_unclean_election_is_opt_in() {
    let mut cluster = Cluster::with_brokers(&[1, 2]);
    cluster.write(vec![topic("t", 1, 2)]);
    let first = cluster.partition("t", 0).leader;
    let second = if first == 1 { 2 } else { 1 };
    // The follower stops; then the leader: no one is left in sync.
    cluster.heartbeat(first, false, 8_000);
    let records = cluster.controller.tick(&cluster.image, 9_001);
    cluster.store(&records);
    assert_eq!(cluster.partition("t", 0).isr, vec![first]);
    let records = cluster.controller.tick(&cluster.image, 17_001);
    cluster.store(&records);
    let placement = cluster.partition("t", 0);
    assert_eq!(placement.leader, NO_LEADER);
    assert_eq!(placement.isr, vec![first], "Kafka keeps the last member, leaderless");
    // The out-of-sync replica returns: clean election leaves the partition offline.
    cluster.register(second, 2, 20_000);
    cluster.heartbeat(second, false, 20_001);
    assert_eq!(cluster.partition("t", 0).leader, NO_LEADER);
    // ElectLeaders UNCLEAN takes it, with the ISR reset to it.
    let outcome = &cluster
        .write(vec![Intent::ElectLeaders { unclean: true, partitions: vec![("t".into(), 0)] }])[0];
    assert_eq!(outcome.partitions[0].2, code::NONE, "{outcome:?}");
    let placement = cluster.partition("t", 0);
    assert_eq!((placement.leader, placement.isr.clone()), (second, vec![second]));
}

#[test]
fn controlled_shutdown_moves_leadership_before_the_broker_may_stop() {
    let mut cluster = Cluster::with_brokers(&[1, 2, 3]);
    cluster.write(vec![topic("t", 3, 3)]);
    assert_eq!(cluster.heartbeat(1, true, 1_000), (false, false), "it leads: not yet");
    assert!(cluster.image.broker(1).unwrap().shutting_down);
    for p in 0..3 {
        let placement = cluster.partition("t", p);
        assert_ne!(placement.leader, 1);
        assert!(!placement.isr.contains(&1));
    }
    let (_, may_stop) = cluster.heartbeat(1, true, 1_100);
    assert!(may_stop, "it leads nothing now");
    assert!(cluster.image.broker(1).unwrap().fenced);
}

#[test]
fn internal_topics_take_min_3_brokers_and_assignments_are_checked() {
    let mut cluster = Cluster::with_brokers(&[1, 2]);
    let outcomes = cluster.write(vec![
        topic(OFFSETS_TOPIC, 4, -1),
        Intent::CreateTopic(NewTopic {
            name: "manual".into(),
            topic_id: [99; 16],
            partitions: -1,
            replication_factor: -1,
            assignments: vec![(0, vec![2, 1]), (1, vec![1, 2])],
            configs: vec![],
        }),
        Intent::CreateTopic(NewTopic {
            name: "unknown-broker".into(),
            topic_id: [98; 16],
            partitions: -1,
            replication_factor: -1,
            assignments: vec![(0, vec![5])],
            configs: vec![],
        }),
    ]);
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
    assert_eq!(outcomes[2].code, code::INVALID_REPLICA_ASSIGNMENT);
    assert_eq!(cluster.image.topic(OFFSETS_TOPIC).unwrap().replication_factor, 2);
    assert_eq!(cluster.partition("manual", 0).replicas, vec![2, 1]);
    assert_eq!(cluster.partition("manual", 0).leader, 2);
    // Growing keeps the replication factor; validate_only stores nothing.
    let grow =
        Intent::CreatePartitions { name: "manual".into(), partitions: 4, assignments: vec![] };
    let dry = cluster.controller.write(&cluster.image, std::slice::from_ref(&grow), true);
    assert!(dry.records.is_empty() && dry.answer[0].is_ok());
    assert!(cluster.write(vec![grow])[0].is_ok());
    assert_eq!(cluster.partition("manual", 3).replicas.len(), 2);
    let shrink =
        Intent::CreatePartitions { name: "manual".into(), partitions: 2, assignments: vec![] };
    assert_eq!(cluster.write(vec![shrink])[0].code, code::INVALID_PARTITIONS);
}

#[test]
fn a_reassignment_adds_replicas_then_can_be_cancelled() {
    let mut cluster = Cluster::with_brokers(&[1, 2, 3]);
    cluster.write(vec![Intent::CreateTopic(NewTopic {
        name: "r".into(),
        topic_id: [5; 16],
        partitions: -1,
        replication_factor: -1,
        assignments: vec![(0, vec![1])],
        configs: vec![],
    })]);
    let reassign = |target: Option<Vec<BrokerId>>| Intent::Reassign {
        topic: "r".into(),
        partition: 0,
        target,
    };
    assert!(cluster.write(vec![reassign(Some(vec![1, 2, 3]))])[0].is_ok());
    let placement = cluster.partition("r", 0);
    assert_eq!(placement.adding, vec![2, 3]);
    assert_eq!(placement.isr, vec![1], "new replicas join the ISR once caught up");
    assert!(cluster.write(vec![reassign(None)])[0].is_ok());
    let placement = cluster.partition("r", 0);
    assert_eq!((placement.replicas.clone(), placement.adding.clone()), (vec![1], vec![]));
    assert_eq!(cluster.write(vec![reassign(None)])[0].code, code::NO_REASSIGNMENT_IN_PROGRESS);
}

/// AlterPartition: only the current leader, at the current leader and partition epochs,
/// changes the ISR; a follower that is fenced may not join; an ISR change that puts every
/// target replica in sync completes a reassignment.
#[test]
fn isr_changes_come_from_the_current_leader_at_the_current_epochs() {
    let mut cluster = Cluster::with_brokers(&[1, 2, 3]);
    cluster.write(vec![Intent::CreateTopic(NewTopic {
        name: "a".into(),
        topic_id: [6; 16],
        partitions: -1,
        replication_factor: -1,
        assignments: vec![(0, vec![1, 2, 3])],
        configs: vec![],
    })]);
    let placed = cluster.partition("a", 0);
    assert_eq!((placed.leader, placed.isr.clone()), (1, vec![1, 2, 3]));
    let alter = |leader: BrokerId, leader_epoch: i32, partition_epoch: i32, isr: Vec<BrokerId>| {
        Intent::AlterPartition {
            topic: "a".into(),
            partition: 0,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        }
    };
    let (le, pe) = (placed.leader_epoch, placed.partition_epoch);
    // Shrink: broker 3 lags.
    assert!(cluster.write(vec![alter(1, le, pe, vec![1, 2])])[0].is_ok());
    let shrunk = cluster.partition("a", 0);
    assert_eq!(shrunk.isr, vec![1, 2]);
    assert_eq!(shrunk.leader_epoch, le, "an ISR change keeps the leader epoch");
    assert_eq!(shrunk.partition_epoch, pe + 1);
    // The same change again, built on the old partition epoch: refused.
    let stale = &cluster.write(vec![alter(1, le, pe, vec![1, 2, 3])])[0];
    assert_eq!(stale.code, code::INVALID_UPDATE_VERSION, "{stale:?}");
    // Not the leader, or an old leader epoch: refused.
    assert_eq!(
        cluster.write(vec![alter(2, le, pe + 1, vec![2, 3])])[0].code,
        code::NOT_LEADER_OR_FOLLOWER
    );
    assert_eq!(
        cluster.write(vec![alter(1, le - 1, pe + 1, vec![1, 2, 3])])[0].code,
        code::FENCED_LEADER_EPOCH
    );
    // A member must be a replica and include the leader.
    assert_eq!(
        cluster.write(vec![alter(1, le, pe + 1, vec![1, 2, 4])])[0].code,
        code::INVALID_REQUEST
    );
    assert_eq!(cluster.write(vec![alter(1, le, pe + 1, vec![2])])[0].code, code::INVALID_REQUEST);
    // Expand: broker 3 caught up.
    assert!(cluster.write(vec![alter(1, le, pe + 1, vec![1, 2, 3])])[0].is_ok());
    assert_eq!(cluster.partition("a", 0).isr, vec![1, 2, 3]);

    // A reassignment from [1] to [1, 2] completes when broker 2 joins the ISR.
    cluster.write(vec![Intent::CreateTopic(NewTopic {
        name: "m".into(),
        topic_id: [7; 16],
        partitions: -1,
        replication_factor: -1,
        assignments: vec![(0, vec![1])],
        configs: vec![],
    })]);
    let target = Some(vec![1, 2]);
    assert!(cluster.write(vec![Intent::Reassign { topic: "m".into(), partition: 0, target }])[0]
        .is_ok());
    let moving = cluster.partition("m", 0);
    assert_eq!(moving.adding, vec![2]);
    let change = Intent::AlterPartition {
        topic: "m".into(),
        partition: 0,
        leader: 1,
        leader_epoch: moving.leader_epoch,
        partition_epoch: moving.partition_epoch,
        isr: vec![1, 2],
    };
    assert!(cluster.write(vec![change])[0].is_ok());
    let moved = cluster.partition("m", 0);
    assert_eq!((moved.replicas.clone(), moved.isr.clone()), (vec![1, 2], vec![1, 2]));
    assert!(moved.adding.is_empty() && moved.removing.is_empty(), "{moved:?}");
}

#[test]
fn a_single_node_image_is_adopted_with_every_partition_on_the_node() {
    let mut old = MetadataImage::default();
    old.apply(&MetadataRecord::CreateTopic {
        name: "a".into(),
        topic_id: [1; 16],
        partitions: 3,
        replication_factor: 1,
        configs: vec![("retention.ms".into(), "5".into())],
    })
    .unwrap();
    old.apply(&MetadataRecord::ProducerIds { end: 4000 }).unwrap();
    let mut image = MetadataImage::default();
    for record in adopt_single_node(&old, 4) {
        image.apply(&record).unwrap();
    }
    let topic = image.topic("a").unwrap();
    assert_eq!(topic.configs.get("retention.ms").unwrap(), "5");
    assert_eq!(image.producer_ids_end(), 4000);
    for p in 0..3 {
        let placement = topic.placement(p).unwrap();
        assert_eq!((placement.replicas.clone(), placement.leader), (vec![4], 4));
    }
}

#[test]
fn the_rebalance_hands_leadership_back_to_an_in_sync_preferred_leader() {
    let mut cluster = Cluster::with_brokers(&[1, 2, 3]);
    cluster.write(vec![Intent::CreateTopic(NewTopic {
        name: "b".into(),
        topic_id: [11; 16],
        partitions: -1,
        replication_factor: -1,
        assignments: vec![(0, vec![1, 2, 3]), (1, vec![2, 3, 1])],
        configs: vec![],
    })]);
    assert!(cluster.controller.rebalance(&cluster.image).is_empty(), "balanced already");
    // Partition 0 is led by 2 while its preferred leader 1 is still in sync.
    cluster.store(&[MetadataRecord::PartitionChange(PartitionChangeRecord {
        topic_id: [11; 16],
        partition: 0,
        leader: Some(2),
        ..Default::default()
    })]);
    let records = cluster.controller.rebalance(&cluster.image);
    assert_eq!(records.len(), 1, "{records:?}");
    cluster.store(&records);
    let placement = cluster.partition("b", 0);
    assert_eq!((placement.leader, placement.leader_epoch), (1, 2));
    assert_eq!(cluster.partition("b", 1).leader, 2, "the other partition is left alone");
}

#[test]
fn a_restarted_sole_replica_that_goes_silent_before_it_is_unfenced_stops_leading() {
    let mut settings = settings();
    settings.local_broker = Some(1);
    let mut cluster = Cluster::new();
    cluster.controller = Controller::new(settings, &cluster.image, 0, 7);
    cluster.register(1, 1, 0);
    cluster.heartbeat(1, false, 0);
    cluster.write(vec![topic("solo", 1, 1)]);
    // The process restarts: the new incarnation keeps leading its sole-replica partition
    // while fenced, then dies again before a heartbeat unfences it.
    cluster.register(1, 2, 1_000);
    assert!(cluster.image.broker(1).unwrap().fenced);
    assert_eq!(cluster.partition("solo", 0).leader, 1);
    assert!(cluster.controller.tick(&cluster.image, 9_000).is_empty(), "its session lives");
    let records = cluster.controller.tick(&cluster.image, 10_001);
    cluster.store(&records);
    let placement = cluster.partition("solo", 0);
    assert_eq!((placement.leader, placement.isr.clone()), (NO_LEADER, vec![1]));
    assert!(cluster.controller.tick(&cluster.image, 20_000).is_empty(), "once");
    // It comes back and catches up: it leads again.
    cluster.register(1, 3, 20_000);
    cluster.heartbeat(1, false, 20_001);
    assert_eq!(cluster.partition("solo", 0).leader, 1);
}
