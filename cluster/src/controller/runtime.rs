//! The controller thread: one [`QuorumNode`], the metadata image its committed entries
//! build, and, while this node is the active controller (the quorum's leader, with its
//! own term's first entry committed), a [`Controller`] taking decisions. It runs on a
//! thread of its own, never on a data shard's executor: its disk writes block, and a
//! shard must not wait for the quorum.
//!
//! Inputs arrive on one channel: Raft messages and broker requests from the controller
//! listener, and requests from this process's broker ([`LocalController`]). Decisions
//! that write are taken one at a time: a decision is made against the committed image,
//! proposed, and the next one waits until it is committed and applied (or this node stops
//! leading), so every decision sees every earlier one. Writes are rare; what this costs
//! in throughput it saves in reasoning.
//!
//! A Raft entry's data is `[proposal tag: u64 BE][batch]`, the batch being the metadata
//! log's frames ([`sluice_engine::metadata::encode_batch`]); the tag tells the proposer
//! its own entry when it commits. Metadata offsets are dense: the n-th record committed
//! has offset n, on every node, whatever the Raft indexes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_engine::metadata::{self, BrokerEndpoint, MetadataImage, MetadataRecord};
use tracing::{debug, error, info, warn};

use super::rpc::{
    self, code, ControllerRequest, ControllerResponse, Outcome, Reassigning, VoterState,
};
use super::{adopt_single_node, Controller, Decision, Settings};
use crate::quorum::{
    decode_message, encode_message, Committed, Durability, ProposeError, QuorumNode, QuorumOptions,
};
use crate::transport::{Inbound, Listener, PeerLinks, Replier};
use crate::BrokerId;

/// How often the quorum ticks (its election timeout is counted in ticks).
pub const TICK: Duration = Duration::from_millis(100);
/// Records kept in memory for brokers' fetches; a broker further behind gets a snapshot.
pub const RETAINED_RECORDS_MAX: usize = 100_000;
/// Records in one fetch answer.
pub const FETCH_RECORDS_MAX: usize = 10_000;
/// Messages queued per peer before the oldest are dropped (Raft retries).
const PEER_QUEUE_FRAMES: usize = 1024;

/// How to start the controller thread.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub node_id: BrokerId,
    /// Every voter with its controller address, this node included. A single voter (this
    /// node) is the one-node cluster: no listener, no links.
    pub voters: Vec<(BrokerId, SocketAddr)>,
    /// Where to listen for the other voters and for brokers.
    pub listen: Option<SocketAddr>,
    /// `<data_dir>/__cluster_metadata/raft`.
    pub raft_dir: PathBuf,
    pub durability: Durability,
    pub settings: Settings,
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval_ms: u64,
    /// A one-node broker's metadata (from its metadata log of old, at the path given) to
    /// adopt when the quorum's log is empty: written as the first batch, every partition
    /// on this node. Once that batch is committed (or found committed at a later start),
    /// the old log is renamed `*.adopted`, so it is never adopted twice.
    pub adopt: Option<(MetadataImage, PathBuf)>,
    pub snapshot_entries_min: u64,
    pub max_frame_bytes: u32,
    /// Seeds elections and placement; give each process its own.
    pub seed: u64,
}

/// Why the controller thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("opening the controller quorum: {0}")]
    Quorum(#[from] crate::quorum::QuorumError),
    #[error("controller listener or links: {0}")]
    Io(#[from] std::io::Error),
}

enum Input {
    Inbound(Inbound),
    Local { request: ControllerRequest, reply: Sender<ControllerResponse> },
    Stop,
}

/// Where an answer goes.
enum Reply {
    Local(Sender<ControllerResponse>),
    Remote(Replier),
}

impl Reply {
    fn send(self, response: ControllerResponse) {
        match self {
            // The caller may have timed out and gone: nothing to do.
            Reply::Local(sender) => drop(sender.send(response)),
            Reply::Remote(replier) => match rpc::encode_response(&response) {
                Ok(bytes) => {
                    if let Err(error) = replier.send(bytes) {
                        debug!(%error, "controller answer not delivered");
                    }
                }
                Err(error) => error!(%error, "cannot encode a controller answer"),
            },
        }
    }
}

/// A handle to this process's controller thread, for this process's broker. Cloneable and
/// usable from any thread; a call blocks, so glommio shards make it on the blocking pool.
#[derive(Clone, Debug)]
pub struct LocalController {
    inbox: Sender<Input>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Inbound(_) => "Inbound",
            Input::Local { .. } => "Local",
            Input::Stop => "Stop",
        })
    }
}

