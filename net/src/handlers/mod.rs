//! One file per Kafka API, and the table they are served from: `apis!` below lists each
//! API once (its key, request type, handler module, the versions we serve and, where it
//! differs, the lowest one we advertise) and generates from that one list [`SERVED`]
//! (which `parse` checks versions against and ApiVersions answers from), the dispatch in
//! [`handle`] and the decoder in [`decode_request`]. So what we advertise is exactly what
//! a handler exists for.
//!
//! The handler modules are declared here rather than by the macro, because rustfmt does
//! not expand macros and would leave the files unformatted. They are private, so one the
//! table does not name fails the build (its `handle` is dead code), as a table entry
//! without its module does.

pub mod configs;
pub mod context;

mod add_offsets_to_txn;
mod add_partitions_to_txn;
mod alter_configs;
mod alter_partition_reassignments;
mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_producers;
mod describe_quorum;
mod describe_transactions;
mod elect_leaders;
mod end_txn;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod incremental_alter_configs;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod list_partition_reassignments;
mod list_transactions;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sync_group;
mod txn_offset_commit;
mod write_txn_markers;

use bytes::Bytes;
use kafka_protocol::messages::{self as m, ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use sluice_engine::checkpoint::TopicPartition;

use crate::error::KafkaError;
use crate::protocol::{self, decode_body, encode_response, FixedHeader, ProtocolError, Request};
use crate::zerocopy::Frame;
pub use api_versions::unsupported_version;
pub use context::RequestContext;

/// An API we serve, the versions of it we serve, and the lowest version ApiVersions lists
/// (below `min` only for Produce, see [`PRODUCE_ADVERTISED_MIN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub api: ApiKey,
    pub min: i16,
    pub max: i16,
    pub advertised_min: i16,
}

/// Generates everything that lists the APIs from one table. An entry is
///
/// `Key(RequestType) => module, min..=max (advertised from V) [shape];`
///
/// where the advertised minimum and the shape are optional. `module::handle(ctx,
/// request)` serves the request, and its response is encoded as the API's response frame,
/// unless the shape says otherwise:
/// - `[records in place]`: the handler also takes the frame's body, whose record bytes it
///   takes over without a copy, and answers `None` for no response at all (acks=0);
/// - `[own frame]`: the handler's answer goes to `module::encode`, which builds the frame
///   itself (Fetch: records go to the socket with sendfile).
///
/// The dispatch is a `match` inside one `async fn`, as a hand-written one would be: a
/// request's handler future lives inline in the task the server spawns for it, with no
/// allocation of its own. Handlers that do not take the body get it dropped before they
/// run: the decoded request holds what it needs of the frame.
macro_rules! apis {
    ($(
        $api:ident($request:ident) => $module:ident, $min:literal..=$max:literal
            $((advertised from $advertised:expr))? $([$($shape:tt)+])?;
    )+) => {
        /// Every API we serve. Versions end where a newer one needs something we do not
        /// have yet (Produce v13 and Fetch v13+ address topics by id only).
        pub const SERVED: &[Served] = &[$(
            Served {
                api: ApiKey::$api,
                min: $min,
                max: $max,
                advertised_min: apis!(@advertised $min $(, $advertised)?),
            },
        )+];

        // Each entry's request type is the one of its key.
        $(const _: () = assert!(
            <m::$request as kafka_protocol::protocol::Request>::KEY == ApiKey::$api as i16
        );)+

        /// Decodes the request body, runs its handler, encodes the response frame.
        /// `Ok(None)` when the request gets no response (Produce with acks=0).
        pub async fn handle(
            ctx: &RequestContext,
            body: Bytes,
        ) -> Result<Option<Frame>, ProtocolError> {
            match ctx.api {
                $(ApiKey::$api => {
                    let request: m::$request = decode_body(ctx.api, ctx.version, &body)?;
                    apis!(@serve ctx, request, body, $module $([$($shape)+])?)
                })+
                api => Err(ProtocolError::UnknownApiKey { api_key: api as i16 }),
            }
        }

        /// Decodes a body into the request type of `api`, without running anything.
        fn decode_served(api: ApiKey, version: i16, body: &Bytes) -> Result<(), ProtocolError> {
            match api {
                $(ApiKey::$api => decode_body::<m::$request>(api, version, body).map(drop),)+
                api => Err(ProtocolError::UnknownApiKey { api_key: api as i16 }),
            }
        }
    };
    (@advertised $min:literal) => { $min };
    (@advertised $min:literal, $advertised:expr) => { $advertised };
    (@serve $ctx:ident, $request:ident, $body:ident, $module:ident) => {{
        drop($body);
        let response = $module::handle($ctx, $request).await;
        encode_response($ctx.api, $ctx.version, $ctx.correlation_id, &response)
            .map(|b| Some(b.into()))
    }};
    (@serve $ctx:ident, $request:ident, $body:ident, $module:ident [records in place]) => {{
        match $module::handle($ctx, $request, $body).await {
            Some(response) => encode_response($ctx.api, $ctx.version, $ctx.correlation_id, &response)
                .map(|b| Some(b.into())),
            None => Ok(None),
        }
    }};
    (@serve $ctx:ident, $request:ident, $body:ident, $module:ident [own frame]) => {{
        drop($body);
        let answer = $module::handle($ctx, $request).await;
        Ok(Some($module::encode($ctx.version, $ctx.correlation_id, answer)))
    }};
}

