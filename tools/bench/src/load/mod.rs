//! The Kafka load generator: `produce`, `consume` and `e2e` workloads over our own async
//! client (`sluice_net::client`), on one glommio executor pinned to one CPU, against
//! Sluice or any Kafka-compatible broker. With `--against`, the same workload runs against
//! two brokers in alternating rounds and the medians are compared.

mod codec;
mod consumer;
mod producer;
mod report;
mod stats;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sluice_net::client::{Connection, ConnectionOptions, TopicSpec};

use codec::CompressionArg;
use consumer::{Assignment, ConsumerPlan};
use producer::{KeyDistribution, ProducerPlan};
use report::RunReport;
use stats::{now_us, Stats};

/// How long a run may take to create its topic and see it in Metadata.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between rounds, so one run's tail (flushes, retention) does not land in the next.
const ROUND_PAUSE: Duration = Duration::from_secs(1);
/// `e2e`: how long consumers keep reading after the producers stop.
const E2E_DRAIN: Duration = Duration::from_secs(10);
/// Duration of `produce` and `e2e` when neither `--duration` nor `--messages` is given.
const DURATION_DEFAULT_S: f64 = 10.0;

/// Flags every workload has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Broker to measure (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// A second broker: run the workload against both, interleaved (A, B, A, B, ...), and
    /// print the ratio B/A of the medians.
    #[arg(long, value_name = "HOST:PORT")]
    pub against: Option<String>,
    /// Rounds per broker (default: 3 with --against, else 1).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Topic to use.
    #[arg(long, default_value = "sluice-bench")]
    pub topic: String,
    /// Partitions: the topic is created with this many if it does not exist (an existing
    /// topic keeps its own count).
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor of a created topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,
    /// Run this many seconds (produce and e2e default to 10 when --messages is not given;
    /// in e2e the producers stop then, and the consumers read what was sent, for up to
    /// 10 s more).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Stop after this many messages (produce, e2e: produced; consume: consumed).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds at the start left out of the latency histograms and throughput figures.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub warmup: f64,
    /// Write a JSON report to FILE and an SVG plot next to it (FILE with .svg).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// CPU to pin the benchmark to (default: the last CPU).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// With nothing to do, keep polling for this many microseconds before sleeping (the
    /// broker's `reactor.idle.poll.us`; 0 = sleep at once). A sleeping bench makes an
    /// acknowledgement wait for its core to wake up, and on a VM the broker pays for
    /// waking it: consume carried ~1.25 GB/s with 0 and 1.6-2.1 GB/s with 200 here
    /// (perf/RESULTS.md, "A sleeping receiver halves sendfile here", 2026-11-22).
    #[arg(long, value_name = "US", default_value_t = 200)]
    pub idle_poll_us: u64,
    /// Timeout of each admin request and of connecting, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

/// Producer flags (`produce`, `e2e`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Bytes of each message's value (the first 16 carry a timestamp stamp).
    #[arg(long, default_value_t = 1024, value_parser = parse_bytes)]
    pub message_size: u64,
    /// Bytes per batch per partition (before compression), like Kafka's batch.size
    /// (whose default is 16 KiB). Accepts suffixes: 16KiB, 1MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub batch_size: u64,
    /// How long a batch that is not full may wait for more messages, like Kafka's
    /// linger.ms. With 0, whatever is there goes as soon as a request may be sent.
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,
    /// Acknowledgements: 0 (none, no latency), 1 (leader) or -1 / all.
    #[arg(long, default_value = "1", allow_hyphen_values = true, value_parser = parse_acks)]
    pub acks: i16,
    /// Record compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Target messages per second over all producers; 0 for as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How messages are keyed, which chooses their partitions: none (sticky round robin),
    /// random or sequential keys (murmur2 like Kafka's partitioner).
    #[arg(long, value_enum, default_value_t = KeyDistribution::None)]
    pub key_distribution: KeyDistribution,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// The Produce request's timeout_ms.
    #[arg(long, default_value_t = 30_000)]
    pub produce_timeout_ms: i32,
}

