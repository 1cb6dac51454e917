//! The shard's TCP side: a SO_REUSEPORT listener on the broker address (every shard binds
//! the same one; the kernel spreads connections), and per connection a reader that frames
//! and dispatches requests and a writer that sends responses in request order.
//!
//! Requests on one connection are pipelined: each runs as its own task as soon as it is
//! read, and the writer awaits them in arrival order, so a slow fetch never reorders the
//! responses behind it. At most `queued.max.requests` are in flight per connection; the
//! reader stops reading until the writer catches up.
//!
//! A handler whose response is next in line when it finishes sends it from its own task
//! (see [`SendOrder`]) instead of waking the writer, so the response leaves before
//! whatever else the shard has queued runs (another request's append, the next frame's
//! read). Measured at half load, the response otherwise waited as long as another
//! request's handler ran: the `response_queue` phase's p99 was as large as `local`'s
//! (perf/RESULTS.md, "Where the broker's p99 went", 2026-11-21).

use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::handlers::context::Connection;
use crate::handlers::{self, Parsed};
use crate::limits::{DRAIN_TIMEOUT, READ_BUFFER_BYTES, STOP_POLL};
use crate::protocol::{self, ProtocolError, Request, SIZE_PREFIX_BYTES};
use crate::reqmetrics::RequestTimes;
use crate::shard::{Shard, ShardError};
use crate::zerocopy::{self, Frame};

/// Accepts and serves connections until the shard stops, then waits (bounded) for open
/// connections to finish the requests they have in flight.
pub async fn serve(shard: Rc<Shard>) -> Result<(), ShardError> {
    let address = shard.config.listen;
    let listener = TcpListener::bind(address).map_err(|error| ShardError::Listen {
        shard: shard.id,
        address,
        reason: error.to_string(),
    })?;
    // The address actually bound (the configured port may be 0), for request contexts.
    let bound = listener.local_addr().unwrap_or(address);
    info!(shard = shard.id, %address, "listening");
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopped().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.config.max_connections_per_shard {
            warn!(
                shard = shard.id,
                limit = shard.config.max_connections_per_shard,
                "connection refused: max.connections.per.shard reached"
            );
            drop(stream);
            continue;
        }
        let shard = shard.clone();
        shard.connections.set(shard.connections.get() + 1);
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            debug!(shard = shard.id, %peer, "connection open");
            serve_connection(shard.clone(), stream, bound, &peer).await;
            shard.connections.set(shard.connections.get() - 1);
            debug!(shard = shard.id, %peer, "connection closed");
        })
        .detach();
    }
    drop(listener);
    let drained = futures_lite::future::or(
        async {
            while shard.connections.get() > 0 {
                glommio::timer::sleep(STOP_POLL).await;
            }
            true
        },
        async {
            glommio::timer::sleep(DRAIN_TIMEOUT).await;
            false
        },
    )
    .await;
    if !drained {
        warn!(
            shard = shard.id,
            open = shard.connections.get(),
            "connections still open at shutdown"
        );
    }
    Ok(())
}

/// A response still being computed, in the connection's response queue, with the
/// request's timestamps (see [`crate::reqmetrics`]).
type Pending = JoinHandle<(Outcome, RequestTimes)>;

/// What a request's task hands the writer.
enum Outcome {
    /// The response (or none, for acks=0; or the error that closes the connection), for
    /// the writer to send in turn.
    Unsent(Result<Option<Frame>, ProtocolError>),
    /// The task sent its response itself, being next in line: how it went (see
    /// [`send_timed`]).
    Sent(std::io::Result<(Instant, Instant)>),
}

/// Sends a response frame; on success, when the send started (the response was taken)
/// and when its last byte was in the socket.
async fn send_timed(
    socket: RawFd,
    frame: &Frame,
    shard: &Shard,
) -> std::io::Result<(Instant, Instant)> {
    let taken = Instant::now();
    zerocopy::send_frame(socket, frame, &shard.fetch_sends).await?;
    Ok((taken, Instant::now()))
}

