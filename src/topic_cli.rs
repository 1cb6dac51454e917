//! `sluice topic`: topic administration over the Kafka protocol, the verbs of Kafka's
//! `kafka-topics.sh`, `kafka-configs.sh` (for topics), `kafka-reassign-partitions.sh` and
//! `kafka-leader-election.sh`: create, list, describe, delete, alter (partitions),
//! alter-config, reassign and elect-leaders. Works against Sluice or any Kafka cluster;
//! requests for the controller go to any broker, which forwards them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, ElectLeadersRequest,
    IncrementalAlterConfigsRequest, ListPartitionReassignmentsRequest, MetadataResponse, TopicName,
};
use sluice_net::error::code;

use crate::client::{error_name, KafkaError};
use crate::cluster_cli::{str_bytes, topic_id_text, Brokers, Session, REQUEST_TIMEOUT_MS};
use crate::output::{id_list, opt_dash, table, write_stdout, Json};

// Versions this client speaks, per API (inclusive); the broker's range narrows them.
/// From v4 partitions and replication factor may be left to the broker (-1); from v5 the
/// answer says what was created, from v7 with the topic id.
const CREATE_TOPICS_VERSIONS: (i16, i16) = (2, 7);
/// From v6 topics are named in `topics` rather than `topic_names`.
const DELETE_TOPICS_VERSIONS: (i16, i16) = (1, 6);
const CREATE_PARTITIONS_VERSIONS: (i16, i16) = (0, 3);
const DESCRIBE_CONFIGS_VERSIONS: (i16, i16) = (1, 4);
const INCREMENTAL_ALTER_CONFIGS_VERSIONS: (i16, i16) = (0, 1);
/// From v1 the request carries the election type (v0: preferred only).
const ELECT_LEADERS_VERSIONS: (i16, i16) = (1, 2);
const ALTER_PARTITION_REASSIGNMENTS_VERSIONS: (i16, i16) = (0, 1);
const LIST_PARTITION_REASSIGNMENTS_VERSIONS: (i16, i16) = (0, 0);

/// Kafka's `ConfigResource.Type.TOPIC`.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's `ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG`: set on the topic.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
/// Kafka's `AlterConfigOp.OpType` SET and DELETE.
const OPERATION_SET: i8 = 0;
const OPERATION_DELETE: i8 = 1;

/// `sluice topic`: create, list, describe, delete and change topics.
#[derive(Debug, clap::Args)]
pub struct TopicArgs {
    #[command(flatten)]
    brokers: Brokers,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TopicCommand {
    /// Create a topic (CreateTopics).
    ///
    /// Partitions and replication factor default to the broker's (num.partitions,
    /// default.replication.factor). With --replica-assignment the replicas of each
    /// partition are given instead, and neither may be.
    Create(CreateArgs),
    /// List the topics: TOPIC PARTITIONS REPLICATION-FACTOR, sorted by name (Metadata).
    ///
    /// Internal topics (__consumer_offsets, __transaction_state) only with
    /// --include-internal.
    List(ListArgs),
    /// Describe topics and their partitions, like `kafka-topics.sh --describe`.
    ///
    /// First one row per topic: TOPIC TOPIC-ID PARTITIONS REPLICATION-FACTOR CONFIGS,
    /// where CONFIGS are the configs set on the topic (DescribeConfigs, source
    /// DYNAMIC_TOPIC_CONFIG); then one row per partition: TOPIC PARTITION LEADER REPLICAS
    /// ISR OFFLINE (Metadata). '-' marks none. Without names: every topic (internal ones
    /// with --include-internal).
    ///
    /// With --under-replicated-partitions or --unavailable-partitions, only the partition
    /// rows that match. Fails (exit status 1) when a named topic does not exist.
    Describe(DescribeArgs),
    /// Delete topics and their data (DeleteTopics).
    ///
    /// Every named topic is tried; the command fails (exit status 1) if any could not be
    /// deleted.
    Delete(DeleteArgs),
    /// Add partitions to a topic (CreatePartitions). Partitions cannot be removed.
    Alter(AlterArgs),
    /// Set or delete configs of a topic (IncrementalAlterConfigs).
    ///
    /// A deleted config falls back to the broker's default.
    AlterConfig(AlterConfigArgs),
    /// Move a partition to new replicas, cancel that, or list the moves in progress.
    ///
    /// With --replicas, starts moving the partition to those brokers
    /// (AlterPartitionReassignments): the new replicas catch up, join the ISR, and the
    /// old ones are then removed. With --cancel, stops a move in progress. With --list,
    /// shows the moves in progress (ListPartitionReassignments): TOPIC PARTITION REPLICAS
    /// ADDING REMOVING.
    Reassign(ReassignArgs),
    /// Elect partition leaders (ElectLeaders), like `kafka-leader-election.sh`.
    ///
    /// Preferred (the default): moves leadership back to each partition's preferred
    /// replica (the first of its replicas) when that replica is in the ISR. Unclean: gives
    /// a partition that has no leader any live replica as leader, at the risk of losing
    /// records. Without --topic: every partition; with --topic and no --partition: every
    /// partition of that topic.
    ///
    /// Prints one row per partition: TOPIC PARTITION RESULT MESSAGE, where RESULT is
    /// ELECTED, ELECTION_NOT_NEEDED (already led by its preferred leader; not an error)
    /// or the Kafka error. Without --topic the broker leaves out the partitions that
    /// needed no election. Fails (exit status 1) if any partition has another error.
    ElectLeaders(ElectArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The topic name.
    name: String,
    /// The number of partitions (default: the broker's num.partitions).
    #[arg(long, short = 'p', value_name = "N", conflicts_with = "replica_assignment")]
    partitions: Option<i32>,
    /// Replicas per partition (default: the broker's default.replication.factor).
    #[arg(long, short = 'r', value_name = "R", conflicts_with = "replica_assignment")]
    replication_factor: Option<i16>,
    /// The replicas of each partition: partitions separated by ',', the broker ids of
    /// one partition by ':' (the first is the preferred leader), e.g. 1:2:3,2:3:1 for two
    /// partitions of three replicas.
    #[arg(long, value_name = "ASSIGNMENT", value_parser = parse_assignment)]
    replica_assignment: Option<Assignment>,
    /// A topic config, e.g. --config retention.ms=86400000; repeatable.
    #[arg(long, short = 'c', value_name = "NAME=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Only check that the topic could be created (the broker validates everything,
    /// then creates nothing).
    #[arg(long)]
    validate_only: bool,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Also list internal topics (__consumer_offsets, __transaction_state).
    #[arg(long)]
    include_internal: bool,
    /// Print a JSON array of {"name", "topic_id", "internal", "partitions",
    /// "replication_factor"} objects instead.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DescribeArgs {
    /// The topics to describe (default: every topic).
    names: Vec<String>,
    /// Without names: also describe internal topics.
    #[arg(long)]
    include_internal: bool,
    /// Only partitions whose ISR is smaller than their replica set.
    #[arg(long, conflicts_with = "unavailable_partitions")]
    under_replicated_partitions: bool,
    /// Only partitions without a leader, or whose leader is not a live broker.
    #[arg(long)]
    unavailable_partitions: bool,
    /// Print a JSON array instead: per topic name, topic_id, internal,
    /// replication_factor, configs (overridden ones) and partitions (partition, leader
    /// (null: none), leader_epoch, replicas, isr, offline); the filters apply.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    /// The topics to delete.
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct AlterArgs {
    /// The topic name.
    name: String,
    /// The new number of partitions: more than it has now.
    #[arg(long, short = 'p', value_name = "N", required = true)]
    partitions: i32,
    /// Only check that the partitions could be added.
    #[arg(long)]
    validate_only: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["set", "delete"])))]
