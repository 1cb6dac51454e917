//! Fuzz target: a request frame (after the size prefix) through the server's whole
//! decoding path: API and version checks, header, body. Must never panic or abort.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice_net::handlers::decode_request(bytes::Bytes::copy_from_slice(data));
});
