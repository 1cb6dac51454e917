//! `sluice`: the broker daemon. Parses flags, loads the configuration, starts the shards.

mod broker;
mod config;

use clap::{Parser, Subcommand};

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
    Serve(config::ServeArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => config::Config::from_args(&args).and_then(broker::serve),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("sluice: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