struct AlterConfigArgs {
    /// The topic name.
    name: String,
    /// Set a config, e.g. --set retention.ms=3600000; repeatable.
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// Delete a config (back to the broker's default); repeatable.
    #[arg(long, value_name = "NAME")]
    delete: Vec<String>,
    /// Only check that the change is valid.
    #[arg(long)]
    validate_only: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["list", "replicas", "cancel"])))]
struct ReassignArgs {
    /// List the reassignments in progress (all, or only --topic's, --partition's).
    #[arg(long)]
    list: bool,
    /// The topic of the partition.
    #[arg(long, required_unless_present = "list")]
    topic: Option<String>,
    /// The partition.
    #[arg(long, required_unless_present = "list", requires = "topic")]
    partition: Option<i32>,
    /// The new replicas, comma-separated broker ids; the first is the preferred leader.
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    replicas: Vec<i32>,
    /// Cancel the partition's reassignment in progress.
    #[arg(long)]
    cancel: bool,
    /// With --list: print a JSON array of {"topic", "partition", "replicas",
    /// "adding_replicas", "removing_replicas"} objects instead.
    #[arg(long, requires = "list")]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ElectArgs {
    /// Only this topic's partitions (default: every partition).
    #[arg(long)]
    topic: Option<String>,
    /// Only this partition of --topic.
    #[arg(long, requires = "topic")]
    partition: Option<i32>,
    /// The kind of election.
    #[arg(long = "type", value_enum, default_value_t = ElectionType::Preferred)]
    election_type: ElectionType,
    /// Print a JSON array of {"topic", "partition", "result", "message"} objects instead.
    #[arg(long)]
    json: bool,
}

/// Kafka's `ElectionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ElectionType {
    /// Leadership back to the preferred replica.
    Preferred,
    /// Any live replica for a partition without a leader (may lose records).
    Unclean,
}

impl ElectionType {
    fn code(self) -> i8 {
        match self {
            ElectionType::Preferred => 0,
            ElectionType::Unclean => 1,
        }
    }
}

/// Replicas per partition, in partition order.
type Assignment = Vec<Vec<i32>>;

/// `1:2:3,2:3:1`.
fn parse_assignment(text: &str) -> Result<Assignment, String> {
    text.split(',')
        .map(|partition| {
            partition
                .split(':')
                .map(|id| {
                    id.trim().parse::<i32>().map_err(|_| format!("{id:?} is not a broker id"))
                })
                .collect()
        })
        .collect()
}

