//! The shard's TCP side: a SO_REUSEPORT listener on the broker address (every shard binds
//! the same one; the kernel spreads connections), and per connection a reader that frames
//! and dispatches requests and a writer that sends responses in request order.
//!
//! Requests on one connection are pipelined: each runs as its own task as soon as it is
//! read, and the writer awaits them in arrival order, so a slow fetch never reorders the
//! responses behind it. At most `queued.max.requests` are in flight per connection; the
//! reader stops reading until the writer catches up.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::handlers::{self, Parsed};
use crate::protocol::{self, ProtocolError, SIZE_PREFIX_BYTES};
use crate::shard::Shard;
use crate::zerocopy::{self, Frame};

/// How often a stopping shard looks whether its connections have closed.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a stopping shard waits for its connections to finish in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Accepts and serves connections until the shard stops, then waits (bounded) for open
/// connections to finish the requests they have in flight.
pub async fn serve(shard: Rc<Shard>) -> Result<(), String> {
    let address = shard.config.listen;
    let listener = TcpListener::bind(address)
        .map_err(|error| format!("shard {} cannot listen on {address}: {error}", shard.id))?;
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
            serve_connection(shard.clone(), stream, &peer).await;
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

/// A response still being computed, in the connection's response queue.
type Pending = JoinHandle<Result<Option<Frame>, ProtocolError>>;

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream, peer: &str) {
    let _ = stream.set_nodelay(true);
    let peer_addr = stream.peer_addr().ok();
    // Responses are written with our own non-blocking syscalls (sendmsg, and sendfile for
    // records in page-cache files); glommio's half is used to read and to close.
    let socket = stream.as_raw_fd();
    if let Err(error) = zerocopy::set_nonblocking(socket) {
        warn!(shard = shard.id, %peer, %error, "cannot make the socket non-blocking");
        return;
    }
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let (queue, responses) =
        local_channel::new_bounded::<Pending>(shard.config.queued_max_requests.max(1));

    let writer_shard = shard.clone();
    let writer_peer = peer.to_string();
    let writer_task = glommio::spawn_local(async move {
        while let Some(pending) = responses.recv().await {
            match pending.await {
                Some(Ok(Some(frame))) => {
                    let sent =
                        zerocopy::send_frame(socket, &frame, &writer_shard.fetch_sends).await;
                    if let Err(error) = sent {
                        debug!(shard = writer_shard.id, peer = %writer_peer, %error, "write failed");
                        break;
                    }
                }
                Some(Ok(None)) => {} // acks=0 produce: no response.
                Some(Err(error)) => {
                    warn!(shard = writer_shard.id, peer = %writer_peer, %error, "closing connection");
                    break;
                }
                None => break,
            }
        }
        let _ = writer.close().await;
    });

    loop {
        let frame = futures_lite::future::or(
            async { Some(read_frame(&mut reader, shard.config.socket_request_max_bytes).await) },
            async {
                shard.stopped().await;
                None
            },
        )
        .await;
        let frame = match frame {
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
        let pending = match dispatch(&shard, frame, peer_addr) {
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

/// Reads one request frame (without its size prefix). `Ok(None)` on a clean end of
/// stream before a frame starts.
async fn read_frame<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Bytes>, ReadError> {
    let mut prefix = [0u8; SIZE_PREFIX_BYTES];
    let first = reader.read(&mut prefix).await.map_err(ReadError::Io)?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut prefix[first..]).await.map_err(ReadError::Io)?;
    let size = protocol::check_frame_size(i32::from_be_bytes(prefix), limit)
        .map_err(ReadError::Protocol)?;
    let mut frame = BytesMut::zeroed(size);
    reader.read_exact(&mut frame).await.map_err(ReadError::Io)?;
    Ok(Some(frame.freeze()))
}

/// Checks the API and version of a frame and starts its handler. Unknown APIs and
/// unsupported versions close the connection (the client cannot parse any answer we
/// could give), except ApiVersions, which answers in v0 with the versions we serve.
fn dispatch(
    shard: &Rc<Shard>,
    frame: Bytes,
    peer: Option<std::net::SocketAddr>,
) -> Result<Pending, ProtocolError> {
    match handlers::parse(frame)? {
        Parsed::ApiVersionsFallback { correlation_id } => {
            let response = handlers::api_versions::unsupported_version(correlation_id);
            Ok(glommio::spawn_local(async move { response.map(|b| Some(b.into())) }).detach())
        }
        Parsed::Request(request) => {
            let shard = shard.clone();
            Ok(glommio::spawn_local(async move { handlers::handle(&shard, request, peer).await })
                .detach())
        }
    }
}
