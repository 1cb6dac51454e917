//! The network links of the controller quorum (controller to controller) and of brokers to
//! the controllers: checksummed frames over TCP, on plain std threads with blocking I/O.
//!
//! The controller runs on a thread of its own, never on the data shards' executors, so its
//! links do too. Raft messages are opaque bytes here; this module only moves them, and
//! tolerates what Raft tolerates (loss, duplication across reconnects) in exchange for never
//! blocking the controller on a slow or vanished peer.
//!
//! # Wire format
//!
//! Every frame is `[length: u32 BE][crc32c of payload: u32 BE][payload]`, where `length`
//! counts the payload only and is checked against the receiver's `max_frame_bytes` before
//! anything is allocated. The first frame on each connection is a hello of
//! [`HELLO_BYTES`] bytes: `[magic b"SLCT"][version: u16 BE][kind: u8][sender node id: i32 BE]`,
//! kind 0 for a peer link (controller to controller, one-way messages) and 1 for a client
//! link (broker to controller, requests and answers). On a client link each payload opens
//! with a correlation id (`u64` BE) that the answer repeats, so several requests can be in
//! flight on one connection and be answered in any order. A bad hello, an oversized frame
//! or a checksum mismatch closes the connection with a log line naming the peer address.
//!
//! # Threads and timeouts
//!
//! - [`Listener`]: one accept thread, one reader thread per connection, and for client links
//!   one writer thread that sends the answers, so [`Replier::send`] never blocks.
//! - [`PeerLinks`]: one writer thread per peer behind a bounded queue, so
//!   [`PeerLinks::send`] never blocks and a dead peer never slows the others.
//! - [`Client`]: one reader thread per controller connection.
//!
//! Connecting gives up after [`CONNECT_TIMEOUT`] (1 s), a write that makes no progress after
//! [`WRITE_TIMEOUT`] (2 s), and a connection that sends no hello after [`HELLO_TIMEOUT`]
//! (5 s); after a failure a peer link waits [`BACKOFF_MIN`] (50 ms) doubling to
//! [`BACKOFF_MAX`] (2 s), jittered, before it connects again. Every `shutdown` joins the
//! threads it started; it takes at most one connect or write timeout.
//!
//! # Limits
//!
//! `max_frame_bytes` is checked by the sender as well as the receiver, so every member of a
//! cluster should be given the same value. The [`Listener`]'s inbox is the caller's
//! unbounded channel: the controller thread must keep draining it, since the listener does
//! not push back on a flood of well-formed frames beyond [`CONNECTIONS_MAX`] connections.
//! No TCP keepalive is set (std has no knob for it): a peer host that vanishes without
//! closing is noticed when a write to it times out, or, for peer links, when the restarted
//! peer connects again and displaces its stale link.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::BrokerId;

/// The first four bytes of every hello.
pub const HELLO_MAGIC: [u8; 4] = *b"SLCT";
/// The version of this protocol; a hello with another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes before each payload: its length (u32 BE), then its crc32c (u32 BE).
pub const FRAME_HEADER_BYTES: usize = 8;
/// Bytes of a hello payload: magic, version (u16 BE), kind (u8), sender node id (i32 BE).
pub const HELLO_BYTES: usize = 11;
/// Bytes of the correlation id (u64 BE) that opens each request and answer payload.
pub const CORRELATION_ID_BYTES: usize = 8;

/// How long a connect may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a write may make no progress (the peer stopped reading) before the connection
/// is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an accepted connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest pause before a peer link connects again after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest pause before a peer link connects again after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connections a [`Listener`] serves at once; more are closed as they arrive.
pub const CONNECTIONS_MAX: usize = 1024;
/// Answers queued on one client link; a broker that lets more pile up is not reading, and its
/// connection is closed.
pub const REPLIES_QUEUED_MAX: usize = 1024;

/// At most one warning of a kind per this interval; the rest are counted.
const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// Frames to one peer are gathered into writes of about this size.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// A pause after a failed accept (out of file descriptors and the like), so as not to spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

const _: () = assert!(HELLO_BYTES == HELLO_MAGIC.len() + 2 + 1 + 4);
const _: () = assert!(BACKOFF_MIN.as_millis() < BACKOFF_MAX.as_millis());
const _: () = assert!(CONNECT_TIMEOUT.as_millis() <= HELLO_TIMEOUT.as_millis());

/// A message that arrived on a [`Listener`].
#[derive(Debug)]
pub enum Inbound {
    /// A one-way message from another controller (a Raft message, opaque here).
    Peer {
        /// The node id the sender gave in its hello.
        from: BrokerId,
        /// The message.
        payload: Vec<u8>,
    },
    /// A request from a broker, to be answered through `reply`.
    Request {
        /// The node id the sender gave in its hello.
        from: BrokerId,
        /// The request, without its correlation id.
        payload: Vec<u8>,
        /// The way back to the sender; dropping it unanswered lets the call time out.
        reply: Replier,
    },
}

/// Why a message could not be handed to the network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// `to` is not among the peers the links were made with.
    #[error("no link to node {to}")]
    UnknownPeer {
        /// The node asked for.
        to: BrokerId,
    },
    /// The payload would make a frame bigger than the receiver accepts.
    #[error("a payload of {bytes} bytes exceeds the frame maximum of {max} bytes")]
    TooLarge {
        /// The frame payload's size, correlation id included.
        bytes: usize,
        /// `max_frame_bytes`.
        max: u32,
    },
    /// The connection the answer was for is closed.
    #[error("the connection is closed")]
    Disconnected,
    /// `shutdown` was called.
    #[error("the links are shut down")]
    Shutdown,
}

/// Why a [`Client::call`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer (or no connection) within the call's timeout. The connection stays up for
    /// the other calls, and a late answer is dropped.
    #[error("no answer within the timeout")]
    Timeout,
    /// The connection closed before the answer arrived; the next call connects again.
    #[error("the connection closed before the answer arrived")]
    Disconnected,
    /// `to` is not an index into the client's addresses.
    #[error("no controller address at index {index}")]
    NoSuchAddress {
        /// The index asked for.
        index: usize,
    },
    /// The request would make a frame bigger than `max_frame_bytes`.
    #[error("a request of {bytes} bytes exceeds the frame maximum of {max} bytes")]
    TooLarge {
        /// The frame payload's size, correlation id included.
        bytes: usize,
        /// `max_frame_bytes`.
        max: u32,
    },
    /// `shutdown` was called.
    #[error("the client is shut down")]
    Shutdown,
    /// Connecting or writing failed.
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        /// The controller's address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

impl CallError {
    fn from_io(addr: SocketAddr, source: io::Error) -> CallError {
        match source.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => CallError::Timeout,
            _ => CallError::Io { addr, source },
        }
    }
}

/// What is wrong with the bytes a connection delivered; logged, then the connection closes.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("a frame of {bytes} bytes exceeds the maximum of {max} bytes")]
    TooLarge { bytes: u32, max: u32 },
    #[error("crc32c mismatch: the header says {expected:#010x}, the payload has {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("a hello of {bytes} bytes, not {HELLO_BYTES}")]
    HelloLength { bytes: usize },
    #[error("hello magic {found:?}, not {HELLO_MAGIC:?}")]
    HelloMagic { found: [u8; 4] },
    #[error("hello version {found}, not {PROTOCOL_VERSION}")]
    HelloVersion { found: u16 },
    #[error("hello kind {found}, neither 0 (peer) nor 1 (client)")]
    HelloKind { found: u8 },
    #[error("a frame of {bytes} bytes is too short for a correlation id")]
    NoCorrelationId { bytes: usize },
}

/// Who is on the other end of a connection, as its hello says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    /// Another controller, sending one-way messages.
    Peer,
    /// A broker, sending requests that are answered.
    Client,
}

impl LinkKind {
    fn code(self) -> u8 {
        match self {
            LinkKind::Peer => 0,
            LinkKind::Client => 1,
        }
    }
}

