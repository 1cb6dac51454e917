//! Sluice network layer: the Kafka protocol (framing, headers, error codes, one handler
//! per API) and the shard-per-core server that owns partitions end to end.

pub mod client;
pub mod config;
pub mod controller;
pub mod error;
pub mod group;
pub mod handlers;
pub mod mesh;
pub mod metadata_cache;
pub mod protocol;
pub mod recent;
pub mod replica;
pub mod reqmetrics;
pub mod server;
pub mod shard;
pub mod throttle;
pub mod ticker;
pub mod txn;
pub mod zerocopy;
