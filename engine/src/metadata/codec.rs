//! How a metadata record is laid out in a frame's payload: an explicit record type and
//! record version, then the body as an rkyv archive of that version's struct.
//!
//! ```text
//! payload = [record type: u16 BE][record version: u16 BE][body: rkyv bytes]
//! ```
//!
//! The type and version are ours to keep stable, not a position in a Rust enum: a variant
//! can be added, reordered or given a second version without rereading old logs wrongly.
//! A frame whose CRC holds but whose type or version this build does not know was written
//! by a newer Sluice; it is not damage, and the log is not cut there (see
//! [`super::MetadataError::NewerFormat`]).
//!
//! Logs written before records had types (format 0: the payload was the rkyv archive of
//! the whole [`MetadataRecord`] enum, identified by variant position) are read with
//! [`decode_legacy`] and rewritten in this format when opened.

use super::{BrokerEndpoint, FrameError, MetadataRecord, PartitionChangeRecord, PartitionRecord};

/// Magic at the start of a metadata log in this format, then the format number (u32 BE).
/// A format-0 log starts with a frame length below 16 MiB, so its first byte is 0.
pub const FILE_MAGIC: [u8; 4] = *b"SLMD";
/// The format this build writes.
pub const FILE_FORMAT: u32 = 1;
/// Bytes of the file header: magic and format.
pub const FILE_HEADER_BYTES: usize = 8;

/// Bytes before a record's body: type and version.
const PAYLOAD_HEADER_BYTES: usize = 4;

/// The record types. Numbers are never reused.
pub mod record_type {
    pub const CREATE_TOPIC: u16 = 1;
    pub const DELETE_TOPIC: u16 = 2;
    pub const CREATE_PARTITIONS: u16 = 3;
    pub const SET_TOPIC_CONFIGS: u16 = 4;
    pub const PRODUCER_IDS: u16 = 5;
    pub const REGISTER_BROKER: u16 = 6;
    pub const CHANGE_BROKER: u16 = 7;
    pub const UNREGISTER_BROKER: u16 = 8;
    pub const PARTITION: u16 = 9;
    pub const PARTITION_CHANGE: u16 = 10;
}

