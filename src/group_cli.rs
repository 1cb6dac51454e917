//! `sluice group`: consumer group administration over the Kafka protocol, like Kafka's
//! `kafka-consumer-groups.sh` (list, describe with lag, delete). Works against any broker
//! that serves the group APIs, Sluice or Kafka.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use crate::output::{opt_dash, table, write_json_string};
use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetFetchRequest,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Message, StrBytes};

use crate::client::{broker_address, error_name, Client, KafkaError, Pool};

const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

// Versions this client speaks, per API (inclusive); the broker's range narrows them.
const LIST_GROUPS_VERSIONS: (i16, i16) = (0, 5);
const FIND_COORDINATOR_VERSIONS: (i16, i16) = (0, 4);
const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (0, 6);
/// From v2 `topics = null` fetches every topic; from v8 requests are per group.
const OFFSET_FETCH_VERSIONS: (i16, i16) = (2, 9);
/// From v4 topics are never created by asking (and from v1 an empty topic list means no
/// topics, not all).
const METADATA_VERSIONS: (i16, i16) = (4, 12);
const LIST_OFFSETS_VERSIONS: (i16, i16) = (1, 10);
const DELETE_GROUPS_VERSIONS: (i16, i16) = (0, 2);

/// Error codes this module treats specially.
mod code {
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
}

/// How often a coordinator lookup is retried while the coordinator moves or loads.
const COORDINATOR_ATTEMPTS: u32 = 8;

/// `sluice group`: list, describe and delete consumer groups.
#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, clap::Subcommand)]
enum GroupCommand {
    /// List the consumer groups of the cluster: group id, state and protocol type.
    ///
    /// Asks every broker of the cluster (ListGroups) and prints one line per group,
    /// sorted by group id. Empty fields (brokers before ListGroups v4 report no state)
    /// print as '-'.
    List(ListArgs),
    /// Describe one consumer group: committed offsets, log end offsets and lag.
    ///
    /// Prints one row per partition that has a committed offset or is assigned to a
    /// member, sorted by topic and partition, like `kafka-consumer-groups.sh --describe`:
    /// GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID.
    /// '-' marks what is unknown: no committed offset (CURRENT-OFFSET and LAG), no owner
    /// (CONSUMER-ID, HOST, CLIENT-ID), a log end offset the leader could not give.
    ///
    /// With --members, one row per member instead: CONSUMER-ID HOST CLIENT-ID
    /// #PARTITIONS ASSIGNMENT.
    ///
    /// Fails (exit status 1) when the group does not exist.
    Describe(DescribeArgs),
    /// Delete a consumer group and its committed offsets.
    ///
    /// The group must have no active members (Kafka error NON_EMPTY_GROUP otherwise):
    /// stop its consumers first.
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
struct Connection {
    /// The broker to connect to first (any broker of the cluster).
    #[arg(long, short = 'b', value_name = "HOST:PORT", default_value = DEFAULT_BOOTSTRAP)]
    bootstrap_server: String,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    connection: Connection,
    /// Print a JSON array of {"group_id", "state", "protocol_type"} objects instead.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DescribeArgs {
    /// The group id.
    group: String,
    #[command(flatten)]
    connection: Connection,
    /// One row per member (CONSUMER-ID HOST CLIENT-ID #PARTITIONS ASSIGNMENT) instead of
    /// one per partition.
    #[arg(long)]
    members: bool,
    /// Print the whole description as one JSON object instead: group_id, coordinator,
    /// state, protocol_type, protocol, members (with their assignments) and partitions
    /// (with offsets and lag; null where unknown), with or without --members.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    /// The group id.
    group: String,
    #[command(flatten)]
    connection: Connection,
}

/// Runs `sluice group ...`: results on stdout, warnings on stderr.
pub(crate) fn run(args: GroupArgs) -> anyhow::Result<()> {
    let output = match args.command {
        GroupCommand::List(args) => {
            let groups = list(&args.connection.bootstrap_server)?;
            if args.json {
                render_list_json(&groups)
            } else {
                render_list_table(&groups)
            }
        }
        GroupCommand::Describe(args) => {
            let description = describe(&args.connection.bootstrap_server, &args.group)?;
            for warning in &description.warnings {
                eprintln!("warning: {warning}");
            }
            if args.json {
                render_json(&description)
            } else if args.members {
                render_members_table(&description)
            } else {
                render_table(&description)
            }
        }
        GroupCommand::Delete(args) => {
            delete(&args.connection.bootstrap_server, &args.group)?;
            format!("Deletion of consumer group '{}' was successful.\n", args.group)
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(output.as_bytes()).and_then(|()| stdout.flush()) {
        // `sluice group list | head`: not an error.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

// ---------------------------------------------------------------------------------------
// The data

/// One group of `sluice group list`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupListing {
    pub group_id: String,
    /// Empty when the broker does not say (ListGroups before v4).
    pub state: String,
    pub protocol_type: String,
}

/// The broker coordinating a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Coordinator {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

impl Coordinator {
    fn address(&self) -> String {
        broker_address(&self.host, self.port)
    }
}

/// A group member, from DescribeGroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The partitions assigned, by topic (sorted); `None` when not known: not a
    /// "consumer" protocol group, or an assignment that does not decode.
    pub assignment: Option<Vec<TopicAssignment>>,
}

impl Member {
    fn partition_count(&self) -> Option<usize> {
        self.assignment.as_ref().map(|topics| topics.iter().map(|t| t.partitions.len()).sum())
    }
}

/// The partitions of one topic assigned to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicAssignment {
    pub topic: String,
    pub partitions: Vec<i32>,
}

/// One row of `sluice group describe`: a partition with a committed offset or an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; `None`: none committed.
    pub current_offset: Option<i64>,
    /// The partition's log end offset (latest); `None`: unknown.
    pub log_end_offset: Option<i64>,
    /// The member owning the partition, if any.
    pub consumer_id: Option<String>,
    pub host: Option<String>,
    pub client_id: Option<String>,
}

impl PartitionRow {
    /// LOG-END-OFFSET - CURRENT-OFFSET when both are known (as Kafka computes it).
    pub(crate) fn lag(&self) -> Option<i64> {
        Some(self.log_end_offset? - self.current_offset?)
    }
}

/// Everything `sluice group describe` shows about a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDescription {
    pub group_id: String,
    pub coordinator: Coordinator,
    pub state: String,
    pub protocol_type: String,
    /// The chosen protocol (the partition assignor, for consumers).
    pub protocol: String,
    pub members: Vec<Member>,
    /// Sorted by topic, then partition.
    pub partitions: Vec<PartitionRow>,
    /// What could not be learned (partition-level errors), for stderr.
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// The requests

/// Offsets by (topic, partition).
type Offsets = BTreeMap<(String, i32), i64>;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The brokers of the cluster, by the bootstrap broker's Metadata (no topics).
fn cluster_brokers(pool: &mut Pool, bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let client = pool.get(bootstrap)?;
    let version = client.version::<MetadataRequest>(METADATA_VERSIONS)?;
    let response = client.request(version, &metadata_request(&[], version))?;
    Ok(response
        .brokers
        .iter()
        .map(|broker| broker_address(broker.host.as_str(), broker.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect())
}

/// A Metadata request for `topics` (none: just the brokers), never creating topics.
fn metadata_request(topics: &[&str], version: i16) -> MetadataRequest {
    let mut request = MetadataRequest::default();
    request.topics = Some(
        topics
            .iter()
            .map(|name| {
                let mut topic = MetadataRequestTopic::default();
                topic.name = Some(TopicName(str_bytes(name)));
                topic
            })
            .collect(),
    );
    // Before v4 the field does not exist (creation follows the broker's setting); the
    // versions negotiated start at 4, but the encoder refuses `false` below it.
    request.allow_auto_topic_creation = version < 4;
    request
}

/// Every consumer group of the cluster, sorted by group id.
pub(crate) fn list(bootstrap: &str) -> anyhow::Result<Vec<GroupListing>> {
    let mut pool = Pool::default();
    let brokers = cluster_brokers(&mut pool, bootstrap)?;
    // One broker: the one we are talking to (whatever address it advertises).
    let addresses = if brokers.len() <= 1 { vec![bootstrap.to_string()] } else { brokers };
    let mut groups = BTreeMap::new();
    for address in &addresses {
        let client = pool.get(address)?;
        let (response, _) =
            client.negotiated(LIST_GROUPS_VERSIONS, &ListGroupsRequest::default())?;
        KafkaError::check(format!("ListGroups on broker {address}"), response.error_code, None)?;
        for group in response.groups {
            let listing = GroupListing {
                group_id: group.group_id.as_str().to_string(),
                state: group.group_state.as_str().to_string(),
                protocol_type: group.protocol_type.as_str().to_string(),
            };
            groups.insert(listing.group_id.clone(), listing);
        }
    }
    Ok(groups.into_values().collect())
}

/// FindCoordinator (key type 0: group) on the bootstrap broker.
fn find_coordinator(client: &mut Client, group: &str) -> anyhow::Result<Coordinator> {
    let version = client.version::<FindCoordinatorRequest>(FIND_COORDINATOR_VERSIONS)?;
    let mut request = FindCoordinatorRequest::default();
    request.key_type = 0;
    if version >= 4 {
        request.coordinator_keys = vec![str_bytes(group)];
    } else {
        request.key = str_bytes(group);
    }
    let response = client.request(version, &request)?;
    let context = format!("FindCoordinator for group '{group}'");
    let (error_code, error_message, node_id, host, port) = if version >= 4 {
        let coordinator = response
            .coordinators
            .into_iter()
            .find(|c| c.key.as_str() == group)
            .with_context(|| format!("{context}: the answer does not name the group"))?;
        (
            coordinator.error_code,
            coordinator.error_message,
            coordinator.node_id,
            coordinator.host,
            coordinator.port,
        )
    } else {
        (
            response.error_code,
            response.error_message,
            response.node_id,
            response.host,
            response.port,
        )
    };
    KafkaError::check(context, error_code, error_message.as_ref())?;
    Ok(Coordinator { node_id: node_id.0, host: host.as_str().to_string(), port })
}

/// An error code worth asking for the coordinator again: it moved or is loading.
fn is_coordinator_code(error_code: i16) -> bool {
    matches!(
        error_code,
        code::COORDINATOR_LOAD_IN_PROGRESS
            | code::COORDINATOR_NOT_AVAILABLE
            | code::NOT_COORDINATOR
    )
}

/// An error worth asking for the coordinator again.
fn is_coordinator_error(error: &anyhow::Error) -> bool {
    error.downcast_ref::<KafkaError>().is_some_and(|e| is_coordinator_code(e.code))
}

/// Runs `work` against the group's coordinator, finding it again (with a backoff) while
/// the answers are coordinator errors.
fn with_coordinator<T>(
    pool: &mut Pool,
    bootstrap: &str,
    group: &str,
    mut work: impl FnMut(&mut Client, &Coordinator) -> anyhow::Result<T>,
) -> anyhow::Result<(Coordinator, T)> {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let result = find_coordinator(pool.get(bootstrap)?, group).and_then(|coordinator| {
            let client = pool.get(&coordinator.address())?;
            let value = work(client, &coordinator)?;
            Ok((coordinator, value))
        });
        match result {
            Err(error) if attempt < COORDINATOR_ATTEMPTS && is_coordinator_error(&error) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                attempt += 1;
            }
            Err(error) if attempt > 1 && is_coordinator_error(&error) => {
                return Err(error.context(format!("still failing after {attempt} attempts")));
            }
            result => return result,
        }
    }
}

/// The error for a group that does not exist.
fn no_such_group(group: &str) -> anyhow::Error {
    anyhow::anyhow!("consumer group '{group}' does not exist")
}

/// DescribeGroups for one group: its state, protocol and members.
fn describe_group(
    client: &mut Client,
    group: &str,
) -> anyhow::Result<kafka_protocol::messages::describe_groups_response::DescribedGroup> {
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(str_bytes(group))];
    let (response, _) = client.negotiated(DESCRIBE_GROUPS_VERSIONS, &request)?;
    let described = response
        .groups
        .into_iter()
        .find(|g| g.group_id.as_str() == group)
        .with_context(|| format!("DescribeGroups: the answer does not name group '{group}'"))?;
    if described.error_code == code::GROUP_ID_NOT_FOUND {
        return Err(no_such_group(group));
    }
    KafkaError::check(
        format!("DescribeGroups for group '{group}'"),
        described.error_code,
        described.error_message.as_ref(),
    )?;
    // Before DescribeGroups v6, a group that does not exist is described as "Dead".
    if described.group_state.as_str() == "Dead" {
        return Err(no_such_group(group));
    }
    Ok(described)
}

