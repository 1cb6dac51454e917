//! `sluice cluster info`: the cluster at a glance over the Kafka protocol: its id, the
//! controller and the brokers (DescribeCluster; Metadata from a Kafka without it), the
//! metadata quorum (DescribeQuorum, as `kafka-metadata-quorum.sh describe` shows it) and
//! how many partitions are under-replicated or offline (Metadata). Works against Sluice
//! or any Kafka cluster.
//!
//! Also what `sluice topic` shares with it: choosing the cluster (`--brokers`), sending
//! a request to the controller with retries, tables and JSON output.

use std::time::Duration;

use anyhow::{bail, Context};
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    DescribeClusterRequest, DescribeQuorumRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_net::error::code;

use crate::client::{broker_address, Client, KafkaError, Pool};
use crate::output::{opt_dash, table, write_stdout, Json};

/// The cluster when neither `--brokers` nor `SLUICE_BROKERS` names one.
pub(crate) const BROKERS_DEFAULT: &str = "127.0.0.1:9092";
/// The environment variable naming the cluster when `--brokers` does not.
pub(crate) const BROKERS_ENV: &str = "SLUICE_BROKERS";

// Versions this client speaks, per API (inclusive); the broker's range narrows them.
/// From v4 topics are never created by asking; from v10 topics carry their id.
const METADATA_VERSIONS: (i16, i16) = (4, 12);
/// v2 lists fenced brokers too, when asked.
const DESCRIBE_CLUSTER_VERSIONS: (i16, i16) = (0, 2);
const DESCRIBE_QUORUM_VERSIONS: (i16, i16) = (0, 2);

/// How often a request for the controller is sent while brokers answer NOT_CONTROLLER
/// (a controller election in progress), and the pauses between: 0.2, 0.4, 0.8, 1.6, 2 s.
const CONTROLLER_ATTEMPTS: u32 = 6;
const CONTROLLER_BACKOFF_FIRST: Duration = Duration::from_millis(200);
const CONTROLLER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The timeout sent in requests that wait (create, delete, elect, reassign): below the
/// client's read timeout, so that the broker's REQUEST_TIMED_OUT arrives before the
/// client gives up on the connection.
pub(crate) const REQUEST_TIMEOUT_MS: i32 = 25_000;
const _: () = assert!((REQUEST_TIMEOUT_MS as u128) < crate::client::IO_TIMEOUT.as_millis());

/// The one partition of the metadata log, whose quorum DescribeQuorum describes.
const METADATA_TOPIC: &str = "__cluster_metadata";

/// `--brokers`: which cluster to talk to. Shared by `sluice topic` and `sluice cluster`.
#[derive(Debug, clap::Args)]
pub(crate) struct Brokers {
    /// Brokers to connect to first, comma-separated: any brokers of the cluster, tried in
    /// order until one answers. Default: $SLUICE_BROKERS, else 127.0.0.1:9092.
    #[arg(
        long = "brokers",
        short = 'b',
        visible_alias = "bootstrap-server",
        value_name = "HOST:PORT,...",
        global = true
    )]
    brokers: Option<String>,
}

impl Brokers {
    /// The addresses given by `--brokers`, else `SLUICE_BROKERS`, else the default.
    fn addresses(&self) -> anyhow::Result<Vec<String>> {
        let (text, source) = match &self.brokers {
            Some(text) => (text.clone(), "--brokers"),
            None => match std::env::var(BROKERS_ENV) {
                Ok(text) if !text.trim().is_empty() => (text, BROKERS_ENV),
                _ => (BROKERS_DEFAULT.to_string(), "the default"),
            },
        };
        let addresses: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
            .map(String::from)
            .collect();
        if addresses.is_empty() {
            bail!("{source} names no broker: {text:?}");
        }
        Ok(addresses)
    }
}

#[cfg(test)]
impl Brokers {
    pub(crate) fn given(&self) -> Option<&str> {
        self.brokers.as_deref()
    }
}