/// `NAME=VALUE` (the value may contain '=').
fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Runs `sluice topic ...`: results on stdout, errors through the caller on stderr.
pub(crate) fn run(args: TopicArgs) -> anyhow::Result<()> {
    let mut session = Session::connect(&args.brokers)?;
    // Commands that act on several things print what succeeded before failing.
    let (output, outcome) = match args.command {
        TopicCommand::Create(args) => (create(&mut session, &args)?, Ok(())),
        TopicCommand::List(args) => {
            let topics = list(&mut session, args.include_internal)?;
            (if args.json { render_list_json(&topics) } else { render_list(&topics) }, Ok(()))
        }
        TopicCommand::Describe(args) => {
            let filter = if args.under_replicated_partitions {
                Filter::UnderReplicated
            } else if args.unavailable_partitions {
                Filter::Unavailable
            } else {
                Filter::All
            };
            let description = describe(&mut session, &args.names, args.include_internal)?;
            let output = if args.json {
                render_describe_json(&description, filter)
            } else {
                render_describe(&description, filter)
            };
            (output, Ok(()))
        }
        TopicCommand::Delete(args) => delete(&mut session, &args.names),
        TopicCommand::Alter(args) => (alter_partitions(&mut session, &args)?, Ok(())),
        TopicCommand::AlterConfig(args) => (alter_config(&mut session, &args)?, Ok(())),
        TopicCommand::Reassign(args) if args.list => {
            let ongoing = list_reassignments(&mut session, &args)?;
            let output = if args.json {
                render_reassignments_json(&ongoing)
            } else if ongoing.is_empty() {
                "No partition reassignments in progress.\n".to_string()
            } else {
                render_reassignments(&ongoing)
            };
            (output, Ok(()))
        }
        TopicCommand::Reassign(args) => (reassign(&mut session, &args)?, Ok(())),
        TopicCommand::ElectLeaders(args) => {
            let results = elect_leaders(&mut session, &args)?;
            let output = if args.json {
                render_elections_json(&results)
            } else if results.is_empty() {
                "No partition needed an election.\n".to_string()
            } else {
                render_elections(&results)
            };
            let failed: Vec<String> = results
                .iter()
                .filter(|r| r.error_code != 0 && r.error_code != code::ELECTION_NOT_NEEDED)
                .map(|r| format!("{}-{}: {}", r.topic, r.partition, error_name(r.error_code)))
                .collect();
            let outcome = if failed.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{} election(s) failed: {}", failed.len(), failed.join(", ")))
            };
            (output, outcome)
        }
    };
    write_stdout(&output)?;
    outcome
}

// ---------------------------------------------------------------------------------------
// The data

/// One partition, from Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub partition: i32,
    /// `None`: no leader.
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

impl PartitionInfo {
    fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }

    /// No leader, or one that is not a live broker (as `kafka-topics.sh` decides).
    fn is_unavailable(&self, live: &BTreeSet<i32>) -> bool {
        match self.leader {
            Some(leader) => !live.contains(&leader),
            None => true,
        }
    }
}

/// Configs set on a topic (name, value), sorted by name; a sensitive value is `None`.
pub(crate) type Configs = Vec<(String, Option<String>)>;

/// One topic, from Metadata (and DescribeConfigs for `describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicInfo {
    pub name: String,
    /// Kafka's text form; `None` before Metadata v10.
    pub topic_id: Option<String>,
    pub internal: bool,
    /// Sorted by partition.
    pub partitions: Vec<PartitionInfo>,
    pub configs: Configs,
}

impl TopicInfo {
    /// The replica count of the first partition, as `kafka-topics.sh` prints it.
    fn replication_factor(&self) -> Option<usize> {
        self.partitions.first().map(|p| p.replicas.len())
    }
}

/// What `describe` learned: the topics and the live brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Description {
    /// Sorted by name.
    pub topics: Vec<TopicInfo>,
    pub live_brokers: BTreeSet<i32>,
}

/// Which partitions `describe` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    All,
    UnderReplicated,
    Unavailable,
}

impl Filter {
    fn keeps(self, partition: &PartitionInfo, live: &BTreeSet<i32>) -> bool {
        match self {
            Filter::All => true,
            Filter::UnderReplicated => partition.is_under_replicated(),
            Filter::Unavailable => partition.is_unavailable(live),
        }
    }
}

/// A reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// The answer of ElectLeaders for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElectionResult {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    pub message: Option<String>,
}