/// The group's committed offsets (OffsetFetch, all topics), and warnings for partitions
/// the coordinator answered with an error.
fn fetch_offsets(client: &mut Client, group: &str) -> anyhow::Result<(Offsets, Vec<String>)> {
    let version = client.version::<OffsetFetchRequest>(OFFSET_FETCH_VERSIONS)?;
    let mut request = OffsetFetchRequest::default();
    if version >= 8 {
        let mut fetch = OffsetFetchRequestGroup::default();
        fetch.group_id = GroupId(str_bytes(group));
        fetch.topics = None;
        request.groups = vec![fetch];
    } else {
        request.group_id = GroupId(str_bytes(group));
        request.topics = None;
    }
    let response = client.request(version, &request)?;
    let context = format!("OffsetFetch for group '{group}'");
    // (topic, partition, committed offset, error code), from either layout.
    let mut partitions: Vec<(String, i32, i64, i16)> = Vec::new();
    if version >= 8 {
        let answer = response
            .groups
            .into_iter()
            .find(|g| g.group_id.as_str() == group)
            .with_context(|| format!("{context}: the answer does not name the group"))?;
        KafkaError::check(&context, answer.error_code, None)?;
        for topic in answer.topics {
            for p in topic.partitions {
                let name = topic.name.as_str().to_string();
                partitions.push((name, p.partition_index, p.committed_offset, p.error_code));
            }
        }
    } else {
        KafkaError::check(&context, response.error_code, None)?;
        for topic in response.topics {
            for p in topic.partitions {
                let name = topic.name.as_str().to_string();
                partitions.push((name, p.partition_index, p.committed_offset, p.error_code));
            }
        }
    }
    let mut committed = BTreeMap::new();
    let mut warnings = Vec::new();
    for (topic, partition, offset, error_code) in partitions {
        if error_code != 0 {
            warnings.push(format!(
                "no committed offset for {topic}-{partition}: Kafka error {error_code} ({})",
                error_name(error_code)
            ));
        } else if offset >= 0 {
            committed.insert((topic, partition), offset);
        }
    }
    Ok((committed, warnings))
}