/// Connections to one cluster: the bootstrap broker (the first of `--brokers` that
/// answered) and any broker it leads to.
#[derive(Debug)]
pub(crate) struct Session {
    pool: Pool,
    bootstrap: String,
}

impl Session {
    /// Connects to the first of `brokers` that answers.
    pub(crate) fn connect(brokers: &Brokers) -> anyhow::Result<Session> {
        let addresses = brokers.addresses()?;
        let mut pool = Pool::default();
        let mut failures = Vec::new();
        for address in &addresses {
            match pool.get(address) {
                Ok(_) => return Ok(Session { pool, bootstrap: address.clone() }),
                Err(error) => failures.push(error),
            }
        }
        match failures.len() {
            1 => Err(failures.remove(0)),
            _ => {
                let reasons: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
                bail!("no broker of {} answered: {}", addresses.join(","), reasons.join("; "))
            }
        }
    }

    /// The connection to the bootstrap broker.
    pub(crate) fn bootstrap(&mut self) -> anyhow::Result<&mut Client> {
        self.pool.get(&self.bootstrap)
    }

    /// Metadata for `topics` (`None`: every topic), never creating topics.
    pub(crate) fn metadata(
        &mut self,
        topics: Option<&[String]>,
    ) -> anyhow::Result<MetadataResponse> {
        let client = self.bootstrap()?;
        let version = client.version::<MetadataRequest>(METADATA_VERSIONS)?;
        let mut request = MetadataRequest::default();
        request.topics = topics.map(|names| {
            names
                .iter()
                .map(|name| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(TopicName(str_bytes(name)));
                    topic
                })
                .collect()
        });
        request.allow_auto_topic_creation = false;
        client.request(version, &request)
    }

    /// Runs `attempt` on a broker until it succeeds or fails with something other than
    /// NOT_CONTROLLER. The first attempt goes to the bootstrap broker (Sluice brokers and
    /// Kafka 2.8+ brokers forward controller requests to the active controller); later
    /// ones to the broker Metadata names as the controller, which is what a Kafka before
    /// 2.8 needs. `attempt` keeps what earlier attempts answered, and asks again only for
    /// what was refused.
    pub(crate) fn with_controller<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut target = self.bootstrap.clone();
        let mut backoff = CONTROLLER_BACKOFF_FIRST;
        for attempt_number in 1.. {
            let client = match self.pool.get(&target) {
                Ok(client) => client,
                // The controller's advertised address may not be reachable from here.
                Err(_) if target != self.bootstrap => {
                    target = self.bootstrap.clone();
                    self.pool.get(&target)?
                }
                Err(error) => return Err(error),
            };
            match attempt(client) {
                Err(error) if is_not_controller(&error) => {
                    if attempt_number >= CONTROLLER_ATTEMPTS {
                        return Err(error.context(format!(
                            "still failing after {CONTROLLER_ATTEMPTS} attempts"
                        )));
                    }
                }
                result => return result,
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(CONTROLLER_BACKOFF_MAX);
            target = self.controller_address().unwrap_or_else(|| self.bootstrap.clone());
        }
        unreachable!("the attempts loop returns")
    }

    /// The address of the broker Metadata names as the controller, if any.
    fn controller_address(&mut self) -> Option<String> {
        let metadata = self.metadata(Some(&[])).ok()?;
        let controller = metadata.controller_id.0;
        metadata
            .brokers
            .iter()
            .find(|broker| broker.node_id.0 == controller)
            .map(|broker| broker_address(broker.host.as_str(), broker.port))
    }
}

