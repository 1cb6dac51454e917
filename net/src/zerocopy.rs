//! Response frames that point at files, and the writer that sends them without copying
//! record bytes through user space.
//!
//! A response is a [`Frame`]: a list of pieces. Most responses are one piece of encoded
//! bytes. A Fetch response is the encoded protocol fields with each partition's records
//! spliced in as a [`FileRange`] of a segment file (page-cache mode), sent with
//! `sendfile(2)` from the page cache to the socket, or as bytes already read (direct
//! mode, where the one copy is the DMA read itself).
//!
//! The shard never blocks on this:
//! - The socket is non-blocking. When its send buffer is full, the writer waits for
//!   writability on [`Poller`]: one process-wide thread in `epoll_wait`, which wakes the
//!   waiting task through its waker (glommio accepts wakes from foreign threads).
//! - Before `sendfile`, the range is probed for page-cache residency with
//!   `preadv2(RWF_NOWAIT)` (one byte per 256 KiB and the last byte). A range that is not
//!   resident is read into the page cache by the warm-up thread (`sendfile` to
//!   `/dev/null`, which pulls the pages in without copying them to user space), and the
//!   shard serves other work meanwhile.
//!
//! Every record byte sent is counted as zero-copy (`sendfile`) or copied (sent from a
//! buffer); each shard logs its totals when it stops.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::limits::{RESIDENCY_PROBE_STRIDE_BYTES, SEND_IOVECS_MAX};
use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{sendmsg, MsgFlags};
use tracing::{error, warn};

/// A byte range of an open file, shareable across shards: the descriptor is a duplicate
/// owned by the range's holders, so the segment may be deleted or closed meanwhile.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub fd: Arc<OwnedFd>,
    pub position: u64,
    pub len: u64,
}

/// A part of a response frame.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Encoded protocol bytes (sizes, headers, fields).
    Meta(Bytes),
    /// Record bytes that were read into memory (direct mode): they count as copied.
    Records(Bytes),
    /// Record bytes still in a file: sent with `sendfile`.
    File(FileRange),
    /// Record bytes from direct mode's cache of recent batches: sent from the memory
    /// they were produced into, with no copy on the fetch path.
    Cached(Bytes),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Meta(bytes) | Piece::Records(bytes) | Piece::Cached(bytes) => bytes.len() as u64,
            Piece::File(range) => range.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole response frame, size prefix included, as pieces sent in order.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub pieces: Vec<Piece>,
}

