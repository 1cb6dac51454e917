//! `sluice-bench`: Sluice's benchmarks. Engine micro-benchmarks (log append and offset
//! lookup, each next to the physical limit measured in the same run) and the timing-wheel
//! benchmark; the Kafka-protocol load generator joins with the benchmark issue.

mod engine;
mod timer;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about = "Sluice benchmarks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        Command::Append(args) => engine::append(&args),
        Command::Lookup(args) => engine::lookup(&args),
        Command::Timer(args) => timer::run(&args),
    }
}
