//! The quorum's wire codec: raft-rs messages as protobuf bytes (raft-proto's `eraftpb`).
//! The transport frames them; this only turns a message into bytes and back.

use protobuf::Message as _;
use raft::eraftpb::Message;
use thiserror::Error;

use super::MESSAGE_BYTES_MAX;

/// Why a message could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("raft message of {bytes} bytes exceeds the limit of {bytes_max} bytes")]
    TooLarge { bytes: usize, bytes_max: usize },
    #[error("malformed raft message: {source}")]
    Malformed { source: protobuf::ProtobufError },
}

/// Encodes a message for the wire. Fails only for a message over [`MESSAGE_BYTES_MAX`],
/// which a node's own limits never produce.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, CodecError> {
    // compute_size is u32 arithmetic in protobuf 2; the limits (mod.rs) keep every message
    // a node produces far below it.
    let bytes = message.compute_size() as usize;
    if bytes > MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge { bytes, bytes_max: MESSAGE_BYTES_MAX });
    }
    message.write_to_bytes().map_err(|source| CodecError::Malformed { source })
}

/// Decodes a message received from a peer. Malformed or oversized bytes are an error,
/// never a panic.
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge { bytes: bytes.len(), bytes_max: MESSAGE_BYTES_MAX });
    }
    Message::parse_from_bytes(bytes).map_err(|source| CodecError::Malformed { source })
}
