//! [`QuorumNode`]: one controller's member of the Raft quorum, raft-rs's `RawNode` over
//! [`QuorumStorage`], with Kafka node ids at its edges and every `Ready` handled in the
//! order raft-rs documents.

use std::collections::BTreeMap;
use std::path::Path;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use thiserror::Error;
use tracing::{debug, warn};

use super::storage::{Durability, QuorumStorage, StorageError};
use super::{
    log, node_id, raft_id, APPEND_BYTES_MAX, COMMIT_PERSIST_LAG_MAX, ELECTION_TICKS,
    ENTRY_BYTES_MAX, HEARTBEAT_TICKS, UNCOMMITTED_BYTES_MAX,
};
use crate::rng::SplitMix64;
use crate::BrokerId;

/// Append messages in flight to one follower before the leader waits for answers.
const INFLIGHT_APPENDS_MAX: usize = 256;
/// `Ready`s handled in one [`QuorumNode::poll`]; one usually drains everything, a second
/// picks up what persisting the first made ready. More are left for the next poll.
const READY_ROUNDS_MAX: usize = 8;

/// How to open a [`QuorumNode`].
#[derive(Debug, Clone)]
pub struct QuorumOptions {
    /// This controller's `node.id`.
    pub node_id: BrokerId,
    /// Every voter's `node.id`, this one's included. Fixed at the first start: no dynamic
    /// membership yet.
    pub voters: Vec<BrokerId>,
    /// [`Durability::Sync`] for a controller; `NoSync` only in tests and simulation.
    pub durability: Durability,
    /// Applied entries since the last snapshot from which [`QuorumNode::should_compact`]
    /// says to hand over a new snapshot.
    pub snapshot_entries_min: u64,
    /// Seeds the randomized election timeout. Give each process its own value in
    /// production (the clock will do); a fixed one makes a simulation replay exactly.
    pub election_seed: u64,
}

/// Why the quorum node failed to open or run.
#[derive(Debug, Error)]
pub enum QuorumError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("node id {node_id} is negative; Kafka node ids are 0 or more")]
    InvalidNodeId { node_id: BrokerId },
    #[error("the controller quorum needs at least one voter")]
    NoVoters,
    #[error("voter {node_id} is listed twice")]
    DuplicateVoter { node_id: BrokerId },
    #[error("node {node_id} is not one of the voters {voters:?}")]
    NotAVoter { node_id: BrokerId, voters: Vec<BrokerId> },
    #[error("the quorum was created with voters {stored:?} but is now started with voters {given:?}; changing the voters is not supported")]
    VotersChanged { stored: Vec<BrokerId>, given: Vec<BrokerId> },
    #[error("the raft storage names voters that are not Kafka node ids ({raft_ids:?})")]
    InvalidStoredVoters { raft_ids: Vec<u64> },
    #[error("raft: {0}")]
    Raft(#[source] raft::Error),
    #[error("cannot snapshot at index {index}: must be after the snapshot at {snapshot_index} and at most the applied index {applied_index}")]
    CompactOutOfRange { index: u64, snapshot_index: u64, applied_index: u64 },
    #[error("the quorum node stopped after a storage failure; reopen it")]
    Stopped,
}

/// Why a proposal was not accepted. Nothing was appended.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<BrokerId> },
    #[error("empty proposal: empty entries are the leader's own")]
    Empty,
    #[error("proposal of {bytes} bytes exceeds the limit of {bytes_max} bytes")]
    TooLarge { bytes: usize, bytes_max: usize },
    #[error("proposal dropped: too many uncommitted bytes, or leadership is moving")]
    Dropped,
    #[error("the quorum node stopped after a storage failure; reopen it")]
    Stopped,
}

/// Why a message from the network was dropped. Nothing changed; log it and go on.
#[derive(Debug, Error)]
pub enum StepError {
    #[error("message for raft id {to}, not this node")]
    WrongRecipient { to: u64 },
    #[error("message from raft id {from}, not a voter")]
    UnknownSender { from: u64 },
    #[error("message of type {msg_type:?} is not accepted from the network")]
    UnexpectedType { msg_type: MessageType },
    #[error("raft rejected the message: {0}")]
    Raft(#[source] raft::Error),
    #[error("the quorum node stopped after a storage failure; reopen it")]
    Stopped,
}

/// An application-visible result of the quorum, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// A committed proposal: apply `data` to the state.
    Entry { index: u64, term: u64, data: Vec<u8> },
    /// The state as of `index`: replace the application's state with it. Comes from the
    /// leader when this node fell too far behind, and first after every open that finds
    /// a snapshot on disk.
    Snapshot { index: u64, term: u64, data: Vec<u8> },
}

