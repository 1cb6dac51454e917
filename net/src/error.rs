//! Kafka error codes, and the one place where engine and metadata errors become them.
//!
//! The numbers are Kafka's (`org.apache.kafka.common.protocol.Errors`); clients switch on
//! them, so they are part of the wire format.

use sluice_engine::batch::BatchError;
use sluice_engine::log::LogError;
use sluice_engine::metadata::MetadataError;
use sluice_engine::partition::state::EpochMismatch;
use sluice_engine::partition::AppendError;
use sluice_engine::producer::SequenceError;

/// A Kafka error code with its message, as a handler answers it for one partition or topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: String,
}

impl KafkaError {
    pub fn new(code: i16, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

pub mod code {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    pub const UNSTABLE_OFFSET_COMMIT: i16 = 88;
    pub const PRODUCER_FENCED: i16 = 90;
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const ELECTION_NOT_NEEDED: i16 = 84;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const TOPIC_DELETION_DISABLED: i16 = 73;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
    pub const UNSUPPORTED_ENDPOINT_TYPE: i16 = 115;
}

/// Kafka's answer for an engine error on a partition.
pub fn from_log_error(error: &LogError) -> KafkaError {
    let code = match error {
        LogError::Batch(BatchError::TooLarge { .. }) => code::MESSAGE_TOO_LARGE,
        LogError::Batch(_) => code::CORRUPT_MESSAGE,
        LogError::OffsetOutOfRange { .. } => code::OFFSET_OUT_OF_RANGE,
        LogError::EmptyAppend => code::CORRUPT_MESSAGE,
        // A leader change while the append waited for the log.
        LogError::Refused(_) => code::NOT_LEADER_OR_FOLLOWER,
        LogError::InvalidOptions(_) => code::INVALID_CONFIG,
        LogError::Io { .. } | LogError::Corrupt { .. } | LogError::Offline { .. } => {
            code::KAFKA_STORAGE_ERROR
        }
    };
    KafkaError::new(code, error.to_string())
}

/// Kafka's answer for a batch that failed validation before it reached a log.
pub fn from_batch_error(error: &BatchError) -> KafkaError {
    let code = match error {
        BatchError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
        _ => code::CORRUPT_MESSAGE,
    };
    KafkaError::new(code, error.to_string())
}

/// Kafka's answer for a metadata change the controller refused or failed to store.
pub fn from_metadata_error(error: &MetadataError) -> KafkaError {
    let code = match error {
        MetadataError::TopicExists { .. } => code::TOPIC_ALREADY_EXISTS,
        MetadataError::UnknownTopic { .. } => code::UNKNOWN_TOPIC_OR_PARTITION,
        MetadataError::InvalidPartitions { .. } => code::INVALID_PARTITIONS,
        MetadataError::InvalidReplicationFactor { .. } => code::INVALID_REPLICATION_FACTOR,
        MetadataError::InvalidTopicName { .. } => code::INVALID_TOPIC_EXCEPTION,
        _ => code::UNKNOWN_SERVER_ERROR,
    };
    KafkaError::new(code, error.to_string())
}

/// Kafka's answer for an append a partition refused or failed.
pub fn from_append_error(error: &AppendError) -> KafkaError {
    let code = match error {
        AppendError::Batch(error) => return from_batch_error(error),
        AppendError::Log(error) => return from_log_error(error),
        AppendError::Epoch(mismatch) => return from_epoch_mismatch(*mismatch),
        AppendError::Refused(_) => code::INVALID_RECORD,
        AppendError::Malformed(_) => code::CORRUPT_MESSAGE,
        AppendError::Sequence { error, .. } => match error {
            SequenceError::InvalidProducerEpoch => code::INVALID_PRODUCER_EPOCH,
            SequenceError::OutOfOrderSequence => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            SequenceError::UnknownProducerId => code::UNKNOWN_PRODUCER_ID,
            // The earlier attempt is still being written: the client retries.
            SequenceError::DuplicateInFlight => code::REQUEST_TIMED_OUT,
        },
        AppendError::DuplicateAmongOthers => code::DUPLICATE_SEQUENCE_NUMBER,
        AppendError::NotContinuous(_) => code::OFFSET_OUT_OF_RANGE,
        AppendError::WrongRole(_) => code::NOT_LEADER_OR_FOLLOWER,
    };
    KafkaError::new(code, error.to_string())
}

/// Kafka's answer for a request whose leader epoch is not the partition's.
pub fn from_epoch_mismatch(mismatch: EpochMismatch) -> KafkaError {
    let code = match mismatch {
        EpochMismatch::FromTheFuture { .. } => code::UNKNOWN_LEADER_EPOCH,
        EpochMismatch::Stale { .. } => code::FENCED_LEADER_EPOCH,
    };
    KafkaError::new(code, mismatch.to_string())
}