/// The order responses leave a connection in. Requests are numbered as they are read;
/// `next` is the number of the first response not yet wholly in the socket, and moves
/// only when a send finishes. So a task that finds `next` equal to its own number knows
/// that every earlier response is out and nobody is sending: it may send its own at once,
/// and no later response can start before it is done (theirs wait for `next` to pass it,
/// or for the writer, which awaits the responses in order).
#[derive(Default)]
struct SendOrder {
    next: std::cell::Cell<u64>,
}

impl SendOrder {
    /// Every response before `number` is out. The writer reports the responses it went
    /// through, in order, possibly after their tasks (and later ones) already moved
    /// `next` further: it never goes back.
    fn passed(&self, number: u64) {
        self.next.set(self.next.get().max(number));
    }
}

/// Where a request's task may send its response: the connection's socket, its order, and
/// the request's number in it.
struct Responder {
    socket: RawFd,
    order: Rc<SendOrder>,
    number: u64,
}

impl Responder {
    /// Sends `response` now if it is next in line (every earlier response is out);
    /// otherwise hands it to the writer. An error response is always the writer's: it
    /// closes the connection without sending anything more.
    async fn respond(
        self,
        shard: &Shard,
        response: Result<Option<Frame>, ProtocolError>,
    ) -> Outcome {
        if self.order.next.get() != self.number {
            return Outcome::Unsent(response);
        }
        match response {
            Ok(Some(frame)) => {
                let sent = send_timed(self.socket, &frame, shard).await;
                if sent.is_ok() {
                    self.order.passed(self.number + 1);
                }
                Outcome::Sent(sent)
            }
            Ok(None) => {
                self.order.passed(self.number + 1);
                Outcome::Unsent(Ok(None))
            }
            Err(error) => Outcome::Unsent(Err(error)),
        }
    }
}

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream, listener: SocketAddr, peer: &str) {
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(listener, stream.peer_addr().ok());
    // Requests are read and responses written with our own non-blocking syscalls (recv
    // in `FrameReader`; sendmsg, and sendfile for records in page-cache files); glommio's
    // stream waits for data (peek) and shuts the connection down.
    let socket = stream.as_raw_fd();
    if let Err(error) = zerocopy::set_nonblocking(socket) {
        warn!(shard = shard.id, %peer, %error, "cannot make the socket non-blocking");
        return;
    }
    let stream = Rc::new(stream);
    let mut reader = FrameReader::new(socket);
    let (queue, responses) =
        local_channel::new_bounded::<Pending>(shard.config.queued_max_requests.max(1));
    let order = Rc::new(SendOrder::default());

    let writer_shard = shard.clone();
    let writer_peer = peer.to_string();
    let writer_stream = stream.clone();
    let writer_order = order.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut number = 0u64;
        while let Some(pending) = responses.recv().await {
            let Some((outcome, times)) = pending.await else { break };
            let sent = match outcome {
                Outcome::Sent(sent) => sent.map(Some),
                Outcome::Unsent(Ok(Some(frame))) => {
                    send_timed(socket, &frame, &writer_shard).await.map(Some)
                }
                Outcome::Unsent(Ok(None)) => Ok(None), // acks=0: nothing to send.
                Outcome::Unsent(Err(error)) => {
                    warn!(shard = writer_shard.id, peer = %writer_peer, %error, "closing connection");
                    break;
                }
            };
            let response = match sent {
                Ok(response) => response,
                Err(error) => {
                    debug!(shard = writer_shard.id, peer = %writer_peer, %error, "write failed");
                    break;
                }
            };
            writer_shard.request_metrics.record(&times, response);
            number += 1;
            writer_order.passed(number);
        }
        let _ = writer_stream.shutdown(Shutdown::Write).await;
    });
    let mut number = 0u64;

    loop {
        let frame = futures_lite::future::or(
            async { Some(reader.next(&stream, shard.config.socket_request_max_bytes).await) },
            async {
                shard.stopped().await;
                None
            },
        )
        .await;
        let (frame, first_byte) = match frame {
            None => break, // Stopping: in-flight requests finish, no new ones are read.
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => break, // Clean close between frames.
            Some(Err(ReadError::Io(error))) => {
                debug!(shard = shard.id, %peer, %error, "read failed");
                break;
            }
            Some(Err(ReadError::Protocol(error))) => {
                warn!(shard = shard.id, %peer, %error, "closing connection");
                break;
            }
        };
        let responder = Responder { socket, order: order.clone(), number };
        number += 1;
        let pending = match dispatch(&shard, &mut connection, frame, first_byte, responder) {
            Ok(pending) => pending,
            Err(error) => {
                warn!(shard = shard.id, %peer, %error, "closing connection");
                break;
            }
        };
        if queue.send(pending).await.is_err() {
            break; // The writer stopped (write error or a failed request).
        }
    }
    drop(queue);
    let _ = writer_task.await;
}