/// The log end offsets of `wanted` partitions: Metadata (on the bootstrap broker) for
/// their leaders, then ListOffsets (latest) on each leader. Partitions without an answer
/// are left out, with a warning.
fn log_end_offsets(
    pool: &mut Pool,
    bootstrap: &str,
    wanted: &BTreeMap<String, BTreeSet<i32>>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let mut offsets = HashMap::new();
    if wanted.is_empty() {
        return Ok(offsets);
    }
    let topics: Vec<&str> = wanted.keys().map(String::as_str).collect();
    let client = pool.get(bootstrap)?;
    let version = client.version::<MetadataRequest>(METADATA_VERSIONS)?;
    let metadata: MetadataResponse =
        client.request(version, &metadata_request(&topics, version))?;
    let brokers: HashMap<i32, String> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, broker_address(b.host.as_str(), b.port)))
        .collect();
    // Leader address -> topic -> partitions.
    let mut by_leader: BTreeMap<String, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    let mut located = BTreeSet::new();
    for topic in &metadata.topics {
        let Some(name) = topic.name.as_ref().map(|n| n.as_str().to_string()) else { continue };
        let Some(partitions) = wanted.get(&name) else { continue };
        if topic.error_code != 0 {
            warnings.push(format!(
                "no log end offsets for topic {name}: Kafka error {} ({})",
                topic.error_code,
                error_name(topic.error_code)
            ));
            located.extend(partitions.iter().map(|&p| (name.clone(), p)));
            continue;
        }
        for partition in &topic.partitions {
            let index = partition.partition_index;
            if !partitions.contains(&index) {
                continue;
            }
            located.insert((name.clone(), index));
            let leader = brokers.get(&partition.leader_id.0);
            match (partition.error_code, leader) {
                (0, Some(address)) => by_leader
                    .entry(address.clone())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push(index),
                (0, None) => warnings.push(format!("no leader known for {name}-{index}")),
                (error_code, _) => warnings.push(format!(
                    "no log end offset for {name}-{index}: Kafka error {error_code} ({})",
                    error_name(error_code)
                )),
            }
        }
    }
    for (topic, partitions) in wanted {
        for &partition in partitions {
            if !located.contains(&(topic.clone(), partition)) {
                warnings.push(format!("partition {topic}-{partition} is not in the metadata"));
            }
        }
    }
    for (leader, topics) in by_leader {
        let mut request = ListOffsetsRequest::default();
        request.replica_id = (-1).into();
        request.timeout_ms = 30_000;
        request.topics = topics
            .into_iter()
            .map(|(name, partitions)| {
                let mut topic = ListOffsetsTopic::default();
                topic.name = TopicName(str_bytes(&name));
                topic.partitions = partitions
                    .into_iter()
                    .map(|index| {
                        let mut partition = ListOffsetsPartition::default();
                        partition.partition_index = index;
                        partition.timestamp = -1; // latest
                        partition
                    })
                    .collect();
                topic
            })
            .collect();
        let client = pool.get(&leader)?;
        let (response, _) = client.negotiated(LIST_OFFSETS_VERSIONS, &request)?;
        for topic in response.topics {
            let name = topic.name.as_str().to_string();
            for p in topic.partitions {
                if p.error_code != 0 {
                    warnings.push(format!(
                        "no log end offset for {name}-{}: Kafka error {} ({})",
                        p.partition_index,
                        p.error_code,
                        error_name(p.error_code)
                    ));
                } else if p.offset >= 0 {
                    offsets.insert((name.clone(), p.partition_index), p.offset);
                }
            }
        }
    }
    Ok(offsets)
}

/// The partitions in a consumer-protocol member assignment: an i16 version, then a
/// `ConsumerProtocolAssignment` of that version. Empty bytes: nothing assigned (yet).
pub(crate) fn decode_assignment(bytes: &Bytes) -> anyhow::Result<Vec<TopicAssignment>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        bail!("assignment of {} byte(s) has no version", buf.remaining());
    }
    let version = buf.get_i16();
    if version < 0 {
        bail!("assignment has a negative version {version}");
    }
    // Newer versions only append fields: read what we know, as Kafka's consumers do.
    let known = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, known)
        .with_context(|| format!("malformed assignment (version {version})"))?;
    let mut topics: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for topic in assignment.assigned_partitions {
        topics.entry(topic.topic.as_str().to_string()).or_default().extend(topic.partitions);
    }
    Ok(topics
        .into_iter()
        .map(|(topic, partitions)| TopicAssignment {
            topic,
            partitions: partitions.into_iter().collect(),
        })
        .collect())
}

/// The rows of `describe`: every partition committed or assigned, sorted by topic and
/// partition.
pub(crate) fn build_rows(
    members: &[Member],
    committed: &Offsets,
    log_end: &HashMap<(String, i32), i64>,
) -> Vec<PartitionRow> {
    let mut owners: BTreeMap<(String, i32), &Member> = BTreeMap::new();
    for member in members {
        for topic in member.assignment.iter().flatten() {
            for &partition in &topic.partitions {
                owners.insert((topic.topic.clone(), partition), member);
            }
        }
    }
    let keys: BTreeSet<&(String, i32)> = committed.keys().chain(owners.keys()).collect();
    keys.into_iter()
        .map(|key| {
            let owner = owners.get(key);
            PartitionRow {
                topic: key.0.clone(),
                partition: key.1,
                current_offset: committed.get(key).copied(),
                log_end_offset: log_end.get(key).copied(),
                consumer_id: owner.map(|m| m.member_id.clone()),
                host: owner.map(|m| m.client_host.clone()),
                client_id: owner.map(|m| m.client_id.clone()),
            }
        })
        .collect()
}

/// Everything about one group: its coordinator's DescribeGroups and OffsetFetch, then the
/// log end offsets of the partitions involved from their leaders.
pub(crate) fn describe(bootstrap: &str, group: &str) -> anyhow::Result<GroupDescription> {
    let mut pool = Pool::default();
    let (coordinator, (described, (committed, mut warnings))) =
        with_coordinator(&mut pool, bootstrap, group, |client, _| {
            let described = describe_group(client, group)?;
            let offsets = fetch_offsets(client, group)?;
            Ok((described, offsets))
        })?;
    let protocol_type = described.protocol_type.as_str().to_string();
    let members: Vec<Member> = described
        .members
        .iter()
        .map(|m| {
            let member_id = m.member_id.as_str().to_string();
            let assignment = if protocol_type == "consumer" {
                match decode_assignment(&m.member_assignment) {
                    Ok(assignment) => Some(assignment),
                    Err(error) => {
                        warnings.push(format!("member {member_id}: {error:#}"));
                        None
                    }
                }
            } else {
                None
            };
            Member {
                member_id,
                group_instance_id: m.group_instance_id.as_ref().map(|id| id.as_str().to_string()),
                client_id: m.client_id.as_str().to_string(),
                client_host: m.client_host.as_str().to_string(),
                assignment,
            }
        })
        .collect();
    let mut wanted: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (topic, partition) in committed.keys() {
        wanted.entry(topic.clone()).or_default().insert(*partition);
    }
    for topic in members.iter().flat_map(|m| m.assignment.iter().flatten()) {
        wanted.entry(topic.topic.clone()).or_default().extend(topic.partitions.iter().copied());
    }
    let log_end = log_end_offsets(&mut pool, bootstrap, &wanted, &mut warnings)?;
    let partitions = build_rows(&members, &committed, &log_end);
    Ok(GroupDescription {
        group_id: group.to_string(),
        coordinator,
        state: described.group_state.as_str().to_string(),
        protocol_type,
        protocol: described.protocol_data.as_str().to_string(),
        members,
        partitions,
        warnings,
    })
}