fn encode_hello(kind: LinkKind, sender: BrokerId) -> [u8; HELLO_BYTES] {
    let mut hello = [0u8; HELLO_BYTES];
    hello[0..4].copy_from_slice(&HELLO_MAGIC);
    hello[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    hello[6] = kind.code();
    hello[7..11].copy_from_slice(&sender.to_be_bytes());
    hello
}

fn decode_hello(payload: &[u8]) -> Result<(LinkKind, BrokerId), LinkError> {
    let hello: &[u8; HELLO_BYTES] =
        payload.try_into().map_err(|_| LinkError::HelloLength { bytes: payload.len() })?;
    let magic = [hello[0], hello[1], hello[2], hello[3]];
    if magic != HELLO_MAGIC {
        return Err(LinkError::HelloMagic { found: magic });
    }
    let version = u16::from_be_bytes([hello[4], hello[5]]);
    if version != PROTOCOL_VERSION {
        return Err(LinkError::HelloVersion { found: version });
    }
    let kind = match hello[6] {
        0 => LinkKind::Peer,
        1 => LinkKind::Client,
        found => return Err(LinkError::HelloKind { found }),
    };
    let sender = i32::from_be_bytes([hello[7], hello[8], hello[9], hello[10]]);
    Ok((kind, sender))
}

/// The header of a frame carrying `payload_bytes` bytes whose crc32c is `crc`.
fn frame_header(payload_bytes: usize, crc: u32) -> [u8; FRAME_HEADER_BYTES] {
    let length = u32::try_from(payload_bytes)
        .expect("senders check payloads against max_frame_bytes, a u32, before framing");
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&length.to_be_bytes());
    header[4..8].copy_from_slice(&crc.to_be_bytes());
    header
}

/// One frame whose payload is `prefix` followed by `body`.
fn encode_frame(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let crc = crc32c::crc32c_append(crc32c::crc32c(prefix), body);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + prefix.len() + body.len());
    frame.extend_from_slice(&frame_header(prefix.len() + body.len(), crc));
    frame.extend_from_slice(prefix);
    frame.extend_from_slice(body);
    frame
}

/// Reads one frame's payload; `None` when the peer closed the connection between frames.
/// The length is checked against `max_bytes` before the payload is allocated.
fn read_frame(reader: &mut impl Read, max_bytes: u32) -> Result<Option<Vec<u8>>, LinkError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let bytes = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if bytes > max_bytes {
        return Err(LinkError::TooLarge { bytes, max: max_bytes });
    }
    let expected = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let length =
        usize::try_from(bytes).map_err(|_| LinkError::TooLarge { bytes, max: max_bytes })?;
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload)?;
    let actual = crc32c::crc32c(&payload);
    if actual != expected {
        return Err(LinkError::Crc { expected, actual });
    }
    Ok(Some(payload))
}

/// Splits the correlation id off a request or answer payload, in place.
fn take_correlation_id(payload: &mut Vec<u8>) -> Result<u64, LinkError> {
    let Some(id) = payload.first_chunk::<CORRELATION_ID_BYTES>() else {
        return Err(LinkError::NoCorrelationId { bytes: payload.len() });
    };
    let id = u64::from_be_bytes(*id);
    payload.drain(..CORRELATION_ID_BYTES);
    Ok(id)
}

/// Connects, sets the socket options every link uses, and sends the hello.
fn connect_link(
    addr: SocketAddr,
    kind: LinkKind,
    my_id: BrokerId,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    (&stream).write_all(&encode_frame(&encode_hello(kind, my_id), &[]))?;
    Ok(stream)
}

/// Whether the far end of a peer link has not closed it, asked without blocking. The far
/// end never writes on a peer link, so a readable socket means end of stream or reset: the
/// controller restarted, and the next message should go on a new connection rather than be
/// lost on the old one.
fn peer_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut probe = [0u8; 1];
    let open = match stream.peek(&mut probe) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).is_ok() && open
}

