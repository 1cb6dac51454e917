//! An async Kafka protocol client on glommio: one TCP connection per [`Connection`],
//! requests pipelined on it (Kafka answers in order per connection), API versions
//! negotiated from the broker's ApiVersions answer, so it talks to Sluice and to any other
//! Kafka-compatible broker. It exists for `sluice-bench`, the load generator, so the paths
//! a benchmark repeats are built to cost nothing per message:
//!
//! - [`batch::BatchBuilder`] writes RecordBatch v2 records straight into a reused buffer
//!   (no per-record allocation); compression is a caller-supplied codec.
//! - [`Connection::send_produce`] writes a Produce request around borrowed batch bytes,
//!   without copying large batches into a request buffer.
//! - [`batch::Batches`] and [`batch::Records`] walk fetched record bytes in place: batch
//!   headers for counts, record varints for timestamps and values.
//!
//! Everything else (Metadata, CreateTopics, ListOffsets, Fetch) uses the `kafka-protocol`
//! crate's generated messages through [`Connection::send`] and [`Connection::request`].
//!
//! A connection lives on the executor (shard) that opened it; it is not `Send`.

pub mod batch;
mod connection;
mod produce;

pub use connection::{
    api_name, error_name, Connection, ConnectionOptions, FetchPartitionSpec, FetchSpec,
    FetchTopicSpec, ResponseFuture, TopicSpec, Versions,
};
pub use produce::{ProducePartition, ProduceSpec, ProduceTopic};

use thiserror::Error;

/// What went wrong talking to a broker. Each variant names the broker address so a
/// benchmark against two brokers says which one failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot resolve broker address {address:?}: {source}")]
    Resolve { address: String, source: std::io::Error },
    #[error("broker address {address:?} resolves to no address")]
    NoAddress { address: String },
    #[error("cannot connect to broker {address}: {source}")]
    Connect { address: String, source: std::io::Error },
    #[error("connection to broker {address} failed: {source}")]
    Io { address: String, source: std::io::Error },
    /// The connection broke earlier (the reader saw an error or the end of stream); every
    /// request on it fails with the first failure's description.
    #[error("connection to broker {address} is broken: {reason}")]
    Broken { address: String, reason: String },
    #[error("broker {address} sent a response frame of {size} bytes (limit {limit})")]
    FrameSize { address: String, size: i64, limit: usize },
    #[error(
        "broker {address} answered correlation id {received}, expected {expected}: \
         responses out of order"
    )]
    CorrelationMismatch { address: String, expected: i32, received: i32 },
    #[error("broker {address} does not serve {api} (API key {api_key})")]
    ApiNotServed { address: String, api: String, api_key: i16 },
    #[error(
        "broker {address} serves {api} versions {broker_min}..={broker_max}, this client \
         speaks {ours_min}..={ours_max}"
    )]
    NoCommonVersion {
        address: String,
        api: String,
        broker_min: i16,
        broker_max: i16,
        ours_min: i16,
        ours_max: i16,
    },
    #[error("cannot encode {api} v{version}: {reason}")]
    Encode { api: String, version: i16, reason: String },
    #[error("malformed {api} v{version} response from broker {address}: {reason}")]
    Decode { address: String, api: String, version: i16, reason: String },
    #[error("{api} to broker {address}: no answer within {timeout_ms} ms")]
    Timeout { address: String, api: String, timeout_ms: u64 },
    /// A non-zero Kafka error code in a response, where the request cannot succeed.
    #[error("{context}: Kafka error {code} ({name}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka { context: String, code: i16, name: String, message: Option<String> },
}

impl ClientError {
    /// A Kafka error code as an error; `context` says what failed.
    pub fn kafka(context: impl Into<String>, code: i16, message: Option<&str>) -> ClientError {
        ClientError::Kafka {
            context: context.into(),
            code,
            name: error_name(code),
            message: message.filter(|m| !m.is_empty()).map(str::to_string),
        }
    }

    /// The Kafka error code, when the error is one.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }
}
