//! Fuzz target: `__transaction_state` record keys and values (Kafka's TransactionLog
//! schemas), as the transaction coordinator replays them. What decodes, encoded as the
//! broker writes it (value version 0), decodes to the same value.
#![no_main]

use sluice_net::txn::records::{decode_key, decode_value, encode_key, encode_value};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(id) = decode_key(data) {
        if id.len() <= i16::MAX as usize {
            assert_eq!(decode_key(&encode_key(&id)), Ok(id));
        }
    }
    if let Ok(value) = decode_value(data) {
        if value.partitions.iter().all(|tp| tp.topic.len() <= i16::MAX as usize) {
            assert_eq!(decode_value(&encode_value(&value)), Ok(value));
        }
    }
});
