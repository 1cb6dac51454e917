//! One Kafka connection with pipelined requests. The owner writes requests (`&mut self`,
//! so one task writes at a time and a frame is never interleaved with another); a reader
//! task reads response frames and hands each to the oldest pending request, whose
//! correlation id it must carry (Kafka answers in order on a connection). At most
//! `in_flight_max` requests wait for answers; `send` waits for a slot beyond that.
//!
//! Responses are decoded by the future that waits for them, so the reader task only
//! frames bytes, and a caller that does not need a typed answer never pays for one.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, FetchRequest,
    FetchResponse, ListOffsetsRequest, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use super::produce::{self, ProduceFrame, ProduceSpec};
use super::ClientError;

/// ApiVersions version tried first (flexible, sends the client software name).
const API_VERSIONS_VERSION: i16 = 3;
/// UNSUPPORTED_VERSION: a broker answers ApiVersions it does not serve in v0 (KIP-511).
const UNSUPPORTED_VERSION: i16 = 35;
/// TOPIC_ALREADY_EXISTS, which `create_topics` takes as success.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Bytes of the size prefix of every frame.
const SIZE_PREFIX_BYTES: usize = 4;
/// Response frames at least this large are read into recycled buffers (see [`Buffers`]).
const RECYCLE_BYTES_MIN: usize = 64 << 10;
/// Large frames a connection remembers, to reuse their buffers once they are dropped.
const RECYCLE_FRAMES: usize = 4;

/// How a connection behaves; the defaults suit a benchmark on a local network.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Sent in every request header.
    pub client_id: String,
    /// Requests awaiting an answer before `send` waits (Kafka's
    /// `max.in.flight.requests.per.connection`).
    pub in_flight_max: usize,
    /// Bound on `connect` and on each [`Connection::request`] (not on pipelined `send`s,
    /// whose caller decides how long to wait).
    pub request_timeout: Duration,
    /// Largest response frame accepted; a larger size prefix breaks the connection.
    pub response_bytes_max: usize,
    /// Read buffer of the response reader (large responses bypass it).
    pub read_buffer_bytes: usize,
    /// Batches at least this large are written from their own buffers, not copied into
    /// the Produce request buffer.
    pub produce_splice_bytes_min: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            client_id: "sluice-net".to_string(),
            in_flight_max: 5,
            request_timeout: Duration::from_secs(30),
            response_bytes_max: 256 << 20,
            read_buffer_bytes: 256 << 10,
            produce_splice_bytes_min: produce::SPLICE_BYTES_MIN,
        }
    }
}

/// The versions both sides speak, from the broker's ApiVersions answer.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    /// API key -> (min, max) the broker serves.
    broker: HashMap<i16, (i16, i16)>,
}

impl Versions {
    /// The broker's (min, max) for an API, if it serves it.
    pub fn broker(&self, api_key: i16) -> Option<(i16, i16)> {
        self.broker.get(&api_key).copied()
    }

    /// The versions this client speaks for `Req`: what the `kafka-protocol` crate knows,
    /// except where a later version needs what we do not send (Produce and Fetch v13+
    /// name topics by id; Metadata v0 means "all topics" for an empty list).
    pub fn ours<Req: Request>() -> (i16, i16) {
        let crate_range = (Req::VERSIONS.min, Req::VERSIONS.max);
        match ApiKey::try_from(Req::KEY) {
            Ok(ApiKey::Produce) => (produce::VERSION_MIN, produce::VERSION_MAX),
            Ok(ApiKey::Fetch) => (crate_range.0.max(4), crate_range.1.min(12)),
            Ok(ApiKey::Metadata) => (crate_range.0.max(1), crate_range.1),
            _ => crate_range,
        }
    }

    /// The highest version of `Req` both sides speak.
    pub fn negotiate<Req: Request>(&self, address: &str) -> Result<i16, ClientError> {
        let api = api_name(Req::KEY);
        let (ours_min, ours_max) = Self::ours::<Req>();
        let Some((broker_min, broker_max)) = self.broker(Req::KEY) else {
            return Err(ClientError::ApiNotServed {
                address: address.to_string(),
                api,
                api_key: Req::KEY,
            });
        };
        let version = ours_max.min(broker_max);
        if version < ours_min.max(broker_min) {
            return Err(ClientError::NoCommonVersion {
                address: address.to_string(),
                api,
                broker_min,
                broker_max,
                ours_min,
                ours_max,
            });
        }
        Ok(version)
    }
}

