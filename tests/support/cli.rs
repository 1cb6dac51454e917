//! `sluice topic` and `sluice cluster`, the admin CLI, run as the built binary against a
//! real broker: every verb's output (tables and `--json`), what it changed as seen by the
//! next command, and the Kafka errors (named, exit status 1) of the usual mistakes.

use std::collections::BTreeMap;
use std::process::Command;

use crate::harness::Broker;

/// The result of one CLI run.
struct Run {
    /// The exit status code (2: a usage error).
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit status 0 and returns stdout.
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self.stdout
    }

    /// Asserts exit status 1 with `error` in stderr; returns stdout.
    fn fails_with(self, error: &str) -> String {
        assert_eq!(self.code, 1, "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(self.stderr.contains(error), "no {error} in stderr:\n{}", self.stderr);
        self.stdout
    }
}

/// Runs `sluice ARGS --brokers ADDRESS` (SLUICE_BROKERS unset).
fn sluice(address: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--brokers", address])
        .env_remove("SLUICE_BROKERS")
        .output()
        .unwrap();
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// The whitespace-separated cells of the rows under the table header whose first words
/// are `header`'s, up to the next empty line.
fn rows(text: &str, header: &str) -> Vec<Vec<String>> {
    let starts = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.starts_with(&header.split_whitespace().collect::<Vec<_>>())
    };
    let mut lines = text.lines().skip_while(|l| !starts(l));
    assert!(lines.next().is_some(), "no table {header:?} in:\n{text}");
    lines
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// A parsed JSON value: just enough JSON for the CLI's output (no serde in the crate).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(i64),
    Str(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    fn parse(text: &str) -> Json {
        let mut chars = text.trim().chars().peekable();
        let value = Json::value(&mut chars);
        assert!(chars.next().is_none(), "text after the JSON value:\n{text}");
        value
    }

    fn value(chars: &mut std::iter::Peekable<std::str::Chars>) -> Json {
        let skip = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        };
        skip(chars);
        let value = match chars.next().expect("a JSON value") {
            'n' => Json::word(chars, "ull", Json::Null),
            't' => Json::word(chars, "rue", Json::Bool(true)),
            'f' => Json::word(chars, "alse", Json::Bool(false)),
            '"' => Json::Str(Json::string(chars)),
            '[' => {
                let mut items = Vec::new();
                skip(chars);
                if chars.peek() == Some(&']') {
                    chars.next();
                } else {
                    loop {
                        items.push(Json::value(chars));
                        match chars.next() {
                            Some(',') => {}
                            Some(']') => break,
                            other => panic!("expected , or ] in an array, got {other:?}"),
                        }
                    }
                }
                Json::Array(items)
            }
            '{' => {
                let mut fields = BTreeMap::new();
                skip(chars);
                if chars.peek() == Some(&'}') {
                    chars.next();
                } else {
                    loop {
                        skip(chars);
                        assert_eq!(chars.next(), Some('"'), "a key");
                        let key = Json::string(chars);
                        skip(chars);
                        assert_eq!(chars.next(), Some(':'));
                        fields.insert(key, Json::value(chars));
                        match chars.next() {
                            Some(',') => {}
                            Some('}') => break,
                            other => panic!("expected , or }} in an object, got {other:?}"),
                        }
                    }
                }
                Json::Object(fields)
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut digits = c.to_string();
                while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                    digits.push(chars.next().unwrap());
                }
                Json::Number(digits.parse().unwrap())
            }
            other => panic!("unexpected {other:?} in JSON"),
        };
        skip(chars);
        value
    }

    fn word(chars: &mut std::iter::Peekable<std::str::Chars>, rest: &str, value: Json) -> Json {
        for expected in rest.chars() {
            assert_eq!(chars.next(), Some(expected));
        }
        value
    }

    /// The rest of a string after its opening quote.
    fn string(chars: &mut std::iter::Peekable<std::str::Chars>) -> String {
        let mut s = String::new();
        loop {
            match chars.next().expect("a closing quote") {
                '"' => return s,
                '\\' => match chars.next().expect("an escape") {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        s.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                    }
                    c => s.push(c),
                },
                c => s.push(c),
            }
        }
    }

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(fields) => fields.get(key).unwrap_or_else(|| panic!("no {key}: {self:?}")),
            other => panic!("not an object: {other:?}"),
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    fn int(&self) -> i64 {
        match self {
            Json::Number(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    fn ints(&self) -> Vec<i64> {
        self.items().iter().map(Json::int).collect()
    }
}

/// The topic called `name` in `describe --json` output.
fn described(address: &str, name: &str) -> Json {
    let json = Json::parse(&sluice(address, &["topic", "describe", name, "--json"]).ok());
    assert_eq!(json.items().len(), 1, "{json:?}");
    let topic = json.items()[0].clone();
    assert_eq!(topic.get("name").str(), name);
    topic
}

#[test]
fn topic_and_cluster_commands_change_and_show_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--cores", "1"]);
    let address = broker.address();
    let cli = |args: &[&str]| sluice(&address, args);

    // Create, with configs; validate-only creates nothing.
    let created = cli(&[
        "topic",
        "create",
        "cli-orders",
        "--partitions",
        "3",
        "--replication-factor",
        "1",
        "--config",
        "retention.ms=86400000",
        "-c",
        "cleanup.policy=compact",
    ])
    .ok();
    assert!(created.starts_with("Created topic 'cli-orders' (topic id "), "{created}");
    assert!(created.ends_with(", 3 partition(s), replication factor 1).\n"), "{created}");
    let validated = cli(&["topic", "create", "cli-dry", "-p", "2", "--validate-only"]).ok();
    assert!(validated.starts_with("Topic 'cli-dry' is valid"), "{validated}");
    assert!(validated.contains("2 partition(s)"), "{validated}");

    // List: the created topic only (the validated one does not exist).
    let listed = cli(&["topic", "list"]).ok();
    assert_eq!(rows(&listed, "TOPIC"), [["cli-orders", "3", "1"]], "{listed}");
    let listed = Json::parse(&cli(&["topic", "list", "--json"]).ok());
    assert_eq!(listed.items().len(), 1, "{listed:?}");
    let topic_id = listed.items()[0].get("topic_id").str().to_string();
    assert_eq!(topic_id.len(), 22, "Kafka's base64 form: {topic_id}");
    assert!(created.contains(&topic_id), "{created}");

    // Describe: the topic row with its configs, then one row per partition, each led by
    // its one replica, in the ISR.
    let text = cli(&["topic", "describe", "cli-orders"]).ok();
    eprintln!("{text}");
    assert_eq!(
        rows(&text, "TOPIC TOPIC-ID"),
        [["cli-orders", &topic_id, "3", "1", "cleanup.policy=compact,retention.ms=86400000"]]
    );
    let partitions = rows(&text, "TOPIC PARTITION");
    assert_eq!(partitions.len(), 3, "{text}");
    for (index, row) in partitions.iter().enumerate() {
        assert_eq!(row[0], "cli-orders");
        assert_eq!(row[1], index.to_string());
        assert_eq!([&row[3], &row[4], &row[5]], [&row[2], &row[2], "-"], "{text}");
    }
    let topic = described(&address, "cli-orders");
    assert_eq!(topic.get("topic_id").str(), topic_id);
    assert_eq!(topic.get("internal"), &Json::Bool(false));
    assert_eq!(topic.get("partition_count").int(), 3);
    assert_eq!(topic.get("replication_factor").int(), 1);
    assert_eq!(topic.get("configs").get("retention.ms").str(), "86400000");
    assert_eq!(topic.get("configs").get("cleanup.policy").str(), "compact");
    let indexes: Vec<i64> =
        topic.get("partitions").items().iter().map(|p| p.get("partition").int()).collect();
    assert_eq!(indexes, [0, 1, 2]);
    let node = topic.get("partitions").items()[0].get("leader").int();
    for partition in topic.get("partitions").items() {
        assert_eq!(partition.get("replicas").ints(), [node]);
        assert_eq!(partition.get("isr").ints(), [node]);
        assert_eq!(partition.get("offline").ints(), Vec::<i64>::new());
    }
    // Healthy partitions: the filters show none.
    for filter in ["--under-replicated-partitions", "--unavailable-partitions"] {
        let text = cli(&["topic", "describe", filter]).ok();
        assert_eq!(rows(&text, "TOPIC"), Vec::<Vec<String>>::new(), "{filter}: {text}");
    }

    // Alter: more partitions; configs set and deleted.
    let altered = cli(&["topic", "alter", "cli-orders", "--partitions", "5"]).ok();
    assert_eq!(altered, "Topic 'cli-orders' now has 5 partitions.\n");
    let changed = cli(&[
        "topic",
        "alter-config",
        "cli-orders",
        "--set",
        "retention.ms=3600000",
        "--delete",
        "cleanup.policy",
    ])
    .ok();
    assert!(changed.starts_with("Altered the configs of topic 'cli-orders'"), "{changed}");
    let topic = described(&address, "cli-orders");
    assert_eq!(topic.get("partition_count").int(), 5);
    assert_eq!(topic.get("partitions").items().len(), 5);
    let mut expected = BTreeMap::new();
    expected.insert("retention.ms".to_string(), Json::Str("3600000".to_string()));
    assert_eq!(topic.get("configs"), &Json::Object(expected));

    // Preferred leader election on one broker: every partition is already led by its
    // preferred replica. Named partitions answer ELECTION_NOT_NEEDED (not an error); for
    // all partitions the broker leaves those out.
    let elected = cli(&["topic", "elect-leaders", "--topic", "cli-orders"]).ok();
    let results = rows(&elected, "TOPIC");
    assert_eq!(results.len(), 5, "{elected}");
    for (index, row) in results.iter().enumerate() {
        assert_eq!(row[..3], ["cli-orders", &index.to_string(), "ELECTION_NOT_NEEDED"]);
    }
    let one = cli(&["topic", "elect-leaders", "--topic", "cli-orders", "--partition", "4"]).ok();
    let results = rows(&one, "TOPIC");
    assert_eq!(results.len(), 1, "{one}");
    assert_eq!(results[0][..3], ["cli-orders", "4", "ELECTION_NOT_NEEDED"]);
    let all = Json::parse(&cli(&["topic", "elect-leaders", "--json"]).ok());
    assert_eq!(all, Json::Array(vec![]));
    assert_eq!(cli(&["topic", "elect-leaders"]).ok(), "No partition needed an election.\n");

    // No reassignment in progress.
    assert_eq!(
        cli(&["topic", "reassign", "--list"]).ok(),
        "No partition reassignments in progress.\n"
    );
    assert_eq!(
        Json::parse(&cli(&["topic", "reassign", "--list", "--json"]).ok()),
        Json::Array(vec![])
    );

    // The cluster: this broker, its controller, a quorum of one voter, healthy partitions.
    let info = cli(&["cluster", "info"]).ok();
    eprintln!("{info}");
    let port = broker.port.to_string();
    let brokers = rows(&info, "BROKER");
    assert_eq!(
        brokers,
        [[node.to_string(), format!("127.0.0.1:{port}"), "-".into(), "active".into()]]
    );
    assert!(info.contains(&format!("Metadata quorum: leader {node}, epoch ")), "{info}");
    let voters = rows(&info, "NODE");
    assert_eq!(voters.len(), 1, "{info}");
    assert_eq!([&voters[0][0], &voters[0][1], &voters[0][3]], [&node.to_string(), "leader", "0"]);
    assert!(info.ends_with("Partitions: 5 (under-replicated: 0, offline: 0)\n"), "{info}");
    let info = Json::parse(&cli(&["cluster", "info", "--json"]).ok());
    assert_eq!(info.get("cluster_id").str().len(), 22, "{info:?}");
    assert_eq!(info.get("controller_id").int(), node);
    let listed = info.get("brokers").items();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].get("id").int(), node);
    assert_eq!(listed[0].get("port").int(), i64::from(broker.port));
    let quorum = info.get("quorum");
    assert_eq!(quorum.get("leader_id").int(), node);
    let high_watermark = quorum.get("high_watermark").int();
    assert!(high_watermark > 0, "{quorum:?}");
    let voters = quorum.get("voters").items();
    assert_eq!(voters.len(), 1);
    assert_eq!(voters[0].get("id").int(), node);
    assert!(voters[0].get("log_end_offset").int() >= high_watermark, "{quorum:?}");
    assert_eq!(voters[0].get("lag").int(), 0);
    assert_eq!(quorum.get("observers").items().len(), 0);
    assert_eq!(info.get("partitions").get("total").int(), 5);
    assert_eq!(info.get("partitions").get("under_replicated").int(), 0);
    assert_eq!(info.get("partitions").get("offline").int(), 0);

    // Delete: gone from the list and from describe.
    assert_eq!(cli(&["topic", "delete", "cli-orders"]).ok(), "Deleted topic 'cli-orders'.\n");
    assert_eq!(rows(&cli(&["topic", "list"]).ok(), "TOPIC"), Vec::<Vec<String>>::new());
    cli(&["topic", "describe", "cli-orders"]).fails_with("UNKNOWN_TOPIC_OR_PARTITION");
}

