//! A seeded, deterministic simulation of the control plane: 3 or 5 controllers (each a
//! [`ControllerNode`] over real quorum storage in a temp dir, [`Durability::NoSync`]) and
//! 3 to 5 brokers (each a small state machine doing what the agent does, `broker.rs`),
//! some of them in a controller's process, as combined nodes are. Clients send intents
//! (create topics with replication factor 1 to 3, grow them, delete them, elect leaders
//! preferred or unclean, reassign, set unclean election) to random brokers, which forward
//! them to the controller they believe active. The network delays, loses, duplicates and
//! reorders messages and splits into partitions (controller to controller and broker to
//! controller alike); processes crash (a controller reopens from its directory, a broker
//! comes back as a new incarnation with its image lost) and restart, and brokers stop
//! after a controlled shutdown; simulated time passes, so broker sessions expire, brokers
//! are fenced and leaders move.
//!
//! Checked as the run goes (`check.rs` holds the reference):
//! - metadata safety: every entry a controller applies is, record for record, the entry
//!   of the one global committed sequence at its offsets; a controller's image after
//!   applying is the reference image at its offset; every record a broker applies is the
//!   committed one at its offset and its image equals the reference image there; no
//!   node's image goes back; no controller ever finds a committed record that does not
//!   apply;
//! - at most one active controller per quorum term;
//! - partition leadership: at most one leader per (partition, leader epoch) over the
//!   whole run, leader epochs never decrease and go up with every leader change, the
//!   leader is in the ISR and the ISR is a non-empty subset of the replicas, and with
//!   unclean election off (for the topic, and not asked for by an UNCLEAN ElectLeaders) a
//!   new leader comes from the previous ISR;
//! - broker epochs: the epoch is the offset of the registration's record, so it only
//!   grows, and a new incarnation is told a larger one than any before it; after every
//!   committed entry a fenced broker leads nothing and is in no ISR but as its last
//!   member, save the exception the controller makes on purpose (a restarted broker that
//!   was a partition's last in-sync replica leads it, fenced, until it catches up), and
//!   a broker in controlled shutdown leads nothing;
//! - answers: a controller says Registered, unfenced (or fenced) and Written only as its
//!   committed image says, a successful CreateTopic is in the log at the offset the
//!   answer gives, and fetch answers hold the committed records or image;
//! - liveness at the end: with the network healed and every process up, within bounded
//!   time a controller is active, every broker is registered, unfenced and caught up,
//!   every partition has a leader (every replica is live then), and a fresh topic commits
//!   and reaches every broker and controller.
//!
//! `SLUICE_SIM_SEEDS=<n>` runs seeds 0..n (from `SLUICE_SIM_SEED_START`, default 0);
//! `SLUICE_SIM_SEED=<s>` runs only seed `s`. A failure names its seed and its last
//! events. `tools/cluster-sim.sh` runs many in release.

#![allow(clippy::unwrap_used)]

mod broker;
mod check;

use std::collections::BTreeMap;
use std::path::PathBuf;

use raft::eraftpb::MessageType;
use sluice_engine::metadata::{self, MetadataImage, NO_LEADER};

use super::node::{Applied, ControllerNode, NodeOptions};
use super::rpc::{self, ControllerRequest, ControllerResponse, Intent, NewTopic};
use super::Settings;
use crate::quorum::{
    decode_message, encode_message, Durability, QuorumNode, QuorumOptions, TICK_MS,
};
use crate::rng::{seeds, SplitMix64};
use crate::BrokerId;
use broker::{Event, Lane, SimBroker};
use check::{Reference, ReferenceStats};

/// Controllers' node ids: 0 included, and gaps, as Kafka allows.
const CONTROLLER_IDS: [BrokerId; 5] = [0, 2, 5, 6, 9];
/// Ids of brokers in processes of their own; a broker in a controller's process has that
/// controller's id.
const DEDICATED_BROKER_IDS: [BrokerId; 5] = [11, 12, 14, 17, 20];
/// The simulation's clock step.
const STEP_MS: u64 = 10;
/// Faults and intents are drawn once per this many milliseconds.
const CHAOS_MS: u64 = 100;
/// Topic names clients use: few, so that they collide (exists, unknown, re-created).
const TOPIC_NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// The simulation's seeded generator.
type Rng = SplitMix64;

/// Knobs of one run, drawn per seed ("swarm testing": some runs lose many messages, some
/// crash often, some partition often).
#[derive(Debug, Clone)]
struct SimConfig {
    controllers: usize,
    brokers: usize,
    /// Brokers in the first controllers' processes.
    combined: usize,
    chaos_ms: u64,
    recovery_ms_max: u64,
    /// Per-mille chances: per message, or per [`CHAOS_MS`].
    loss: u64,
    duplication: u64,
    delay_ms_max: u64,
    partition: u64,
    heal: u64,
    crash: u64,
    /// A broker's process stops after a controlled shutdown.
    shutdown: u64,
    restart: u64,
    intent: u64,
    session_timeout_ms: u64,
    heartbeat_interval_ms: u64,
    unclean_leader_election: bool,
    auto_leader_rebalance: bool,
    leader_imbalance_check_interval_ms: u64,
    snapshot_entries_min: u64,
}

