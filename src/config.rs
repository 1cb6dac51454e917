//! Broker configuration: command-line flags, an optional config file (TOML, or the Java
//! properties format of Kafka's `server.properties`) and `--set` overrides under Kafka's
//! own property names, validated into one [`Config`].
//!
//! A name is one of three kinds. Sluice's own properties ([`KNOWN`], most of them Kafka's
//! names with Kafka's defaults). Kafka broker names with a Sluice meaning, mapped here
//! ([`MAPPED`]: `log.dirs` is the data dir, `listeners` the listen address, ...). Every
//! other Kafka broker name (`crate::kafka_names`) is accepted and ignored, and one warning
//! line at start lists them. Anything else is a start-up error, with a suggestion when a
//! known name is close. Precedence: command-line flags (`--listen`, `--advertise`,
//! `--data-dir`, `--io`) over `--set` over the file over the defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sluice_cluster::config::{parse_voters, ClusterConfig};
use sluice_engine::io::IoMode;
use sluice_engine::log::{self, LogOptions};
use sluice_net::config::{GroupConfig, ReplicationConfig, TxnConfig};

use crate::kafka_names;
use crate::properties;

/// Where the broker listens when neither `--listen` nor `listeners` says.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9092);
/// The data directory when neither `--data-dir` nor `log.dirs` says.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// `sluice serve` flags.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:9092]; overrides `listeners`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address clients are told to connect to, HOST:PORT; overrides `advertised.listeners`
    /// [default: `advertised.listeners`, else the listen address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory holding the partition logs and checkpoint files [default: ./data];
    /// overrides `log.dirs`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of shards (pinned cores); default: every core.
    #[arg(long)]
    pub cores: Option<usize>,
    /// File I/O mode: `direct` (O_DIRECT) or `buffered` (page cache); overrides `io.mode`.
    #[arg(long)]
    pub io: Option<IoMode>,
    /// Broker properties file: TOML (`"log.segment.bytes" = 1073741824`) or Java
    /// properties like Kafka's server.properties (`log.segment.bytes=1073741824`); a
    /// `.toml` file, or one whose first setting starts with `"`, `'` or `[`, is TOML. Kafka's
    /// names are mapped (`log.dirs`, `listeners`, ...) or accepted and ignored.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Sets a broker property by its Kafka name; repeatable: `--set log.retention.ms=60000`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub overrides: Vec<String>,
}

/// The host clients are told to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertisedHost {
    /// The IP the broker listens on.
    ListenIp,
    /// This machine's host name: Kafka's choice for a listener with an empty host.
    MachineName,
    /// A host name or IP as configured.
    Name(String),
}

/// The address clients are told to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    pub host: AdvertisedHost,
    /// `None`: the port the broker listens on (once port 0 resolves).
    pub port: Option<u16>,
}

/// The validated broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertise: Advertise,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// Defaults for every partition log (topic configs override them later).
    pub log: LogOptions,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `log.page.cache.window.bytes=auto`: the windows follow the broker's page-cache
    /// budget (`engine::writeback::auto_budget_bytes`) instead of `log.cache_window_bytes`.
    pub cache_window_auto: bool,
    /// Every Sluice property with its value in force (defaults included), for
    /// DescribeConfigs.
    pub properties: BTreeMap<String, String>,
    /// The warning line for the Kafka names given but ignored, if any (see
    /// [`Config::from_args`]).
    pub ignored: Option<String>,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub auto_create_topics: bool,
    pub delete_topic_enable: bool,
    pub cleanup_policy: String,
    pub message_timestamp_type: String,
    pub min_insync_replicas: i32,
    pub node_id: i32,
    pub socket_request_max_bytes: usize,
    pub queued_max_requests: usize,
    pub max_connections_per_shard: usize,
    /// `reactor.stall.threshold.ms`: log a shard whose task queue runs this long past its
    /// 1 ms budget without yielding, with a backtrace of where it was; 0 = off.
    pub stall_threshold_ms: u64,
    /// `reactor.idle.poll.us`: the longest a shard with nothing to do keeps polling before
    /// it sleeps (Seastar's `--idle-poll-time-us`), adapted to how long its idle periods
    /// last (see the glommio patch's `SpinWindow`); 0 = sleep at once.
    pub idle_poll_us: u64,
    /// `request.latency.log.interval.ms`: how often every shard logs its request latency
    /// by phase and API; 0 = only when it stops.
    pub request_latency_log_interval_ms: u64,
    pub groups: GroupConfig,
    pub txns: TxnConfig,
    /// `replica.*`: followers' fetching and the ISR's lag limit.
    pub replication: ReplicationConfig,
    /// This node's roles and the controller quorum.
    pub cluster: ClusterConfig,
}

fn parse_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => bail!("{name}: {other:?} is not true or false"),
    }
}

/// Sluice's broker properties, with Kafka's defaults where Kafka has the name.
const KNOWN: &[(&str, &str)] = &[
    ("log.segment.bytes", "1073741824"),
    ("log.roll.ms", "604800000"),
    ("log.index.interval.bytes", "4096"),
    ("log.retention.ms", "604800000"),
    ("log.retention.bytes", "-1"),
    ("log.flush.interval.messages", "9223372036854775807"),
    ("log.flush.interval.ms", "9223372036854775807"),
    ("log.writeback.bytes", "1048576"),
    ("log.buffered.write", "inline"),
    ("log.page.cache.window.bytes", "auto"),
    ("log.open.files.max", "0"),
    ("log.retention.check.interval.ms", "300000"),
    ("message.max.bytes", "1048588"),
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
    ("auto.create.topics.enable", "true"),
    ("io.mode", "buffered"),
    ("log.cleanup.policy", "delete"),
    ("log.message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
    ("delete.topic.enable", "true"),
    ("node.id", "0"),
    ("socket.request.max.bytes", "104857600"),
    ("queued.max.requests", "500"),
    ("max.connections.per.shard", "10000"),
    ("reactor.stall.threshold.ms", "0"),
    ("reactor.idle.poll.us", "200"),
    ("request.latency.log.interval.ms", "0"),
    ("offsets.topic.num.partitions", "50"),
    ("offsets.topic.segment.bytes", "104857600"),
    ("group.initial.rebalance.delay.ms", "3000"),
    ("group.min.session.timeout.ms", "6000"),
    ("group.max.session.timeout.ms", "1800000"),
    ("group.max.size", "2147483647"),
    ("offsets.retention.minutes", "10080"),
    ("offsets.retention.check.interval.ms", "600000"),
    ("offset.metadata.max.bytes", "4096"),
    ("transaction.state.log.num.partitions", "50"),
    ("transaction.state.log.segment.bytes", "104857600"),
    ("transaction.max.timeout.ms", "900000"),
    ("controller.quorum.voters", ""),
    ("broker.session.timeout.ms", "9000"),
    ("broker.heartbeat.interval.ms", "2000"),
    ("unclean.leader.election.enable", "false"),
    ("auto.leader.rebalance.enable", "true"),
    ("leader.imbalance.check.interval.seconds", "300"),
    ("leader.imbalance.per.broker.percentage", "10"),
    ("offsets.topic.replication.factor", "3"),
    ("replica.lag.time.max.ms", "30000"),
    ("replica.fetch.wait.max.ms", "500"),
    ("replica.fetch.max.bytes", "1048576"),
    ("replica.fetch.response.max.bytes", "10485760"),
    ("replica.fetch.backoff.ms", "1000"),
    ("transaction.state.log.replication.factor", "3"),
];

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    value: &str,
) -> anyhow::Result<T> {
    let number: T = parse_number(name, value)?;
    if number <= T::default() {
        anyhow::bail!("{name} must be positive, not {value:?}");
    }
    Ok(number)
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T> {
    value.trim().parse().map_err(|_| anyhow::anyhow!("{name}: {value:?} is not a valid number"))
}

/// Kafka broker names Sluice gives a meaning to (see [`Config::from_args`]).
const MAPPED: &[&str] = &[
    "advertised.listeners",
    "broker.id",
    "controller.listener.names",
    "listener.security.protocol.map",
    "listeners",
    "log.dir",
    "log.dirs",
    "log.retention.hours",
    "log.retention.minutes",
    "log.roll.hours",
    "process.roles",
];

/// Kafka's default `listener.security.protocol.map`: each protocol is a listener name.
const DEFAULT_SECURITY_PROTOCOLS: &[&str] = &["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// How a config file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Toml,
    /// Java properties, Kafka's `server.properties`.
    Properties,
}

/// The format of a config file: `.toml` is TOML and `.properties` Java properties;
/// otherwise TOML when the first line that is not blank or a comment starts with `"`,
/// `'` or `[` (a quoted name or a table, which every Sluice TOML file has, since the
/// names contain dots), else Java properties.
pub fn file_format(path: &Path, text: &str) -> FileFormat {
    match path.extension().and_then(|extension| extension.to_str()) {
        Some(extension) if extension.eq_ignore_ascii_case("toml") => return FileFormat::Toml,
        Some(extension) if extension.eq_ignore_ascii_case("properties") => {
            return FileFormat::Properties
        }
        _ => {}
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'));
    match first {
        Some(line) if line.starts_with(['"', '\'', '[']) => FileFormat::Toml,
        _ => FileFormat::Properties,
    }
}

/// A property as given, and where: `--set`, or the file (and line, in a properties
/// file), for error messages.
#[derive(Debug, Clone)]
struct Given {
    value: String,
    origin: String,
}

/// Reads a config file into (name, value, origin) in file order.
fn read_config_file(path: &Path) -> anyhow::Result<Vec<(String, Given)>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading config file {}", path.display()))?;
    let text = properties::decode(&bytes);
    let shown = path.display().to_string();
    match file_format(path, &text) {
        FileFormat::Properties => {
            let entries = properties::parse(&text).with_context(|| format!("parsing {shown}"))?;
            Ok(entries
                .into_iter()
                .map(|entry| {
                    let origin = format!("{shown} line {}", entry.line);
                    (entry.key, Given { value: entry.value, origin })
                })
                .collect())
        }
        FileFormat::Toml => {
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("parsing {shown} as TOML (see `sluice serve --help`)"))?;
            table
                .into_iter()
                .map(|(name, value)| {
                    let value =
                        toml_value(&name, value).with_context(|| format!("{shown}: {name:?}"))?;
                    Ok((name, Given { value, origin: shown.clone() }))
                })
                .collect()
        }
    }
}

