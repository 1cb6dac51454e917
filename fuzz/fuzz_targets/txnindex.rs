//! Fuzz target: `.txnindex` files (aborted transactions), as partition recovery loads
//! them. Whole entries that decode are written back byte for byte (a torn last entry is
//! dropped), and a fetch's lookup over them never panics.
#![no_main]

use sluice_engine::txnindex::{AbortedTxn, TxnIndex, ENTRY_BYTES};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(entries) = AbortedTxn::decode_all(data) else { return };
    let whole = data.len() / ENTRY_BYTES * ENTRY_BYTES;
    let encoded: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    assert_eq!(encoded, &data[..whole]);
    let mut index = TxnIndex::default();
    index.set_segment(0, entries.clone());
    assert_eq!(index.len(), entries.len());
    for entry in &entries {
        let _ = index.collect(entry.first_offset, entry.last_offset);
        let _ = index.collect(entry.last_offset, i64::MAX);
    }
    index.truncate(entries.first().map_or(0, |e| e.last_offset));
});