impl Frame {
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's bytes, reading file ranges (tests and debugging; not the send path).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        for piece in &self.pieces {
            match piece {
                Piece::Meta(bytes) | Piece::Records(bytes) | Piece::Cached(bytes) => {
                    out.extend_from_slice(bytes)
                }
                Piece::File(range) => {
                    let start = out.len();
                    let len = usize::try_from(range.len).map_err(io::Error::other)?;
                    out.resize(start + len, 0);
                    let mut done = 0;
                    while done < len {
                        let offset = i64::try_from(range.position + done as u64)
                            .map_err(io::Error::other)?;
                        let n = nix::sys::uio::pread(&range.fd, &mut out[start + done..], offset)?;
                        if n == 0 {
                            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                        }
                        done += n;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl From<Bytes> for Frame {
    fn from(bytes: Bytes) -> Self {
        Frame { pieces: vec![Piece::Meta(bytes)] }
    }
}

/// Record bytes sent by one shard, by how they reached the socket.
#[derive(Debug, Default)]
pub struct SendStats {
    pub zero_copy_bytes: Cell<u64>,
    pub copied_bytes: Cell<u64>,
    /// Bytes of file ranges that were not in the page cache and were read in by the
    /// warm-up thread before sending.
    pub warmed_bytes: Cell<u64>,
    /// Record bytes sent from direct mode's cache of recent batches.
    pub cached_bytes: Cell<u64>,
}

impl SendStats {
    fn add(counter: &Cell<u64>, n: usize) {
        counter.set(counter.get() + n as u64);
    }
}

#[allow(unsafe_code)]
fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used for the duration of a syscall on a descriptor the caller keeps
    // open (the connection's socket, or a `FileRange` it holds).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Puts the socket in non-blocking mode, which `sendfile` needs to return EAGAIN rather
/// than block the shard. glommio's own reads and writes use MSG_DONTWAIT and poll, so
/// they are unaffected.
pub fn set_nonblocking(socket: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(socket, FcntlArg::F_GETFL)?);
    fcntl(socket, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sends a frame on a non-blocking socket: runs of in-memory pieces with one `sendmsg`,
/// file ranges with `sendfile`. Returns when every byte is in the socket.
pub async fn send_frame(socket: RawFd, frame: &Frame, stats: &SendStats) -> io::Result<()> {
    let pieces = &frame.pieces;
    let mut index = 0;
    // Bytes of pieces[index] already sent.
    let mut sent_in_piece: u64 = 0;
    while index < pieces.len() {
        if let Piece::File(range) = &pieces[index] {
            send_file(socket, range, sent_in_piece, stats).await?;
            index += 1;
            sent_in_piece = 0;
            continue;
        }
        // A run of in-memory pieces, up to the next file range.
        let run_end = pieces[index..]
            .iter()
            .position(|p| matches!(p, Piece::File(_)))
            .map_or(pieces.len(), |at| index + at)
            .min(index + SEND_IOVECS_MAX);
        let more = run_end < pieces.len();
        let slices: Vec<IoSlice<'_>> = pieces[index..run_end]
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let bytes = match piece {
                    Piece::Meta(b) | Piece::Records(b) | Piece::Cached(b) => &b[..],
                    Piece::File(_) => &[][..],
                };
                let skip = if i == 0 { sent_in_piece as usize } else { 0 };
                IoSlice::new(&bytes[skip..])
            })
            .collect();
        let mut flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        if more {
            flags |= MsgFlags::from_bits_retain(libc::MSG_MORE);
        }
        let written = match sendmsg::<()>(socket, &slices, &[], flags, None) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => {
                poller().writable(socket).await?;
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        };
        drop(slices);
        // Advance through the pieces by what was written, counting record bytes.
        let mut left = written as u64;
        while left > 0 && index < run_end {
            let piece = &pieces[index];
            let rest = piece.len() - sent_in_piece;
            let take = rest.min(left);
            match piece {
                Piece::Records(_) => SendStats::add(&stats.copied_bytes, take as usize),
                Piece::Cached(_) => SendStats::add(&stats.cached_bytes, take as usize),
                Piece::Meta(_) | Piece::File(_) => {}
            }
            left -= take;
            sent_in_piece += take;
            if sent_in_piece == piece.len() {
                index += 1;
                sent_in_piece = 0;
            }
        }
        // Skip empty pieces so the loop always makes progress.
        while index < run_end && pieces[index].is_empty() {
            index += 1;
        }
    }
    Ok(())
}

async fn send_file(
    socket: RawFd,
    range: &FileRange,
    already: u64,
    stats: &SendStats,
) -> io::Result<()> {
    let mut position = range.position + already;
    let end = range.position + range.len;
    let mut warmed = false;
    while position < end {
        if !warmed {
            if !resident(range.fd.as_raw_fd(), position, end) {
                warmer().warm(range.fd.clone(), position, end - position).await?;
                SendStats::add(&stats.warmed_bytes, usize::try_from(end - position).unwrap_or(0));
            }
            warmed = true;
        }
        let mut offset = i64::try_from(position).map_err(io::Error::other)?;
        let count = usize::try_from(end - position).unwrap_or(usize::MAX);
        match nix::sys::sendfile::sendfile64(borrow(socket), &range.fd, Some(&mut offset), count) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file ended at {position}, {} bytes short of the range",
                        end - position
                    ),
                ))
            }
            Ok(n) => {
                SendStats::add(&stats.zero_copy_bytes, n);
                position += n as u64;
            }
            Err(Errno::EAGAIN) => {
                poller().writable(socket).await?;
                // The pages may have been evicted while the socket was full.
                warmed = false;
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// Whether the pages of `[from, to)` are in the page cache, by probing one byte per
/// `RESIDENCY_PROBE_STRIDE_BYTES` and the last byte with `preadv2(RWF_NOWAIT)`, which fails with EAGAIN
/// instead of reading from the device.
fn resident(fd: RawFd, from: u64, to: u64) -> bool {
    let mut at = from;
    loop {
        if !probe(fd, at) {
            return false;
        }
        if at + 1 >= to {
            return true;
        }
        at = (at + RESIDENCY_PROBE_STRIDE_BYTES).min(to - 1);
    }
}

#[allow(unsafe_code)]
fn probe(fd: RawFd, position: u64) -> bool {
    let mut byte = 0u8;
    let iov = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    let Ok(offset) = i64::try_from(position) else { return false };
    // SAFETY: one iovec over a live local byte; `fd` is open for the call.
    let n = unsafe { libc::preadv2(fd, &iov, 1, offset, libc::RWF_NOWAIT) };
    // EAGAIN: not cached. Other errors (old kernels: EOPNOTSUPP) also mean "warm it",
    // which is always safe.
    n == 1
}

// ---- a one-shot signal set by a helper thread and awaited on a shard ----

#[derive(Debug, Default)]
struct Signal {
    fired: AtomicBool,
    result: Mutex<Option<io::Result<()>>>,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn fire(&self, result: io::Result<()>) {
        if let Ok(mut slot) = self.result.lock() {
            *slot = Some(result);
        }
        self.fired.store(true, Ordering::Release);
        let waker = self.waker.lock().ok().and_then(|mut w| w.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

struct Wait(Arc<Signal>);

impl Future for Wait {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let take = |signal: &Signal| {
            signal.result.lock().ok().and_then(|mut r| r.take()).unwrap_or(Ok(()))
        };
        if self.0.fired.load(Ordering::Acquire) {
            return Poll::Ready(take(&self.0));
        }
        if let Ok(mut waker) = self.0.waker.lock() {
            *waker = Some(cx.waker().clone());
        }
        // Fired between the check and storing the waker: do not sleep on it.
        if self.0.fired.load(Ordering::Acquire) {
            return Poll::Ready(take(&self.0));
        }
        Poll::Pending
    }
}

// ---- socket writability: one epoll thread for the process ----

/// Waits for sockets to become writable, for all shards.
pub struct Poller {
    epoll: Epoll,
    waiting: Mutex<HashMap<RawFd, Arc<Signal>>>,
}

fn poller() -> &'static Poller {
    static POLLER: OnceLock<&'static Poller> = OnceLock::new();
    POLLER.get_or_init(|| {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(epoll) => epoll,
            Err(errno) => {
                error!(%errno, "epoll_create1 failed; zero-copy sends cannot wait for sockets");
                std::process::abort();
            }
        };
        let poller: &'static Poller =
            Box::leak(Box::new(Poller { epoll, waiting: Mutex::new(HashMap::new()) }));
        let spawned =
            std::thread::Builder::new().name("sluice-poller".into()).spawn(move || poller.run());
        if let Err(error) = spawned {
            error!(%error, "cannot start the socket poller thread");
            std::process::abort();
        }
        poller
    })
}

impl Poller {
    /// Resolves when `socket` can take more bytes (or has failed: the next send says how).
    async fn writable(&self, socket: RawFd) -> io::Result<()> {
        let signal = Arc::new(Signal::default());
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(socket, signal.clone());
        }
        let flags = EpollFlags::EPOLLOUT | EpollFlags::EPOLLONESHOT;
        let data = u64::try_from(socket).map_err(io::Error::other)?;
        let event = EpollEvent::new(flags, data);
        let armed = match self.epoll.modify(borrow(socket), &mut event.clone()) {
            Err(Errno::ENOENT) => self.epoll.add(borrow(socket), event),
            other => other,
        };
        if let Err(errno) = armed {
            if let Ok(mut waiting) = self.waiting.lock() {
                waiting.remove(&socket);
            }
            return Err(errno.into());
        }
        Wait(signal).await
    }

    fn run(&self) {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    error!(%errno, "epoll_wait failed; the socket poller stops");
                    return;
                }
            };
            for event in &events[..n] {
                let Ok(fd) = RawFd::try_from(event.data()) else { continue };
                let signal = self.waiting.lock().ok().and_then(|mut w| w.remove(&fd));
                if let Some(signal) = signal {
                    signal.fire(Ok(()));
                }
            }
        }
    }
}