/// A request's answer slot, filled by the reader task.
#[derive(Default)]
struct Slot {
    frame: RefCell<Option<Result<Bytes, ClientError>>>,
    waker: Cell<Option<Waker>>,
}

impl Slot {
    fn complete(&self, result: Result<Bytes, ClientError>) {
        *self.frame.borrow_mut() = Some(result);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

struct Pending {
    correlation_id: i32,
    slot: Rc<Slot>,
}

/// State shared by the connection and its reader task (same executor, no locks).
struct Shared {
    address: Rc<str>,
    pending: RefCell<VecDeque<Pending>>,
    /// Why the connection broke, once it has.
    failure: RefCell<Option<String>>,
    /// Bytes read from the socket (response frames with their size prefixes).
    bytes_read: Cell<u64>,
    /// The writer waiting for an in-flight slot.
    space: Cell<Option<Waker>>,
}

impl Shared {
    fn broken(&self) -> Option<ClientError> {
        self.failure.borrow().as_ref().map(|reason| ClientError::Broken {
            address: self.address.to_string(),
            reason: reason.clone(),
        })
    }

    /// Marks the connection broken and fails every pending request.
    fn fail(&self, reason: String) {
        {
            let mut failure = self.failure.borrow_mut();
            if failure.is_none() {
                *failure = Some(reason);
            }
        }
        let pending: Vec<Pending> = self.pending.borrow_mut().drain(..).collect();
        for entry in pending {
            entry.slot.complete(Err(self.broken().expect("failure was just set")));
        }
        if let Some(waker) = self.space.take() {
            waker.wake();
        }
    }
}

/// One connection to one broker. Lives on the executor that opened it.
pub struct Connection {
    shared: Rc<Shared>,
    writer: WriteHalf<TcpStream>,
    /// Reads responses; dropped (cancelled) with the connection.
    _reader: glommio::Task<()>,
    options: ConnectionOptions,
    versions: Versions,
    correlation_id: i32,
    bytes_written: u64,
    /// Request encoding buffer, reused.
    scratch: Vec<u8>,
    produce_frame: ProduceFrame,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.shared.address)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The reader task is cancelled with `_reader`; nobody would complete these.
        self.shared.fail("the connection was closed by this client".to_string());
    }
}

impl Connection {
    /// Connects to `address` (`HOST:PORT`), sets TCP_NODELAY, and negotiates API versions.
    pub async fn connect(
        address: &str,
        options: ConnectionOptions,
    ) -> Result<Connection, ClientError> {
        let socket_address = resolve(address)?;
        let timeout = options.request_timeout;
        let stream =
            TcpStream::connect_timeout(socket_address, timeout).await.map_err(|error| {
                ClientError::Connect { address: address.to_string(), source: error.into() }
            })?;
        stream.set_nodelay(true).map_err(|error| ClientError::Connect {
            address: address.to_string(),
            source: error.into(),
        })?;
        let (reader, writer) = futures_lite::io::split(stream);
        let reader = BufReader::with_capacity(options.read_buffer_bytes.max(4096), reader);
        let shared = Rc::new(Shared {
            address: Rc::from(address),
            pending: RefCell::new(VecDeque::new()),
            failure: RefCell::new(None),
            bytes_read: Cell::new(0),
            space: Cell::new(None),
        });
        let task = glommio::spawn_local(read_responses(
            reader,
            shared.clone(),
            options.response_bytes_max,
        ));
        let mut connection = Connection {
            shared,
            writer,
            _reader: task,
            options,
            versions: Versions::default(),
            correlation_id: 0,
            bytes_written: 0,
            scratch: Vec::new(),
            produce_frame: ProduceFrame::default(),
        };
        connection.versions =
            with_timeout(connection.negotiate(), timeout, address, "ApiVersions").await?;
        Ok(connection)
    }

    pub fn address(&self) -> &str {
        &self.shared.address
    }

    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The version of `Req` to send: the highest both sides speak.
    pub fn version<Req: Request>(&self) -> Result<i16, ClientError> {
        self.versions.negotiate::<Req>(&self.shared.address)
    }

    /// Bytes written to the socket so far (request frames, size prefixes included).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Bytes of response frames read so far, size prefixes included.
    pub fn bytes_read(&self) -> u64 {
        self.shared.bytes_read.get()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.pending.borrow().len()
    }

