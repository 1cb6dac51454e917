//! Fuzz target: `__consumer_offsets` record keys and values (Kafka's OffsetCommit and
//! GroupMetadata schemas, every version), as the group coordinator replays them, and the
//! consumer-protocol subscription in a JoinGroup member's metadata, as the coordinator
//! reads its topics. What decodes, encoded as the broker writes it, decodes to the same
//! value (strings past an `i16` length excepted: the encoder cuts those on purpose).
#![no_main]

use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;
use sluice_net::group::records::{
    decode_group_value, decode_key, decode_offset_value, encode_group_value, encode_key,
    encode_offset_value, GroupValue,
};

/// Longest string the non-flexible encodings hold.
const STRING_MAX: usize = i16::MAX as usize;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(key) = decode_key(data) {
        assert_eq!(decode_key(&encode_key(&key)), Ok(key));
    }
    if let Ok(value) = decode_offset_value(data) {
        if value.metadata.len() <= STRING_MAX {
            assert_eq!(decode_offset_value(&encode_offset_value(&value)), Ok(value));
        }
    }
    if let Ok(value) = decode_group_value(data) {
        if strings_fit(&value) {
            assert_eq!(decode_group_value(&encode_group_value(&value)), Ok(value));
        }
    }
    // The coordinator's reading of member metadata: version i16, then the body.
    if let Some((version, body)) = data.split_first_chunk::<2>() {
        let version = i16::from_be_bytes(*version).clamp(0, 3);
        let mut body = bytes::Bytes::copy_from_slice(body);
        let _ = ConsumerProtocolSubscription::decode(&mut body, version);
    }
});

fn strings_fit(value: &GroupValue) -> bool {
    let mut strings =
        vec![Some(&value.protocol_type), value.protocol.as_ref(), value.leader.as_ref()];
    for member in &value.members {
        strings.extend([
            Some(&member.member_id),
            member.group_instance_id.as_ref(),
            Some(&member.client_id),
            Some(&member.client_host),
        ]);
    }
    strings.into_iter().flatten().all(|s| s.len() <= STRING_MAX)
}
