#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;
use crate::agent::{
    AgentOptions, BrokerAgent, ControllerChannel, LocalChannel, MetadataUpdate, RemoteChannel,
};
use crate::controller::rpc::{Endpoint, Intent, NewTopic};

fn settings() -> Settings {
    Settings::for_tests(1_500)
}

fn options(
    dir: &std::path::Path,
    node: BrokerId,
    voters: Vec<(BrokerId, SocketAddr)>,
) -> RuntimeOptions {
    let listen = (voters.len() > 1).then(|| voters.iter().find(|(id, _)| *id == node).unwrap().1);
    let mut settings = settings();
    settings.local_broker = (voters.len() == 1).then_some(node);
    RuntimeOptions {
        node_id: node,
        voters,
        listen,
        raft_dir: dir.join(format!("raft-{node}")),
        durability: Durability::NoSync,
        settings,
        auto_leader_rebalance: false,
        leader_imbalance_check_interval_ms: 300_000,
        adopt: None,
        snapshot_entries_min: 1_000,
        max_frame_bytes: 16 * 1024 * 1024,
        seed: node as u64,
    }
}

fn agent_options(broker: BrokerId, incarnation: u8) -> AgentOptions {
    AgentOptions {
        broker,
        incarnation_id: [incarnation; 16],
        endpoints: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9000 + broker as u16,
        }],
        rack: None,
        heartbeat_interval: Duration::from_millis(200),
    }
}

/// A broker as the tests see it: its agent and the image its updates build.
struct Broker {
    agent: Arc<BrokerAgent>,
    image: MetadataImage,
    updates: Receiver<MetadataUpdate>,
}

impl Broker {
    fn join(broker: BrokerId, incarnation: u8, channel: Arc<dyn ControllerChannel>) -> Broker {
        let (agent, image) = BrokerAgent::register(
            agent_options(broker, incarnation),
            channel,
            Duration::from_secs(20),
        )
        .unwrap();
        let agent = Arc::new(agent);
        let updates = agent.start(image.next_offset()).unwrap();
        agent.applied(image.offset());
        Broker { agent, image, updates }
    }

    /// Applies what arrived, reporting it applied.
    fn pump(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            match update {
                MetadataUpdate::Records { first_offset, records } => {
                    assert_eq!(first_offset, self.image.next_offset());
                    for record in &records {
                        self.image.apply(record).unwrap();
                    }
                }
                MetadataUpdate::Snapshot(image) => self.image = image,
            }
            self.agent.applied(self.image.offset());
        }
    }

    /// Pumps until `check` holds on the image, or panics after `seconds`.
    fn until(&mut self, seconds: u64, what: &str, check: impl Fn(&MetadataImage) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            self.pump();
            if check(&self.image) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:#?}", self.image);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn topic(name: &str, partitions: i32, replication_factor: i16) -> Intent {
    Intent::CreateTopic(NewTopic {
        name: name.into(),
        topic_id: [name.len() as u8 + 1; 16],
        partitions,
        replication_factor,
        assignments: vec![],
        configs: vec![],
    })
}

#[test]
fn a_one_node_cluster_stores_and_serves_metadata_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let voters = vec![(1, "127.0.0.1:1".parse().unwrap())];
    {
        let runtime = ControllerRuntime::start(options(dir.path(), 1, voters.clone())).unwrap();
        let mut broker = Broker::join(1, 1, Arc::new(LocalChannel(runtime.local())));
        assert!(broker.agent.wait_unfenced(Duration::from_secs(10)));
        let (outcomes, last) =
            broker.agent.write(vec![topic("t", 3, 1)], false, Duration::from_secs(10)).unwrap();
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
        broker.until(10, "the topic", |image| image.offset() >= last);
        let t = broker.image.topic("t").unwrap();
        assert_eq!(t.placements.len(), 3);
        assert!(t.placements.values().all(|p| p.leader == 1 && p.replicas == [1]));
        broker.agent.stop();
    }
    // A restart replays the quorum's log; the broker registers as a new incarnation.
    let runtime = ControllerRuntime::start(options(dir.path(), 1, voters)).unwrap();
    let mut broker = Broker::join(1, 2, Arc::new(LocalChannel(runtime.local())));
    assert!(broker.image.topic("t").is_some(), "the image survives the restart");
    assert!(broker.agent.wait_unfenced(Duration::from_secs(10)));
    broker.until(10, "the new epoch unfenced", |image| image.broker(1).is_some_and(|b| !b.fenced));
    broker.agent.stop();
}

