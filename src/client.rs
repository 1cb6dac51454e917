//! A small blocking Kafka-protocol client for the admin subcommands: one `TcpStream`, one
//! request at a time, the `kafka-protocol` crate's messages, and API version negotiation
//! from the broker's ApiVersions answer.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
pub(crate) use sluice_net::client::{api_name, error_name};

/// Time allowed to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one read or write on an established connection.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The client id sent in every request header.
const CLIENT_ID: &str = "sluice-cli";
/// The largest response frame accepted (a sanity bound against garbage length prefixes).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// ApiVersions version tried first (flexible, with the client software name).
const API_VERSIONS_VERSION: i16 = 3;
/// UNSUPPORTED_VERSION: the broker answered ApiVersions in v0 (KIP-511).
const UNSUPPORTED_VERSION: i16 = 35;

/// A non-zero Kafka error code in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaError {
    /// What failed, e.g. `DescribeGroups for group 'g'`.
    pub context: String,
    pub code: i16,
    /// The broker's error message, when the response carries one.
    pub message: Option<String>,
}

impl KafkaError {
    pub(crate) fn new(context: impl Into<String>, code: i16, message: Option<&StrBytes>) -> Self {
        KafkaError {
            context: context.into(),
            code,
            message: message.map(|m| m.as_str().to_string()).filter(|m| !m.is_empty()),
        }
    }

    /// `Err` for a non-zero `code`, `Ok` for zero.
    pub(crate) fn check(
        context: impl Into<String>,
        code: i16,
        message: Option<&StrBytes>,
    ) -> anyhow::Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(KafkaError::new(context, code, message).into())
        }
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: Kafka error {} ({})", self.context, self.code, error_name(self.code))?;
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KafkaError {}

/// One blocking connection to one broker.
pub(crate) struct Client {
    address: String,
    stream: TcpStream,
    correlation_id: i32,
    /// API key -> (min, max) version the broker serves.
    versions: HashMap<i16, (i16, i16)>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `address` (`HOST:PORT`) and asks for the broker's API versions.
    pub(crate) fn connect(address: &str) -> anyhow::Result<Client> {
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve broker address {address:?}"))?
            .collect();
        if addrs.is_empty() {
            bail!("broker address {address:?} resolves to no address");
        }
        let mut last_error = None;
        let mut stream = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let stream = match (stream, last_error) {
            (Some(stream), _) => stream,
            (None, Some(error)) => {
                return Err(error).with_context(|| format!("cannot connect to broker {address}"))
            }
            (None, None) => bail!("cannot connect to broker {address}"),
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            address: address.to_string(),
            stream,
            correlation_id: 0,
            versions: HashMap::new(),
        };
        client.negotiate().with_context(|| format!("ApiVersions with broker {address}"))?;
        Ok(client)
    }