impl ElectionResult {
    fn result(&self) -> String {
        match self.error_code {
            0 => "ELECTED".to_string(),
            error_code => error_name(error_code).to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The requests

/// The topics of a Metadata answer, sorted by name; the ones with a topic-level error
/// are left out.
fn topics_of(metadata: &MetadataResponse) -> Vec<TopicInfo> {
    let mut topics: Vec<TopicInfo> = metadata
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| {
            let name = t.name.as_ref()?.as_str().to_string();
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    partition: p.partition_index,
                    leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            Some(TopicInfo {
                name,
                topic_id: (!t.topic_id.is_nil()).then(|| topic_id_text(t.topic_id.as_bytes())),
                internal: t.is_internal,
                partitions,
                configs: Vec::new(),
            })
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    topics
}

/// Every topic, sorted by name.
pub(crate) fn list(
    session: &mut Session,
    include_internal: bool,
) -> anyhow::Result<Vec<TopicInfo>> {
    let metadata = session.metadata(None)?;
    let mut topics = topics_of(&metadata);
    topics.retain(|t| include_internal || !t.internal);
    Ok(topics)
}

/// Metadata for `names` (none: every topic), then the configs set on them.
pub(crate) fn describe(
    session: &mut Session,
    names: &[String],
    include_internal: bool,
) -> anyhow::Result<Description> {
    let metadata = session.metadata((!names.is_empty()).then_some(names))?;
    // A named topic that is missing fails the command, as in kafka-topics.sh.
    let mut failures = Vec::new();
    for name in names.iter().collect::<BTreeSet<_>>() {
        let answer =
            metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == name));
        match answer {
            None => failures.push(format!("topic '{name}' is not in the Metadata answer")),
            Some(topic) if topic.error_code != 0 => failures.push(
                KafkaError::new(format!("topic '{name}'"), topic.error_code, None).to_string(),
            ),
            Some(_) => {}
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    let mut topics = topics_of(&metadata);
    if names.is_empty() {
        topics.retain(|t| include_internal || !t.internal);
    }
    let configs = topic_configs(session, topics.iter().map(|t| t.name.as_str()))?;
    for topic in &mut topics {
        topic.configs = configs.get(&topic.name).cloned().unwrap_or_default();
    }
    let live_brokers = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    Ok(Description { topics, live_brokers })
}

/// The configs set on each topic (source DYNAMIC_TOPIC_CONFIG), by topic.
fn topic_configs<'a>(
    session: &mut Session,
    names: impl Iterator<Item = &'a str>,
) -> anyhow::Result<BTreeMap<String, Configs>> {
    let mut request = DescribeConfigsRequest::default();
    request.resources = names
        .map(|name| {
            let mut resource = DescribeConfigsResource::default();
            resource.resource_type = RESOURCE_TOPIC;
            resource.resource_name = str_bytes(name);
            resource.configuration_keys = None;
            resource
        })
        .collect();
    if request.resources.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (response, _) = session.bootstrap()?.negotiated(DESCRIBE_CONFIGS_VERSIONS, &request)?;
    let mut configs = BTreeMap::new();
    for result in response.results {
        let name = result.resource_name.as_str().to_string();
        KafkaError::check(
            format!("DescribeConfigs for topic '{name}'"),
            result.error_code,
            result.error_message.as_ref(),
        )?;
        let mut set: Configs = result
            .configs
            .iter()
            .filter(|c| c.config_source == SOURCE_DYNAMIC_TOPIC)
            .map(|c| {
                let value = if c.is_sensitive { None } else { c.value.as_ref() };
                (c.name.as_str().to_string(), value.map(|v| v.as_str().to_string()))
            })
            .collect();
        set.sort();
        configs.insert(name, set);
    }
    Ok(configs)
}

/// CreateTopics for one topic; returns the message to print.
fn create(session: &mut Session, args: &CreateArgs) -> anyhow::Result<String> {
    let name = args.name.as_str();
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(str_bytes(name));
    match &args.replica_assignment {
        Some(assignment) => {
            // Kafka requires both counts unset with an explicit assignment.
            topic.num_partitions = -1;
            topic.replication_factor = -1;
            topic.assignments = assignment
                .iter()
                .zip(0..)
                .map(|(replicas, index)| {
                    let mut partition = CreatableReplicaAssignment::default();
                    partition.partition_index = index;
                    partition.broker_ids = replicas.iter().map(|&id| BrokerId(id)).collect();
                    partition
                })
                .collect();
        }
        None => {
            topic.num_partitions = args.partitions.unwrap_or(-1);
            topic.replication_factor = args.replication_factor.unwrap_or(-1);
        }
    }
    topic.configs = args
        .config
        .iter()
        .map(|(key, value)| {
            let mut config = CreatableTopicConfig::default();
            config.name = str_bytes(key);
            config.value = Some(str_bytes(value));
            config
        })
        .collect();
    let uses_defaults = topic.assignments.is_empty()
        && (topic.num_partitions == -1 || topic.replication_factor == -1);
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = REQUEST_TIMEOUT_MS;
    request.validate_only = args.validate_only;
    let context = format!("CreateTopics for topic '{name}'");
    let (result, version) = session.with_controller(|client| {
        let version = client.version::<CreateTopicsRequest>(CREATE_TOPICS_VERSIONS)?;
        if version < 4 && uses_defaults {
            bail!(
                "the broker serves CreateTopics up to v{version}, which has no broker \
                 defaults: give --partitions and --replication-factor"
            );
        }
        let response = client.request(version, &request)?;
        let result = response
            .topics
            .into_iter()
            .find(|t| t.name.as_str() == name)
            .with_context(|| format!("{context}: the answer does not name the topic"))?;
        KafkaError::check(&context, result.error_code, result.error_message.as_ref())?;
        Ok((result, version))
    })?;
    // From v5 the answer says what the broker chose; -1 when it does not say.
    let mut details = Vec::new();
    if version >= 7 && !result.topic_id.is_nil() && !args.validate_only {
        details.push(format!("topic id {}", topic_id_text(result.topic_id.as_bytes())));
    }
    if version >= 5 && result.num_partitions >= 0 {
        details.push(format!("{} partition(s)", result.num_partitions));
    }
    if version >= 5 && result.replication_factor >= 0 {
        details.push(format!("replication factor {}", result.replication_factor));
    }
    let details =
        if details.is_empty() { String::new() } else { format!(" ({})", details.join(", ")) };
    Ok(if args.validate_only {
        format!("Topic '{name}' is valid{details}; it was not created (--validate-only).\n")
    } else {
        format!("Created topic '{name}'{details}.\n")
    })
}

/// DeleteTopics: a line per deleted topic, and an error naming those that were not.
fn delete(session: &mut Session, names: &[String]) -> (String, anyhow::Result<()>) {
    let mut pending: BTreeSet<String> = names.iter().cloned().collect();
    // Topic -> error code and message, for the topics answered.
    let mut answered: BTreeMap<String, KafkaError> = BTreeMap::new();
    let result = session.with_controller(|client| {
        let version = client.version::<DeleteTopicsRequest>(DELETE_TOPICS_VERSIONS)?;
        let mut request = DeleteTopicsRequest::default();
        request.timeout_ms = REQUEST_TIMEOUT_MS;
        if version >= 6 {
            request.topics = pending
                .iter()
                .map(|name| {
                    let mut topic = DeleteTopicState::default();
                    topic.name = Some(TopicName(str_bytes(name)));
                    topic
                })
                .collect();
        } else {
            request.topic_names = pending.iter().map(|name| TopicName(str_bytes(name))).collect();
        }
        let response = client.request(version, &request)?;
        let mut refused = None;
        for result in response.responses {
            let Some(name) = result.name.map(|n| n.as_str().to_string()) else { continue };
            let error = KafkaError::new(
                format!("DeleteTopics for topic '{name}'"),
                result.error_code,
                result.error_message.as_ref(),
            );
            if result.error_code == code::NOT_CONTROLLER {
                refused = Some(error);
            } else if pending.remove(&name) {
                answered.insert(name, error);
            }
        }
        match refused {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    });
    let mut output = String::new();
    let mut failures = Vec::new();
    for (name, error) in &answered {
        if error.code == 0 {
            output.push_str(&format!("Deleted topic '{name}'.\n"));
        } else {
            failures.push(error.to_string());
        }
    }
    if let Err(error) = result {
        failures.push(format!("{error:#}"));
    } else if !pending.is_empty() {
        let missing: Vec<&str> = pending.iter().map(String::as_str).collect();
        failures.push(format!("DeleteTopics: no answer for {}", missing.join(", ")));
    }
    let outcome =
        if failures.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("{}", failures.join("; "))) };
    (output, outcome)
}

/// CreatePartitions: the topic grows to `--partitions`.
fn alter_partitions(session: &mut Session, args: &AlterArgs) -> anyhow::Result<String> {
    let name = args.name.as_str();
    let mut topic = CreatePartitionsTopic::default();
    topic.name = TopicName(str_bytes(name));
    topic.count = args.partitions;
    topic.assignments = None;
    let mut request = CreatePartitionsRequest::default();
    request.topics = vec![topic];
    request.timeout_ms = REQUEST_TIMEOUT_MS;
    request.validate_only = args.validate_only;
    let context = format!("CreatePartitions for topic '{name}'");
    session.with_controller(|client| {
        let (response, _) = client.negotiated(CREATE_PARTITIONS_VERSIONS, &request)?;
        let result = response
            .results
            .into_iter()
            .find(|r| r.name.as_str() == name)
            .with_context(|| format!("{context}: the answer does not name the topic"))?;
        KafkaError::check(&context, result.error_code, result.error_message.as_ref())
    })?;
    Ok(if args.validate_only {
        format!("Topic '{name}' can have {} partitions; nothing was changed.\n", args.partitions)
    } else {
        format!("Topic '{name}' now has {} partitions.\n", args.partitions)
    })
}

/// IncrementalAlterConfigs on one topic.
fn alter_config(session: &mut Session, args: &AlterConfigArgs) -> anyhow::Result<String> {
    let name = args.name.as_str();
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = RESOURCE_TOPIC;
    resource.resource_name = str_bytes(name);
    for (key, value) in &args.set {
        let mut config = AlterableConfig::default();
        config.name = str_bytes(key);
        config.config_operation = OPERATION_SET;
        config.value = Some(str_bytes(value));
        resource.configs.push(config);
    }
    for key in &args.delete {
        let mut config = AlterableConfig::default();
        config.name = str_bytes(key);
        config.config_operation = OPERATION_DELETE;
        config.value = None;
        resource.configs.push(config);
    }
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![resource];
    request.validate_only = args.validate_only;
    let context = format!("IncrementalAlterConfigs for topic '{name}'");
    let (response, _) =
        session.bootstrap()?.negotiated(INCREMENTAL_ALTER_CONFIGS_VERSIONS, &request)?;
    let result = response
        .responses
        .into_iter()
        .find(|r| r.resource_name.as_str() == name)
        .with_context(|| format!("{context}: the answer does not name the topic"))?;
    KafkaError::check(&context, result.error_code, result.error_message.as_ref())?;
    let mut changes: Vec<String> = args.set.iter().map(|(k, v)| format!("set {k}={v}")).collect();
    changes.extend(args.delete.iter().map(|k| format!("deleted {k}")));
    let verb = if args.validate_only { "Validated (nothing changed)" } else { "Altered" };
    Ok(format!("{verb} the configs of topic '{name}': {}.\n", changes.join(", ")))
}

/// AlterPartitionReassignments for one partition: new replicas, or a cancel.
fn reassign(session: &mut Session, args: &ReassignArgs) -> anyhow::Result<String> {
    let (Some(topic_name), Some(index)) = (args.topic.as_deref(), args.partition) else {
        bail!("--topic and --partition name the partition to reassign");
    };
    let mut partition = ReassignablePartition::default();
    partition.partition_index = index;
    // A null replica list cancels.
    partition.replicas =
        (!args.cancel).then(|| args.replicas.iter().map(|&id| BrokerId(id)).collect());
    let mut topic = ReassignableTopic::default();
    topic.name = TopicName(str_bytes(topic_name));
    topic.partitions = vec![partition];
    let mut request = AlterPartitionReassignmentsRequest::default();
    request.timeout_ms = REQUEST_TIMEOUT_MS;
    request.topics = vec![topic];
    let context = format!("AlterPartitionReassignments for {topic_name}-{index}");
    session.with_controller(|client| {
        let (response, _) = client.negotiated(ALTER_PARTITION_REASSIGNMENTS_VERSIONS, &request)?;
        KafkaError::check(&context, response.error_code, response.error_message.as_ref())?;
        let result = response
            .responses
            .iter()
            .filter(|t| t.name.as_str() == topic_name)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == index)
            .with_context(|| format!("{context}: the answer does not name the partition"))?;
        KafkaError::check(&context, result.error_code, result.error_message.as_ref())
    })?;
    Ok(if args.cancel {
        format!("Cancelled the reassignment of {topic_name}-{index}.\n")
    } else {
        format!(
            "Started reassigning {topic_name}-{index} to replicas {}; \
             `sluice topic reassign --list` shows it until done.\n",
            id_list(&args.replicas)
        )
    })
}

/// ListPartitionReassignments: every move in progress, or --topic's (--partition's).
fn list_reassignments(
    session: &mut Session,
    args: &ReassignArgs,
) -> anyhow::Result<Vec<Reassignment>> {
    let mut request = ListPartitionReassignmentsRequest::default();
    request.timeout_ms = REQUEST_TIMEOUT_MS;
    if let Some(topic_name) = &args.topic {
        // Every partition of a topic: its partition count from Metadata.
        let indexes = match args.partition {
            Some(index) => vec![index],
            None => partitions_of(session, topic_name)?,
        };
        let mut topic = ListPartitionReassignmentsTopics::default();
        topic.name = TopicName(str_bytes(topic_name));
        topic.partition_indexes = indexes;
        request.topics = Some(vec![topic]);
    } else {
        request.topics = None;
    }
    let response = session.with_controller(|client| {
        let (response, _) = client.negotiated(LIST_PARTITION_REASSIGNMENTS_VERSIONS, &request)?;
        KafkaError::check(
            "ListPartitionReassignments",
            response.error_code,
            response.error_message.as_ref(),
        )?;
        Ok(response)
    })?;
    let ids = |ids: &[BrokerId]| ids.iter().map(|b| b.0).collect::<Vec<i32>>();
    let mut ongoing: Vec<Reassignment> = response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Reassignment {
                topic: t.name.as_str().to_string(),
                partition: p.partition_index,
                replicas: ids(&p.replicas),
                adding: ids(&p.adding_replicas),
                removing: ids(&p.removing_replicas),
            })
        })
        .collect();
    ongoing.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(ongoing)
}

