//! Fuzz target: what brokers and controllers send each other on the controller links
//! (`sluice_cluster::controller::rpc`: a version byte, then the rkyv archive of a request
//! or an answer), decoded as the controller thread and the broker's agent decode them.
//! Untrusted bytes must go through rkyv's validation: nothing here may panic. A message
//! that decodes encodes again to bytes that decode to the same message.
#![no_main]

use sluice_cluster::controller::rpc::{
    decode_request, decode_response, encode_request, encode_response, RPC_VERSION,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The version byte in front, so mutations reach the archive.
    let mut bytes = vec![RPC_VERSION];
    bytes.extend_from_slice(data);
    if let Ok(request) = decode_request(&bytes) {
        let again = encode_request(&request).expect("a decoded request encodes");
        assert_eq!(decode_request(&again).expect("its encoding decodes"), request);
    }
    if let Ok(response) = decode_response(&bytes) {
        let again = encode_response(&response).expect("a decoded answer encodes");
        assert_eq!(decode_response(&again).expect("its encoding decodes"), response);
    }
    let _ = decode_request(data);
});