/// Why a call to the local controller got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalCallError {
    #[error("the controller did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the controller thread has stopped")]
    Stopped,
}

impl LocalController {
    pub fn call(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, LocalCallError> {
        let (reply, answer) = mpsc::channel();
        self.inbox.send(Input::Local { request, reply }).map_err(|_| LocalCallError::Stopped)?;
        answer.recv_timeout(timeout).map_err(|error| match error {
            RecvTimeoutError::Timeout => LocalCallError::Timeout(timeout),
            RecvTimeoutError::Disconnected => LocalCallError::Stopped,
        })
    }
}

/// The running controller thread; [`Self::shutdown`] (or drop) stops it.
#[derive(Debug)]
pub struct ControllerRuntime {
    inbox: Sender<Input>,
    thread: Option<JoinHandle<()>>,
    listener: Option<Listener>,
    forward: Option<JoinHandle<()>>,
}

impl ControllerRuntime {
    /// Opens the quorum's storage, binds the listener (with other voters) and starts the
    /// thread.
    pub fn start(options: RuntimeOptions) -> Result<ControllerRuntime, RuntimeError> {
        let voters: Vec<BrokerId> = options.voters.iter().map(|(id, _)| *id).collect();
        let quorum = QuorumNode::open(
            &options.raft_dir,
            QuorumOptions {
                node_id: options.node_id,
                voters,
                durability: options.durability,
                snapshot_entries_min: options.snapshot_entries_min,
                election_seed: options.seed,
            },
        )?;
        let (inbox, inputs) = mpsc::channel();
        let mut listener = None;
        let mut forward = None;
        let mut peers = None;
        if options.voters.len() > 1 || options.listen.is_some() {
            if let Some(listen) = options.listen {
                let (inbound_tx, inbound_rx) = mpsc::channel::<Inbound>();
                listener = Some(Listener::bind(listen, options.max_frame_bytes, inbound_tx)?);
                let to_inbox = inbox.clone();
                forward = Some(std::thread::Builder::new().name("ctl-inbound".into()).spawn(
                    move || {
                        for inbound in inbound_rx {
                            if to_inbox.send(Input::Inbound(inbound)).is_err() {
                                return;
                            }
                        }
                    },
                )?);
            }
            peers = Some(PeerLinks::new(
                options.node_id,
                options.voters.clone(),
                options.max_frame_bytes,
                PEER_QUEUE_FRAMES,
            )?);
        }
        let mut state = State::new(options, quorum, peers);
        let thread = std::thread::Builder::new()
            .name("sluice-controller".into())
            .spawn(move || state.run(inputs))?;
        Ok(ControllerRuntime { inbox, thread: Some(thread), listener, forward })
    }

    /// The listener's address (its port, when started with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(Listener::local_addr)
    }

    pub fn local(&self) -> LocalController {
        LocalController { inbox: self.inbox.clone() }
    }

    /// Stops the thread and the listener, and joins them.
    pub fn shutdown(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.shutdown();
        }
        if let Some(forward) = self.forward.take() {
            drop(forward.join());
        }
        drop(self.inbox.send(Input::Stop));
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the controller thread panicked");
            }
        }
    }
}

impl Drop for ControllerRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A write request waiting for its turn.
struct Pending {
    request: ControllerRequest,
    reply: Option<Reply>,
}

/// The proposal in flight, and whom to answer when it commits.
struct InFlight {
    tag: u64,
    reply: Option<Reply>,
    answer: ControllerResponse,
    proposed_at: Instant,
}

/// A broker's fetch waiting for records.
struct Waiter {
    next_offset: i64,
    deadline: Instant,
    reply: Reply,
}