/// What one [`QuorumNode::poll`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to send, each with the `node.id` to send it to. Encode with
    /// [`super::encode_message`]. For each `MsgSnapshot`, report the outcome with
    /// [`QuorumNode::report_snapshot`].
    pub messages: Vec<(BrokerId, Message)>,
    /// Committed entries and snapshots to apply, in order.
    pub committed: Vec<Committed>,
}

/// One voter as DescribeMetadataQuorum reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterStatus {
    /// The voter's `node.id`.
    pub node_id: BrokerId,
    /// The last index known to match the leader's log: known only on the leader
    /// (DescribeQuorum's log end offset).
    pub match_index: Option<u64>,
    /// Ticks since this node last heard from the voter (0 for itself); `None` if never
    /// since open. Multiply by the tick interval (100 ms) for a last-contact time.
    pub ticks_since_contact: Option<u64>,
}

/// The quorum as this node sees it, for DescribeMetadataQuorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    /// The `node.id` of the node reporting.
    pub node_id: BrokerId,
    /// The leader it knows of in the current term.
    pub leader: Option<BrokerId>,
    /// Its current term (DescribeQuorum's leader epoch).
    pub term: u64,
    /// The commit index: the last index a majority holds.
    pub high_watermark: u64,
    /// Every voter, sorted by node id.
    pub voters: Vec<VoterStatus>,
}

/// One controller's member of the Raft quorum. Sans-I/O apart from its own storage:
/// the caller calls [`Self::tick`] every 100 ms, hands over peers' messages with
/// [`Self::step`] and proposals with [`Self::propose`], and after any of them calls
/// [`Self::poll`] for messages to send and entries to apply. Lives on one thread (the
/// controller's quorum thread); its calls block on disk writes.
///
/// Pre-vote and check-quorum are on: a node cut off from the others cannot raise the term
/// (pre-vote), and a leader that has not heard from a majority for an election timeout
/// steps down (check-quorum).
pub struct QuorumNode {
    raw: RawNode<QuorumStorage>,
    node_id: BrokerId,
    /// Sorted.
    voters: Vec<BrokerId>,
    snapshot_entries_min: u64,
    /// The stored snapshot, handed to the application by the first poll after open.
    restore: Option<Snapshot>,
    election_rng: SplitMix64,
    ticks: u64,
    /// The tick at which each peer was last heard from.
    contact_ticks: BTreeMap<BrokerId, u64>,
    /// Set after a storage failure: raft-rs believes something is durable that may not
    /// be, so the node must not go on.
    stopped: bool,
}