// ---- page-cache warm-up: one thread that takes the blocking reads ----

struct WarmJob {
    fd: Arc<OwnedFd>,
    position: u64,
    len: u64,
    done: Arc<Signal>,
}

struct Warmer {
    jobs: Mutex<mpsc::Sender<WarmJob>>,
}

fn warmer() -> &'static Warmer {
    static WARMER: OnceLock<Warmer> = OnceLock::new();
    WARMER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<WarmJob>();
        let spawned = std::thread::Builder::new().name("sluice-warmer".into()).spawn(move || {
            let null = match std::fs::OpenOptions::new().write(true).open("/dev/null") {
                Ok(null) => null,
                Err(error) => {
                    warn!(%error, "cannot open /dev/null; cold fetches read on the shard");
                    for job in queue {
                        job.done.fire(Ok(()));
                    }
                    return;
                }
            };
            for job in queue {
                let result = warm(&null, &job.fd, job.position, job.len);
                job.done.fire(result);
            }
        });
        if let Err(error) = spawned {
            error!(%error, "cannot start the page-cache warm-up thread");
            std::process::abort();
        }
        Warmer { jobs: Mutex::new(jobs) }
    })
}

impl Warmer {
    /// Resolves once `[position, position + len)` of the file is in the page cache.
    async fn warm(&self, fd: Arc<OwnedFd>, position: u64, len: u64) -> io::Result<()> {
        let done = Arc::new(Signal::default());
        let job = WarmJob { fd, position, len, done: done.clone() };
        let sent = self.jobs.lock().map_err(|_| io::Error::other("warmer lock"))?.send(job);
        if sent.is_err() {
            return Ok(()); // The thread is gone: sendfile will read the pages itself.
        }
        Wait(done).await
    }
}