enum ReadError {
    Io(std::io::Error),
    Protocol(ProtocolError),
}

/// Cuts a connection's byte stream into request frames, receiving straight into the
/// memory the frames live in: no zeroing before a read and no copy after it, apart from
/// the head of a large frame that arrived with the previous read.
///
/// Small frames (under [`READ_BUFFER_BYTES`]) are split off a shared receive buffer, so
/// one `recv` can bring several pipelined requests. A larger frame (a produce request)
/// gets an allocation of its own, sized to the frame: nothing else refers to that memory,
/// so once the request is decoded its record bytes can be made mutable without a copy
/// (`Bytes::try_into_mut`) for the log to assign offsets in place.
///
/// The socket is non-blocking: `recv` runs directly, and on EAGAIN the reader waits for
/// data with glommio's `peek` (which does not consume it).
struct FrameReader {
    socket: RawFd,
    /// Received bytes not yet handed out as frames.
    buffer: BytesMut,
    /// When the reads that brought data returned: the first of the current frame's, and
    /// the latest.
    arrivals: Arrivals,
}

/// When `recv` calls that brought data returned.
#[derive(Default)]
struct Arrivals {
    first: Option<Instant>,
    latest: Option<Instant>,
}

impl Arrivals {
    fn data_received(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.latest = Some(now);
    }
}

impl FrameReader {
    fn new(socket: RawFd) -> Self {
        FrameReader { socket, buffer: BytesMut::new(), arrivals: Arrivals::default() }
    }

    /// Reads one request frame (without its size prefix), with the time its first byte
    /// arrived: the `recv` that brought it returned then (for bytes that came with the
    /// previous frame, the latest `recv`, a bound from above). `Ok(None)` on a clean end
    /// of stream before a frame starts.
    async fn next(
        &mut self,
        stream: &TcpStream,
        limit: usize,
    ) -> Result<Option<(Bytes, Instant)>, ReadError> {
        self.arrivals.first = if self.buffer.is_empty() { None } else { self.arrivals.latest };
        let frame = self.frame(stream, limit).await?;
        Ok(frame.map(|frame| {
            let first_byte = self.arrivals.first.unwrap_or_else(Instant::now);
            (frame, first_byte)
        }))
    }

    async fn frame(
        &mut self,
        stream: &TcpStream,
        limit: usize,
    ) -> Result<Option<Bytes>, ReadError> {
        if self.buffer.len() < SIZE_PREFIX_BYTES {
            let open = self.receive(stream, SIZE_PREFIX_BYTES).await.map_err(ReadError::Io)?;
            if !open && self.buffer.is_empty() {
                return Ok(None);
            }
            still_open(open)?;
        }
        let mut prefix = [0u8; SIZE_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buffer[..SIZE_PREFIX_BYTES]);
        let size = protocol::check_frame_size(i32::from_be_bytes(prefix), limit)
            .map_err(ReadError::Protocol)?;
        self.buffer.advance(SIZE_PREFIX_BYTES);
        if self.buffer.len() >= size {
            return Ok(Some(self.buffer.split_to(size).freeze()));
        }
        if size < READ_BUFFER_BYTES {
            still_open(self.receive(stream, size).await.map_err(ReadError::Io)?)?;
            return Ok(Some(self.buffer.split_to(size).freeze()));
        }
        // A large frame: its own allocation, never read past its end.
        let mut frame = BytesMut::with_capacity(size);
        frame.extend_from_slice(&self.buffer);
        self.buffer.clear();
        still_open(
            recv_at_least(stream, self.socket, &mut frame, size, size, &mut self.arrivals)
                .await
                .map_err(ReadError::Io)?,
        )?;
        Ok(Some(frame.freeze()))
    }