#[test]
fn topic_command_errors_name_the_kafka_error_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"), &["--cores", "1"]);
    let address = broker.address();
    let cli = |args: &[&str]| sluice(&address, args);

    cli(&["topic", "describe", "nope"])
        .fails_with("topic 'nope': Kafka error 3 (UNKNOWN_TOPIC_OR_PARTITION)");
    cli(&["topic", "elect-leaders", "--topic", "nope"]).fails_with("UNKNOWN_TOPIC_OR_PARTITION");
    cli(&["topic", "alter", "nope", "--partitions", "2"]).fails_with("UNKNOWN_TOPIC_OR_PARTITION");
    let refused = cli(&["topic", "create", "wide", "--replication-factor", "2"]);
    let stdout = refused
        .fails_with("CreateTopics for topic 'wide': Kafka error 38 (INVALID_REPLICATION_FACTOR)");
    assert_eq!(stdout, "");
    cli(&["topic", "create", "wide", "-r", "2", "--validate-only"])
        .fails_with("INVALID_REPLICATION_FACTOR");

    cli(&["topic", "create", "kept", "-p", "2"]).ok();
    cli(&["topic", "create", "kept", "-p", "2"]).fails_with("TOPIC_ALREADY_EXISTS");
    cli(&["topic", "alter", "kept", "-p", "1"]).fails_with("INVALID_PARTITIONS");
    cli(&["topic", "alter-config", "kept", "--set", "no.such.config=1"])
        .fails_with("INVALID_CONFIG");
    cli(&["topic", "reassign", "--topic", "kept", "--partition", "0", "--cancel"])
        .fails_with("NO_REASSIGNMENT_IN_PROGRESS");

    // Several topics: the ones deleted are reported, the failure named, the status 1.
    cli(&["topic", "create", "doomed"]).ok();
    let stdout = cli(&["topic", "delete", "doomed", "nope"])
        .fails_with("DeleteTopics for topic 'nope': Kafka error 3 (UNKNOWN_TOPIC_OR_PARTITION)");
    assert_eq!(stdout, "Deleted topic 'doomed'.\n");

    // SLUICE_BROKERS chooses the cluster when --brokers does not; the first broker of a
    // list that answers is used.
    let from_env = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["topic", "list"])
        .env("SLUICE_BROKERS", &address)
        .output()
        .unwrap();
    assert!(from_env.status.success(), "{}", String::from_utf8_lossy(&from_env.stderr));
    assert_eq!(rows(&String::from_utf8_lossy(&from_env.stdout), "TOPIC"), [["kept", "2", "1"]]);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let both = format!("{closed},{address}");
    assert_eq!(rows(&sluice(&both, &["topic", "list"]).ok(), "TOPIC"), [["kept", "2", "1"]]);
    sluice(&closed, &["cluster", "info"]).fails_with("cannot connect to broker");

    // Usage errors exit 2, before any request.
    assert_eq!(cli(&["topic", "alter", "kept"]).code, 2, "--partitions is required");
    assert_eq!(cli(&["topic", "create", "x", "-p", "2", "--replica-assignment", "1"]).code, 2);
    assert_eq!(cli(&["topic", "reassign", "--topic", "kept", "--partition", "0"]).code, 2);
}