/// The file header of a log in the current format.
pub fn file_header() -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[..4].copy_from_slice(&FILE_MAGIC);
    header[4..].copy_from_slice(&FILE_FORMAT.to_be_bytes());
    header
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CreateTopicV0 {
    name: String,
    topic_id: [u8; 16],
    partitions: i32,
    replication_factor: i16,
    configs: Vec<(String, String)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct DeleteTopicV0 {
    name: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CreatePartitionsV0 {
    name: String,
    partitions: i32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SetTopicConfigsV0 {
    name: String,
    configs: Vec<(String, String)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ProducerIdsV0 {
    end: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct BrokerEndpointV0 {
    name: String,
    host: String,
    port: u16,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct RegisterBrokerV0 {
    id: i32,
    epoch: i64,
    incarnation_id: [u8; 16],
    endpoints: Vec<BrokerEndpointV0>,
    rack: Option<String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ChangeBrokerV0 {
    id: i32,
    epoch: i64,
    fenced: bool,
    shutting_down: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct UnregisterBrokerV0 {
    id: i32,
    epoch: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct PartitionV0 {
    topic_id: [u8; 16],
    partition: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    leader: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    adding: Vec<i32>,
    removing: Vec<i32>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct PartitionChangeV0 {
    topic_id: [u8; 16],
    partition: i32,
    leader: Option<i32>,
    isr: Option<Vec<i32>>,
    replicas: Option<Vec<i32>>,
    adding: Option<Vec<i32>>,
    removing: Option<Vec<i32>>,
}

/// The records as format 0 stored them: the rkyv archive of this whole enum, identified
/// by variant position. Frozen: its variants, their order and their fields are what old
/// logs hold, whatever [`MetadataRecord`] becomes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum LegacyRecord {
    CreateTopic {
        name: String,
        topic_id: [u8; 16],
        partitions: i32,
        replication_factor: i16,
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        partitions: i32,
    },
    SetTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    ProducerIds {
        end: i64,
    },
}

type EncodeResult = Result<Vec<u8>, rkyv::rancor::Error>;

/// The payload of `record` in the current format.
pub fn encode(record: &MetadataRecord) -> EncodeResult {
    fn body<T>(record_type: u16, value: &T) -> EncodeResult
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        let archived = rkyv::to_bytes::<rkyv::rancor::Error>(value)?;
        let mut payload = Vec::with_capacity(PAYLOAD_HEADER_BYTES + archived.len());
        payload.extend_from_slice(&record_type.to_be_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        payload.extend_from_slice(&archived);
        Ok(payload)
    }
    match record.clone() {
        MetadataRecord::CreateTopic { name, topic_id, partitions, replication_factor, configs } => {
            let value = CreateTopicV0 { name, topic_id, partitions, replication_factor, configs };
            body(record_type::CREATE_TOPIC, &value)
        }
        MetadataRecord::DeleteTopic { name } => {
            body(record_type::DELETE_TOPIC, &DeleteTopicV0 { name })
        }
        MetadataRecord::CreatePartitions { name, partitions } => {
            body(record_type::CREATE_PARTITIONS, &CreatePartitionsV0 { name, partitions })
        }
        MetadataRecord::SetTopicConfigs { name, configs } => {
            body(record_type::SET_TOPIC_CONFIGS, &SetTopicConfigsV0 { name, configs })
        }
        MetadataRecord::ProducerIds { end } => {
            body(record_type::PRODUCER_IDS, &ProducerIdsV0 { end })
        }
        MetadataRecord::RegisterBroker { id, epoch, incarnation_id, endpoints, rack } => {
            let endpoints = endpoints
                .into_iter()
                .map(|e| BrokerEndpointV0 { name: e.name, host: e.host, port: e.port })
                .collect();
            let value = RegisterBrokerV0 { id, epoch, incarnation_id, endpoints, rack };
            body(record_type::REGISTER_BROKER, &value)
        }
        MetadataRecord::ChangeBroker { id, epoch, fenced, shutting_down } => {
            let value = ChangeBrokerV0 { id, epoch, fenced, shutting_down };
            body(record_type::CHANGE_BROKER, &value)
        }
        MetadataRecord::UnregisterBroker { id, epoch } => {
            body(record_type::UNREGISTER_BROKER, &UnregisterBrokerV0 { id, epoch })
        }
        MetadataRecord::Partition(p) => {
            let value = PartitionV0 {
                topic_id: p.topic_id,
                partition: p.partition,
                replicas: p.replicas,
                isr: p.isr,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                adding: p.adding,
                removing: p.removing,
            };
            body(record_type::PARTITION, &value)
        }
        MetadataRecord::PartitionChange(c) => {
            let value = PartitionChangeV0 {
                topic_id: c.topic_id,
                partition: c.partition,
                leader: c.leader,
                isr: c.isr,
                replicas: c.replicas,
                adding: c.adding,
                removing: c.removing,
            };
            body(record_type::PARTITION_CHANGE, &value)
        }
    }
}

/// Decodes a payload of the current format.
pub fn decode(payload: &[u8]) -> Result<MetadataRecord, FrameError> {
    let Some((header, body)) = payload.split_first_chunk::<PAYLOAD_HEADER_BYTES>() else {
        return Err(FrameError::Undecodable(format!(
            "a payload of {} bytes has no record type and version",
            payload.len()
        )));
    };
    let record_type = u16::from_be_bytes([header[0], header[1]]);
    let version = u16::from_be_bytes([header[2], header[3]]);
    // rkyv reads archived values in place, so the body needs its alignment.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let undecodable = |error: rkyv::rancor::Error| FrameError::Undecodable(error.to_string());
    let record = match (record_type, version) {
        (record_type::CREATE_TOPIC, 0) => {
            let v = rkyv::from_bytes::<CreateTopicV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::CreateTopic {
                name: v.name,
                topic_id: v.topic_id,
                partitions: v.partitions,
                replication_factor: v.replication_factor,
                configs: v.configs,
            }
        }
        (record_type::DELETE_TOPIC, 0) => {
            let v = rkyv::from_bytes::<DeleteTopicV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::DeleteTopic { name: v.name }
        }
        (record_type::CREATE_PARTITIONS, 0) => {
            let v = rkyv::from_bytes::<CreatePartitionsV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::CreatePartitions { name: v.name, partitions: v.partitions }
        }
        (record_type::SET_TOPIC_CONFIGS, 0) => {
            let v = rkyv::from_bytes::<SetTopicConfigsV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::SetTopicConfigs { name: v.name, configs: v.configs }
        }
        (record_type::PRODUCER_IDS, 0) => {
            let v = rkyv::from_bytes::<ProducerIdsV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::ProducerIds { end: v.end }
        }
        (record_type::REGISTER_BROKER, 0) => {
            let v = rkyv::from_bytes::<RegisterBrokerV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::RegisterBroker {
                id: v.id,
                epoch: v.epoch,
                incarnation_id: v.incarnation_id,
                endpoints: v
                    .endpoints
                    .into_iter()
                    .map(|e| BrokerEndpoint { name: e.name, host: e.host, port: e.port })
                    .collect(),
                rack: v.rack,
            }
        }
        (record_type::CHANGE_BROKER, 0) => {
            let v = rkyv::from_bytes::<ChangeBrokerV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::ChangeBroker {
                id: v.id,
                epoch: v.epoch,
                fenced: v.fenced,
                shutting_down: v.shutting_down,
            }
        }
        (record_type::UNREGISTER_BROKER, 0) => {
            let v = rkyv::from_bytes::<UnregisterBrokerV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::UnregisterBroker { id: v.id, epoch: v.epoch }
        }
        (record_type::PARTITION, 0) => {
            let v = rkyv::from_bytes::<PartitionV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::Partition(PartitionRecord {
                topic_id: v.topic_id,
                partition: v.partition,
                replicas: v.replicas,
                isr: v.isr,
                leader: v.leader,
                leader_epoch: v.leader_epoch,
                partition_epoch: v.partition_epoch,
                adding: v.adding,
                removing: v.removing,
            })
        }
        (record_type::PARTITION_CHANGE, 0) => {
            let v = rkyv::from_bytes::<PartitionChangeV0, _>(&aligned).map_err(undecodable)?;
            MetadataRecord::PartitionChange(PartitionChangeRecord {
                topic_id: v.topic_id,
                partition: v.partition,
                leader: v.leader,
                isr: v.isr,
                replicas: v.replicas,
                adding: v.adding,
                removing: v.removing,
            })
        }
        (record_type, version) => return Err(FrameError::Unknown { record_type, version }),
    };
    Ok(record)
}

/// Decodes a format-0 payload: the rkyv archive of the whole enum.
pub fn decode_legacy(payload: &[u8]) -> Result<MetadataRecord, FrameError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let record = rkyv::from_bytes::<LegacyRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|error| FrameError::Undecodable(error.to_string()))?;
    Ok(match record {
        LegacyRecord::CreateTopic { name, topic_id, partitions, replication_factor, configs } => {
            MetadataRecord::CreateTopic { name, topic_id, partitions, replication_factor, configs }
        }
        LegacyRecord::DeleteTopic { name } => MetadataRecord::DeleteTopic { name },
        LegacyRecord::CreatePartitions { name, partitions } => {
            MetadataRecord::CreatePartitions { name, partitions }
        }
        LegacyRecord::SetTopicConfigs { name, configs } => {
            MetadataRecord::SetTopicConfigs { name, configs }
        }
        LegacyRecord::ProducerIds { end } => MetadataRecord::ProducerIds { end },
    })
}

/// Encodes a format-0 payload, for the tests of reading old logs.
#[cfg(test)]
pub fn encode_legacy(record: &MetadataRecord) -> Vec<u8> {
    let legacy = match record.clone() {
        MetadataRecord::CreateTopic { name, topic_id, partitions, replication_factor, configs } => {
            LegacyRecord::CreateTopic { name, topic_id, partitions, replication_factor, configs }
        }
        MetadataRecord::DeleteTopic { name } => LegacyRecord::DeleteTopic { name },
        MetadataRecord::CreatePartitions { name, partitions } => {
            LegacyRecord::CreatePartitions { name, partitions }
        }
        MetadataRecord::SetTopicConfigs { name, configs } => {
            LegacyRecord::SetTopicConfigs { name, configs }
        }
        MetadataRecord::ProducerIds { end } => LegacyRecord::ProducerIds { end },
        other => panic!("format 0 has no {other:?}"),
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&legacy).expect("encodes").to_vec()
}
