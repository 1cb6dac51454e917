//! A seeded, deterministic simulation of the controller quorum: 3 or 5 [`QuorumNode`]s on
//! real storage in a temp dir, a network that delays, reorders, loses and duplicates
//! messages and splits into partitions that come and heal, nodes that crash and restart,
//! clients that propose to whichever node believes it leads, and applications that
//! compact now and then so lagging or restarted nodes catch up from snapshots.
//!
//! Storage runs with [`Durability::NoSync`]: a simulated crash drops the process's memory
//! (the node and its application are rebuilt from the directory), while everything the
//! node wrote is still in the files, which is what fsync'd storage gives a real crash.
//! Torn writes are the storage unit tests' business.
//!
//! Checked after every poll and every round:
//! - election safety: at most one leader per term over the whole run, restarts included;
//! - state machine safety: every entry a node applies equals (index, term, data) what
//!   every other node applied at that index, and each node's state is exactly the global
//!   committed sequence up to its applied index (nothing skipped, nothing extra);
//! - leader completeness: an entry applied anywhere while that node was in term t is in
//!   the log (or snapshot) of every leader of a term after t;
//! - a node's commit index never goes back while it runs, and after a restart it is at
//!   most [`COMMIT_PERSIST_LAG_MAX`] behind;
//! - liveness at the end: with the network healed and every node up, a leader is elected
//!   and a fresh proposal commits on every node within a bounded number of ticks, and
//!   every node's state equals the application entries of the leader's committed log.
//!
//! `SLUICE_SIM_SEEDS=<n>` runs seeds 0..n (from `SLUICE_SIM_SEED_START`, default 0);
//! `SLUICE_SIM_SEED=<s>` runs only seed `s`. A failure names its seed.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use raft::eraftpb::{EntryType, MessageType};

use super::{
    decode_message, encode_message, Committed, Durability, ProposeError, QuorumNode, QuorumOptions,
    COMMIT_PERSIST_LAG_MAX,
};
use crate::rng::{seeds, SplitMix64};
use crate::BrokerId;

/// Rounds the recovery waits for its proposal to commit before proposing again.
const RETRY_ROUNDS: u64 = 60;

/// Client proposals tried per round, each with the seed's chance.
const PROPOSALS_PER_ROUND_MAX: usize = 3;

/// Node ids of the simulated controllers: 0 included, and gaps, as Kafka allows.
const NODE_IDS: [BrokerId; 5] = [0, 2, 5, 6, 9];

/// Knobs of one simulated run.
#[derive(Debug, Clone)]
struct SimConfig {
    nodes: usize,
    /// Rounds of chaos; each round is one tick (100 ms of controller time).
    rounds: u64,
    /// Rounds allowed for the final recovery.
    recovery_rounds_max: u64,
    /// Per-mille chances, per round or per message.
    loss: u64,
    duplication: u64,
    delay_rounds_max: u64,
    partition: u64,
    heal: u64,
    crash: u64,
    /// A crash followed at once by a restart: a process that comes straight back.
    bounce: u64,
    restart: u64,
    propose: u64,
    compact: u64,
    snapshot_entries_min: u64,
}

impl SimConfig {
    /// Fault rates drawn per seed ("swarm testing"): some runs lose many messages, some
    /// crash often, some partition often, so that faults combine in ways fixed rates
    /// make rare.
    fn for_seed(nodes: usize, rng: &mut SplitMix64) -> Self {
        let mut between = |low: u64, high: u64| rng.between(low, high);
        SimConfig {
            nodes,
            rounds: 300,
            recovery_rounds_max: 400,
            loss: between(0, 200),
            duplication: between(0, 100),
            delay_rounds_max: between(0, 4),
            partition: between(0, 60),
            heal: between(20, 150),
            crash: between(0, 40),
            bounce: between(0, 40),
            restart: between(20, 300),
            propose: between(200, 1000),
            compact: between(100, 1000),
            snapshot_entries_min: between(4, 30),
        }
    }
}

/// The simulated application: the list of entries it applied, and the index its state is
/// as of. Its snapshot is that list, so a snapshot can be checked entry by entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct App {
    applied_index: u64,
    entries: Vec<(u64, u64, Vec<u8>)>,
}

