//! Kafka framing, sans-I/O: a request frame is `[size: i32 BE][header][body]`; the
//! header's version follows from the API key and version; a response is
//! `[size][response header][body]`. Message bodies are the `kafka-protocol` crate's
//! generated types, which know every field of every version.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tracing::debug;

/// Bytes of the size prefix of every frame.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// api_key + api_version + correlation_id: readable in every header version.
pub const FIXED_HEADER_BYTES: usize = 8;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("frame of {size} bytes is over the limit of {limit} (socket.request.max.bytes)")]
    FrameTooLarge { size: i64, limit: usize },
    #[error("frame of {size} bytes is shorter than a request header")]
    FrameTooShort { size: i64 },
    #[error("unknown API key {api_key}")]
    UnknownApiKey { api_key: i16 },
    #[error("{api:?} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion { api: ApiKey, version: i16, min: i16, max: i16 },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed { api: ApiKey, version: i16, reason: String },
    #[error("cannot encode {api:?} v{version} response: {reason}")]
    Encode { api: ApiKey, version: i16, reason: String },
}

/// Checks a frame's size prefix against the limit before any of the frame is read.
pub fn check_frame_size(size: i32, limit: usize) -> Result<usize, ProtocolError> {
    if size < FIXED_HEADER_BYTES as i32 {
        return Err(ProtocolError::FrameTooShort { size: i64::from(size) });
    }
    if size as usize > limit {
        return Err(ProtocolError::FrameTooLarge { size: i64::from(size), limit });
    }
    Ok(size as usize)
}

/// The fields every request header version starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl FixedHeader {
    pub fn peek(frame: &[u8]) -> Option<FixedHeader> {
        let mut bytes = frame.get(..FIXED_HEADER_BYTES)?;
        Some(FixedHeader {
            api_key: bytes.get_i16(),
            api_version: bytes.get_i16(),
            correlation_id: bytes.get_i32(),
        })
    }
}

/// A request frame split into its decoded header and the undecoded body.
#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Decodes the header of a request frame (the bytes after the size prefix). The caller
/// has checked the version against what it serves.
///
/// As lenient as Kafka: a null client id (header v1+), tagged fields in header v2, and a
/// client id that is not UTF-8 (read as Kafka's `readString` reads it, `new String(bytes,
/// UTF_8)`: invalid sequences become U+FFFD; the vendored crate's patch) are accepted.
pub fn decode_header(api: ApiKey, version: i16, frame: Bytes) -> Result<Request, ProtocolError> {
    let header_version = api.request_header_version(version);
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, header_version).map_err(|error| {
        ProtocolError::Malformed { api, version, reason: format!("header: {error}") }
    })?;
    Ok(Request { api, header, body })
}

/// Requests whose body decoded with bytes left after it, since the process started.
static TRAILING_BYTES_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// How many requests have decoded with bytes left after their body (see [`decode_body`]).
pub fn trailing_bytes_requests() -> u64 {
    TRAILING_BYTES_REQUESTS.load(Ordering::Relaxed)
}

/// Decodes a request body. A body that does not decode is malformed; bytes left after a
/// body that did are ignored (counted, logged at debug), as Apache Kafka ignores them:
/// librdkafka writes an all-topics Metadata request's compact array count as a 4-byte
/// placeholder it never shrinks (`00 00 00 00`), so the body a flexible version reads
/// ends three bytes early, and every librdkafka program relies on that leniency.
pub fn decode_body<T: Decodable>(
    api: ApiKey,
    version: i16,
    body: &Bytes,
) -> Result<T, ProtocolError> {
    let mut bytes = body.clone();
    let value = T::decode(&mut bytes, version).map_err(|error| ProtocolError::Malformed {
        api,
        version,
        reason: error.to_string(),
    })?;
    if bytes.has_remaining() {
        TRAILING_BYTES_REQUESTS.fetch_add(1, Ordering::Relaxed);
        debug!(?api, version, bytes = bytes.remaining(), "ignoring bytes after a request body");
    }
    Ok(value)
}

