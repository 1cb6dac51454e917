//! A simulated broker's side of the control plane: what [`crate::agent::BrokerAgent`]
//! does, as a state machine with time as an input. It registers with an incarnation id,
//! heartbeats with the offset it applied, fetches metadata from its next offset and
//! applies records or snapshots to its own image, forwards intents, and follows
//! NotController answers — one request at a time per kind, as the agent's threads do.

use sluice_engine::metadata::{self, MetadataImage};

use crate::agent::FETCH_WAIT_MS;
use crate::controller::rpc::{code, ControllerRequest, ControllerResponse, Endpoint, Intent};
use crate::BrokerId;

/// The agent's pause before trying again after a failure.
pub(super) const RETRY_PAUSE_MS: u64 = 100;
/// How long a registration refused as a duplicate waits (the agent's 500 ms).
const DUPLICATE_PAUSE_MS: u64 = 500;
/// How long a request waits for its answer before the broker tries the next controller:
/// shorter than the agent's 5 s, so that a simulated run sees more of them.
pub(super) const CALL_TIMEOUT_MS: u64 = 1_500;
/// Heartbeats of a broker waiting to shut down come at least this often.
const SHUTDOWN_HEARTBEAT_MS: u64 = 50;
/// How long a controlled shutdown waits for the controller's leave before stopping anyway.
pub(super) const SHUTDOWN_WAIT_MS: u64 = 5_000;
/// How long a forwarded write keeps trying.
pub(super) const WRITE_DEADLINE_MS: u64 = 6_000;

/// The kinds of request a broker has in flight, one of each at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Lane {
    Register,
    Heartbeat,
    Fetch,
    Write,
}

const LANES: [Lane; 4] = [Lane::Register, Lane::Heartbeat, Lane::Fetch, Lane::Write];

/// A request in flight.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub correlation: u64,
    pub timeout_at_ms: u64,
}

/// A forwarded write: the intents, and until when to keep trying.
#[derive(Debug, Clone)]
pub(super) struct Write {
    pub intents: Vec<Intent>,
    pub deadline_ms: u64,
}

/// A request to send now to a controller (by slot).
#[derive(Debug, Clone)]
pub(super) struct Send {
    pub lane: Lane,
    pub correlation: u64,
    pub to: usize,
    pub request: ControllerRequest,
}

/// What a response did, for the driver's checks and statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    Nothing,
    Registered {
        epoch: i64,
    },
    /// Records applied, from `first_offset` to the image's end.
    Applied {
        first_offset: i64,
        count: usize,
    },
    /// The image was replaced by a snapshot.
    Snapshot,
    Written {
        ok: usize,
        failed: usize,
        last_offset: i64,
    },
    WriteFailed,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct SimBroker {
    pub id: BrokerId,
    pub incarnation_id: [u8; 16],
    pub epoch: Option<i64>,
    pub image: MetadataImage,
    /// What the last heartbeat answer said.
    pub fenced: bool,
    /// The controller (slot) believed active.
    pub target: usize,
    /// The controllers' node ids, by slot.
    voters: Vec<BrokerId>,
    calls: [Option<Call>; 4],
    retry_at_ms: [u64; 4],
    /// A heartbeat answered STALE_BROKER_EPOCH: register again, same incarnation.
    reregister: bool,
    heartbeat_interval_ms: u64,
    next_heartbeat_ms: u64,
    pub write: Option<Write>,
    /// Controlled shutdown: heartbeats ask to stop, and the controller says when it may.
    pub want_shutdown: bool,
    pub may_stop: bool,
    /// Plants a bug for the simulation to catch: fetch answers are taken whatever request
    /// they answer (a duplicate, a late one) and records whatever offset they start at.
    pub bug_ignore_first_offset: bool,
}

impl SimBroker {
    /// Starts a controlled shutdown: heartbeats ask for it from now on.
    pub fn begin_shutdown(&mut self, now_ms: u64) {
        self.want_shutdown = true;
        self.next_heartbeat_ms = self.next_heartbeat_ms.min(now_ms);
    }

    pub fn new(
        id: BrokerId,
        incarnation_id: [u8; 16],
        voters: Vec<BrokerId>,
        first_target: usize,
        heartbeat_interval_ms: u64,
    ) -> Self {
        SimBroker {
            id,
            incarnation_id,
            epoch: None,
            image: MetadataImage::default(),
            fenced: true,
            target: first_target % voters.len(),
            voters,
            calls: [None, None, None, None],
            retry_at_ms: [0; 4],
            reregister: false,
            heartbeat_interval_ms,
            next_heartbeat_ms: 0,
            write: None,
            want_shutdown: false,
            may_stop: false,
            bug_ignore_first_offset: false,
        }
    }

    fn index(lane: Lane) -> usize {
        LANES.iter().position(|&l| l == lane).expect("every lane is listed")
    }