/// True for a Kafka NOT_CONTROLLER answer.
fn is_not_controller(error: &anyhow::Error) -> bool {
    error.downcast_ref::<KafkaError>().is_some_and(|e| e.code == code::NOT_CONTROLLER)
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A topic id as Kafka prints it: URL-safe base64 of its 16 bytes, without padding.
pub(crate) fn topic_id_text(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let bits = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // n bytes carry 8n bits: n + 1 characters of 6 bits.
        for i in 0..=chunk.len() {
            let index = (bits >> (18 - 6 * i)) & 63;
            text.push(char::from(ALPHABET[index as usize]));
        }
    }
    text
}

// ---------------------------------------------------------------------------------------
// `sluice cluster`

/// `sluice cluster`: the cluster as a whole.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    brokers: Brokers,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// The cluster id, the controller, the brokers, the metadata quorum and partition
    /// health.
    ///
    /// Brokers (id, HOST:PORT, rack, and from DescribeCluster v2 whether fenced) come from
    /// DescribeCluster, or from Metadata on a Kafka before 2.8. The metadata quorum comes
    /// from DescribeQuorum, like `kafka-metadata-quorum.sh describe --replication`: its
    /// leader, epoch and high watermark, and per voter and observer the log end offset
    /// and the lag behind the leader's. The partition counts come from Metadata: a
    /// partition is under-replicated when its ISR is smaller than its replica set and
    /// offline when it has no leader.
    ///
    /// A quorum that cannot be described (a ZooKeeper-mode Kafka has none) is shown as
    /// unknown, with the reason on stderr; other errors end the command with exit
    /// status 1.
    Info(InfoArgs),
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// Print one JSON object instead: cluster_id, controller_id, brokers, quorum (null
    /// when unknown) and partitions (total, under_replicated, offline).
    #[arg(long)]
    json: bool,
}

/// Runs `sluice cluster ...`: results on stdout, warnings on stderr.
pub(crate) fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let mut session = Session::connect(&args.brokers)?;
    match args.command {
        ClusterCommand::Info(info_args) => {
            let info = info(&mut session)?;
            for warning in &info.warnings {
                eprintln!("warning: {warning}");
            }
            write_stdout(&if info_args.json { render_json(&info) } else { render_table(&info) })
        }
    }
}

/// One broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// Only DescribeCluster v2 reports fenced brokers.
    pub fenced: bool,
}

/// One replica of the metadata log, as the quorum leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuorumReplica {
    pub id: i32,
    /// `None`: unknown to the leader.
    pub log_end_offset: Option<i64>,
    /// Milliseconds since the epoch; `None`: unknown.
    pub last_fetch_timestamp: Option<i64>,
    pub last_caught_up_timestamp: Option<i64>,
}

/// The controller quorum of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quorum {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<QuorumReplica>,
    pub observers: Vec<QuorumReplica>,
}

impl Quorum {
    /// How far `replica` is behind the leader's log end offset (as Kafka's tool counts
    /// it); `None` when either is unknown.
    pub(crate) fn lag(&self, replica: &QuorumReplica) -> Option<i64> {
        let leader = self.voters.iter().find(|v| v.id == self.leader_id)?;
        Some(leader.log_end_offset? - replica.log_end_offset?)
    }
}

/// Partition counts over every topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PartitionHealth {
    pub total: u64,
    /// ISR smaller than the replica set.
    pub under_replicated: u64,
    /// No leader.
    pub offline: u64,
}

/// Everything `sluice cluster info` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterInfo {
    pub cluster_id: Option<String>,
    /// `None`: no controller known.
    pub controller_id: Option<i32>,
    /// Sorted by id.
    pub brokers: Vec<BrokerInfo>,
    /// `None`: not described (see the warnings).
    pub quorum: Option<Quorum>,
    pub partitions: PartitionHealth,
    /// What could not be learned, for stderr.
    pub warnings: Vec<String>,
}

fn known_id(id: i32) -> Option<i32> {
    (id >= 0).then_some(id)
}