/// The partition indexes of `topic`, from Metadata; an unknown topic is an error.
fn partitions_of(session: &mut Session, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = session.metadata(Some(&[topic.to_string()]))?;
    let answer = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .with_context(|| format!("topic '{topic}' is not in the Metadata answer"))?;
    KafkaError::check(format!("topic '{topic}'"), answer.error_code, None)?;
    let mut indexes: Vec<i32> = answer.partitions.iter().map(|p| p.partition_index).collect();
    indexes.sort_unstable();
    Ok(indexes)
}

/// ElectLeaders; the results sorted by topic and partition.
fn elect_leaders(session: &mut Session, args: &ElectArgs) -> anyhow::Result<Vec<ElectionResult>> {
    let mut request = ElectLeadersRequest::default();
    request.election_type = args.election_type.code();
    request.timeout_ms = REQUEST_TIMEOUT_MS;
    request.topic_partitions = match &args.topic {
        None => None,
        Some(topic_name) => {
            let partitions = match args.partition {
                Some(index) => vec![index],
                None => partitions_of(session, topic_name)?,
            };
            let mut topic = TopicPartitions::default();
            topic.topic = TopicName(str_bytes(topic_name));
            topic.partitions = partitions;
            Some(vec![topic])
        }
    };
    // (topic, partition) -> the first answer other than NOT_CONTROLLER.
    let mut answered: BTreeMap<(String, i32), ElectionResult> = BTreeMap::new();
    session.with_controller(|client| {
        let (response, _) = client.negotiated(ELECT_LEADERS_VERSIONS, &request)?;
        KafkaError::check("ElectLeaders", response.error_code, None)?;
        let mut refused = false;
        for topic in &response.replica_election_results {
            for p in &topic.partition_result {
                if p.error_code == code::NOT_CONTROLLER {
                    refused = true;
                    continue;
                }
                let key = (topic.topic.as_str().to_string(), p.partition_id);
                answered.entry(key).or_insert_with(|| ElectionResult {
                    topic: topic.topic.as_str().to_string(),
                    partition: p.partition_id,
                    error_code: p.error_code,
                    message: p.error_message.as_ref().map(|m| m.as_str().to_string()),
                });
            }
        }
        if refused {
            return Err(KafkaError::new("ElectLeaders", code::NOT_CONTROLLER, None).into());
        }
        Ok(())
    })?;
    Ok(answered.into_values().collect())
}

