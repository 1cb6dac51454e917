//! Fuzz target: Kafka's zig-zag varints (record lengths, deltas, key and value lengths),
//! as the engine's and the client's record walkers read them. A varint that reads,
//! written again, reads to the same value in at most as many bytes; `varint_len` is the
//! written length.
#![no_main]

use sluice_engine::batch::{read_varint, write_varint};
use sluice_net::client::batch::varint_len;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((value, used)) = read_varint(data) {
        assert!(used >= 1 && used <= 10 && used <= data.len());
        let mut out = Vec::new();
        write_varint(&mut out, value);
        assert!(out.len() <= used);
        assert_eq!(out.len(), varint_len(value));
        assert_eq!(read_varint(&out), Some((value, out.len())));
    }
    if let Some(raw) = data.first_chunk::<8>() {
        let value = i64::from_le_bytes(*raw);
        let mut out = Vec::new();
        write_varint(&mut out, value);
        assert_eq!(out.len(), varint_len(value));
        assert_eq!(read_varint(&out), Some((value, out.len())));
    }
});