#[test]
fn a_one_node_metadata_log_is_adopted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = MetadataImage::default();
    old.apply(&MetadataRecord::CreateTopic {
        name: "old".into(),
        topic_id: [3; 16],
        partitions: 2,
        replication_factor: 1,
        configs: vec![],
    })
    .unwrap();
    let old_log = dir.path().join("metadata.log");
    std::fs::write(&old_log, b"old").unwrap();
    let voters = vec![(7, "127.0.0.1:1".parse().unwrap())];
    let mut options = options(dir.path(), 7, voters);
    options.adopt = Some((old, old_log.clone()));
    let runtime = ControllerRuntime::start(options).unwrap();
    let broker = Broker::join(7, 1, Arc::new(LocalChannel(runtime.local())));
    let topic = broker.image.topic("old").expect("adopted before the broker registered");
    assert_eq!(topic.placement(1).unwrap().replicas, vec![7]);
    assert!(!old_log.exists());
    assert!(dir.path().join("metadata.log.adopted").exists());
    broker.agent.stop();
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// Three controllers and three brokers on loopback: replicas spread, the active
/// controller's process stops and the quorum goes on, and its broker's session expires,
/// so the partitions it led get leaders from their ISRs.
#[test]
fn three_controllers_survive_the_loss_of_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let voters: Vec<(BrokerId, SocketAddr)> = (1..=3).zip(addrs).collect();
    let mut runtimes: Vec<Option<ControllerRuntime>> = (1..=3)
        .map(|id| Some(ControllerRuntime::start(options(dir.path(), id, voters.clone())).unwrap()))
        .collect();
    let channel = |id| -> Arc<dyn ControllerChannel> {
        Arc::new(RemoteChannel::new(id, voters.clone(), 16 * 1024 * 1024))
    };
    let mut brokers: Vec<Broker> = (1..=3).map(|id| Broker::join(id, 1, channel(id))).collect();
    for broker in &brokers {
        assert!(broker.agent.wait_unfenced(Duration::from_secs(20)), "broker unfenced");
    }
    let (outcomes, last) = brokers[0]
        .agent
        .write(vec![topic("t", 6, 3), topic("big", 1, 4)], false, Duration::from_secs(10))
        .unwrap();
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert_eq!(outcomes[1].code, code::INVALID_REPLICATION_FACTOR);
    for broker in &mut brokers {
        broker.until(10, "the topic everywhere", |image| image.offset() >= last);
    }
    let image = brokers[1].image.clone();
    let placements = &image.topic("t").unwrap().placements;
    assert!(placements.values().all(|p| p.isr.len() == 3));

    // The active controller's process goes: controller and broker alike.
    let leader = loop {
        let status = brokers[1]
            .agent
            .call(&ControllerRequest::DescribeQuorum, Duration::from_secs(5))
            .unwrap();
        if let ControllerResponse::Quorum { leader, .. } = status {
            break leader;
        }
    };
    let index = usize::try_from(leader - 1).unwrap();
    let led: Vec<i32> =
        placements.iter().filter(|(_, p)| p.leader == leader).map(|(i, _)| *i).collect();
    assert!(!led.is_empty());
    let gone = brokers.remove(index);
    gone.agent.stop();
    runtimes[index].take().unwrap().shutdown();

    // A new controller, the broker fenced after its session timeout, new leaders.
    let survivor = &mut brokers[0];
    survivor.until(30, "new leaders for the partitions the lost broker led", |image| {
        let t = image.topic("t").unwrap();
        image.broker(leader).is_some_and(|b| b.fenced)
            && led.iter().all(|p| {
                let placement = t.placement(*p).unwrap();
                placement.leader != leader
                    && placement.leader != NO_LEADER_FOR_TEST
                    && placement.leader_epoch == 1
            })
    });
    let (outcomes, _) =
        survivor.agent.write(vec![topic("after", 2, 2)], false, Duration::from_secs(10)).unwrap();
    assert!(outcomes[0].is_ok(), "the quorum of two still writes: {outcomes:?}");
    for broker in &brokers {
        broker.agent.stop();
    }
}

const NO_LEADER_FOR_TEST: i32 = -1;