apis! {
    Produce(ProduceRequest) => produce, 3..=12
        (advertised from PRODUCE_ADVERTISED_MIN) [records in place];
    Fetch(FetchRequest) => fetch, 4..=12 [own frame];
    ListOffsets(ListOffsetsRequest) => list_offsets, 1..=10;
    Metadata(MetadataRequest) => metadata, 0..=12;
    ApiVersions(ApiVersionsRequest) => api_versions, 0..=4;
    CreateTopics(CreateTopicsRequest) => create_topics, 2..=7;
    DeleteTopics(DeleteTopicsRequest) => delete_topics, 1..=6;
    DeleteRecords(DeleteRecordsRequest) => delete_records, 0..=2;
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest) => offset_for_leader_epoch, 2..=4;
    DescribeConfigs(DescribeConfigsRequest) => describe_configs, 1..=4;
    AlterConfigs(AlterConfigsRequest) => alter_configs, 0..=2;
    CreatePartitions(CreatePartitionsRequest) => create_partitions, 0..=3;
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest) => incremental_alter_configs, 0..=1;
    DescribeCluster(DescribeClusterRequest) => describe_cluster, 0..=2;
    ElectLeaders(ElectLeadersRequest) => elect_leaders, 0..=2;
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest) => alter_partition_reassignments, 0..=0;
    ListPartitionReassignments(ListPartitionReassignmentsRequest) => list_partition_reassignments, 0..=0;
    DescribeQuorum(DescribeQuorumRequest) => describe_quorum, 0..=1;
    FindCoordinator(FindCoordinatorRequest) => find_coordinator, 0..=5;
    JoinGroup(JoinGroupRequest) => join_group, 0..=9;
    SyncGroup(SyncGroupRequest) => sync_group, 0..=5;
    Heartbeat(HeartbeatRequest) => heartbeat, 0..=4;
    LeaveGroup(LeaveGroupRequest) => leave_group, 0..=5;
    OffsetCommit(OffsetCommitRequest) => offset_commit, 2..=9;
    OffsetFetch(OffsetFetchRequest) => offset_fetch, 1..=9;
    OffsetDelete(OffsetDeleteRequest) => offset_delete, 0..=0;
    ListGroups(ListGroupsRequest) => list_groups, 0..=5;
    DescribeGroups(DescribeGroupsRequest) => describe_groups, 0..=6;
    DeleteGroups(DeleteGroupsRequest) => delete_groups, 0..=2;
    InitProducerId(InitProducerIdRequest) => init_producer_id, 0..=5;
    AddPartitionsToTxn(AddPartitionsToTxnRequest) => add_partitions_to_txn, 0..=3;
    AddOffsetsToTxn(AddOffsetsToTxnRequest) => add_offsets_to_txn, 0..=4;
    EndTxn(EndTxnRequest) => end_txn, 0..=4;
    TxnOffsetCommit(TxnOffsetCommitRequest) => txn_offset_commit, 0..=4;
    DescribeProducers(DescribeProducersRequest) => describe_producers, 0..=0;
    DescribeTransactions(DescribeTransactionsRequest) => describe_transactions, 0..=0;
    ListTransactions(ListTransactionsRequest) => list_transactions, 0..=0;
    WriteTxnMarkers(WriteTxnMarkersRequest) => write_txn_markers, 0..=1;
}

