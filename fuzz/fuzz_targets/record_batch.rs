//! Fuzz target: Produce record bytes through batch iteration and validation, as the
//! broker checks them before an append. Must never panic.
#![no_main]

use sluice_engine::batch::BatchIter;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for batch in BatchIter::new(data) {
        match batch {
            Ok(batch) => {
                let _ = batch.validate(1 << 20);
                let _ = batch.record_offsets_and_timestamps();
            }
            Err(_) => break,
        }
    }
});