impl App {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = self.applied_index.to_be_bytes().to_vec();
        for (index, term, data) in &self.entries {
            bytes.extend_from_slice(&index.to_be_bytes());
            bytes.extend_from_slice(&term.to_be_bytes());
            bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
            bytes.extend_from_slice(data);
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> App {
        let applied_index = u64::from_be_bytes(bytes[0..8].try_into().unwrap());
        let mut entries = Vec::new();
        let mut rest = &bytes[8..];
        while !rest.is_empty() {
            let index = u64::from_be_bytes(rest[0..8].try_into().unwrap());
            let term = u64::from_be_bytes(rest[8..16].try_into().unwrap());
            let length = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
            entries.push((index, term, rest[20..20 + length].to_vec()));
            rest = &rest[20 + length..];
        }
        App { applied_index, entries }
    }

    fn decode_or_empty(bytes: &[u8]) -> App {
        if bytes.is_empty() {
            App::default()
        } else {
            App::decode(bytes)
        }
    }
}

struct SimNode {
    quorum: QuorumNode,
    app: App,
    /// Bumped at every restart, so in-flight snapshot reports reach only the sender.
    incarnation: u64,
    /// Not polled since it was opened: a snapshot now is the one restored from disk.
    fresh: bool,
}

struct InFlight {
    deliver_at: u64,
    from: usize,
    to: usize,
    from_incarnation: u64,
    bytes: Vec<u8>,
    snapshot: bool,
}

/// A committed application entry as first observed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    term: u64,
    data: Vec<u8>,
    /// The lowest term of a node applying it: it was committed in this term or before,
    /// so every leader of a later term must hold it.
    committed_by_term: u64,
}

/// Counts that show a run exercised what it was meant to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stats {
    delivered: u64,
    lost: u64,
    duplicated: u64,
    partitions: u64,
    crashes: u64,
    restarts: u64,
    proposals: u64,
    /// Entries applied, counting every node and every re-application after a restart.
    applied: u64,
    compactions: u64,
    /// Snapshots restored from a node's own disk when it restarted.
    snapshots_restored: u64,
    /// Snapshots a leader sent to a lagging follower.
    snapshots_received: u64,
    leaders: u64,
    max_term: u64,
}

struct Sim {
    seed: u64,
    config: SimConfig,
    rng: SplitMix64,
    _dir: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    ids: Vec<BrokerId>,
    nodes: Vec<Option<SimNode>>,
    incarnations: Vec<u64>,
    network: Vec<InFlight>,
    /// Partition group of each node, when the network is split.
    groups: Option<Vec<u8>>,
    now: u64,
    leaders_by_term: BTreeMap<u64, BrokerId>,
    committed: BTreeMap<u64, Observed>,
    commit_seen: Vec<u64>,
    proposal_serial: u64,
    stats: Stats,
    events: Vec<String>,
}