/// Consumer flags (`consume`, `e2e`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Consumer connections; partitions are spread over them round robin.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Bytes per partition per fetch (max.partition.fetch.bytes). A consumer whose last
    /// response filled at least half of this is catching up and prefetches: it sends the
    /// next fetch before counting the response.
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    pub fetch_max_bytes: u64,
    /// Bytes per fetch response over all partitions (fetch.max.bytes).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub fetch_response_max_bytes: u64,
    /// How long the broker may hold a fetch that has less than --fetch-min-bytes.
    #[arg(long, default_value_t = 100)]
    pub fetch_max_wait_ms: i32,
    /// Bytes a fetch waits for (up to --fetch-max-wait-ms) before the broker answers.
    #[arg(long, default_value_t = 1)]
    pub fetch_min_bytes: i32,
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Where to start in every partition: earliest, latest, or an offset. Without
    /// --messages or --duration, reading stops at the log end seen at the start.
    #[arg(long, default_value = "earliest")]
    pub from: String,
}

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
}

/// Where consumers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Earliest,
    Latest,
    Offset(i64),
}

impl From {
    fn parse(text: &str) -> anyhow::Result<From> {
        Ok(match text {
            "earliest" => From::Earliest,
            "latest" => From::Latest,
            offset => From::Offset(offset.parse().with_context(|| {
                format!("--from {offset:?}: expected earliest, latest or an offset")
            })?),
        })
    }
}

/// One workload, whichever subcommand asked for it.
#[derive(Debug, Clone)]
struct Plan {
    workload: &'static str,
    common: CommonArgs,
    producer: Option<ProducerArgs>,
    consumer: Option<ConsumerArgs>,
    from: From,
}

pub fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    run(Plan {
        workload: "produce",
        common: args.common,
        producer: Some(args.producer),
        consumer: None,
        from: From::Latest,
    })
}

pub fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let from = From::parse(&args.from)?;
    run(Plan {
        workload: "consume",
        common: args.common,
        producer: None,
        consumer: Some(args.consumer),
        from,
    })
}

pub fn e2e(args: E2eArgs) -> anyhow::Result<()> {
    run(Plan {
        workload: "e2e",
        common: args.common,
        producer: Some(args.producer),
        consumer: Some(args.consumer),
        from: From::Latest,
    })
}

fn parse_acks(text: &str) -> Result<i16, String> {
    match text {
        "0" => Ok(0),
        "1" => Ok(1),
        "-1" | "all" => Ok(-1),
        other => Err(format!("{other:?}: acks is 0, 1, or -1 (all)")),
    }
}

/// Bytes with an optional suffix: `1000`, `16KiB`, `1MiB`, `16k`, `1m` (binary units).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a byte count"))?;
    let scale = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

fn check(plan: &Plan) -> anyhow::Result<()> {
    let common = &plan.common;
    if common.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    if common.duration.is_some_and(|d| d <= 0.0) {
        bail!("--duration must be positive");
    }
    if common.warmup < 0.0 {
        bail!("--warmup cannot be negative");
    }
    if let Some(producer) = &plan.producer {
        if producer.producers == 0 {
            bail!("--producers must be at least 1");
        }
        if producer.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        if producer.message_size > 64 << 20 {
            bail!("--message-size is limited to 64 MiB");
        }
        if producer.batch_size < 128 || producer.batch_size > 1 << 30 {
            bail!("--batch-size must be between 128 bytes and 1 GiB");
        }
        if producer.rate < 0.0 || producer.linger_ms < 0.0 {
            bail!("--rate and --linger-ms cannot be negative");
        }
    }
    if let Some(consumer) = &plan.consumer {
        if consumer.consumers == 0 {
            bail!("--consumers must be at least 1");
        }
        if consumer.fetch_max_bytes > i32::MAX as u64
            || consumer.fetch_response_max_bytes > i32::MAX as u64
        {
            bail!("fetch sizes must be under 2 GiB");
        }
    }
    Ok(())
}