/// Pulls a file range into the page cache: `sendfile` to /dev/null reads the pages and
/// discards them in the kernel.
fn warm(null: &std::fs::File, fd: &OwnedFd, position: u64, len: u64) -> io::Result<()> {
    let mut offset = i64::try_from(position).map_err(io::Error::other)?;
    let end = offset.saturating_add(i64::try_from(len).map_err(io::Error::other)?);
    while offset < end {
        let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
        match nix::sys::sendfile::sendfile64(null, fd, Some(&mut offset), count) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// The records a fetch read for one partition: still in a file (page-cache mode), read
/// into memory (direct mode), or found in direct mode's cache of recent batches.
#[derive(Debug, Clone)]
pub enum RecordBytes {
    Memory(Bytes),
    File(FileRange),
    Cached(Vec<Bytes>),
}

impl Default for RecordBytes {
    fn default() -> Self {
        RecordBytes::Memory(Bytes::new())
    }
}

impl RecordBytes {
    pub fn len(&self) -> u64 {
        match self {
            RecordBytes::Memory(bytes) => bytes.len() as u64,
            RecordBytes::File(range) => range.len,
            RecordBytes::Cached(batches) => batches.iter().map(|b| b.len() as u64).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces that send these records.
    pub fn pieces(self) -> Vec<Piece> {
        match self {
            RecordBytes::Memory(bytes) => vec![Piece::Records(bytes)],
            RecordBytes::File(range) => vec![Piece::File(range)],
            RecordBytes::Cached(batches) => batches.into_iter().map(Piece::Cached).collect(),
        }
    }
}
