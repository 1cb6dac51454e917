//! Admin APIs against the real broker through the raw protocol client: topic configs
//! (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs), CreatePartitions,
//! DeleteRecords, DescribeCluster and OffsetForLeaderEpoch, each in every version we
//! advertise, asserting on what the answers say and on what the broker then does.

use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_request as incremental;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, ApiVersionsRequest, BrokerId,
    CreatePartitionsRequest, CreatePartitionsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    DescribeClusterRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ListOffsetsRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

use std::io::Write;

use crate::harness::{Broker, Raw};

// ---- Kafka's numbers, as a client sees them ----

const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The topic configs the broker knows, as it lists them.
/// Every topic config Kafka 3.x and 4.x know, as the broker lists them.
const TOPIC_CONFIG_NAMES: &[&str] = &[
    "cleanup.policy",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "follower.replication.throttled.replicas",
    "index.interval.bytes",
    "leader.replication.throttled.replicas",
    "local.retention.bytes",
    "local.retention.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.downconversion.enable",
    "message.format.version",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.difference.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "remote.log.copy.disable",
    "remote.log.delete.on.disable",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
];

// ---- helpers ----

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn name_of(topic: &str) -> TopicName {
    TopicName(text(topic))
}

fn describe_request(
    resource_type: i8,
    resource_name: &str,
    keys: Option<&[&str]>,
    include_synonyms: bool,
) -> DescribeConfigsRequest {
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = resource_type;
    resource.resource_name = text(resource_name);
    resource.configuration_keys = keys.map(|keys| keys.iter().map(|k| text(k)).collect());
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource];
    request.include_synonyms = include_synonyms;
    request
}

/// DescribeConfigs of one resource (latest version), its one result.
fn describe(raw: &mut Raw, resource_type: i8, resource_name: &str) -> DescribeConfigsResult {
    let mut response = raw.send(&describe_request(resource_type, resource_name, None, false), 4);
    assert_eq!(response.results.len(), 1);
    response.results.remove(0)
}

fn entry<'a>(result: &'a DescribeConfigsResult, name: &str) -> &'a DescribeConfigsResourceResult {
    result
        .configs
        .iter()
        .find(|c| c.name.as_str() == name)
        .unwrap_or_else(|| panic!("{name} missing from {:?}", result.configs))
}

/// (value, source) of one topic config, by DescribeConfigs.
fn topic_config(raw: &mut Raw, topic: &str, name: &str) -> (String, i8) {
    let result = describe(raw, RESOURCE_TOPIC, topic);
    assert_eq!(result.error_code, NONE, "{:?}", result.error_message);
    let found = entry(&result, name);
    (found.value.as_ref().map(|v| v.to_string()).unwrap_or_default(), found.config_source)
}

fn alter_request(
    topic: &str,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> AlterConfigsRequest {
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = RESOURCE_TOPIC;
    resource.resource_name = text(topic);
    resource.configs = configs
        .iter()
        .map(|(name, value)| {
            let mut config = AlterableConfig::default();
            config.name = text(name);
            config.value = Some(text(value));
            config
        })
        .collect();
    let mut request = AlterConfigsRequest::default();
    request.resources = vec![resource];
    request.validate_only = validate_only;
    request
}

fn alter(
    raw: &mut Raw,
    topic: &str,
    configs: &[(&str, &str)],
    version: i16,
) -> AlterConfigsResponse {
    raw.send(&alter_request(topic, configs, false), version)
}

fn incremental_request(
    resource_type: i8,
    resource_name: &str,
    ops: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> IncrementalAlterConfigsRequest {
    let mut resource = incremental::AlterConfigsResource::default();
    resource.resource_type = resource_type;
    resource.resource_name = text(resource_name);
    resource.configs = ops
        .iter()
        .map(|(name, op, value)| {
            let mut config = incremental::AlterableConfig::default();
            config.name = text(name);
            config.config_operation = *op;
            config.value = value.map(text);
            config
        })
        .collect();
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    request.validate_only = validate_only;
    request
}

fn incremental_alter(
    raw: &mut Raw,
    topic: &str,
    ops: &[(&str, i8, Option<&str>)],
    version: i16,
) -> IncrementalAlterConfigsResponse {
    raw.send(&incremental_request(RESOURCE_TOPIC, topic, ops, false), version)
}

fn create_partitions(
    raw: &mut Raw,
    topic: &str,
    count: i32,
    validate_only: bool,
    version: i16,
) -> CreatePartitionsResponse {
    let mut wanted = CreatePartitionsTopic::default();
    wanted.name = name_of(topic);
    wanted.count = count;
    wanted.assignments = None;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![wanted];
    request.timeout_ms = 30_000;
    request.validate_only = validate_only;
    raw.send(&request, version)
}

fn partition_count(raw: &mut Raw, topic: &str) -> usize {
    let mut wanted = MetadataRequestTopic::default();
    wanted.name = Some(name_of(topic));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![wanted]);
    request.allow_auto_topic_creation = false;
    let response = raw.send(&request, 12);
    assert_eq!(response.topics[0].error_code, NONE);
    response.topics[0].partitions.len()
}

fn batch(count: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("v{i}").into_bytes()),
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect();
    encode_batch(&records, EncodeOptions::default())
}

/// Produces `batches` batches of `per_batch` records; returns the base offsets.
fn produce_ok(
    raw: &mut Raw,
    topic: &str,
    partition: i32,
    batches: usize,
    per_batch: usize,
) -> Vec<i64> {
    (0..batches)
        .map(|_| {
            let response = raw.produce(topic, partition, batch(per_batch));
            let answer = &response.responses[0].partition_responses[0];
            assert_eq!(answer.error_code, NONE, "{:?}", answer.error_message);
            answer.base_offset
        })
        .collect()
}