type Check = Result<(), String>;

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let ids = NODE_IDS[..config.nodes].to_vec();
        let dirs = ids
            .iter()
            .map(|id| dir.path().join(format!("node-{id}")).join("__cluster_metadata").join("raft"))
            .collect();
        let count = config.nodes;
        let mut sim = Sim {
            seed,
            config,
            rng: SplitMix64::new(seed),
            _dir: dir,
            dirs,
            ids,
            nodes: (0..count).map(|_| None).collect(),
            incarnations: vec![0; count],
            network: Vec::new(),
            groups: None,
            now: 0,
            leaders_by_term: BTreeMap::new(),
            committed: BTreeMap::new(),
            commit_seen: vec![0; count],
            proposal_serial: 0,
            stats: Stats::default(),
            events: Vec::new(),
        };
        for slot in 0..count {
            sim.start(slot).unwrap();
        }
        sim
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.below(1000) < per_mille
    }

    fn event(&mut self, text: String) {
        self.events.push(format!("[{}] {text}", self.now));
    }

    fn start(&mut self, slot: usize) -> Check {
        self.incarnations[slot] += 1;
        let options = QuorumOptions {
            node_id: self.ids[slot],
            voters: self.ids.clone(),
            durability: Durability::NoSync,
            snapshot_entries_min: self.config.snapshot_entries_min,
            election_seed: self.seed.wrapping_mul(31).wrapping_add(self.incarnations[slot]),
        };
        let quorum = QuorumNode::open(&self.dirs[slot], options)
            .map_err(|e| format!("node {} open: {e}", self.ids[slot]))?;
        // The commit index on disk trails by less than the lag the node allows itself.
        let commit = quorum.commit_index();
        if commit + COMMIT_PERSIST_LAG_MAX <= self.commit_seen[slot] {
            return Err(format!(
                "node {} restarted at commit index {commit}, having reached {}",
                self.ids[slot], self.commit_seen[slot]
            ));
        }
        self.commit_seen[slot] = commit;
        self.nodes[slot] = Some(SimNode {
            quorum,
            app: App::default(),
            incarnation: self.incarnations[slot],
            fresh: true,
        });
        Ok(())
    }

    fn run(&mut self) -> Check {
        for _ in 0..self.config.rounds {
            self.round(true)?;
        }
        self.recover()
    }

    /// A failure with the run's last events, for the report.
    fn explain(&self, error: String) -> String {
        let tail = self.events.len().saturating_sub(40);
        format!(
            "{error}\n  {:?}\n  last events:\n    {}",
            self.config,
            self.events[tail..].join("\n    ")
        )
    }

    /// One tick of everything. `chaos` turns faults on.
    fn round(&mut self, chaos: bool) -> Check {
        self.now += 1;
        if chaos {
            self.faults()?;
        }
        for slot in 0..self.nodes.len() {
            if let Some(node) = self.nodes[slot].as_mut() {
                node.quorum.tick();
                self.poll(slot)?;
            }
        }
        for _ in 0..PROPOSALS_PER_ROUND_MAX {
            if chaos && self.chance(self.config.propose) {
                self.propose()?;
            }
        }
        self.deliver()?;
        if chaos {
            self.compact()?;
        }
        self.check_round()
    }

    fn faults(&mut self) -> Check {
        let count = self.nodes.len();
        if self.groups.is_some() {
            if self.chance(self.config.heal) {
                self.groups = None;
                self.event("partition healed".into());
            }
        } else if self.chance(self.config.partition) {
            let groups: Vec<u8> = (0..count).map(|_| self.rng.below(2) as u8).collect();
            self.event(format!("partition {groups:?}"));
            self.groups = Some(groups);
            self.stats.partitions += 1;
        }
        for slot in 0..count {
            if self.nodes[slot].is_some() && self.chance(self.config.bounce) {
                self.nodes[slot] = None;
                self.start(slot)?;
                self.stats.crashes += 1;
                self.stats.restarts += 1;
                self.event(format!("node {} bounced", self.ids[slot]));
                self.poll(slot)?;
                continue;
            }
            if self.nodes[slot].is_some() {
                if self.chance(self.config.crash) {
                    self.nodes[slot] = None;
                    self.stats.crashes += 1;
                    self.event(format!("node {} crashed", self.ids[slot]));
                }
            } else if self.chance(self.config.restart) {
                self.start(slot)?;
                self.stats.restarts += 1;
                self.event(format!("node {} restarted", self.ids[slot]));
                self.poll(slot)?;
            }
        }
        Ok(())
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        match &self.groups {
            Some(groups) => groups[a] == groups[b],
            None => true,
        }
    }

    /// A client proposes to a node that believes it leads; now and then to any node, which
    /// must answer with the leader it knows if it does not lead.
    fn propose(&mut self) -> Check {
        let count = self.nodes.len();
        let leader =
            (0..count).find(|&s| self.nodes[s].as_ref().is_some_and(|n| n.quorum.is_leader()));
        let slot = match leader {
            Some(slot) if self.chance(800) => slot,
            _ => self.rng.below(count as u64) as usize,
        };
        let Some(node) = self.nodes[slot].as_mut() else {
            return Ok(());
        };
        self.proposal_serial += 1;
        let data = format!("s{}-p{}", self.seed, self.proposal_serial).into_bytes();
        let leads = node.quorum.is_leader();
        let known_leader = node.quorum.leader();
        match node.quorum.propose(data) {
            Ok(()) if leads => self.stats.proposals += 1,
            Ok(()) => {
                return Err(format!(
                    "node {} accepted a proposal but does not lead",
                    self.ids[slot]
                ))
            }
            Err(ProposeError::NotLeader { leader }) if !leads => {
                if leader != known_leader {
                    return Err(format!(
                        "NotLeader names {leader:?}, the node knows {known_leader:?}"
                    ));
                }
            }
            Err(ProposeError::Dropped) if leads => {}
            Err(error) => return Err(format!("proposal to node {}: {error}", self.ids[slot])),
        }
        self.poll(slot)
    }

    fn deliver(&mut self) -> Check {
        let now = self.now;
        let (due, later): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.network).into_iter().partition(|m| m.deliver_at <= now);
        self.network = later;
        let mut due = due;
        // Fisher-Yates: messages due in the same round arrive in any order.
        for at in (1..due.len()).rev() {
            let other = self.rng.below(at as u64 + 1) as usize;
            due.swap(at, other);
        }
        for message in due {
            let reachable =
                self.connected(message.from, message.to) && self.nodes[message.to].is_some();
            if message.snapshot {
                self.report_snapshot(&message, reachable);
            }
            if !reachable {
                self.stats.lost += 1;
                continue;
            }
            let decoded = decode_message(&message.bytes).map_err(|e| format!("decode: {e}"))?;
            let node = self.nodes[message.to].as_mut().expect("checked reachable");
            if let Err(error) = node.quorum.step(decoded) {
                // raft-rs refuses some stale messages (a response from a peer it has no
                // progress for cannot happen with fixed voters); the sim never sends a
                // message the node should refuse for its address or type.
                return Err(format!("node {} refused a message: {error}", self.ids[message.to]));
            }
            self.stats.delivered += 1;
            self.poll(message.to)?;
        }
        Ok(())
    }

    /// The transport tells a leader whether its snapshot arrived, as a TCP send would.
    fn report_snapshot(&mut self, message: &InFlight, delivered: bool) {
        let to = self.ids[message.to];
        if let Some(sender) = self.nodes[message.from].as_mut() {
            if sender.incarnation == message.from_incarnation {
                sender.quorum.report_snapshot(to, delivered);
            }
        }
    }

    /// Polls a node, sends its messages into the network and applies what it committed.
    fn poll(&mut self, slot: usize) -> Check {
        let id = self.ids[slot];
        let node = self.nodes[slot].as_mut().expect("polled nodes run");
        let output = node.quorum.poll().map_err(|e| format!("node {id} poll: {e}"))?;
        let incarnation = node.incarnation;
        for (to, message) in output.messages {
            let to_slot = self
                .ids
                .iter()
                .position(|&i| i == to)
                .ok_or(format!("message to unknown node {to}"))?;
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let bytes = encode_message(&message).map_err(|e| format!("encode: {e}"))?;
            let copies = if self.chance(self.config.duplication) { 2 } else { 1 };
            if copies == 2 {
                self.stats.duplicated += 1;
            }
            for _ in 0..copies {
                if !self.connected(slot, to_slot) || self.chance(self.config.loss) {
                    self.stats.lost += 1;
                    if snapshot {
                        if let Some(node) = self.nodes[slot].as_mut() {
                            node.quorum.report_snapshot(to, false);
                        }
                    }
                    continue;
                }
                let delay = self.rng.below(self.config.delay_rounds_max + 1);
                self.network.push(InFlight {
                    deliver_at: self.now + delay,
                    from: slot,
                    to: to_slot,
                    from_incarnation: incarnation,
                    bytes: bytes.clone(),
                    snapshot,
                });
            }
        }
        for committed in output.committed {
            self.apply(slot, committed)?;
        }
        if let Some(node) = self.nodes[slot].as_mut() {
            node.fresh = false;
        }
        self.check_node(slot)
    }

    fn apply(&mut self, slot: usize, committed: Committed) -> Check {
        let id = self.ids[slot];
        let node = self.nodes[slot].as_mut().expect("applied nodes run");
        let term_now = node.quorum.term();
        match committed {
            Committed::Entry { index, term, data } => {
                if index <= node.app.applied_index {
                    return Err(format!(
                        "node {id} applied index {index} after {}",
                        node.app.applied_index
                    ));
                }
                node.app.applied_index = index;
                node.app.entries.push((index, term, data.clone()));
                self.stats.applied += 1;
                self.observe(id, index, term, data, term_now)
            }
            Committed::Snapshot { index, term, data } => {
                if index <= node.app.applied_index {
                    return Err(format!(
                        "node {id} got a snapshot at {index}, not past its applied index {}",
                        node.app.applied_index
                    ));
                }
                let app = App::decode(&data);
                if app.applied_index != index {
                    return Err(format!(
                        "node {id} got a snapshot at {index} holding state as of {}",
                        app.applied_index
                    ));
                }
                node.app = app.clone();
                if node.fresh {
                    self.stats.snapshots_restored += 1;
                } else {
                    self.stats.snapshots_received += 1;
                }
                if node.quorum.storage().term_at(index) != Some(term) {
                    return Err(format!("node {id} installed a snapshot at ({index}, {term}) its storage does not hold"));
                }
                for (index, term, data) in app.entries {
                    self.observe(id, index, term, data, term_now)?;
                }
                Ok(())
            }
        }
    }

    /// Records an applied entry in the global committed sequence, or checks it against it.
    fn observe(
        &mut self,
        id: BrokerId,
        index: u64,
        term: u64,
        data: Vec<u8>,
        term_now: u64,
    ) -> Check {
        match self.committed.get_mut(&index) {
            Some(seen) => {
                if seen.term != term || seen.data != data {
                    return Err(format!(
                        "node {id} applied ({index}, {term}, {:?}) where ({index}, {}, {:?}) was applied",
                        String::from_utf8_lossy(&data),
                        seen.term,
                        String::from_utf8_lossy(&seen.data)
                    ));
                }
                seen.committed_by_term = seen.committed_by_term.min(term_now);
            }
            None => {
                self.committed.insert(index, Observed { term, data, committed_by_term: term_now });
            }
        }
        Ok(())
    }

    /// Checks that are cheap enough for every poll.
    fn check_node(&mut self, slot: usize) -> Check {
        let id = self.ids[slot];
        let node = self.nodes[slot].as_ref().expect("checked nodes run");
        let commit = node.quorum.commit_index();
        if commit < self.commit_seen[slot] {
            return Err(format!(
                "node {id} commit index went back from {} to {commit}",
                self.commit_seen[slot]
            ));
        }
        self.commit_seen[slot] = commit;
        if node.quorum.is_leader() {
            let term = node.quorum.term();
            if node.quorum.leader() != Some(id) {
                return Err(format!(
                    "node {id} leads term {term} but names {:?} as leader",
                    node.quorum.leader()
                ));
            }
            match self.leaders_by_term.insert(term, id) {
                Some(other) if other != id => {
                    return Err(format!(
                        "election safety: nodes {other} and {id} both lead term {term}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.stats.leaders += 1;
                    self.stats.max_term = self.stats.max_term.max(term);
                    self.event(format!("node {id} leads term {term}"));
                }
            }
        }
        Ok(())
    }

    /// Checks that walk whole logs and states: once per round.
    fn check_round(&mut self) -> Check {
        for slot in 0..self.nodes.len() {
            let id = self.ids[slot];
            let Some(node) = self.nodes[slot].as_ref() else {
                continue;
            };
            // The node's state is the global sequence up to its applied index.
            let expected = self.committed.range(..=node.app.applied_index);
            let same = expected.clone().count() == node.app.entries.len()
                && expected.clone().zip(&node.app.entries).all(|((&index, seen), (i, t, d))| {
                    index == *i && seen.term == *t && seen.data == *d
                });
            if !same {
                let missing: Vec<u64> = expected
                    .filter(|(&index, _)| !node.app.entries.iter().any(|e| e.0 == index))
                    .map(|(&index, _)| index)
                    .collect();
                return Err(format!(
                    "node {id}'s state is not the committed sequence up to {}: missing indexes {missing:?}",
                    node.app.applied_index
                ));
            }
            if node.quorum.is_leader() {
                self.check_leader_holds_committed(slot)?;
            }
        }
        Ok(())
    }

    /// Leader completeness: every entry committed in an earlier term is in the leader's
    /// log or covered by its snapshot.
    fn check_leader_holds_committed(&self, slot: usize) -> Check {
        let id = self.ids[slot];
        let quorum = &self.nodes[slot].as_ref().expect("leader runs").quorum;
        let term = quorum.term();
        let storage = quorum.storage();
        let snapshot_index = storage.snapshot_index();
        let snapshot: BTreeMap<u64, (u64, Vec<u8>)> =
            App::decode_or_empty(&storage.snapshot_ref().data)
                .entries
                .into_iter()
                .map(|(index, term, data)| (index, (term, data)))
                .collect();
        let log: BTreeMap<u64, (u64, Vec<u8>)> = quorum
            .log_entries()
            .into_iter()
            .map(|e| (e.index, (e.term, e.data.to_vec())))
            .collect();
        for (&index, seen) in &self.committed {
            if seen.committed_by_term >= term {
                continue;
            }
            let held_in = if index <= snapshot_index { &snapshot } else { &log };
            let held = held_in.get(&index).is_some_and(|(t, d)| *t == seen.term && *d == seen.data);
            if !held {
                return Err(format!(
                    "leader completeness: node {id}, leader of term {term}, lacks entry {index} (term {}) committed by term {}",
                    seen.term, seen.committed_by_term
                ));
            }
        }
        Ok(())
    }

    fn compact(&mut self) -> Check {
        for slot in 0..self.nodes.len() {
            let chance = self.chance(self.config.compact);
            let Some(node) = self.nodes[slot].as_mut() else {
                continue;
            };
            if !chance || !node.quorum.should_compact() {
                continue;
            }
            let applied_index = node.quorum.applied_index();
            let mut app = node.app.clone();
            app.applied_index = applied_index;
            node.quorum
                .compact(applied_index, app.encode())
                .map_err(|e| format!("node {} compact: {e}", self.ids[slot]))?;
            self.stats.compactions += 1;
        }
        Ok(())
    }

    /// Heals the network, restarts every node, and requires a leader and a fresh committed
    /// proposal on every node within `recovery_rounds_max` rounds.
    fn recover(&mut self) -> Check {
        self.groups = None;
        self.config.loss = 0;
        self.config.duplication = 0;
        for slot in 0..self.nodes.len() {
            if self.nodes[slot].is_none() {
                self.start(slot)?;
                self.poll(slot)?;
            }
        }
        self.event("recovery: network healed, every node up".into());
        // A proposal accepted by a leader that is about to lose its term (one cut off
        // before the heal, not yet stepped down) is legitimately lost: like a client, try
        // again with a fresh proposal when one has not committed in a while.
        let mut attempts: Vec<Vec<u8>> = Vec::new();
        let mut proposed_at = None;
        for round in 0..self.config.recovery_rounds_max {
            self.round(false)?;
            let overdue = match proposed_at {
                Some(at) => round >= at + RETRY_ROUNDS,
                None => true,
            };
            if overdue {
                if let Some(slot) = (0..self.nodes.len())
                    .find(|&s| self.nodes[s].as_ref().is_some_and(|n| n.quorum.is_leader()))
                {
                    let data = format!("s{}-final-{}", self.seed, attempts.len()).into_bytes();
                    let node = self.nodes[slot].as_mut().expect("found running");
                    if node.quorum.propose(data.clone()).is_ok() {
                        attempts.push(data);
                        proposed_at = Some(round);
                        self.poll(slot)?;
                    }
                }
            }
            let everywhere = attempts.iter().any(|data| {
                self.nodes
                    .iter()
                    .all(|n| n.as_ref().is_some_and(|n| n.app.entries.iter().any(|e| e.2 == *data)))
            });
            if everywhere {
                return self.check_final();
            }
        }
        let proposed = attempts.len();
        Err(format!(
            "liveness: no leader committed a fresh proposal on every node within {} rounds (proposals: {proposed}); {}",
            self.config.recovery_rounds_max,
            self.describe_nodes()
        ))
    }

    fn describe_nodes(&self) -> String {
        let mut text = String::new();
        for node in self.nodes.iter().flatten() {
            let quorum = &node.quorum;
            let storage = quorum.storage();
            text.push_str(&format!(
                "\n    node {}: term {} leader {:?} commit {} applied {} app {} snapshot {} last {} status {:?}",
                quorum.node_id(),
                quorum.term(),
                quorum.leader(),
                quorum.commit_index(),
                quorum.applied_index(),
                node.app.applied_index,
                storage.snapshot_index(),
                storage.snapshot_index() + storage.entries_since_snapshot(),
                quorum.status().voters,
            ));
        }
        text
    }

    /// Every node's state equals the application entries of the leader's committed log,
    /// which catches an entry every node skipped alike.
    fn check_final(&self) -> Check {
        let leader = self
            .nodes
            .iter()
            .flatten()
            .find(|n| n.quorum.is_leader())
            .ok_or("no leader at the end")?;
        let commit = leader.quorum.commit_index();
        let storage = leader.quorum.storage();
        let mut expected = App::decode_or_empty(&storage.snapshot_ref().data).entries;
        for entry in leader.quorum.log_entries() {
            if entry.index <= commit
                && entry.get_entry_type() == EntryType::EntryNormal
                && !entry.data.is_empty()
            {
                expected.push((entry.index, entry.term, entry.data.to_vec()));
            }
        }
        for node in self.nodes.iter().flatten() {
            if node.app.entries != expected {
                return Err(format!(
                    "node {}'s final state ({} entries) differs from the leader's committed log ({} entries)",
                    node.quorum.node_id(),
                    node.app.entries.len(),
                    expected.len()
                ));
            }
        }
        Ok(())
    }
}

/// Runs one seed, turning a panic (ours or raft-rs's) into a failure naming the seed.
fn run_seed(seed: u64, nodes: usize) -> Result<Stats, String> {
    let config = SimConfig::for_seed(nodes, &mut SplitMix64::new(!seed));
    seeds::catching(|| {
        let mut sim = Sim::new(seed, config);
        match sim.run() {
            Ok(()) => Ok(sim.stats.clone()),
            Err(error) => Err(sim.explain(error)),
        }
    })
}

/// Seeds each for 3 and for 5 nodes when no environment says otherwise: sized so the
/// test stays under 30 s in a debug build on a slow 2-core machine.
const DEFAULT_SEEDS: u64 = 80;

fn run_seeds(nodes: usize) {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    let seeds = seeds::to_run(DEFAULT_SEEDS);
    for &seed in &seeds {
        match run_seed(seed, nodes) {
            Ok(stats) => {
                total.delivered += stats.delivered;
                total.lost += stats.lost;
                total.duplicated += stats.duplicated;
                total.partitions += stats.partitions;
                total.crashes += stats.crashes;
                total.restarts += stats.restarts;
                total.proposals += stats.proposals;
                total.applied += stats.applied;
                total.compactions += stats.compactions;
                total.snapshots_restored += stats.snapshots_restored;
                total.snapshots_received += stats.snapshots_received;
                total.leaders += stats.leaders;
                total.max_term = total.max_term.max(stats.max_term);
            }
            Err(error) => {
                eprintln!("{nodes} nodes, seed {seed} FAILED: {error}\n  rerun: SLUICE_SIM_SEED={seed} cargo test -p sluice-cluster quorum::sim -- --nocapture");
                failures.push(seed);
            }
        }
    }
    eprintln!("{nodes} nodes, {} seeds: {total:?}", seeds.len());
    assert!(
        failures.is_empty(),
        "{nodes} nodes: seeds {failures:?} failed (rerun one with SLUICE_SIM_SEED=<seed>)"
    );
    // A simulation that never crashed, partitioned or snapshotted proves little.
    if seeds.len() >= 10 {
        assert!(total.crashes > 0 && total.restarts > 0, "{total:?}");
        assert!(total.partitions > 0 && total.lost > 0 && total.duplicated > 0, "{total:?}");
        assert!(total.compactions > 0, "{total:?}");
        assert!(total.snapshots_restored > 0 && total.snapshots_received > 0, "{total:?}");
        assert!(total.applied > total.proposals, "{total:?}");
    }
}

#[test]
fn three_controllers_stay_safe_and_live_under_chaos() {
    run_seeds(3);
}

#[test]
fn five_controllers_stay_safe_and_live_under_chaos() {
    run_seeds(5);
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_seed(7, 3).unwrap();
    let second = run_seed(7, 3).unwrap();
    assert_eq!(first, second);
    assert!(first.applied > 0, "{first:?}");
}
