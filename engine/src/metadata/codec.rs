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

use super::{FrameError, MetadataRecord};

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
        (record_type, version) => return Err(FrameError::Unknown { record_type, version }),
    };
    Ok(record)
}

/// Decodes a format-0 payload: the rkyv archive of the whole enum.
pub fn decode_legacy(payload: &[u8]) -> Result<MetadataRecord, FrameError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<MetadataRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|error| FrameError::Undecodable(error.to_string()))
}

/// Encodes a format-0 payload, for the tests of reading old logs.
#[cfg(test)]
pub fn encode_legacy(record: &MetadataRecord) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(record).expect("encodes").to_vec()
}
