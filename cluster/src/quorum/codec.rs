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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raft::eraftpb::{Entry, MessageType, Snapshot};

    #[test]
    fn messages_round_trip() {
        let message = Message {
            msg_type: MessageType::MsgAppend,
            to: 3,
            from: 1,
            term: 7,
            log_term: 6,
            index: 41,
            entries: vec![Entry {
                term: 7,
                index: 42,
                data: b"record".to_vec().into(),
                ..Entry::default()
            }]
            .into(),
            commit: 40,
            ..Message::default()
        };
        let bytes = encode_message(&message).unwrap();
        assert_eq!(decode_message(&bytes).unwrap(), message);

        let mut snapshot = Snapshot { data: vec![9; 1000].into(), ..Snapshot::default() };
        snapshot.mut_metadata().index = 40;
        let message = Message {
            msg_type: MessageType::MsgSnapshot,
            snapshot: Some(snapshot).into(),
            ..Message::default()
        };
        assert_eq!(decode_message(&encode_message(&message).unwrap()).unwrap(), message);
    }

    #[test]
    fn malformed_and_oversized_bytes_are_errors() {
        // A length-delimited field claiming more bytes than follow.
        assert!(matches!(
            decode_message(&[0x32, 0xff, 0x01]).unwrap_err(),
            CodecError::Malformed { .. }
        ));
        let huge = vec![0u8; MESSAGE_BYTES_MAX + 1];
        assert!(matches!(decode_message(&huge).unwrap_err(), CodecError::TooLarge { .. }));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_message(&bytes);
        }
    }
}