    /// Receives into the shared buffer until it holds `want` bytes (at most
    /// [`READ_BUFFER_BYTES`]), taking no more than READ_BUFFER_BYTES beyond what it holds,
    /// however large its capacity has grown: a large frame must arrive mostly in its own
    /// allocation, not here.
    async fn receive(&mut self, stream: &TcpStream, want: usize) -> std::io::Result<bool> {
        let max = self.buffer.len() + READ_BUFFER_BYTES;
        self.buffer.reserve(READ_BUFFER_BYTES);
        recv_at_least(stream, self.socket, &mut self.buffer, want, max, &mut self.arrivals).await
    }
}

/// The error for a stream that ended inside a frame (`open` is what a receive returned).
fn still_open(open: bool) -> Result<(), ReadError> {
    if open {
        Ok(())
    } else {
        Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
    }
}

/// Receives into `buffer`'s spare capacity until it holds `want` bytes, never past `max`
/// bytes in all, noting in `arrivals` when data came. `Ok(false)` when the peer closed
/// first.
#[allow(unsafe_code)]
async fn recv_at_least(
    stream: &TcpStream,
    socket: RawFd,
    buffer: &mut BytesMut,
    want: usize,
    max: usize,
    arrivals: &mut Arrivals,
) -> std::io::Result<bool> {
    debug_assert!(want <= max);
    while buffer.len() < want {
        if buffer.capacity() == buffer.len() {
            buffer.reserve(want - buffer.len());
        }
        let len = buffer.len();
        let spare = buffer.spare_capacity_mut();
        let room = spare.len().min(max - len);
        // SAFETY: recv writes at most `room` bytes through the pointer, all within the
        // spare capacity; the bytes it reports written are initialised, and only those
        // are added to the length.
        let received =
            unsafe { libc::recv(socket, spare.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) };
        match received {
            0 => return Ok(false),
            n if n > 0 => {
                // SAFETY: the first `n` spare bytes were just written by recv.
                unsafe { buffer.set_len(len + n as usize) };
                arrivals.data_received();
            }
            _ => {
                let error = std::io::Error::last_os_error();
                match error.kind() {
                    std::io::ErrorKind::WouldBlock => {
                        // Wait for data (or the end of the stream) without taking it.
                        stream.peek(&mut [0u8; 1]).await?;
                    }
                    std::io::ErrorKind::Interrupted => {}
                    _ => return Err(error),
                }
            }
        }
    }
    Ok(true)
}