/// The lowest Produce version ApiVersions advertises, below the v3 we serve: Kafka 4.0
/// does the same (KAFKA-18659). librdkafka before its fix of librdkafka#4956 (Debian's 2.0.2,
/// under kcat, is one) compresses with gzip, snappy or lz4 only for a broker that lists
/// Produce v0, and sends those batches uncompressed otherwise. Clients use the highest
/// version both sides speak, so none sends v0-2; one that does is refused as any version we
/// do not serve (the connection closes).
pub const PRODUCE_ADVERTISED_MIN: i16 = 0;

/// The (min, max) versions ApiVersions lists for `served`.
pub fn advertised(served: Served) -> (i16, i16) {
    (served.advertised_min, served.max)
}

pub fn served(api: ApiKey) -> Option<Served> {
    SERVED.iter().copied().find(|s| s.api == api)
}

/// A partitioned request flattened for `Shard::scatter`: the parts to run, and the
/// request's topics and partitions in order, so the response is rebuilt in request order.
/// A negative partition index, which no shard can own, gets no part.
pub(crate) struct Layout<P> {
    parts: Vec<P>,
    topics: Vec<(String, Vec<PartitionSlot>)>,
}

/// A partition of a request: its index and the position of its part, if it has one.
type PartitionSlot = (i32, Option<usize>);

impl<P> Layout<P> {
    pub(crate) fn new() -> Self {
        Self { parts: Vec::new(), topics: Vec::new() }
    }

    /// Starts the next topic of the request.
    pub(crate) fn topic(&mut self, name: &str) {
        self.topics.push((name.to_string(), Vec::new()));
    }

    /// Adds a partition of the current topic; `make` builds its part.
    pub(crate) fn partition(&mut self, index: i32, make: impl FnOnce(TopicPartition) -> P) {
        let (name, partitions) = self.topics.last_mut().expect("topic() before partition()");
        if index < 0 {
            partitions.push((index, None));
            return;
        }
        partitions.push((index, Some(self.parts.len())));
        self.parts.push(make(TopicPartition::new(name.clone(), index)));
    }

    /// The parts, in request order, for `Shard::scatter`.
    pub(crate) fn take_parts(&mut self) -> Vec<P> {
        std::mem::take(&mut self.parts)
    }

    /// Pairs the scattered results (one per part, in order) back with the request's
    /// topics and partitions; a partition without a part gets `negative()`.
    pub(crate) fn answers<R>(
        self,
        results: Vec<R>,
        negative: impl Fn() -> R,
    ) -> Vec<(String, Vec<(i32, R)>)> {
        let mut results: Vec<Option<R>> = results.into_iter().map(Some).collect();
        self.topics
            .into_iter()
            .map(|(name, partitions)| {
                let answers = partitions
                    .into_iter()
                    .map(|(index, at)| {
                        let result = at.and_then(|at| results.get_mut(at).and_then(Option::take));
                        (index, result.unwrap_or_else(&negative))
                    })
                    .collect();
                (name, answers)
            })
            .collect()
    }
}

