//! The controller thread: a [`ControllerNode`] (one [`QuorumNode`], the metadata image
//! its committed entries build, and, while this node is the active controller (the
//! quorum's leader, with its own term's first entry committed), a [`Controller`] taking
//! decisions), driven with the real clock, the controller links and channels. It runs on
//! a thread of its own, never on a data shard's executor: its disk writes block, and a
//! shard must not wait for the quorum.
//!
//! Inputs arrive on one channel: Raft messages and broker requests from the controller
//! listener, and requests from this process's broker ([`LocalController`]). Decisions
//! that write are taken one at a time: a decision is made against the committed image,
//! proposed, and the next one waits until it is committed and applied (or this node stops
//! leading), so every decision sees every earlier one. Writes are rare; what this costs
//! in throughput it saves in reasoning.
//!
//! This file is the shell: it owns the channels, the listener, the peer links and the
//! clock, and does what the node's output says. The logic lives in
//! [`super::node`], sans I/O, so the seeded simulation runs it unchanged.
//!
//! A Raft entry's data is `[proposal tag: u64 BE][batch]`, the batch being the metadata
//! log's frames ([`sluice_engine::metadata::encode_batch`]); the tag tells the proposer
//! its own entry when it commits. Metadata offsets are dense: the n-th record committed
//! has offset n, on every node, whatever the Raft indexes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_engine::metadata::MetadataImage;
// The tests build old one-node logs out of records.
#[cfg(test)]
use sluice_engine::metadata::MetadataRecord;
use tracing::{debug, error, info, warn};

use super::node::{ControllerNode, NodeOptions};
pub use super::node::{FETCH_RECORDS_MAX, RETAINED_RECORDS_MAX};
use super::rpc::{self, code, ControllerRequest, ControllerResponse};
#[cfg(doc)]
use super::Controller;
use super::Settings;
use crate::quorum::{decode_message, encode_message, Durability, QuorumNode, QuorumOptions};
use crate::transport::{Inbound, Listener, PeerLinks, Replier};
use crate::BrokerId;

/// How often the quorum ticks (its election timeout is counted in ticks).
pub const TICK: Duration = Duration::from_millis(crate::quorum::TICK_MS);
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
        let node_options = NodeOptions {
            node_id: options.node_id,
            settings: options.settings,
            auto_leader_rebalance: options.auto_leader_rebalance,
            leader_imbalance_check_interval_ms: options.leader_imbalance_check_interval_ms,
            adopt: options.adopt,
            seed: options.seed,
        };
        let mut shell = Shell {
            node: ControllerNode::new(node_options, quorum, 0),
            peers,
            started: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("sluice-controller".into())
            .spawn(move || shell.run(inputs))?;
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

/// The controller thread's state: the sans-I/O node, the links to the other voters and
/// the real clock.
struct Shell {
    node: ControllerNode<Reply>,
    peers: Option<PeerLinks>,
    started: Instant,
}

impl Shell {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(&mut self, inputs: Receiver<Input>) {
        info!(node = self.node.node_id(), voters = ?self.node.voters(), "controller started");
        let mut next_tick = Instant::now() + TICK;
        self.node.start(self.now_ms());
        self.flush();
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
                next_tick = now + TICK;
                self.node.tick(self.now_ms());
            }
            self.node.drive(self.now_ms());
            self.flush();
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.node.stop();
        self.flush();
        if let Some(peers) = self.peers.take() {
            peers.shutdown();
        }
        info!(node = self.node.node_id(), "controller stopped");
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Inbound(Inbound::Peer { from, payload }) => match decode_message(&payload) {
                Ok(message) => self.node.peer_message(from, message),
                Err(error) => warn!(from, %error, "undecodable raft message dropped"),
            },
            Input::Inbound(Inbound::Request { from, payload, reply }) => {
                match rpc::decode_request(&payload) {
                    Ok(request) => self.node.request(request, Reply::Remote(reply), self.now_ms()),
                    Err(error) => {
                        warn!(from, %error, "undecodable controller request");
                        Reply::Remote(reply).send(ControllerResponse::Error {
                            code: code::INVALID_REQUEST,
                            message: error.to_string(),
                        });
                    }
                }
            }
            Input::Local { request, reply } => {
                self.node.request(request, Reply::Local(reply), self.now_ms())
            }
            Input::Stop => {}
        }
    }

    /// Does what the node asked: sends its Raft messages (reporting those that could not
    /// go, and every snapshot's fate), its answers, and retires adopted logs.
    fn flush(&mut self) {
        let output = self.node.take_output();
        for (to, message) in output.messages {
            let snapshot = message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
            let sent = encode_message(&message).map_err(|e| e.to_string()).and_then(|bytes| {
                match &self.peers {
                    Some(peers) => peers.send(to, bytes).map_err(|e| e.to_string()),
                    None => Err("no links".to_string()),
                }
            });
            if let Err(error) = &sent {
                debug!(to, %error, "raft message not sent");
                self.node.report_unreachable(to);
            }
            if snapshot {
                self.node.report_snapshot(to, sent.is_ok());
            }
        }
        for (reply, response) in output.replies {
            reply.send(response);
        }
        for path in output.adopted {
            retire_adopted(&path);
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