/// Gathers [`ClusterInfo`] from the bootstrap broker.
pub(crate) fn info(session: &mut Session) -> anyhow::Result<ClusterInfo> {
    let metadata = session.metadata(None)?;
    let client = session.bootstrap()?;
    let (cluster_id, controller_id, mut brokers) =
        match client.version::<DescribeClusterRequest>(DESCRIBE_CLUSTER_VERSIONS) {
            Ok(version) => {
                let mut request = DescribeClusterRequest::default();
                request.include_fenced_brokers = version >= 2;
                let response = client.request(version, &request)?;
                KafkaError::check(
                    "DescribeCluster",
                    response.error_code,
                    response.error_message.as_ref(),
                )?;
                let brokers: Vec<BrokerInfo> = response
                    .brokers
                    .iter()
                    .map(|b| BrokerInfo {
                        id: b.broker_id.0,
                        host: b.host.as_str().to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.as_str().to_string()),
                        fenced: b.is_fenced,
                    })
                    .collect();
                let cluster_id = response.cluster_id.as_str().to_string();
                (Some(cluster_id), known_id(response.controller_id.0), brokers)
            }
            // A Kafka before 2.8 has no DescribeCluster: Metadata names the same, less
            // the fenced brokers.
            Err(_) => {
                let brokers = metadata
                    .brokers
                    .iter()
                    .map(|b| BrokerInfo {
                        id: b.node_id.0,
                        host: b.host.as_str().to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.as_str().to_string()),
                        fenced: false,
                    })
                    .collect();
                let cluster_id = metadata.cluster_id.as_ref().map(|id| id.as_str().to_string());
                (cluster_id, known_id(metadata.controller_id.0), brokers)
            }
        };
    brokers.sort_by_key(|b| b.id);
    let mut warnings = Vec::new();
    let quorum = match describe_quorum(session) {
        Ok(quorum) => Some(quorum),
        Err(error) => {
            warnings.push(format!("metadata quorum unknown: {error:#}"));
            None
        }
    };
    let mut partitions = PartitionHealth::default();
    for topic in &metadata.topics {
        for partition in &topic.partitions {
            partitions.total += 1;
            if partition.isr_nodes.len() < partition.replica_nodes.len() {
                partitions.under_replicated += 1;
            }
            if partition.leader_id.0 < 0 {
                partitions.offline += 1;
            }
        }
    }
    Ok(ClusterInfo { cluster_id, controller_id, brokers, quorum, partitions, warnings })
}

/// DescribeQuorum for `__cluster_metadata-0` (forwarded to the controller by brokers).
fn describe_quorum(session: &mut Session) -> anyhow::Result<Quorum> {
    let mut partition = PartitionData::default();
    partition.partition_index = 0;
    let mut topic = TopicData::default();
    topic.topic_name = TopicName(str_bytes(METADATA_TOPIC));
    topic.partitions = vec![partition];
    let mut request = DescribeQuorumRequest::default();
    request.topics = vec![topic];
    let response = session.with_controller(|client| {
        let (response, _) = client.negotiated(DESCRIBE_QUORUM_VERSIONS, &request)?;
        KafkaError::check("DescribeQuorum", response.error_code, response.error_message.as_ref())?;
        Ok(response)
    })?;
    let partition = response
        .topics
        .iter()
        .filter(|t| t.topic_name.as_str() == METADATA_TOPIC)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == 0)
        .context("DescribeQuorum: the answer does not name __cluster_metadata-0")?;
    KafkaError::check(
        "DescribeQuorum for __cluster_metadata-0",
        partition.error_code,
        partition.error_message.as_ref(),
    )?;
    let replicas =
        |states: &[kafka_protocol::messages::describe_quorum_response::ReplicaState]| {
            let mut replicas: Vec<QuorumReplica> = states
                .iter()
                .map(|s| QuorumReplica {
                    id: s.replica_id.0,
                    log_end_offset: (s.log_end_offset >= 0).then_some(s.log_end_offset),
                    last_fetch_timestamp: (s.last_fetch_timestamp >= 0)
                        .then_some(s.last_fetch_timestamp),
                    last_caught_up_timestamp: (s.last_caught_up_timestamp >= 0)
                        .then_some(s.last_caught_up_timestamp),
                })
                .collect();
            replicas.sort_by_key(|r| r.id);
            replicas
        };
    Ok(Quorum {
        leader_id: partition.leader_id.0,
        leader_epoch: partition.leader_epoch,
        high_watermark: partition.high_watermark,
        voters: replicas(&partition.current_voters),
        observers: replicas(&partition.observers),
    })
}