/// The keys that appear more than once (Kafka refuses every entry of a resource or topic
/// named twice in one request).
pub(crate) fn named_twice<K: Eq + std::hash::Hash + Clone>(
    keys: impl IntoIterator<Item = K>,
) -> std::collections::HashSet<K> {
    let mut seen = std::collections::HashSet::new();
    keys.into_iter().filter(|key| !seen.insert(key.clone())).collect()
}

/// The error for a partition index no shard owns.
pub(crate) fn negative_partition() -> KafkaError {
    KafkaError::new(crate::error::code::UNKNOWN_TOPIC_OR_PARTITION, "negative partition index")
}

/// A request frame checked against what we serve.
#[derive(Debug)]
pub enum Parsed {
    Request(Request),
    /// ApiVersions at a version we do not serve: answered in v0 with UNSUPPORTED_VERSION.
    ApiVersionsFallback {
        correlation_id: i32,
    },
}

/// Checks a request frame (the bytes after the size prefix): a known API we serve, at a
/// version we serve, with a header that decodes. Sans-I/O.
pub fn parse(frame: Bytes) -> Result<Parsed, ProtocolError> {
    let fixed = FixedHeader::peek(&frame)
        .ok_or(ProtocolError::FrameTooShort { size: frame.len() as i64 })?;
    let api = ApiKey::try_from(fixed.api_key)
        .map_err(|_| ProtocolError::UnknownApiKey { api_key: fixed.api_key })?;
    let served = served(api).ok_or(ProtocolError::UnknownApiKey { api_key: fixed.api_key })?;
    if fixed.api_version < served.min || fixed.api_version > served.max {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::ApiVersionsFallback { correlation_id: fixed.correlation_id });
        }
        return Err(ProtocolError::UnsupportedVersion {
            api,
            version: fixed.api_version,
            min: served.min,
            max: served.max,
        });
    }
    protocol::decode_header(api, fixed.api_version, frame).map(Parsed::Request)
}

/// Parses a frame and decodes its body into the request type of its API, without running
/// it: the whole untrusted-input surface of the server, for the fuzz target and tests.
pub fn decode_request(frame: Bytes) -> Result<ApiKey, ProtocolError> {
    let request = match parse(frame)? {
        Parsed::Request(request) => request,
        Parsed::ApiVersionsFallback { .. } => return Ok(ApiKey::ApiVersions),
    };
    decode_served(request.api, request.header.request_api_version, &request.body)
        .map(|()| request.api)
}

/// A broker as Metadata, DescribeCluster and FindCoordinator describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerView {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub fenced: bool,
}

/// The registered brokers with their client listener, from the cluster metadata; this
/// broker as configured when the metadata has no registration of it yet (or in tests
/// that build a bare image).
pub(crate) fn cluster_brokers(shard: &crate::shard::Shard) -> Vec<BrokerView> {
    let config = &shard.config;
    let image = shard.metadata();
    let mut brokers: Vec<BrokerView> = image
        .brokers()
        .filter_map(|b| {
            let endpoint = b.client_endpoint()?;
            Some(BrokerView {
                id: b.id,
                host: endpoint.host.clone(),
                port: i32::from(endpoint.port),
                rack: b.rack.clone(),
                fenced: b.fenced,
            })
        })
        .collect();
    if !brokers.iter().any(|b| b.id == config.node_id) {
        brokers.push(BrokerView {
            id: config.node_id,
            host: config.advertised_host.clone(),
            port: config.advertised_port,
            rack: None,
            fenced: false,
        });
        brokers.sort_by_key(|b| b.id);
    }
    brokers
}

pub(crate) fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

pub(crate) fn topic_name(text: &str) -> TopicName {
    TopicName(str_bytes(text))
}