fn run(plan: Plan) -> anyhow::Result<()> {
    check(&plan)?;
    let cpu = match plan.common.cpu {
        Some(cpu) => cpu,
        None => core_affinity::get_core_ids()
            .and_then(|cores| cores.last().map(|core| core.id))
            .unwrap_or(0),
    };
    sluice_engine::runtime::raise_memlock_limit();
    let config = config_json(&plan, cpu);
    let plan_for_executor = plan.clone();
    let idle_poll = Duration::from_micros(plan.common.idle_poll_us);
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name("sluice-bench")
        // Tasks that keep running (a producer filling batches) give way to I/O at least
        // this often, so acknowledgements and fetches are read on time.
        .preempt_timer(Duration::from_micros(500))
        .spin_before_park(idle_poll)
        .spawn(move || async move { run_rounds(plan_for_executor).await })
        .map_err(|e| anyhow::anyhow!(sluice_engine::runtime::explain_executor_error(&e, 1)))?;
    let runs = handle.join().map_err(|e| anyhow::anyhow!("benchmark executor failed: {e}"))??;

    let started_unix_ms = runs.first().map_or(0, |r| r.started_unix_ms);
    let mut report = json!({
        "tool": "sluice-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "workload": plan.workload,
        "timestamp": report::iso8601(started_unix_ms),
        "started_unix_ms": started_unix_ms,
        "broker": plan.common.brokers,
        "against": plan.common.against,
        "config": config,
        "runs": runs.iter().map(RunReport::json).collect::<Vec<_>>(),
    });
    if let Some(against) = &plan.common.against {
        report["comparison"] = report::compare(&runs, &plan.common.brokers, against);
    }
    if let Some(path) = &plan.common.json {
        let svg = report::write(path, &report, &runs)?;
        println!("report: {} and {}", path.display(), svg.display());
    }
    let mismatch = runs.iter().any(|run| {
        plan.workload == "e2e" && run.consume.as_ref().map_or(0, |c| c.msgs) != run.sent_msgs
    });
    if mismatch {
        bail!("end-to-end: consumers did not read every message the producers sent");
    }
    Ok(())
}

fn config_json(plan: &Plan, cpu: usize) -> Value {
    let common = &plan.common;
    let mut config = json!({
        "topic": common.topic,
        "partitions": common.partitions,
        "replication_factor": common.replication_factor,
        "duration_s": common.duration,
        "messages": common.messages,
        "warmup_s": common.warmup,
        "rounds": rounds(common),
        "cpu": cpu,
        "idle_poll_us": common.idle_poll_us,
    });
    if let Some(p) = &plan.producer {
        config["producer"] = json!({
            "producers": p.producers,
            "message_size": p.message_size,
            "batch_size": p.batch_size,
            "linger_ms": p.linger_ms,
            "acks": p.acks,
            "compression": p.compression.name(),
            "rate": p.rate,
            "key_distribution": format!("{:?}", p.key_distribution).to_lowercase(),
            "in_flight": p.in_flight,
            "produce_timeout_ms": p.produce_timeout_ms,
        });
    }
    if let Some(c) = &plan.consumer {
        config["consumer"] = json!({
            "consumers": c.consumers,
            "fetch_max_bytes": c.fetch_max_bytes,
            "fetch_response_max_bytes": c.fetch_response_max_bytes,
            "fetch_max_wait_ms": c.fetch_max_wait_ms,
            "fetch_min_bytes": c.fetch_min_bytes,
            "from": format!("{:?}", plan.from),
        });
    }
    config
}

fn rounds(common: &CommonArgs) -> usize {
    common.rounds.unwrap_or(if common.against.is_some() { 3 } else { 1 }).max(1)
}

async fn run_rounds(plan: Plan) -> anyhow::Result<Vec<RunReport>> {
    let mut brokers = vec![plan.common.brokers.clone()];
    brokers.extend(plan.common.against.clone());
    let mut runs = Vec::new();
    for round in 1..=rounds(&plan.common) {
        for broker in &brokers {
            if !runs.is_empty() {
                glommio::timer::sleep(ROUND_PAUSE).await;
            }
            eprintln!("-- {} against {broker}, round {round}", plan.workload);
            let report = run_once(&plan, broker, round)
                .await
                .with_context(|| format!("{} against {broker}, round {round}", plan.workload))?;
            report.print();
            runs.push(report);
        }
    }
    Ok(runs)
}

