//! ApiVersions (key 18): the APIs and versions this broker serves, from the table in
//! `handlers`. A client that sends a version newer than ours gets a v0 answer with
//! UNSUPPORTED_VERSION and our list (KIP-511), and retries with a version we know.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::SERVED;
use crate::error::code;
use crate::protocol::{encode_response, ProtocolError};
use crate::shard::Shard;

fn response() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SERVED
        .iter()
        .map(|served| {
            let mut version = ApiVersion::default();
            version.api_key = served.api as i16;
            version.min_version = served.min;
            version.max_version = served.max;
            version
        })
        .collect();
    response
}

pub async fn handle(
    _shard: &Rc<Shard>,
    _request: ApiVersionsRequest,
    _version: i16,
) -> ApiVersionsResponse {
    response()
}

/// The v0 answer to an ApiVersions request of a version we do not serve.
pub fn unsupported_version(correlation_id: i32) -> Result<Bytes, ProtocolError> {
    let mut body = response();
    body.error_code = code::UNSUPPORTED_VERSION;
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}
