//! `sluice-bench`: Sluice's benchmarks.
//!
//! - `produce`, `consume`, `e2e`: a Kafka load generator over our own protocol client
//!   (`sluice_net::client`), pinned to one CPU, against Sluice or any Kafka-compatible
//!   broker: throughput (msg/s, MB/s), produce and end-to-end latency (HDR histograms),
//!   a progress line per second, a JSON report with an SVG plot, and `--against` to
//!   measure two brokers in alternating rounds.
//! - `append`, `lookup`: engine micro-benchmarks (log appends next to fio's bandwidth,
//!   offset lookup on a large log).
//! - `timer`: the timing wheel against heap and BTreeMap timers.

mod engine;
mod load;
mod timer;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Sluice benchmarks: a Kafka load generator and engine micro-benchmarks",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce load: throughput and produce latency (made -> acknowledged, per message;
    /// and written -> acknowledged, per request).
    Produce(load::ProduceArgs),
    /// Consume a topic (by default from the start to the log end seen at the start):
    /// throughput, and each record's age when fetched.
    Consume(load::ConsumeArgs),
    /// Produce and consume together: throughput, produce latency and end-to-end latency
    /// (made -> fetched), and a check that every message sent was read.
    E2e(load::E2eArgs),
    /// Log append throughput (1 KiB records, 16 KiB and 1 MiB batches, direct and
    /// buffered), printed next to fio's sequential-write bandwidth for the same block size.
    Append(engine::AppendArgs),
    /// Offset lookup latency (index search + header scan) on a large log.
    Lookup(engine::LookupArgs),
    /// Timing wheel against BinaryHeap and BTreeMap timers: add, cancel, advance.
    Timer(timer::TimerArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce(args) => load::produce(args),
        Command::Consume(args) => load::consume(args),
        Command::E2e(args) => load::e2e(args),
        Command::Append(args) => engine::append(&args),
        Command::Lookup(args) => engine::lookup(&args),
        Command::Timer(args) => timer::run(&args),
    }
}