    /// Sends `request` at `version` once an in-flight slot is free, and returns the future
    /// of its answer. The request is fully written when this returns, so its buffers may
    /// be reused; answers arrive in send order.
    pub async fn send<Req: Request>(
        &mut self,
        version: i16,
        request: &Req,
    ) -> Result<ResponseFuture<Req::Response>, ClientError> {
        self.wait_for_slot().await?;
        let correlation_id = self.next_correlation_id();
        let mut frame = std::mem::take(&mut self.scratch);
        let encoded = encode_frame(&mut frame, request, version, correlation_id, &self.options);
        let result = match encoded {
            Ok(()) => {
                let slot = self.register(correlation_id);
                let address = self.shared.address.clone();
                self.write(&frame)
                    .await
                    .map(|()| ResponseFuture::new(slot, version, Req::KEY, address))
            }
            Err(error) => Err(error),
        };
        self.scratch = frame;
        result
    }

    /// Sends `request` at the negotiated version and waits (up to the request timeout)
    /// for the answer.
    pub async fn request<Req: Request>(
        &mut self,
        request: &Req,
    ) -> Result<Req::Response, ClientError> {
        let version = self.version::<Req>()?;
        let timeout = self.options.request_timeout;
        let address = self.shared.address.clone();
        let api = api_name(Req::KEY);
        let send = async {
            let response = self.send(version, request).await?;
            response.await
        };
        let result = with_timeout(send, timeout, &address, &api).await;
        if let Err(ClientError::Timeout { .. }) = &result {
            // The request may have been cut mid-write; the stream is unusable.
            self.shared.fail(format!("{api} timed out"));
        }
        result
    }

    /// Sends a Produce request whose batches are written from where they lie (see
    /// `ConnectionOptions::produce_splice_bytes_min`). With acks 0 the broker does not
    /// answer and this returns `None` once the request is written.
    pub async fn send_produce(
        &mut self,
        version: i16,
        spec: &ProduceSpec<'_>,
    ) -> Result<Option<ResponseFuture<ProduceResponse>>, ClientError> {
        let expects_answer = spec.acks != 0;
        if expects_answer {
            self.wait_for_slot().await?;
        } else if let Some(error) = self.shared.broken() {
            return Err(error);
        }
        let correlation_id = self.next_correlation_id();
        let mut frame = std::mem::take(&mut self.produce_frame);
        let encoded = frame.encode(
            spec,
            version,
            correlation_id,
            &self.options.client_id,
            self.options.produce_splice_bytes_min,
        );
        let result = match encoded {
            Ok(()) => {
                let slot = expects_answer.then(|| self.register(correlation_id));
                let mut written = Ok(());
                for piece in frame.pieces(spec) {
                    written = self.write(piece).await;
                    if written.is_err() {
                        break;
                    }
                }
                let address = self.shared.address.clone();
                written.map(|()| {
                    slot.map(|slot| {
                        ResponseFuture::new(slot, version, ProduceRequest::KEY, address)
                    })
                })
            }
            Err(reason) => {
                Err(ClientError::Encode { api: api_name(ProduceRequest::KEY), version, reason })
            }
        };
        self.produce_frame = frame;
        result
    }

    /// Metadata for `topics` (all topics for `None`).
    pub async fn metadata(
        &mut self,
        topics: Option<&[&str]>,
        allow_auto_topic_creation: bool,
    ) -> Result<MetadataResponse, ClientError> {
        let mut request = MetadataRequest::default();
        request.topics = topics.map(|names| {
            names
                .iter()
                .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
                .collect()
        });
        request.allow_auto_topic_creation = allow_auto_topic_creation;
        self.request(&request).await
    }

