//! A broker's side of the control plane (Kafka's `BrokerLifecycleManager` and metadata
//! fetcher): it registers with the active controller, heartbeats with the last metadata
//! offset its shards applied, fetches metadata records in order and hands them over, and
//! forwards the broker's intents. Plain std threads with blocking calls; a glommio shard
//! calls [`BrokerAgent::write`] from the blocking pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_engine::metadata::{self, MetadataImage, MetadataRecord};
use tracing::{debug, info, warn};

use crate::controller::rpc::{
    self, code, ControllerRequest, ControllerResponse, Endpoint, Intent, Outcome,
};
use crate::controller::runtime::LocalController;
use crate::transport::Client;
use crate::BrokerId;

/// How long one fetch waits at the controller for a record to arrive.
pub const FETCH_WAIT_MS: u32 = 500;
/// A call's timeout over the network, above the fetch wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before trying another controller after a failure.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The way to the active controller.
pub trait ControllerChannel: Send + Sync {
    /// Sends `request` to the controller believed active, following `NotController`
    /// answers to the leader they name and trying the voters in turn, until an answer
    /// that is not `NotController` or `timeout`.
    fn call(
        &self,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, String>;
}

/// The controller in this process (the one-node cluster, or a combined node's own).
#[derive(Debug, Clone)]
pub struct LocalChannel(pub LocalController);

impl ControllerChannel for LocalChannel {
    fn call(
        &self,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self.0.call(request.clone(), left.max(Duration::from_millis(1)));
            match answer {
                Ok(ControllerResponse::NotController { .. })
                    if Instant::now() + RETRY_PAUSE < deadline =>
                {
                    std::thread::sleep(RETRY_PAUSE);
                }
                Ok(answer) => return Ok(answer),
                Err(error) => return Err(error.to_string()),
            }
        }
    }
}

/// The controllers over the network.
#[derive(Debug)]
pub struct RemoteChannel {
    client: Client,
    voters: Vec<BrokerId>,
    /// Index into `voters` of the controller believed active.
    current: AtomicUsize,
}

impl RemoteChannel {
    pub fn new(
        broker: BrokerId,
        voters: Vec<(BrokerId, SocketAddr)>,
        max_frame_bytes: u32,
    ) -> Self {
        let addrs = voters.iter().map(|(_, addr)| *addr).collect();
        let client = Client::new(broker, addrs, max_frame_bytes);
        RemoteChannel {
            client,
            voters: voters.iter().map(|(id, _)| *id).collect(),
            current: AtomicUsize::new(0),
        }
    }
}