impl SimConfig {
    fn for_seed(controllers: usize, rng: &mut Rng) -> Self {
        let brokers = rng.between(3, 5) as usize;
        let session_timeout_ms = rng.between(1_000, 4_000);
        SimConfig {
            controllers,
            brokers,
            combined: rng.below(controllers.min(brokers) as u64 + 1) as usize,
            chaos_ms: 30_000,
            recovery_ms_max: 60_000,
            loss: rng.between(0, 150),
            duplication: rng.between(0, 80),
            delay_ms_max: rng.between(0, 300),
            partition: rng.between(0, 40),
            heal: rng.between(20, 150),
            crash: rng.between(0, 15),
            shutdown: rng.between(0, 15),
            restart: rng.between(20, 200),
            intent: rng.between(100, 600),
            session_timeout_ms,
            heartbeat_interval_ms: rng.between(100, session_timeout_ms / 4),
            unclean_leader_election: rng.chance(250),
            auto_leader_rebalance: rng.chance(500),
            leader_imbalance_check_interval_ms: rng.between(1_000, 5_000),
            snapshot_entries_min: rng.between(5, 60),
        }
    }
}

/// Where an answer goes: the broker (slot) and incarnation that asked, the kind of
/// request and its correlation id.
#[derive(Debug, Clone, Copy)]
struct Token {
    broker: usize,
    incarnation: u64,
    lane: Lane,
    correlation: u64,
}

enum Payload {
    Raft { from: usize, to: usize, from_incarnation: u64, bytes: Vec<u8>, snapshot: bool },
    Request { token: Token, to: usize, bytes: Vec<u8> },
    Response { from: usize, token: Token, bytes: Vec<u8> },
}

struct InFlight {
    deliver_at_ms: u64,
    payload: Payload,
}

struct SimController {
    node: ControllerNode<Token>,
    incarnation: u64,
}

/// Counts that show a run exercised what it was meant to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stats {
    delivered: u64,
    lost: u64,
    duplicated: u64,
    partitions: u64,
    crashes: u64,
    shutdowns: u64,
    /// Controlled shutdowns the controller let end (it said the broker may stop).
    shutdowns_allowed: u64,
    restarts: u64,
    active_terms: u64,
    controller_snapshots: u64,
    broker_snapshots: u64,
    broker_records: u64,
    intents_sent: u64,
    intents_ok: u64,
    reference: ReferenceStats,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.partitions += other.partitions;
        self.crashes += other.crashes;
        self.shutdowns += other.shutdowns;
        self.shutdowns_allowed += other.shutdowns_allowed;
        self.restarts += other.restarts;
        self.active_terms += other.active_terms;
        self.controller_snapshots += other.controller_snapshots;
        self.broker_snapshots += other.broker_snapshots;
        self.broker_records += other.broker_records;
        self.intents_sent += other.intents_sent;
        self.intents_ok += other.intents_ok;
        let (total, run) = (&mut self.reference, &other.reference);
        total.entries += run.entries;
        total.records += run.records;
        total.registrations += run.registrations;
        total.fencings += run.fencings;
        total.leader_changes += run.leader_changes;
        total.unclean_elections += run.unclean_elections;
        total.topics_created += run.topics_created;
        total.topics_deleted += run.topics_deleted;
    }
}

type Check = Result<(), String>;

