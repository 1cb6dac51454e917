//! What a handler knows about a request besides its body: the shard serving it, the API
//! and version, the header's correlation and client ids, the connection it came on (its
//! listener and peer) and who sent it. One value per request, so security (who may do
//! what), quotas (by principal and client id) and per-API metrics have one place to read
//! from, and handlers one argument to take.
//!
//! Nothing here refers to the request frame: the header is consumed when the context is
//! built, so a Produce request's body is the only thing left pointing at the frame's
//! memory and its records can be taken over in place (see `produce::records_mut`).

use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::StrBytes;

use crate::shard::Shard;

/// Who a request is served as: Kafka's `KafkaPrincipal`, a type and a name, printed
/// `User:alice`. Every connection is `User:ANONYMOUS` (what Kafka calls the client of a
/// PLAINTEXT listener) until SASL gives it a name; ACLs and quotas key on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    kind: &'static str,
    name: Rc<str>,
}

impl Principal {
    /// The only principal type Kafka's default builder produces.
    pub const USER: &'static str = "User";

    /// `User:ANONYMOUS`, the principal of an unauthenticated connection.
    pub fn anonymous() -> Self {
        Self::user("ANONYMOUS")
    }

    /// `User:<name>`, as SASL authenticates one.
    pub fn user(name: &str) -> Self {
        Principal { kind: Self::USER, name: Rc::from(name) }
    }

    pub fn kind(&self) -> &str {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// What every request read from one connection shares, kept by the connection's reader,
/// which makes each request's [`RequestContext`] from it.
#[derive(Debug)]
pub struct Connection {
    /// The address of the listener that accepted the connection: the broker has one
    /// listener today; when it has several, this tells which one (and so which security
    /// protocol) a request came through.
    pub listener: SocketAddr,
    /// The client's address, when the socket could tell it.
    pub peer: Option<SocketAddr>,
    /// Who the connection authenticated as.
    pub principal: Principal,
    /// The client id of the latest request: a client sends the same one on every request,
    /// so the next request's is shared from here (a reference count) instead of copied
    /// out of its frame.
    client_id: Option<Rc<str>>,
}

impl Connection {
    /// A connection accepted on `listener` from `peer`, not authenticated.
    pub fn new(listener: SocketAddr, peer: Option<SocketAddr>) -> Self {
        Connection { listener, peer, principal: Principal::anonymous(), client_id: None }
    }

    /// The context of a request read from this connection, with `header` (decoded from
    /// the frame) consumed: the context keeps no slice of the frame.
    pub fn request(
        &mut self,
        shard: Rc<Shard>,
        api: ApiKey,
        header: RequestHeader,
    ) -> RequestContext {
        RequestContext {
            shard,
            api,
            version: header.request_api_version,
            correlation_id: header.correlation_id,
            client_id: self.client_id(header.client_id),
            listener: self.listener,
            peer: self.peer,
            principal: self.principal.clone(),
        }
    }

    /// `id` as a string of its own: the previous request's when they are equal (no
    /// allocation), else a new one, kept for the next request. A null id stays null.
    fn client_id(&mut self, id: Option<StrBytes>) -> Option<Rc<str>> {
        let id = id?;
        match &self.client_id {
            Some(known) if **known == *id.as_str() => Some(known.clone()),
            _ => {
                let id: Rc<str> = Rc::from(id.as_str());
                self.client_id = Some(id.clone());
                Some(id)
            }
        }
    }
}

/// One request's context (see the module docs). Handlers take it by reference.
pub struct RequestContext {
    /// The shard serving the request, whose methods handlers call.
    pub shard: Rc<Shard>,
    pub api: ApiKey,
    /// The request's version, within what the table in `handlers` serves for `api`.
    pub version: i16,
    pub correlation_id: i32,
    /// The header's client id; `None` when the client sent a null one.
    pub client_id: Option<Rc<str>>,
    /// The listener the request came through (see [`Connection::listener`]).
    pub listener: SocketAddr,
    pub peer: Option<SocketAddr>,
    pub principal: Principal,
}

impl RequestContext {
    /// The client id, empty for a null one (as Kafka reports it, e.g. in DescribeGroups).
    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or_default()
    }

    /// The peer as Kafka prints an `InetAddress` (`/127.0.0.1`), empty when unknown.
    pub fn client_host(&self) -> String {
        self.peer.map(|peer| format!("/{}", peer.ip())).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The same client id on consecutive requests is one allocation, shared; a different
    /// one replaces it; a null one is null and leaves the shared one alone.
    #[test]
    fn client_ids_are_shared_across_a_connections_requests() {
        let mut connection = Connection::new("127.0.0.1:9092".parse().unwrap(), None);
        let first = connection.client_id(Some(StrBytes::from_string("app".into()))).unwrap();
        let second = connection.client_id(Some(StrBytes::from_string("app".into()))).unwrap();
        assert!(Rc::ptr_eq(&first, &second));
        assert_eq!(connection.client_id(None), None);
        let other = connection.client_id(Some(StrBytes::from_static_str("other"))).unwrap();
        assert_eq!(&*other, "other");
        let third = connection.client_id(Some(StrBytes::from_static_str("other"))).unwrap();
        assert!(Rc::ptr_eq(&other, &third));
        assert_eq!(connection.principal.to_string(), "User:ANONYMOUS");
    }

    /// A client id read from a frame keeps no reference to it, seen first or shared: a
    /// produce frame must be left to its body alone for the records to be taken over.
    #[test]
    fn client_ids_keep_nothing_of_the_frame() {
        let mut connection = Connection::new("127.0.0.1:9092".parse().unwrap(), None);
        for _ in 0..2 {
            let frame = bytes::Bytes::from(b"app-1 and the rest of the frame".to_vec());
            let id = StrBytes::from_utf8(frame.slice(..5)).unwrap();
            let id = connection.client_id(Some(id)).unwrap();
            assert_eq!(&*id, "app-1");
            assert!(frame.try_into_mut().is_ok(), "the client id still refers to the frame");
        }
    }
}
