//! What brokers ask the active controller, and its answers, as they travel in the payload
//! of a transport frame: an rkyv archive of [`ControllerRequest`] or [`ControllerResponse`]
//! after a version byte. Metadata records travel as batches of the metadata log's frames
//! ([`sluice_engine::metadata::encode_batch`]), so they keep the one typed, versioned
//! encoding they have on disk.
//!
//! Brokers send *intents* (create this topic with this many partitions), never finished
//! records: placement needs the live brokers, and only the active controller knows them.

use crate::BrokerId;

/// The version byte in front of every archive: a peer with another version is answered
/// with [`ControllerResponse::Error`] and closed, never misread.
pub const RPC_VERSION: u8 = 1;

/// Kafka's error codes that the controller answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const STALE_BROKER_EPOCH: i16 = 77;
    pub const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
    pub const ELIGIBLE_LEADERS_NOT_AVAILABLE: i16 = 83;
    pub const ELECTION_NOT_NEEDED: i16 = 84;
    pub const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const DUPLICATE_BROKER_REGISTRATION: i16 = 101;
    pub const INELIGIBLE_REPLICA: i16 = 107;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const INVALID_UPDATE_VERSION: i16 = 95;
}

/// A listener of a broker: name, host, port.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// One topic of a CreateTopics intent.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub topic_id: [u8; 16],
    /// -1: `num.partitions`. Ignored when `assignments` is given.
    pub partitions: i32,
    /// -1: `default.replication.factor` (or the internal topics' factor).
    pub replication_factor: i16,
    /// Explicit replicas per partition (CreateTopics assignments); empty: placed by the
    /// controller.
    pub assignments: Vec<(i32, Vec<BrokerId>)>,
    /// Checked by the broker against Kafka's topic configs before it forwards them.
    pub configs: Vec<(String, String)>,
}

/// A change the broker asks for.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Intent {
    CreateTopic(NewTopic),
    DeleteTopic {
        name: String,
    },
    /// Grow to `partitions`, placed by the controller or as `assignments` say (one list per
    /// new partition).
    CreatePartitions {
        name: String,
        partitions: i32,
        assignments: Vec<Vec<BrokerId>>,
    },
    SetTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// A block of producer ids (Kafka's AllocateProducerIds): the answer's offsets say
    /// where the block's record went; the ids are `[end - count, end)` of the image after.
    AllocateProducerIds {
        count: i64,
    },
    /// ElectLeaders: PREFERRED (`unclean == false`) or UNCLEAN, for these partitions
    /// (topic, partition), or every partition when empty.
    ElectLeaders {
        unclean: bool,
        partitions: Vec<(String, i32)>,
    },
    /// AlterPartitionReassignments for one partition: `Some` target replicas, or `None`
    /// to cancel the reassignment in progress.
    Reassign {
        topic: String,
        partition: i32,
        target: Option<Vec<BrokerId>>,
    },
    /// Kafka's AlterPartition: the leader of a partition, at `leader_epoch` and
    /// `partition_epoch` (the placement it acts on), asks for a new ISR. A stale leader or
    /// placement is refused, so two changes built on the same state cannot both land.
    AlterPartition {
        topic: String,
        partition: i32,
        leader: BrokerId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<BrokerId>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ControllerRequest {
    /// Kafka's BrokerRegistration.
    Register {
        broker: BrokerId,
        incarnation_id: [u8; 16],
        endpoints: Vec<Endpoint>,
        rack: Option<String>,
    },
    /// Kafka's BrokerHeartbeat: `metadata_offset` is the last record the broker applied.
    Heartbeat { broker: BrokerId, epoch: i64, metadata_offset: i64, want_shutdown: bool },
    /// Records from `next_offset` on, waiting up to `max_wait_ms` for one to arrive.
    FetchMetadata { broker: BrokerId, next_offset: i64, max_wait_ms: u32 },
    /// Check (and unless `validate_only`, store) changes; one answer per intent, in order.
    Write { intents: Vec<Intent>, validate_only: bool },
    /// DescribeMetadataQuorum.
    DescribeQuorum,
    /// ListPartitionReassignments.
    ListReassignments,
}

/// One intent's outcome: Kafka's error code (0: none) and message.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Outcome {
    pub code: i16,
    pub message: String,
    /// Per partition for ElectLeaders: (topic, partition, code, message).
    pub partitions: Vec<(String, i32, i16, String)>,
}

impl Outcome {
    pub fn ok() -> Self {
        Outcome { code: code::NONE, message: String::new(), partitions: Vec::new() }
    }

    pub fn error(code: i16, message: impl Into<String>) -> Self {
        Outcome { code, message: message.into(), partitions: Vec::new() }
    }