struct Sim {
    seed: u64,
    config: SimConfig,
    rng: Rng,
    _dir: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    now_ms: u64,
    controllers: Vec<Option<SimController>>,
    controller_incarnations: Vec<u64>,
    /// Each controller ticks when the clock plus its phase is a multiple of the tick.
    tick_phases: Vec<u64>,
    broker_ids: Vec<BrokerId>,
    brokers: Vec<Option<SimBroker>>,
    broker_incarnations: Vec<u64>,
    /// When each broker's last controlled shutdown began.
    shutdown_began_ms: Vec<u64>,
    network: Vec<InFlight>,
    /// Partition group of each place (controllers' processes, then dedicated brokers').
    groups: Option<Vec<u8>>,
    reference: Reference,
    active_by_term: BTreeMap<u64, BrokerId>,
    /// Every request sent, by correlation id, to check the answers against.
    requests: BTreeMap<u64, ControllerRequest>,
    /// Per broker id: the last incarnation told an epoch, and that epoch.
    epochs_told: BTreeMap<BrokerId, (u64, i64)>,
    correlations: u64,
    topic_ids: u64,
    stats: Stats,
    events: Vec<String>,
    bug_broker_ignores_first_offset: bool,
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Result<Sim, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dirs = CONTROLLER_IDS[..config.controllers]
            .iter()
            .map(|id| dir.path().join(format!("node-{id}")))
            .collect();
        let broker_ids = (0..config.brokers)
            .map(|b| if b < config.combined { CONTROLLER_IDS[b] } else { DEDICATED_BROKER_IDS[b] })
            .collect();
        let mut rng = Rng::new(seed);
        let tick_phases =
            (0..config.controllers).map(|_| rng.below(TICK_MS / STEP_MS) * STEP_MS).collect();
        let reference = Reference::new(config.unclean_leader_election);
        let mut sim = Sim {
            seed,
            rng,
            _dir: dir,
            dirs,
            now_ms: 0,
            controllers: (0..config.controllers).map(|_| None).collect(),
            controller_incarnations: vec![0; config.controllers],
            tick_phases,
            broker_ids,
            brokers: (0..config.brokers).map(|_| None).collect(),
            broker_incarnations: vec![0; config.brokers],
            shutdown_began_ms: vec![0; config.brokers],
            network: Vec::new(),
            groups: None,
            reference,
            active_by_term: BTreeMap::new(),
            requests: BTreeMap::new(),
            epochs_told: BTreeMap::new(),
            correlations: 0,
            topic_ids: 0,
            stats: Stats::default(),
            events: Vec::new(),
            bug_broker_ignores_first_offset: false,
            config,
        };
        for process in 0..sim.processes() {
            sim.start_process(process)?;
        }
        Ok(sim)
    }

    fn event(&mut self, text: String) {
        self.events.push(format!("[{} ms] {text}", self.now_ms));
    }

    fn explain(&self, error: String) -> String {
        let tail = self.events.len().saturating_sub(40);
        format!(
            "{error}\n  {:?}\n  last events:\n    {}",
            self.config,
            self.events[tail..].join("\n    ")
        )
    }

    // --- processes ---

    /// Controllers' processes (the first `combined` with a broker inside), then dedicated
    /// brokers' processes.
    fn processes(&self) -> usize {
        self.config.controllers + self.config.brokers - self.config.combined
    }

    /// The controller slot and the broker slot a process holds.
    fn process_parts(&self, process: usize) -> (Option<usize>, Option<usize>) {
        let controllers = self.config.controllers;
        if process < controllers {
            (Some(process), (process < self.config.combined).then_some(process))
        } else {
            (None, Some(process - controllers + self.config.combined))
        }
    }

    fn process_up(&self, process: usize) -> bool {
        match self.process_parts(process) {
            (Some(c), _) => self.controllers[c].is_some(),
            (None, Some(b)) => self.brokers[b].is_some(),
            (None, None) => false,
        }
    }

    /// The partition group place of a controller and of a broker.
    fn controller_place(&self, slot: usize) -> usize {
        slot
    }

    fn broker_place(&self, slot: usize) -> usize {
        if slot < self.config.combined {
            slot
        } else {
            self.config.controllers + slot - self.config.combined
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        match &self.groups {
            Some(groups) => groups[a] == groups[b],
            None => true,
        }
    }

    fn start_process(&mut self, process: usize) -> Check {
        let (controller, broker) = self.process_parts(process);
        if let Some(slot) = controller {
            self.start_controller(slot)?;
        }
        if let Some(slot) = broker {
            self.start_broker(slot);
        }
        Ok(())
    }

    fn crash_process(&mut self, process: usize) {
        let (controller, broker) = self.process_parts(process);
        if let Some(slot) = controller {
            self.controllers[slot] = None;
        }
        if let Some(slot) = broker {
            self.brokers[slot] = None;
        }
    }

    fn start_controller(&mut self, slot: usize) -> Check {
        self.controller_incarnations[slot] += 1;
        let incarnation = self.controller_incarnations[slot];
        let node_id = CONTROLLER_IDS[slot];
        let voters = CONTROLLER_IDS[..self.config.controllers].to_vec();
        let quorum = QuorumNode::open(
            &self.dirs[slot],
            QuorumOptions {
                node_id,
                voters,
                durability: Durability::NoSync,
                snapshot_entries_min: self.config.snapshot_entries_min,
                election_seed: self
                    .seed
                    .wrapping_mul(31)
                    .wrapping_add(incarnation * 7 + slot as u64),
            },
        )
        .map_err(|e| format!("controller {node_id} open: {e}"))?;
        let settings = Settings {
            unclean_leader_election: self.config.unclean_leader_election,
            local_broker: (slot < self.config.combined).then_some(node_id),
            ..Settings::for_tests(self.config.session_timeout_ms)
        };
        let options = NodeOptions {
            node_id,
            settings,
            auto_leader_rebalance: self.config.auto_leader_rebalance,
            leader_imbalance_check_interval_ms: self.config.leader_imbalance_check_interval_ms,
            adopt: None,
            seed: self.seed ^ (incarnation << 8) ^ slot as u64,
        };
        let mut node = ControllerNode::new(options, quorum, self.now_ms);
        node.start(self.now_ms);
        self.controllers[slot] = Some(SimController { node, incarnation });
        self.flush(slot)
    }

    fn start_broker(&mut self, slot: usize) {
        self.broker_incarnations[slot] += 1;
        let mut incarnation_id = [0u8; 16];
        incarnation_id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        incarnation_id[8..].copy_from_slice(&self.broker_incarnations[slot].to_be_bytes());
        let first_target = self.rng.below(self.config.controllers as u64) as usize;
        let mut broker = SimBroker::new(
            self.broker_ids[slot],
            incarnation_id,
            CONTROLLER_IDS[..self.config.controllers].to_vec(),
            first_target,
            self.config.heartbeat_interval_ms,
        );
        broker.bug_ignore_first_offset = self.bug_broker_ignores_first_offset;
        self.brokers[slot] = Some(broker);
    }

    // --- the run ---

    fn run(&mut self) -> Check {
        while self.now_ms < self.config.chaos_ms {
            self.step(true)?;
        }
        self.recover()
    }

    fn step(&mut self, chaos: bool) -> Check {
        self.now_ms += STEP_MS;
        let now_ms = self.now_ms;
        let drawing = now_ms % CHAOS_MS == 0;
        if chaos && drawing {
            self.faults()?;
        }
        self.deliver()?;
        for slot in 0..self.controllers.len() {
            if (now_ms + self.tick_phases[slot]) % TICK_MS != 0 {
                continue;
            }
            if let Some(controller) = self.controllers[slot].as_mut() {
                controller.node.tick(now_ms);
                controller.node.drive(now_ms);
                self.flush(slot)?;
            }
        }
        if chaos && drawing && self.rng.chance(self.config.intent) {
            self.client_intent();
        }
        for slot in 0..self.brokers.len() {
            self.poll_broker(slot);
        }
        Ok(())
    }

    fn faults(&mut self) -> Check {
        let places = self.config.controllers + self.config.brokers - self.config.combined;
        if self.groups.is_some() {
            if self.rng.chance(self.config.heal) {
                self.groups = None;
                self.event("partition healed".into());
            }
        } else if self.rng.chance(self.config.partition) {
            let groups: Vec<u8> = (0..places).map(|_| self.rng.below(2) as u8).collect();
            self.event(format!("partition {groups:?}"));
            self.groups = Some(groups);
            self.stats.partitions += 1;
        }
        for process in 0..self.processes() {
            if self.process_up(process) {
                let (_, broker) = self.process_parts(process);
                let stopping = broker
                    .and_then(|b| self.brokers[b].as_ref())
                    .map(|b| (b.want_shutdown, b.may_stop, b.id));
                match stopping {
                    Some((true, may_stop, id)) => {
                        let began = self.shutdown_began_ms[broker.expect("a broker stops")];
                        if may_stop || self.now_ms >= began + broker::SHUTDOWN_WAIT_MS {
                            self.crash_process(process);
                            self.stats.shutdowns_allowed += u64::from(may_stop);
                            self.event(format!("broker {id} stopped (allowed: {may_stop})"));
                        }
                        continue;
                    }
                    Some((false, _, id)) if self.rng.chance(self.config.shutdown) => {
                        let slot = broker.expect("a broker stops");
                        self.shutdown_began_ms[slot] = self.now_ms;
                        let now_ms = self.now_ms;
                        self.brokers[slot].as_mut().expect("running").begin_shutdown(now_ms);
                        self.stats.shutdowns += 1;
                        self.event(format!("broker {id} begins a controlled shutdown"));
                        continue;
                    }
                    _ => {}
                }
                if self.rng.chance(self.config.crash) {
                    self.crash_process(process);
                    self.stats.crashes += 1;
                    self.event(format!("process {:?} crashed", self.process_parts(process)));
                }
            } else if self.rng.chance(self.config.restart) {
                self.start_process(process)?;
                self.stats.restarts += 1;
                self.event(format!("process {:?} restarted", self.process_parts(process)));
            }
        }
        Ok(())
    }

    /// Queues a message, unless the network loses it; maybe twice.
    fn send(&mut self, from_place: usize, to_place: usize, payload: Payload) -> bool {
        let copies = if self.rng.chance(self.config.duplication) { 2 } else { 1 };
        if copies == 2 {
            self.stats.duplicated += 1;
        }
        let mut sent = false;
        let mut payload = Some(payload);
        for copy in 0..copies {
            if !self.connected(from_place, to_place) || self.rng.chance(self.config.loss) {
                self.stats.lost += 1;
                continue;
            }
            let delay = self.rng.below(self.config.delay_ms_max + 1);
            let body = if copy + 1 == copies {
                payload.take().expect("taken once, last")
            } else {
                clone_payload(payload.as_ref().expect("there until the last copy"))
            };
            self.network.push(InFlight { deliver_at_ms: self.now_ms + delay, payload: body });
            sent = true;
        }
        sent
    }

    fn deliver(&mut self) -> Check {
        let now_ms = self.now_ms;
        let (mut due, later): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.network).into_iter().partition(|m| m.deliver_at_ms <= now_ms);
        self.network = later;
        // Messages due in the same step arrive in any order.
        for at in (1..due.len()).rev() {
            let other = self.rng.below(at as u64 + 1) as usize;
            due.swap(at, other);
        }
        for message in due {
            match message.payload {
                Payload::Raft { from, to, from_incarnation, bytes, snapshot } => {
                    let reachable = self
                        .connected(self.controller_place(from), self.controller_place(to))
                        && self.controllers[to].is_some();
                    if snapshot {
                        let to_id = CONTROLLER_IDS[to];
                        if let Some(sender) = self.controllers[from].as_mut() {
                            if sender.incarnation == from_incarnation {
                                sender.node.report_snapshot(to_id, reachable);
                            }
                        }
                    }
                    if !reachable {
                        self.stats.lost += 1;
                        continue;
                    }
                    let decoded =
                        decode_message(&bytes).map_err(|e| format!("raft decode: {e}"))?;
                    let node = &mut self.controllers[to].as_mut().expect("checked reachable").node;
                    node.peer_message(CONTROLLER_IDS[from], decoded);
                    node.drive(now_ms);
                    self.stats.delivered += 1;
                    self.flush(to)?;
                }
                Payload::Request { token, to, bytes } => {
                    let reachable = self
                        .connected(self.broker_place(token.broker), self.controller_place(to))
                        && self.controllers[to].is_some();
                    if !reachable {
                        self.stats.lost += 1;
                        continue;
                    }
                    let request =
                        rpc::decode_request(&bytes).map_err(|e| format!("request decode: {e}"))?;
                    if let ControllerRequest::Write { intents, .. } = &request {
                        for intent in intents {
                            if let Intent::ElectLeaders { unclean: true, partitions } = intent {
                                for (topic, partition) in partitions {
                                    self.reference.unclean_requested(topic, *partition);
                                }
                            }
                        }
                    }
                    let node = &mut self.controllers[to].as_mut().expect("checked reachable").node;
                    node.request(request, token, now_ms);
                    node.drive(now_ms);
                    self.stats.delivered += 1;
                    self.flush(to)?;
                }
                Payload::Response { from, token, bytes } => {
                    let reachable = self
                        .connected(self.controller_place(from), self.broker_place(token.broker));
                    let alive = self.brokers[token.broker].is_some()
                        && self.broker_incarnations[token.broker] == token.incarnation;
                    if !reachable || !alive {
                        self.stats.lost += 1;
                        continue;
                    }
                    let response = rpc::decode_response(&bytes)
                        .map_err(|e| format!("response decode: {e}"))?;
                    self.stats.delivered += 1;
                    self.broker_answer(token, response)?;
                }
            }
        }
        Ok(())
    }

    /// Checks what a controller applied and did, and sends its output.
    fn flush(&mut self, slot: usize) -> Check {
        let id = CONTROLLER_IDS[slot];
        let who = format!("controller {id}");
        let controller = self.controllers[slot].as_mut().expect("flushed controllers run");
        let incarnation = controller.incarnation;
        let applied = controller.node.take_applied();
        let output = controller.node.take_output();
        if let Some(reason) = controller.node.broken() {
            return Err(format!("{who} stopped serving: {reason}"));
        }
        let changed = !applied.is_empty();
        for applied in applied {
            match applied {
                Applied::Entry { first_offset, records } => {
                    self.reference.observe_entry(&who, first_offset, &records)?;
                }
                Applied::Snapshot { image } => {
                    self.stats.controller_snapshots += 1;
                    let expected = self.reference.image_at(image.next_offset())?;
                    if image != expected {
                        return Err(format!(
                            "{who} installed a snapshot at {} that is not the committed image there",
                            image.next_offset()
                        ));
                    }
                }
            }
        }
        let node = &self.controllers[slot].as_ref().expect("still running").node;
        if changed {
            let expected = self.reference.image_at(node.image().next_offset())?;
            if *node.image() != expected {
                return Err(format!(
                    "{who}'s image at {} is not the committed image there",
                    node.image().next_offset()
                ));
            }
        }
        if node.is_active() {
            let term = node.term();
            match self.active_by_term.insert(term, id) {
                Some(other) if other != id => {
                    return Err(format!("controllers {other} and {id} both active in term {term}"));
                }
                Some(_) => {}
                None => {
                    self.stats.active_terms += 1;
                    self.event(format!("controller {id} active in term {term}"));
                }
            }
        }
        if !output.adopted.is_empty() {
            return Err(format!("{who} adopted {:?} with nothing to adopt", output.adopted));
        }
        for (to, message) in output.messages {
            let to_slot = CONTROLLER_IDS[..self.config.controllers]
                .iter()
                .position(|&c| c == to)
                .ok_or(format!("{who} sent a message to unknown node {to}"))?;
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let bytes = encode_message(&message).map_err(|e| format!("raft encode: {e}"))?;
            let payload = Payload::Raft {
                from: slot,
                to: to_slot,
                from_incarnation: incarnation,
                bytes,
                snapshot,
            };
            let sent =
                self.send(self.controller_place(slot), self.controller_place(to_slot), payload);
            if !sent {
                let node = &mut self.controllers[slot].as_mut().expect("still running").node;
                node.report_unreachable(to);
                if snapshot {
                    node.report_snapshot(to, false);
                }
            }
        }
        for (token, response) in output.replies {
            self.check_answer(slot, token, &response)?;
            let bytes =
                rpc::encode_response(&response).map_err(|e| format!("response encode: {e}"))?;
            let payload = Payload::Response { from: slot, token, bytes };
            self.send(self.controller_place(slot), self.broker_place(token.broker), payload);
        }
        Ok(())
    }

    /// A controller's answer, against its committed image and the reference.
    fn check_answer(&self, slot: usize, token: Token, response: &ControllerResponse) -> Check {
        let id = CONTROLLER_IDS[slot];
        let image =
            self.controllers[slot].as_ref().expect("answering controllers run").node.image();
        let request = self.requests.get(&token.correlation).ok_or("an answer to no request")?;
        match (request, response) {
            (
                ControllerRequest::Register { broker, incarnation_id, .. },
                ControllerResponse::Registered { epoch },
            ) => {
                let registered = image.broker(*broker).ok_or(format!(
                    "controller {id} registered broker {broker}, not in its image"
                ))?;
                if registered.epoch != *epoch || registered.incarnation_id != *incarnation_id {
                    return Err(format!(
                        "controller {id} told broker {broker} epoch {epoch}; its image holds epoch {} of another incarnation? {}",
                        registered.epoch,
                        registered.incarnation_id != *incarnation_id
                    ));
                }
            }
            (
                ControllerRequest::Heartbeat { broker, epoch, .. },
                ControllerResponse::Heartbeat { fenced, .. },
            ) => {
                let registered = image.broker(*broker).ok_or(format!(
                    "controller {id} answered a heartbeat of unregistered broker {broker}"
                ))?;
                if registered.epoch != *epoch {
                    return Err(format!("controller {id} answered broker {broker}'s heartbeat at epoch {epoch}, registered at {}", registered.epoch));
                }
                if registered.fenced != *fenced {
                    return Err(format!(
                        "controller {id} told broker {broker} fenced={fenced}; its committed image says fenced={}",
                        registered.fenced
                    ));
                }
            }
            (
                ControllerRequest::Write { intents, .. },
                ControllerResponse::Written { outcomes, last_offset },
            ) => {
                if outcomes.len() != intents.len() {
                    return Err(format!(
                        "controller {id} answered {} intents with {} outcomes",
                        intents.len(),
                        outcomes.len()
                    ));
                }
                if *last_offset > image.offset() {
                    return Err(format!("controller {id} answered a write at {last_offset} before applying it (at {})", image.offset()));
                }
                if *last_offset >= 0 {
                    let after = self.reference.image_at(last_offset + 1)?;
                    for (intent, outcome) in intents.iter().zip(outcomes) {
                        if let (Intent::CreateTopic(topic), true) = (intent, outcome.is_ok()) {
                            let stored = after.topic(&topic.name).map(|t| t.topic_id);
                            if stored != Some(topic.topic_id) {
                                return Err(format!(
                                    "controller {id} said topic {} was created by offset {last_offset}; the log says {stored:?}",
                                    topic.name
                                ));
                            }
                        }
                    }
                }
            }
            (
                ControllerRequest::FetchMetadata { next_offset, .. },
                ControllerResponse::Records { first_offset, batch },
            ) => {
                if first_offset != next_offset {
                    return Err(format!("controller {id} answered a fetch from {next_offset} with records from {first_offset}"));
                }
                let records = metadata::decode_batch(batch).map_err(|e| e.to_string())?;
                let end = *first_offset as usize + records.len();
                if end > self.reference.records.len()
                    || self.reference.records[*first_offset as usize..end] != records[..]
                {
                    return Err(format!("controller {id} served records {first_offset}..{end} that are not the committed ones"));
                }
            }
            (
                ControllerRequest::FetchMetadata { .. },
                ControllerResponse::Snapshot { image: bytes },
            ) => {
                let served = MetadataImage::decode_snapshot(bytes).map_err(|e| e.to_string())?;
                if served != self.reference.image_at(served.next_offset())? {
                    return Err(format!(
                        "controller {id} served a snapshot at {} that is not the committed image",
                        served.next_offset()
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn poll_broker(&mut self, slot: usize) {
        let now_ms = self.now_ms;
        let mut correlations = self.correlations;
        let Some(broker) = self.brokers[slot].as_mut() else { return };
        let sends = broker.poll(now_ms, &mut || {
            correlations += 1;
            correlations
        });
        self.correlations = correlations;
        let incarnation = self.broker_incarnations[slot];
        for send in sends {
            let bytes = rpc::encode_request(&send.request).expect("requests encode");
            self.requests.insert(send.correlation, send.request);
            let token =
                Token { broker: slot, incarnation, lane: send.lane, correlation: send.correlation };
            let payload = Payload::Request { token, to: send.to, bytes };
            self.send(self.broker_place(slot), self.controller_place(send.to), payload);
        }
    }

    fn broker_answer(&mut self, token: Token, response: ControllerResponse) -> Check {
        let now_ms = self.now_ms;
        let broker = self.brokers[token.broker].as_mut().expect("checked alive");
        let id = broker.id;
        let offset_before = broker.image.next_offset();
        let event = broker.answer(token.lane, token.correlation, response, now_ms)?;
        let offset_after = broker.image.next_offset();
        match event {
            Event::Nothing => {}
            Event::Registered { epoch } => {
                match self.epochs_told.get(&id) {
                    Some(&(incarnation, told))
                        if incarnation == token.incarnation && epoch < told =>
                    {
                        return Err(format!("broker {id} was told epoch {epoch} after {told}"));
                    }
                    Some(&(incarnation, told))
                        if incarnation != token.incarnation && epoch <= told =>
                    {
                        return Err(format!(
                            "broker {id}'s incarnation {} was told epoch {epoch}, not above its predecessor's {told}",
                            token.incarnation
                        ));
                    }
                    _ => {}
                }
                self.epochs_told.insert(id, (token.incarnation, epoch));
                self.event(format!(
                    "broker {id} (incarnation {}) registered at epoch {epoch}",
                    token.incarnation
                ));
            }
            Event::Applied { first_offset, count } => {
                self.stats.broker_records += count as u64;
                let end = first_offset as usize + count;
                let served = &self.brokers[token.broker].as_ref().expect("alive").image;
                if first_offset != offset_before || end > self.reference.records.len() {
                    return Err(format!(
                        "broker {id} at offset {offset_before} applied records {first_offset}..{end}"
                    ));
                }
                self.check_broker_image(token.broker, served.next_offset(), offset_before)?;
            }
            Event::Snapshot => {
                self.stats.broker_snapshots += 1;
                self.check_broker_image(token.broker, offset_after, offset_before)?;
            }
            Event::Written { ok, .. } => {
                self.stats.intents_ok += ok as u64;
            }
            Event::WriteFailed => {}
        }
        Ok(())
    }

    fn check_broker_image(&self, slot: usize, next_offset: i64, before: i64) -> Check {
        let broker = self.brokers[slot].as_ref().expect("checked brokers run");
        if next_offset < before {
            return Err(format!(
                "broker {}'s image went back from {before} to {next_offset}",
                broker.id
            ));
        }
        let expected = self.reference.image_at(next_offset)?;
        if broker.image != expected {
            return Err(format!(
                "broker {}'s image at {next_offset} is not the committed image there",
                broker.id
            ));
        }
        Ok(())
    }

    // --- clients ---

    fn new_topic(&mut self, name: &str, partitions: i32, replication_factor: i16) -> NewTopic {
        self.topic_ids += 1;
        let mut topic_id = [0u8; 16];
        topic_id[..8].copy_from_slice(&self.seed.to_be_bytes());
        topic_id[8..].copy_from_slice(&self.topic_ids.to_be_bytes());
        let mut configs = Vec::new();
        if self.rng.chance(200) {
            let value = if self.rng.chance(500) { "true" } else { "false" };
            configs.push(("unclean.leader.election.enable".to_string(), value.to_string()));
        }
        NewTopic {
            name: name.to_string(),
            topic_id,
            partitions,
            replication_factor,
            assignments: Vec::new(),
            configs,
        }
    }

    /// A client sends an intent to a random broker that can take one.
    fn client_intent(&mut self) {
        let ready: Vec<usize> = (0..self.brokers.len())
            .filter(|&b| {
                self.brokers[b].as_ref().is_some_and(|b| b.epoch.is_some() && b.write.is_none())
            })
            .collect();
        if ready.is_empty() {
            return;
        }
        let slot = ready[self.rng.below(ready.len() as u64) as usize];
        let image = self.reference.latest().clone();
        let name = TOPIC_NAMES[self.rng.below(TOPIC_NAMES.len() as u64) as usize].to_string();
        let existing = image.topic(&name);
        let pick_partition =
            |rng: &mut Rng| existing.map_or(0, |t| rng.below(t.partitions.max(1) as u64) as i32);
        let intent = match self.rng.below(100) {
            0..=34 => {
                let partitions = self.rng.between(1, 3) as i32;
                let replication_factor = self.rng.between(1, 3) as i16;
                Intent::CreateTopic(self.new_topic(&name, partitions, replication_factor))
            }
            35..=44 => Intent::CreatePartitions {
                name: name.clone(),
                partitions: existing.map_or(2, |t| t.partitions) + self.rng.between(1, 2) as i32,
                assignments: Vec::new(),
            },
            45..=54 => Intent::DeleteTopic { name: name.clone() },
            55..=69 => {
                let partitions = if self.rng.chance(300) {
                    Vec::new()
                } else {
                    vec![(name.clone(), pick_partition(&mut self.rng))]
                };
                Intent::ElectLeaders { unclean: false, partitions }
            }
            70..=79 => {
                let partition = pick_partition(&mut self.rng);
                Intent::ElectLeaders { unclean: true, partitions: vec![(name.clone(), partition)] }
            }
            80..=93 => {
                let partition = pick_partition(&mut self.rng);
                let target = if self.rng.chance(250) {
                    None
                } else {
                    let mut ids = self.broker_ids.clone();
                    for at in (1..ids.len()).rev() {
                        let other = self.rng.below(at as u64 + 1) as usize;
                        ids.swap(at, other);
                    }
                    ids.truncate(self.rng.between(1, 3) as usize);
                    Some(ids)
                };
                Intent::Reassign { topic: name.clone(), partition, target }
            }
            _ => {
                let value = if self.rng.chance(500) { "true" } else { "false" };
                Intent::SetTopicConfigs {
                    name: name.clone(),
                    configs: vec![("unclean.leader.election.enable".into(), value.into())],
                }
            }
        };
        self.stats.intents_sent += 1;
        self.event(format!("client asks broker {} to {intent:?}", self.broker_ids[slot]));
        let broker = self.brokers[slot].as_mut().expect("ready brokers run");
        broker.write = Some(broker::Write {
            intents: vec![intent],
            deadline_ms: self.now_ms + broker::WRITE_DEADLINE_MS,
        });
    }

    // --- the end ---

    /// Heals everything and requires the cluster to settle and take a fresh write.
    fn recover(&mut self) -> Check {
        self.groups = None;
        self.config.loss = 0;
        self.config.duplication = 0;
        for process in 0..self.processes() {
            // A broker in the middle of a controlled shutdown finishes it: it stops, and
            // comes back below.
            let (_, broker) = self.process_parts(process);
            if broker.and_then(|b| self.brokers[b].as_ref()).is_some_and(|b| b.want_shutdown) {
                self.crash_process(process);
            }
            if !self.process_up(process) {
                self.start_process(process)?;
            }
        }
        self.event("recovery: network healed, every process up".into());
        let deadline_ms = self.now_ms + self.config.recovery_ms_max;
        while !self.settled() {
            if self.now_ms >= deadline_ms {
                return Err(format!("liveness: the cluster did not settle: {}", self.describe()));
            }
            self.step(false)?;
        }
        self.event("recovery: settled".into());
        let replication_factor = self.config.brokers.min(3) as i16;
        let topic = self.new_topic("final", 2, replication_factor);
        let mut attempts = 0;
        loop {
            if self.now_ms >= deadline_ms {
                return Err(format!(
                    "liveness: the final topic did not reach every node ({attempts} attempts): {}",
                    self.describe()
                ));
            }
            let committed = self.reference.latest().topic("final").map(|t| t.topic_id);
            if committed.is_some_and(|id| id != topic.topic_id) {
                return Err("the final topic was created with another id".into());
            }
            let everywhere = committed.is_some()
                && self.brokers.iter().flatten().all(|b| b.image.topic("final").is_some())
                && self
                    .controllers
                    .iter()
                    .flatten()
                    .all(|c| c.node.image().topic("final").is_some());
            if everywhere {
                return self.check_final();
            }
            if committed.is_none() {
                let slot = self.rng.below(self.brokers.len() as u64) as usize;
                let broker = self.brokers[slot].as_mut().expect("every broker is up");
                if broker.write.is_none() {
                    attempts += 1;
                    broker.write = Some(broker::Write {
                        intents: vec![Intent::CreateTopic(topic.clone())],
                        deadline_ms: self.now_ms + broker::WRITE_DEADLINE_MS,
                    });
                }
            }
            self.step(false)?;
        }
    }

    /// A controller is active; every broker registered, unfenced (and told so) and caught
    /// up with it; every partition led.
    fn settled(&self) -> bool {
        let Some(active) = self
            .controllers
            .iter()
            .flatten()
            .filter(|c| c.node.is_active())
            .max_by_key(|c| c.node.term())
        else {
            return false;
        };
        let image = active.node.image();
        let brokers_ok = self.brokers.iter().all(|b| {
            b.as_ref().is_some_and(|b| {
                b.epoch.is_some()
                    && !b.fenced
                    && b.image.next_offset() == image.next_offset()
                    && image
                        .broker(b.id)
                        .is_some_and(|r| !r.fenced && r.incarnation_id == b.incarnation_id)
            })
        });
        brokers_ok && image.topics().all(|t| t.placements.values().all(|p| p.leader != NO_LEADER))
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        for controller in self.controllers.iter().flatten() {
            let node = &controller.node;
            text.push_str(&format!(
                "\n    controller {}: term {} active {} offset {}",
                node.node_id(),
                node.term(),
                node.is_active(),
                node.image().offset()
            ));
        }
        let latest = self.reference.latest();
        for broker in self.brokers.iter().flatten() {
            text.push_str(&format!(
                "\n    broker {}: epoch {:?} fenced {} offset {} committed registration {:?}",
                broker.id,
                broker.epoch,
                broker.fenced,
                broker.image.offset(),
                latest.broker(broker.id).map(|r| (
                    r.epoch,
                    r.fenced,
                    r.incarnation_id == broker.incarnation_id
                ))
            ));
        }
        for topic in latest.topics() {
            for (partition, p) in &topic.placements {
                if p.leader == NO_LEADER {
                    text.push_str(&format!("\n    {}-{partition} leaderless: {p:?}", topic.name));
                }
            }
        }
        text.push_str(&format!("\n    committed log end {}", self.reference.next_offset()));
        text
    }

    /// Every node holds the whole committed log: nothing committed was lost.
    fn check_final(&self) -> Check {
        let latest = self.reference.latest();
        for broker in self.brokers.iter().flatten() {
            if broker.image.next_offset() > latest.next_offset() {
                return Err(format!("broker {} is past the committed log", broker.id));
            }
        }
        for controller in self.controllers.iter().flatten() {
            let image = controller.node.image();
            if *image != self.reference.image_at(image.next_offset())? {
                return Err(format!(
                    "controller {}'s final image is not the committed one",
                    controller.node.node_id()
                ));
            }
        }
        Ok(())
    }
}

fn clone_payload(payload: &Payload) -> Payload {
    match payload {
        Payload::Raft { from, to, from_incarnation, bytes, snapshot } => Payload::Raft {
            from: *from,
            to: *to,
            from_incarnation: *from_incarnation,
            bytes: bytes.clone(),
            snapshot: *snapshot,
        },
        Payload::Request { token, to, bytes } => {
            Payload::Request { token: *token, to: *to, bytes: bytes.clone() }
        }
        Payload::Response { from, token, bytes } => {
            Payload::Response { from: *from, token: *token, bytes: bytes.clone() }
        }
    }
}

/// Runs one seed, turning a panic (ours, the controller's or raft-rs's) into a failure.
fn run_seed(seed: u64, controllers: usize) -> Result<Stats, String> {
    run_seed_with(seed, controllers, |_| {})
}

fn run_seed_with(
    seed: u64,
    controllers: usize,
    setup: impl FnOnce(&mut Sim),
) -> Result<Stats, String> {
    let config = SimConfig::for_seed(controllers, &mut Rng::new(!seed));
    seeds::catching(|| {
        let mut sim = Sim::new(seed, config)?;
        setup(&mut sim);
        match sim.run() {
            Ok(()) => {
                let mut stats = sim.stats.clone();
                stats.reference = sim.reference.stats.clone();
                Ok(stats)
            }
            Err(error) => Err(sim.explain(error)),
        }
    })
}

/// Seeds each for 3 and for 5 controllers when no environment says otherwise: sized so
/// the tests stay under 30 s in a debug build on a slow 2-core machine.
const DEFAULT_SEEDS: u64 = 60;

fn run_seeds(controllers: usize) {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    let seeds = seeds::to_run(DEFAULT_SEEDS);
    for &seed in &seeds {
        match run_seed(seed, controllers) {
            Ok(stats) => total.add(&stats),
            Err(error) => {
                eprintln!("{controllers} controllers, seed {seed} FAILED: {error}\n  rerun: SLUICE_SIM_SEED={seed} cargo test -p sluice-cluster controller::sim -- --nocapture");
                failures.push(seed);
            }
        }
    }
    eprintln!("{controllers} controllers, {} seeds: {total:?}", seeds.len());
    assert!(
        failures.is_empty(),
        "{controllers} controllers: seeds {failures:?} failed (rerun one with SLUICE_SIM_SEED=<seed>)"
    );
    // A simulation that never crashed, fenced or moved a leader proves little.
    if seeds.len() >= 5 {
        assert!(total.crashes > 0 && total.restarts > 0, "{total:?}");
        assert!(total.shutdowns_allowed > 0, "{total:?}");
        assert!(total.partitions > 0 && total.lost > 0 && total.duplicated > 0, "{total:?}");
        assert!(total.active_terms > seeds.len() as u64, "{total:?}");
        assert!(total.reference.fencings > 0 && total.reference.leader_changes > 0, "{total:?}");
        assert!(
            total.reference.topics_created > 0 && total.reference.topics_deleted > 0,
            "{total:?}"
        );
        assert!(total.broker_records > 0 && total.intents_ok > 0, "{total:?}");
    }
}

#[test]
fn three_controllers_and_brokers_stay_safe_and_live_under_chaos() {
    run_seeds(3);
}

#[test]
fn five_controllers_and_brokers_stay_safe_and_live_under_chaos() {
    run_seeds(5);
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_seed(7, 3).unwrap();
    let second = run_seed(7, 3).unwrap();
    assert_eq!(first, second);
    assert!(first.reference.entries > 0, "{first:?}");
}