/// `sluice cluster info`.
pub(crate) fn render_table(info: &ClusterInfo) -> String {
    let mut out = String::new();
    out.push_str(&format!("Cluster id: {}\n", opt_dash(info.cluster_id.as_deref())));
    out.push_str(&format!("Controller: {}\n\n", opt_dash(info.controller_id)));
    let brokers: Vec<Vec<String>> = info
        .brokers
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                broker_address(&b.host, b.port),
                opt_dash(b.rack.as_deref()),
                if b.fenced { "fenced" } else { "active" }.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["BROKER", "HOST:PORT", "RACK", "STATE"], &brokers));
    out.push('\n');
    match &info.quorum {
        None => out.push_str("Metadata quorum: unknown\n"),
        Some(quorum) => {
            out.push_str(&format!(
                "Metadata quorum: leader {}, epoch {}, high watermark {}\n",
                opt_dash(known_id(quorum.leader_id)),
                quorum.leader_epoch,
                quorum.high_watermark
            ));
            let row = |replica: &QuorumReplica, role: &str| {
                vec![
                    replica.id.to_string(),
                    role.to_string(),
                    opt_dash(replica.log_end_offset),
                    opt_dash(quorum.lag(replica)),
                ]
            };
            let mut rows: Vec<Vec<String>> = quorum
                .voters
                .iter()
                .map(|v| row(v, if v.id == quorum.leader_id { "leader" } else { "follower" }))
                .collect();
            rows.extend(quorum.observers.iter().map(|o| row(o, "observer")));
            out.push_str(&table(&["NODE", "ROLE", "LOG-END-OFFSET", "LAG"], &rows));
        }
    }
    out.push('\n');
    let health = info.partitions;
    out.push_str(&format!(
        "Partitions: {} (under-replicated: {}, offline: {})\n",
        health.total, health.under_replicated, health.offline
    ));
    out
}