/// ListOffsets for one partition: Ok(offset) or Err(error code).
fn list_offset(raw: &mut Raw, topic: &str, partition: i32, timestamp: i64) -> Result<i64, i16> {
    let mut wanted = ListOffsetsPartition::default();
    wanted.partition_index = partition;
    wanted.timestamp = timestamp;
    wanted.current_leader_epoch = -1;
    let mut topic_request = ListOffsetsTopic::default();
    topic_request.name = name_of(topic);
    topic_request.partitions = vec![wanted];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![topic_request];
    let response = raw.send(&request, 7);
    let answer = &response.topics[0].partitions[0];
    if answer.error_code == NONE {
        Ok(answer.offset)
    } else {
        Err(answer.error_code)
    }
}

fn earliest(raw: &mut Raw, topic: &str, partition: i32) -> i64 {
    list_offset(raw, topic, partition, -2).unwrap()
}

/// Fetch of one partition at `offset`: (error code, record bytes, log start offset).
fn fetch(raw: &mut Raw, topic: &str, partition: i32, offset: i64) -> (i16, usize, i64) {
    let response = raw.send(&crate::kafka::fetch_request(topic, &[(partition, offset)], 0), 12);
    let answer = &response.responses[0].partitions[0];
    (answer.error_code, answer.records.as_ref().map_or(0, |r| r.len()), answer.log_start_offset)
}

fn delete_records(
    raw: &mut Raw,
    topic: &str,
    offsets: &[(i32, i64)],
    version: i16,
) -> DeleteRecordsResponse {
    let mut wanted = DeleteRecordsTopic::default();
    wanted.name = name_of(topic);
    wanted.partitions = offsets
        .iter()
        .map(|(partition, offset)| {
            let mut p = DeleteRecordsPartition::default();
            p.partition_index = *partition;
            p.offset = *offset;
            p
        })
        .collect();
    let mut request = DeleteRecordsRequest::default();
    request.topics = vec![wanted];
    request.timeout_ms = 30_000;
    raw.send(&request, version)
}

/// (error code, low watermark) per partition of a one-topic DeleteRecords answer.
fn low_watermarks(response: &DeleteRecordsResponse) -> Vec<(i32, i16, i64)> {
    assert_eq!(response.topics.len(), 1);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code, p.low_watermark))
        .collect()
}

fn epoch_end_offsets(
    raw: &mut Raw,
    topic: &str,
    partitions: &[(i32, i32, i32)],
    version: i16,
) -> Vec<EpochEndOffset> {
    let mut wanted = OffsetForLeaderTopic::default();
    wanted.topic = name_of(topic);
    wanted.partitions = partitions
        .iter()
        .map(|(partition, current_leader_epoch, leader_epoch)| {
            let mut p = OffsetForLeaderPartition::default();
            p.partition = *partition;
            p.current_leader_epoch = *current_leader_epoch;
            p.leader_epoch = *leader_epoch;
            p
        })
        .collect();
    let mut request = OffsetForLeaderEpochRequest::default();
    // A consumer's request; the broker ignores it (v3+ carries it on the wire).
    request.replica_id = BrokerId(-1);
    request.topics = vec![wanted];
    let mut response = raw.send(&request, version);
    assert_eq!(response.topics.len(), 1);
    assert_eq!(response.topics[0].topic.0.as_str(), topic);
    std::mem::take(&mut response.topics[0].partitions)
}

// ---- tests ----

/// ApiVersions advertises each admin API with exactly the versions the tests below drive.
#[test]
fn api_versions_advertises_the_admin_apis() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    let response = raw.send(&ApiVersionsRequest::default(), 3);
    assert_eq!(response.error_code, NONE);
    for (api, min, max) in [
        (ApiKey::CreatePartitions, 0, 3),
        (ApiKey::DescribeConfigs, 1, 4),
        (ApiKey::AlterConfigs, 0, 2),
        (ApiKey::IncrementalAlterConfigs, 0, 1),
        (ApiKey::DeleteRecords, 0, 2),
        (ApiKey::DescribeCluster, 0, 2),
        (ApiKey::OffsetForLeaderEpoch, 2, 4),
    ] {
        let served = response
            .api_keys
            .iter()
            .find(|k| k.api_key == api as i16)
            .unwrap_or_else(|| panic!("{api:?} not advertised"));
        assert_eq!((served.min_version, served.max_version), (min, max), "{api:?}");
    }
}

