//! Fuzz target: Kafka's offset checkpoint files (recovery points, log start offsets, high
//! watermarks), as the broker reads them at start-up: bytes that are not UTF-8 fail the
//! read, anything else goes to `checkpoint::decode`. What decodes, encoded again, decodes
//! to the same entries.
#![no_main]

use sluice_engine::checkpoint::{decode, encode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(entries) = decode(text) else { return };
    let again = decode(&encode(&entries)).expect("an encoded checkpoint decodes");
    assert_eq!(again, entries);
});