    fn register_request(&self) -> ControllerRequest {
        ControllerRequest::Register {
            broker: self.id,
            incarnation_id: self.incarnation_id,
            endpoints: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: format!("broker-{}", self.id),
                port: 9092,
            }],
            rack: None,
        }
    }

    /// The requests due at `now_ms`, each with a fresh correlation id from `next_id`.
    pub fn poll(&mut self, now_ms: u64, next_id: &mut impl FnMut() -> u64) -> Vec<Send> {
        let mut sends = Vec::new();
        for lane in LANES {
            let index = Self::index(lane);
            if let Some(call) = &self.calls[index] {
                if now_ms < call.timeout_at_ms {
                    continue;
                }
                // No answer: the agent's channel tries the next controller.
                self.calls[index] = None;
                self.target = (self.target + 1) % self.voters.len();
                self.retry_at_ms[index] = now_ms;
            }
            if now_ms < self.retry_at_ms[index] {
                continue;
            }
            let request = match lane {
                Lane::Register if self.epoch.is_none() || self.reregister => {
                    self.register_request()
                }
                Lane::Register => continue,
                Lane::Heartbeat => {
                    let Some(epoch) = self.epoch else { continue };
                    if now_ms < self.next_heartbeat_ms {
                        continue;
                    }
                    // The agent sends a shutdown request at once, and asks again soon.
                    let interval_ms = if self.want_shutdown {
                        self.heartbeat_interval_ms.min(SHUTDOWN_HEARTBEAT_MS)
                    } else {
                        self.heartbeat_interval_ms
                    };
                    self.next_heartbeat_ms = now_ms + interval_ms;
                    ControllerRequest::Heartbeat {
                        broker: self.id,
                        epoch,
                        metadata_offset: self.image.offset(),
                        want_shutdown: self.want_shutdown,
                    }
                }
                Lane::Fetch => {
                    if self.epoch.is_none() {
                        continue;
                    }
                    ControllerRequest::FetchMetadata {
                        broker: self.id,
                        next_offset: self.image.next_offset(),
                        max_wait_ms: FETCH_WAIT_MS,
                    }
                }
                Lane::Write => {
                    let Some(write) = &self.write else { continue };
                    if now_ms >= write.deadline_ms {
                        self.write = None;
                        continue;
                    }
                    ControllerRequest::Write {
                        intents: write.intents.clone(),
                        validate_only: false,
                    }
                }
            };
            let correlation = next_id();
            let wait_ms = match lane {
                Lane::Fetch => u64::from(FETCH_WAIT_MS),
                _ => 0,
            };
            self.calls[index] =
                Some(Call { correlation, timeout_at_ms: now_ms + wait_ms + CALL_TIMEOUT_MS });
            sends.push(Send { lane, correlation, to: self.target, request });
        }
        sends
    }

    /// An answer arrived. Answers to requests no longer in flight (timed out, or a
    /// duplicate) are dropped, as the transport's correlation ids drop them.
    pub fn answer(
        &mut self,
        lane: Lane,
        correlation: u64,
        response: ControllerResponse,
        now_ms: u64,
    ) -> Result<Event, String> {
        let index = Self::index(lane);
        let planted = self.bug_ignore_first_offset && lane == Lane::Fetch;
        if self.calls[index].as_ref().map(|c| c.correlation) != Some(correlation) && !planted {
            return Ok(Event::Nothing);
        }
        self.calls[index] = None;
        if let ControllerResponse::NotController { leader } = response {
            // The agent's channel: to the leader named, else the next voter, after a pause.
            let next = leader
                .and_then(|l| self.voters.iter().position(|&v| v == l))
                .filter(|&slot| slot != self.target);
            match next {
                Some(slot) => self.target = slot,
                None => {
                    self.target = (self.target + 1) % self.voters.len();
                    self.retry_at_ms[index] = now_ms + RETRY_PAUSE_MS;
                }
            }
            return Ok(Event::Nothing);
        }
        match lane {
            Lane::Register => match response {
                ControllerResponse::Registered { epoch } => {
                    self.epoch = Some(epoch);
                    self.reregister = false;
                    self.next_heartbeat_ms = now_ms;
                    Ok(Event::Registered { epoch })
                }
                ControllerResponse::Error { code, .. }
                    if code == code::DUPLICATE_BROKER_REGISTRATION =>
                {
                    self.retry_at_ms[index] = now_ms + DUPLICATE_PAUSE_MS;
                    Ok(Event::Nothing)
                }
                _ => {
                    self.retry_at_ms[index] = now_ms + RETRY_PAUSE_MS;
                    Ok(Event::Nothing)
                }
            },
            Lane::Heartbeat => {
                match response {
                    ControllerResponse::Heartbeat { fenced, shut_down } => {
                        self.fenced = fenced;
                        self.may_stop |= shut_down;
                    }
                    ControllerResponse::Error { code, .. } if code == code::STALE_BROKER_EPOCH => {
                        self.reregister = true;
                    }
                    _ => {}
                }
                Ok(Event::Nothing)
            }
            Lane::Fetch => self.fetched(response, now_ms),
            Lane::Write => match response {
                ControllerResponse::Written { outcomes, last_offset } => {
                    self.write = None;
                    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
                    Ok(Event::Written { ok, failed: outcomes.len() - ok, last_offset })
                }
                _ => {
                    self.write = None;
                    Ok(Event::WriteFailed)
                }
            },
        }
    }

    fn fetched(&mut self, response: ControllerResponse, now_ms: u64) -> Result<Event, String> {
        let index = Self::index(Lane::Fetch);
        match response {
            ControllerResponse::Records { first_offset, batch }
                if first_offset == self.image.next_offset() || self.bug_ignore_first_offset =>
            {
                let records = metadata::decode_batch(&batch)
                    .map_err(|e| format!("broker {} got undecodable records: {e}", self.id))?;
                for record in &records {
                    self.image.apply(record).map_err(|e| {
                        format!(
                            "broker {}: a record from the controller does not apply at {}: {e}",
                            self.id,
                            self.image.next_offset()
                        )
                    })?;
                }
                Ok(Event::Applied { first_offset, count: records.len() })
            }
            ControllerResponse::Snapshot { image } => {
                self.image = MetadataImage::decode_snapshot(&image)
                    .map_err(|e| format!("broker {} got an undecodable snapshot: {e}", self.id))?;
                Ok(Event::Snapshot)
            }
            _ => {
                self.retry_at_ms[index] = now_ms + RETRY_PAUSE_MS;
                Ok(Event::Nothing)
            }
        }
    }
}