/// A topic created with two overrides: DescribeConfigs v1..=4 lists every topic config,
/// the overrides as DYNAMIC_TOPIC_CONFIG and the rest as DEFAULT_CONFIG with the broker's
/// value, with synonyms when asked, types from v3, and the key filter honoured.
#[test]
fn describe_configs_shows_overrides_and_defaults_in_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("described", 1, &[("retention.ms", "1234"), ("cleanup.policy", "compact")]);

    for version in 1..=4 {
        let response =
            raw.send(&describe_request(RESOURCE_TOPIC, "described", None, true), version);
        assert_eq!(response.results.len(), 1);
        let result = &response.results[0];
        assert_eq!(result.error_code, NONE, "v{version}: {:?}", result.error_message);
        assert_eq!(result.resource_type, RESOURCE_TOPIC);
        assert_eq!(result.resource_name.as_str(), "described");
        let names: Vec<&str> = result.configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, TOPIC_CONFIG_NAMES, "v{version}");

        let retention = entry(result, "retention.ms");
        assert_eq!(retention.value.as_deref(), Some("1234"));
        assert_eq!(retention.config_source, SOURCE_DYNAMIC_TOPIC);
        assert!(!retention.read_only);
        assert!(!retention.is_sensitive);
        let synonyms: Vec<(String, Option<String>, i8)> = retention
            .synonyms
            .iter()
            .map(|s| (s.name.to_string(), s.value.as_ref().map(|v| v.to_string()), s.source))
            .collect();
        assert_eq!(
            synonyms,
            vec![
                ("retention.ms".to_string(), Some("1234".to_string()), SOURCE_DYNAMIC_TOPIC),
                (
                    "log.retention.ms".to_string(),
                    Some("604800000".to_string()),
                    SOURCE_STATIC_BROKER
                ),
            ],
            "v{version}"
        );
        let policy = entry(result, "cleanup.policy");
        assert_eq!(policy.value.as_deref(), Some("compact"));
        assert_eq!(policy.config_source, SOURCE_DYNAMIC_TOPIC);

        let segment = entry(result, "segment.bytes");
        assert_eq!(segment.value.as_deref(), Some("1073741824"));
        assert_eq!(segment.config_source, SOURCE_DEFAULT);
        let timestamps = entry(result, "message.timestamp.type");
        assert_eq!(timestamps.value.as_deref(), Some("CreateTime"));
        assert_eq!(timestamps.config_source, SOURCE_DEFAULT);

        if version >= 3 {
            assert_eq!(retention.config_type, TYPE_LONG);
            assert_eq!(policy.config_type, TYPE_LIST);
            assert_eq!(segment.config_type, TYPE_INT);
            assert_eq!(timestamps.config_type, TYPE_STRING);
            assert_eq!(retention.documentation, None);
        } else {
            // Not on the wire before v3: the decoder leaves the default.
            assert_eq!(retention.config_type, 0);
        }

        // The key filter: known keys in the broker's order, unknown keys left out.
        let keys: &[&str] = &["segment.ms", "no.such.config", "retention.ms"];
        let filtered =
            raw.send(&describe_request(RESOURCE_TOPIC, "described", Some(keys), false), version);
        let names: Vec<&str> =
            filtered.results[0].configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["retention.ms", "segment.ms"], "v{version}");
        assert!(filtered.results[0].configs.iter().all(|c| c.synonyms.is_empty()));
    }

    let unknown = describe(&mut raw, RESOURCE_TOPIC, "no-such-topic");
    assert_eq!(unknown.error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert!(unknown.configs.is_empty());
    let group = describe(&mut raw, 3, "some-group");
    assert_eq!(group.error_code, INVALID_REQUEST);
}

/// The broker resource, by node id or by the empty name, lists every broker property as a
/// static broker config; another node id is refused.
#[test]
fn describe_configs_lists_broker_properties() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--set", "log.retention.ms=86400000"]);
    let mut raw = Raw::connect(&broker.address());
    for resource_name in ["0", ""] {
        for version in 1..=4 {
            let response =
                raw.send(&describe_request(RESOURCE_BROKER, resource_name, None, true), version);
            let result = &response.results[0];
            assert_eq!(
                result.error_code, NONE,
                "{resource_name:?} v{version}: {:?}",
                result.error_message
            );
            assert!(result.configs.len() >= 20, "{:?}", result.configs);
            assert!(result.configs.iter().all(|c| c.config_source == SOURCE_STATIC_BROKER));
            let retention = entry(result, "log.retention.ms");
            assert_eq!(retention.value.as_deref(), Some("86400000"));
            assert_eq!(retention.synonyms.len(), 1);
            let node = entry(result, "node.id");
            assert_eq!(node.value.as_deref(), Some("0"));
            if version >= 3 {
                assert_eq!(retention.config_type, TYPE_LONG);
                assert_eq!(node.config_type, TYPE_INT);
            }
        }
    }
    // The broker default reaches topics without an override.
    raw.create_topic("inherits", 1, &[]);
    assert_eq!(
        topic_config(&mut raw, "inherits", "retention.ms"),
        ("86400000".into(), SOURCE_DEFAULT)
    );

    let other = describe(&mut raw, RESOURCE_BROKER, "7");
    assert_eq!(other.error_code, INVALID_REQUEST);
    assert!(other.configs.is_empty());
}