// ---------------------------------------------------------------------------------------
// The output

fn configs_text(configs: &Configs) -> String {
    if configs.is_empty() {
        return "-".to_string();
    }
    configs
        .iter()
        .map(|(name, value)| format!("{name}={}", value.as_deref().unwrap_or("<sensitive>")))
        .collect::<Vec<_>>()
        .join(",")
}

/// `sluice topic list`: TOPIC PARTITIONS REPLICATION-FACTOR.
pub(crate) fn render_list(topics: &[TopicInfo]) -> String {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![t.name.clone(), t.partitions.len().to_string(), opt_dash(t.replication_factor())]
        })
        .collect();
    table(&["TOPIC", "PARTITIONS", "REPLICATION-FACTOR"], &rows)
}

fn count(n: usize) -> Json {
    Json::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `sluice topic list --json`.
pub(crate) fn render_list_json(topics: &[TopicInfo]) -> String {
    Json::Array(
        topics
            .iter()
            .map(|t| {
                Json::object([
                    ("name", Json::str(&t.name)),
                    ("topic_id", Json::opt_str(t.topic_id.as_deref())),
                    ("internal", Json::Bool(t.internal)),
                    ("partitions", count(t.partitions.len())),
                    ("replication_factor", t.replication_factor().map_or(Json::Null, count)),
                ])
            })
            .collect(),
    )
    .render()
}

/// `sluice topic describe`: a topic table, then a partition table (only the partition
/// table with a filter, as `kafka-topics.sh` does).
pub(crate) fn render_describe(description: &Description, filter: Filter) -> String {
    let mut out = String::new();
    if filter == Filter::All {
        let rows: Vec<Vec<String>> = description
            .topics
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    opt_dash(t.topic_id.as_deref()),
                    t.partitions.len().to_string(),
                    opt_dash(t.replication_factor()),
                    configs_text(&t.configs),
                ]
            })
            .collect();
        let headers = ["TOPIC", "TOPIC-ID", "PARTITIONS", "REPLICATION-FACTOR", "CONFIGS"];
        out.push_str(&table(&headers, &rows));
        out.push('\n');
    }
    let live = &description.live_brokers;
    let rows: Vec<Vec<String>> = description
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t, p)))
        .filter(|(_, p)| filter.keeps(p, live))
        .map(|(t, p)| {
            vec![
                t.name.clone(),
                p.partition.to_string(),
                opt_dash(p.leader),
                id_list(&p.replicas),
                id_list(&p.isr),
                id_list(&p.offline),
            ]
        })
        .collect();
    out.push_str(&table(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR", "OFFLINE"], &rows));
    out
}

/// `sluice topic describe --json`.
pub(crate) fn render_describe_json(description: &Description, filter: Filter) -> String {
    let live = &description.live_brokers;
    Json::Array(
        description
            .topics
            .iter()
            .filter_map(|t| {
                let partitions: Vec<Json> = t
                    .partitions
                    .iter()
                    .filter(|p| filter.keeps(p, live))
                    .map(|p| {
                        Json::object([
                            ("partition", Json::Int(p.partition.into())),
                            ("leader", Json::opt_int(p.leader.map(i64::from))),
                            ("leader_epoch", Json::Int(p.leader_epoch.into())),
                            ("replicas", Json::ids(&p.replicas)),
                            ("isr", Json::ids(&p.isr)),
                            ("offline", Json::ids(&p.offline)),
                        ])
                    })
                    .collect();
                if filter != Filter::All && partitions.is_empty() {
                    return None;
                }
                let configs = t
                    .configs
                    .iter()
                    .map(|(name, value)| (name.clone(), Json::opt_str(value.as_deref())))
                    .collect();
                Some(Json::object([
                    ("name", Json::str(&t.name)),
                    ("topic_id", Json::opt_str(t.topic_id.as_deref())),
                    ("internal", Json::Bool(t.internal)),
                    ("partition_count", count(t.partitions.len())),
                    ("replication_factor", t.replication_factor().map_or(Json::Null, count)),
                    ("configs", Json::Object(configs)),
                    ("partitions", Json::Array(partitions)),
                ]))
            })
            .collect(),
    )
    .render()
}

/// `sluice topic reassign --list`: TOPIC PARTITION REPLICAS ADDING REMOVING.
pub(crate) fn render_reassignments(ongoing: &[Reassignment]) -> String {
    let rows: Vec<Vec<String>> = ongoing
        .iter()
        .map(|r| {
            vec![
                r.topic.clone(),
                r.partition.to_string(),
                id_list(&r.replicas),
                id_list(&r.adding),
                id_list(&r.removing),
            ]
        })
        .collect();
    table(&["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"], &rows)
}

pub(crate) fn render_reassignments_json(ongoing: &[Reassignment]) -> String {
    Json::Array(
        ongoing
            .iter()
            .map(|r| {
                Json::object([
                    ("topic", Json::str(&r.topic)),
                    ("partition", Json::Int(r.partition.into())),
                    ("replicas", Json::ids(&r.replicas)),
                    ("adding_replicas", Json::ids(&r.adding)),
                    ("removing_replicas", Json::ids(&r.removing)),
                ])
            })
            .collect(),
    )
    .render()
}

/// `sluice topic elect-leaders`: TOPIC PARTITION RESULT MESSAGE.
pub(crate) fn render_elections(results: &[ElectionResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.topic.clone(),
                r.partition.to_string(),
                r.result(),
                opt_dash(r.message.as_deref().filter(|m| !m.is_empty())),
            ]
        })
        .collect();
    table(&["TOPIC", "PARTITION", "RESULT", "MESSAGE"], &rows)
}