impl ControllerChannel for RemoteChannel {
    fn call(
        &self,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, String> {
        let payload = rpc::encode_request(request).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no controller answered");
        while Instant::now() < deadline {
            let index = self.current.load(Ordering::Relaxed) % self.voters.len().max(1);
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .client
                .call(index, &payload, left.min(CALL_TIMEOUT).max(Duration::from_millis(1)))
                .map_err(|e| e.to_string())
                .and_then(|bytes| rpc::decode_response(&bytes).map_err(|e| e.to_string()));
            match answer {
                Ok(ControllerResponse::NotController { leader }) => {
                    let next = leader
                        .and_then(|l| self.voters.iter().position(|&v| v == l))
                        .filter(|&p| p != index)
                        .unwrap_or(index + 1);
                    self.current.store(next, Ordering::Relaxed);
                    last_error = format!("controller {} is not active", self.voters[index]);
                    if leader.is_none() || next == index + 1 {
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    debug!(controller = self.voters[index], %error, "controller call failed");
                    last_error = error;
                    self.current.store(index + 1, Ordering::Relaxed);
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
        Err(last_error)
    }
}

/// Metadata from the controller, in order.
#[derive(Debug)]
pub enum MetadataUpdate {
    /// Records at `first_offset`, `first_offset + 1`, ...
    Records { first_offset: i64, records: Vec<MetadataRecord> },
    /// The whole image: the broker was behind what the controller retains.
    Snapshot(MetadataImage),
}

/// Who this broker is.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub broker: BrokerId,
    pub incarnation_id: [u8; 16],
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub heartbeat_interval: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    epoch: AtomicI64,
    /// The last metadata offset every shard applied (the broker says so).
    applied: AtomicI64,
    fenced: AtomicBool,
    want_shutdown: AtomicBool,
    may_stop: AtomicBool,
    stop: AtomicBool,
}

/// See the module documentation.
pub struct BrokerAgent {
    options: AgentOptions,
    channel: Arc<dyn ControllerChannel>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for BrokerAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAgent").field("broker", &self.options.broker).finish_non_exhaustive()
    }
}

impl BrokerAgent {
    /// Registers (retrying until `timeout`) and fetches the metadata up to the controller's
    /// end: the image to start with. Nothing runs in the background until
    /// [`Self::start`].
    pub fn register(
        options: AgentOptions,
        channel: Arc<dyn ControllerChannel>,
        timeout: Duration,
    ) -> Result<(BrokerAgent, MetadataImage), String> {
        let deadline = Instant::now() + timeout;
        let request = ControllerRequest::Register {
            broker: options.broker,
            incarnation_id: options.incarnation_id,
            endpoints: options.endpoints.clone(),
            rack: options.rack.clone(),
        };
        let epoch = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match channel.call(&request, left)? {
                ControllerResponse::Registered { epoch } => break epoch,
                ControllerResponse::Error { code, message }
                    if code == code::DUPLICATE_BROKER_REGISTRATION && Instant::now() < deadline =>
                {
                    // The previous incarnation's session has not ended yet.
                    debug!(%message, "registration refused for now");
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return Err(format!("registration refused: {other:?}")),
            }
        };
        info!(broker = options.broker, epoch, "registered with the controller");
        let shared = Arc::new(Shared {
            epoch: AtomicI64::new(epoch),
            applied: AtomicI64::new(-1),
            fenced: AtomicBool::new(true),
            ..Default::default()
        });
        let agent = BrokerAgent { options, channel, shared, threads: Mutex::new(Vec::new()) };
        let image = agent.catch_up(deadline)?;
        Ok((agent, image))
    }

    /// Fetches from offset 0 until the controller has nothing more.
    fn catch_up(&self, deadline: Instant) -> Result<MetadataImage, String> {
        let mut image = MetadataImage::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out fetching the metadata".into());
            }
            let request = ControllerRequest::FetchMetadata {
                broker: self.options.broker,
                next_offset: image.next_offset(),
                max_wait_ms: 0,
            };
            match self.channel.call(&request, left)? {
                ControllerResponse::Records { first_offset, batch } => {
                    let records = metadata::decode_batch(&batch).map_err(|e| e.to_string())?;
                    if first_offset != image.next_offset() {
                        return Err(format!(
                            "records from {first_offset}, asked {}",
                            image.next_offset()
                        ));
                    }
                    if records.is_empty() {
                        return Ok(image);
                    }
                    for record in &records {
                        image
                            .apply(record)
                            .map_err(|e| format!("metadata record does not apply: {e}"))?;
                    }
                }
                ControllerResponse::Snapshot { image: bytes } => {
                    image = MetadataImage::decode_snapshot(&bytes).map_err(|e| e.to_string())?;
                }
                other => return Err(format!("metadata fetch refused: {other:?}")),
            }
        }
    }

    /// Starts heartbeating and fetching from `next_offset`; updates arrive on the
    /// receiver, in order.
    pub fn start(self: &Arc<Self>, next_offset: i64) -> Result<Receiver<MetadataUpdate>, String> {
        self.shared.applied.store(next_offset - 1, Ordering::SeqCst);
        let (updates, receiver) = mpsc::channel();
        let heartbeat = {
            let agent = Arc::clone(self);
            std::thread::Builder::new()
                .name("broker-heartbeat".into())
                .spawn(move || agent.heartbeats())
                .map_err(|e| e.to_string())?
        };
        let fetch = {
            let agent = Arc::clone(self);
            std::thread::Builder::new()
                .name("broker-metadata".into())
                .spawn(move || agent.fetches(next_offset, updates))
                .map_err(|e| e.to_string())?
        };
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.push(heartbeat);
        threads.push(fetch);
        Ok(receiver)
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn heartbeats(&self) {
        while !self.stopping() {
            self.heartbeat_once();
            let until = Instant::now() + self.options.heartbeat_interval;
            // A shutdown request goes out at once, not a heartbeat interval later.
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(20));
                if self.shared.want_shutdown.load(Ordering::SeqCst)
                    && !self.shared.may_stop.load(Ordering::SeqCst)
                {
                    break;
                }
            }
        }
    }

