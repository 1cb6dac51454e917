//! [`ControllerNode`]: the controller's logic without I/O — one [`QuorumNode`], the
//! metadata image its committed entries build, and, while this node is the active
//! controller, a [`Controller`] taking decisions. Time, peers' messages and brokers'
//! requests come in as calls; Raft messages to send, answers to give and adopted logs to
//! retire come out of [`ControllerNode::take_output`]. The controller thread
//! ([`super::runtime`]) drives it with the real clock, sockets and channels; the seeded
//! simulation (`sim/`) drives several of them, and simulated brokers, with its own.
//!
//! The only I/O left inside is the quorum's own storage (its log and snapshot files),
//! which a simulated crash keeps, as a real one keeps what was written.
//!
//! Decisions that write are taken one at a time: a decision is made against the committed
//! image, proposed, and the next one waits until it is committed and applied (or this
//! node stops leading), so every decision sees every earlier one.
//!
//! A Raft entry's data is `[proposal tag: u64 BE][batch]`, the batch being the metadata
//! log's frames ([`sluice_engine::metadata::encode_batch`]); the tag tells the proposer
//! its own entry when it commits. Metadata offsets are dense: the n-th record committed
//! has offset n, on every node, whatever the Raft indexes.

use std::collections::VecDeque;
use std::path::PathBuf;

use sluice_engine::metadata::{self, BrokerEndpoint, MetadataImage, MetadataRecord};
use tracing::{debug, error, info, warn};

use super::rpc::{code, ControllerRequest, ControllerResponse, Outcome, Reassigning, VoterState};
use super::{adopt_single_node, Controller, Decision, Settings};
use crate::quorum::{Committed, Message, ProposeError, QuorumNode, TICK_MS};
use crate::BrokerId;

/// Records kept in memory for brokers' fetches; a broker further behind gets a snapshot.
pub const RETAINED_RECORDS_MAX: usize = 100_000;
/// Records in one fetch answer.
pub const FETCH_RECORDS_MAX: usize = 10_000;
/// How long a proposal may wait to commit before each tick warns about it.
const IN_FLIGHT_WARN_MS: u64 = 10_000;
/// `poll`s of the quorum in one [`ControllerNode::drive`]: one usually drains
/// everything, the next picks up what applying the first made ready.
const POLL_ROUNDS_MAX: usize = 4;

/// What a [`ControllerNode`] decides with, beside its quorum.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: BrokerId,
    pub settings: Settings,
    pub auto_leader_rebalance: bool,
    pub leader_imbalance_check_interval_ms: u64,
    /// A one-node broker's metadata (from its metadata log of old, at the path given) to
    /// adopt when the quorum's log is empty: written as the first batch, every partition
    /// on this node. Once that batch is committed (or found committed at a later start),
    /// the path comes out in [`Output::adopted`], for the caller to rename, so it is
    /// never adopted twice.
    pub adopt: Option<(MetadataImage, PathBuf)>,
    /// Seeds elections' placement decisions; give each process its own.
    pub seed: u64,
}

/// What the node asks its caller to do, in the order it arose. `R` is the caller's token
/// for where an answer goes.
#[derive(Debug)]
pub struct Output<R> {
    /// Raft messages to send, each with the `node.id` to send it to. For each one not
    /// sent, call [`ControllerNode::report_unreachable`]; for each `MsgSnapshot`, report
    /// whether it went with [`ControllerNode::report_snapshot`].
    pub messages: Vec<(BrokerId, Message)>,
    /// Answers to requests, each with the token it came with.
    pub replies: Vec<(R, ControllerResponse)>,
    /// Old one-node metadata logs now adopted: rename each to `<name>.adopted`.
    pub adopted: Vec<PathBuf>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output { messages: Vec::new(), replies: Vec::new(), adopted: Vec::new() }
    }
}

/// What the node applied, one committed entry or snapshot at a time, for the simulation's
/// checks.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) enum Applied {
    /// A committed entry's records, the first at `first_offset`.
    Entry { first_offset: i64, records: Vec<MetadataRecord> },
    /// A snapshot replaced the image.
    Snapshot { image: MetadataImage },
}

/// A write request waiting for its turn.
struct Pending<R> {
    request: ControllerRequest,
    reply: Option<R>,
}

