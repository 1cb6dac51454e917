//! Sluice network layer: the Kafka protocol (framing, headers, error codes, one handler
//! per API) and the shard-per-core server that owns partitions end to end.

pub mod client;
pub mod config;
pub mod coordinator_host;
pub mod error;
pub mod group;
pub mod handlers;
pub mod mesh;
pub mod protocol;
pub mod recent;
pub mod reqmetrics;
pub mod server;
pub mod shard;
mod shard_host;
pub mod throttle;
pub mod ticker;
pub mod txn;
pub mod zerocopy;
