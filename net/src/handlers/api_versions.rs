//! ApiVersions (key 18): the APIs and versions this broker serves, from the table in
//! `handlers` (Produce listed from v0, as Kafka 4.0 lists it: `PRODUCE_ADVERTISED_MIN`).
//! A client that sends a version newer than ours gets a v0 answer with
//! UNSUPPORTED_VERSION and our list (KIP-511), and retries with a version we know.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::RequestContext;
use super::{advertised, SERVED};
use crate::error::code;
use crate::protocol::{encode_response, ProtocolError};

fn response() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SERVED
        .iter()
        .map(|served| {
            let mut version = ApiVersion::default();
            version.api_key = served.api as i16;
            (version.min_version, version.max_version) = advertised(*served);
            version
        })
        .collect();
    response
}

pub async fn handle(_ctx: &RequestContext, _request: ApiVersionsRequest) -> ApiVersionsResponse {
    response()
}

/// The v0 answer to an ApiVersions request of a version we do not serve.
pub fn unsupported_version(correlation_id: i32) -> Result<Bytes, ProtocolError> {
    let mut body = response();
    body.error_code = code::UNSUPPORTED_VERSION;
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handlers::{parse, served};

    /// ApiVersions lists the table, entry for entry and in its order: each API with the
    /// versions the table gives it, and nothing else.
    #[test]
    fn lists_exactly_the_table() {
        let listed: Vec<(i16, i16, i16)> =
            response().api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version)).collect();
        let table: Vec<(i16, i16, i16)> =
            SERVED.iter().map(|s| (s.api as i16, s.advertised_min, s.max)).collect();
        assert_eq!(listed, table);
        assert!(SERVED.iter().all(|s| s.advertised_min == s.min || s.api == ApiKey::Produce));
    }

    /// Produce is listed from v0 so that older librdkafka compresses (KAFKA-18659), yet a
    /// v0-2 request is refused as before; every other API is listed as served.
    #[test]
    fn produce_is_listed_from_v0_and_served_from_v3() {
        let listed = response();
        let produce = listed.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).unwrap();
        assert_eq!((produce.min_version, produce.max_version), (0, 12));
        for key in &listed.api_keys {
            let api = ApiKey::try_from(key.api_key).unwrap();
            if api != ApiKey::Produce {
                let served = served(api).unwrap();
                assert_eq!((key.min_version, key.max_version), (served.min, served.max));
            }
        }
        for version in 0i16..=2 {
            let mut frame = Vec::new();
            frame.extend_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
            frame.extend_from_slice(&version.to_be_bytes());
            frame.extend_from_slice(&1i32.to_be_bytes());
            let refused = parse(Bytes::from(frame));
            assert!(
                matches!(refused, Err(ProtocolError::UnsupportedVersion { min: 3, .. })),
                "v{version}: {:?}",
                refused.err()
            );
        }
    }
}
