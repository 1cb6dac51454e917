//! `sluice`: the broker daemon. Parses flags, loads the configuration, starts the shards.

mod broker;
mod client;
mod cluster_cli;
mod config;
mod group_cli;
mod kafka_names;
mod output;
mod properties;
mod topic_cli;

use clap::{Parser, Subcommand};
use std::io::Write;

/// Sluice: a Kafka-wire-compatible, shard-per-core streaming storage engine and broker.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: one pinned io_uring shard per core over the data directory.
    ///
    /// Broker properties (`--set NAME=VALUE`, `--config FILE`) use Kafka's names (see the
    /// README's Configuration section). Open files: the broker raises its open-file limit
    /// to the hard limit at start, and its segment files keep at most
    /// `log.open.files.max` descriptors open (0, the default: half that limit), shared
    /// equally among the shards; idle ones are closed and reopened when next used.
    Serve(config::ServeArgs),
    /// Consumer group administration: list, describe (with lag), delete.
    ///
    /// Like Kafka's kafka-consumer-groups.sh, over the Kafka protocol: works against any
    /// broker serving the group APIs (FindCoordinator, ListGroups, DescribeGroups,
    /// OffsetFetch, DeleteGroups; Metadata and ListOffsets for the lag).
    Group(group_cli::GroupArgs),
    /// Topic administration: create, list, describe, delete, alter, reassign, elect leaders.
    ///
    /// Like Kafka's kafka-topics.sh, kafka-reassign-partitions.sh and
    /// kafka-leader-election.sh, over the Kafka protocol: works against Sluice or any Kafka
    /// cluster. `--brokers HOST:PORT,...` (or SLUICE_BROKERS) chooses the cluster.
    Topic(topic_cli::TopicArgs),
    /// The cluster: id, controller, brokers, metadata quorum, partition health.
    ///
    /// Like Kafka's kafka-metadata-quorum.sh describe, over the Kafka protocol.
    /// `--brokers HOST:PORT,...` (or SLUICE_BROKERS) chooses the cluster.
    Cluster(cluster_cli::ClusterArgs),
}

/// Log lines go to stdout. A line that cannot be written (the disk holding the log file
/// is full, a closed pipe) is dropped: by default the subscriber reports that with
/// `eprintln!`, which panics when stderr fails too, and a full disk would then stop the
/// broker at its next log line.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .log_internal_errors(false)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            config::Config::from_args(&args).and_then(|config| {
                if let Some(line) = &config.ignored {
                    tracing::warn!("{line}");
                }
                broker::serve(config)
            })
        }
        // No log lines in an admin command's output: errors go to stderr below.
        Command::Group(args) => group_cli::run(args),
        Command::Topic(args) => topic_cli::run(args),
        Command::Cluster(args) => cluster_cli::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            // Not eprintln!, which panics when stderr cannot be written.
            let _ = writeln!(std::io::stderr(), "sluice: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