/// A TOML value as property text: scalars as written, an array of scalars as a comma
/// list (Kafka's list syntax); a table is a mistake (an unquoted dotted name).
fn toml_value(name: &str, value: toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(text) => text,
        toml::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                toml::Value::Table(_) | toml::Value::Array(_) => {
                    bail!("a list holds strings, numbers or booleans only")
                }
                item => toml_value(name, item),
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(","),
        toml::Value::Table(_) => bail!(
            "a table, not a value: names with dots must be quoted in TOML \
             (\"{name}.x\" = 1, not {name}.x = 1)"
        ),
        other => other.to_string(),
    })
}

/// What a given name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One of Sluice's properties ([`KNOWN`]).
    Sluice,
    /// A Kafka name with a Sluice meaning ([`MAPPED`]).
    Mapped,
    /// A Kafka broker name Sluice ignores.
    Ignored,
}

fn kind_of(name: &str, plugin_prefixes: &[&str]) -> Option<Kind> {
    if KNOWN.iter().any(|(known, _)| *known == name) {
        Some(Kind::Sluice)
    } else if MAPPED.contains(&name) {
        Some(Kind::Mapped)
    } else if kafka_names::is_kafka_name(name, plugin_prefixes) {
        Some(Kind::Ignored)
    } else {
        None
    }
}

/// Optimal string alignment distance: edits, with a swap of neighbours as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best =
                (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The error for a name that is neither Sluice's nor Kafka's, with a hint: the broker
/// name of a topic config, or the closest known name.
fn unknown_name(name: &str, origin: &str) -> anyhow::Error {
    let mut message =
        format!("{origin}: unknown broker property {name:?} (neither Sluice's nor Kafka's)");
    if let Some(topic) = sluice_net::config::topic_config(name) {
        match topic.broker_name {
            Some(broker) => {
                message += &format!(
                    "; {name:?} is a topic config: the broker default for it is {broker:?}"
                )
            }
            None => message += &format!("; {name:?} is a topic config, set per topic"),
        }
        return anyhow::anyhow!(message);
    }
    let candidates = KNOWN
        .iter()
        .map(|(known, _)| *known)
        .chain(MAPPED.iter().copied())
        .chain(kafka_names::BROKER_NAMES.iter().copied());
    let closest = candidates
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .min_by_key(|(distance, candidate)| (*distance, *candidate));
    if let Some((distance, candidate)) = closest {
        if distance <= 2 || (distance <= 3 && name.chars().count() >= 16) {
            message += &format!("; did you mean {candidate:?}?");
        }
    }
    anyhow::anyhow!(message)
}

/// A comma-separated list as Kafka's `Csv.parseCsvList` reads it: trimmed items, empty
/// text an empty list.
fn csv(value: &str) -> Vec<&str> {
    let value = value.trim();
    if value.is_empty() {
        Vec::new()
    } else {
        value.split(',').map(str::trim).collect()
    }
}

/// One entry of `listeners` or `advertised.listeners`: `NAME://HOST:PORT`, the name
/// upper-cased (Kafka's `ListenerName.normalised`), the host without IPv6 brackets and
/// empty for "every interface".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    name: String,
    host: String,
    port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.name, host_port(&self.host, self.port))
    }
}

/// `HOST:PORT`, with brackets around an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses a listener list as Kafka does (`^(.*)://\[?([0-9a-zA-Z\-%._:]*)\]?:(-?[0-9]+)`).
fn endpoints(property: &str, value: &str) -> anyhow::Result<Vec<Endpoint>> {
    let mut parsed: Vec<Endpoint> = Vec::new();
    for entry in csv(value) {
        let bad = || anyhow::anyhow!("{property}: cannot parse {entry:?} as NAME://HOST:PORT");
        let (name, address) = entry.rsplit_once("://").ok_or_else(bad)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').unwrap_or(host);
        let host = host.strip_suffix(']').unwrap_or(host);
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || "-%._:".contains(c)) {
            return Err(bad());
        }
        let port: u16 =
            port.parse().map_err(|_| anyhow::anyhow!("{property}: bad port in {entry:?}"))?;
        let endpoint = Endpoint { name: name.to_ascii_uppercase(), host: host.to_string(), port };
        if parsed.iter().any(|other| other.name == endpoint.name) {
            bail!("{property}: listener name {} given twice", endpoint.name);
        }
        parsed.push(endpoint);
    }
    Ok(parsed)
}

/// `listener.security.protocol.map` (`NAME:PROTOCOL,...`), upper-cased names.
fn security_protocols(value: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(value) = value else {
        return Ok(DEFAULT_SECURITY_PROTOCOLS
            .iter()
            .map(|p| (p.to_string(), p.to_string()))
            .collect());
    };
    let mut map = BTreeMap::new();
    for entry in csv(value) {
        let Some((name, protocol)) = entry.split_once(':') else {
            bail!("listener.security.protocol.map: {entry:?} is not NAME:PROTOCOL");
        };
        let protocol = protocol.trim().to_ascii_uppercase();
        if !DEFAULT_SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
            bail!("listener.security.protocol.map: invalid security protocol {protocol:?}");
        }
        map.insert(name.trim().to_ascii_uppercase(), protocol);
    }
    Ok(map)
}

/// The address to bind for a listener host: empty means every IPv4 interface (Kafka
/// binds its wildcard address), an IP is itself, a name resolves (an IPv4 address
/// first, as Java prefers).
fn bind_address(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("listeners: cannot resolve host {host:?}"))?
        .collect();
    resolved
        .iter()
        .find(|address| address.is_ipv4())
        .or(resolved.first())
        .copied()
        .with_context(|| format!("listeners: host {host:?} has no address"))
}

/// The advertised address of an endpoint: an empty host is this machine's name (Kafka's
/// canonical host name), 0.0.0.0 is refused as Kafka refuses it.
fn advertised_endpoint(property: &str, endpoint: &Endpoint) -> anyhow::Result<Advertise> {
    let port = (endpoint.port != 0).then_some(endpoint.port);
    let host = match endpoint.host.as_str() {
        "" => AdvertisedHost::MachineName,
        "0.0.0.0" => bail!(
            "{property}: {endpoint} would advertise the non-routable address 0.0.0.0, which \
             Kafka refuses too; set advertised.listeners (or --advertise) to an address \
             clients can reach"
        ),
        host => AdvertisedHost::Name(host.to_string()),
    };
    Ok(Advertise { host, port })
}