struct State {
    options: RuntimeOptions,
    quorum: QuorumNode,
    peers: Option<PeerLinks>,
    image: MetadataImage,
    /// The records from `retained_first` to the image's offset, for brokers' fetches.
    retained: VecDeque<MetadataRecord>,
    retained_first: i64,
    controller: Option<Controller>,
    in_flight: Option<InFlight>,
    queue: VecDeque<Pending>,
    waiters: Vec<Waiter>,
    started: Instant,
    tags: u64,
    last_rebalance: Instant,
    /// The adoption batch in flight, and the old log to rename once it commits.
    adoption: Option<(u64, PathBuf)>,
    /// Set when a committed entry did not apply: this node's image can no longer be
    /// trusted, so it answers nothing but this.
    broken: Option<String>,
}

impl State {
    fn new(options: RuntimeOptions, quorum: QuorumNode, peers: Option<PeerLinks>) -> State {
        let tags = options.seed.rotate_left(17) ^ (u64::from(options.node_id as u32) << 40);
        State {
            options,
            quorum,
            peers,
            image: MetadataImage::default(),
            retained: VecDeque::new(),
            retained_first: 0,
            controller: None,
            in_flight: None,
            queue: VecDeque::new(),
            waiters: Vec::new(),
            started: Instant::now(),
            tags,
            last_rebalance: Instant::now(),
            adoption: None,
            broken: None,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(&mut self, inputs: Receiver<Input>) {
        info!(node = self.options.node_id, voters = ?self.quorum.voters(), "controller started");
        let mut next_tick = Instant::now() + TICK;
        if self.quorum.voters() == [self.options.node_id] {
            self.quorum.campaign();
        }
        self.drive();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match inputs.recv_timeout(wait) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => self.input(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Take what else is waiting before the disk write a poll may do.
            while let Ok(input) = inputs.try_recv() {
                if matches!(input, Input::Stop) {
                    self.stop();
                    return;
                }
                self.input(input);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.quorum.tick();
                next_tick = now + TICK;
                self.on_tick();
            }
            self.drive();
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.fail_pending(|| ControllerResponse::Error {
            code: code::NOT_CONTROLLER,
            message: "the controller is stopping".into(),
        });
        for waiter in self.waiters.drain(..) {
            waiter.reply.send(ControllerResponse::NotController { leader: None });
        }
        if let Some(peers) = self.peers.take() {
            peers.shutdown();
        }
        info!(node = self.options.node_id, "controller stopped");
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Inbound(Inbound::Peer { from, payload }) => match decode_message(&payload) {
                Ok(message) => {
                    if let Err(error) = self.quorum.step(message) {
                        debug!(from, %error, "raft message dropped");
                    }
                }
                Err(error) => warn!(from, %error, "undecodable raft message dropped"),
            },
            Input::Inbound(Inbound::Request { from, payload, reply }) => {
                match rpc::decode_request(&payload) {
                    Ok(request) => self.request(request, Reply::Remote(reply)),
                    Err(error) => {
                        warn!(from, %error, "undecodable controller request");
                        Reply::Remote(reply).send(ControllerResponse::Error {
                            code: code::INVALID_REQUEST,
                            message: error.to_string(),
                        });
                    }
                }
            }
            Input::Local { request, reply } => self.request(request, Reply::Local(reply)),
            Input::Stop => {}
        }
    }

    fn not_controller(&self) -> ControllerResponse {
        ControllerResponse::NotController { leader: self.quorum.leader() }
    }

    fn request(&mut self, request: ControllerRequest, reply: Reply) {
        if let Some(reason) = &self.broken {
            reply.send(ControllerResponse::Error {
                code: code::UNKNOWN_SERVER_ERROR,
                message: reason.clone(),
            });
            return;
        }
        match request {
            ControllerRequest::DescribeQuorum => reply.send(self.describe_quorum()),
            _ if self.controller.is_none() => reply.send(self.not_controller()),
            ControllerRequest::FetchMetadata { broker: _, next_offset, max_wait_ms } => {
                let deadline = Instant::now() + Duration::from_millis(u64::from(max_wait_ms));
                self.fetch(Waiter { next_offset, deadline, reply }, false);
            }
            ControllerRequest::ListReassignments => {
                let mut partitions = Vec::new();
                super::for_each_partition(&self.image, |topic, partition, record| {
                    if !record.adding.is_empty() || !record.removing.is_empty() {
                        partitions.push(Reassigning {
                            topic: topic.name.clone(),
                            partition,
                            replicas: record.replicas.clone(),
                            adding: record.adding.clone(),
                            removing: record.removing.clone(),
                        });
                    }
                });
                reply.send(ControllerResponse::Reassignments { partitions });
            }
            request => {
                self.queue.push_back(Pending { request, reply: Some(reply) });
                self.decide_queued();
            }
        }
    }

    fn describe_quorum(&self) -> ControllerResponse {
        let status = self.quorum.status();
        let Some(leader) = status.leader else { return self.not_controller() };
        let tick_ms = i64::try_from(TICK.as_millis()).unwrap_or(i64::MAX);
        ControllerResponse::Quorum {
            leader,
            leader_epoch: i64::try_from(status.term).unwrap_or(i64::MAX),
            high_watermark: i64::try_from(status.high_watermark).unwrap_or(i64::MAX),
            voters: status
                .voters
                .iter()
                .map(|v| VoterState {
                    id: v.node_id,
                    log_end_offset: v
                        .match_index
                        .map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX)),
                    last_contact_ms: v.ticks_since_contact.map_or(-1, |t| {
                        i64::try_from(t).unwrap_or(i64::MAX).saturating_mul(tick_ms)
                    }),
                })
                .collect(),
        }
    }