/// Deletes a group (DeleteGroups on its coordinator).
pub(crate) fn delete(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut pool = Pool::default();
    let (_, error_code) = with_coordinator(&mut pool, bootstrap, group, |client, _| {
        let mut request = DeleteGroupsRequest::default();
        request.groups_names = vec![GroupId(str_bytes(group))];
        let (response, _) = client.negotiated(DELETE_GROUPS_VERSIONS, &request)?;
        let result =
            response.results.into_iter().find(|r| r.group_id.as_str() == group).with_context(
                || format!("DeleteGroups: the answer does not name group '{group}'"),
            )?;
        // Coordinator errors go back to `with_coordinator` for a retry.
        if is_coordinator_code(result.error_code) {
            let context = format!("DeleteGroups for group '{group}'");
            return Err(KafkaError::new(context, result.error_code, None).into());
        }
        Ok(result.error_code)
    })?;
    match error_code {
        0 => Ok(()),
        code::GROUP_ID_NOT_FOUND => Err(no_such_group(group)),
        code::NON_EMPTY_GROUP => bail!(
            "consumer group '{group}' is not empty: it has active members (stop its consumers \
             first; Kafka error {} NON_EMPTY_GROUP)",
            code::NON_EMPTY_GROUP
        ),
        error_code => {
            Err(KafkaError::new(format!("DeleteGroups for group '{group}'"), error_code, None)
                .into())
        }
    }
}

// ---------------------------------------------------------------------------------------
// The output

fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_string()
    } else {
        value.to_string()
    }
}

/// `sluice group list`: GROUP STATE PROTOCOL-TYPE.
pub(crate) fn render_list_table(groups: &[GroupListing]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group_id.clone(), or_dash(&g.state), or_dash(&g.protocol_type)])
        .collect();
    table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &rows)
}

/// Notes above a describe table: no members, rebalancing.
fn describe_notes(description: &GroupDescription) -> String {
    let group = &description.group_id;
    let mut notes = String::new();
    if matches!(description.state.as_str(), "PreparingRebalance" | "CompletingRebalance") {
        notes.push_str(&format!("Warning: consumer group '{group}' is rebalancing.\n\n"));
    }
    if description.members.is_empty() {
        notes.push_str(&format!("Consumer group '{group}' has no active members.\n\n"));
    }
    notes
}

/// `sluice group describe`: one row per partition.
pub(crate) fn render_table(description: &GroupDescription) -> String {
    let rows: Vec<Vec<String>> = description
        .partitions
        .iter()
        .map(|row| {
            vec![
                description.group_id.clone(),
                row.topic.clone(),
                row.partition.to_string(),
                opt_dash(row.current_offset),
                opt_dash(row.log_end_offset),
                opt_dash(row.lag()),
                opt_dash(row.consumer_id.as_deref()),
                opt_dash(row.host.as_deref()),
                opt_dash(row.client_id.as_deref()),
            ]
        })
        .collect();
    let headers = [
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ];
    describe_notes(description) + &table(&headers, &rows)
}

/// `topic(0,1), other(2)`; `-` for none or unknown.
fn assignment_text(assignment: Option<&[TopicAssignment]>) -> String {
    match assignment {
        Some(topics) if !topics.is_empty() => topics
            .iter()
            .map(|t| {
                let partitions: Vec<String> = t.partitions.iter().map(i32::to_string).collect();
                format!("{}({})", t.topic, partitions.join(","))
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".to_string(),
    }
}

/// `sluice group describe --members`: one row per member.
pub(crate) fn render_members_table(description: &GroupDescription) -> String {
    let rows: Vec<Vec<String>> = description
        .members
        .iter()
        .map(|m| {
            vec![
                description.group_id.clone(),
                or_dash(&m.member_id),
                or_dash(&m.client_host),
                or_dash(&m.client_id),
                opt_dash(m.partition_count()),
                assignment_text(m.assignment.as_deref()),
            ]
        })
        .collect();
    let headers = ["GROUP", "CONSUMER-ID", "HOST", "CLIENT-ID", "#PARTITIONS", "ASSIGNMENT"];
    describe_notes(description) + &table(&headers, &rows)
}

/// A JSON value, for output only.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Int(i64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    fn str(s: &str) -> Json {
        Json::Str(s.to_string())
    }

    fn opt_str(s: Option<&str>) -> Json {
        s.map_or(Json::Null, Json::str)
    }

    fn opt_int(n: Option<i64>) -> Json {
        n.map_or(Json::Null, Json::Int)
    }

    /// Pretty-printed, two spaces per level.
    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Int(n) => out.push_str(&n.to_string()),
            Json::Str(s) => write_json_string(out, s),
            Json::Array(items) if items.is_empty() => out.push_str("[]"),
            Json::Object(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    push_indent(out, indent + 1);
                    item.write(out, indent + 1);
                }
                out.push('\n');
                push_indent(out, indent);
                out.push(']');
            }
            Json::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    push_indent(out, indent + 1);
                    write_json_string(out, key);
                    out.push_str(": ");
                    value.write(out, indent + 1);
                }
                out.push('\n');
                push_indent(out, indent);
                out.push('}');
            }
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.push_str(&"  ".repeat(indent));
}

/// `sluice group list --json`: `[{"group_id", "state", "protocol_type"}, ...]`.
pub(crate) fn render_list_json(groups: &[GroupListing]) -> String {
    Json::Array(
        groups
            .iter()
            .map(|g| {
                Json::Object(vec![
                    ("group_id", Json::str(&g.group_id)),
                    ("state", Json::str(&g.state)),
                    ("protocol_type", Json::str(&g.protocol_type)),
                ])
            })
            .collect(),
    )
    .render()
}

fn assignment_json(assignment: Option<&[TopicAssignment]>) -> Json {
    match assignment {
        None => Json::Null,
        Some(topics) => Json::Array(
            topics
                .iter()
                .map(|t| {
                    Json::Object(vec![
                        ("topic", Json::str(&t.topic)),
                        (
                            "partitions",
                            Json::Array(
                                t.partitions.iter().map(|&p| Json::Int(p.into())).collect(),
                            ),
                        ),
                    ])
                })
                .collect(),
        ),
    }
}