/// Checks the API and version of a frame and starts its handler. Unknown APIs and
/// unsupported versions close the connection (the client cannot parse any answer we
/// could give), except ApiVersions, which answers in v0 with the versions we serve.
fn dispatch(
    shard: &Rc<Shard>,
    connection: &mut Connection,
    frame: Bytes,
    first_byte: Instant,
    responder: Responder,
) -> Result<Pending, ProtocolError> {
    let received = Instant::now();
    // A frame too short for the header is refused by `parse` below, and never timed.
    let api_key = protocol::FixedHeader::peek(&frame).map_or(-1, |header| header.api_key);
    let times = move |started: Instant| RequestTimes {
        api_key,
        first_byte,
        received,
        started,
        done: Instant::now(),
    };
    let shard = shard.clone();
    match handlers::parse(frame)? {
        Parsed::ApiVersionsFallback { correlation_id } => {
            let response = handlers::unsupported_version(correlation_id);
            Ok(glommio::spawn_local(async move {
                let started = Instant::now();
                let times = times(started);
                let response = response.map(|b| Some(b.into()));
                (responder.respond(&shard, response).await, times)
            })
            .detach())
        }
        Parsed::Request(Request { api, header, body }) => {
            // The header is consumed here: the context keeps none of the frame, so a
            // produce request's body alone refers to it (see `handlers::context`).
            let ctx = connection.request(shard, api, header);
            Ok(glommio::spawn_local(async move {
                let started = Instant::now();
                let response = handlers::handle(&ctx, body).await;
                let times = times(started);
                (responder.respond(&ctx.shard, response).await, times)
            })
            .detach())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Frames of every size class, sent in chunks that split prefixes and bodies at
    /// arbitrary points (and with pauses, so the reader also waits for data), come out
    /// whole and in order; the stream's end between frames is a clean close.
    #[test]
    fn frames_survive_any_chunking() {
        let sizes: Vec<usize> = vec![
            8,
            9,
            100,
            4096,
            READ_BUFFER_BYTES - 1,
            READ_BUFFER_BYTES,
            3 << 20,
            12,
            200_000,
            8,
        ];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect();
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend_from_slice(&(frame.len() as i32).to_be_bytes());
            wire.extend_from_slice(frame);
        }
        sluice_engine::runtime::run_local(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let writer = std::thread::spawn(move || {
                let mut socket = std::net::TcpStream::connect(address).unwrap();
                let mut at = 0;
                let mut step = 1;
                while at < wire.len() {
                    let end = (at + step).min(wire.len());
                    socket.write_all(&wire[at..end]).unwrap();
                    at = end;
                    step = step * 3 + 1; // 1, 4, 13, ... then start over
                    if step > 1 << 20 {
                        step = 2;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
            let stream = listener.accept().await.unwrap();
            zerocopy::set_nonblocking(stream.as_raw_fd()).unwrap();
            let mut reader = FrameReader::new(stream.as_raw_fd());
            let mut previous_first_byte = None;
            for expected in &frames {
                let (frame, first_byte) = match reader.next(&stream, 16 << 20).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => panic!("end of stream before a frame of {} bytes", expected.len()),
                    Err(ReadError::Io(error)) => {
                        panic!("frame of {} bytes: {error}", expected.len())
                    }
                    Err(ReadError::Protocol(error)) => {
                        panic!("frame of {} bytes: {error}", expected.len())
                    }
                };
                assert_eq!(&frame[..], &expected[..]);
                // A frame's first byte came no earlier than the previous frame's, and
                // before the frame was handed out.
                assert!(first_byte <= Instant::now());
                assert!(previous_first_byte.is_none_or(|previous| previous <= first_byte));
                previous_first_byte = Some(first_byte);
            }
            writer.join().unwrap();
            assert!(matches!(reader.next(&stream, 16 << 20).await, Ok(None)));
        });
    }

    /// A stream that ends inside a frame, or announces a frame over the limit, is an
    /// error, not a frame.
    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        for (wire, limit) in [
            ([0u8, 0, 0, 10, 1, 2, 3].to_vec(), 100),
            ([0u8, 0, 0, 1, 1].to_vec(), 100),
            ([0u8, 0, 0].to_vec(), 100),
            ([0u8, 1, 0, 0, 1].to_vec(), 100),
            (
                {
                    let mut wire = ((READ_BUFFER_BYTES * 2) as i32).to_be_bytes().to_vec();
                    wire.extend(std::iter::repeat(9).take(READ_BUFFER_BYTES + 5));
                    wire
                },
                1 << 20,
            ),
        ] {
            sluice_engine::runtime::run_local(async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let address = listener.local_addr().unwrap();
                let writer = std::thread::spawn(move || {
                    let mut socket = std::net::TcpStream::connect(address).unwrap();
                    socket.write_all(&wire).unwrap();
                });
                let stream = listener.accept().await.unwrap();
                zerocopy::set_nonblocking(stream.as_raw_fd()).unwrap();
                let mut reader = FrameReader::new(stream.as_raw_fd());
                let result = reader.next(&stream, limit).await;
                assert!(result.is_err());
                drop(stream);
                writer.join().unwrap();
            });
        }
    }
}