/// Encodes a whole response frame: size prefix, response header, body.
pub fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, ProtocolError> {
    let encode_error = |reason: String| ProtocolError::Encode { api, version, reason };
    let header_version = api.response_header_version(version);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let size = header
        .compute_size(header_version)
        .and_then(|h| body.compute_size(version).map(|b| h + b))
        .map_err(|error| encode_error(error.to_string()))?;
    let size_field = i32::try_from(size)
        .map_err(|_| encode_error(format!("response of {size} bytes is too large")))?;
    let mut out = BytesMut::with_capacity(SIZE_PREFIX_BYTES + size);
    out.put_i32(size_field);
    header
        .encode(&mut out, header_version)
        .and_then(|()| body.encode(&mut out, version))
        .map_err(|error| encode_error(error.to_string()))?;
    debug_assert_eq!(out.len(), SIZE_PREFIX_BYTES + size);
    Ok(out.freeze())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsResponse;

    #[test]
    fn frame_limits() {
        assert!(matches!(check_frame_size(-1, 100), Err(ProtocolError::FrameTooShort { .. })));
        assert!(matches!(check_frame_size(7, 100), Err(ProtocolError::FrameTooShort { .. })));
        assert!(matches!(check_frame_size(101, 100), Err(ProtocolError::FrameTooLarge { .. })));
        assert_eq!(check_frame_size(100, 100).unwrap(), 100);
    }

    #[test]
    fn response_frame_has_a_true_size_prefix() {
        let body = ApiVersionsResponse::default();
        for version in 0..=3 {
            let frame = encode_response(ApiKey::ApiVersions, version, 42, &body).unwrap();
            let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.len() - 4);
            assert_eq!(i32::from_be_bytes(frame[4..8].try_into().unwrap()), 42);
        }
    }

    /// librdkafka 2.16's all-topics Metadata v12 request: the topic array's compact
    /// count is the four bytes `00 00 00 00`. The first is the null array; the other three
    /// are read as the two booleans and the tagged-field count, and the real ones are
    /// left over. Kafka answers it, so must we.
    #[test]
    fn bytes_after_a_decoded_body_are_ignored() {
        use kafka_protocol::messages::MetadataRequest;
        let mut body = BytesMut::new();
        body.put_slice(&[0, 0, 0, 0]); // the placeholder count
        body.put_u8(1); // allow_auto_topic_creation
        body.put_u8(0); // include_topic_authorized_operations
        body.put_u8(0); // no tagged fields
        let before = trailing_bytes_requests();
        let request: MetadataRequest = decode_body(ApiKey::Metadata, 12, &body.freeze()).unwrap();
        assert!(request.topics.is_none(), "all topics");
        assert!(trailing_bytes_requests() > before);

        let mut buf = BytesMut::new();
        kafka_protocol::messages::ApiVersionsRequest::default().encode(&mut buf, 0).unwrap();
        buf.put_u8(1);
        let result: Result<kafka_protocol::messages::ApiVersionsRequest, _> =
            decode_body(ApiKey::ApiVersions, 0, &buf.freeze());
        assert!(result.is_ok());
    }

    /// A v1 or v2 request header as a client writes it: `client_id` of `None` is the
    /// null string (length -1); `raw_client_id` replaces it with arbitrary bytes; `tags`
    /// are tagged fields (v2 only).
    fn header_bytes(
        api: ApiKey,
        version: i16,
        client_id: Option<&[u8]>,
        tags: &[(u8, &[u8])],
    ) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_i16(api as i16);
        frame.put_i16(version);
        frame.put_i32(77);
        match client_id {
            Some(id) => {
                frame.put_i16(id.len() as i16);
                frame.put_slice(id);
            }
            None => frame.put_i16(-1),
        }
        if api.request_header_version(version) >= 2 {
            frame.put_u8(tags.len() as u8);
            for (tag, value) in tags {
                frame.put_u8(*tag);
                frame.put_u8(value.len() as u8);
                frame.put_slice(value);
            }
        }
        frame.put_slice(b"body");
        frame.freeze()
    }

    /// Kafka accepts a null client id, unknown tagged fields in header v2, and a client id
    /// that is not UTF-8 (read with replacement characters); so do we, and the body
    /// starts right after the header in every case.
    #[test]
    fn request_headers_are_read_as_leniently_as_kafka_reads_them() {
        // Metadata v9+ and ApiVersions v3+ have header v2; Metadata v8 header v1.
        for (api, version) in
            [(ApiKey::Metadata, 8), (ApiKey::Metadata, 12), (ApiKey::ApiVersions, 3)]
        {
            let null_id =
                decode_header(api, version, header_bytes(api, version, None, &[])).unwrap();
            assert_eq!(null_id.header.client_id, None);
            assert_eq!(null_id.header.correlation_id, 77);
            assert_eq!(&null_id.body[..], b"body");

            let latin1 =
                decode_header(api, version, header_bytes(api, version, Some(b"caf\xe9"), &[]))
                    .unwrap();
            assert_eq!(latin1.header.client_id.as_deref(), Some("caf\u{fffd}"));
            assert_eq!(latin1.header.request_api_version, version);
            assert_eq!(&latin1.body[..], b"body");
        }
        let tagged = header_bytes(ApiKey::Metadata, 12, Some(b"app"), &[(5, b"xyz"), (9, b"")]);
        let tagged = decode_header(ApiKey::Metadata, 12, tagged).unwrap();
        assert_eq!(tagged.header.client_id.as_deref(), Some("app"));
        assert_eq!(tagged.header.unknown_tagged_fields.len(), 2);
        assert_eq!(&tagged.header.unknown_tagged_fields[&5][..], b"xyz");
        assert_eq!(&tagged.body[..], b"body");
        // The same with a client id that is not UTF-8: the tags after it are read too.
        let both = header_bytes(ApiKey::Metadata, 12, Some(&[0xff, 0x41]), &[(5, b"xyz")]);
        let both = decode_header(ApiKey::Metadata, 12, both).unwrap();
        assert_eq!(both.header.client_id.as_deref(), Some("\u{fffd}A"));
        assert_eq!(&both.header.unknown_tagged_fields[&5][..], b"xyz");
        assert_eq!(&both.body[..], b"body");
    }

    /// A header cut short is malformed, whatever its client id holds.
    #[test]
    fn a_truncated_header_is_malformed() {
        let whole = header_bytes(ApiKey::Metadata, 12, Some(&[0xff, 0x41, 0x42]), &[(5, b"xyz")]);
        for cut in [9, 12, 14, 16] {
            let result = decode_header(ApiKey::Metadata, 12, whole.slice(..cut));
            assert!(matches!(result, Err(ProtocolError::Malformed { .. })), "cut at {cut}");
        }
    }

    /// A body that does not decode is still malformed: here a topic array of one entry
    /// with no bytes for it.
    #[test]
    fn a_body_that_does_not_decode_is_malformed() {
        let body = Bytes::from_static(&[2]);
        let result: Result<kafka_protocol::messages::MetadataRequest, _> =
            decode_body(ApiKey::Metadata, 12, &body);
        assert!(matches!(result, Err(ProtocolError::Malformed { .. })));
    }
}