    fn heartbeat_once(&self) {
        let request = ControllerRequest::Heartbeat {
            broker: self.options.broker,
            epoch: self.shared.epoch.load(Ordering::SeqCst),
            metadata_offset: self.shared.applied.load(Ordering::SeqCst),
            want_shutdown: self.shared.want_shutdown.load(Ordering::SeqCst),
        };
        match self
            .channel
            .call(&request, self.options.heartbeat_interval.max(Duration::from_secs(1)))
        {
            Ok(ControllerResponse::Heartbeat { fenced, shut_down }) => {
                let was = self.shared.fenced.swap(fenced, Ordering::SeqCst);
                if was != fenced {
                    info!(broker = self.options.broker, fenced, "broker fencing changed");
                }
                if shut_down {
                    self.shared.may_stop.store(true, Ordering::SeqCst);
                }
            }
            Ok(ControllerResponse::Error { code, message }) if code == code::STALE_BROKER_EPOCH => {
                // The controller forgot or replaced this registration: register again.
                warn!(%message, "heartbeat refused; registering again");
                let request = ControllerRequest::Register {
                    broker: self.options.broker,
                    incarnation_id: self.options.incarnation_id,
                    endpoints: self.options.endpoints.clone(),
                    rack: self.options.rack.clone(),
                };
                if let Ok(ControllerResponse::Registered { epoch }) =
                    self.channel.call(&request, CALL_TIMEOUT)
                {
                    self.shared.epoch.store(epoch, Ordering::SeqCst);
                }
            }
            Ok(other) => debug!(?other, "unexpected heartbeat answer"),
            Err(error) => debug!(%error, "heartbeat failed"),
        }
    }

    fn fetches(&self, mut next_offset: i64, updates: Sender<MetadataUpdate>) {
        while !self.stopping() {
            let request = ControllerRequest::FetchMetadata {
                broker: self.options.broker,
                next_offset,
                max_wait_ms: FETCH_WAIT_MS,
            };
            let update = match self.channel.call(&request, CALL_TIMEOUT) {
                Ok(ControllerResponse::Records { first_offset, batch })
                    if first_offset == next_offset =>
                {
                    match metadata::decode_batch(&batch) {
                        Ok(records) if records.is_empty() => continue,
                        Ok(records) => {
                            next_offset += i64::try_from(records.len()).unwrap_or(0);
                            MetadataUpdate::Records { first_offset, records }
                        }
                        Err(error) => {
                            warn!(%error, "undecodable metadata from the controller");
                            std::thread::sleep(RETRY_PAUSE);
                            continue;
                        }
                    }
                }
                Ok(ControllerResponse::Snapshot { image }) => {
                    match MetadataImage::decode_snapshot(&image) {
                        Ok(image) => {
                            next_offset = image.next_offset();
                            MetadataUpdate::Snapshot(image)
                        }
                        Err(error) => {
                            warn!(%error, "undecodable metadata snapshot from the controller");
                            std::thread::sleep(RETRY_PAUSE);
                            continue;
                        }
                    }
                }
                Ok(other) => {
                    debug!(?other, "unexpected metadata fetch answer");
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
                Err(error) => {
                    debug!(%error, "metadata fetch failed");
                    continue;
                }
            };
            if updates.send(update).is_err() {
                return;
            }
        }
    }

    /// Every shard applied the metadata up to `offset`: heartbeats say so (a broker is
    /// unfenced once it has caught up with its own registration).
    pub fn applied(&self, offset: i64) {
        self.shared.applied.fetch_max(offset, Ordering::SeqCst);
    }

    /// Whether the controller last said this broker is fenced.
    pub fn is_fenced(&self) -> bool {
        self.shared.fenced.load(Ordering::SeqCst)
    }

    /// Heartbeats until the controller unfences this broker, or `timeout`.
    pub fn wait_unfenced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_fenced() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        !self.is_fenced()
    }

    /// The broker epoch of this registration.
    pub fn epoch(&self) -> i64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }

    /// Controlled shutdown: asks the controller to move leadership away, and waits until
    /// it says this broker may stop, or `timeout`. Whether it said so.
    pub fn controlled_shutdown(&self, timeout: Duration) -> bool {
        self.shared.want_shutdown.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while !self.shared.may_stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.may_stop.load(Ordering::SeqCst)
    }

    /// Forwards intents; the outcomes and the offset of the last record stored.
    pub fn write(
        &self,
        intents: Vec<Intent>,
        validate_only: bool,
        timeout: Duration,
    ) -> Result<(Vec<Outcome>, i64), Outcome> {
        let request = ControllerRequest::Write { intents, validate_only };
        match self.channel.call(&request, timeout) {
            Ok(ControllerResponse::Written { outcomes, last_offset }) => {
                Ok((outcomes, last_offset))
            }
            Ok(ControllerResponse::Error { code, message }) => Err(Outcome::error(code, message)),
            Ok(ControllerResponse::NotController { .. }) => {
                Err(Outcome::error(code::NOT_CONTROLLER, "no active controller"))
            }
            Ok(other) => Err(Outcome::error(
                code::UNKNOWN_SERVER_ERROR,
                format!("unexpected answer {other:?}"),
            )),
            Err(error) => Err(Outcome::error(code::REQUEST_TIMED_OUT, error)),
        }
    }

    /// Any other request (DescribeQuorum, ListReassignments).
    pub fn call(
        &self,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, String> {
        self.channel.call(request, timeout)
    }

    /// Stops the threads and joins them (a fetch in flight ends within its wait).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            drop(thread.join());
        }
    }
}