/// The proposal in flight, and whom to answer when it commits.
struct InFlight<R> {
    tag: u64,
    reply: Option<R>,
    answer: ControllerResponse,
    proposed_at_ms: u64,
}

/// A broker's fetch waiting for records.
struct Waiter<R> {
    next_offset: i64,
    deadline_ms: u64,
    reply: R,
}

/// See the module documentation. Time is milliseconds on the caller's monotonic clock,
/// passed in with every call that needs it; it never goes back.
pub struct ControllerNode<R> {
    options: NodeOptions,
    quorum: QuorumNode,
    image: MetadataImage,
    /// The records from `retained_first` to the image's offset, for brokers' fetches.
    retained: VecDeque<MetadataRecord>,
    retained_first: i64,
    controller: Option<Controller>,
    in_flight: Option<InFlight<R>>,
    queue: VecDeque<Pending<R>>,
    waiters: Vec<Waiter<R>>,
    now_ms: u64,
    tags: u64,
    last_rebalance_ms: u64,
    /// The adoption batch in flight, and the old log to retire once it commits.
    adoption: Option<(u64, PathBuf)>,
    /// Set when a committed entry did not apply: this node's image can no longer be
    /// trusted, so it answers nothing but this.
    broken: Option<String>,
    output: Output<R>,
    #[cfg(test)]
    applied: Vec<Applied>,
}