/// `--advertise HOST:PORT`.
fn advertise_flag(text: &str) -> anyhow::Result<Advertise> {
    let Some((host, port)) = text.rsplit_once(':') else {
        bail!("--advertise {text:?}: expected HOST:PORT");
    };
    let port: u16 = port.parse().with_context(|| format!("--advertise {text:?}: bad port"))?;
    let host = host.trim_matches(|c| c == '[' || c == ']');
    if host.is_empty() {
        bail!("--advertise {text:?}: empty host");
    }
    Ok(Advertise { host: AdvertisedHost::Name(host.to_string()), port: Some(port) })
}

/// Where the broker listens and what it advertises, from the flags and Kafka's listener
/// properties, with notes for the warning line.
struct Listeners {
    listen: SocketAddr,
    advertise: Advertise,
    /// The listener of the first of `controller.listener.names`, if `listeners` has it.
    controller: Option<SocketAddr>,
}

fn listeners(
    args: &ServeArgs,
    given: &BTreeMap<String, Given>,
    notes: &mut Vec<String>,
    overridden: &mut Vec<String>,
) -> anyhow::Result<Listeners> {
    let value = |name: &str| given.get(name).map(|g| g.value.as_str());
    let mut controllers: Vec<String> = csv(value("controller.listener.names").unwrap_or(""))
        .iter()
        .map(|n| n.to_ascii_uppercase())
        .collect();
    // ZooKeeper-era Kafka's separate controller-to-broker listener.
    if let Some(name) = value("control.plane.listener.name").filter(|n| !n.trim().is_empty()) {
        controllers.push(name.trim().to_ascii_uppercase());
    }
    let protocols = security_protocols(value("listener.security.protocol.map"))?;
    // The one client listener of `listeners`, if given.
    let mut client: Option<Endpoint> = None;
    let mut controller = None;
    if let Some(text) = value("listeners") {
        let mut clients = Vec::new();
        for endpoint in endpoints("listeners", text)? {
            if controllers.first() == Some(&endpoint.name) {
                controller = Some(bind_address(&endpoint.host, endpoint.port)?);
                continue;
            }
            if controllers.contains(&endpoint.name) {
                notes.push(format!("listener {endpoint} (the controller listens on one)"));
                continue;
            }
            // Kafka refuses a listener without a name; it can only mean plaintext here.
            let protocol = if endpoint.name.is_empty() {
                "PLAINTEXT"
            } else {
                protocols.get(&endpoint.name).map(String::as_str).with_context(|| {
                    format!(
                        "listeners: no security protocol for listener {} (name it \
                         PLAINTEXT or map it in listener.security.protocol.map)",
                        endpoint.name
                    )
                })?
            };
            if protocol != "PLAINTEXT" {
                bail!(
                    "listeners: {endpoint} is a {protocol} listener, and Sluice has no TLS or \
                     SASL yet; it will not serve clients in plaintext where {protocol} was \
                     configured (use a PLAINTEXT listener)"
                );
            }
            clients.push(endpoint);
        }
        match clients.len() {
            // A controller-only node serves no clients; `process.roles` decides.
            0 => {}
            1 => client = clients.pop(),
            _ => bail!(
                "listeners: {} client listeners ({}); Sluice listens on one address: keep one \
                 (or give --listen)",
                clients.len(),
                clients.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    let client_name = client.as_ref().map_or("PLAINTEXT".to_string(), |c| c.name.clone());

    let listen = match (args.listen, &client) {
        (Some(listen), _) => {
            if client.is_some() {
                overridden.push("listeners (by --listen)".to_string());
            }
            listen
        }
        (None, Some(endpoint)) => bind_address(&endpoint.host, endpoint.port)?,
        (None, None) => DEFAULT_LISTEN,
    };

    let advertised = match value("advertised.listeners") {
        Some(text) => {
            let mut chosen = None;
            for endpoint in endpoints("advertised.listeners", text)? {
                if controllers.contains(&endpoint.name) {
                    continue;
                }
                if endpoint.name != client_name && !endpoint.name.is_empty() {
                    bail!(
                        "advertised.listeners: {endpoint} names listener {}, which Sluice does \
                         not listen on (its listener is {client_name})",
                        endpoint.name
                    );
                }
                chosen = Some(endpoint);
            }
            chosen
        }
        None => None,
    };
    let advertise = if let Some(text) = &args.advertise {
        if advertised.is_some() {
            overridden.push("advertised.listeners (by --advertise)".to_string());
        }
        advertise_flag(text)?
    } else if let Some(endpoint) = advertised {
        advertised_endpoint("advertised.listeners", &endpoint)?
    } else if let (None, Some(endpoint)) = (args.listen, &client) {
        // Kafka advertises `listeners` when `advertised.listeners` is not set.
        advertised_endpoint("listeners", endpoint)?
    } else {
        Advertise { host: AdvertisedHost::ListenIp, port: None }
    };
    Ok(Listeners { listen, advertise, controller })
}

/// This node's roles and quorum, validated as Kafka's `KafkaConfig` validates them: a
/// voter has the controller role and a controller listener whose port its voter entry
/// names; a broker-only node is not a voter; roles without voters make sense only as the
/// one-node cluster (`broker,controller`), which is also what no cluster property means.
fn cluster_config(
    given: &BTreeMap<String, Given>,
    properties: &BTreeMap<String, String>,
    node_id: i32,
    roles: Option<(bool, bool)>,
    controller_listen: Option<SocketAddr>,
) -> anyhow::Result<ClusterConfig> {
    let get = |name: &str| properties.get(name).map(String::as_str).unwrap_or("");
    let voters = parse_voters(get("controller.quorum.voters")).map_err(anyhow::Error::msg)?;
    let (broker, controller) = match (roles, voters.is_empty()) {
        (None, true) => (true, true),
        (None, false) => bail!(
            "controller.quorum.voters is set but process.roles is not: say whether this node \
             is a broker, a controller or both (process.roles=broker,controller)"
        ),
        (Some((true, true)), true) => (true, true),
        (Some(_), true) => bail!(
            "process.roles names a broker or a controller alone, but controller.quorum.voters \
             is empty: a broker needs controllers to join, a controller needs a quorum"
        ),
        (Some(roles), false) => roles,
    };
    let voter = voters.iter().find(|v| v.id == node_id);
    let mut controller_listen_checked = None;
    if !voters.is_empty() {
        match (controller, voter) {
            (true, None) => bail!(
                "node.id {node_id} has the controller role but is not in \
                 controller.quorum.voters ({})",
                get("controller.quorum.voters")
            ),
            (false, Some(v)) => bail!(
                "node.id {node_id} is a broker only, but controller.quorum.voters lists it \
                 ({v}); Kafka refuses that too"
            ),
            (true, Some(v)) => {
                let Some(listen) = controller_listen else {
                    bail!(
                        "node.id {node_id} is a controller: listeners needs the listener named \
                         first in controller.listener.names (for example \
                         CONTROLLER://{}:{} with controller.listener.names=CONTROLLER)",
                        v.host,
                        v.port
                    );
                };
                if listen.port() != v.port {
                    bail!(
                        "the controller listener {listen} is not on the port \
                         controller.quorum.voters gives node {node_id} ({v})"
                    );
                }
                controller_listen_checked = Some(listen);
            }
            (false, None) => {}
        }
    }
    let number = |name: &str| -> anyhow::Result<i64> { parse_number(name, get(name)) };
    let positive = |name: &str| -> anyhow::Result<u64> {
        u64::try_from(number(name)?)
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("{name} must be positive"))
    };
    let replication_factor = |name: &str| -> anyhow::Result<Option<i16>> {
        if !given.contains_key(name) {
            return Ok(None);
        }
        let factor: i16 = parse_number(name, get(name))?;
        if factor < 1 {
            bail!("{name} must be at least 1");
        }
        Ok(Some(factor))
    };
    let cluster = ClusterConfig {
        node_id,
        broker,
        controller,
        voters,
        controller_listen: controller_listen_checked,
        session_timeout_ms: positive("broker.session.timeout.ms")?,
        heartbeat_interval_ms: positive("broker.heartbeat.interval.ms")?,
        unclean_leader_election: parse_bool(
            "unclean.leader.election.enable",
            get("unclean.leader.election.enable"),
        )?,
        auto_leader_rebalance: parse_bool(
            "auto.leader.rebalance.enable",
            get("auto.leader.rebalance.enable"),
        )?,
        leader_imbalance_check_interval_ms: positive("leader.imbalance.check.interval.seconds")?
            .saturating_mul(1_000),
        leader_imbalance_per_broker_percentage: number("leader.imbalance.per.broker.percentage")?
            .try_into()
            .ok()
            .filter(|p: &u32| *p <= 100)
            .context("leader.imbalance.per.broker.percentage must be in [0, 100]")?,
        offsets_topic_replication_factor: replication_factor("offsets.topic.replication.factor")?,
        transaction_state_log_replication_factor: replication_factor(
            "transaction.state.log.replication.factor",
        )?,
    };
    if cluster.heartbeat_interval_ms >= cluster.session_timeout_ms {
        bail!("broker.heartbeat.interval.ms must be below broker.session.timeout.ms");
    }
    Ok(cluster)
}

/// The data directory: `--data-dir`, else `log.dirs`, else `log.dir` (Kafka reads
/// `log.dir` only without `log.dirs`), else [`DEFAULT_DATA_DIR`]. Kafka's value is a
/// list; Sluice keeps its data in one directory, so several are refused.
fn data_dir(
    args: &ServeArgs,
    given: &BTreeMap<String, Given>,
    overridden: &mut Vec<String>,
) -> anyhow::Result<PathBuf> {
    let property = ["log.dirs", "log.dir"].into_iter().find(|name| given.contains_key(*name));
    if let Some(dir) = &args.data_dir {
        if let Some(name) = property {
            overridden.push(format!("{name} (by --data-dir)"));
        }
        return Ok(dir.clone());
    }
    let Some(name) = property else { return Ok(PathBuf::from(DEFAULT_DATA_DIR)) };
    let dirs = csv(&given[name].value);
    match dirs.as_slice() {
        [dir] if !dir.is_empty() => Ok(PathBuf::from(dir)),
        [] | [_] => bail!("{name}: no directory given"),
        several => bail!(
            "{name}: {} directories ({}); Sluice keeps its data in one directory: keep one \
             (or give --data-dir)",
            several.len(),
            several.join(", ")
        ),
    }
}

/// A Kafka time given in a coarser unit, in milliseconds (`log.retention.minutes`,
/// `log.retention.hours`, `log.roll.hours`: Kafka's INT properties).
fn millis(
    given: &BTreeMap<String, Given>,
    name: &str,
    unit_ms: i64,
) -> anyhow::Result<Option<i64>> {
    let Some(g) = given.get(name) else { return Ok(None) };
    let count: i32 = parse_number(name, &g.value)?;
    Ok(Some(i64::from(count) * unit_ms))
}

/// The one warning line about what was given and not used; `None` when everything was.
fn warning(ignored: &[String], notes: &[String], overridden: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if !ignored.is_empty() {
        parts.push(format!("Kafka broker properties accepted but ignored: {}", ignored.join(", ")));
    }
    if !notes.is_empty() {
        parts.push(format!("also ignored: {}", notes.join(", ")));
    }
    if !overridden.is_empty() {
        parts.push(format!("properties overridden by flags: {}", overridden.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

impl Config {
    /// Reads the flags, the config file and the `--set` overrides into a configuration.
    /// Names Kafka's broker knows but Sluice has no use for are collected for one warning
    /// line ([`Config::ignored`]), together with the controller parts of a KRaft file
    /// that are ignored and the file properties the flags override.
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut given: BTreeMap<String, Given> = BTreeMap::new();
        if let Some(path) = &args.config {
            given.extend(read_config_file(path)?);
        }
        for item in &args.overrides {
            let Some((name, value)) = item.split_once('=') else {
                bail!("--set {item:?}: expected NAME=VALUE");
            };
            let origin = "--set".to_string();
            given
                .insert(name.trim().to_string(), Given { value: value.trim().to_string(), origin });
        }

        // Kafka's tiered-storage plugins take every name under their prefixes.
        let plugin_prefixes: Vec<&str> = [
            ("remote.log.storage.manager.impl.prefix", kafka_names::DEFAULT_PLUGIN_PREFIXES[0]),
            ("remote.log.metadata.manager.impl.prefix", kafka_names::DEFAULT_PLUGIN_PREFIXES[1]),
        ]
        .iter()
        .map(|(name, default)| given.get(*name).map_or(*default, |g| g.value.as_str()))
        .collect();
        let mut ignored = Vec::new();
        for (name, g) in &given {
            match kind_of(name, &plugin_prefixes) {
                None => return Err(unknown_name(name, &g.origin)),
                Some(Kind::Ignored) => {
                    if let Some(reason) = kafka_names::refusal(name, &g.value) {
                        bail!("{}: {name}={}: {reason}", g.origin, g.value);
                    }
                    ignored.push(name.clone());
                }
                Some(Kind::Sluice | Kind::Mapped) => {}
            }
        }

        let mut notes = Vec::new();
        let mut overridden = Vec::new();
        let roles = match given.get("process.roles") {
            Some(g) => {
                let roles = csv(&g.value);
                if let Some(role) = roles.iter().find(|r| **r != "broker" && **r != "controller") {
                    bail!(
                        "process.roles: unknown role {role:?} (broker and controller are Kafka's)"
                    );
                }
                if roles.iter().filter(|r| **r == "broker").count() > 1
                    || roles.iter().filter(|r| **r == "controller").count() > 1
                {
                    bail!("process.roles: a role named twice ({})", g.value);
                }
                // No roles is ZooKeeper-era Kafka: a broker, which here is the one-node
                // cluster as when the property is absent.
                (!roles.is_empty())
                    .then(|| (roles.contains(&"broker"), roles.contains(&"controller")))
            }
            None => None,
        };
        let Listeners { listen, advertise, controller } =
            listeners(args, &given, &mut notes, &mut overridden)?;
        let data_dir = data_dir(args, &given, &mut overridden)?;

        let mut properties: BTreeMap<String, String> =
            KNOWN.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        for (name, g) in &given {
            if properties.contains_key(name) {
                properties.insert(name.clone(), g.value.clone());
            }
        }
        // Kafka's coarser time units, used when the millisecond name is not given.
        if !given.contains_key("log.retention.ms") {
            let coarse = match millis(&given, "log.retention.minutes", 60_000)? {
                Some(ms) => Some(ms),
                None => millis(&given, "log.retention.hours", 3_600_000)?,
            };
            if let Some(ms) = coarse {
                // Kafka: a negative retention in any unit is "no limit".
                properties.insert("log.retention.ms".into(), ms.max(-1).to_string());
            }
        }
        if !given.contains_key("log.roll.ms") {
            if let Some(ms) = millis(&given, "log.roll.hours", 3_600_000)? {
                if ms < 1 {
                    bail!("log.roll.hours must be at least 1");
                }
                properties.insert("log.roll.ms".into(), ms.to_string());
            }
        }
        // KRaft's node.id, ZooKeeper-era Kafka's broker.id: either, or both when equal.
        if let Some(broker_id) = given.get("broker.id") {
            let broker_id: i32 = parse_number("broker.id", &broker_id.value)?;
            match given.get("node.id") {
                Some(node_id) if parse_number::<i32>("node.id", &node_id.value)? != broker_id => {
                    bail!(
                        "node.id ({}) and broker.id ({broker_id}) differ; Kafka refuses \
                           that too",
                        node_id.value
                    )
                }
                Some(_) => {}
                None => {
                    properties.insert("node.id".into(), broker_id.to_string());
                }
            }
        }
        let ignored = warning(&ignored, &notes, &overridden);

        let get = |name: &str| properties.get(name).map(String::as_str).unwrap_or("");
        let io_mode = match args.io {
            Some(mode) => mode,
            None => get("io.mode").parse().map_err(anyhow::Error::msg)?,
        };
        let as_u64_or_max = |name: &str| -> anyhow::Result<u64> {
            let value: i64 = parse_number(name, get(name))?;
            Ok(if value < 0 { u64::MAX } else { value as u64 })
        };
        let log = LogOptions {
            io_mode,
            segment_bytes: parse_number("log.segment.bytes", get("log.segment.bytes"))?,
            segment_ms: parse_number("log.roll.ms", get("log.roll.ms"))?,
            index_interval_bytes: parse_number(
                "log.index.interval.bytes",
                get("log.index.interval.bytes"),
            )?,
            retention_ms: parse_number("log.retention.ms", get("log.retention.ms"))?,
            retention_bytes: parse_number("log.retention.bytes", get("log.retention.bytes"))?,
            flush_messages: as_u64_or_max("log.flush.interval.messages")?,
            flush_ms: as_u64_or_max("log.flush.interval.ms")?,
            max_message_bytes: parse_number("message.max.bytes", get("message.max.bytes"))?,
            writeback_bytes: parse_number("log.writeback.bytes", get("log.writeback.bytes"))?,
            buffered_write: get("log.buffered.write")
                .parse()
                .map_err(|e: String| anyhow::anyhow!("log.buffered.write: {e}"))?,
            cache_window_bytes: match get("log.page.cache.window.bytes") {
                "auto" => sluice_engine::writeback::AUTO_WINDOW_BYTES_MAX,
                bytes => parse_number("log.page.cache.window.bytes", bytes)?,
            },
            faults: None,
        };
        if log.segment_bytes > log::SEGMENT_BYTES_MAX || log.segment_bytes < 1024 {
            bail!("log.segment.bytes must be in [1024, {}]", log::SEGMENT_BYTES_MAX);
        }
        let retention_check_interval_ms = parse_number(
            "log.retention.check.interval.ms",
            get("log.retention.check.interval.ms"),
        )?;
        let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = args.cores.unwrap_or(cores_available);
        if cores == 0 {
            bail!("--cores must be at least 1");
        }
        let num_partitions: i32 = parse_number("num.partitions", get("num.partitions"))?;
        if num_partitions < 1 {
            bail!("num.partitions must be at least 1");
        }
        let default_replication_factor: i16 =
            parse_number("default.replication.factor", get("default.replication.factor"))?;
        if default_replication_factor < 1 {
            bail!("default.replication.factor must be at least 1");
        }
        let message_timestamp_type = get("log.message.timestamp.type").to_string();
        if message_timestamp_type != "CreateTime" && message_timestamp_type != "LogAppendTime" {
            bail!("log.message.timestamp.type must be CreateTime or LogAppendTime");
        }
        let cleanup_policy = get("log.cleanup.policy").to_string();
        if cleanup_policy.split(',').any(|p| p.trim() != "delete" && p.trim() != "compact") {
            bail!("log.cleanup.policy must be delete, compact or both");
        }
        let min_insync_replicas: i32 =
            parse_number("min.insync.replicas", get("min.insync.replicas"))?;
        if min_insync_replicas < 1 {
            bail!("min.insync.replicas must be at least 1");
        }
        let socket_request_max_bytes: usize =
            parse_number("socket.request.max.bytes", get("socket.request.max.bytes"))?;
        let queued_max_requests: usize =
            parse_number("queued.max.requests", get("queued.max.requests"))?;
        let max_connections_per_shard: usize =
            parse_number("max.connections.per.shard", get("max.connections.per.shard"))?;
        if socket_request_max_bytes < 1024 || socket_request_max_bytes > i32::MAX as usize {
            bail!("socket.request.max.bytes must be in [1024, {}]", i32::MAX);
        }
        if queued_max_requests == 0 || max_connections_per_shard == 0 {
            bail!("queued.max.requests and max.connections.per.shard must be at least 1");
        }
        let number = |name: &str| -> anyhow::Result<i64> { parse_number(name, get(name)) };
        let groups = GroupConfig {
            offsets_topic_num_partitions: parse_number(
                "offsets.topic.num.partitions",
                get("offsets.topic.num.partitions"),
            )?,
            offsets_topic_segment_bytes: parse_number(
                "offsets.topic.segment.bytes",
                get("offsets.topic.segment.bytes"),
            )?,
            initial_rebalance_delay_ms: parse_number(
                "group.initial.rebalance.delay.ms",
                get("group.initial.rebalance.delay.ms"),
            )?,
            min_session_timeout_ms: parse_number(
                "group.min.session.timeout.ms",
                get("group.min.session.timeout.ms"),
            )?,
            max_session_timeout_ms: parse_number(
                "group.max.session.timeout.ms",
                get("group.max.session.timeout.ms"),
            )?,
            max_size: parse_number("group.max.size", get("group.max.size"))?,
            offsets_retention_ms: u64::try_from(number("offsets.retention.minutes")?)
                .ok()
                .and_then(|minutes| minutes.checked_mul(60_000))
                .context("offsets.retention.minutes must be positive")?,
            offsets_retention_check_interval_ms: parse_number(
                "offsets.retention.check.interval.ms",
                get("offsets.retention.check.interval.ms"),
            )?,
            offset_metadata_max_bytes: parse_number(
                "offset.metadata.max.bytes",
                get("offset.metadata.max.bytes"),
            )?,
        };
        if groups.offsets_topic_num_partitions < 1 {
            bail!("offsets.topic.num.partitions must be at least 1");
        }
        if groups.min_session_timeout_ms < 1
            || groups.min_session_timeout_ms > groups.max_session_timeout_ms
        {
            bail!("need 0 < group.min.session.timeout.ms <= group.max.session.timeout.ms");
        }
        if groups.max_size == 0 || groups.offsets_retention_check_interval_ms == 0 {
            bail!("group.max.size and offsets.retention.check.interval.ms must be positive");
        }
        if groups.offsets_topic_segment_bytes > log::SEGMENT_BYTES_MAX
            || groups.offsets_topic_segment_bytes < 1024
        {
            bail!("offsets.topic.segment.bytes must be in [1024, {}]", log::SEGMENT_BYTES_MAX);
        }
        let txns = TxnConfig {
            state_log_num_partitions: number("transaction.state.log.num.partitions")?
                .try_into()
                .ok()
                .filter(|&n: &i32| n >= 1)
                .context("transaction.state.log.num.partitions must be in [1, 2^31)")?,
            state_log_segment_bytes: u64::try_from(number("transaction.state.log.segment.bytes")?)
                .ok()
                .filter(|&n| (1024..=log::SEGMENT_BYTES_MAX).contains(&n))
                .with_context(|| {
                    format!(
                        "transaction.state.log.segment.bytes must be in [1024, {}]",
                        log::SEGMENT_BYTES_MAX
                    )
                })?,
            max_timeout_ms: number("transaction.max.timeout.ms")?,
        };
        if txns.max_timeout_ms < 1 || txns.max_timeout_ms > i64::from(i32::MAX) {
            bail!("transaction.max.timeout.ms must be in [1, {}]", i32::MAX);
        }
        let node_id: i32 = parse_number("node.id", get("node.id"))?;
        let cluster = cluster_config(&given, &properties, node_id, roles, controller)?;
        Ok(Config {
            groups,
            txns,
            num_partitions,
            default_replication_factor,
            auto_create_topics: parse_bool(
                "auto.create.topics.enable",
                get("auto.create.topics.enable"),
            )?,
            delete_topic_enable: parse_bool("delete.topic.enable", get("delete.topic.enable"))?,
            cleanup_policy,
            message_timestamp_type,
            min_insync_replicas,
            node_id,
            cluster,
            socket_request_max_bytes,
            queued_max_requests,
            max_connections_per_shard,
            stall_threshold_ms: parse_number(
                "reactor.stall.threshold.ms",
                get("reactor.stall.threshold.ms"),
            )?,
            idle_poll_us: parse_number("reactor.idle.poll.us", get("reactor.idle.poll.us"))?,
            request_latency_log_interval_ms: parse_number(
                "request.latency.log.interval.ms",
                get("request.latency.log.interval.ms"),
            )?,
            replication: ReplicationConfig {
                lag_time_max_ms: parse_positive(
                    "replica.lag.time.max.ms",
                    get("replica.lag.time.max.ms"),
                )?,
                fetch_wait_max_ms: parse_positive(
                    "replica.fetch.wait.max.ms",
                    get("replica.fetch.wait.max.ms"),
                )?,
                fetch_max_bytes: parse_positive(
                    "replica.fetch.max.bytes",
                    get("replica.fetch.max.bytes"),
                )?,
                fetch_response_max_bytes: parse_positive(
                    "replica.fetch.response.max.bytes",
                    get("replica.fetch.response.max.bytes"),
                )?,
                fetch_backoff_ms: parse_number(
                    "replica.fetch.backoff.ms",
                    get("replica.fetch.backoff.ms"),
                )?,
            },
            listen,
            advertise,
            data_dir,
            ignored,
            cores,
            log,
            retention_check_interval_ms,
            cache_window_auto: get("log.page.cache.window.bytes") == "auto",
            properties,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;
    use sluice_engine::io::BufferedWrite;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let cli = Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))?;
        Config::from_args(&cli.serve)
    }

    /// Writes `text` as `file_name` in a fresh temp dir and loads it with `--config`
    /// followed by `args`.
    fn with_file(file_name: &str, text: &str, args: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let mut all = vec!["--config", path];
        all.extend_from_slice(args);
        config(&all)
    }

    fn error_of(result: anyhow::Result<Config>) -> String {
        format!("{:#}", result.expect_err("an error"))
    }

    fn name(host: &str, port: u16) -> Advertise {
        Advertise { host: AdvertisedHost::Name(host.to_string()), port: Some(port) }
    }

    /// The settings of Kafka 3.x's `config/kraft/server.properties` (a combined broker
    /// and controller), as shipped, with common tuning lines added.
    const KAFKA_3_KRAFT: &str = "\
# The role of this server. Setting this puts us in KRaft mode
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
#   FORMAT:
#     listeners = listener_name://host_name:port
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
inter.broker.listener.name=PLAINTEXT
advertised.listeners=PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
num.network.threads=3
num.io.threads=8
socket.send.buffer.bytes=102400
socket.receive.buffer.bytes=102400
socket.request.max.bytes=104857600
log.dirs=/tmp/kraft-combined-logs
num.partitions=1
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
#log.flush.interval.messages=10000
#log.flush.interval.ms=1000
log.retention.hours=168
#log.retention.bytes=1073741824
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000

# Tuning a production file usually has.
num.replica.fetchers=4
replica.lag.time.max.ms=30000
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
message.max.bytes=2097152
compression.type=producer
unclean.leader.election.enable=false
log.cleaner.threads=2
";

    #[test]
    fn a_three_node_quorum_as_kafka_configures_it() {
        let args = [
            "--set",
            "node.id=2",
            "--set",
            "process.roles=broker,controller",
            "--set",
            "listeners=PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093",
            "--set",
            "controller.listener.names=CONTROLLER",
            "--set",
            "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:29093,3@127.0.0.1:39093",
            "--set",
            "transaction.state.log.replication.factor=2",
        ];
        let three = config(&args).unwrap();
        let cluster = &three.cluster;
        assert_eq!((cluster.node_id, cluster.broker, cluster.controller), (2, true, true));
        assert_eq!(cluster.voters.len(), 3);
        assert_eq!(cluster.controller_listen.unwrap().to_string(), "127.0.0.1:29093");
        assert_eq!(three.listen.to_string(), "127.0.0.1:29092");
        assert_eq!(cluster.offsets_topic_replication_factor, None, "not set: min(3, brokers)");
        assert_eq!(cluster.transaction_state_log_replication_factor, Some(2));
        assert_eq!(cluster.session_timeout_ms, 9_000);
        assert!(!cluster.unclean_leader_election);

        // A broker-only node names the controllers and listens for clients only.
        let broker = config(&[
            "--set",
            "node.id=4",
            "--set",
            "process.roles=broker",
            "--set",
            "controller.listener.names=CONTROLLER",
            "--set",
            "controller.quorum.voters=1@127.0.0.1:19093",
        ])
        .unwrap();
        assert!(broker.cluster.broker && !broker.cluster.controller);
        assert_eq!(broker.cluster.controller_listen, None);

        // No cluster property: a one-node cluster, broker and controller.
        let single = config(&[]).unwrap();
        assert!(single.cluster.is_single_node());
        assert!(single.cluster.broker && single.cluster.controller);
    }

    #[test]
    fn kafka_3_kraft_server_properties() {
        let config = with_file("server.properties", KAFKA_3_KRAFT, &[]).unwrap();
        assert_eq!(config.cluster.voters.len(), 1);
        assert_eq!(config.cluster.controller_listen.unwrap().to_string(), "0.0.0.0:9093");
        assert_eq!(config.listen.to_string(), "0.0.0.0:9092", "empty host: every interface");
        assert_eq!(config.advertise, name("localhost", 9092));
        assert_eq!(config.data_dir, PathBuf::from("/tmp/kraft-combined-logs"));
        assert_eq!(config.node_id, 1);
        assert_eq!(config.log.retention_ms, 168 * 3_600_000);
        assert_eq!(config.properties["log.retention.ms"], "604800000");
        assert_eq!(config.groups.initial_rebalance_delay_ms, 0);
        assert!(!config.auto_create_topics);
        assert_eq!(config.log.max_message_bytes, 2_097_152);
        assert_eq!(
            config.ignored.as_deref(),
            Some(
                "Kafka broker properties accepted but ignored: compression.type, \
                 inter.broker.listener.name, log.cleaner.threads, num.io.threads, \
                 num.network.threads, num.recovery.threads.per.data.dir, num.replica.fetchers, \
                 socket.receive.buffer.bytes, socket.send.buffer.bytes, \
                 transaction.state.log.min.isr"
            )
        );
    }

    /// Kafka 4.x ships one KRaft `config/server.properties`: the 3.x one with the dynamic
    /// quorum's bootstrap servers and the share-group state topic.
    #[test]
    fn kafka_4_server_properties() {
        let text = KAFKA_3_KRAFT.replace(
            "controller.quorum.voters=1@localhost:9093",
            "controller.quorum.bootstrap.servers=localhost:9093",
        ) + "share.coordinator.state.topic.replication.factor=1\n\
               share.coordinator.state.topic.min.isr=1\n";
        let config = with_file("server.properties", &text, &[]).unwrap();
        assert_eq!(config.advertise, name("localhost", 9092));
        let ignored = config.ignored.unwrap();
        for name in [
            "controller.quorum.bootstrap.servers",
            "share.coordinator.state.topic.min.isr",
            "share.coordinator.state.topic.replication.factor",
        ] {
            assert!(ignored.contains(name), "{name}: {ignored}");
        }
    }

    /// Kafka 3.x's ZooKeeper-mode `config/server.properties`: `broker.id` is the node id;
    /// without `listeners` Sluice keeps its own default address.
    #[test]
    fn kafka_3_zookeeper_server_properties() {
        let text = "broker.id=7\nnum.network.threads=3\nlog.dirs=/tmp/kafka-logs\n\
                    num.partitions=3\nlog.retention.hours=1\n\
                    zookeeper.connect=localhost:2181\nzookeeper.connection.timeout.ms=18000\n\
                    group.initial.rebalance.delay.ms=0\n";
        let config = with_file("server.properties", text, &[]).unwrap();
        assert_eq!(config.node_id, 7);
        assert_eq!(config.properties["node.id"], "7");
        assert_eq!(config.num_partitions, 3);
        assert_eq!(config.log.retention_ms, 3_600_000);
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(config.advertise, Advertise { host: AdvertisedHost::ListenIp, port: None });
        assert_eq!(config.data_dir, PathBuf::from("/tmp/kafka-logs"));
        assert_eq!(
            config.ignored.as_deref(),
            Some(
                "Kafka broker properties accepted but ignored: num.network.threads, \
                 zookeeper.connect, zookeeper.connection.timeout.ms"
            )
        );
    }

    /// Flags over `--set` over the file over the defaults.
    #[test]
    fn precedence() {
        let text = "listeners=PLAINTEXT://127.0.0.1:9300\nlog.dirs=/from/file\nnum.partitions=2\n";
        let file = with_file("server.properties", text, &[]).unwrap();
        assert_eq!(file.listen.to_string(), "127.0.0.1:9300");
        assert_eq!(file.advertise, name("127.0.0.1", 9300));
        assert_eq!(file.data_dir, PathBuf::from("/from/file"));
        assert_eq!(file.num_partitions, 2);
        assert_eq!(file.ignored, None);

        let set = with_file(
            "server.properties",
            text,
            &[
                "--set",
                "log.dirs=/from/set",
                "--set",
                "listeners=PLAINTEXT://127.0.0.2:9301",
                "--set",
                "num.partitions=4",
            ],
        )
        .unwrap();
        assert_eq!(set.listen.to_string(), "127.0.0.2:9301");
        assert_eq!(set.data_dir, PathBuf::from("/from/set"));
        assert_eq!(set.num_partitions, 4);

        let flags = with_file(
            "server.properties",
            text,
            &[
                "--set",
                "log.dirs=/from/set",
                "--data-dir",
                "/from/flag",
                "--listen",
                "127.0.0.3:9302",
            ],
        )
        .unwrap();
        assert_eq!(flags.listen.to_string(), "127.0.0.3:9302");
        assert_eq!(flags.advertise, Advertise { host: AdvertisedHost::ListenIp, port: None });
        assert_eq!(flags.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(
            flags.ignored.as_deref(),
            Some(
                "properties overridden by flags: listeners (by --listen), log.dirs (by --data-dir)"
            )
        );
        let advertise = with_file(
            "server.properties",
            "advertised.listeners=PLAINTEXT://broker.example:19092\n",
            &["--advertise", "other.example:29092"],
        )
        .unwrap();
        assert_eq!(advertise.advertise, name("other.example", 29092));
        let advertised = with_file(
            "server.properties",
            "advertised.listeners=PLAINTEXT://broker.example:19092\n",
            &[],
        )
        .unwrap();
        assert_eq!(advertised.advertise, name("broker.example", 19092));
        assert_eq!(advertised.listen, DEFAULT_LISTEN);
    }

    /// The README's quick start: no config at all.
    #[test]
    fn no_config_is_the_quick_start() {
        let config = config(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.advertise, Advertise { host: AdvertisedHost::ListenIp, port: None });
        assert_eq!(config.ignored, None);
    }

    #[test]
    fn listener_forms() {
        let listen = |listeners: &str| {
            with_file("server.properties", &format!("listeners={listeners}\n"), &[])
        };
        let empty_host = listen("PLAINTEXT://:9092").unwrap();
        assert_eq!(empty_host.listen.to_string(), "0.0.0.0:9092");
        assert_eq!(
            empty_host.advertise,
            Advertise { host: AdvertisedHost::MachineName, port: Some(9092) }
        );
        // No listener name: Kafka refuses it; it can only mean plaintext to Sluice.
        let no_name = listen("://:9092").unwrap();
        assert_eq!(no_name.listen.to_string(), "0.0.0.0:9092");
        let ipv6 = listen("PLAINTEXT://[::1]:9093").unwrap();
        assert_eq!(ipv6.listen.to_string(), "[::1]:9093");
        assert_eq!(ipv6.advertise, name("::1", 9093));
        let named = listen("plaintext://localhost:9094").unwrap();
        assert!(named.listen.ip().is_loopback(), "{}", named.listen);
        assert_eq!(named.advertise, name("localhost", 9094));
        let port_zero = listen("PLAINTEXT://127.0.0.1:0").unwrap();
        assert_eq!(port_zero.advertise.port, None, "the bound port is advertised");
        // A listener with a name of its own, mapped to PLAINTEXT.
        let mapped = with_file(
            "server.properties",
            "listeners=CLIENT://127.0.0.1:9095,BROKER_CONTROLLER://:9096\n\
             listener.security.protocol.map=CLIENT:PLAINTEXT,BROKER_CONTROLLER:SSL\n\
             controller.listener.names=BROKER_CONTROLLER\n\
             advertised.listeners=CLIENT://kafka-1.example:9095\n",
            &[],
        )
        .unwrap();
        assert_eq!(mapped.listen.to_string(), "127.0.0.1:9095");
        assert_eq!(mapped.advertise, name("kafka-1.example", 9095));

        // Kafka refuses to advertise 0.0.0.0; so do we, unless advertised.listeners says.
        let wildcard = error_of(listen("PLAINTEXT://0.0.0.0:9092"));
        assert!(
            wildcard.contains("0.0.0.0") && wildcard.contains("advertised.listeners"),
            "{wildcard}"
        );
        let advertised = with_file(
            "server.properties",
            "listeners=PLAINTEXT://0.0.0.0:9092\nadvertised.listeners=PLAINTEXT://10.0.0.5:9092\n",
            &[],
        )
        .unwrap();
        assert_eq!(advertised.listen.to_string(), "0.0.0.0:9092");
        assert_eq!(advertised.advertise, name("10.0.0.5", 9092));

        for (listeners, expected) in [
            ("PLAINTEXT://:9092,OTHER://:9093", "no security protocol for listener OTHER"),
            ("PLAINTEXT://:9092,PLAINTEXT://:9093", "given twice"),
            ("PLAINTEXT:9092", "NAME://HOST:PORT"),
            ("PLAINTEXT://:99999", "bad port"),
            ("PLAINTEXT://:9092,INTERNAL://:9093", "no security protocol"),
        ] {
            let error = error_of(listen(listeners));
            assert!(error.contains(expected), "{listeners}: {error}");
        }
        let two = error_of(with_file(
            "server.properties",
            "listeners=PLAINTEXT://:9092,INTERNAL://:9093\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT\n",
            &[],
        ));
        assert!(two.contains("2 client listeners") && two.contains("one address"), "{two}");
        let other_name = error_of(with_file(
            "server.properties",
            "listeners=PLAINTEXT://:9092\nadvertised.listeners=EXTERNAL://a.example:9092\n",
            &[],
        ));
        assert!(other_name.contains("EXTERNAL"), "{other_name}");
    }

    /// A client listener Sluice cannot secure stops the broker, as does an authorizer or
    /// a policy plugin; SSL and SASL settings without such a listener are ignored.
    #[test]
    fn security_that_cannot_be_honoured_is_an_error() {
        for (text, expected) in [
            ("listeners=SSL://:9093\n", "SSL listener"),
            ("listeners=SASL_PLAINTEXT://:9093\n", "SASL_PLAINTEXT listener"),
            (
                "listeners=CLIENT://:9093\nlistener.security.protocol.map=CLIENT:SASL_SSL\n",
                "SASL_SSL listener",
            ),
            (
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n",
                "ACLs would not be enforced",
            ),
            ("create.topic.policy.class.name=com.example.Policy\n", "policy"),
            ("listener.security.protocol.map=PLAINTEXT:TLS\n", "invalid security protocol"),
        ] {
            let error = error_of(with_file("server.properties", text, &[]));
            assert!(error.contains(expected), "{text}: {error}");
        }
        let config = with_file(
            "server.properties",
            "listeners=PLAINTEXT://127.0.0.1:9092\nauthorizer.class.name=\n\
             ssl.keystore.location=/etc/kafka/keystore.jks\nssl.client.auth=required\n\
             listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=x required;\n\
             super.users=User:admin\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.ignored.as_deref(),
            Some(
                "Kafka broker properties accepted but ignored: authorizer.class.name, \
                 listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config, ssl.client.auth, \
                 ssl.keystore.location, super.users"
            )
        );
    }

    #[test]
    fn unknown_names_are_errors_with_a_hint() {
        let typo = error_of(with_file("server.properties", "# c\nnum.partition=3\n", &[]));
        assert!(typo.contains("server.properties line 2"), "{typo}");
        assert!(typo.contains("unknown broker property \"num.partition\""), "{typo}");
        assert!(typo.contains("did you mean \"num.partitions\"?"), "{typo}");
        let swapped = error_of(config(&["--set", "log.retention.hurs=1"]));
        assert!(swapped.starts_with("--set: "), "{swapped}");
        assert!(swapped.contains("did you mean \"log.retention.hours\"?"), "{swapped}");
        let kafka_typo = error_of(config(&["--set", "num.netwrok.threads=3"]));
        assert!(kafka_typo.contains("did you mean \"num.network.threads\"?"), "{kafka_typo}");
        let topic = error_of(config(&["--set", "retention.ms=5"]));
        assert!(
            topic.contains("topic config") && topic.contains("\"log.retention.ms\""),
            "{topic}"
        );
        let far = error_of(config(&["--set", "totally.unrelated.thing=1"]));
        assert!(!far.contains("did you mean"), "{far}");
        assert_eq!(edit_distance("listeners", "listenres"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn kafka_rules_that_are_errors() {
        for (text, expected) in [
            ("log.dirs=/a,/b\n", "2 directories"),
            ("log.dirs=\n", "no directory"),
            ("process.roles=controller\n", "controller.quorum.voters is empty"),
            ("process.roles=broker\n", "controller.quorum.voters is empty"),
            ("controller.quorum.voters=1@h:9093\n", "process.roles is not"),
            (
                "process.roles=broker,controller\nnode.id=2\ncontroller.quorum.voters=1@h:9093\n",
                "not in controller.quorum.voters",
            ),
            (
                "process.roles=broker\nnode.id=1\ncontroller.quorum.voters=1@h:9093\n",
                "is a broker only",
            ),
            (
                "process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@h:9093\n",
                "needs the listener named first in controller.listener.names",
            ),
            (
                "process.roles=controller\nnode.id=1\ncontroller.quorum.voters=1@h:9093\n\
                 listeners=CONTROLLER://127.0.0.1:9094\ncontroller.listener.names=CONTROLLER\n",
                "not on the port",
            ),
            ("controller.quorum.voters=1@h\n", "ID@HOST:PORT"),
            ("broker.heartbeat.interval.ms=9000\n", "below broker.session.timeout.ms"),
            ("offsets.topic.replication.factor=0\n", "at least 1"),
            ("process.roles=broker,observer\n", "unknown role"),
            ("process.roles=broker,broker\n", "named twice"),
            ("node.id=1\nbroker.id=2\n", "differ"),
            ("log.roll.hours=0\n", "log.roll.hours"),
            ("log.retention.hours=x\n", "log.retention.hours"),
        ] {
            let error = error_of(with_file("server.properties", text, &[]));
            assert!(error.contains(expected), "{text}: {error}");
        }
        // Several directories are fine when --data-dir decides.
        let flag =
            with_file("server.properties", "log.dirs=/a,/b\n", &["--data-dir", "/c"]).unwrap();
        assert_eq!(flag.data_dir, PathBuf::from("/c"));
        // log.dir is read only without log.dirs, as in Kafka.
        let both = with_file("server.properties", "log.dir=/one\nlog.dirs=/two\n", &[]).unwrap();
        assert_eq!(both.data_dir, PathBuf::from("/two"));
        let dir = with_file("server.properties", "log.dir=/one\nprocess.roles=\n", &[]).unwrap();
        assert_eq!(dir.data_dir, PathBuf::from("/one"));
    }

    /// Kafka's precedence of time units: ms, then minutes, then hours.
    #[test]
    fn retention_and_roll_in_coarser_units() {
        let retention =
            |text: &str| with_file("server.properties", text, &[]).unwrap().log.retention_ms;
        assert_eq!(retention("log.retention.hours=2\n"), 7_200_000);
        assert_eq!(retention("log.retention.hours=2\nlog.retention.minutes=3\n"), 180_000);
        assert_eq!(retention("log.retention.minutes=3\nlog.retention.ms=5\n"), 5);
        assert_eq!(retention("log.retention.hours=-1\n"), -1);
        let roll = with_file("server.properties", "log.roll.hours=24\n", &[]).unwrap();
        assert_eq!(roll.log.segment_ms, 86_400_000);
        let roll =
            with_file("server.properties", "log.roll.hours=24\nlog.roll.ms=10\n", &[]).unwrap();
        assert_eq!(roll.log.segment_ms, 10);
    }

    #[test]
    fn file_formats() {
        let path = Path::new;
        assert_eq!(file_format(path("a.toml"), "x=1"), FileFormat::Toml);
        assert_eq!(file_format(path("a.TOML"), "x=1"), FileFormat::Toml);
        assert_eq!(file_format(path("a.properties"), "\"x\" = 1"), FileFormat::Properties);
        assert_eq!(
            file_format(path("sluice.conf"), "# c\n\n\"log.segment.bytes\" = 1"),
            FileFormat::Toml
        );
        assert_eq!(file_format(path("sluice.conf"), "[section]\n"), FileFormat::Toml);
        assert_eq!(
            file_format(path("server.cfg"), "! c\nlog.segment.bytes=1"),
            FileFormat::Properties
        );
        assert_eq!(file_format(path("noext"), ""), FileFormat::Properties);

        // The same settings in both formats, with no extension to go by.
        let toml = with_file(
            "broker.conf",
            "# TOML\n\"log.segment.bytes\" = 4096\n\"auto.create.topics.enable\" = false\n\
             \"log.dirs\" = [\"/only\"]\n",
            &[],
        )
        .unwrap();
        let properties = with_file(
            "broker.conf",
            "# properties\nlog.segment.bytes = 4096\nauto.create.topics.enable: false\nlog.dirs /only\n",
            &[],
        )
        .unwrap();
        for config in [&toml, &properties] {
            assert_eq!(config.log.segment_bytes, 4096);
            assert!(!config.auto_create_topics);
            assert_eq!(config.data_dir, PathBuf::from("/only"));
        }
        let dotted = error_of(with_file("sluice.toml", "log.segment.bytes = 4096\n", &[]));
        assert!(dotted.contains("must be quoted"), "{dotted}");
        let list = error_of(with_file("sluice.toml", "\"log.dirs\" = [\"/a\", \"/b\"]\n", &[]));
        assert!(list.contains("2 directories"), "{list}");
    }

    #[test]
    fn defaults_are_kafkas() {
        let config = config(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.log.segment_bytes, 1 << 30);
        assert_eq!(config.log.retention_ms, 604_800_000);
        assert_eq!(config.log.flush_messages, i64::MAX as u64);
        assert_eq!(config.log.io_mode, IoMode::Buffered);
        assert_eq!(config.stall_threshold_ms, 0, "stall reports are off by default");
        let config = self::config(&["--set", "reactor.stall.threshold.ms=25"]).unwrap();
        assert_eq!(config.stall_threshold_ms, 25);
        assert!(self::config(&["--set", "reactor.stall.threshold.ms=-1"]).is_err());
        assert_eq!(config.request_latency_log_interval_ms, 0, "latency logged at stop only");
        assert_eq!(config.log.writeback_bytes, 1 << 20, "early writeback per MiB");
        assert_eq!(config.log.buffered_write, BufferedWrite::Inline);
        assert!(config.cache_window_auto, "windows share a page-cache budget");
        assert_eq!(config.idle_poll_us, 200, "busy shards poll before they sleep");
        let config = self::config(&[
            "--set",
            "log.writeback.bytes=0",
            "--set",
            "request.latency.log.interval.ms=1000",
            "--set",
            "log.buffered.write=io_uring",
            "--set",
            "log.page.cache.window.bytes=268435456",
            "--set",
            "reactor.idle.poll.us=0",
        ])
        .unwrap();
        assert_eq!(config.log.writeback_bytes, 0);
        assert_eq!(config.request_latency_log_interval_ms, 1000);
        assert_eq!(config.log.buffered_write, BufferedWrite::Uring);
        assert_eq!(config.log.cache_window_bytes, 256 << 20);
        assert!(!config.cache_window_auto);
        assert_eq!(config.idle_poll_us, 0);
        assert!(self::config(&["--set", "log.writeback.bytes=-1"]).is_err());
        assert!(self::config(&["--set", "log.buffered.write=uring"]).is_err());
        assert!(self::config(&["--set", "log.page.cache.window.bytes=-1"]).is_err());
    }

    #[test]
    fn file_then_set_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "\"log.segment.bytes\" = 4096\n\"log.retention.ms\" = 5\n").unwrap();
        let path = path.to_str().unwrap();
        let config =
            config(&["--config", path, "--set", "log.retention.ms=7", "--io", "direct"]).unwrap();
        assert_eq!(config.log.segment_bytes, 4096);
        assert_eq!(config.log.retention_ms, 7);
        assert_eq!(config.log.io_mode, IoMode::Direct);
        assert!(super::Config::from_args(
            &Cli::try_parse_from(["s", "--set", "nope=1"]).unwrap().serve
        )
        .is_err());
        assert!(super::Config::from_args(
            &Cli::try_parse_from(["s", "--set", "log.segment.bytes=x"]).unwrap().serve
        )
        .is_err());
    }

    /// The README's Configuration section, whose tables document every broker property.
    const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));

    /// The property rows of the README's Configuration section, as (name, default cell):
    /// every table row whose first cell is one name in backticks (the flags table's rows
    /// start with `--` and are left out).
    fn readme_property_rows() -> Vec<(&'static str, &'static str)> {
        let start = README.find("\n## Configuration\n").expect("a Configuration section");
        let section = &README[start + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        section
            .lines()
            .filter_map(|line| {
                let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
                let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                if name.starts_with("--") || name.contains('`') {
                    return None;
                }
                Some((name, cells.next()?))
            })
            .collect()
    }

    /// Every property in [`KNOWN`] has one row in the README's Configuration section,
    /// `| `name` | default | meaning |`, whose default cell is the code's default in
    /// backticks, exactly as [`KNOWN`] spells it (`1073741824`, `-1`, `auto`, `inline`,
    /// `CreateTime`), alone or followed by a space and a parenthesised gloss: `0 (off)`,
    /// `1073741824 (1 GiB)`. An empty default would be written `""`. Every other property
    /// row names a Kafka name Sluice maps ([`MAPPED`]); those have no default to check.
    #[test]
    fn readme_documents_every_property_and_its_default() {
        let rows = readme_property_rows();
        for (name, default) in KNOWN {
            let cells: Vec<&str> =
                rows.iter().filter(|(row, _)| row == name).map(|(_, cell)| *cell).collect();
            let [cell] = cells.as_slice() else {
                panic!("README: {} rows for `{name}`, expected one", cells.len());
            };
            let shown =
                if default.is_empty() { "`\"\"`".to_string() } else { format!("`{default}`") };
            let rest = cell.strip_prefix(shown.as_str()).unwrap_or_else(|| {
                panic!("README: `{name}` default cell {cell:?} does not start with {shown}")
            });
            assert!(
                rest.is_empty() || (rest.starts_with(" (") && rest.ends_with(')')),
                "README: `{name}` default cell {cell:?}: after {shown} only a \"(gloss)\""
            );
        }
        for (name, _) in &rows {
            assert!(
                KNOWN.iter().any(|(known, _)| known == name) || MAPPED.contains(name),
                "README: a row for `{name}`, which is neither a Sluice property nor a mapped \
                 Kafka name"
            );
        }
        for name in MAPPED {
            assert!(rows.iter().any(|(row, _)| row == name), "README: no row for `{name}`");
        }
    }
}