    /// Answers a fetch now if there is something to send (or its time is up), else parks
    /// it until records arrive.
    fn fetch(&mut self, waiter: Waiter, expired: bool) {
        let next = self.image.next_offset();
        if waiter.next_offset < self.retained_first || waiter.next_offset > next {
            // Behind what is retained: the whole image. Ahead of this controller (a new
            // leader that has not applied its predecessor's last records yet): also the
            // image, which the broker's own history must then be a prefix of.
            if waiter.next_offset > next {
                waiter.reply.send(ControllerResponse::NotController { leader: None });
                return;
            }
            match self.image.encode_snapshot() {
                Ok(image) => waiter.reply.send(ControllerResponse::Snapshot { image }),
                Err(error) => waiter.reply.send(ControllerResponse::Error {
                    code: code::UNKNOWN_SERVER_ERROR,
                    message: error.to_string(),
                }),
            }
            return;
        }
        if waiter.next_offset == next && !expired {
            self.waiters.push(waiter);
            return;
        }
        let skip = usize::try_from(waiter.next_offset - self.retained_first).unwrap_or(0);
        let records: Vec<MetadataRecord> =
            self.retained.iter().skip(skip).take(FETCH_RECORDS_MAX).cloned().collect();
        match metadata::encode_batch(&records) {
            Ok(batch) => waiter
                .reply
                .send(ControllerResponse::Records { first_offset: waiter.next_offset, batch }),
            Err(error) => waiter.reply.send(ControllerResponse::Error {
                code: code::UNKNOWN_SERVER_ERROR,
                message: error.to_string(),
            }),
        }
    }