impl std::fmt::Debug for QuorumNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumNode")
            .field("node_id", &self.node_id)
            .field("voters", &self.voters)
            .field("term", &self.term())
            .field("leader", &self.leader())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl QuorumNode {
    /// Opens the node's storage in `dir` (`<data_dir>/__cluster_metadata/raft/`). The first
    /// start records the voters; later starts must be given the same voters.
    pub fn open(dir: &Path, options: QuorumOptions) -> Result<Self, QuorumError> {
        let QuorumOptions { node_id, voters, durability, snapshot_entries_min, election_seed } =
            options;
        let id = raft_id(node_id).ok_or(QuorumError::InvalidNodeId { node_id })?;
        let mut voters_sorted = Vec::with_capacity(voters.len());
        for &voter in &voters {
            raft_id(voter).ok_or(QuorumError::InvalidNodeId { node_id: voter })?;
            voters_sorted.push(voter);
        }
        voters_sorted.sort_unstable();
        if voters_sorted.is_empty() {
            return Err(QuorumError::NoVoters);
        }
        if let Some(pair) = voters_sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(QuorumError::DuplicateVoter { node_id: pair[0] });
        }
        if voters_sorted.binary_search(&node_id).is_err() {
            return Err(QuorumError::NotAVoter { node_id, voters: voters_sorted });
        }

        let mut storage = QuorumStorage::open(dir, durability)?;
        if storage.is_initialized() {
            let stored = stored_voters(storage.conf_state())?;
            if stored != voters_sorted {
                return Err(QuorumError::VotersChanged { stored, given: voters_sorted });
            }
        } else {
            let voters = voters_sorted.iter().filter_map(|&v| raft_id(v)).collect();
            storage.initialize(ConfState { voters, ..ConfState::default() })?;
        }
        let snapshot = storage.snapshot_ref();
        let restore = (snapshot.get_metadata().index > 0).then(|| snapshot.clone());

        let config = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: APPEND_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_APPENDS_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            ..Config::default()
        };
        let raw =
            RawNode::new(&config, storage, &log::logger(node_id)).map_err(QuorumError::Raft)?;
        let mut node = QuorumNode {
            raw,
            node_id,
            voters: voters_sorted,
            snapshot_entries_min,
            restore,
            election_rng: SplitMix64::new(election_seed ^ id),
            ticks: 0,
            contact_ticks: BTreeMap::new(),
            stopped: false,
        };
        node.randomize_election_timeout();
        Ok(node)
    }

    /// Advances the node's clock by one tick. Call every [`TICK_MS`](super::TICK_MS)
    /// (100 ms): election and heartbeat timeouts are counted in ticks.
    pub fn tick(&mut self) {
        if self.stopped {
            return;
        }
        self.ticks += 1;
        self.raw.tick();
        self.randomize_election_timeout();
    }

    /// Hands the node a message from a peer. Messages for another node, from a node that
    /// is not a voter, or of a type peers never send are dropped with an error.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        if self.stopped {
            return Err(StepError::Stopped);
        }
        if Some(message.to) != raft_id(self.node_id) {
            return Err(StepError::WrongRecipient { to: message.to });
        }
        let from = match node_id(message.from) {
            Some(from) if from != self.node_id && self.voters.binary_search(&from).is_ok() => from,
            _ => return Err(StepError::UnknownSender { from: message.from }),
        };
        let msg_type = message.get_msg_type();
        if !accepted_from_network(msg_type) {
            return Err(StepError::UnexpectedType { msg_type });
        }
        self.contact_ticks.insert(from, self.ticks);
        let stepped = self.raw.step(message).map_err(StepError::Raft);
        self.randomize_election_timeout();
        stepped
    }

    /// Proposes `data` for the log. Only the leader accepts proposals; a follower answers
    /// with the leader it knows, for the caller to forward to. Accepted is not committed:
    /// the entry is committed when a poll returns it, and may be lost if leadership moves
    /// first.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ProposeError> {
        if self.stopped {
            return Err(ProposeError::Stopped);
        }
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        // Committed output skips empty normal entries as the leader's own.
        if data.is_empty() {
            return Err(ProposeError::Empty);
        }
        if data.len() > ENTRY_BYTES_MAX {
            return Err(ProposeError::TooLarge { bytes: data.len(), bytes_max: ENTRY_BYTES_MAX });
        }
        self.raw.propose(Vec::new(), data).map_err(|error| {
            debug!(node_id = self.node_id, %error, "proposal dropped by raft");
            ProposeError::Dropped
        })
    }

    /// Handles everything raft-rs has ready, in its documented order: messages a leader
    /// may send before persisting; then the received snapshot, the new entries and the
    /// hard state are made durable; then the messages that had to wait for that; then
    /// the committed entries. Everything returned is safe to act on: sends happen after
    /// this returns, so after persisting.
    ///
    /// The first poll after open returns the snapshot on disk, if any, then the committed
    /// entries after it up to the commit index on disk (which trails by less than
    /// [`COMMIT_PERSIST_LAG_MAX`]); the rest come once a leader confirms them. A poll
    /// handles at most a few `Ready`s; anything left comes with the next poll, so poll
    /// after every tick.
    ///
    /// A storage error stops the node ([`QuorumError::Stopped`] from then on): reopen it.
    pub fn poll(&mut self) -> Result<Output, QuorumError> {
        if self.stopped {
            return Err(QuorumError::Stopped);
        }
        let mut output = Output::default();
        if let Some(snapshot) = self.restore.take() {
            output.committed.push(committed_snapshot(&snapshot));
        }
        for _ in 0..READY_ROUNDS_MAX {
            if !self.raw.has_ready() {
                break;
            }
            if let Err(error) = self.handle_ready(&mut output) {
                self.stopped = true;
                warn!(node_id = self.node_id, %error, "quorum node stops after a storage failure");
                return Err(error);
            }
        }
        Ok(output)
    }

    fn handle_ready(&mut self, output: &mut Output) -> Result<(), QuorumError> {
        let mut ready = self.raw.ready();
        self.send(ready.take_messages(), output);
        if !ready.snapshot().is_empty() {
            self.raw.mut_store().apply_snapshot(ready.snapshot())?;
            output.committed.push(committed_snapshot(ready.snapshot()));
        }
        apply(ready.take_committed_entries(), output);
        self.raw.mut_store().append(ready.entries())?;
        let persisted_messages = ready.take_persisted_messages();
        let mut light = self.raw.advance(ready);
        self.persist_hard_state()?;
        self.send(persisted_messages, output);
        self.send(light.take_messages(), output);
        apply(light.take_committed_entries(), output);
        self.raw.advance_apply();
        Ok(())
    }

    /// Writes the hard state once per round, after advancing, so it holds the commit index
    /// the light ready brings too. Nothing leaves this node before poll returns, so a new
    /// term or vote is durable before any message that depends on it is sent.
    ///
    /// A new term or vote is always written: a node that forgot its vote could vote twice
    /// in a term. The commit index alone need not be durable (raft-rs syncs only for term
    /// and vote): a restarted node learns it again from the leader. Writing the state
    /// file on every commit would cost two fsyncs and a rename per round, so a commit
    /// change alone is written once it is [`COMMIT_PERSIST_LAG_MAX`] entries ahead.
    fn persist_hard_state(&mut self) -> Result<(), QuorumError> {
        let current: HardState = self.raw.raft.hard_state();
        let stored = self.raw.store().hard_state();
        let commit_lag = current.commit.saturating_sub(stored.commit);
        if current.term != stored.term
            || current.vote != stored.vote
            || commit_lag >= COMMIT_PERSIST_LAG_MAX
        {
            self.raw.mut_store().set_hard_state(current)?;
        }
        Ok(())
    }

    fn send(&self, messages: Vec<Message>, output: &mut Output) {
        for message in messages {
            match node_id(message.to) {
                Some(to) => output.messages.push((to, message)),
                None => warn!(
                    node_id = self.node_id,
                    to = message.to,
                    "raft addressed a message to no node; dropped"
                ),
            }
        }
    }

    /// Tells the leader whether a `MsgSnapshot` it sent to `to` was delivered. Until told,
    /// the leader sends that follower nothing else; on failure it retries later.
    pub fn report_snapshot(&mut self, to: BrokerId, delivered: bool) {
        if self.stopped {
            return;
        }
        if let Some(id) = raft_id(to) {
            let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
            self.raw.report_snapshot(id, status);
        }
    }

    /// Tells the leader the transport could not reach `to`, so it stops streaming entries
    /// optimistically to that follower and probes it instead.
    pub fn report_unreachable(&mut self, to: BrokerId) {
        if self.stopped {
            return;
        }
        if let Some(id) = raft_id(to) {
            self.raw.report_unreachable(id);
        }
    }

    /// Hands over a snapshot of the application's state after applying every entry up to
    /// `applied_index`: it is stored, and the log up to that index dropped. Lagging
    /// followers then receive it instead of the dropped entries.
    pub fn compact(
        &mut self,
        applied_index: u64,
        snapshot_data: Vec<u8>,
    ) -> Result<(), QuorumError> {
        if self.stopped {
            return Err(QuorumError::Stopped);
        }
        let snapshot_index = self.raw.store().snapshot_index();
        let applied = self.applied_index();
        if applied_index <= snapshot_index || applied_index > applied {
            return Err(QuorumError::CompactOutOfRange {
                index: applied_index,
                snapshot_index,
                applied_index: applied,
            });
        }
        if let Err(error) = self.raw.mut_store().compact(applied_index, snapshot_data) {
            // A failed compaction is harmless only if it failed before writing anything;
            // the storage cannot tell, so the node stops either way.
            if matches!(error, StorageError::Io { .. } | StorageError::Poisoned { .. }) {
                self.stopped = true;
            }
            return Err(error.into());
        }
        Ok(())
    }

    /// Whether enough entries were applied since the last snapshot to hand over a new
    /// one ([`QuorumOptions::snapshot_entries_min`]).
    pub fn should_compact(&self) -> bool {
        self.applied_index().saturating_sub(self.raw.store().snapshot_index())
            >= self.snapshot_entries_min
    }

    /// This node's `node.id`.
    pub fn node_id(&self) -> BrokerId {
        self.node_id
    }

    /// The leader this node knows of in the current term.
    pub fn leader(&self) -> Option<BrokerId> {
        node_id(self.raw.raft.leader_id)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Whether this node is the leader of the current term.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The voters' node ids, sorted.
    pub fn voters(&self) -> &[BrokerId] {
        &self.voters
    }

    /// The commit index: the last index known to be held by a majority.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The last index poll has handed to the application, counting the entries it passed
    /// over as not the application's: once the application has applied a poll's output,
    /// its state is as of this index, the one to give [`Self::compact`].
    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Starts an election now instead of after an election timeout: what a quorum of one
    /// voter does at start, since no one else could lead.
    pub fn campaign(&mut self) {
        if self.stopped {
            return;
        }
        if let Err(error) = self.raw.campaign() {
            warn!(node_id = self.node_id, %error, "could not start an election");
        }
    }

    /// Whether this node leads and has committed an entry of its own term, so that every
    /// entry of earlier terms is committed too: the point from which a leader's state
    /// holds every earlier decision (once it has applied up to the commit index).
    pub fn is_leader_ready(&self) -> bool {
        self.is_leader()
            && self.raw.raft.commit_to_current_term()
            && self.applied_index() >= self.commit_index()
    }

    /// The quorum as this node sees it, for DescribeMetadataQuorum.
    pub fn status(&self) -> QuorumStatus {
        let progress = self.is_leader().then(|| self.raw.raft.prs());
        let voters = self
            .voters
            .iter()
            .map(|&voter| {
                let match_index = progress
                    .and_then(|prs| raft_id(voter).and_then(|id| prs.get(id)).map(|p| p.matched));
                let ticks_since_contact = if voter == self.node_id {
                    Some(0)
                } else {
                    self.contact_ticks.get(&voter).map(|&at| self.ticks - at)
                };
                VoterStatus { node_id: voter, match_index, ticks_since_contact }
            })
            .collect();
        QuorumStatus {
            node_id: self.node_id,
            leader: self.leader(),
            term: self.term(),
            high_watermark: self.commit_index(),
            voters,
        }
    }

    /// Every entry in this node's log after its snapshot (unstable ones included), for
    /// the simulation's checks.
    #[cfg(test)]
    pub(crate) fn log_entries(&self) -> Vec<Entry> {
        let log = &self.raw.raft.raft_log;
        log.entries(log.first_index(), None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default()
    }

    /// The node's storage, for the simulation's checks.
    #[cfg(test)]
    pub(crate) fn storage(&self) -> &QuorumStorage {
        self.raw.store()
    }

    /// raft-rs draws election timeouts from the thread's random generator; drawing them
    /// from a seeded one instead makes a simulation replay exactly. raft-rs resets the
    /// elapsed count to 0 whenever it draws a timeout (and when it hears from the leader,
    /// where a new draw does no harm), so that is when ours replaces its draw.
    fn randomize_election_timeout(&mut self) {
        let raft = &mut self.raw.raft;
        if raft.election_elapsed == 0 {
            let low = raft.election_timeout() as u64;
            let timeout = low + self.election_rng.below(low);
            raft.set_randomized_election_timeout(timeout as usize);
        }
    }
}

/// The message types peers send each other; local ones (MsgHup, MsgBeat, ...) and ones
/// this quorum never sends (forwarded proposals, read index, leader transfer) are refused.
fn accepted_from_network(msg_type: MessageType) -> bool {
    matches!(
        msg_type,
        MessageType::MsgAppend
            | MessageType::MsgAppendResponse
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgSnapshot
            | MessageType::MsgHeartbeat
            | MessageType::MsgHeartbeatResponse
    )
}

fn stored_voters(conf_state: &ConfState) -> Result<Vec<BrokerId>, QuorumError> {
    let mut voters = Vec::with_capacity(conf_state.voters.len());
    for &id in &conf_state.voters {
        voters.push(node_id(id).ok_or_else(|| QuorumError::InvalidStoredVoters {
            raft_ids: conf_state.voters.clone(),
        })?);
    }
    voters.sort_unstable();
    Ok(voters)
}

fn committed_snapshot(snapshot: &Snapshot) -> Committed {
    let metadata = snapshot.get_metadata();
    Committed::Snapshot { index: metadata.index, term: metadata.term, data: snapshot.data.to_vec() }
}

/// Turns committed entries into application output. Empty normal entries (each new
/// leader's first) and conf changes (none with fixed voters) are not the application's;
/// they are applied all the same, by being passed over.
fn apply(entries: Vec<Entry>, output: &mut Output) {
    for entry in entries {
        match entry.get_entry_type() {
            EntryType::EntryNormal if !entry.data.is_empty() => {
                output.committed.push(Committed::Entry {
                    index: entry.index,
                    term: entry.term,
                    data: entry.data.to_vec(),
                })
            }
            EntryType::EntryNormal => {}
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                warn!(
                    index = entry.index,
                    "conf change entry committed, but voters are fixed; ignored"
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::quorum::{decode_message, encode_message};

    fn options(node_id: BrokerId, voters: &[BrokerId]) -> QuorumOptions {
        QuorumOptions {
            node_id,
            voters: voters.to_vec(),
            durability: Durability::NoSync,
            snapshot_entries_min: 4,
            election_seed: 42,
        }
    }

    /// Nodes over a perfect network: every message is encoded, decoded and delivered at
    /// once; what each node applies is collected.
    struct Cluster {
        dir: tempfile::TempDir,
        ids: Vec<BrokerId>,
        nodes: Vec<Option<QuorumNode>>,
        applied: Vec<Vec<Committed>>,
    }

    impl Cluster {
        fn new(ids: &[BrokerId]) -> Cluster {
            let dir = tempfile::tempdir().unwrap();
            let nodes = ids
                .iter()
                .map(|&id| {
                    Some(
                        QuorumNode::open(&dir.path().join(id.to_string()), options(id, ids))
                            .unwrap(),
                    )
                })
                .collect();
            Cluster { dir, ids: ids.to_vec(), nodes, applied: vec![Vec::new(); ids.len()] }
        }

        fn slot(&self, id: BrokerId) -> usize {
            self.ids.iter().position(|&i| i == id).unwrap()
        }

        fn node(&mut self, id: BrokerId) -> &mut QuorumNode {
            let slot = self.slot(id);
            self.nodes[slot].as_mut().unwrap()
        }

        /// Polls every running node and delivers messages until nothing moves.
        fn settle(&mut self) {
            for _ in 0..100 {
                let mut moved = false;
                for slot in 0..self.nodes.len() {
                    let Some(node) = self.nodes[slot].as_mut() else { continue };
                    let output = node.poll().unwrap();
                    self.applied[slot].extend(output.committed);
                    for (to, message) in output.messages {
                        moved = true;
                        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
                        let bytes = encode_message(&message).unwrap();
                        let to_slot = self.slot(to);
                        let delivered = match self.nodes[to_slot].as_mut() {
                            Some(target) => {
                                target.step(decode_message(&bytes).unwrap()).unwrap();
                                true
                            }
                            None => false,
                        };
                        if is_snapshot {
                            self.nodes[slot].as_mut().unwrap().report_snapshot(to, delivered);
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("the cluster did not settle");
        }

        /// Ticks every running node until one leads.
        fn elect(&mut self) -> BrokerId {
            for _ in 0..200 {
                for node in self.nodes.iter_mut().flatten() {
                    node.tick();
                }
                self.settle();
                if let Some(leader) = self.nodes.iter().flatten().find(|n| n.is_leader()) {
                    return leader.node_id();
                }
            }
            panic!("no leader elected");
        }

        fn crash(&mut self, id: BrokerId) {
            let slot = self.slot(id);
            self.nodes[slot] = None;
            self.applied[slot].clear();
        }

        fn restart(&mut self, id: BrokerId) {
            let slot = self.slot(id);
            let dir = self.dir.path().join(id.to_string());
            self.nodes[slot] = Some(QuorumNode::open(&dir, options(id, &self.ids)).unwrap());
        }

        fn data_applied(&self, id: BrokerId) -> Vec<Vec<u8>> {
            self.applied[self.slot(id)]
                .iter()
                .filter_map(|c| match c {
                    Committed::Entry { data, .. } => Some(data.clone()),
                    Committed::Snapshot { .. } => None,
                })
                .collect()
        }
    }

    #[test]
    fn open_checks_ids_and_voters() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            |node_id, voters: &[BrokerId]| QuorumNode::open(dir.path(), options(node_id, voters));
        assert!(matches!(open(-1, &[-1]).unwrap_err(), QuorumError::InvalidNodeId { node_id: -1 }));
        assert!(matches!(
            open(0, &[0, -3]).unwrap_err(),
            QuorumError::InvalidNodeId { node_id: -3 }
        ));
        assert!(matches!(open(0, &[]).unwrap_err(), QuorumError::NoVoters));
        assert!(matches!(
            open(0, &[0, 1, 0]).unwrap_err(),
            QuorumError::DuplicateVoter { node_id: 0 }
        ));
        assert!(matches!(
            open(4, &[0, 1, 2]).unwrap_err(),
            QuorumError::NotAVoter { node_id: 4, .. }
        ));
        drop(open(1, &[2, 0, 1]).unwrap());
        // The same voters in another order are the same voters.
        drop(open(1, &[0, 1, 2]).unwrap());
        let error = open(1, &[0, 1, 3]).unwrap_err();
        assert!(
            matches!(&error, QuorumError::VotersChanged { stored, given } if stored == &[0, 1, 2] && given == &[0, 1, 3]),
            "{error}"
        );
        assert!(error.to_string().contains("changing the voters is not supported"), "{error}");
    }

    #[test]
    fn a_single_voter_elects_itself_and_commits() {
        let mut cluster = Cluster::new(&[0]);
        assert_eq!(cluster.elect(), 0);
        let node = cluster.node(0);
        assert_eq!(node.leader(), Some(0));
        assert_eq!(node.term(), 1);
        node.propose(b"one".to_vec()).unwrap();
        node.propose(b"two".to_vec()).unwrap();
        cluster.settle();
        let applied = &cluster.applied[0];
        // Index 1 is the new leader's empty entry: applied, but not the application's.
        assert_eq!(
            applied,
            &vec![
                Committed::Entry { index: 2, term: 1, data: b"one".to_vec() },
                Committed::Entry { index: 3, term: 1, data: b"two".to_vec() },
            ]
        );
        assert_eq!(cluster.node(0).applied_index(), 3);
        assert_eq!(cluster.node(0).commit_index(), 3);
    }

    #[test]
    fn three_voters_agree_and_followers_name_the_leader() {
        let mut cluster = Cluster::new(&[0, 1, 2]);
        let leader = cluster.elect();
        for i in 0..5u8 {
            cluster.node(leader).propose(vec![b'a' + i]).unwrap();
        }
        cluster.settle();
        let expected: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i]).collect();
        for id in [0, 1, 2] {
            assert_eq!(cluster.data_applied(id), expected, "node {id}");
        }
        let follower = [0, 1, 2].into_iter().find(|&id| id != leader).unwrap();
        assert_eq!(
            cluster.node(follower).propose(b"x".to_vec()),
            Err(ProposeError::NotLeader { leader: Some(leader) })
        );
        assert_eq!(cluster.node(leader).propose(Vec::new()), Err(ProposeError::Empty));
        assert_eq!(
            cluster.node(leader).propose(vec![0; ENTRY_BYTES_MAX + 1]),
            Err(ProposeError::TooLarge { bytes: ENTRY_BYTES_MAX + 1, bytes_max: ENTRY_BYTES_MAX })
        );

        let status = cluster.node(leader).status();
        assert_eq!(status.leader, Some(leader));
        assert_eq!(status.high_watermark, 6);
        assert_eq!(status.voters.iter().map(|v| v.node_id).collect::<Vec<_>>(), vec![0, 1, 2]);
        for voter in &status.voters {
            assert_eq!(voter.match_index, Some(6), "{voter:?}");
            assert!(voter.ticks_since_contact.is_some(), "{voter:?}");
        }
        let status = cluster.node(follower).status();
        assert_eq!(status.leader, Some(leader));
        assert!(status.voters.iter().all(|v| v.match_index.is_none()), "{status:?}");
    }

    #[test]
    fn a_lagging_follower_catches_up_from_a_snapshot_and_a_restart_restores_it() {
        let mut cluster = Cluster::new(&[0, 1, 2]);
        let leader = cluster.elect();
        let lagging = [0, 1, 2].into_iter().find(|&id| id != leader).unwrap();
        cluster.crash(lagging);
        for i in 0..10u8 {
            cluster.node(leader).propose(vec![i + 1]).unwrap();
        }
        cluster.settle();
        // The application hands over its state; the log before it is dropped.
        let node = cluster.node(leader);
        assert!(node.should_compact());
        let applied_index = node.applied_index();
        node.compact(applied_index, b"state after ten".to_vec()).unwrap();
        assert!(!node.should_compact());
        assert!(matches!(
            node.compact(applied_index, Vec::new()).unwrap_err(),
            QuorumError::CompactOutOfRange { .. }
        ));
        node.propose(b"after".to_vec()).unwrap();
        cluster.settle();

        cluster.restart(lagging);
        cluster.elect();
        for _ in 0..20 {
            for node in cluster.nodes.iter_mut().flatten() {
                node.tick();
            }
            cluster.settle();
        }
        let slot = cluster.slot(lagging);
        assert_eq!(
            cluster.applied[slot],
            vec![
                Committed::Snapshot {
                    index: applied_index,
                    term: 1,
                    data: b"state after ten".to_vec()
                },
                Committed::Entry { index: applied_index + 1, term: 1, data: b"after".to_vec() },
            ]
        );

        // After a restart the node's own snapshot comes first, then what followed it (up
        // to the commit index on disk at once, the rest once a leader confirms it).
        cluster.crash(leader);
        cluster.restart(leader);
        let output = cluster.node(leader).poll().unwrap();
        assert!(
            matches!(output.committed[0], Committed::Snapshot { index, .. } if index == applied_index),
            "{:?}",
            output.committed
        );
        let slot = cluster.slot(leader);
        cluster.applied[slot] = output.committed;
        cluster.elect();
        cluster.settle();
        assert_eq!(
            cluster.applied[slot],
            vec![
                Committed::Snapshot {
                    index: applied_index,
                    term: 1,
                    data: b"state after ten".to_vec()
                },
                Committed::Entry { index: applied_index + 1, term: 1, data: b"after".to_vec() },
            ]
        );
    }

    #[test]
    fn a_restarted_node_keeps_its_term_and_log() {
        let mut cluster = Cluster::new(&[3, 7, 9]);
        let leader = cluster.elect();
        cluster.node(leader).propose(b"kept".to_vec()).unwrap();
        cluster.settle();
        let term = cluster.node(leader).term();
        for id in [3, 7, 9] {
            cluster.crash(id);
            cluster.restart(id);
            assert_eq!(cluster.node(id).term(), term, "node {id}");
            assert_eq!(cluster.node(id).leader(), None, "node {id}");
        }
        cluster.elect();
        cluster.settle();
        for id in [3, 7, 9] {
            assert_eq!(cluster.data_applied(id), vec![b"kept".to_vec()], "node {id}");
        }
    }

    #[test]
    fn messages_for_others_from_strangers_or_of_local_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = QuorumNode::open(dir.path(), options(0, &[0, 1, 2])).unwrap();
        let message = |msg_type, from: u64, to: u64| Message {
            msg_type,
            from,
            to,
            term: 5,
            ..Message::default()
        };
        // Raft ids are node ids plus one: node 0 is raft id 1.
        assert!(matches!(
            node.step(message(MessageType::MsgHeartbeat, 2, 2)).unwrap_err(),
            StepError::WrongRecipient { to: 2 }
        ));
        for from in [0, 1, 4, u64::MAX] {
            assert!(matches!(
                node.step(message(MessageType::MsgHeartbeat, from, 1)).unwrap_err(),
                StepError::UnknownSender { .. }
            ));
        }
        for msg_type in
            [MessageType::MsgHup, MessageType::MsgPropose, MessageType::MsgTransferLeader]
        {
            assert!(matches!(
                node.step(message(msg_type, 2, 1)).unwrap_err(),
                StepError::UnexpectedType { .. }
            ));
        }
        assert_eq!(node.term(), 0, "nothing refused changed the node");
        node.step(message(MessageType::MsgHeartbeat, 2, 1)).unwrap();
        assert_eq!(node.term(), 5);
        assert_eq!(node.leader(), Some(1));
    }

    #[test]
    fn the_seeded_election_timeout_is_in_raft_rs_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = QuorumNode::open(dir.path(), options(0, &[0, 1, 2])).unwrap();
        for _ in 0..1000 {
            node.tick();
            let timeout = node.raw.raft.randomized_election_timeout();
            assert!((ELECTION_TICKS..2 * ELECTION_TICKS).contains(&timeout), "{timeout}");
        }
        let mut rng = SplitMix64::new(1);
        let draws: Vec<u64> = (0..4).map(|_| rng.below(10)).collect();
        assert_eq!(draws, {
            let mut again = SplitMix64::new(1);
            (0..4).map(|_| again.below(10)).collect::<Vec<_>>()
        });
    }
}