/// AlterConfigs v0..=2 replaces a topic's whole override set (a config left out goes back
/// to the default); validate_only checks without changing; a bad value is INVALID_CONFIG;
/// broker resources and unknown topics are refused.
#[test]
fn alter_configs_replaces_overrides_and_validate_only_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("altered", 2, &[("cleanup.policy", "compact")]);

    for version in 0..=2 {
        let retention = format!("{}", 60_000 * (i64::from(version) + 1));
        let response = alter(&mut raw, "altered", &[("retention.ms", &retention)], version);
        assert_eq!(response.responses.len(), 1);
        let answer = &response.responses[0];
        assert_eq!(answer.error_code, NONE, "v{version}: {:?}", answer.error_message);
        assert_eq!(answer.resource_type, RESOURCE_TOPIC);
        assert_eq!(answer.resource_name.as_str(), "altered");
        assert_eq!(
            topic_config(&mut raw, "altered", "retention.ms"),
            (retention.clone(), SOURCE_DYNAMIC_TOPIC)
        );
        // The override set was replaced: cleanup.policy is back to the broker default.
        assert_eq!(
            topic_config(&mut raw, "altered", "cleanup.policy"),
            ("delete".into(), SOURCE_DEFAULT)
        );

        let checked = raw.send(&alter_request("altered", &[("segment.ms", "1000")], true), version);
        assert_eq!(checked.responses[0].error_code, NONE);
        assert_eq!(
            topic_config(&mut raw, "altered", "retention.ms"),
            (retention.clone(), SOURCE_DYNAMIC_TOPIC)
        );
        assert_eq!(topic_config(&mut raw, "altered", "segment.ms").1, SOURCE_DEFAULT);

        let bad = alter(&mut raw, "altered", &[("retention.ms", "soon")], version);
        assert_eq!(bad.responses[0].error_code, INVALID_CONFIG);
        let message = bad.responses[0].error_message.as_ref().unwrap().to_string();
        assert!(message.contains("retention.ms"), "{message}");
        let unknown_name = alter(&mut raw, "altered", &[("no.such.config", "1")], version);
        assert_eq!(unknown_name.responses[0].error_code, INVALID_CONFIG);
        // A refused change leaves the old set in place.
        assert_eq!(
            topic_config(&mut raw, "altered", "retention.ms"),
            (retention, SOURCE_DYNAMIC_TOPIC)
        );
    }

    let unknown = alter(&mut raw, "no-such-topic", &[("retention.ms", "1000")], 2);
    assert_eq!(unknown.responses[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let mut to_broker = alter_request("0", &[("log.retention.ms", "1000")], false);
    to_broker.resources[0].resource_type = RESOURCE_BROKER;
    let refused = raw.send(&to_broker, 2);
    assert_eq!(refused.responses[0].error_code, INVALID_REQUEST);
    let message = refused.responses[0].error_message.as_ref().unwrap().to_string();
    assert!(message.contains("static"), "{message}");
    let repeated =
        alter(&mut raw, "altered", &[("retention.ms", "1000"), ("retention.ms", "2000")], 2);
    assert_eq!(repeated.responses[0].error_code, INVALID_REQUEST);
}

/// IncrementalAlterConfigs v0..=1: SET, APPEND and SUBTRACT on the list config
/// cleanup.policy, DELETE back to the default; APPEND on a number is refused, a bad value
/// is INVALID_CONFIG, validate_only changes nothing. The partitions follow the change (a
/// small max.message.bytes refuses a large batch; LogAppendTime stamps produce answers),
/// and the overrides survive a restart.
#[test]
fn incremental_alter_configs_apply_to_partitions_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("incremental", 2, &[]);

    for version in 0..=1 {
        let retention = format!("{}", 1_000 + i64::from(version));
        let ops = [
            ("retention.ms", OP_SET, Some(retention.as_str())),
            ("cleanup.policy", OP_APPEND, Some("compact")),
        ];
        let response = incremental_alter(&mut raw, "incremental", &ops, version);
        assert_eq!(response.responses.len(), 1);
        let answer = &response.responses[0];
        assert_eq!(answer.error_code, NONE, "v{version}: {:?}", answer.error_message);
        assert_eq!(answer.resource_name.as_str(), "incremental");
        assert_eq!(
            topic_config(&mut raw, "incremental", "retention.ms"),
            (retention.clone(), SOURCE_DYNAMIC_TOPIC)
        );
        assert_eq!(topic_config(&mut raw, "incremental", "cleanup.policy").0, "delete,compact");

        let subtract = [("cleanup.policy", OP_SUBTRACT, Some("delete"))];
        let response = incremental_alter(&mut raw, "incremental", &subtract, version);
        assert_eq!(response.responses[0].error_code, NONE);
        assert_eq!(topic_config(&mut raw, "incremental", "cleanup.policy").0, "compact");
        // Only the named key changed: retention.ms kept its override.
        assert_eq!(topic_config(&mut raw, "incremental", "retention.ms").0, retention);

        let checked = raw.send(
            &incremental_request(
                RESOURCE_TOPIC,
                "incremental",
                &[("retention.ms", OP_DELETE, None)],
                true,
            ),
            version,
        );
        assert_eq!(checked.responses[0].error_code, NONE);
        assert_eq!(topic_config(&mut raw, "incremental", "retention.ms").1, SOURCE_DYNAMIC_TOPIC);

        let delete = [("retention.ms", OP_DELETE, None), ("cleanup.policy", OP_DELETE, None)];
        let response = incremental_alter(&mut raw, "incremental", &delete, version);
        assert_eq!(response.responses[0].error_code, NONE);
        assert_eq!(
            topic_config(&mut raw, "incremental", "retention.ms"),
            ("604800000".into(), SOURCE_DEFAULT)
        );
        assert_eq!(
            topic_config(&mut raw, "incremental", "cleanup.policy"),
            ("delete".into(), SOURCE_DEFAULT)
        );

        let append_number = [("retention.ms", OP_APPEND, Some("5"))];
        let refused = incremental_alter(&mut raw, "incremental", &append_number, version);
        assert_eq!(refused.responses[0].error_code, INVALID_REQUEST);
        let bad = incremental_alter(
            &mut raw,
            "incremental",
            &[("segment.bytes", OP_SET, Some("1"))],
            version,
        );
        assert_eq!(bad.responses[0].error_code, INVALID_CONFIG);
        let message = bad.responses[0].error_message.as_ref().unwrap().to_string();
        assert!(message.contains("segment.bytes"), "{message}");
        let empty_policy = incremental_alter(
            &mut raw,
            "incremental",
            &[("cleanup.policy", OP_SUBTRACT, Some("delete"))],
            version,
        );
        assert_eq!(empty_policy.responses[0].error_code, INVALID_CONFIG);
        let null_set =
            incremental_alter(&mut raw, "incremental", &[("retention.ms", OP_SET, None)], version);
        assert_eq!(null_set.responses[0].error_code, INVALID_REQUEST);
        let to_broker = raw.send(
            &incremental_request(
                RESOURCE_BROKER,
                "0",
                &[("log.retention.ms", OP_SET, Some("1"))],
                false,
            ),
            version,
        );
        assert_eq!(to_broker.responses[0].error_code, INVALID_REQUEST);
        let unknown = incremental_alter(
            &mut raw,
            "no-such-topic",
            &[("retention.ms", OP_SET, Some("1"))],
            version,
        );
        assert_eq!(unknown.responses[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    }

    // The partitions (on both shards) take the new settings at once.
    for partition in 0..2 {
        let stamped = raw.produce("incremental", partition, batch(1));
        assert_eq!(stamped.responses[0].partition_responses[0].log_append_time_ms, -1);
    }
    let ops = [
        ("max.message.bytes", OP_SET, Some("100")),
        ("message.timestamp.type", OP_SET, Some("LogAppendTime")),
    ];
    assert_eq!(incremental_alter(&mut raw, "incremental", &ops, 1).responses[0].error_code, NONE);
    for partition in 0..2 {
        let large = raw.produce("incremental", partition, batch(20));
        assert_eq!(large.responses[0].partition_responses[0].error_code, MESSAGE_TOO_LARGE);
        let small = raw.produce("incremental", partition, batch(1));
        let answer = &small.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, NONE, "{:?}", answer.error_message);
        assert!(answer.log_append_time_ms > 0, "LogAppendTime: {}", answer.log_append_time_ms);
    }

    drop(raw);
    let status = broker.stop();
    assert!(status.success(), "exit {status:?}\n{}", broker.log());
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(
        topic_config(&mut raw, "incremental", "max.message.bytes"),
        ("100".into(), SOURCE_DYNAMIC_TOPIC)
    );
    assert_eq!(
        topic_config(&mut raw, "incremental", "message.timestamp.type"),
        ("LogAppendTime".into(), SOURCE_DYNAMIC_TOPIC)
    );
    assert_eq!(topic_config(&mut raw, "incremental", "retention.ms").1, SOURCE_DEFAULT);
    for partition in 0..2 {
        let large = raw.produce("incremental", partition, batch(20));
        assert_eq!(large.responses[0].partition_responses[0].error_code, MESSAGE_TOO_LARGE);
    }
}

/// CreatePartitions v0..=3 grows a topic one partition per version; Metadata shows the
/// count, the new partitions take records, validate_only changes nothing, and the new
/// count survives a restart. Shrinking, unknown topics, foreign replicas and a topic named
/// twice are refused.
#[test]
fn create_partitions_grows_a_topic_and_refuses_to_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("growing", 1, &[]);

    for version in 0..=3 {
        let count = i32::from(version) + 2;
        let checked = create_partitions(&mut raw, "growing", count, true, version);
        assert_eq!(checked.results[0].error_code, NONE, "{:?}", checked.results[0].error_message);
        assert_eq!(partition_count(&mut raw, "growing"), count as usize - 1);

        let response = create_partitions(&mut raw, "growing", count, false, version);
        assert_eq!(response.results.len(), 1);
        let result = &response.results[0];
        assert_eq!(result.name.0.as_str(), "growing");
        assert_eq!(result.error_code, NONE, "v{version}: {:?}", result.error_message);
        assert_eq!(partition_count(&mut raw, "growing"), count as usize);
        let offsets = produce_ok(&mut raw, "growing", count - 1, 2, 1);
        assert_eq!(offsets, [0, 1], "the new partition starts empty");

        let same = create_partitions(&mut raw, "growing", count, false, version);
        assert_eq!(same.results[0].error_code, INVALID_PARTITIONS);
        assert!(same.results[0].error_message.is_some());
        let fewer = create_partitions(&mut raw, "growing", 1, false, version);
        assert_eq!(fewer.results[0].error_code, INVALID_PARTITIONS);
        let unknown = create_partitions(&mut raw, "no-such-topic", 4, false, version);
        assert_eq!(unknown.results[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    }
    assert_eq!(partition_count(&mut raw, "growing"), 5);

    // Assignments may only name this broker, once per new partition.
    let assigned = |brokers: Vec<Vec<i32>>| {
        let mut topic = CreatePartitionsTopic::default();
        topic.name = name_of("growing");
        topic.count = 5 + brokers.len() as i32;
        topic.assignments = Some(
            brokers
                .into_iter()
                .map(|ids| {
                    let mut assignment = CreatePartitionsAssignment::default();
                    assignment.broker_ids = ids.into_iter().map(BrokerId).collect();
                    assignment
                })
                .collect(),
        );
        let mut request = CreatePartitionsRequest::default();
        request.topics = vec![topic];
        request.timeout_ms = 30_000;
        request
    };
    let foreign = raw.send(&assigned(vec![vec![1]]), 3);
    assert_eq!(foreign.results[0].error_code, INVALID_REPLICA_ASSIGNMENT);
    let two_replicas = raw.send(&assigned(vec![vec![0, 0]]), 3);
    assert_eq!(two_replicas.results[0].error_code, INVALID_REPLICA_ASSIGNMENT);
    let ours = raw.send(&assigned(vec![vec![0]]), 3);
    assert_eq!(ours.results[0].error_code, NONE, "{:?}", ours.results[0].error_message);
    assert_eq!(partition_count(&mut raw, "growing"), 6);

    let mut twice = CreatePartitionsRequest::default();
    for _ in 0..2 {
        let mut topic = CreatePartitionsTopic::default();
        topic.name = name_of("growing");
        topic.count = 10;
        twice.topics.push(topic);
    }
    let response = raw.send(&twice, 3);
    assert_eq!(response.results.len(), 2);
    assert!(response.results.iter().all(|r| r.error_code == INVALID_REQUEST));
    assert_eq!(partition_count(&mut raw, "growing"), 6);

    drop(raw);
    let status = broker.stop();
    assert!(status.success(), "exit {status:?}\n{}", broker.log());
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(partition_count(&mut raw, "growing"), 6);
    // The records produced into a partition added by CreatePartitions are still there.
    assert_eq!(list_offset(&mut raw, "growing", 4, -1), Ok(2));
    assert_eq!(list_offset(&mut raw, "growing", 5, -1), Ok(0));
}

/// DeleteRecords v0..=2, one partition per version: the low watermark moves to the given
/// offset (then to the high watermark with -1), ListOffsets earliest returns it, a fetch
/// below it is OFFSET_OUT_OF_RANGE and at it returns records. Offsets past the high
/// watermark and unknown partitions are refused; the low watermark survives a restart.
#[test]
fn delete_records_moves_the_low_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("trimmed", 3, &[]);

    for version in 0..=2 {
        let partition = i32::from(version);
        let offsets = produce_ok(&mut raw, "trimmed", partition, 5, 2);
        assert_eq!(offsets, [0, 2, 4, 6, 8]);
        assert_eq!(earliest(&mut raw, "trimmed", partition), 0);

        let response = delete_records(&mut raw, "trimmed", &[(partition, 4)], version);
        assert_eq!(low_watermarks(&response), [(partition, NONE, 4)], "v{version}");
        assert_eq!(earliest(&mut raw, "trimmed", partition), 4);
        let (error, bytes, _) = fetch(&mut raw, "trimmed", partition, 2);
        assert_eq!(error, OFFSET_OUT_OF_RANGE);
        assert_eq!(bytes, 0);
        let (error, bytes, log_start_offset) = fetch(&mut raw, "trimmed", partition, 4);
        assert_eq!(error, NONE);
        assert!(bytes > 0);
        assert_eq!(log_start_offset, 4);

        let past = delete_records(&mut raw, "trimmed", &[(partition, 11)], version);
        assert_eq!(low_watermarks(&past), [(partition, OFFSET_OUT_OF_RANGE, -1)]);
        assert_eq!(earliest(&mut raw, "trimmed", partition), 4);
    }

    // -1 is the high watermark; several partitions and an unknown one in one request.
    let response = delete_records(&mut raw, "trimmed", &[(0, -1), (7, 0), (1, 6)], 2);
    assert_eq!(
        low_watermarks(&response),
        [(0, NONE, 10), (7, UNKNOWN_TOPIC_OR_PARTITION, -1), (1, NONE, 6)]
    );
    assert_eq!(earliest(&mut raw, "trimmed", 0), 10);
    assert_eq!(fetch(&mut raw, "trimmed", 0, 9).0, OFFSET_OUT_OF_RANGE);
    let unknown = delete_records(&mut raw, "no-such-topic", &[(0, 0)], 2);
    assert_eq!(low_watermarks(&unknown), [(0, UNKNOWN_TOPIC_OR_PARTITION, -1)]);

    drop(raw);
    let status = broker.stop();
    assert!(status.success(), "exit {status:?}\n{}", broker.log());
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    assert_eq!(earliest(&mut raw, "trimmed", 0), 10);
    assert_eq!(earliest(&mut raw, "trimmed", 1), 6);
    assert_eq!(earliest(&mut raw, "trimmed", 2), 4);
    assert_eq!(fetch(&mut raw, "trimmed", 2, 3).0, OFFSET_OUT_OF_RANGE);
}

/// DescribeCluster v0..=2 answers this broker as Metadata does, itself as controller, and
/// the cluster id; authorized operations only when asked; v1+ refuses the controller
/// endpoint type (MISMATCHED_ENDPOINT_TYPE) and unknown ones (UNSUPPORTED_ENDPOINT_TYPE).
#[test]
fn describe_cluster_answers_the_broker_and_cluster_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    let metadata = raw.send(&MetadataRequest::default(), 12);
    let cluster_id = metadata.cluster_id.clone().unwrap().to_string();
    assert!(!cluster_id.is_empty());
    assert_eq!(metadata.brokers.len(), 1);

    for version in 0..=2 {
        let mut request = DescribeClusterRequest::default();
        request.include_fenced_brokers = version >= 2;
        let response = raw.send(&request, version);
        assert_eq!(response.error_code, NONE, "v{version}: {:?}", response.error_message);
        assert_eq!(response.cluster_id.as_str(), cluster_id);
        assert_eq!(response.controller_id, BrokerId(0));
        assert_eq!(response.cluster_authorized_operations, i32::MIN);
        assert_eq!(response.endpoint_type, 1);
        assert_eq!(response.brokers.len(), 1);
        let answered = &response.brokers[0];
        assert_eq!(answered.broker_id, metadata.brokers[0].node_id);
        assert_eq!(answered.host, metadata.brokers[0].host);
        assert_eq!(answered.port, i32::from(broker.port));
        assert_eq!(answered.rack, None);
        assert!(!answered.is_fenced);

        request.include_cluster_authorized_operations = true;
        let authorized = raw.send(&request, version);
        let operations = authorized.cluster_authorized_operations;
        assert_ne!(operations, i32::MIN);
        // DESCRIBE (8), ALTER_CONFIGS (11) and DESCRIBE_CONFIGS (10) are allowed.
        for operation in [8, 10, 11] {
            assert_ne!(operations & (1 << operation), 0, "{operations:#b}");
        }

        if version >= 1 {
            let mut controllers = DescribeClusterRequest::default();
            controllers.endpoint_type = 2;
            let refused = raw.send(&controllers, version);
            assert_eq!(refused.error_code, MISMATCHED_ENDPOINT_TYPE);
            assert!(refused.brokers.is_empty());
            controllers.endpoint_type = 9;
            assert_eq!(raw.send(&controllers, version).error_code, UNSUPPORTED_ENDPOINT_TYPE);
        }
    }
}