/// `sluice group describe --json`: the whole description as one object (null where
/// unknown).
pub(crate) fn render_json(description: &GroupDescription) -> String {
    let coordinator = &description.coordinator;
    let members = description
        .members
        .iter()
        .map(|m| {
            Json::Object(vec![
                ("consumer_id", Json::str(&m.member_id)),
                ("group_instance_id", Json::opt_str(m.group_instance_id.as_deref())),
                ("host", Json::str(&m.client_host)),
                ("client_id", Json::str(&m.client_id)),
                ("partition_count", Json::opt_int(m.partition_count().map(|n| n as i64))),
                ("assignment", assignment_json(m.assignment.as_deref())),
            ])
        })
        .collect();
    let partitions = description
        .partitions
        .iter()
        .map(|row| {
            Json::Object(vec![
                ("topic", Json::str(&row.topic)),
                ("partition", Json::Int(row.partition.into())),
                ("current_offset", Json::opt_int(row.current_offset)),
                ("log_end_offset", Json::opt_int(row.log_end_offset)),
                ("lag", Json::opt_int(row.lag())),
                ("consumer_id", Json::opt_str(row.consumer_id.as_deref())),
                ("host", Json::opt_str(row.host.as_deref())),
                ("client_id", Json::opt_str(row.client_id.as_deref())),
            ])
        })
        .collect();
    Json::Object(vec![
        ("group_id", Json::str(&description.group_id)),
        (
            "coordinator",
            Json::Object(vec![
                ("id", Json::Int(coordinator.node_id.into())),
                ("host", Json::str(&coordinator.host)),
                ("port", Json::Int(coordinator.port.into())),
            ]),
        ),
        ("state", Json::str(&description.state)),
        ("protocol_type", Json::str(&description.protocol_type)),
        ("protocol", Json::str(&description.protocol)),
        ("members", Json::Array(members)),
        ("partitions", Json::Array(partitions)),
    ])
    .render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<TopicAssignment> {
        topics
            .iter()
            .map(|(topic, partitions)| TopicAssignment {
                topic: topic.to_string(),
                partitions: partitions.to_vec(),
            })
            .collect()
    }

    fn member(id: &str, client: &str, topics: &[(&str, &[i32])]) -> Member {
        Member {
            member_id: id.to_string(),
            group_instance_id: None,
            client_id: client.to_string(),
            client_host: "/127.0.0.1".to_string(),
            assignment: Some(assignment(topics)),
        }
    }

    /// Two members; orders-2 assigned but never committed, payments-1 committed but not
    /// assigned, payments-0 with no known log end offset.
    fn sample() -> GroupDescription {
        let members = vec![
            member("c1-aaa", "c1", &[("orders", &[0, 1])]),
            member("c2-bbb", "c2", &[("orders", &[2]), ("payments", &[0])]),
        ];
        let committed: BTreeMap<(String, i32), i64> = [
            (("orders".to_string(), 0), 5),
            (("orders".to_string(), 1), 10),
            (("payments".to_string(), 0), 3),
            (("payments".to_string(), 1), 7),
        ]
        .into_iter()
        .collect();
        let log_end: HashMap<(String, i32), i64> = [
            (("orders".to_string(), 0), 8),
            (("orders".to_string(), 1), 10),
            (("orders".to_string(), 2), 4),
            (("payments".to_string(), 1), 9),
        ]
        .into_iter()
        .collect();
        let partitions = build_rows(&members, &committed, &log_end);
        GroupDescription {
            group_id: "g".to_string(),
            coordinator: Coordinator { node_id: 0, host: "127.0.0.1".to_string(), port: 9092 },
            state: "Stable".to_string(),
            protocol_type: "consumer".to_string(),
            protocol: "range".to_string(),
            members,
            partitions,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn rows_join_offsets_and_owners_sorted() {
        let rows = sample().partitions;
        let keys: Vec<(&str, i32)> = rows.iter().map(|r| (r.topic.as_str(), r.partition)).collect();
        assert_eq!(
            keys,
            [("orders", 0), ("orders", 1), ("orders", 2), ("payments", 0), ("payments", 1)]
        );
        let lags: Vec<Option<i64>> = rows.iter().map(PartitionRow::lag).collect();
        assert_eq!(lags, [Some(3), Some(0), None, None, Some(2)]);
        assert_eq!(rows[2].current_offset, None);
        assert_eq!(rows[2].log_end_offset, Some(4));
        assert_eq!(rows[2].consumer_id.as_deref(), Some("c2-bbb"));
        assert_eq!(rows[4].consumer_id, None);
    }

    #[test]
    fn describe_table() {
        let expected = "\
GROUP  TOPIC     PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  CONSUMER-ID  HOST        CLIENT-ID
g      orders    0          5               8               3    c1-aaa       /127.0.0.1  c1
g      orders    1          10              10              0    c1-aaa       /127.0.0.1  c1
g      orders    2          -               4               -    c2-bbb       /127.0.0.1  c2
g      payments  0          3               -               -    c2-bbb       /127.0.0.1  c2
g      payments  1          7               9               2    -            -           -
";
        assert_eq!(render_table(&sample()), expected);
    }

    #[test]
    fn members_table() {
        let mut description = sample();
        description
            .members
            .push(Member { assignment: Some(Vec::new()), ..member("c3", "c3", &[]) });
        description.members.push(Member { assignment: None, ..member("c4", "c4", &[]) });
        let expected = "\
GROUP  CONSUMER-ID  HOST        CLIENT-ID  #PARTITIONS  ASSIGNMENT
g      c1-aaa       /127.0.0.1  c1         2            orders(0,1)
g      c2-bbb       /127.0.0.1  c2         2            orders(2), payments(0)
g      c3           /127.0.0.1  c3         0            -
g      c4           /127.0.0.1  c4         -            -
";
        assert_eq!(render_members_table(&description), expected);
    }

    #[test]
    fn empty_and_rebalancing_groups_get_a_note() {
        let mut description = sample();
        description.members.clear();
        description.partitions.clear();
        description.state = "Empty".to_string();
        let expected = "Consumer group 'g' has no active members.\n\n\
            GROUP  TOPIC  PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  CONSUMER-ID  HOST  CLIENT-ID\n";
        assert_eq!(render_table(&description), expected);
        let mut description = sample();
        description.state = "PreparingRebalance".to_string();
        assert!(render_table(&description)
            .starts_with("Warning: consumer group 'g' is rebalancing.\n\nGROUP"));
    }

    #[test]
    fn list_table_and_json() {
        let groups = vec![
            GroupListing {
                group_id: "a".to_string(),
                state: "Stable".to_string(),
                protocol_type: "consumer".to_string(),
            },
            GroupListing {
                group_id: "bb\"\\\n".to_string(),
                state: String::new(),
                protocol_type: String::new(),
            },
        ];
        assert_eq!(
            render_list_table(&groups[..1]),
            "GROUP  STATE   PROTOCOL-TYPE\na      Stable  consumer\n"
        );
        let expected = r#"[
  {
    "group_id": "a",
    "state": "Stable",
    "protocol_type": "consumer"
  },
  {
    "group_id": "bb\"\\\n",
    "state": "",
    "protocol_type": ""
  }
]
"#;
        assert_eq!(render_list_json(&groups), expected);
        assert_eq!(render_list_json(&[]), "[]\n");
    }

    #[test]
    fn json_strings_escape_control_characters() {
        let mut out = String::new();
        write_json_string(&mut out, "a\u{1}\t\"é");
        assert_eq!(out, r#""a\u0001\t\"é""#);
    }

    #[test]
    fn describe_json() {
        let mut description = sample();
        description.members.truncate(1);
        description.members[0].group_instance_id = Some("static-1".to_string());
        description.members.push(Member { assignment: None, ..member("c9", "c9", &[]) });
        description.partitions.retain(|r| r.topic == "payments");
        let expected = r#"{
  "group_id": "g",
  "coordinator": {
    "id": 0,
    "host": "127.0.0.1",
    "port": 9092
  },
  "state": "Stable",
  "protocol_type": "consumer",
  "protocol": "range",
  "members": [
    {
      "consumer_id": "c1-aaa",
      "group_instance_id": "static-1",
      "host": "/127.0.0.1",
      "client_id": "c1",
      "partition_count": 2,
      "assignment": [
        {
          "topic": "orders",
          "partitions": [
            0,
            1
          ]
        }
      ]
    },
    {
      "consumer_id": "c9",
      "group_instance_id": null,
      "host": "/127.0.0.1",
      "client_id": "c9",
      "partition_count": null,
      "assignment": null
    }
  ],
  "partitions": [
    {
      "topic": "payments",
      "partition": 0,
      "current_offset": 3,
      "log_end_offset": null,
      "lag": null,
      "consumer_id": "c2-bbb",
      "host": "/127.0.0.1",
      "client_id": "c2"
    },
    {
      "topic": "payments",
      "partition": 1,
      "current_offset": 7,
      "log_end_offset": 9,
      "lag": 2,
      "consumer_id": null,
      "host": null,
      "client_id": null
    }
  ]
}
"#;
        assert_eq!(render_json(&description), expected);
    }

    /// A member assignment as consumers write it: i16 version, then the struct.
    fn encode_assignment(version: i16, topics: &[(&str, &[i32])]) -> Bytes {
        let mut assignment = ConsumerProtocolAssignment::default();
        assignment.assigned_partitions = topics
            .iter()
            .map(|(topic, partitions)| {
                let mut tp = TopicPartition::default();
                tp.topic = TopicName(str_bytes(topic));
                tp.partitions = partitions.to_vec();
                tp
            })
            .collect();
        assignment.user_data = Some(Bytes::from_static(b"user"));
        let mut buf = BytesMut::new();
        buf.put_i16(version);
        assignment.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn assignments_decode_in_every_version() {
        for version in 0..=3 {
            let bytes = encode_assignment(version, &[("t2", &[3, 1]), ("t1", &[0]), ("t2", &[2])]);
            let decoded = decode_assignment(&bytes).unwrap();
            assert_eq!(decoded, assignment(&[("t1", &[0]), ("t2", &[1, 2, 3])]), "v{version}");
        }
    }

    #[test]
    fn assignments_of_newer_versions_decode_as_the_newest_known() {
        let mut bytes = BytesMut::from(&encode_assignment(3, &[("t", &[0])])[..]);
        bytes[..2].copy_from_slice(&7i16.to_be_bytes());
        bytes.put_slice(b"fields of v7");
        assert_eq!(decode_assignment(&bytes.freeze()).unwrap(), assignment(&[("t", &[0])]));
    }

    #[test]
    fn bad_assignments_are_errors() {
        assert_eq!(decode_assignment(&Bytes::new()).unwrap(), Vec::new());
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_err());
        assert!(decode_assignment(&Bytes::from_static(&[0xff, 0xff, 0, 0])).is_err());
        let full = encode_assignment(1, &[("topic", &[0, 1, 2])]);
        for len in 2..full.len() - 4 {
            assert!(decode_assignment(&full.slice(..len)).is_err(), "truncated at {len}");
        }
        // An array length claiming 2^31 - 1 topics.
        assert!(decode_assignment(&Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])).is_err());
    }

    mod mock {
        //! A two-node fake cluster speaking just enough of the group APIs, so that the
        //! client's requests and version handling go over a real socket.

        use std::collections::HashMap;
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use bytes::{BufMut, Bytes, BytesMut};
        use kafka_protocol::messages::api_versions_response::ApiVersion;
        use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
        use kafka_protocol::messages::describe_groups_response::{
            DescribedGroup, DescribedGroupMember,
        };
        use kafka_protocol::messages::find_coordinator_response::Coordinator;
        use kafka_protocol::messages::list_groups_response::ListedGroup;
        use kafka_protocol::messages::list_offsets_response::{
            ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
        };
        use kafka_protocol::messages::metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        };
        use kafka_protocol::messages::offset_fetch_response::{
            OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
            OffsetFetchResponseTopic, OffsetFetchResponseTopics,
        };
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::{
            decode_request_header_from_buffer, Decodable, Encodable, StrBytes,
        };

        fn s(value: &str) -> StrBytes {
            StrBytes::from_string(value.to_string())
        }

        /// Which versions the fake brokers advertise.
        pub struct Profile {
            pub apis: Vec<(ApiKey, i16, i16)>,
        }

        impl Profile {
            /// Today's versions.
            pub fn new_versions() -> Profile {
                Profile {
                    apis: vec![
                        (ApiKey::ApiVersions, 0, 4),
                        (ApiKey::Metadata, 0, 12),
                        (ApiKey::ListOffsets, 1, 10),
                        (ApiKey::FindCoordinator, 0, 6),
                        (ApiKey::DescribeGroups, 0, 6),
                        (ApiKey::OffsetFetch, 0, 9),
                        (ApiKey::ListGroups, 0, 5),
                        (ApiKey::DeleteGroups, 0, 2),
                    ],
                }
            }

            /// An old broker: ApiVersions v3 unknown (answered in v0), pre-flexible
            /// FindCoordinator and OffsetFetch, DescribeGroups answering "Dead".
            pub fn old_versions() -> Profile {
                Profile {
                    apis: vec![
                        (ApiKey::ApiVersions, 0, 2),
                        (ApiKey::Metadata, 0, 4),
                        (ApiKey::ListOffsets, 0, 1),
                        (ApiKey::FindCoordinator, 0, 2),
                        (ApiKey::DescribeGroups, 0, 3),
                        (ApiKey::OffsetFetch, 0, 5),
                        (ApiKey::ListGroups, 0, 2),
                        (ApiKey::DeleteGroups, 0, 1),
                    ],
                }
            }

            pub fn without(mut self, api: ApiKey) -> Profile {
                self.apis.retain(|(key, _, _)| *key != api);
                self
            }
        }

        pub struct Cluster {
            profile: Profile,
            /// Node 0 (bootstrap, leads "orders") and node 1 (coordinator, leads
            /// "payments").
            ports: [u16; 2],
            /// FindCoordinator answers COORDINATOR_NOT_AVAILABLE while this is positive.
            pub coordinator_unavailable: AtomicUsize,
            pub requests: AtomicUsize,
        }

        impl Cluster {
            /// Starts both nodes; returns the cluster and the bootstrap address.
            pub fn start(profile: Profile) -> (Arc<Cluster>, String) {
                let listeners = [
                    TcpListener::bind("127.0.0.1:0").unwrap(),
                    TcpListener::bind("127.0.0.1:0").unwrap(),
                ];
                let ports = [
                    listeners[0].local_addr().unwrap().port(),
                    listeners[1].local_addr().unwrap().port(),
                ];
                let cluster = Arc::new(Cluster {
                    profile,
                    ports,
                    coordinator_unavailable: AtomicUsize::new(0),
                    requests: AtomicUsize::new(0),
                });
                for (node, listener) in listeners.into_iter().enumerate() {
                    let cluster = Arc::clone(&cluster);
                    std::thread::spawn(move || {
                        for stream in listener.incoming() {
                            let cluster = Arc::clone(&cluster);
                            let stream = stream.unwrap();
                            std::thread::spawn(move || cluster.serve(node as i32, stream));
                        }
                    });
                }
                (cluster, format!("127.0.0.1:{}", ports[0]))
            }

            fn serve(&self, node: i32, mut stream: TcpStream) {
                loop {
                    let mut size = [0u8; 4];
                    if stream.read_exact(&mut size).is_err() {
                        return;
                    }
                    let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
                    stream.read_exact(&mut frame).unwrap();
                    self.requests.fetch_add(1, Ordering::SeqCst);
                    let response = self.answer(node, Bytes::from(frame));
                    let mut out = Vec::with_capacity(response.len() + 4);
                    out.put_i32(response.len() as i32);
                    out.extend_from_slice(&response);
                    stream.write_all(&out).unwrap();
                }
            }

            fn answer(&self, node: i32, mut frame: Bytes) -> BytesMut {
                let header = decode_request_header_from_buffer(&mut frame).unwrap();
                assert_eq!(header.client_id.as_ref().map(|c| c.as_str()), Some("sluice-cli"));
                let key = ApiKey::try_from(header.request_api_key).unwrap();
                let mut version = header.request_api_version;
                let advertised = self.profile.apis.iter().find(|(k, _, _)| *k == key);
                let mut out = BytesMut::new();
                let mut response_header = ResponseHeader::default();
                response_header.correlation_id = header.correlation_id;
                if key == ApiKey::ApiVersions && advertised.is_some_and(|a| version > a.2) {
                    version = 0; // KIP-511: answered in v0 with UNSUPPORTED_VERSION
                } else {
                    let (_, min, max) = advertised.unwrap();
                    assert!((*min..=*max).contains(&version), "{key:?} v{version}");
                }
                response_header.encode(&mut out, key.response_header_version(version)).unwrap();
                let is_coordinator = node == 1;
                macro_rules! reply {
                    ($response:expr) => {
                        $response.encode(&mut out, version).unwrap()
                    };
                }
                match key {
                    ApiKey::ApiVersions => {
                        let mut response = ApiVersionsResponse::default();
                        if version != header.request_api_version {
                            response.error_code = 35;
                        } else {
                            let request = ApiVersionsRequest::decode(&mut frame, version).unwrap();
                            assert_eq!(request.client_software_name.as_str(), "sluice-cli");
                        }
                        response.api_keys = self
                            .profile
                            .apis
                            .iter()
                            .map(|(key, min, max)| {
                                let mut api = ApiVersion::default();
                                api.api_key = *key as i16;
                                api.min_version = *min;
                                api.max_version = *max;
                                api
                            })
                            .collect();
                        reply!(response);
                        return out;
                    }
                    ApiKey::Metadata => {
                        let request = MetadataRequest::decode(&mut frame, version).unwrap();
                        if version >= 4 {
                            assert!(!request.allow_auto_topic_creation);
                        }
                        let mut response = MetadataResponse::default();
                        response.brokers = (0..2)
                            .map(|id| {
                                let mut broker = MetadataResponseBroker::default();
                                broker.node_id = BrokerId(id);
                                broker.host = s("127.0.0.1");
                                broker.port = i32::from(self.ports[id as usize]);
                                broker
                            })
                            .collect();
                        for topic in request.topics.unwrap() {
                            let name = topic.name.unwrap();
                            let mut answer = MetadataResponseTopic::default();
                            answer.name = Some(name.clone());
                            match partitions_of(name.as_str()) {
                                None => answer.error_code = 3,
                                Some((leader, count)) => {
                                    answer.partitions = (0..count)
                                        .map(|index| {
                                            let mut p = MetadataResponsePartition::default();
                                            p.partition_index = index;
                                            p.leader_id = BrokerId(leader);
                                            p
                                        })
                                        .collect();
                                }
                            }
                            response.topics.push(answer);
                        }
                        reply!(response);
                    }
                    ApiKey::ListOffsets => {
                        let request = ListOffsetsRequest::decode(&mut frame, version).unwrap();
                        assert_eq!(request.replica_id.0, -1);
                        let mut response = ListOffsetsResponse::default();
                        for topic in request.topics {
                            let leader = partitions_of(topic.name.as_str()).unwrap().0;
                            let mut answer = ListOffsetsTopicResponse::default();
                            answer.name = topic.name.clone();
                            for p in topic.partitions {
                                assert_eq!(p.timestamp, -1);
                                let mut partition = ListOffsetsPartitionResponse::default();
                                partition.partition_index = p.partition_index;
                                if leader != node {
                                    partition.error_code = 6; // NOT_LEADER_OR_FOLLOWER
                                } else {
                                    partition.offset =
                                        log_end(topic.name.as_str(), p.partition_index);
                                }
                                answer.partitions.push(partition);
                            }
                            response.topics.push(answer);
                        }
                        reply!(response);
                    }
                    ApiKey::FindCoordinator => {
                        let request = FindCoordinatorRequest::decode(&mut frame, version).unwrap();
                        assert_eq!(request.key_type, 0);
                        let unavailable = self
                            .coordinator_unavailable
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let error_code = if unavailable { 15 } else { 0 };
                        let port = i32::from(self.ports[1]);
                        let mut response = FindCoordinatorResponse::default();
                        if version >= 4 {
                            for key in request.coordinator_keys {
                                let mut coordinator = Coordinator::default();
                                coordinator.key = key;
                                coordinator.node_id = BrokerId(1);
                                coordinator.host = s("127.0.0.1");
                                coordinator.port = port;
                                coordinator.error_code = error_code;
                                response.coordinators.push(coordinator);
                            }
                        } else {
                            response.node_id = BrokerId(1);
                            response.host = s("127.0.0.1");
                            response.port = port;
                            response.error_code = error_code;
                        }
                        reply!(response);
                    }
                    ApiKey::DescribeGroups => {
                        let request = DescribeGroupsRequest::decode(&mut frame, version).unwrap();
                        let mut response = DescribeGroupsResponse::default();
                        for group_id in request.groups {
                            let mut group = DescribedGroup::default();
                            group.group_id = group_id.clone();
                            group.protocol_type = s("consumer");
                            if !is_coordinator {
                                group.error_code = 16; // NOT_COORDINATOR
                            } else if group_id.as_str() == "g" {
                                group.group_state = s("Stable");
                                group.protocol_data = s("range");
                                group.members = vec![
                                    member("c1-aaa", "c1", None, &[("orders", &[0, 1])]),
                                    member(
                                        "c2-bbb",
                                        "c2",
                                        (version >= 4).then(|| s("static-2")),
                                        &[("orders", &[2]), ("payments", &[0])],
                                    ),
                                ];
                            } else if group_id.as_str() == "idle" {
                                group.group_state = s("Empty");
                            } else if version >= 6 {
                                group.error_code = 69;
                                group.group_state = s("Dead");
                            } else {
                                group.group_state = s("Dead");
                                group.protocol_type = s("");
                            }
                            response.groups.push(group);
                        }
                        reply!(response);
                    }
                    ApiKey::OffsetFetch => {
                        let request = OffsetFetchRequest::decode(&mut frame, version).unwrap();
                        let group_id = if version >= 8 {
                            assert_eq!(request.groups.len(), 1);
                            assert!(request.groups[0].topics.is_none(), "all topics");
                            request.groups[0].group_id.clone()
                        } else {
                            assert!(request.topics.is_none(), "all topics");
                            request.group_id.clone()
                        };
                        let error_code = if is_coordinator { 0 } else { 16 };
                        let committed = committed(group_id.as_str());
                        let mut response = OffsetFetchResponse::default();
                        if version >= 8 {
                            let mut group = OffsetFetchResponseGroup::default();
                            group.group_id = group_id;
                            group.error_code = error_code;
                            for (topic, partitions) in committed {
                                let mut answer = OffsetFetchResponseTopics::default();
                                answer.name = TopicName(s(topic));
                                for (index, offset, error_code) in partitions {
                                    let mut p = OffsetFetchResponsePartitions::default();
                                    p.partition_index = index;
                                    p.committed_offset = offset;
                                    p.error_code = error_code;
                                    answer.partitions.push(p);
                                }
                                group.topics.push(answer);
                            }
                            response.groups.push(group);
                        } else {
                            response.error_code = error_code;
                            for (topic, partitions) in committed {
                                let mut answer = OffsetFetchResponseTopic::default();
                                answer.name = TopicName(s(topic));
                                for (index, offset, error_code) in partitions {
                                    let mut p = OffsetFetchResponsePartition::default();
                                    p.partition_index = index;
                                    p.committed_offset = offset;
                                    p.error_code = error_code;
                                    answer.partitions.push(p);
                                }
                                response.topics.push(answer);
                            }
                        }
                        reply!(response);
                    }
                    ApiKey::ListGroups => {
                        ListGroupsRequest::decode(&mut frame, version).unwrap();
                        let mut response = ListGroupsResponse::default();
                        // Each node coordinates some groups.
                        let groups: &[(&str, &str, &str)] = if node == 0 {
                            &[("idle", "Empty", "consumer"), ("connect-x", "Stable", "connect")]
                        } else {
                            &[("g", "Stable", "consumer")]
                        };
                        for (id, state, protocol_type) in groups {
                            let mut group = ListedGroup::default();
                            group.group_id = GroupId(s(id));
                            group.protocol_type = s(protocol_type);
                            if version >= 4 {
                                group.group_state = s(state);
                            }
                            response.groups.push(group);
                        }
                        reply!(response);
                    }
                    ApiKey::DeleteGroups => {
                        let request = DeleteGroupsRequest::decode(&mut frame, version).unwrap();
                        let mut response = DeleteGroupsResponse::default();
                        for group_id in request.groups_names {
                            let mut result = DeletableGroupResult::default();
                            result.error_code = match group_id.as_str() {
                                _ if !is_coordinator => 16,
                                "idle" => 0,
                                "g" => 68,
                                _ => 69,
                            };
                            result.group_id = group_id;
                            response.results.push(result);
                        }
                        reply!(response);
                    }
                    other => panic!("unexpected {other:?}"),
                }
                assert!(frame.is_empty(), "{key:?} v{version}: bytes left in the request");
                out
            }
        }

        /// (leader, partition count) of the topics that exist.
        fn partitions_of(topic: &str) -> Option<(i32, i32)> {
            match topic {
                "orders" => Some((0, 3)),
                "payments" => Some((1, 2)),
                _ => None,
            }
        }

        fn log_end(topic: &str, partition: i32) -> i64 {
            let ends: HashMap<(&str, i32), i64> = [
                (("orders", 0), 8),
                (("orders", 1), 10),
                (("orders", 2), 4),
                (("payments", 0), 3),
                (("payments", 1), 9),
            ]
            .into_iter()
            .collect();
            ends[&(topic, partition)]
        }

        /// topic -> (partition, committed offset, error code); -1: nothing committed.
        #[allow(clippy::type_complexity)]
        fn committed(group: &str) -> Vec<(&'static str, Vec<(i32, i64, i16)>)> {
            if group != "g" {
                return Vec::new();
            }
            vec![
                ("orders", vec![(0, 5, 0), (1, 10, 0), (2, -1, 0)]),
                ("payments", vec![(0, 3, 0), (1, 7, 0)]),
                ("gone", vec![(0, 1, 0)]),
                ("broken", vec![(0, 0, 88)]),
            ]
        }

        fn member(
            id: &str,
            client: &str,
            instance: Option<StrBytes>,
            topics: &[(&str, &[i32])],
        ) -> DescribedGroupMember {
            let mut member = DescribedGroupMember::default();
            member.member_id = s(id);
            member.group_instance_id = instance;
            member.client_id = s(client);
            member.client_host = s("/127.0.0.1");
            member.member_assignment = super::encode_assignment(1, topics);
            member
        }
    }

    fn check_full_description(description: &GroupDescription) {
        assert_eq!(description.state, "Stable");
        assert_eq!(description.protocol, "range");
        assert_eq!(description.coordinator.node_id, 1);
        assert_eq!(description.members.len(), 2);
        assert_eq!(description.members[1].partition_count(), Some(2));
        let rows: Vec<String> = description
            .partitions
            .iter()
            .map(|r| {
                format!(
                    "{}-{} {} {} {} {}",
                    r.topic,
                    r.partition,
                    opt_dash(r.current_offset),
                    opt_dash(r.log_end_offset),
                    opt_dash(r.lag()),
                    opt_dash(r.client_id.as_deref())
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "gone-0 1 - - -",
                "orders-0 5 8 3 c1",
                "orders-1 10 10 0 c1",
                "orders-2 - 4 - c2",
                "payments-0 3 3 0 c2",
                "payments-1 7 9 2 -",
            ]
        );
        let warnings = description.warnings.join("\n");
        assert!(
            warnings.contains("broken-0: Kafka error 88 (UNSTABLE_OFFSET_COMMIT)"),
            "{warnings}"
        );
        assert!(
            warnings.contains("topic gone: Kafka error 3 (UNKNOWN_TOPIC_OR_PARTITION)"),
            "{warnings}"
        );
        assert_eq!(description.warnings.len(), 2, "{warnings}");
    }

    #[test]
    fn describe_over_the_wire() {
        let (_cluster, bootstrap) = mock::Cluster::start(mock::Profile::new_versions());
        let description = describe(&bootstrap, "g").unwrap();
        check_full_description(&description);
        assert_eq!(description.members[1].group_instance_id.as_deref(), Some("static-2"));
    }

    #[test]
    fn describe_over_the_wire_with_old_versions() {
        let (_cluster, bootstrap) = mock::Cluster::start(mock::Profile::old_versions());
        let description = describe(&bootstrap, "g").unwrap();
        check_full_description(&description);
        assert_eq!(description.members[1].group_instance_id, None);
    }

    #[test]
    fn describe_retries_while_the_coordinator_is_unavailable() {
        let (cluster, bootstrap) = mock::Cluster::start(mock::Profile::new_versions());
        cluster.coordinator_unavailable.store(2, std::sync::atomic::Ordering::SeqCst);
        check_full_description(&describe(&bootstrap, "g").unwrap());
        // Gives up after a few seconds.
        cluster.coordinator_unavailable.store(100, std::sync::atomic::Ordering::SeqCst);
        let error = format!("{:#}", describe(&bootstrap, "g").unwrap_err());
        assert_eq!(
            error,
            "still failing after 8 attempts: FindCoordinator for group 'g': \
             Kafka error 15 (COORDINATOR_NOT_AVAILABLE)"
        );
    }

    #[test]
    fn describe_an_empty_group() {
        let (_cluster, bootstrap) = mock::Cluster::start(mock::Profile::new_versions());
        let description = describe(&bootstrap, "idle").unwrap();
        assert_eq!(description.state, "Empty");
        assert!(description.members.is_empty() && description.partitions.is_empty());
        assert!(render_table(&description).contains("has no active members"));
    }

    #[test]
    fn unknown_groups_do_not_exist() {
        for profile in [mock::Profile::new_versions(), mock::Profile::old_versions()] {
            let (_cluster, bootstrap) = mock::Cluster::start(profile);
            let error = describe(&bootstrap, "nope").unwrap_err();
            assert_eq!(format!("{error:#}"), "consumer group 'nope' does not exist");
        }
    }

    #[test]
    fn list_over_the_wire() {
        for (profile, states) in [
            (mock::Profile::new_versions(), ["Stable", "Stable", "Empty"]),
            (mock::Profile::old_versions(), ["", "", ""]),
        ] {
            let (_cluster, bootstrap) = mock::Cluster::start(profile);
            let groups = list(&bootstrap).unwrap();
            let ids: Vec<&str> = groups.iter().map(|g| g.group_id.as_str()).collect();
            assert_eq!(ids, ["connect-x", "g", "idle"]);
            let got: Vec<&str> = groups.iter().map(|g| g.state.as_str()).collect();
            assert_eq!(got, states);
            assert_eq!(groups[0].protocol_type, "connect");
        }
    }

    #[test]
    fn delete_over_the_wire() {
        let (_cluster, bootstrap) = mock::Cluster::start(mock::Profile::new_versions());
        delete(&bootstrap, "idle").unwrap();
        let error = format!("{:#}", delete(&bootstrap, "g").unwrap_err());
        assert!(error.contains("is not empty") && error.contains("NON_EMPTY_GROUP"), "{error}");
        let error = format!("{:#}", delete(&bootstrap, "nope").unwrap_err());
        assert_eq!(error, "consumer group 'nope' does not exist");
    }

    #[test]
    fn a_missing_api_is_a_clear_error() {
        use kafka_protocol::messages::ApiKey;
        let profile = mock::Profile::new_versions().without(ApiKey::ListGroups);
        let (_cluster, bootstrap) = mock::Cluster::start(profile);
        let error = format!("{:#}", list(&bootstrap).unwrap_err());
        assert!(error.contains("does not support ListGroups (API key 16)"), "{error}");
        let mut profile = mock::Profile::new_versions();
        for api in &mut profile.apis {
            if api.0 == ApiKey::OffsetFetch {
                api.2 = 1;
            }
        }
        let (_cluster, bootstrap) = mock::Cluster::start(profile);
        let error = format!("{:#}", describe(&bootstrap, "g").unwrap_err());
        assert!(error.contains("serves OffsetFetch versions 0..=1"), "{error}");
    }

    #[test]
    fn a_broker_that_hangs_up_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        let error = format!("{:#}", list(&address).unwrap_err());
        assert!(error.contains("closed the connection") || error.contains("reset"), "{error}");
    }

    #[test]
    fn a_garbage_answer_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 64];
                let _ = stream.read(&mut request);
                // A frame: the right correlation id (1), then a truncated body.
                let _ = stream.write_all(&[0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 9]);
            }
        });
        let error = format!("{:#}", list(&address).unwrap_err());
        assert!(error.contains("malformed response"), "{error}");
    }
}