impl<R> std::fmt::Debug for ControllerNode<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerNode")
            .field("node_id", &self.options.node_id)
            .field("quorum", &self.quorum)
            .field("offset", &self.image.offset())
            .field("active", &self.controller.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<R> ControllerNode<R> {
    /// A node over an opened quorum, at `now_ms`. Call [`Self::start`] next.
    pub fn new(options: NodeOptions, quorum: QuorumNode, now_ms: u64) -> Self {
        let tags = options.seed.rotate_left(17) ^ (u64::from(options.node_id as u32) << 40);
        ControllerNode {
            options,
            quorum,
            image: MetadataImage::default(),
            retained: VecDeque::new(),
            retained_first: 0,
            controller: None,
            in_flight: None,
            queue: VecDeque::new(),
            waiters: Vec::new(),
            now_ms,
            tags,
            last_rebalance_ms: now_ms,
            adoption: None,
            broken: None,
            output: Output::default(),
            #[cfg(test)]
            applied: Vec::new(),
        }
    }

    /// Starts the node: a quorum of one voter (this node) campaigns at once, since no one
    /// else could lead; then whatever the storage holds is applied.
    pub fn start(&mut self, now_ms: u64) {
        self.advance(now_ms);
        if self.quorum.voters() == [self.options.node_id] {
            self.quorum.campaign();
        }
        self.drive(now_ms);
    }

    /// The quorum's clock: call every [`TICK_MS`]. Times out broker sessions and, now and
    /// then, moves leaders back to their preferred replicas. Call [`Self::drive`] after.
    pub fn tick(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.quorum.tick();
        self.on_tick();
    }

    /// A Raft message from another controller. Call [`Self::drive`] after.
    pub fn peer_message(&mut self, from: BrokerId, message: Message) {
        if let Err(error) = self.quorum.step(message) {
            debug!(from, %error, "raft message dropped");
        }
    }

    /// A request from a broker (or this process's), answered with `reply` now or later.
    /// Call [`Self::drive`] after.
    pub fn request(&mut self, request: ControllerRequest, reply: R, now_ms: u64) {
        self.advance(now_ms);
        if let Some(reason) = &self.broken {
            let message = reason.clone();
            self.reply(
                reply,
                ControllerResponse::Error { code: code::UNKNOWN_SERVER_ERROR, message },
            );
            return;
        }
        match request {
            ControllerRequest::DescribeQuorum => {
                let answer = self.describe_quorum();
                self.reply(reply, answer);
            }
            _ if self.controller.is_none() => {
                let answer = self.not_controller();
                self.reply(reply, answer);
            }
            ControllerRequest::FetchMetadata { broker: _, next_offset, max_wait_ms } => {
                let deadline_ms = now_ms.saturating_add(u64::from(max_wait_ms));
                self.fetch(Waiter { next_offset, deadline_ms, reply }, false);
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
                self.reply(reply, ControllerResponse::Reassignments { partitions });
            }
            request => {
                self.queue.push_back(Pending { request, reply: Some(reply) });
                self.decide_queued();
            }
        }
    }

    /// The transport could not send a message to `to`.
    pub fn report_unreachable(&mut self, to: BrokerId) {
        self.quorum.report_unreachable(to);
    }

    /// Whether a `MsgSnapshot` to `to` went out.
    pub fn report_snapshot(&mut self, to: BrokerId, delivered: bool) {
        self.quorum.report_snapshot(to, delivered);
    }

    /// Polls the quorum: queues its messages, applies what committed, follows leadership,
    /// answers what can be answered. Call after every batch of other calls.
    pub fn drive(&mut self, now_ms: u64) {
        self.advance(now_ms);
        for _ in 0..POLL_ROUNDS_MAX {
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
            self.output.messages.extend(output.messages);
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

    /// Everything the calls so far asked the caller to do.
    pub fn take_output(&mut self) -> Output<R> {
        std::mem::take(&mut self.output)
    }

    /// Stops serving: every request waiting is answered (writes with NOT_CONTROLLER,
    /// fetches with `NotController`). Take the output after.
    pub fn stop(&mut self) {
        self.fail_pending(|| ControllerResponse::Error {
            code: code::NOT_CONTROLLER,
            message: "the controller is stopping".into(),
        });
        for waiter in std::mem::take(&mut self.waiters) {
            self.reply(waiter.reply, ControllerResponse::NotController { leader: None });
        }
    }

    /// This node's `node.id`.
    pub fn node_id(&self) -> BrokerId {
        self.options.node_id
    }

    /// The voters' node ids, sorted.
    pub fn voters(&self) -> &[BrokerId] {
        self.quorum.voters()
    }

    /// Whether this node is the active controller, taking decisions.
    pub fn is_active(&self) -> bool {
        self.controller.is_some()
    }

    /// The quorum's current term (KRaft's controller epoch).
    pub fn term(&self) -> u64 {
        self.quorum.term()
    }

    /// The committed image as this node has applied it.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Why this node stopped serving, if it did: a committed entry that did not apply, or
    /// its quorum's storage failed.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// What was applied since the last call, for the simulation's checks.
    #[cfg(test)]
    pub(crate) fn take_applied(&mut self) -> Vec<Applied> {
        std::mem::take(&mut self.applied)
    }

    fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn reply(&mut self, reply: R, response: ControllerResponse) {
        self.output.replies.push((reply, response));
    }

    fn not_controller(&self) -> ControllerResponse {
        ControllerResponse::NotController { leader: self.quorum.leader() }
    }

    fn describe_quorum(&self) -> ControllerResponse {
        let status = self.quorum.status();
        let Some(leader) = status.leader else { return self.not_controller() };
        let tick_ms = i64::try_from(TICK_MS).unwrap_or(i64::MAX);
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
    fn fetch(&mut self, waiter: Waiter<R>, expired: bool) {
        let next = self.image.next_offset();
        if waiter.next_offset < self.retained_first || waiter.next_offset > next {
            // Behind what is retained: the whole image. Ahead of this controller (a new
            // leader that has not applied its predecessor's last records yet): the broker
            // asks again, and finds this controller caught up or another one active.
            if waiter.next_offset > next {
                self.reply(waiter.reply, ControllerResponse::NotController { leader: None });
                return;
            }
            let answer = match self.image.encode_snapshot() {
                Ok(image) => ControllerResponse::Snapshot { image },
                Err(error) => ControllerResponse::Error {
                    code: code::UNKNOWN_SERVER_ERROR,
                    message: error.to_string(),
                },
            };
            self.reply(waiter.reply, answer);
            return;
        }
        if waiter.next_offset == next && !expired {
            self.waiters.push(waiter);
            return;
        }
        let skip = usize::try_from(waiter.next_offset - self.retained_first).unwrap_or(0);
        let records: Vec<MetadataRecord> =
            self.retained.iter().skip(skip).take(FETCH_RECORDS_MAX).cloned().collect();
        let answer = match metadata::encode_batch(&records) {
            Ok(batch) => ControllerResponse::Records { first_offset: waiter.next_offset, batch },
            Err(error) => ControllerResponse::Error {
                code: code::UNKNOWN_SERVER_ERROR,
                message: error.to_string(),
            },
        };
        self.reply(waiter.reply, answer);
    }

    fn wake_waiters(&mut self) {
        let now_ms = self.now_ms;
        let next = self.image.next_offset();
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            let expired = now_ms >= waiter.deadline_ms;
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
            let now_ms = self.now_ms;
            let Some(controller) = self.controller.as_mut() else {
                if let Some(reply) = pending.reply {
                    let answer = self.not_controller();
                    self.reply(reply, answer);
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
                        let answer = ControllerResponse::Error {
                            code: outcome.code,
                            message: outcome.message,
                        };
                        self.reply(reply, answer);
                    }
                }
                Ok(decision) if decision.records.is_empty() => {
                    if let Some(reply) = pending.reply {
                        self.reply(reply, decision.answer);
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
        reply: Option<R>,
        answer: ControllerResponse,
    ) {
        let batch = match metadata::encode_batch(&records) {
            Ok(batch) => batch,
            Err(error) => {
                error!(%error, "cannot encode a metadata batch");
                self.reset_controller();
                if let Some(reply) = reply {
                    let answer = ControllerResponse::Error {
                        code: code::UNKNOWN_SERVER_ERROR,
                        message: error.to_string(),
                    };
                    self.reply(reply, answer);
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
                let proposed_at_ms = self.now_ms;
                self.in_flight = Some(InFlight { tag, reply, answer, proposed_at_ms });
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
                    self.reply(reply, response);
                }
            }
        }
    }

    fn reset_controller(&mut self) {
        if self.controller.is_some() {
            let now_ms = self.now_ms;
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
                self.reply(reply, response());
            }
        }
        for pending in std::mem::take(&mut self.queue) {
            if let Some(reply) = pending.reply {
                self.reply(reply, response());
            }
        }
    }

    fn on_tick(&mut self) {
        let now_ms = self.now_ms;
        let Some(controller) = self.controller.as_mut() else { return };
        if self.in_flight.is_some() || !self.queue.is_empty() {
            if let Some(in_flight) = &self.in_flight {
                if now_ms.saturating_sub(in_flight.proposed_at_ms) > IN_FLIGHT_WARN_MS {
                    warn!(tag = in_flight.tag, "a metadata batch has waited 10 s to commit");
                }
            }
            return;
        }
        let records = controller.tick(&self.image, now_ms);
        if !records.is_empty() {
            let answer = ControllerResponse::Written { outcomes: vec![], last_offset: -1 };
            self.propose(records, None, answer);
            return;
        }
        let interval_ms = self.options.leader_imbalance_check_interval_ms;
        if self.options.auto_leader_rebalance
            && now_ms.saturating_sub(self.last_rebalance_ms) >= interval_ms
        {
            self.last_rebalance_ms = now_ms;
            let records = controller.rebalance(&self.image);
            if !records.is_empty() {
                info!(
                    partitions = records.len(),
                    "moving leaders back to their preferred replicas"
                );
                let answer = ControllerResponse::Written { outcomes: vec![], last_offset: -1 };
                self.propose(records, None, answer);
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
                        #[cfg(test)]
                        self.applied.push(Applied::Snapshot { image: self.image.clone() });
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
                #[cfg(test)]
                self.applied.push(Applied::Entry {
                    first_offset: self.image.next_offset(),
                    records: records.clone(),
                });
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
                        self.output.adopted.push(path);
                    }
                }
                if self.in_flight.as_ref().is_some_and(|f| f.tag == tag) {
                    if let Some(in_flight) = self.in_flight.take() {
                        if let Some(reply) = in_flight.reply {
                            self.reply(reply, in_flight.answer);
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
                let now_ms = self.now_ms;
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
                        self.output.adopted.push(path);
                    } else {
                        info!(
                            records = records.len(),
                            topics = old.len(),
                            "adopting the one-node metadata"
                        );
                        let answer =
                            ControllerResponse::Written { outcomes: vec![], last_offset: -1 };
                        self.propose(records, None, answer);
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
                for waiter in std::mem::take(&mut self.waiters) {
                    self.reply(waiter.reply, ControllerResponse::NotController { leader });
                }
            }
            _ => {}
        }
    }
}