/// OffsetForLeaderEpoch v2..=4: epoch 0 (the only one so far) ends at the log end offset
/// on every partition, whichever shard owns it; a later epoch is unknown (-1, -1); a
/// current leader epoch from the future is UNKNOWN_LEADER_EPOCH; unknown partitions are
/// UNKNOWN_TOPIC_OR_PARTITION.
#[test]
fn offset_for_leader_epoch_ends_epoch_zero_at_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("epochs", 2, &[]);
    produce_ok(&mut raw, "epochs", 0, 3, 1);
    produce_ok(&mut raw, "epochs", 1, 2, 4);

    for version in 2..=4 {
        let answers = epoch_end_offsets(
            &mut raw,
            "epochs",
            &[(0, -1, 0), (1, 0, 0), (0, -1, 1), (1, 5, 0), (2, -1, 0)],
            version,
        );
        let seen: Vec<(i32, i16, i32, i64)> = answers
            .iter()
            .map(|a| (a.partition, a.error_code, a.leader_epoch, a.end_offset))
            .collect();
        assert_eq!(
            seen,
            [
                (0, NONE, 0, 3),
                (1, NONE, 0, 8),
                (0, NONE, -1, -1),
                (1, UNKNOWN_LEADER_EPOCH, -1, -1),
                (2, UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
            ],
            "v{version}"
        );
    }
    let unknown = epoch_end_offsets(&mut raw, "no-such-topic", &[(0, -1, 0)], 4);
    assert_eq!(unknown[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
}

/// Kafka's topic configs that Sluice only stores are accepted as Kafka accepts them
/// (CreateTopics, AlterConfigs, IncrementalAlterConfigs), shown by DescribeConfigs as set
/// (with documentation saying Sluice does not act on them, when asked) and kept across a
/// restart; values Kafka refuses, unknown names and tiered storage are INVALID_CONFIG.
#[test]
fn kafka_topic_configs_are_stored_as_kafka_stores_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic(
        "kafkaish",
        1,
        &[
            ("message.format.version", "2.8"),
            ("compression.type", "zstd"),
            ("unclean.leader.election.enable", "true"),
            ("retention.ms", "600000"),
        ],
    );
    let added = incremental_alter(
        &mut raw,
        "kafkaish",
        &[
            ("preallocate", OP_SET, Some("true")),
            ("leader.replication.throttled.replicas", OP_APPEND, Some("0:1")),
        ],
        1,
    );
    assert_eq!(added.responses[0].error_code, NONE, "{:?}", added.responses[0].error_message);

    for (name, value, error) in [
        ("compression.type", "brotli", INVALID_CONFIG),
        ("message.format.version", "9.9", INVALID_CONFIG),
        ("remote.storage.enable", "true", INVALID_CONFIG),
        ("min.cleanable.dirty.ratio", "2", INVALID_CONFIG),
        ("no.such.config", "1", INVALID_CONFIG),
    ] {
        let refused = incremental_alter(&mut raw, "kafkaish", &[(name, OP_SET, Some(value))], 1);
        assert_eq!(refused.responses[0].error_code, error, "{name}={value}");
        let message = refused.responses[0].error_message.as_ref().unwrap().to_string();
        assert!(message.contains(name), "{message}");
    }

    let check = |raw: &mut Raw| {
        let mut request = describe_request(RESOURCE_TOPIC, "kafkaish", None, false);
        request.include_documentation = true;
        let response = raw.send(&request, 4);
        let result = &response.results[0];
        assert_eq!(result.error_code, NONE);
        let value = |name: &str| {
            let found = entry(result, name);
            (found.value.as_ref().map(|v| v.to_string()), found.config_source)
        };
        for (name, expected) in [
            ("message.format.version", "2.8"),
            ("compression.type", "zstd"),
            ("unclean.leader.election.enable", "true"),
            ("preallocate", "true"),
            ("leader.replication.throttled.replicas", "0:1"),
            ("retention.ms", "600000"),
        ] {
            assert_eq!(value(name), (Some(expected.to_string()), SOURCE_DYNAMIC_TOPIC), "{name}");
        }
        assert_eq!(value("message.downconversion.enable"), (Some("true".into()), SOURCE_DEFAULT));
        assert_eq!(value("remote.storage.enable"), (Some("false".into()), SOURCE_DEFAULT));
        let stored = entry(result, "compression.type").documentation.as_ref().unwrap();
        assert!(stored.contains("does not act on it"), "{stored}");
        assert_eq!(entry(result, "retention.ms").documentation, None, "acted on");
    };
    check(&mut raw);
    broker.stop();
    broker.restart();
    let mut raw = Raw::connect(&broker.address());
    check(&mut raw);
}

/// What Kafka accepts from clients that Sluice once refused: FindCoordinator with an
/// empty key (Kafka answers the coordinator of the partition "" hashes to), and strings
/// that are not UTF-8, in a request header's client id or in a body (Kafka decodes them
/// with replacement characters).
#[test]
fn requests_kafka_accepts_are_answered() {
    use kafka_protocol::messages::{ApiVersionsResponse, FindCoordinatorRequest};
    use kafka_protocol::protocol::Decodable;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &[]);
    let mut raw = Raw::connect(&broker.address());

    let mut request = FindCoordinatorRequest::default();
    request.key = text("");
    let response = raw.send(&request, 3);
    assert_eq!(response.error_code, NONE, "{:?}", response.error_message);
    assert_eq!(response.port, i32::from(broker.port));
    let mut request = FindCoordinatorRequest::default();
    request.coordinator_keys = vec![text(""), text("real-group")];
    let response = raw.send(&request, 4);
    let codes: Vec<i16> = response.coordinators.iter().map(|c| c.error_code).collect();
    assert_eq!(codes, [NONE, NONE]);
    let mut request = FindCoordinatorRequest::default();
    request.key = text("g");
    request.key_type = 9;
    assert_eq!(raw.send(&request, 3).error_code, INVALID_REQUEST, "unknown key type");

    // ApiVersions v0 (header v1) with the client id bytes "caf\xe9" (ISO-8859-1).
    let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 42, 0, 4, b'c', b'a', b'f', 0xe9];
    frame.splice(0..0, (frame.len() as i32).to_be_bytes());
    raw.stream.write_all(&frame).unwrap();
    let mut answer = bytes::Bytes::from(raw.read_frame().unwrap());
    assert_eq!(&answer[..4], 42i32.to_be_bytes(), "correlation id");
    let _ = answer.split_to(4);
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, NONE);
    assert!(!versions.api_keys.is_empty());

    // CreateTopics whose first topic name is not UTF-8 ("caf\xe9-topic"): Kafka reads it
    // with a replacement character, which fails that topic's validation alone.
    let mut request = kafka_protocol::messages::CreateTopicsRequest::default();
    for name in ["caf#-topic", "utf8-neighbour"] {
        let mut topic = kafka_protocol::messages::create_topics_request::CreatableTopic::default();
        topic.name = kafka_protocol::messages::TopicName(text(name));
        topic.num_partitions = 1;
        topic.replication_factor = 1;
        request.topics.push(topic);
    }
    request.timeout_ms = 10_000;
    let mut frame = raw.frame(&request, 7);
    let at = frame.windows(4).position(|w| w == b"caf#").unwrap() + 3;
    frame[at] = 0xe9;
    raw.stream.write_all(&frame).unwrap();
    let created = raw.receive::<kafka_protocol::messages::CreateTopicsRequest>(7);
    let answers: Vec<(&str, i16)> =
        created.topics.iter().map(|t| (t.name.as_str(), t.error_code)).collect();
    assert_eq!(
        answers,
        [("caf\u{fffd}-topic", INVALID_TOPIC_EXCEPTION), ("utf8-neighbour", NONE)],
        "{}",
        broker.log()
    );
}