fn connection_options(plan: &Plan, in_flight: usize) -> ConnectionOptions {
    ConnectionOptions {
        client_id: "sluice-bench".to_string(),
        in_flight_max: in_flight,
        request_timeout: Duration::from_millis(plan.common.request_timeout_ms.max(1)),
        ..ConnectionOptions::default()
    }
}

/// Creates the topic if it is missing and waits until Metadata shows every partition with
/// a leader. Returns the partition count.
async fn ensure_topic(admin: &mut Connection, plan: &Plan) -> anyhow::Result<i32> {
    let common = &plan.common;
    let topic = common.topic.as_str();
    let deadline = now_us() + TOPIC_READY_TIMEOUT.as_micros() as u64;
    let mut created = false;
    loop {
        let metadata = admin.metadata(Some(&[topic]), false).await.context("Metadata")?;
        let answer =
            metadata.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic));
        match answer {
            Some(t) if t.error_code == 0 && !t.partitions.is_empty() => {
                let ready = t.partitions.iter().all(|p| p.error_code == 0 && p.leader_id.0 >= 0);
                if ready {
                    let count = t.partitions.len() as i32;
                    if count != common.partitions && !created {
                        eprintln!(
                            "note: topic {topic} exists with {count} partitions (asked for {}); using {count}",
                            common.partitions
                        );
                    }
                    return Ok(count);
                }
            }
            // UNKNOWN_TOPIC_OR_PARTITION: create it (once).
            Some(t) if t.error_code == 3 && !created => {
                admin
                    .create_topics(
                        &[TopicSpec {
                            name: topic.to_string(),
                            partitions: common.partitions,
                            replication_factor: common.replication_factor,
                            configs: Vec::new(),
                        }],
                        30_000,
                    )
                    .await
                    .with_context(|| format!("creating topic {topic}"))?;
                created = true;
                continue;
            }
            None if !created => bail!("Metadata did not answer for topic {topic}"),
            _ => {}
        }
        if now_us() > deadline {
            bail!("topic {topic} has no leader for every partition after {TOPIC_READY_TIMEOUT:?}");
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_once(plan: &Plan, broker: &str, round: usize) -> anyhow::Result<RunReport> {
    let common = &plan.common;
    let mut admin = Connection::connect(broker, connection_options(plan, 1)).await?;
    let partitions = ensure_topic(&mut admin, plan).await?;
    let partition_ids: Vec<i32> = (0..partitions).collect();

    // Where consumers start, and (consume without a limit) where they stop.
    let mut assignments = Vec::new();
    if plan.consumer.is_some() {
        let starts = match plan.from {
            From::Earliest => admin.list_offsets(&common.topic, &partition_ids, -2).await?,
            From::Latest => admin.list_offsets(&common.topic, &partition_ids, -1).await?,
            From::Offset(offset) => partition_ids.iter().map(|&p| (p, offset)).collect(),
        };
        let read_to_end =
            plan.producer.is_none() && common.messages.is_none() && common.duration.is_none();
        let ends = if read_to_end {
            Some(admin.list_offsets(&common.topic, &partition_ids, -1).await?)
        } else {
            None
        };
        for (partition, offset) in starts {
            let end =
                ends.as_ref().and_then(|ends| ends.iter().find(|e| e.0 == partition)).map(|e| e.1);
            assignments.push(Assignment { partition, offset, end });
        }
        if let Some(ends) = &ends {
            let total: i64 = ends
                .iter()
                .map(|(p, end)| {
                    end - assignments.iter().find(|a| a.partition == *p).map_or(*end, |a| a.offset)
                })
                .sum();
            eprintln!(
                "reading {} messages (to the log end at the start)",
                report::thousands(total as f64)
            );
        }
    }
    drop(admin);

    let duration = match (common.duration, common.messages) {
        (Some(seconds), _) => Some(seconds),
        (None, None) if plan.producer.is_some() => Some(DURATION_DEFAULT_S),
        _ => None,
    };
    let stats = Rc::new(Stats::new(Duration::from_secs_f64(common.warmup)));
    let deadline_us = duration.map(|s| stats.started_us + (s * 1e6) as u64);

    // Consumers first, so an e2e run misses nothing.
    let mut consumers = Vec::new();
    if let Some(args) = &plan.consumer {
        let consumer_plan = Rc::new(ConsumerPlan {
            topic: common.topic.clone(),
            partition_max_bytes: args.fetch_max_bytes as i32,
            max_bytes: args.fetch_response_max_bytes as i32,
            max_wait_ms: args.fetch_max_wait_ms,
            min_bytes: args.fetch_min_bytes,
            messages: if plan.producer.is_some() { None } else { common.messages },
            // e2e consumers stop by following the producers, not by the clock.
            deadline_us: if plan.producer.is_some() { None } else { deadline_us },
            follow_producers: plan.producer.is_some(),
            drain_us: E2E_DRAIN.as_micros() as u64,
        });
        let count = args.consumers.min(assignments.len()).max(1);
        if args.consumers > assignments.len() {
            eprintln!(
                "note: {} consumers for {} partitions; using {count}",
                args.consumers,
                assignments.len()
            );
        }
        for index in 0..count {
            let mine: Vec<Assignment> = assignments
                .iter()
                .enumerate()
                .filter(|(i, _)| i % count == index)
                .map(|(_, a)| *a)
                .collect();
            let connection = Connection::connect(broker, connection_options(plan, 1)).await?;
            let task = glommio::spawn_local(consumer::run(
                connection,
                mine,
                consumer_plan.clone(),
                stats.clone(),
            ));
            consumers.push(task);
        }
    }

    let mut producers = Vec::new();
    if let Some(args) = &plan.producer {
        for index in 0..args.producers {
            let n = args.producers as u64;
            let messages = common.messages.map(|m| m / n + u64::from((index as u64) < m % n));
            let producer_plan = Rc::new(ProducerPlan {
                topic: common.topic.clone(),
                partitions,
                message_bytes: args.message_size as usize,
                batch_bytes: args.batch_size as usize,
                linger_us: (args.linger_ms * 1000.0) as u64,
                acks: args.acks,
                timeout_ms: args.produce_timeout_ms,
                compression: args.compression.compression(),
                rate: args.rate / n as f64,
                messages,
                deadline_us,
                keys: args.key_distribution,
            });
            let connection =
                Connection::connect(broker, connection_options(plan, args.in_flight)).await?;
            producers.push(glommio::spawn_local(producer::run(
                index,
                connection,
                producer_plan,
                stats.clone(),
            )));
        }
    }

    let progress = glommio::spawn_local(progress(stats.clone()));
    for task in producers {
        if let Err(error) = task.await {
            stats.fail(error);
        }
    }
    stats.producers_done.set(true);
    for task in consumers {
        if let Err(error) = task.await {
            stats.fail(error);
        }
    }
    drop(progress);
    // The last, partial second.
    let (second, interval_s) = report::snapshot(&stats, (now_us() - stats.started_us) as f64 / 1e6);
    if second.produced_msgs > 0 || second.consumed_msgs > 0 {
        if interval_s >= 0.2 {
            eprintln!("{}", report::progress_line(&second, interval_s));
        }
        stats.series.borrow_mut().push(second);
    }
    if let Some(error) = stats.failure.borrow_mut().take() {
        return Err(error);
    }
    Ok(RunReport::new(plan.workload, broker, round, &stats))
}

/// Prints a progress line every second and keeps the per-second series.
async fn progress(stats: Rc<Stats>) {
    let mut tick = 1u64;
    loop {
        let next = stats.started_us + tick * 1_000_000;
        glommio::timer::sleep(Duration::from_micros(next.saturating_sub(now_us()))).await;
        let (second, interval_s) =
            report::snapshot(&stats, (now_us() - stats.started_us) as f64 / 1e6);
        eprintln!("{}", report::progress_line(&second, interval_s));
        stats.series.borrow_mut().push(second);
        tick += 1;
    }
}