/// A lock that survives a panic elsewhere: the data behind these locks stays consistent
/// between statements, and a transport that stops on a poisoned lock would take the
/// controller with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets one warning of a kind through per [`WARN_INTERVAL`] and counts the rest.
#[derive(Debug, Default)]
struct WarnLimiter {
    warned_at: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(warnings suppressed since the last one)` when a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.warned_at {
            Some(at) if now.duration_since(at) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.warned_at = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Capped exponential backoff with jitter, so controllers that lost a peer together do not
/// knock on it together.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { step: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    /// The next pause: uniform between half the current step and the whole of it; the step
    /// then doubles, up to [`BACKOFF_MAX`].
    fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(BACKOFF_MAX);
        let half = step / 2;
        half + random_up_to(step - half)
    }
}

/// A duration uniform in `[0, bound]`, from std's per-instance random hash keys, which is
/// random enough for jitter and needs no dependency.
fn random_up_to(bound: Duration) -> Duration {
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    let random = RandomState::new().build_hasher().finish();
    Duration::from_nanos(random % nanos.saturating_add(1))
}

/// Counts the live threads of one component, so tests can see that shutdown joined them all.
#[derive(Debug, Clone, Default)]
struct ThreadCount(Arc<AtomicUsize>);

/// Held by a running thread; its drop marks the thread finished.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ThreadCount {
    fn spawn(
        &self,
        name: String,
        body: impl FnOnce() + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.0.clone());
        // If the spawn fails, the closure and with it `running` are dropped, which undoes
        // the count.
        thread::Builder::new().name(name).spawn(move || {
            let _running = running;
            body();
        })
    }

    fn live(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Joins a thread, logging rather than propagating a panic in it.
fn join(handle: JoinHandle<()>) {
    let name = handle.thread().name().unwrap_or("unnamed").to_owned();
    if handle.join().is_err() {
        warn!(thread = %name, "a transport thread panicked");
    }
}

// ---------------------------------------------------------------------------------------
// Listener: the controller's side of every link.
// ---------------------------------------------------------------------------------------

/// The controller's socket: accepts links from other controllers and from brokers and
/// delivers what arrives as [`Inbound`] messages. Lives on the controller's thread; its
/// work runs on threads of its own (one to accept, one or two per connection).
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    threads: ThreadCount,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port; std sets `SO_REUSEADDR`, so a restarted
    /// controller can bind its port again at once) and starts accepting. Frames bigger than
    /// `max_frame_bytes` close their connection; answers are held to the same limit.
    pub fn bind(
        addr: SocketAddr,
        max_frame_bytes: u32,
        inbox: Sender<Inbound>,
    ) -> io::Result<Listener> {
        let socket = TcpListener::bind(addr)?;
        let local_addr = socket.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = ThreadCount::default();
        let acceptor = Acceptor {
            socket,
            max_frame_bytes,
            inbox,
            stopping: stopping.clone(),
            threads: threads.clone(),
        };
        let name = format!("ctl-accept-{}", local_addr.port());
        let accept = threads.spawn(name, move || acceptor.run())?;
        info!(addr = %local_addr, "controller listener bound");
        Ok(Listener { local_addr, stopping, accept: Mutex::new(Some(accept)), threads })
    }

    /// The address bound, with the port chosen when `bind` was given port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection and joins every thread. Answers sent
    /// afterwards fail with [`SendError::Disconnected`]. Idempotent; also run on drop.
    pub fn shutdown(&self) {
        let Some(accept) = lock(&self.accept).take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // A blocking accept() does not look at the flag; a connection of our own wakes it.
        let wake = wake_addr(self.local_addr);
        let mut attempts = 0;
        // An accept thread that already ended (it cannot, short of a panic) needs no waking.
        let mut woken = accept.is_finished();
        while !woken && attempts < 3 {
            attempts += 1;
            match TcpStream::connect_timeout(&wake, CONNECT_TIMEOUT) {
                Ok(_) => woken = true,
                Err(e) => warn!(addr = %wake, error = %e, "cannot wake the accept thread"),
            }
        }
        if woken {
            join(accept);
        } else {
            warn!(addr = %self.local_addr, "accept thread not woken; leaving it to the process exit");
        }
        let threads_left = self.threads.live();
        info!(addr = %self.local_addr, threads_left, "controller listener shut down");
    }

    #[cfg(test)]
    fn thread_count(&self) -> ThreadCount {
        self.threads.clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a socket bound to `addr`: the loopback address in place of a
/// wildcard.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The open connections of one listener, so shutdown can close them and a controller that
/// reconnects can displace its own stale connection.
#[derive(Debug, Default)]
struct Registry {
    id_next: u64,
    entries: HashMap<u64, RegistryEntry>,
}

#[derive(Debug)]
struct RegistryEntry {
    /// A handle on the connection's socket, used only to shut it down.
    control: TcpStream,
    /// The controller on the other end, once a peer hello arrived.
    peer_from: Option<BrokerId>,
}

/// The accept thread's state.
struct Acceptor {
    socket: TcpListener,
    max_frame_bytes: u32,
    inbox: Sender<Inbound>,
    stopping: Arc<AtomicBool>,
    threads: ThreadCount,
}

impl Acceptor {
    fn run(self) {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let mut connections: Vec<JoinHandle<()>> = Vec::new();
        let mut accept_warnings = WarnLimiter::default();
        loop {
            let accepted = self.socket.accept();
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = accept_warnings.allow(Instant::now()) {
                        warn!(error = %e, suppressed, "accepting a controller link failed");
                    }
                    thread::sleep(ACCEPT_ERROR_PAUSE);
                    continue;
                }
            };
            // Join the threads of closed connections, so the list stays as long as the
            // number of open ones.
            let (finished, open): (Vec<_>, Vec<_>) =
                connections.drain(..).partition(|handle| handle.is_finished());
            connections = open;
            finished.into_iter().for_each(join);
            if connections.len() >= CONNECTIONS_MAX {
                warn!(peer = %peer, connections_max = CONNECTIONS_MAX, "refusing a controller link: too many connections");
                continue;
            }
            let control = match stream.try_clone() {
                Ok(control) => control,
                Err(e) => {
                    warn!(peer = %peer, error = %e, "refusing a controller link: cannot clone its socket");
                    continue;
                }
            };
            let id = {
                let mut registry = lock(&registry);
                let id = registry.id_next;
                registry.id_next += 1;
                registry.entries.insert(id, RegistryEntry { control, peer_from: None });
                id
            };
            let connection = Connection {
                stream,
                peer,
                id,
                registry: registry.clone(),
                inbox: self.inbox.clone(),
                max_frame_bytes: self.max_frame_bytes,
                threads: self.threads.clone(),
            };
            match self
                .threads
                .spawn(format!("ctl-conn-{}", peer.port()), move || connection.serve())
            {
                Ok(handle) => connections.push(handle),
                Err(e) => {
                    warn!(peer = %peer, error = %e, "refusing a controller link: cannot start its thread");
                    lock(&registry).entries.remove(&id);
                }
            }
        }
        // Shutting the sockets down ends every blocking read, so the threads can be joined.
        for entry in lock(&registry).entries.values() {
            let _ = entry.control.shutdown(Shutdown::Both);
        }
        connections.into_iter().for_each(join);
    }
}

/// One accepted connection, served on a thread of its own.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    registry: Arc<Mutex<Registry>>,
    inbox: Sender<Inbound>,
    max_frame_bytes: u32,
    threads: ThreadCount,
}

impl Connection {
    fn serve(self) {
        let _ = self.stream.set_nodelay(true);
        let mut reader = BufReader::new(&self.stream);
        match self.read_hello(&mut reader) {
            Ok(Some((LinkKind::Peer, from))) => {
                self.claim_peer(from);
                self.serve_peer(&mut reader, from);
            }
            Ok(Some((LinkKind::Client, from))) => self.serve_client(&mut reader, from),
            Ok(None) => debug!(peer = %self.peer, "controller link closed before its hello"),
            Err(e) => warn!(peer = %self.peer, error = %e, "closing a controller link: bad hello"),
        }
        lock(&self.registry).entries.remove(&self.id);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Reads the hello within [`HELLO_TIMEOUT`], so a connection that says nothing does
    /// not hold a thread; after it, reads wait as long as the peer stays quiet.
    fn read_hello(
        &self,
        reader: &mut impl Read,
    ) -> Result<Option<(LinkKind, BrokerId)>, LinkError> {
        self.stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
        let hello_bytes = u32::try_from(HELLO_BYTES).expect("a hello is a few bytes");
        let Some(hello) = read_frame(reader, hello_bytes)? else {
            return Ok(None);
        };
        let hello = decode_hello(&hello)?;
        self.stream.set_read_timeout(None)?;
        Ok(Some(hello))
    }

    /// Marks this connection as the link from controller `from`, and closes any older one
    /// from it: a controller has one link to each peer, so an older one is stale (its
    /// process restarted, or its host vanished without closing), and would otherwise hold
    /// a thread until the listener shuts down.
    fn claim_peer(&self, from: BrokerId) {
        let mut registry = lock(&self.registry);
        for (id, entry) in registry.entries.iter_mut() {
            if *id != self.id && entry.peer_from == Some(from) {
                debug!(peer = %self.peer, from, "a new link from this controller replaces an older one");
                let _ = entry.control.shutdown(Shutdown::Both);
                entry.peer_from = None;
            }
        }
        if let Some(entry) = registry.entries.get_mut(&self.id) {
            entry.peer_from = Some(from);
        }
    }

    fn serve_peer(&self, reader: &mut impl Read, from: BrokerId) {
        loop {
            match read_frame(reader, self.max_frame_bytes) {
                Ok(Some(payload)) => {
                    if self.inbox.send(Inbound::Peer { from, payload }).is_err() {
                        debug!(peer = %self.peer, "controller inbox closed; closing the link");
                        return;
                    }
                }
                Ok(None) => {
                    debug!(peer = %self.peer, from, "controller link closed by the peer");
                    return;
                }
                Err(e) => return self.log_read_error(from, &e),
            }
        }
    }

    fn serve_client(&self, reader: &mut impl Read, from: BrokerId) {
        let (writer_stream, control) = match (self.stream.try_clone(), self.stream.try_clone()) {
            (Ok(writer_stream), Ok(control)) => (writer_stream, control),
            (Err(e), _) | (_, Err(e)) => {
                warn!(peer = %self.peer, error = %e, "closing a broker link: cannot clone its socket");
                return;
            }
        };
        if let Err(e) = writer_stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
            warn!(peer = %self.peer, error = %e, "closing a broker link: cannot set its write timeout");
            return;
        }
        let (frames, queued) = mpsc::sync_channel(REPLIES_QUEUED_MAX);
        let link = Arc::new(ReplyLink {
            frames,
            closed: AtomicBool::new(false),
            control,
            peer: self.peer,
            max_frame_bytes: self.max_frame_bytes,
        });
        let writer = {
            let link = link.clone();
            let name = format!("ctl-reply-{}", self.peer.port());
            match self.threads.spawn(name, move || link.write_replies(writer_stream, queued)) {
                Ok(writer) => writer,
                Err(e) => {
                    warn!(peer = %self.peer, error = %e, "closing a broker link: cannot start its writer");
                    return;
                }
            }
        };
        loop {
            let mut payload = match read_frame(reader, self.max_frame_bytes) {
                Ok(Some(payload)) => payload,
                Ok(None) => {
                    debug!(peer = %self.peer, from, "broker link closed by the broker");
                    break;
                }
                Err(e) => {
                    self.log_read_error(from, &e);
                    break;
                }
            };
            let correlation_id = match take_correlation_id(&mut payload) {
                Ok(correlation_id) => correlation_id,
                Err(e) => {
                    self.log_read_error(from, &e);
                    break;
                }
            };
            let reply = Replier { correlation_id, link: link.clone() };
            if self.inbox.send(Inbound::Request { from, payload, reply }).is_err() {
                debug!(peer = %self.peer, "controller inbox closed; closing the link");
                break;
            }
        }
        link.closed.store(true, Ordering::SeqCst);
        // Wake the writer if it waits for an answer; if the queue is full it is busy, and
        // sees the flag after its current write, which fails on the closed socket.
        let _ = link.frames.try_send(None);
        let _ = self.stream.shutdown(Shutdown::Both);
        join(writer);
    }

    fn log_read_error(&self, from: BrokerId, error: &LinkError) {
        match error {
            // A peer that goes away mid-frame, or resets, is ordinary in a cluster.
            LinkError::Io(e) => {
                debug!(peer = %self.peer, from, error = %e, "controller link broke")
            }
            _ => {
                warn!(peer = %self.peer, from, error = %error, "closing a controller link: bad frame")
            }
        }
    }
}

/// The sending half of one broker's connection, shared by its [`Replier`]s.
#[derive(Debug)]
struct ReplyLink {
    /// Encoded answer frames for the writer thread; `None` only wakes it.
    frames: SyncSender<Option<Vec<u8>>>,
    closed: AtomicBool,
    /// A handle on the socket, used only to shut it down.
    control: TcpStream,
    peer: SocketAddr,
    max_frame_bytes: u32,
}

impl ReplyLink {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// The writer thread: writes answers in the order they were sent until the connection
    /// closes.
    fn write_replies(&self, stream: TcpStream, queued: Receiver<Option<Vec<u8>>>) {
        while let Ok(frame) = queued.recv() {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let Some(frame) = frame else {
                continue;
            };
            if let Err(e) = (&stream).write_all(&frame) {
                debug!(peer = %self.peer, error = %e, "closing a broker link: writing an answer failed");
                self.close();
                return;
            }
        }
    }
}

/// The way back to the broker that sent one request: answers it on the connection the
/// request came on, tagged with the request's correlation id.
#[derive(Debug)]
pub struct Replier {
    correlation_id: u64,
    link: Arc<ReplyLink>,
}

impl Replier {
    /// Queues the answer for the connection's writer thread and returns at once. A broker
    /// that leaves [`REPLIES_QUEUED_MAX`] answers unread has its connection closed.
    pub fn send(self, payload: Vec<u8>) -> Result<(), SendError> {
        let bytes = CORRELATION_ID_BYTES + payload.len();
        let max = self.link.max_frame_bytes;
        if u32::try_from(bytes).map_or(true, |bytes| bytes > max) {
            warn!(peer = %self.link.peer, bytes, max, "an answer exceeds the frame maximum; not sent");
            return Err(SendError::TooLarge { bytes, max });
        }
        if self.link.closed.load(Ordering::SeqCst) {
            return Err(SendError::Disconnected);
        }
        let frame = encode_frame(&self.correlation_id.to_be_bytes(), &payload);
        match self.link.frames.try_send(Some(frame)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                warn!(peer = %self.link.peer, replies_queued_max = REPLIES_QUEUED_MAX, "closing a broker link: it does not read its answers");
                self.link.close();
                Err(SendError::Disconnected)
            }
            Err(TrySendError::Disconnected(_)) => Err(SendError::Disconnected),
        }
    }
}

// ---------------------------------------------------------------------------------------
// PeerLinks: one controller's links to the others.
// ---------------------------------------------------------------------------------------

/// One controller's outgoing links to the other controllers of the quorum. Sending never
/// blocks: each peer has a bounded queue drained by a writer thread of its own, which
/// connects on demand and again after failures, so a dead peer costs only its own queue.
/// Messages can be lost (queue full, connection broken mid-write), as Raft allows.
#[derive(Debug)]
pub struct PeerLinks {
    max_frame_bytes: u32,
    queues: HashMap<BrokerId, Arc<PeerQueue>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
    threads: ThreadCount,
}

impl PeerLinks {
    /// Starts a writer thread for each of `peers` (an entry for `my_id` itself is skipped,
    /// so the quorum's voter list can be passed as it is). Each peer's queue holds
    /// `queue_frames` messages (at least one); when full, the oldest is dropped, since the
    /// newest carry the newest term and log position. Fails if a node is listed twice or a
    /// thread cannot be started.
    pub fn new(
        my_id: BrokerId,
        peers: Vec<(BrokerId, SocketAddr)>,
        max_frame_bytes: u32,
        queue_frames: usize,
    ) -> io::Result<PeerLinks> {
        let mut links = PeerLinks {
            max_frame_bytes,
            queues: HashMap::new(),
            writers: Mutex::new(Vec::new()),
            threads: ThreadCount::default(),
        };
        for (to, addr) in peers {
            if to == my_id {
                continue;
            }
            if links.queues.contains_key(&to) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("controller {to} is listed twice among the peers"),
                ));
            }
            let queue = Arc::new(PeerQueue::new(queue_frames.max(1)));
            let writer = PeerWriter { my_id, to, addr, queue: queue.clone() };
            let handle = links.threads.spawn(format!("ctl-peer-{to}"), move || writer.run())?;
            links.queues.insert(to, queue);
            lock(&links.writers).push(handle);
        }
        Ok(links)
    }

    /// Queues `payload` for controller `to` and returns at once.
    pub fn send(&self, to: BrokerId, payload: Vec<u8>) -> Result<(), SendError> {
        let bytes = payload.len();
        if u32::try_from(bytes).map_or(true, |bytes| bytes > self.max_frame_bytes) {
            return Err(SendError::TooLarge { bytes, max: self.max_frame_bytes });
        }
        let queue = self.queues.get(&to).ok_or(SendError::UnknownPeer { to })?;
        queue.push(to, payload)
    }

    /// Stops the writers, dropping what is still queued, and joins them. Takes at most one
    /// connect or write timeout. Idempotent; also run on drop.
    pub fn shutdown(&self) {
        for queue in self.queues.values() {
            queue.stop();
        }
        let writers = std::mem::take(&mut *lock(&self.writers));
        writers.into_iter().for_each(join);
    }

    #[cfg(test)]
    fn thread_count(&self) -> ThreadCount {
        self.threads.clone()
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The messages waiting for one peer, shared by senders and the peer's writer thread.
#[derive(Debug)]
struct PeerQueue {
    state: Mutex<PeerQueueState>,
    /// Signalled when a message is queued and on stop.
    changed: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct PeerQueueState {
    payloads: VecDeque<Vec<u8>>,
    stopped: bool,
    /// The writer's socket, so stop can break a write that is stuck on a peer that does not
    /// read.
    control: Option<TcpStream>,
    drop_warnings: WarnLimiter,
}

impl PeerQueue {
    fn new(capacity: usize) -> PeerQueue {
        PeerQueue {
            state: Mutex::new(PeerQueueState::default()),
            changed: Condvar::new(),
            capacity,
        }
    }

    fn push(&self, to: BrokerId, payload: Vec<u8>) -> Result<(), SendError> {
        let mut state = lock(&self.state);
        if state.stopped {
            return Err(SendError::Shutdown);
        }
        if state.payloads.len() >= self.capacity {
            state.payloads.pop_front();
            if let Some(suppressed) = state.drop_warnings.allow(Instant::now()) {
                warn!(
                    to,
                    capacity = self.capacity,
                    suppressed,
                    "queue to a controller is full; dropped its oldest message"
                );
            }
        }
        state.payloads.push_back(payload);
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// Blocks until a message is queued; false once stopped.
    fn wait_for_payloads(&self) -> bool {
        let mut state = lock(&self.state);
        while state.payloads.is_empty() && !state.stopped {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        !state.stopped
    }

    /// Waits `pause` unless stopped first; false once stopped.
    fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        let mut state = lock(&self.state);
        loop {
            if state.stopped {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn take_payloads(&self) -> VecDeque<Vec<u8>> {
        std::mem::take(&mut lock(&self.state).payloads)
    }

    /// Records the writer's current socket; false (and the socket shut) if stopped already.
    fn set_control(&self, control: Option<TcpStream>) -> bool {
        let mut state = lock(&self.state);
        if state.stopped {
            if let Some(control) = control {
                let _ = control.shutdown(Shutdown::Both);
            }
            return false;
        }
        state.control = control;
        true
    }

    fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        state.payloads.clear();
        if let Some(control) = state.control.take() {
            let _ = control.shutdown(Shutdown::Both);
        }
        drop(state);
        self.changed.notify_all();
    }
}

/// The writer thread of one peer link.
struct PeerWriter {
    my_id: BrokerId,
    to: BrokerId,
    addr: SocketAddr,
    queue: Arc<PeerQueue>,
}

impl PeerWriter {
    fn run(self) {
        let mut stream: Option<TcpStream> = None;
        let mut backoff = Backoff::new();
        // Warn once when the peer becomes unreachable, not at every retry.
        let mut reported_down = false;
        while self.queue.wait_for_payloads() {
            if stream.as_ref().is_some_and(|stream| !peer_open(stream)) {
                debug!(to = self.to, addr = %self.addr, "controller closed the link; connecting again");
                stream = None;
                // Drop the shutdown handle too, or it keeps the old socket open while the
                // peer is down.
                if !self.queue.set_control(None) {
                    break;
                }
            }
            let connected = match stream.take() {
                Some(connected) => connected,
                None => match self.connect() {
                    Ok(Some(connected)) => {
                        reported_down = false;
                        connected
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if reported_down {
                            debug!(to = self.to, addr = %self.addr, error = %e, "controller still unreachable");
                        } else {
                            warn!(to = self.to, addr = %self.addr, error = %e, "controller unreachable; retrying with backoff");
                            reported_down = true;
                        }
                        if !self.queue.pause(backoff.next_pause()) {
                            break;
                        }
                        continue;
                    }
                },
            };
            let payloads = self.queue.take_payloads();
            match write_payloads(&connected, &payloads) {
                Ok(()) => {
                    backoff.reset();
                    stream = Some(connected);
                }
                Err(e) => {
                    info!(to = self.to, addr = %self.addr, error = %e, messages = payloads.len(), "link to a controller broke; messages may be lost");
                    let _ = connected.shutdown(Shutdown::Both);
                    if !self.queue.set_control(None) || !self.queue.pause(backoff.next_pause()) {
                        break;
                    }
                }
            }
        }
        if let Some(stream) = stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// A new connection with its hello sent; `Ok(None)` when the links stopped meanwhile.
    fn connect(&self) -> io::Result<Option<TcpStream>> {
        let stream = connect_link(self.addr, LinkKind::Peer, self.my_id, CONNECT_TIMEOUT)?;
        if !self.queue.set_control(Some(stream.try_clone()?)) {
            return Ok(None);
        }
        info!(to = self.to, addr = %self.addr, "connected to a controller");
        Ok(Some(stream))
    }
}

/// Writes the payloads as frames, gathered into writes of about [`WRITE_BUFFER_BYTES`].
fn write_payloads(mut stream: &TcpStream, payloads: &VecDeque<Vec<u8>>) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES);
    for payload in payloads {
        buffer.extend_from_slice(&frame_header(payload.len(), crc32c::crc32c(payload)));
        buffer.extend_from_slice(payload);
        if buffer.len() >= WRITE_BUFFER_BYTES {
            stream.write_all(&buffer)?;
            buffer.clear();
        }
    }
    stream.write_all(&buffer)
}

// ---------------------------------------------------------------------------------------
// Client: a broker's requests to the controllers.
// ---------------------------------------------------------------------------------------

/// A broker's link to the controllers: request and answer, one connection per controller
/// address, made on the first call and again after it breaks. Shared by the broker's
/// threads (`&self` everywhere); calls on one connection are told apart by correlation id,
/// so they can be in flight together and be answered in any order.
#[derive(Debug)]
pub struct Client {
    my_id: BrokerId,
    addrs: Vec<SocketAddr>,
    max_frame_bytes: u32,
    slots: Vec<Mutex<Option<Connected>>>,
    correlation_id_next: AtomicU64,
    stopped: AtomicBool,
    /// Connections made so far, for tests that check a connection was reused.
    connects: AtomicU64,
    threads: ThreadCount,
}

impl Client {
    /// A client for the controllers at `addrs`; connects on the first call to each. Frames
    /// bigger than `max_frame_bytes`, either way, are refused.
    pub fn new(my_id: BrokerId, addrs: Vec<SocketAddr>, max_frame_bytes: u32) -> Client {
        let slots = addrs.iter().map(|_| Mutex::new(None)).collect();
        Client {
            my_id,
            addrs,
            max_frame_bytes,
            slots,
            correlation_id_next: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            threads: ThreadCount::default(),
        }
    }

    /// The controller addresses, in the order `call` indexes them.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Sends `payload` to the controller at `addrs()[to]` and waits for its answer, at most
    /// `timeout` in all (connect included). A call may wait longer only behind another
    /// thread's connect to the same address (up to [`CONNECT_TIMEOUT`]) or behind a write
    /// stuck on a controller that does not read (up to [`WRITE_TIMEOUT`], after which the
    /// connection is dropped, since a frame written in part cannot be taken back).
    pub fn call(&self, to: usize, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        let deadline = Instant::now() + timeout;
        let bytes = CORRELATION_ID_BYTES + payload.len();
        if u32::try_from(bytes).map_or(true, |bytes| bytes > self.max_frame_bytes) {
            return Err(CallError::TooLarge { bytes, max: self.max_frame_bytes });
        }
        let connection = self.connection(to, deadline)?;
        let correlation_id = self.correlation_id_next.fetch_add(1, Ordering::Relaxed);
        let (answer_sender, answer) = mpsc::sync_channel(1);
        {
            let mut calls = lock(&connection.calls);
            if calls.closed {
                return Err(CallError::Disconnected);
            }
            calls.waiting.insert(correlation_id, answer_sender);
        }
        let frame = encode_frame(&correlation_id.to_be_bytes(), payload);
        let written = {
            let writer = lock(&connection.writer);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                lock(&connection.calls).waiting.remove(&correlation_id);
                return Err(CallError::Timeout);
            }
            writer
                .set_write_timeout(Some(remaining.min(WRITE_TIMEOUT)))
                .and_then(|()| (&*writer).write_all(&frame))
        };
        if let Err(e) = written {
            debug!(controller = %connection.addr, error = %e, "closing a link to a controller: a write failed");
            connection.close();
            return Err(CallError::from_io(connection.addr, e));
        }
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => Err(CallError::Disconnected),
            Err(RecvTimeoutError::Timeout) => {
                lock(&connection.calls).waiting.remove(&correlation_id);
                // The answer may have arrived between the timeout and the removal.
                match answer.try_recv() {
                    Ok(Some(answer)) => Ok(answer),
                    _ => Err(CallError::Timeout),
                }
            }
        }
    }

    /// Closes every connection and joins its thread; calls waiting fail with
    /// [`CallError::Disconnected`], later ones with [`CallError::Shutdown`]. Idempotent;
    /// also run on drop.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for slot in &self.slots {
            if let Some(connected) = lock(slot).take() {
                connected.close_and_join();
            }
        }
    }

    /// The open connection to `addrs()[to]`, made now if there is none or it broke.
    fn connection(&self, to: usize, deadline: Instant) -> Result<Arc<ClientConn>, CallError> {
        let (Some(&addr), Some(slot)) = (self.addrs.get(to), self.slots.get(to)) else {
            return Err(CallError::NoSuchAddress { index: to });
        };
        let mut slot = lock(slot);
        // Checked under the slot's lock, so shutdown (which takes each slot's lock after
        // setting the flag) closes whatever is made here.
        if self.stopped.load(Ordering::SeqCst) {
            return Err(CallError::Shutdown);
        }
        if let Some(connected) = slot.as_ref() {
            if !lock(&connected.conn.calls).closed {
                return Ok(connected.conn.clone());
            }
        }
        if let Some(broken) = slot.take() {
            broken.close_and_join();
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CallError::Timeout);
        }
        let io_error = |e| CallError::from_io(addr, e);
        let stream =
            connect_link(addr, LinkKind::Client, self.my_id, remaining.min(CONNECT_TIMEOUT))
                .map_err(io_error)?;
        let reading = stream.try_clone().map_err(io_error)?;
        let control = stream.try_clone().map_err(io_error)?;
        let conn = Arc::new(ClientConn {
            addr,
            writer: Mutex::new(stream),
            control,
            calls: Mutex::new(Calls::default()),
        });
        let reader = {
            let conn = conn.clone();
            let max_frame_bytes = self.max_frame_bytes;
            self.threads
                .spawn(format!("ctl-client-{to}"), move || {
                    conn.read_answers(reading, max_frame_bytes)
                })
                .map_err(io_error)?
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        debug!(controller = %addr, "connected to a controller");
        *slot = Some(Connected { conn: conn.clone(), reader });
        Ok(conn)
    }

    #[cfg(test)]
    fn thread_count(&self) -> ThreadCount {
        self.threads.clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client connection and the thread that reads its answers.
#[derive(Debug)]
struct Connected {
    conn: Arc<ClientConn>,
    reader: JoinHandle<()>,
}

impl Connected {
    fn close_and_join(self) {
        self.conn.close();
        join(self.reader);
    }
}

/// One connection from a broker to a controller.
#[derive(Debug)]
struct ClientConn {
    addr: SocketAddr,
    /// Held while writing one frame, so frames of concurrent calls do not interleave.
    writer: Mutex<TcpStream>,
    /// A handle on the socket, used only to shut it down.
    control: TcpStream,
    calls: Mutex<Calls>,
}

/// The calls waiting for an answer on one connection.
#[derive(Debug, Default)]
struct Calls {
    /// Where to deliver each answer: `Some(answer)`, or `None` when the connection closed.
    waiting: HashMap<u64, SyncSender<Option<Vec<u8>>>>,
    closed: bool,
}

impl ClientConn {
    /// Marks the connection closed, fails the calls waiting on it, and shuts its socket,
    /// which ends the reader thread. Idempotent.
    fn close(&self) {
        {
            let mut calls = lock(&self.calls);
            calls.closed = true;
            for (_, waiting) in calls.waiting.drain() {
                let _ = waiting.try_send(None);
            }
        }
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// The reader thread: hands each answer to the call waiting for it.
    fn read_answers(&self, stream: TcpStream, max_frame_bytes: u32) {
        let mut reader = BufReader::new(&stream);
        loop {
            let mut payload = match read_frame(&mut reader, max_frame_bytes) {
                Ok(Some(payload)) => payload,
                Ok(None) => {
                    debug!(controller = %self.addr, "link closed by the controller");
                    break;
                }
                Err(LinkError::Io(e)) => {
                    debug!(controller = %self.addr, error = %e, "link to a controller broke");
                    break;
                }
                Err(e) => {
                    warn!(controller = %self.addr, error = %e, "closing a link to a controller: bad frame");
                    break;
                }
            };
            let correlation_id = match take_correlation_id(&mut payload) {
                Ok(correlation_id) => correlation_id,
                Err(e) => {
                    warn!(controller = %self.addr, error = %e, "closing a link to a controller: bad answer");
                    break;
                }
            };
            match lock(&self.calls).waiting.remove(&correlation_id) {
                Some(waiting) => {
                    let _ = waiting.try_send(Some(payload));
                }
                None => {
                    debug!(controller = %self.addr, correlation_id, "dropping an answer whose call gave up")
                }
            }
        }
        self.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    const MAX: u32 = 1 << 20;
    /// How long a test waits for something that should happen at once; only a broken
    /// transport waits this long.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn localhost() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }

    /// An address where nothing listens (bound for a moment to pick a free port).
    fn free_addr() -> SocketAddr {
        TcpListener::bind(localhost()).unwrap().local_addr().unwrap()
    }

    fn next_peer_message(inbox: &Receiver<Inbound>) -> (BrokerId, Vec<u8>) {
        match inbox.recv_timeout(PATIENCE).unwrap() {
            Inbound::Peer { from, payload } => (from, payload),
            Inbound::Request { .. } => panic!("a request where a peer message was expected"),
        }
    }

    fn assert_quiet(inbox: &Receiver<Inbound>) {
        if let Ok(extra) = inbox.recv_timeout(Duration::from_millis(50)) {
            panic!("unexpected message {extra:?}");
        }
    }

    /// A raw connection to `addr` that has sent `hello`, for feeding the listener bad bytes.
    fn raw_link(addr: SocketAddr, hello: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(&encode_frame(hello, &[])).unwrap();
        stream
    }

    /// Asserts that the far end closed `stream` (end of stream, or a reset when it closed
    /// with our bytes unread).
    fn assert_closed_by_listener(mut stream: TcpStream) {
        let mut buffer = [0u8; 16];
        match stream.read(&mut buffer) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the listener to close the connection, got {other:?}"),
        }
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let frame = encode_frame(b"ab", b"cde");
        assert_eq!(frame.len(), FRAME_HEADER_BYTES + 5);
        assert_eq!(&frame[0..4], &5u32.to_be_bytes());
        assert_eq!(&frame[4..8], &crc32c::crc32c(b"abcde").to_be_bytes());
        let mut two = frame.clone();
        two.extend_from_slice(&encode_frame(b"", b""));
        let mut reader = &two[..];
        assert_eq!(read_frame(&mut reader, 5).unwrap(), Some(b"abcde".to_vec()));
        assert_eq!(read_frame(&mut reader, 5).unwrap(), Some(Vec::new()));
        assert_eq!(read_frame(&mut reader, 5).unwrap(), None);

        // One byte over the limit is refused from the header alone.
        let mut reader = &frame[..];
        match read_frame(&mut reader, 4) {
            Err(LinkError::TooLarge { bytes: 5, max: 4 }) => {}
            other => panic!("{other:?}"),
        }
        // A length of 4 GiB with no payload behind it is refused before any allocation.
        let huge = frame_header(0, 0);
        let mut huge = huge.to_vec();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(read_frame(&mut &huge[..], MAX), Err(LinkError::TooLarge { .. })));

        let mut corrupt = frame.clone();
        corrupt[FRAME_HEADER_BYTES] ^= 1;
        assert!(matches!(read_frame(&mut &corrupt[..], MAX), Err(LinkError::Crc { .. })));

        for torn in [&frame[..3], &frame[..FRAME_HEADER_BYTES + 2]] {
            match read_frame(&mut &torn[..], MAX) {
                Err(LinkError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn hellos_round_trip_and_bad_ones_are_refused() {
        let hello = encode_hello(LinkKind::Client, -7);
        assert_eq!(&hello, b"SLCT\x00\x01\x01\xff\xff\xff\xf9");
        assert_eq!(decode_hello(&hello).unwrap(), (LinkKind::Client, -7));
        assert_eq!(decode_hello(&encode_hello(LinkKind::Peer, 3)).unwrap(), (LinkKind::Peer, 3));

        let mut bad = hello;
        bad[0] = b'X';
        assert!(matches!(decode_hello(&bad), Err(LinkError::HelloMagic { .. })));
        let mut bad = hello;
        bad[5] = 2;
        assert!(matches!(decode_hello(&bad), Err(LinkError::HelloVersion { found: 2 })));
        let mut bad = hello;
        bad[6] = 2;
        assert!(matches!(decode_hello(&bad), Err(LinkError::HelloKind { found: 2 })));
        assert!(matches!(decode_hello(&hello[..10]), Err(LinkError::HelloLength { bytes: 10 })));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let mut step = BACKOFF_MIN;
        for _ in 0..10 {
            let pause = backoff.next_pause();
            assert!(pause >= step / 2, "{pause:?} < half of {step:?}");
            assert!(pause <= step, "{pause:?} > {step:?}");
            step = (step * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff.step, BACKOFF_MAX);
        backoff.reset();
        assert!(backoff.next_pause() <= BACKOFF_MIN);
    }

    #[test]
    fn three_controllers_exchange_messages_in_order() {
        let ids: [BrokerId; 3] = [1, 2, 3];
        let mut listeners = Vec::new();
        let mut inboxes = Vec::new();
        for _ in ids {
            let (inbox_sender, inbox) = mpsc::channel();
            listeners.push(Listener::bind(localhost(), MAX, inbox_sender).unwrap());
            inboxes.push(inbox);
        }
        // The full voter list, own entry included, as the quorum configuration gives it.
        let voters: Vec<(BrokerId, SocketAddr)> =
            ids.iter().zip(&listeners).map(|(&id, listener)| (id, listener.local_addr())).collect();
        let links: Vec<PeerLinks> =
            ids.iter().map(|&me| PeerLinks::new(me, voters.clone(), MAX, 64).unwrap()).collect();

        for (links, &from) in links.iter().zip(&ids) {
            assert_eq!(
                links.send(from, b"self".to_vec()),
                Err(SendError::UnknownPeer { to: from })
            );
            for &to in ids.iter().filter(|&&to| to != from) {
                for n in 0..3 {
                    links.send(to, format!("{from}->{to} #{n}").into_bytes()).unwrap();
                }
            }
        }
        for (inbox, &me) in inboxes.iter().zip(&ids) {
            let received: Vec<(BrokerId, String)> = (0..6)
                .map(|_| {
                    let (from, payload) = next_peer_message(inbox);
                    (from, String::from_utf8(payload).unwrap())
                })
                .collect();
            for &from in ids.iter().filter(|&&from| from != me) {
                let in_order: Vec<&str> = received
                    .iter()
                    .filter(|(sender, _)| *sender == from)
                    .map(|(_, message)| message.as_str())
                    .collect();
                let expected: Vec<String> = (0..3).map(|n| format!("{from}->{me} #{n}")).collect();
                assert_eq!(in_order, expected);
            }
            assert_quiet(inbox);
        }
    }

    #[test]
    fn a_peer_that_comes_up_late_gets_the_newest_messages() {
        let addr = free_addr();
        let links = PeerLinks::new(1, vec![(2, addr)], MAX, 2).unwrap();
        for message in [b"a", b"b", b"c"] {
            links.send(2, message.to_vec()).unwrap();
        }
        // Let the writer fail to connect at least once, so it is backing off when the peer
        // comes up.
        thread::sleep(Duration::from_millis(100));
        let (inbox_sender, inbox) = mpsc::channel();
        let _listener = Listener::bind(addr, MAX, inbox_sender).unwrap();
        // The queue held two messages: the oldest, "a", made room for "c".
        assert_eq!(next_peer_message(&inbox), (1, b"b".to_vec()));
        assert_eq!(next_peer_message(&inbox), (1, b"c".to_vec()));
        links.send(2, b"d".to_vec()).unwrap();
        assert_eq!(next_peer_message(&inbox), (1, b"d".to_vec()));
        assert_quiet(&inbox);
    }

    #[test]
    fn a_restarted_listener_on_the_same_port_is_reconnected() {
        let (inbox_sender, inbox) = mpsc::channel();
        let first = Listener::bind(localhost(), MAX, inbox_sender).unwrap();
        let addr = first.local_addr();
        let links = PeerLinks::new(1, vec![(2, addr)], MAX, 16).unwrap();
        links.send(2, b"before".to_vec()).unwrap();
        assert_eq!(next_peer_message(&inbox), (1, b"before".to_vec()));

        drop(first);
        // Every thread of the first listener is gone, and with them its inbox senders.
        assert!(matches!(inbox.recv_timeout(PATIENCE), Err(RecvTimeoutError::Disconnected)));

        let (inbox_sender, inbox) = mpsc::channel();
        let _second = Listener::bind(addr, MAX, inbox_sender).unwrap();
        // The writer sees the old connection closed and sends on a new one: not lost.
        links.send(2, b"after".to_vec()).unwrap();
        assert_eq!(next_peer_message(&inbox), (1, b"after".to_vec()));
        assert_quiet(&inbox);
    }

    #[test]
    fn malformed_links_are_closed_and_the_listener_serves_on() {
        let (inbox_sender, inbox) = mpsc::channel();
        let listener = Listener::bind(localhost(), 1024, inbox_sender).unwrap();
        let addr = listener.local_addr();
        let peer_hello = encode_hello(LinkKind::Peer, 7);

        let mut bad_magic = peer_hello;
        bad_magic[0..4].copy_from_slice(b"KAFK");
        let mut bad_version = peer_hello;
        bad_version[4..6].copy_from_slice(&9u16.to_be_bytes());
        let mut bad_kind = peer_hello;
        bad_kind[6] = 5;
        for hello in [&bad_magic[..], &bad_version[..], &bad_kind[..], &peer_hello[..6]] {
            assert_closed_by_listener(raw_link(addr, hello));
        }

        // Something else entirely (an HTTP client): its first four bytes read as a huge length.
        let mut http = TcpStream::connect(addr).unwrap();
        http.set_read_timeout(Some(PATIENCE)).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_closed_by_listener(http);

        // A good frame, then one over the limit: the first is delivered, then the link closes.
        let mut oversized = raw_link(addr, &peer_hello);
        oversized.write_all(&encode_frame(b"fine", &[])).unwrap();
        oversized.write_all(&frame_header(1025, 0)).unwrap();
        assert_eq!(next_peer_message(&inbox), (7, b"fine".to_vec()));
        assert_closed_by_listener(oversized);

        let mut corrupt = encode_frame(b"payload", &[]);
        corrupt[FRAME_HEADER_BYTES] ^= 0x20;
        let mut bad_crc = raw_link(addr, &peer_hello);
        bad_crc.write_all(&corrupt).unwrap();
        assert_closed_by_listener(bad_crc);

        // A request too short to hold its correlation id.
        let mut short = raw_link(addr, &encode_hello(LinkKind::Client, 8));
        short.write_all(&encode_frame(b"1234567", &[])).unwrap();
        assert_closed_by_listener(short);

        assert_quiet(&inbox);
        let links = PeerLinks::new(1, vec![(2, addr)], 1024, 16).unwrap();
        links.send(2, b"still serving".to_vec()).unwrap();
        assert_eq!(next_peer_message(&inbox), (1, b"still serving".to_vec()));
        let client = Client::new(9, vec![addr], 1024);
        let answering = thread::spawn(move || match inbox.recv_timeout(PATIENCE).unwrap() {
            Inbound::Request { from, payload, reply } => {
                assert_eq!((from, payload.as_slice()), (9, &b"ping"[..]));
                reply.send(b"pong".to_vec()).unwrap();
            }
            other => panic!("{other:?}"),
        });
        assert_eq!(client.call(0, b"ping", PATIENCE).unwrap(), b"pong");
        answering.join().unwrap();
    }

    #[test]
    fn a_new_link_from_a_controller_displaces_its_stale_one() {
        let (inbox_sender, inbox) = mpsc::channel();
        let listener = Listener::bind(localhost(), MAX, inbox_sender).unwrap();
        let addr = listener.local_addr();
        let hello = encode_hello(LinkKind::Peer, 7);
        let mut stale = raw_link(addr, &hello);
        stale.write_all(&encode_frame(b"from the old process", &[])).unwrap();
        assert_eq!(next_peer_message(&inbox), (7, b"from the old process".to_vec()));
        // Controller 7 restarted, say, and its old connection was never closed.
        let mut fresh = raw_link(addr, &hello);
        fresh.write_all(&encode_frame(b"from the new process", &[])).unwrap();
        assert_eq!(next_peer_message(&inbox), (7, b"from the new process".to_vec()));
        assert_closed_by_listener(stale);
        // Another controller's link is left alone.
        let mut other = raw_link(addr, &encode_hello(LinkKind::Peer, 8));
        other.write_all(&encode_frame(b"from 8", &[])).unwrap();
        assert_eq!(next_peer_message(&inbox), (8, b"from 8".to_vec()));
        fresh.write_all(&encode_frame(b"still open", &[])).unwrap();
        assert_eq!(next_peer_message(&inbox), (7, b"still open".to_vec()));
    }

    #[test]
    fn concurrent_calls_get_their_own_answers_out_of_order() {
        const CALLERS: usize = 4;
        const ROUNDS: usize = 5;
        let (inbox_sender, inbox) = mpsc::channel();
        let listener = Listener::bind(localhost(), MAX, inbox_sender).unwrap();
        // The controller waits until every caller's request is in, then answers them in the
        // reverse order of arrival.
        let controller = thread::spawn(move || {
            for _ in 0..ROUNDS {
                let mut requests = Vec::new();
                while requests.len() < CALLERS {
                    match inbox.recv_timeout(PATIENCE).unwrap() {
                        Inbound::Request { from, payload, reply } => {
                            assert_eq!(from, 5);
                            requests.push((payload, reply));
                        }
                        other => panic!("{other:?}"),
                    }
                }
                for (payload, reply) in requests.into_iter().rev() {
                    let mut answer = b"answer to ".to_vec();
                    answer.extend_from_slice(&payload);
                    reply.send(answer).unwrap();
                }
            }
        });
        let client = Client::new(5, vec![listener.local_addr()], MAX);
        let round_start = Barrier::new(CALLERS);
        thread::scope(|scope| {
            for caller in 0..CALLERS {
                let (client, round_start) = (&client, &round_start);
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        round_start.wait();
                        let request = format!("caller {caller} round {round}");
                        let answer = client.call(0, request.as_bytes(), PATIENCE).unwrap();
                        assert_eq!(answer, format!("answer to {request}").into_bytes());
                    }
                });
            }
        });
        controller.join().unwrap();
        assert_eq!(client.connects.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_timed_out_call_leaves_the_connection_to_the_others() {
        let (inbox_sender, inbox) = mpsc::channel();
        let listener = Listener::bind(localhost(), MAX, inbox_sender).unwrap();
        let (answered_late_sender, answered_late) = mpsc::channel();
        let controller = thread::spawn(move || {
            let next = || match inbox.recv_timeout(PATIENCE).unwrap() {
                Inbound::Request { payload, reply, .. } => (payload, reply),
                other => panic!("{other:?}"),
            };
            let (slow, slow_reply) = next();
            assert_eq!(slow, b"slow");
            let (fast, fast_reply) = next();
            assert_eq!(fast, b"fast");
            fast_reply.send(b"fast answer".to_vec()).unwrap();
            slow_reply.send(b"slow answer".to_vec()).unwrap();
            answered_late_sender.send(()).unwrap();
            let (third, third_reply) = next();
            assert_eq!(third, b"third");
            third_reply.send(b"third answer".to_vec()).unwrap();
        });
        let client = Client::new(5, vec![listener.local_addr()], MAX);
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        assert!(matches!(client.call(0, b"slow", timeout), Err(CallError::Timeout)));
        let waited = start.elapsed();
        assert!(waited >= timeout, "{waited:?}");
        assert!(waited < timeout + Duration::from_secs(1), "{waited:?}");
        assert_eq!(client.call(0, b"fast", PATIENCE).unwrap(), b"fast answer");
        // The late answer to "slow" is on the wire before "third" is asked; it must not be
        // taken for the answer to "third".
        answered_late.recv_timeout(PATIENCE).unwrap();
        assert_eq!(client.call(0, b"third", PATIENCE).unwrap(), b"third answer");
        controller.join().unwrap();
        assert_eq!(client.connects.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn calls_where_nobody_answers_fail_within_their_timeout() {
        let timeout = Duration::from_millis(300);
        // Nothing listens: refused at once.
        let client = Client::new(5, vec![free_addr()], MAX);
        let start = Instant::now();
        assert!(matches!(client.call(0, b"x", timeout), Err(CallError::Io { .. })));
        assert!(start.elapsed() < timeout);

        // Something listens but never accepts: the kernel completes the connect, and no
        // answer ever comes.
        let mute = TcpListener::bind(localhost()).unwrap();
        let client = Client::new(5, vec![mute.local_addr().unwrap()], MAX);
        let start = Instant::now();
        assert!(matches!(client.call(0, b"x", timeout), Err(CallError::Timeout)));
        let waited = start.elapsed();
        assert!(waited >= timeout, "{waited:?}");
        assert!(waited < timeout + Duration::from_secs(1), "{waited:?}");

        assert!(matches!(
            client.call(1, b"x", timeout),
            Err(CallError::NoSuchAddress { index: 1 })
        ));
        let too_large = vec![0u8; 100];
        let small = Client::new(5, vec![mute.local_addr().unwrap()], 107);
        assert!(matches!(
            small.call(0, &too_large, timeout),
            Err(CallError::TooLarge { bytes: 108, max: 107 })
        ));
        let links = PeerLinks::new(1, vec![(2, free_addr())], 99, 4).unwrap();
        assert_eq!(links.send(2, too_large), Err(SendError::TooLarge { bytes: 100, max: 99 }));
    }

    #[test]
    fn shutdown_joins_every_thread() {
        let (inbox_sender, inbox) = mpsc::channel();
        let listener = Listener::bind(localhost(), MAX, inbox_sender).unwrap();
        let addr = listener.local_addr();
        let links = PeerLinks::new(1, vec![(2, addr), (3, free_addr())], MAX, 8).unwrap();
        links.send(2, b"up".to_vec()).unwrap();
        links.send(3, b"down".to_vec()).unwrap();
        assert_eq!(next_peer_message(&inbox), (1, b"up".to_vec()));

        let client = Client::new(5, vec![addr], MAX);
        let caller = thread::scope(|scope| {
            let waiting = scope.spawn(|| client.call(0, b"never answered", PATIENCE));
            let reply = match inbox.recv_timeout(PATIENCE).unwrap() {
                Inbound::Request { reply, .. } => reply,
                other => panic!("{other:?}"),
            };
            // Accept thread, the peer link's reader, the broker link's reader and writer.
            let listener_threads = listener.thread_count();
            assert_eq!(listener_threads.live(), 4);
            let link_threads = links.thread_count();
            assert_eq!(link_threads.live(), 2);
            let client_threads = client.thread_count();
            assert_eq!(client_threads.live(), 1);

            let start = Instant::now();
            links.shutdown();
            client.shutdown();
            listener.shutdown();
            assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
            assert_eq!(listener_threads.live(), 0);
            assert_eq!(link_threads.live(), 0);
            assert_eq!(client_threads.live(), 0);
            assert_eq!(reply.send(b"too late".to_vec()), Err(SendError::Disconnected));
            waiting.join().unwrap()
        });
        assert!(matches!(caller, Err(CallError::Disconnected)));
        assert_eq!(links.send(2, b"x".to_vec()), Err(SendError::Shutdown));
        assert!(matches!(client.call(0, b"x", PATIENCE), Err(CallError::Shutdown)));
        assert!(matches!(inbox.recv_timeout(PATIENCE), Err(RecvTimeoutError::Disconnected)));

        // Drop does the same as shutdown.
        let (inbox_sender, _inbox) = mpsc::channel();
        let listener = Listener::bind(localhost(), MAX, inbox_sender).unwrap();
        let listener_threads = listener.thread_count();
        let links = PeerLinks::new(1, vec![(2, listener.local_addr())], MAX, 8).unwrap();
        let link_threads = links.thread_count();
        drop(links);
        drop(listener);
        assert_eq!(listener_threads.live(), 0);
        assert_eq!(link_threads.live(), 0);
    }
}