    /// Creates topics; one that exists already is not an error (whatever its partition
    /// count: the caller checks with Metadata if it cares).
    pub async fn create_topics(
        &mut self,
        topics: &[TopicSpec],
        timeout_ms: i32,
    ) -> Result<(), ClientError> {
        let mut request = CreateTopicsRequest::default();
        request.timeout_ms = timeout_ms;
        for topic in topics {
            let mut creatable = CreatableTopic::default();
            creatable.name = topic_name(&topic.name);
            creatable.num_partitions = topic.partitions;
            creatable.replication_factor = topic.replication_factor;
            creatable.configs = topic
                .configs
                .iter()
                .map(|(name, value)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(name.clone()))
                        .with_value(Some(StrBytes::from_string(value.clone())))
                })
                .collect();
            request.topics.push(creatable);
        }
        let response = self.request(&request).await?;
        for result in &response.topics {
            if result.error_code != 0 && result.error_code != TOPIC_ALREADY_EXISTS {
                return Err(ClientError::kafka(
                    format!("CreateTopics for topic '{}'", result.name.as_str()),
                    result.error_code,
                    result.error_message.as_ref().map(StrBytes::as_str),
                ));
            }
        }
        Ok(())
    }

    /// The offset of each partition at `timestamp`: -2 for the log start, -1 for the log
    /// end (high watermark), otherwise the first offset at or after the time.
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i32, i64)>, ClientError> {
        let mut request = ListOffsetsRequest::default();
        request.replica_id = (-1).into();
        request.topics.push(
            ListOffsetsTopic::default().with_name(topic_name(topic)).with_partitions(
                partitions
                    .iter()
                    .map(|&partition| {
                        ListOffsetsPartition::default()
                            .with_partition_index(partition)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            ),
        );
        let response = self.request(&request).await?;
        let mut offsets = Vec::with_capacity(partitions.len());
        for answer in response.topics.iter().flat_map(|t| t.partitions.iter()) {
            if answer.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("ListOffsets for {topic}-{}", answer.partition_index),
                    answer.error_code,
                    None,
                ));
            }
            offsets.push((answer.partition_index, answer.offset));
        }
        Ok(offsets)
    }

    /// Sends a full Fetch (no fetch session) and returns the future of its answer.
    pub async fn send_fetch(
        &mut self,
        spec: &FetchSpec,
    ) -> Result<ResponseFuture<FetchResponse>, ClientError> {
        let version = self.version::<FetchRequest>()?;
        let request = spec.to_request();
        self.send(version, &request).await
    }

    async fn negotiate(&mut self) -> Result<Versions, ClientError> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_string(self.options.client_id.clone());
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let future = self.send(API_VERSIONS_VERSION, &request).await?;
        let frame = future.raw().await?;
        let api = api_name(ApiVersionsRequest::KEY);
        let decode_error = |reason: String| ClientError::Decode {
            address: self.shared.address.to_string(),
            api: api.clone(),
            version: API_VERSIONS_VERSION,
            reason,
        };
        let mut body = frame;
        // ApiVersions answers always use response header v0 (KIP-511).
        ResponseHeader::decode(&mut body, 0).map_err(|e| decode_error(e.to_string()))?;
        // The error code leads the body in every version; UNSUPPORTED_VERSION means the
        // broker answered in v0 with its list.
        let error_code = body.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
        let body_version =
            if error_code == Some(UNSUPPORTED_VERSION) { 0 } else { API_VERSIONS_VERSION };
        let response = ApiVersionsResponse::decode(&mut body, body_version)
            .map_err(|e| decode_error(e.to_string()))?;
        if response.error_code != 0 && response.api_keys.is_empty() {
            return Err(ClientError::kafka(
                format!("ApiVersions to broker {}", self.shared.address),
                response.error_code,
                None,
            ));
        }
        Ok(Versions {
            broker: response
                .api_keys
                .iter()
                .map(|api| (api.api_key, (api.min_version, api.max_version)))
                .collect(),
        })
    }

    fn next_correlation_id(&mut self) -> i32 {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        self.correlation_id
    }

    fn register(&self, correlation_id: i32) -> Rc<Slot> {
        let slot = Rc::new(Slot::default());
        self.shared.pending.borrow_mut().push_back(Pending { correlation_id, slot: slot.clone() });
        slot
    }

    /// Waits until a request may be sent without waiting for an in-flight slot (or the
    /// connection is broken: then the error).
    pub async fn wait_for_slot(&self) -> Result<(), ClientError> {
        let limit = self.options.in_flight_max.max(1);
        futures_lite::future::poll_fn(|cx| {
            if let Some(error) = self.shared.broken() {
                return Poll::Ready(Err(error));
            }
            if self.shared.pending.borrow().len() < limit {
                return Poll::Ready(Ok(()));
            }
            self.shared.space.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if let Err(error) = self.writer.write_all(bytes).await {
            let reason = format!("write failed: {error}");
            self.shared.fail(reason);
            return Err(ClientError::Io {
                address: self.shared.address.to_string(),
                source: error,
            });
        }
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// -1 for the broker's `default.replication.factor`.
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// A full Fetch request (no fetch session).
#[derive(Debug, Clone)]
pub struct FetchSpec {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    /// 0: read uncommitted, 1: read committed.
    pub isolation_level: i8,
    pub topics: Vec<FetchTopicSpec>,
}

#[derive(Debug, Clone)]
pub struct FetchTopicSpec {
    pub name: String,
    pub partitions: Vec<FetchPartitionSpec>,
}

#[derive(Debug, Clone, Copy)]
pub struct FetchPartitionSpec {
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: i32,
}

impl FetchSpec {
    fn to_request(&self) -> FetchRequest {
        let mut request = FetchRequest::default();
        request.replica_id = (-1).into();
        request.max_wait_ms = self.max_wait_ms;
        request.min_bytes = self.min_bytes;
        request.max_bytes = self.max_bytes;
        request.isolation_level = self.isolation_level;
        request.session_id = 0;
        request.session_epoch = -1;
        request.topics = self
            .topics
            .iter()
            .map(|topic| {
                FetchTopic::default().with_topic(topic_name(&topic.name)).with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p.partition)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(p.offset)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(p.max_bytes)
                        })
                        .collect(),
                )
            })
            .collect();
        request
    }
}