/// `sluice cluster info --json`.
pub(crate) fn render_json(info: &ClusterInfo) -> String {
    let brokers = info
        .brokers
        .iter()
        .map(|b| {
            Json::object([
                ("id", Json::Int(b.id.into())),
                ("host", Json::str(&b.host)),
                ("port", Json::Int(b.port.into())),
                ("rack", Json::opt_str(b.rack.as_deref())),
                ("fenced", Json::Bool(b.fenced)),
            ])
        })
        .collect();
    let quorum = info.quorum.as_ref().map_or(Json::Null, |quorum| {
        let replicas = |replicas: &[QuorumReplica]| {
            Json::Array(
                replicas
                    .iter()
                    .map(|r| {
                        Json::object([
                            ("id", Json::Int(r.id.into())),
                            ("log_end_offset", Json::opt_int(r.log_end_offset)),
                            ("lag", Json::opt_int(quorum.lag(r))),
                            ("last_fetch_timestamp", Json::opt_int(r.last_fetch_timestamp)),
                            ("last_caught_up_timestamp", Json::opt_int(r.last_caught_up_timestamp)),
                        ])
                    })
                    .collect(),
            )
        };
        Json::object([
            ("leader_id", Json::opt_int(known_id(quorum.leader_id).map(i64::from))),
            ("leader_epoch", Json::Int(quorum.leader_epoch.into())),
            ("high_watermark", Json::Int(quorum.high_watermark)),
            ("voters", replicas(&quorum.voters)),
            ("observers", replicas(&quorum.observers)),
        ])
    });
    let count = |n: u64| Json::Int(i64::try_from(n).unwrap_or(i64::MAX));
    Json::object([
        ("cluster_id", Json::opt_str(info.cluster_id.as_deref())),
        ("controller_id", Json::opt_int(info.controller_id.map(i64::from))),
        ("brokers", Json::Array(brokers)),
        ("quorum", quorum),
        (
            "partitions",
            Json::object([
                ("total", count(info.partitions.total)),
                ("under_replicated", count(info.partitions.under_replicated)),
                ("offline", count(info.partitions.offline)),
            ]),
        ),
    ])
    .render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_print_as_kafka_prints_them() {
        // Kafka's Uuid.ZERO_UUID and METADATA_TOPIC_ID (0, 1).
        assert_eq!(topic_id_text(&[0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(topic_id_text(&one), "AAAAAAAAAAAAAAAAAAAAAQ");
        assert_eq!(topic_id_text(&[0xff; 16]), "_____________________w");
    }

    #[test]
    fn brokers_come_from_the_flag_then_the_environment() {
        let flag = Brokers { brokers: Some(" a:1, b:2 ,".to_string()) };
        assert_eq!(flag.addresses().unwrap(), ["a:1", "b:2"]);
        let empty = Brokers { brokers: Some(" , ".to_string()) };
        assert!(format!("{:#}", empty.addresses().unwrap_err()).contains("names no broker"));
    }

    #[test]
    fn quorum_lag_is_behind_the_leaders_log_end() {
        let replica = |id, log_end_offset| QuorumReplica {
            id,
            log_end_offset,
            last_fetch_timestamp: None,
            last_caught_up_timestamp: None,
        };
        let quorum = Quorum {
            leader_id: 2,
            leader_epoch: 7,
            high_watermark: 100,
            voters: vec![replica(1, Some(90)), replica(2, Some(105)), replica(3, None)],
            observers: vec![replica(4, Some(105))],
        };
        let lags: Vec<Option<i64>> = quorum.voters.iter().map(|r| quorum.lag(r)).collect();
        assert_eq!(lags, [Some(15), Some(0), None]);
        assert_eq!(quorum.lag(&quorum.observers[0]), Some(0));
        let info = ClusterInfo {
            cluster_id: Some("c-1".to_string()),
            controller_id: Some(2),
            brokers: vec![BrokerInfo {
                id: 2,
                host: "h".to_string(),
                port: 9092,
                rack: None,
                fenced: false,
            }],
            quorum: Some(quorum),
            partitions: PartitionHealth { total: 5, under_replicated: 1, offline: 0 },
            warnings: Vec::new(),
        };
        let text = render_table(&info);
        assert!(text.contains("Metadata quorum: leader 2, epoch 7, high watermark 100\n"));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("NODE"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                ["1", "follower", "90", "15"],
                ["2", "leader", "105", "0"],
                ["3", "follower", "-", "-"],
                ["4", "observer", "105", "0"],
            ]
        );
        assert!(text.ends_with("Partitions: 5 (under-replicated: 1, offline: 0)\n"), "{text}");
    }

    #[test]
    fn tables_and_json_escape_and_align() {
        let text = table(&["A", "LONGER"], &[vec!["wide-cell".to_string(), "x".to_string()]]);
        assert_eq!(text, "A          LONGER\nwide-cell  x\n");
        let json = Json::object([
            ("a\"b", Json::Array(vec![Json::Null, Json::Bool(true)])),
            ("c", Json::Array(vec![Json::object([("d", Json::ids(&[1, 2]))])])),
        ]);
        assert_eq!(
            json.render(),
            "{\n  \"a\\\"b\": [null, true],\n  \"c\": [\n    {\n      \"d\": [1, 2]\n    }\n  ]\n}\n"
        );
    }
}