/// A Kafka KRaft `server.properties` starts the broker as it is: it listens on the
/// `listeners` address (port 0: any), advertises `advertised.listeners`, keeps its data in
/// `log.dirs`, takes `node.id`, `num.partitions` and `log.retention.hours`, and logs one
/// warning naming the Kafka settings it ignores. Its quorum of one voter, itself, is the
/// one-node cluster. A misspelt name stops it with a hint.
#[test]
fn kafka_server_properties_start_the_broker() {
    use kafka_protocol::messages::MetadataRequest;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("kafka-logs");
    let properties = dir.path().join("server.properties");
    std::fs::write(
        &properties,
        format!(
            "# KRaft, combined mode\n\
             process.roles=broker,controller\n\
             node.id=3\n\
             controller.quorum.voters=3@localhost:19093\n\
             listeners=PLAINTEXT://127.0.0.1:0,CONTROLLER://:19093\n\
             advertised.listeners=PLAINTEXT://localhost:0,CONTROLLER://localhost:19093\n\
             controller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             num.network.threads=3\n\
             num.io.threads=8\n\
             log.dirs={}\n\
             num.partitions=2\n\
             log.retention.hours=1\n",
            logs.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("broker.log");
    let mut child = crate::harness::spawn_sluice(
        &["--config", properties.to_str().unwrap(), "--cores", "2"],
        &log_path,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let address = loop {
        let text = log();
        let listening: Vec<&str> =
            text.lines().filter(|l| l.contains("sluice_net::server: listening")).collect();
        if listening.len() == 2 {
            let line = listening[0];
            let at = line.find("address=").unwrap() + "address=".len();
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
        assert!(child.try_wait().unwrap().is_none(), "broker exited:\n{text}");
        assert!(std::time::Instant::now() < deadline, "broker did not listen:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let port: i32 = address.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_ne!(port, 0);

    let mut raw = Raw::connect(&address);
    let mut request = MetadataRequest::default();
    let mut topic = MetadataRequestTopic::default();
    topic.name = Some(name_of("auto"));
    request.topics = Some(vec![topic]);
    request.allow_auto_topic_creation = true;
    let metadata = raw.send(&request, 12);
    assert_eq!(metadata.brokers.len(), 1);
    assert_eq!(metadata.brokers[0].node_id.0, 3);
    assert_eq!(metadata.brokers[0].host.as_str(), "localhost", "advertised.listeners");
    assert_eq!(metadata.brokers[0].port, port, "the bound port");
    assert_eq!(metadata.topics[0].partitions.len(), 2, "num.partitions");
    let broker_configs = describe(&mut raw, RESOURCE_BROKER, "3");
    assert_eq!(entry(&broker_configs, "log.retention.ms").value.as_deref(), Some("3600000"));
    let meta = std::fs::read_to_string(logs.join("meta.properties")).unwrap();
    assert!(meta.contains("node.id=3"), "{meta}");

    let text = log();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].ends_with(
            "Kafka broker properties accepted but ignored: num.io.threads, num.network.threads"
        ),
        "{}",
        warnings[0]
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "{}", log());

    // A misspelt name is a start-up error naming the line and the likely name.
    std::fs::write(&properties, format!("log.dirs={}\nnum.partition=2\n", logs.display())).unwrap();
    let typo_log = dir.path().join("typo.log");
    let status =
        crate::harness::spawn_sluice(&["--config", properties.to_str().unwrap()], &typo_log)
            .wait()
            .unwrap();
    assert!(!status.success());
    let text = std::fs::read_to_string(&typo_log).unwrap();
    assert!(text.contains("line 2: unknown broker property \"num.partition\""), "{text}");
    assert!(text.contains("did you mean \"num.partitions\"?"), "{text}");
}