pub(crate) fn uuid(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_served_api_has_a_decoder_and_a_handler() {
        use kafka_protocol::protocol::Encodable;
        // An empty ApiVersions body at each version decodes; every served API key is
        // known to decode_request (an unknown one would come back as UnknownApiKey).
        for served in SERVED {
            let mut frame = Vec::new();
            frame.extend_from_slice(&(served.api as i16).to_be_bytes());
            frame.extend_from_slice(&served.max.to_be_bytes());
            frame.extend_from_slice(&7i32.to_be_bytes());
            let result = decode_request(Bytes::from(frame));
            assert!(
                !matches!(result, Err(ProtocolError::UnknownApiKey { .. })),
                "{:?}",
                served.api
            );
        }
        let mut body = bytes::BytesMut::new();
        kafka_protocol::messages::ApiVersionsRequest::default().encode(&mut body, 0).unwrap();
        let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 9, 0xff, 0xff];
        frame.extend_from_slice(&body);
        assert_eq!(decode_request(Bytes::from(frame)).unwrap(), ApiKey::ApiVersions);
    }

    /// The table is the only list of APIs: every key it names, and no other, decodes (the
    /// decoder and the dispatch in `handle` are generated from the same entries); no key is
    /// listed twice; and `parse` takes exactly the versions listed, refusing the others.
    #[test]
    fn only_the_tables_apis_are_dispatched_at_its_versions() {
        let listed: std::collections::HashSet<ApiKey> = SERVED.iter().map(|s| s.api).collect();
        assert_eq!(listed.len(), SERVED.len(), "an API listed twice");
        let mut known = 0;
        for key in i16::MIN..=i16::MAX {
            let Ok(api) = ApiKey::try_from(key) else { continue };
            known += 1;
            let decoded = decode_served(api, 0, &Bytes::new());
            let unknown = matches!(decoded, Err(ProtocolError::UnknownApiKey { .. }));
            assert_eq!(unknown, !listed.contains(&api), "{api:?}: {decoded:?}");
        }
        assert!(known > SERVED.len(), "the crate knows more APIs than we serve");
        for served in SERVED {
            assert!(served.min <= served.max && served.advertised_min <= served.min);
            for version in served.min - 3..=served.max + 3 {
                let mut frame = Vec::new();
                frame.extend_from_slice(&(served.api as i16).to_be_bytes());
                frame.extend_from_slice(&version.to_be_bytes());
                frame.extend_from_slice(&1i32.to_be_bytes());
                let parsed = parse(Bytes::from(frame));
                let refused = matches!(
                    parsed,
                    Err(ProtocolError::UnsupportedVersion { .. })
                        | Ok(Parsed::ApiVersionsFallback { .. })
                );
                let in_range = (served.min..=served.max).contains(&version);
                assert_eq!(refused, !in_range, "{:?} v{version}: {parsed:?}", served.api);
            }
        }
    }

    #[test]
    fn layout_puts_results_back_in_request_order() {
        let mut layout = Layout::new();
        layout.topic("a");
        layout.partition(1, |tp| tp);
        layout.partition(-1, |tp| tp);
        layout.topic("b");
        layout.partition(0, |tp| tp);
        let parts = layout.take_parts();
        assert_eq!(parts, vec![TopicPartition::new("a", 1), TopicPartition::new("b", 0)]);
        let answers = layout.answers(vec!["a1", "b0"], || "negative");
        assert_eq!(
            answers,
            vec![
                ("a".to_string(), vec![(1, "a1"), (-1, "negative")]),
                ("b".to_string(), vec![(0, "b0")]),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// The server's decoding never panics (nor aborts on a huge length) on any bytes
        /// behind a served API key and version.
        #[test]
        fn decoding_arbitrary_bodies_never_panics(
            api in prop::sample::select(SERVED.to_vec()),
            version_offset in 0i16..20,
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let version = api.min + version_offset % (api.max - api.min + 1);
            let mut frame = Vec::new();
            frame.extend_from_slice(&(api.api as i16).to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&1i32.to_be_bytes());
            frame.extend_from_slice(&body);
            let _ = decode_request(Bytes::from(frame));
        }
    }
}