pub(crate) fn render_elections_json(results: &[ElectionResult]) -> String {
    Json::Array(
        results
            .iter()
            .map(|r| {
                Json::object([
                    ("topic", Json::str(&r.topic)),
                    ("partition", Json::Int(r.partition.into())),
                    ("result", Json::Str(r.result())),
                    ("message", Json::opt_str(r.message.as_deref())),
                ])
            })
            .collect(),
    )
    .render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn assignments_and_configs_parse_as_kafka_writes_them() {
        assert_eq!(parse_assignment("1:2:3,2:3:1").unwrap(), [vec![1, 2, 3], vec![2, 3, 1]]);
        assert_eq!(parse_assignment("4").unwrap(), [vec![4]]);
        assert!(parse_assignment("1:x").unwrap_err().contains("\"x\" is not a broker id"));
        assert_eq!(parse_key_value("a.b=c=d").unwrap(), ("a.b".to_string(), "c=d".to_string()));
        assert_eq!(parse_key_value("empty=").unwrap(), ("empty".to_string(), String::new()));
        assert!(parse_key_value("=v").is_err());
        assert!(parse_key_value("novalue").is_err());
    }

    fn partition(index: i32, leader: Option<i32>, replicas: &[i32], isr: &[i32]) -> PartitionInfo {
        PartitionInfo {
            partition: index,
            leader,
            leader_epoch: 3,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            offline: Vec::new(),
        }
    }

    fn sample() -> Description {
        let topic = TopicInfo {
            name: "orders".to_string(),
            topic_id: Some("AAAAAAAAAAAAAAAAAAAAAQ".to_string()),
            internal: false,
            partitions: vec![
                partition(0, Some(1), &[1, 2, 3], &[1, 2, 3]),
                partition(1, Some(2), &[2, 3, 1], &[2, 3]),
                partition(2, None, &[3, 1, 2], &[]),
                partition(3, Some(4), &[4], &[4]),
            ],
            configs: vec![
                ("retention.ms".to_string(), Some("1000".to_string())),
                ("sasl.secret".to_string(), None),
            ],
        };
        Description { topics: vec![topic], live_brokers: [1, 2, 3].into_iter().collect() }
    }

    /// The cells of the rows under the header whose first words are `header`'s.
    fn rows(text: &str, header: &str) -> Vec<Vec<String>> {
        let words: Vec<&str> = header.split_whitespace().collect();
        text.lines()
            .skip_while(|l| !l.split_whitespace().collect::<Vec<_>>().starts_with(&words))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    }

    #[test]
    fn describe_shows_topics_then_partitions() {
        let text = render_describe(&sample(), Filter::All);
        assert_eq!(
            rows(&text, "TOPIC TOPIC-ID"),
            [[
                "orders",
                "AAAAAAAAAAAAAAAAAAAAAQ",
                "4",
                "3",
                "retention.ms=1000,sasl.secret=<sensitive>"
            ]]
        );
        assert_eq!(
            rows(&text, "TOPIC PARTITION"),
            [
                ["orders", "0", "1", "1,2,3", "1,2,3", "-"],
                ["orders", "1", "2", "2,3,1", "2,3", "-"],
                ["orders", "2", "-", "3,1,2", "-", "-"],
                ["orders", "3", "4", "4", "4", "-"],
            ]
        );
    }

    #[test]
    fn describe_filters_keep_only_the_matching_partitions() {
        let partitions = |filter| {
            let text = render_describe(&sample(), filter);
            assert!(!text.contains("TOPIC-ID"), "no topic table with a filter: {text}");
            rows(&text, "TOPIC").into_iter().map(|r| r[1].clone()).collect::<Vec<_>>()
        };
        assert_eq!(partitions(Filter::UnderReplicated), ["1", "2"]);
        // No leader, or a leader (4) that is not a live broker.
        assert_eq!(partitions(Filter::Unavailable), ["2", "3"]);
        let json = render_describe_json(&sample(), Filter::Unavailable);
        assert_eq!(json.matches("\"partition\":").count(), 2, "{json}");
        assert!(json.contains("\"leader\": null"), "{json}");
        assert!(json.contains("\"sasl.secret\": null"), "{json}");
        let mut healthy = sample();
        healthy.topics[0].partitions.truncate(1);
        assert_eq!(render_describe_json(&healthy, Filter::UnderReplicated), "[]\n");
    }

    #[test]
    fn election_results_name_kafkas_errors() {
        let result = |code, message: Option<&str>| ElectionResult {
            topic: "t".to_string(),
            partition: 0,
            error_code: code,
            message: message.map(String::from),
        };
        let text = render_elections(&[
            result(0, None),
            result(code::ELECTION_NOT_NEEDED, Some("")),
            result(80, Some("not in the ISR")), // PREFERRED_LEADER_NOT_AVAILABLE
        ]);
        let rows = rows(&text, "TOPIC");
        assert_eq!(rows[0], ["t", "0", "ELECTED", "-"]);
        assert_eq!(rows[1], ["t", "0", "ELECTION_NOT_NEEDED", "-"]);
        assert_eq!(
            rows[2],
            ["t", "0", "PREFERRED_LEADER_NOT_AVAILABLE", "not", "in", "the", "ISR"]
        );
    }

    #[test]
    fn every_verb_parses_its_flags() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            topic: TopicArgs,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(["topic"].iter().chain(args));
        let cli = parse(&["create", "t", "-p", "3", "-r", "1", "--config", "a=b", "-b", "h:1"]);
        let cli = cli.unwrap();
        assert_eq!(cli.topic.brokers.given(), Some("h:1"));
        assert!(parse(&["create", "t", "-p", "3", "--replica-assignment", "1:2"]).is_err());
        assert!(parse(&["--brokers", "h:1", "list", "--include-internal"]).is_ok());
        assert!(parse(&["delete"]).is_err(), "at least one topic");
        assert!(parse(&["alter", "t"]).is_err(), "--partitions is required");
        assert!(parse(&["alter-config", "t"]).is_err(), "--set or --delete");
        assert!(parse(&["alter-config", "t", "--delete", "a", "--set", "b=c"]).is_ok());
        assert!(parse(&["reassign", "--list"]).is_ok());
        assert!(parse(&["reassign", "--list", "--cancel"]).is_err());
        assert!(parse(&["reassign", "--topic", "t", "--replicas", "1,2"]).is_err(), "partition");
        let cli = parse(&["reassign", "--topic", "t", "--partition", "0", "--replicas", "3,1,2"]);
        let TopicCommand::Reassign(args) = cli.unwrap().topic.command else { panic!() };
        assert_eq!(args.replicas, [3, 1, 2]);
        assert!(parse(&["reassign", "--topic", "t", "--partition", "0", "--cancel"]).is_ok());
        assert!(parse(&["elect-leaders", "--partition", "0"]).is_err(), "needs --topic");
        let cli = parse(&["elect-leaders", "--topic", "t", "--type", "unclean"]).unwrap();
        let TopicCommand::ElectLeaders(args) = cli.topic.command else { panic!() };
        assert_eq!(args.election_type, ElectionType::Unclean);
        assert!(parse(&["describe", "--under-replicated-partitions", "--unavailable-partitions"])
            .is_err());
    }
}