    /// ApiVersions v3; a broker that does not serve v3 answers in v0 with
    /// UNSUPPORTED_VERSION and its list of APIs (KIP-511), which is all we need.
    fn negotiate(&mut self) -> anyhow::Result<()> {
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = StrBytes::from_static_str(CLIENT_ID);
        request.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let correlation_id = self.send(API_VERSIONS_VERSION, &request)?;
        let mut frame = self.receive_frame()?;
        let header_version =
            <ApiVersionsRequest as Request>::Response::header_version(API_VERSIONS_VERSION);
        check_header(&mut frame, header_version, correlation_id)?;
        // The error code leads the body in every version; UNSUPPORTED_VERSION means v0.
        let error_code = frame.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
        let body_version =
            if error_code == Some(UNSUPPORTED_VERSION) { 0 } else { API_VERSIONS_VERSION };
        let response = decode_body::<ApiVersionsRequest>(&mut frame, body_version)?;
        if response.error_code != 0 && response.api_keys.is_empty() {
            KafkaError::check("ApiVersions", response.error_code, None)?;
        }
        self.versions = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, (api.min_version, api.max_version)))
            .collect();
        Ok(())
    }

    /// The version of `Req` to send: the highest both we (`ours`, inclusive) and the
    /// broker serve.
    pub(crate) fn version<Req: Request>(&self, ours: (i16, i16)) -> anyhow::Result<i16> {
        let name = api_name(Req::KEY);
        let Some(&(broker_min, broker_max)) = self.versions.get(&Req::KEY) else {
            bail!(
                "broker {} does not support {name} (API key {}); it is needed for this command",
                self.address,
                Req::KEY
            );
        };
        let version = ours.1.min(broker_max);
        if version < ours.0.max(broker_min) {
            bail!(
                "broker {} serves {name} versions {broker_min}..={broker_max}, \
                 this client needs one of {}..={}",
                self.address,
                ours.0,
                ours.1
            );
        }
        Ok(version)
    }

    /// Sends `request` at the highest version in `ours` the broker serves; returns the
    /// response and the version used.
    pub(crate) fn negotiated<Req: Request>(
        &mut self,
        ours: (i16, i16),
        request: &Req,
    ) -> anyhow::Result<(Req::Response, i16)> {
        let version = self.version::<Req>(ours)?;
        Ok((self.request(version, request)?, version))
    }

    /// Sends `request` at `version` and reads its response.
    pub(crate) fn request<Req: Request>(
        &mut self,
        version: i16,
        request: &Req,
    ) -> anyhow::Result<Req::Response> {
        let name = api_name(Req::KEY);
        let result = (|| {
            let correlation_id = self.send(version, request)?;
            let mut frame = self.receive_frame()?;
            check_header(&mut frame, Req::Response::header_version(version), correlation_id)?;
            decode_body::<Req>(&mut frame, version)
        })();
        result.with_context(|| format!("{name} v{version} to broker {}", self.address))
    }

    /// Writes one request frame; returns its correlation id.
    fn send<Req: Request>(&mut self, version: i16, request: &Req) -> anyhow::Result<i32> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = Req::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
        let mut body = BytesMut::new();
        header.encode(&mut body, Req::header_version(version)).context("encoding the header")?;
        request.encode(&mut body, version).context("encoding the request")?;
        let size = i32::try_from(body.len()).context("request too large")?;
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.put_i32(size);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).context("sending the request")?;
        Ok(self.correlation_id)
    }

    /// Reads one size-prefixed response frame.
    fn receive_frame(&mut self) -> anyhow::Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                anyhow::anyhow!("the broker closed the connection without answering")
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                anyhow::anyhow!("no answer within {} s", IO_TIMEOUT.as_secs())
            }
            _ => anyhow::Error::new(error).context("reading the response"),
        })?;
        let size = i32::from_be_bytes(size);
        let size = usize::try_from(size)
            .ok()
            .filter(|&size| size <= MAX_RESPONSE_BYTES)
            .with_context(|| format!("invalid response frame size {size}"))?;
        let mut frame = vec![0u8; size];
        self.stream.read_exact(&mut frame).context("reading the response body")?;
        Ok(Bytes::from(frame))
    }
}

/// Decodes the response header from `frame` and checks its correlation id.
fn check_header(frame: &mut Bytes, header_version: i16, correlation_id: i32) -> anyhow::Result<()> {
    let header =
        ResponseHeader::decode(frame, header_version).context("malformed response header")?;
    if header.correlation_id != correlation_id {
        bail!(
            "response correlation id {} does not match the request's {correlation_id}",
            header.correlation_id
        );
    }
    Ok(())
}

/// Decodes the response body of `Req` from the rest of `frame`, which it must fill exactly.
fn decode_body<Req: Request>(frame: &mut Bytes, version: i16) -> anyhow::Result<Req::Response> {
    let response = Req::Response::decode(frame, version).context("malformed response")?;
    if frame.has_remaining() {
        bail!("malformed response: {} bytes left after the body", frame.remaining());
    }
    Ok(response)
}

/// Connections by address, opened on first use.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    clients: HashMap<String, Client>,
}

impl Pool {
    /// The connection to `address`, connecting (and negotiating) first if needed.
    pub(crate) fn get(&mut self, address: &str) -> anyhow::Result<&mut Client> {
        if !self.clients.contains_key(address) {
            let client = Client::connect(address)?;
            self.clients.insert(address.to_string(), client);
        }
        self.clients.get_mut(address).context("connection pool lost a connection")
    }
}

/// `HOST:PORT` for a broker's advertised host and port (brackets around IPv6 hosts).
pub(crate) fn broker_address(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(15), "COORDINATOR_NOT_AVAILABLE");
        assert_eq!(error_name(16), "NOT_COORDINATOR");
        assert_eq!(error_name(35), "UNSUPPORTED_VERSION");
        assert_eq!(error_name(68), "NON_EMPTY_GROUP");
        assert_eq!(error_name(69), "GROUP_ID_NOT_FOUND");
        assert_eq!(error_name(30_000), "UNKNOWN");
        let error = KafkaError::new("DescribeGroups", 69, None);
        assert_eq!(error.to_string(), "DescribeGroups: Kafka error 69 (GROUP_ID_NOT_FOUND)");
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(broker_address("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(broker_address("::1", 9092), "[::1]:9092");
    }

    #[test]
    fn connection_refused_is_an_error() {
        // A port just released: nothing listens on it.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let error = Client::connect(&format!("127.0.0.1:{port}")).expect_err("no broker");
        assert!(format!("{error:#}").contains("cannot connect to broker"), "{error:#}");
    }
}