    pub fn is_ok(&self) -> bool {
        self.code == code::NONE
    }
}

/// A voter as DescribeMetadataQuorum reports it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct VoterState {
    pub id: BrokerId,
    /// The voter's log end offset as the leader knows it (-1: unknown).
    pub log_end_offset: i64,
    /// Milliseconds since the leader last heard from it (-1: unknown).
    pub last_contact_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ControllerResponse {
    /// Asked a controller that is not the active one; `leader` is its best guess.
    NotController {
        leader: Option<BrokerId>,
    },
    /// The request could not be handled: Kafka's error code and why.
    Error {
        code: i16,
        message: String,
    },
    Registered {
        epoch: i64,
    },
    /// `fenced`: the broker may not lead (not caught up, or its session expired);
    /// `shut_down`: a broker that asked to stop may stop now.
    Heartbeat {
        fenced: bool,
        shut_down: bool,
    },
    /// Records `first_offset..` (a batch, maybe empty), or the whole image when the
    /// broker is behind the controller's retained records: a snapshot
    /// ([`sluice_engine::metadata::MetadataImage::encode_snapshot`]).
    Records {
        first_offset: i64,
        batch: Vec<u8>,
    },
    Snapshot {
        image: Vec<u8>,
    },
    /// The outcome of each intent, and the offset of the last record stored (-1: none):
    /// the broker answers once it has applied that far.
    Written {
        outcomes: Vec<Outcome>,
        last_offset: i64,
    },
    Quorum {
        leader: BrokerId,
        leader_epoch: i64,
        high_watermark: i64,
        voters: Vec<VoterState>,
    },
    /// Every partition reassigning.
    Reassignments {
        partitions: Vec<Reassigning>,
    },
}

/// A partition in the middle of a reassignment (ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Reassigning {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<BrokerId>,
    pub adding: Vec<BrokerId>,
    pub removing: Vec<BrokerId>,
}

/// Why bytes from the network are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("empty controller message")]
    Empty,
    #[error("controller message of version {0}, this build speaks {RPC_VERSION}")]
    Version(u8),
    #[error("undecodable controller message: {0}")]
    Undecodable(String),
    #[error("cannot encode controller message: {0}")]
    Encode(String),
}

macro_rules! codec {
    ($encode:ident, $decode:ident, $type:ty) => {
        /// The payload of a transport frame holding this message.
        pub fn $encode(message: &$type) -> Result<Vec<u8>, RpcError> {
            let archived = rkyv::to_bytes::<rkyv::rancor::Error>(message)
                .map_err(|e| RpcError::Encode(e.to_string()))?;
            let mut bytes = Vec::with_capacity(1 + archived.len());
            bytes.push(RPC_VERSION);
            bytes.extend_from_slice(&archived);
            Ok(bytes)
        }

        /// The message in a transport frame's payload; bad bytes are an error, never a
        /// panic (rkyv validates the archive).
        pub fn $decode(bytes: &[u8]) -> Result<$type, RpcError> {
            let (&version, body) = bytes.split_first().ok_or(RpcError::Empty)?;
            if version != RPC_VERSION {
                return Err(RpcError::Version(version));
            }
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
            aligned.extend_from_slice(body);
            rkyv::from_bytes::<$type, rkyv::rancor::Error>(&aligned)
                .map_err(|e| RpcError::Undecodable(e.to_string()))
        }
    };
}

codec!(encode_request, decode_request, ControllerRequest);
codec!(encode_response, decode_response, ControllerResponse);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_bytes_are_errors() {
        let request = ControllerRequest::Write {
            intents: vec![
                Intent::CreateTopic(NewTopic {
                    name: "t".into(),
                    topic_id: [7; 16],
                    partitions: 3,
                    replication_factor: 2,
                    assignments: vec![(0, vec![1, 2])],
                    configs: vec![("retention.ms".into(), "5".into())],
                }),
                Intent::ElectLeaders { unclean: false, partitions: vec![("t".into(), 1)] },
            ],
            validate_only: true,
        };
        let bytes = encode_request(&request).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request);
        let response =
            ControllerResponse::Written { outcomes: vec![Outcome::ok()], last_offset: 9 };
        assert_eq!(decode_response(&encode_response(&response).unwrap()).unwrap(), response);
        assert_eq!(decode_request(&[]), Err(RpcError::Empty));
        assert_eq!(decode_request(&[9, 1, 2]), Err(RpcError::Version(9)));
        assert!(decode_request(&[RPC_VERSION, 1, 2, 3]).is_err());
        for cut in 1..bytes.len() {
            let _ = decode_request(&bytes[..cut]);
        }
    }
}