/// The answer to one request, decoded when it arrives.
#[must_use = "a response future does nothing unless awaited"]
pub struct ResponseFuture<R> {
    slot: Rc<Slot>,
    version: i16,
    api_key: i16,
    address: Rc<str>,
    response: PhantomData<R>,
}

impl<R> std::fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("api", &api_name(self.api_key))
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<R: Decodable + HeaderVersion> ResponseFuture<R> {
    fn new(slot: Rc<Slot>, version: i16, api_key: i16, address: Rc<str>) -> Self {
        ResponseFuture { slot, version, api_key, address, response: PhantomData }
    }

    /// Waits for the raw response frame (header and body, without the size prefix).
    pub async fn raw(self) -> Result<Bytes, ClientError> {
        futures_lite::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Whether the answer has arrived (awaiting will not wait).
    pub fn is_ready(&self) -> bool {
        self.slot.frame.borrow().is_some()
    }

    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Result<Bytes, ClientError>> {
        if let Some(result) = self.slot.frame.borrow_mut().take() {
            return Poll::Ready(result);
        }
        self.slot.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    fn decode(&self, mut frame: Bytes) -> Result<R, ClientError> {
        let decode_error = |reason: String| ClientError::Decode {
            address: self.address.to_string(),
            api: api_name(self.api_key),
            version: self.version,
            reason,
        };
        ResponseHeader::decode(&mut frame, R::header_version(self.version))
            .map_err(|e| decode_error(format!("header: {e}")))?;
        let response =
            R::decode(&mut frame, self.version).map_err(|e| decode_error(e.to_string()))?;
        if frame.has_remaining() {
            return Err(decode_error(format!("{} bytes left after the body", frame.remaining())));
        }
        Ok(response)
    }
}

impl<R: Decodable + HeaderVersion> Future for ResponseFuture<R> {
    type Output = Result<R, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.poll_frame(cx) {
            Poll::Ready(Ok(frame)) => Poll::Ready(self.decode(frame)),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads response frames and completes pending requests in order, until the stream ends or
/// fails; then fails whatever is still pending.
async fn read_responses(
    mut reader: BufReader<ReadHalf<TcpStream>>,
    shared: Rc<Shared>,
    response_bytes_max: usize,
) {
    let mut buffers = Buffers::default();
    let reason = loop {
        let read = read_frame(&mut reader, response_bytes_max, &shared.address, &mut buffers);
        let frame = match read.await {
            Ok(Some(frame)) => frame,
            Ok(None) => break "the broker closed the connection".to_string(),
            Err(error) => break error.to_string(),
        };
        let Some(received) = frame.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            break format!("response frame of {} bytes has no correlation id", frame.len());
        };
        let next = shared.pending.borrow_mut().pop_front();
        let Some(next) = next else {
            break format!("unsolicited response (correlation id {received})");
        };
        if next.correlation_id != received {
            let error = ClientError::CorrelationMismatch {
                address: shared.address.to_string(),
                expected: next.correlation_id,
                received,
            };
            let reason = error.to_string();
            next.slot.complete(Err(error));
            break reason;
        }
        shared.bytes_read.set(shared.bytes_read.get() + (SIZE_PREFIX_BYTES + frame.len()) as u64);
        next.slot.complete(Ok(frame));
        if let Some(waker) = shared.space.take() {
            waker.wake();
        }
    };
    shared.fail(reason);
}

/// Buffers for large response frames. A consumer's Fetch responses are megabytes each;
/// a fresh zeroed buffer per response cost the bench ~10% of its core in `memset` (and
/// the allocator's page faults). So each large frame handed out is remembered, whole,
/// and its buffer is read into again once every handle to it (the response, the record
/// slices decoded from it) has been dropped.
#[derive(Default)]
struct Buffers {
    frames: VecDeque<Bytes>,
}

impl Buffers {
    /// A buffer of at least `size` initialized bytes: a remembered one nobody holds any
    /// more, or a new one.
    fn take(&mut self, size: usize) -> BytesMut {
        if size >= RECYCLE_BYTES_MIN {
            let free = self.frames.iter().position(|f| f.len() >= size && f.is_unique());
            if let Some(bytes) = free.and_then(|at| self.frames.remove(at)) {
                if let Ok(buffer) = bytes.try_into_mut() {
                    return buffer;
                }
            }
            // Room for a slightly larger frame next time.
            return BytesMut::zeroed(size + size / 8);
        }
        BytesMut::zeroed(size)
    }

    /// Hands out the first `size` bytes of `buffer` as the frame, remembering the buffer
    /// if it is large.
    fn hand_out(&mut self, buffer: BytesMut, size: usize) -> Bytes {
        let whole = buffer.freeze();
        if whole.len() < RECYCLE_BYTES_MIN {
            // A small frame's buffer is exactly its size (`take`): hand it out as it is,
            // without the shared handle a slice would make.
            return whole;
        }
        if self.frames.len() == RECYCLE_FRAMES {
            self.frames.pop_front();
        }
        self.frames.push_back(whole.clone());
        whole.slice(..size)
    }
}

/// Reads one size-prefixed frame; `None` at a clean end of stream between frames.
async fn read_frame<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
    address: &str,
    buffers: &mut Buffers,
) -> Result<Option<Bytes>, ClientError> {
    let io_error = |source| ClientError::Io { address: address.to_string(), source };
    let mut prefix = [0u8; SIZE_PREFIX_BYTES];
    let first = reader.read(&mut prefix).await.map_err(io_error)?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut prefix[first..]).await.map_err(io_error)?;
    let size = i32::from_be_bytes(prefix);
    let size = usize::try_from(size).ok().filter(|&s| (4..=limit).contains(&s)).ok_or(
        ClientError::FrameSize { address: address.to_string(), size: i64::from(size), limit },
    )?;
    let mut buffer = buffers.take(size);
    reader.read_exact(&mut buffer[..size]).await.map_err(io_error)?;
    Ok(Some(buffers.hand_out(buffer, size)))
}

/// Encodes `[size][request header][body]` into `out`.
fn encode_frame<Req: Request>(
    out: &mut Vec<u8>,
    request: &Req,
    version: i16,
    correlation_id: i32,
    options: &ConnectionOptions,
) -> Result<(), ClientError> {
    let encode_error =
        |reason: String| ClientError::Encode { api: api_name(Req::KEY), version, reason };
    out.clear();
    out.extend_from_slice(&[0; SIZE_PREFIX_BYTES]);
    let mut header = RequestHeader::default();
    header.request_api_key = Req::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_string(options.client_id.clone()));
    header
        .encode(out, Req::header_version(version))
        .and_then(|()| request.encode(out, version))
        .map_err(|e| encode_error(e.to_string()))?;
    let size = i32::try_from(out.len() - SIZE_PREFIX_BYTES)
        .map_err(|_| encode_error("request over 2 GiB".to_string()))?;
    out[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

async fn with_timeout<T>(
    future: impl Future<Output = Result<T, ClientError>>,
    timeout: Duration,
    address: &str,
    api: &str,
) -> Result<T, ClientError> {
    futures_lite::future::or(future, async {
        glommio::timer::sleep(timeout).await;
        Err(ClientError::Timeout {
            address: address.to_string(),
            api: api.to_string(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        })
    })
    .await
}

fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    address
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve { address: address.to_string(), source })?
        .next()
        .ok_or_else(|| ClientError::NoAddress { address: address.to_string() })
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// The name of an API key, e.g. `Produce`.
pub fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(api) => format!("{api:?}"),
        Err(()) => format!("API {key}"),
    }
}

/// Kafka's name of an error code, e.g. `NOT_LEADER_OR_FOLLOWER` for 6.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN".to_string(),
        Some(error) => {
            // The crate names errors in CamelCase; Kafka in SCREAMING_SNAKE_CASE.
            let camel = error.to_string();
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

#[cfg(test)]
mod tests;
