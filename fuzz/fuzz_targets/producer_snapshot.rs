//! Fuzz target: producer state snapshot files (`<offset>.snapshot`), as partition recovery
//! reads them. The first input byte's bit 0 clear recomputes the CRC, so mutations reach
//! the entries. A snapshot that decodes, written out and read again, is the same state.
#![no_main]

use sluice_engine::producer::ProducerStates;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 == 0 {
        // version i16, CRC-32C u32 of everything after it.
        sluice_fuzz::fix_crc(&mut bytes, 2, 6);
    }
    let Ok(states) = ProducerStates::decode_snapshot(&bytes) else { return };
    let encoded = states.encode_snapshot();
    let again = ProducerStates::decode_snapshot(&encoded).expect("an encoded snapshot decodes");
    assert_eq!(again.views(), states.views());
    assert_eq!(
        again.open_transactions().collect::<Vec<_>>(),
        states.open_transactions().collect::<Vec<_>>()
    );
    assert_eq!(again.first_unstable_offset(), states.first_unstable_offset());
    assert_eq!(again.encode_snapshot(), encoded);
});