    fn wake_waiters(&mut self) {
        let now = Instant::now();
        let next = self.image.next_offset();
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            let expired = now >= waiter.deadline;
            if waiter.next_offset != next || expired {
                self.fetch(waiter, expired);
            } else {
                self.waiters.push(waiter);
            }
        }
    }

    /// Takes the next queued decisions while nothing is in flight.
    fn decide_queued(&mut self) {
        while self.in_flight.is_none() {
            let Some(pending) = self.queue.pop_front() else { return };
            let now_ms = self.now_ms();
            let Some(controller) = self.controller.as_mut() else {
                if let Some(reply) = pending.reply {
                    reply.send(self.not_controller());
                }
                continue;
            };
            let decided: Result<Decision<ControllerResponse>, Outcome> = match pending.request {
                ControllerRequest::Register { broker, incarnation_id, endpoints, rack } => {
                    let endpoints = endpoints
                        .into_iter()
                        .map(|e| BrokerEndpoint { name: e.name, host: e.host, port: e.port })
                        .collect();
                    controller
                        .register(&self.image, broker, incarnation_id, endpoints, rack, now_ms)
                        .map(|d| Decision {
                            records: d.records,
                            answer: ControllerResponse::Registered { epoch: d.answer },
                        })
                }
                ControllerRequest::Heartbeat { broker, epoch, metadata_offset, want_shutdown } => {
                    controller
                        .heartbeat(
                            &self.image,
                            broker,
                            epoch,
                            metadata_offset,
                            want_shutdown,
                            now_ms,
                        )
                        .map(|d| Decision {
                            records: d.records,
                            answer: ControllerResponse::Heartbeat {
                                fenced: d.answer.0,
                                shut_down: d.answer.1,
                            },
                        })
                }
                ControllerRequest::Write { intents, validate_only } => {
                    let d = controller.write(&self.image, &intents, validate_only);
                    let last_offset =
                        self.image.offset() + i64::try_from(d.records.len()).unwrap_or(0);
                    let last_offset = if d.records.is_empty() { -1 } else { last_offset };
                    Ok(Decision {
                        records: d.records,
                        answer: ControllerResponse::Written { outcomes: d.answer, last_offset },
                    })
                }
                _ => Err(Outcome::error(code::INVALID_REQUEST, "not a write")),
            };
            match decided {
                Err(outcome) => {
                    if let Some(reply) = pending.reply {
                        reply.send(ControllerResponse::Error {
                            code: outcome.code,
                            message: outcome.message,
                        });
                    }
                }
                Ok(decision) if decision.records.is_empty() => {
                    if let Some(reply) = pending.reply {
                        reply.send(decision.answer);
                    }
                }
                Ok(decision) => self.propose(decision.records, pending.reply, decision.answer),
            }
        }
    }

    /// Proposes a batch; its answer goes out once it is committed and applied here.
    fn propose(
        &mut self,
        records: Vec<MetadataRecord>,
        reply: Option<Reply>,
        answer: ControllerResponse,
    ) {
        let batch = match metadata::encode_batch(&records) {
            Ok(batch) => batch,
            Err(error) => {
                error!(%error, "cannot encode a metadata batch");
                self.reset_controller();
                if let Some(reply) = reply {
                    reply.send(ControllerResponse::Error {
                        code: code::UNKNOWN_SERVER_ERROR,
                        message: error.to_string(),
                    });
                }
                return;
            }
        };
        self.tags = self.tags.wrapping_add(1);
        let tag = self.tags;
        let mut data = Vec::with_capacity(8 + batch.len());
        data.extend_from_slice(&tag.to_be_bytes());
        data.extend_from_slice(&batch);
        match self.quorum.propose(data) {
            Ok(()) => {
                debug!(tag, records = records.len(), "metadata batch proposed");
                self.in_flight = Some(InFlight { tag, reply, answer, proposed_at: Instant::now() });
            }
            Err(error) => {
                warn!(%error, records = records.len(), "metadata batch not proposed");
                // The decision changed the controller's view of broker sessions as if the
                // batch were stored: start again from the image.
                self.reset_controller();
                let response = match error {
                    ProposeError::NotLeader { leader } => {
                        ControllerResponse::NotController { leader }
                    }
                    ProposeError::TooLarge { .. } => ControllerResponse::Error {
                        code: code::INVALID_REQUEST,
                        message: error.to_string(),
                    },
                    _ => ControllerResponse::Error {
                        code: code::NOT_CONTROLLER,
                        message: error.to_string(),
                    },
                };
                if let Some(reply) = reply {
                    reply.send(response);
                }
            }
        }
    }

    fn reset_controller(&mut self) {
        if self.controller.is_some() {
            let now_ms = self.now_ms();
            self.controller = Some(Controller::new(
                self.options.settings.clone(),
                &self.image,
                now_ms,
                self.options.seed ^ now_ms,
            ));
        }
    }

    fn fail_pending(&mut self, response: impl Fn() -> ControllerResponse) {
        if let Some(in_flight) = self.in_flight.take() {
            if let Some(reply) = in_flight.reply {
                reply.send(response());
            }
        }
        for pending in self.queue.drain(..) {
            if let Some(reply) = pending.reply {
                reply.send(response());
            }
        }
    }

    fn on_tick(&mut self) {
        let now_ms = self.now_ms();
        let Some(controller) = self.controller.as_mut() else { return };
        if self.in_flight.is_some() || !self.queue.is_empty() {
            if let Some(in_flight) = &self.in_flight {
                if in_flight.proposed_at.elapsed() > Duration::from_secs(10) {
                    warn!(tag = in_flight.tag, "a metadata batch has waited 10 s to commit");
                }
            }
            return;
        }
        let records = controller.tick(&self.image, now_ms);
        if !records.is_empty() {
            self.propose(
                records,
                None,
                ControllerResponse::Written { outcomes: vec![], last_offset: -1 },
            );
            return;
        }
        let interval = Duration::from_millis(self.options.leader_imbalance_check_interval_ms);
        if self.options.auto_leader_rebalance && self.last_rebalance.elapsed() >= interval {
            self.last_rebalance = Instant::now();
            let records = controller.rebalance(&self.image);
            if !records.is_empty() {
                info!(
                    partitions = records.len(),
                    "moving leaders back to their preferred replicas"
                );
                self.propose(
                    records,
                    None,
                    ControllerResponse::Written { outcomes: vec![], last_offset: -1 },
                );
            }
        }
    }

    /// Polls the quorum: sends its messages, applies what committed, follows leadership,
    /// answers what can be answered.
    fn drive(&mut self) {
        for _ in 0..4 {
            let output = match self.quorum.poll() {
                Ok(output) => output,
                Err(error) => {
                    let reason = format!("the controller quorum stopped: {error}");
                    if self.broken.is_none() {
                        error!("{reason}");
                    }
                    self.broken = Some(reason);
                    self.controller = None;
                    return;
                }
            };
            let idle = output.messages.is_empty() && output.committed.is_empty();
            for (to, message) in output.messages {
                let snapshot = message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
                let sent =
                    encode_message(&message).map_err(|e| e.to_string()).and_then(
                        |bytes| match &self.peers {
                            Some(peers) => peers.send(to, bytes).map_err(|e| e.to_string()),
                            None => Err("no links".to_string()),
                        },
                    );
                if let Err(error) = &sent {
                    debug!(to, %error, "raft message not sent");
                    self.quorum.report_unreachable(to);
                }
                if snapshot {
                    self.quorum.report_snapshot(to, sent.is_ok());
                }
            }
            for committed in output.committed {
                self.apply(committed);
            }
            if idle {
                break;
            }
        }
        self.follow_leadership();
        self.wake_waiters();
        self.decide_queued();
        if self.quorum.should_compact() && self.broken.is_none() {
            match self.image.encode_snapshot() {
                Ok(snapshot) => {
                    let index = self.quorum.applied_index();
                    if let Err(error) = self.quorum.compact(index, snapshot) {
                        warn!(%error, "compacting the controller's log failed");
                    }
                }
                Err(error) => warn!(%error, "cannot snapshot the metadata"),
            }
        }
    }

    fn apply(&mut self, committed: Committed) {
        if self.broken.is_some() {
            return;
        }
        match committed {
            Committed::Snapshot { index, data, .. } => {
                let image = if data.is_empty() {
                    Ok(MetadataImage::default())
                } else {
                    MetadataImage::decode_snapshot(&data)
                };
                match image {
                    Ok(image) => {
                        info!(index, offset = image.offset(), "metadata snapshot installed");
                        self.retained.clear();
                        self.retained_first = image.next_offset();
                        self.image = image;
                        self.reset_controller();
                    }
                    Err(error) => {
                        self.broken = Some(format!("a metadata snapshot does not decode: {error}"));
                        error!(index, %error, "a metadata snapshot does not decode");
                    }
                }
            }
            Committed::Entry { index, data, .. } => {
                let Some((tag, batch)) = data.split_first_chunk::<8>() else {
                    self.broken = Some(format!("entry {index} has no proposal tag"));
                    return;
                };
                let tag = u64::from_be_bytes(*tag);
                let records = match metadata::decode_batch(batch) {
                    Ok(records) => records,
                    Err(error) => {
                        self.broken = Some(format!("entry {index} does not decode: {error}"));
                        error!(index, %error, "a committed metadata entry does not decode");
                        return;
                    }
                };
                for record in records {
                    if let Err(error) = self.image.apply(&record) {
                        let reason = format!(
                            "committed record at offset {} does not apply: {error}",
                            self.image.next_offset()
                        );
                        error!("{reason}; this controller stops serving");
                        self.broken = Some(reason);
                        return;
                    }
                    self.retained.push_back(record);
                }
                while self.retained.len() > RETAINED_RECORDS_MAX {
                    self.retained.pop_front();
                    self.retained_first += 1;
                }
                if self.adoption.as_ref().is_some_and(|(t, _)| *t == tag) {
                    if let Some((_, path)) = self.adoption.take() {
                        retire_adopted(&path);
                    }
                }
                if self.in_flight.as_ref().is_some_and(|f| f.tag == tag) {
                    if let Some(in_flight) = self.in_flight.take() {
                        if let Some(reply) = in_flight.reply {
                            reply.send(in_flight.answer);
                        }
                    }
                }
            }
        }
    }

    /// Becomes the active controller once this node leads and its term's first entry is
    /// committed and applied (so the image holds every earlier decision); stops being it
    /// when it no longer leads.
    fn follow_leadership(&mut self) {
        let active = self.quorum.is_leader_ready();
        match (active, self.controller.is_some()) {
            (true, false) => {
                let now_ms = self.now_ms();
                info!(
                    node = self.options.node_id,
                    term = self.quorum.term(),
                    offset = self.image.offset(),
                    "this node is the active controller"
                );
                self.controller = Some(Controller::new(
                    self.options.settings.clone(),
                    &self.image,
                    now_ms,
                    self.options.seed ^ self.quorum.term(),
                ));
                if let Some((old, path)) = self.options.adopt.take() {
                    let records = adopt_single_node(&old, self.options.node_id);
                    if self.image.next_offset() != 0 || records.is_empty() {
                        // Adopted at an earlier start (or nothing to adopt).
                        retire_adopted(&path);
                    } else {
                        info!(
                            records = records.len(),
                            topics = old.len(),
                            "adopting the one-node metadata"
                        );
                        self.propose(
                            records,
                            None,
                            ControllerResponse::Written { outcomes: vec![], last_offset: -1 },
                        );
                        if let Some(in_flight) = &self.in_flight {
                            self.adoption = Some((in_flight.tag, path));
                        }
                    }
                }
            }
            (false, true) => {
                info!(node = self.options.node_id, leader = ?self.quorum.leader(), "no longer the active controller");
                self.controller = None;
                let leader = self.quorum.leader();
                self.fail_pending(|| ControllerResponse::NotController { leader });
                let waiters = std::mem::take(&mut self.waiters);
                for waiter in waiters {
                    waiter.reply.send(ControllerResponse::NotController { leader });
                }
            }
            _ => {}
        }
    }
}

/// Renames an adopted metadata log to `<name>.adopted`, so no later start adopts it again;
/// a failure is logged (the next start finds the quorum's log not empty and retries).
fn retire_adopted(path: &std::path::Path) {
    if !path.exists() {
        return;
    }
    let mut retired = path.as_os_str().to_owned();
    retired.push(".adopted");
    match std::fs::rename(path, &retired) {
        Ok(()) => {
            info!(path = %path.display(), "the one-node metadata log is adopted; kept as *.adopted")
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot rename the adopted metadata log")
        }
    }
}

/// A deterministic-enough seed for a process: its id, the time and the process id.
pub fn process_seed(node_id: BrokerId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ (node_id as u64)
}

#[cfg(test)]
mod tests;
