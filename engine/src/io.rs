//! The one seam for file I/O. Every byte the log writes or reads goes through
//! [`SegmentFile`] (a segment's records) or [`IndexFile`] (its offset and time indexes).
//! A segment file has two implementations chosen by configuration:
//!
//! - `direct`: O_DIRECT through glommio DMA files. Writes are aligned to whole
//!   file-system blocks, so the unaligned tail of the file (less than one block) is kept
//!   in memory and rewritten, padded with zeros, by the next append. The file is
//!   allocated ahead of the writes (`fallocate`, up to 64 MiB ahead), so no write
//!   extends it: ext4 can submit aligned writes inside the file without blocking, where
//!   an extending write would go to an io_uring worker thread and wait there. The
//!   padding and the space allocated ahead are trimmed when the file is sealed; after a
//!   crash they read as zeros after the last batch, which recovery trims.
//!   Appends are write-behind: an append copies its bytes into a DMA buffer, queues the
//!   write and returns without waiting for the device; `wait_landed` waits for it. The
//!   log waits there after releasing its append lock, so the next append (another
//!   producer's, or the next pipelined request) is copied while this one is written.
//!   Up to four writes are in flight per file, so the device always has the next write
//!   queued; while all four are, further appends gather into one open write that is
//!   submitted when one lands (group commit), so many small appends cost a few large
//!   writes. Consecutive appends share the partial block, and two writes of one block in
//!   flight may land in either order, so no two writes in flight cover one block: while
//!   writes are in flight an append holds back its partial last block, and the next
//!   append writes it in its own write; an append whose first block is still being
//!   written submits that block only once every earlier write has landed (see
//!   `DirectFile::append`). An append counts as landed once its bytes and every byte
//!   before them are on the device. Reads of bytes still in flight are served from the
//!   writes' buffers. A failed write is sticky: every later append, sync, truncate, seal
//!   and read of the file fails, so no loss goes unnoticed. `sync` and `seal` wait for
//!   the writes in flight first.
//! - `buffered`: the page cache, which is what zero-copy fetch (sendfile/splice) reads
//!   from. Reads go through glommio buffered files (io_uring). Appends are a `pwrite` on
//!   the shard's own thread by default ([`BufferedWrite::Inline`]): ext4 cannot complete
//!   a buffered write from io_uring without blocking, so an io_uring write
//!   ([`BufferedWrite::Uring`]) is handed to a kernel worker thread on the same core and
//!   the append waits for a thread switch there and back, and for every other buffered
//!   write to the same file, which that worker runs one at a time. Copying the bytes into
//!   the page cache costs the core the same either way (see `log.buffered.write`).
//!   Optionally ([`SegmentFile::set_writeback_bytes`], [`SegmentFile::set_cache_window`])
//!   a helper thread starts the device write of appended bytes early and drops written-back
//!   pages far behind the end from the page cache ([`crate::writeback`]).
//!
//! Direct mode submits through io_uring, so a shard never blocks in a syscall there;
//! buffered appends block the shard for the copy into the page cache, like a Kafka
//! request handler thread's `FileChannel.write`. Appends are sequential: a file is only
//! ever appended to by one task at a time (the log's append lock) and the position is the
//! logical length.
//!
//! Descriptors are a bounded resource: a [`SegmentFile`] keeps its descriptor only while
//! the shard's descriptor cache ([`crate::fdcache`]) lets it, and reopens it (never
//! re-creating the file) on its next use; an [`IndexFile`] opens its file only while it
//! writes or reads it. What a file knows (its length, direct mode's tail block, writes in
//! flight and allocation) lives beside the descriptor, so closing loses nothing.
//!
//! A [`FaultPlan`] can be attached for tests: fail the next fsync, tear the next append
//! after N bytes, fail the next read, fail the next write (in direct mode after the
//! append returned, as a device error would). Faults hit real files, so what recovery
//! then finds on disk is exactly what a crash would leave.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions, ReadResult};
use tracing::{debug, warn};

use crate::fdcache;

/// How segment files do I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT through glommio DMA files; the page cache is bypassed.
    Direct,
    /// Through the page cache; reads can be sent to sockets with sendfile/splice.
    Buffered,
}

impl std::str::FromStr for IoMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "direct" => Ok(IoMode::Direct),
            "buffered" => Ok(IoMode::Buffered),
            other => Err(format!("unknown io mode {other:?} (expected direct or buffered)")),
        }
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoMode::Direct => "direct",
            IoMode::Buffered => "buffered",
        })
    }
}

/// How buffered-mode appends reach the page cache (`log.buffered.write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BufferedWrite {
    /// `pwrite` on the shard's thread: the copy into the page cache and nothing else.
    #[default]
    Inline,
    /// An io_uring write (glommio): the shard does not block, but ext4 completes it in an
    /// io-wq worker thread, one write per file at a time.
    Uring,
}

impl std::str::FromStr for BufferedWrite {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "inline" => Ok(BufferedWrite::Inline),
            "io_uring" => Ok(BufferedWrite::Uring),
            other => Err(format!("unknown buffered write {other:?} (expected inline or io_uring)")),
        }
    }
}

impl std::fmt::Display for BufferedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BufferedWrite::Inline => "inline",
            BufferedWrite::Uring => "io_uring",
        })
    }
}

/// Faults to inject into the next operations of the files that share this plan. Atomic
/// so that options holding a plan can cross to a shard's thread.
#[derive(Debug)]
pub struct FaultPlan {
    fail_next_sync: AtomicBool,
    /// `usize::MAX` when no tear is planned.
    tear_next_append_after: AtomicUsize,
    fail_next_read: AtomicBool,
    fail_next_write: AtomicBool,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            fail_next_sync: AtomicBool::new(false),
            tear_next_append_after: AtomicUsize::new(usize::MAX),
            fail_next_read: AtomicBool::new(false),
            fail_next_write: AtomicBool::new(false),
        }
    }
}

impl FaultPlan {
    /// The next `sync` fails.
    pub fn fail_next_sync(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// The next append writes only `bytes` bytes of its data, then fails.
    pub fn tear_next_append_after(&self, bytes: usize) {
        self.tear_next_append_after.store(bytes, Ordering::SeqCst);
    }

    /// The next `read_at` fails.
    pub fn fail_next_read(&self) {
        self.fail_next_read.store(true, Ordering::SeqCst);
    }

    fn take_sync(&self) -> bool {
        self.fail_next_sync.swap(false, Ordering::SeqCst)
    }

    fn take_tear(&self) -> Option<usize> {
        let after = self.tear_next_append_after.swap(usize::MAX, Ordering::SeqCst);
        (after != usize::MAX).then_some(after)
    }

    /// The write of the next append fails without writing anything. Buffered mode: the
    /// append fails. Direct mode: the append returns (its write is in flight) and the
    /// write's failure is reported by every later operation on the file.
    pub fn fail_next_write(&self) {
        self.fail_next_write.store(true, Ordering::SeqCst);
    }

    fn take_read(&self) -> bool {
        self.fail_next_read.swap(false, Ordering::SeqCst)
    }

    fn take_write(&self) -> bool {
        self.fail_next_write.swap(false, Ordering::SeqCst)
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

/// Bytes read from a segment file: a view of glommio's buffer, or owned bytes.
#[derive(Debug)]
pub enum FileBytes {
    Uring(ReadResult),
    Owned(Vec<u8>),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Uring(result) => result,
            FileBytes::Owned(bytes) => bytes,
        }
    }
}

/// An open descriptor of a segment file (glommio's file). An operation clones it for as
/// long as it uses the descriptor (a direct-mode write's task until the write lands):
/// while a clone lives, the descriptor cache does not close the file.
#[derive(Clone)]
enum Handle {
    Buffered(Rc<BufferedFile>),
    Direct(Rc<DmaFile>),
}

impl Handle {
    fn in_use(&self) -> bool {
        match self {
            Handle::Buffered(file) => Rc::strong_count(file) > 1,
            Handle::Direct(file) => Rc::strong_count(file) > 1,
        }
    }
}

/// The descriptors of one segment file: what the shard's descriptor cache
/// ([`crate::fdcache`]) may close while the file is idle. The file reopens them on its
/// next use.
struct Descriptors {
    handle: RefCell<Option<Handle>>,
    /// Buffered mode: a duplicate of the descriptor for zero-copy senders and the
    /// writeback helper on other threads, made on first use. Closing drops only this
    /// reference: a sender still holding the `Arc` keeps the descriptor until it is done.
    shared: RefCell<Option<Arc<OwnedFd>>>,
    entry: Cell<Option<fdcache::Entry>>,
    /// Set when the file is unlinked while others still hold it (retention deleted the
    /// segment under a read): its name is gone, so it could not be reopened.
    pinned: Cell<bool>,
    /// Direct mode: the write state; a file with writes in flight is in use.
    writes: Option<Rc<RefCell<DirectState>>>,
}

impl Descriptors {
    fn held(&self) -> usize {
        usize::from(self.handle.borrow().is_some()) + usize::from(self.shared.borrow().is_some())
    }

    /// Tells the cache what this file holds now, `opened` of it just opened, and that it
    /// was just used. Never called with `handle` or `shared` borrowed: the cache may
    /// close other files, and looks at this one.
    fn account(self: &Rc<Self>, opened: usize) {
        let weak: Weak<dyn fdcache::Holder> = Rc::downgrade(self) as Weak<dyn fdcache::Holder>;
        fdcache::update(&self.entry, weak, self.held(), opened);
    }
}

impl fdcache::Holder for Descriptors {
    fn idle(&self) -> bool {
        let handle_idle = match self.handle.try_borrow() {
            Ok(handle) => !handle.as_ref().is_some_and(Handle::in_use),
            Err(_) => false,
        };
        let writes_idle = match &self.writes {
            None => true,
            Some(state) => state
                .try_borrow()
                .is_ok_and(|state| state.in_flight.is_empty() && state.open.is_none()),
        };
        !self.pinned.get() && handle_idle && writes_idle
    }

    fn evicted(&self) {
        self.entry.set(None);
        let handle = self.handle.borrow_mut().take();
        let shared = self.shared.borrow_mut().take();
        // glommio closes its file from the ring, at the shard's next I/O poll.
        drop((handle, shared));
    }
}

/// Direct mode's state of a file, which outlives its descriptor: the block size, the
/// tail block, the writes in flight and the space allocated ahead.
struct DirectFile {
    alignment: u64,
    state: Rc<RefCell<DirectState>>,
}

#[derive(Default)]
struct DirectState {
    /// Bytes from `align_down(len)` to `len`: the logical bytes of the last, partial
    /// block (on disk, zero-padded, once the writes in flight land).
    tail: Vec<u8>,
    /// Writes not yet landed, in append order. A write leaves from the front, once it
    /// and every write before it have landed, so the bytes before the front's `from`
    /// are on the device.
    in_flight: VecDeque<InFlight>,
    /// Numbers the writes, so that a finished piece finds its write in `in_flight`.
    next_id: u64,
    /// Logical end of the last write that left `in_flight` landed (reset by `load_tail`).
    landed: u64,
    /// The file's size on disk: past the logical end, space allocated ahead of the
    /// writes (see [`DirectFile::allocate_for`]).
    allocated: u64,
    /// Bumped whenever the size on disk is set (`load_tail`, `seal`), so an allocation
    /// that raced with that does not claim space the file no longer has.
    resized: u64,
    /// The file system refused `fallocate`: writes extend the file instead.
    cannot_allocate: bool,
    /// Why a write failed, once one has. Sticky: bytes an append already returned for
    /// are lost, so the file refuses all further use (the log goes offline).
    failed: Option<String>,
    /// The write at the back of `in_flight` while it gathers appends (see
    /// [`DirectFile::append`]): not yet submitted, its body still growing.
    open: Option<OpenWrite>,
    /// Tasks waiting for `in_flight` to change.
    waiters: Vec<Waker>,
}

/// The body of a write that gathers appends: the appends that come while
/// [`MAX_WRITES_IN_FLIGHT`] writes are in flight are copied into its buffer, one after
/// another, and go to the device as one write once a write lands (group commit).
struct OpenWrite {
    /// The write's id in `in_flight` (always its back).
    id: u64,
    /// Block-aligned file offset of the buffer's first byte.
    at: u64,
    /// Logical bytes from `at` to the write's end, zero-padded to the next block; past
    /// that, room for more (its length is the capacity, not the contents).
    buffer: DmaBuffer,
}

/// The write of one append: its pieces, each a block-aligned run of the file written
/// by one device write (see [`DirectFile::append`]).
struct InFlight {
    id: u64,
    /// Logical end of the file once this write lands. Lowered to the start of the
    /// held block when the next append takes that block over.
    end: u64,
    /// In file order. Consecutive pieces may share one block (the first piece of a
    /// write and the last of the write before it): the later one holds the newer bytes.
    pieces: Vec<Piece>,
    /// Pieces not yet landed (or failed).
    pending: usize,
}

struct Piece {
    /// Block-aligned file offset.
    at: u64,
    /// The logical bytes from `at`, zero-padded to whole blocks.
    buffer: Rc<DmaBuffer>,
    state: PieceState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceState {
    /// Handed to the kernel (or about to be).
    Submitted,
    /// The first block, still being written by an earlier write: submitted once every
    /// earlier write has landed.
    Waits,
    /// The partial last block, held back while earlier writes are in flight: the next
    /// append takes it over and writes it with its own bytes, or, if none comes first,
    /// it is submitted once everything before it has landed.
    Held,
}

impl DirectState {
    /// Records that the file's size on disk was just set to `len` (trimmed or reloaded).
    fn set_size_on_disk(&mut self, len: u64) {
        self.allocated = len;
        self.resized += 1;
    }

    /// Records that one piece of write `id` finished, retires the writes at the front
    /// that are complete, and returns the tasks to wake.
    fn piece_done(&mut self, id: u64, result: io::Result<()>) -> Vec<Waker> {
        if let Err(error) = result {
            warn!(%error, "direct write failed; the file refuses further use");
            self.failed.get_or_insert_with(|| error.to_string());
        }
        if let Some(write) = self.in_flight.iter_mut().find(|write| write.id == id) {
            write.pending -= 1;
        }
        self.retire()
    }

    /// Retires the complete writes at the front (moving `landed`) and returns the tasks
    /// to wake.
    fn retire(&mut self) -> Vec<Waker> {
        while self.in_flight.front().is_some_and(|write| write.pending == 0) {
            let write = self.in_flight.pop_front().expect("checked");
            if self.failed.is_none() {
                self.landed = self.landed.max(write.end);
            }
        }
        std::mem::take(&mut self.waiters)
    }

    /// Takes over the held last block of the last write, if it has one: from then on
    /// the block (and the logical bytes in it) belongs to the next write, and the last
    /// write ends where the block starts. Returns whether there was one.
    fn take_held(&mut self) -> bool {
        let Some(write) = self.in_flight.back_mut() else { return false };
        if !matches!(write.pieces.last(), Some(piece) if piece.state == PieceState::Held) {
            return false;
        }
        let held = write.pieces.pop().expect("checked");
        write.pending -= 1;
        write.end = write.end.min(held.at);
        true
    }

    /// Whether a write is in flight or waiting to be.
    fn busy(&self) -> bool {
        self.in_flight.iter().any(|write| write.pending > 0)
    }

    /// What an append whose end, rounded up to the block, is `padded_end` does now.
    /// `gather`: it may join or open a write that gathers; `can_open`: it has a body to
    /// open one with.
    fn step(&self, padded_end: u64, gather: bool, can_open: bool) -> Step {
        match &self.open {
            Some(open) if gather && padded_end - open.at <= open.buffer.len() as u64 => Step::Join,
            // Appends are sequential: none goes past an open write.
            Some(_) => Step::Wait,
            None if self.in_flight.len() < MAX_WRITES_IN_FLIGHT => Step::Place,
            None if can_open => Step::Open,
            None => Step::Wait,
        }
    }

    /// Closes the open write `id`: its body, trimmed to its end, becomes a piece
    /// submitted at once, and its partial last block a held piece when earlier writes are
    /// still in flight (as `place` would cut it). Returns the new pieces' jobs.
    fn close_open(&mut self, id: u64, file: &DmaFile, alignment: u64) -> Vec<PieceJob> {
        let open = self.open.take().expect("the open write");
        assert_eq!(open.id, id);
        let busy = self.in_flight.iter().any(|write| write.id != id && write.pending > 0);
        let write = self.in_flight.back_mut().expect("the open write is in flight");
        assert_eq!(write.id, id);
        let to = |offset: u64| usize::try_from(offset - open.at).expect("within the buffer");
        let end = write.end;
        let last_block = end - end % alignment;
        let padded_end = end.div_ceil(alignment) * alignment;
        let mut body = open.buffer;
        let mut pieces = Vec::with_capacity(2);
        if busy && end % alignment != 0 && last_block > open.at {
            let mut held = file.alloc_dma_buffer(to(padded_end) - to(last_block));
            held.as_bytes_mut().copy_from_slice(&body.as_bytes()[to(last_block)..to(padded_end)]);
            body.trim_to_size(to(last_block));
            pieces.push(Piece { at: open.at, buffer: Rc::new(body), state: PieceState::Submitted });
            pieces.push(Piece { at: last_block, buffer: Rc::new(held), state: PieceState::Held });
        } else {
            body.trim_to_size(to(padded_end));
            pieces.push(Piece { at: open.at, buffer: Rc::new(body), state: PieceState::Submitted });
        }
        // The body was counted as one pending piece.
        write.pending += pieces.len() - 1;
        let jobs = jobs_of(&pieces, write.pieces.len());
        write.pieces.extend(pieces);
        jobs
    }
}

/// What an append does next (see [`DirectState::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Copy into the open write.
    Join,
    /// A write of its own, submitted at once.
    Place,
    /// A write of its own that stays open for the appends after it.
    Open,
    /// Wait for a write to land (or the open write to close).
    Wait,
}

/// What the task of one piece needs: its index in the write, where it goes, its bytes,
/// and whether it waits.
type PieceJob = (usize, u64, Rc<DmaBuffer>, PieceState);

/// The jobs of `pieces`, which sit in their write from index `first` on.
fn jobs_of(pieces: &[Piece], first: usize) -> Vec<PieceJob> {
    let job = |(index, piece): (usize, &Piece)| {
        (first + index, piece.at, piece.buffer.clone(), piece.state)
    };
    pieces.iter().enumerate().map(job).collect()
}

/// Most writes in flight per file. An append beyond it waits for the oldest to land,
/// which bounds the DMA memory a file holds.
const MAX_WRITES_IN_FLIGHT: usize = 4;

/// Room an open write gathers appends into: past it, an append waits for a write to land.
const GATHER_BYTES: usize = 1 << 20;

/// Space a direct-mode file allocates ahead of its writes: as much as the file already
/// holds, within these bounds, so a small partition holds little unused space and a busy
/// one calls `fallocate` every 64 MiB.
const ALLOCATE_AHEAD_MIN: u64 = 1 << 20;
const ALLOCATE_AHEAD_MAX: u64 = 64 << 20;

thread_local! {
    /// Direct-mode writes in flight on this thread's executor: (executor id, count).
    /// Keyed by executor because an executor dropped with writes in flight (the end of a
    /// test) leaks their tasks, and the thread may run another executor next.
    static WRITES_IN_FLIGHT: Cell<(usize, usize)> = const { Cell::new((usize::MAX, 0)) };
}

fn writes_in_flight() -> usize {
    let executor = glommio::executor().id();
    WRITES_IN_FLIGHT.with(|count| match count.get() {
        (id, n) if id == executor => n,
        _ => 0,
    })
}

/// Counts one write in [`WRITES_IN_FLIGHT`] while its task lives.
struct WriteCounted {
    executor: usize,
}

impl WriteCounted {
    fn new() -> Self {
        let executor = glommio::executor().id();
        WRITES_IN_FLIGHT.with(|count| count.set((executor, writes_in_flight() + 1)));
        WriteCounted { executor }
    }
}

impl Drop for WriteCounted {
    fn drop(&mut self) {
        WRITES_IN_FLIGHT.with(|count| {
            let (id, n) = count.get();
            if id == self.executor {
                count.set((id, n.saturating_sub(1)));
            }
        });
    }
}

/// Resolves once no direct-mode write submitted on this thread is in flight. For tests
/// that stand for a crash by dropping a log: a write the kernel has accepted still
/// lands after the process dies, and this waits for it as the kernel would.
pub async fn writes_landed() {
    while writes_in_flight() > 0 {
        glommio::timer::sleep(Duration::from_micros(100)).await;
    }
}

/// A file that the log appends to and reads from. Lives on one shard; shared by `Rc`
/// between the log and in-flight reads, so every method takes `&self`.
///
/// Its descriptor is opened when the file is opened and may be closed by the shard's
/// descriptor cache ([`crate::fdcache`]) whenever no operation is using it; the next
/// operation reopens it. What the file knows lives beside the descriptor and survives
/// that: the logical length, direct mode's tail block, writes in flight and allocation.
pub struct SegmentFile {
    path: PathBuf,
    /// Tells files apart in drop-behind bookkeeping, whatever descriptors they hold.
    id: u64,
    fds: Rc<Descriptors>,
    /// Direct mode's state; `None` in buffered mode.
    direct: Option<DirectFile>,
    /// Logical length: the bytes appended so far. Direct-mode padding is not counted.
    len: Cell<u64>,
    /// Appended to or cut since the last successful sync. True at open for a file with
    /// bytes: the page cache may hold writes of a process that was killed, which recovery
    /// then trusts. An empty file has nothing to sync: creating a partition costs no
    /// fsync (10,000 of them made creating 10,000 partitions take up to 39 s here).
    unsynced: Cell<bool>,
    faults: Option<Arc<FaultPlan>>,
    /// Buffered mode: start writeback every this many appended bytes (0: never; see
    /// [`crate::writeback`]), and where the range not yet handed over starts.
    writeback_every: Cell<u64>,
    writeback_from: Cell<u64>,
    /// Buffered mode: how appends are written.
    buffered_write: Cell<BufferedWrite>,
    /// Buffered mode: pages more than this many bytes behind the logical end are dropped
    /// from the page cache once written back (0: never), and where the range not yet
    /// dropped starts.
    cache_window: Cell<u64>,
    dropped_to: Cell<u64>,
    /// Buffered mode, with a cache window: the sealed segments of the same log whose last
    /// pages were still inside the window when this file became the active one, oldest
    /// first (the window is the log's, so it spans rolls). See [`SegmentFile::follow`].
    predecessors: RefCell<VecDeque<CachedTail>>,
}

/// Sealed segments whose cached pages an active segment keeps track of, at most (each
/// holds a descriptor, outside the descriptor cache's budget); past it, the oldest one's
/// pages are dropped at once.
const PREDECESSORS_MAX: usize = 64;

/// A sealed segment's pages still in the page cache: `dropped_to..end` of the file `fd`
/// (the segment file `file_id`).
#[derive(Debug)]
struct CachedTail {
    file_id: u64,
    fd: Arc<OwnedFd>,
    dropped_to: u64,
    end: u64,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile")
            .field("path", &self.path)
            .field("len", &self.len.get())
            .field("direct", &self.direct.is_some())
            .finish()
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        fdcache::remove(&self.fds.entry);
    }
}

/// glommio 0.9 runs ftruncate, unlink, rename and mkdir on its blocking thread pool, whose
/// completion was seen, rarely and only under load, never to arrive: a partition log
/// stayed in `Log::open` for good. These metadata operations are plain syscalls here
/// (short on a local file system, and never on the produce or fetch path except when a
/// segment rolls or retention deletes one).
#[allow(unsafe_code)]
fn set_len(fd: std::os::fd::RawFd, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::other("file length over i64"))?;
    // SAFETY: `fd` is the descriptor of a file whose handle the caller holds for the
    // whole call; the borrow does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::unistd::ftruncate(fd, len).map_err(io::Error::from)
}

#[allow(unsafe_code)]
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by fcntl(F_DUPFD_CLOEXEC): open, and owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[allow(unsafe_code)]
fn borrowed(fd: &impl AsRawFd) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `fd`, which the borrow cannot outlive.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// Removes a file with a plain syscall (see [`set_len`] for why not glommio's).
pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)
}

/// Bytes appended between two checks of the cache window when no writeback is asked for.
pub const CACHE_WINDOW_STEP: u64 = 1 << 20;
/// Page-cache granularity for dropping pages.
const PAGE_BYTES: u64 = 4096;
/// Times an open that failed for want of descriptors (EMFILE, ENFILE) is retried after
/// closing idle files, and how many idle files each retry closes.
const OPEN_RETRIES: usize = 3;
const SHED_FILES: usize = 64;

fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(error)
}

/// True for an error that says the file system is full (or the user's quota spent).
pub fn out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(nix::libc::ENOSPC | nix::libc::EDQUOT))
}

/// True for an error that says the process (or the system) has no descriptor left.
fn out_of_descriptors(error: &glommio::GlommioError<()>) -> bool {
    let errno = match error {
        glommio::GlommioError::IoError(error) => error.raw_os_error(),
        glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
        _ => None,
    };
    matches!(errno, Some(nix::libc::EMFILE | nix::libc::ENFILE))
}

/// Runs `open` and, when it fails for want of descriptors, closes idle segment files
/// (the shard's own, through its descriptor cache) and tries again: connections or a
/// burst of reopens may have taken what the budget left free.
async fn open_retrying<T, F, Fut>(path: &Path, open: F) -> io::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, glommio::GlommioError<()>>>,
{
    let mut attempt = 0;
    loop {
        match open().await {
            Ok(file) => return Ok(file),
            Err(error) if out_of_descriptors(&error) && attempt < OPEN_RETRIES => {
                attempt += 1;
                let closed = fdcache::shed(SHED_FILES);
                warn!(
                    path = %path.display(), %error, closed, attempt,
                    "out of file descriptors; closed idle segment files and trying again"
                );
                // glommio closes dropped files from its ring: give it a poll first.
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Err(error) => return Err(to_io(error)),
        }
    }
}

thread_local! {
    /// Numbers this thread's segment files (see `SegmentFile::id`).
    static NEXT_FILE_ID: Cell<u64> = const { Cell::new(0) };
}

fn options(create: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create);
    options
}

impl SegmentFile {
    /// Opens `path` for reading and appending, creating it if missing. The logical length
    /// is the file's size; the caller truncates further if recovery says so.
    pub async fn open(
        path: &Path,
        mode: IoMode,
        faults: Option<Arc<FaultPlan>>,
    ) -> io::Result<SegmentFile> {
        let (handle, direct, len) = match mode {
            IoMode::Buffered => {
                let file =
                    open_retrying(path, || async { options(true).buffered_open(path).await })
                        .await?;
                let len = file.file_size().await.map_err(to_io)?;
                (Handle::Buffered(Rc::new(file)), None, len)
            }
            IoMode::Direct => {
                probe_iopoll_once(path).await?;
                let file =
                    open_retrying(path, || async { options(true).dma_open(path).await }).await?;
                let len = file.file_size().await.map_err(to_io)?;
                // Whole file-system blocks, not just device sectors: ext4 treats a write
                // that is not block-aligned as unaligned I/O, which cannot go to
                // allocated-ahead space without blocking (it would go to a kernel worker).
                let fs_block = std::fs::metadata(path).map(|meta| meta.blksize()).unwrap_or(0);
                let fs_block = if fs_block.is_power_of_two() && fs_block <= 64 << 10 {
                    fs_block
                } else {
                    4096
                };
                let alignment = file.alignment().max(512).max(fs_block);
                let direct =
                    DirectFile { alignment, state: Rc::new(RefCell::new(DirectState::default())) };
                let file = Rc::new(file);
                direct.load_tail(&file, len).await?;
                (Handle::Direct(file), Some(direct), len)
            }
        };
        let fds = Rc::new(Descriptors {
            handle: RefCell::new(Some(handle)),
            shared: RefCell::new(None),
            entry: Cell::new(None),
            pinned: Cell::new(false),
            writes: direct.as_ref().map(|direct| direct.state.clone()),
        });
        fds.account(1);
        let id = NEXT_FILE_ID.with(|next| {
            let id = next.get();
            next.set(id + 1);
            id
        });
        Ok(SegmentFile {
            path: path.to_path_buf(),
            id,
            fds,
            direct,
            len: Cell::new(len),
            unsynced: Cell::new(len > 0),
            faults,
            writeback_every: Cell::new(0),
            writeback_from: Cell::new(len),
            buffered_write: Cell::new(BufferedWrite::default()),
            cache_window: Cell::new(0),
            dropped_to: Cell::new(0),
            predecessors: RefCell::new(VecDeque::new()),
        })
    }

    /// The file's descriptor, reopened if the descriptor cache closed it. The caller
    /// holds the clone for as long as it uses the descriptor.
    async fn handle(&self) -> io::Result<Handle> {
        let open = self.fds.handle.borrow().clone();
        if let Some(handle) = open {
            fdcache::touch(&self.fds.entry);
            return Ok(handle);
        }
        // Never created again: a file that is gone (deleted by retention) stays gone.
        let path = &self.path;
        let handle = match self.direct {
            None => Handle::Buffered(Rc::new(
                open_retrying(path, || async { options(false).buffered_open(path).await }).await?,
            )),
            Some(_) => Handle::Direct(Rc::new(
                open_retrying(path, || async { options(false).dma_open(path).await }).await?,
            )),
        };
        // Another task may have reopened it meanwhile: use that one (this one closes).
        let opened = {
            let mut slot = self.fds.handle.borrow_mut();
            match &*slot {
                Some(existing) => return Ok(existing.clone()),
                None => {
                    *slot = Some(handle.clone());
                    1
                }
            }
        };
        self.fds.account(opened);
        Ok(handle)
    }

    async fn buffered(&self) -> io::Result<Rc<BufferedFile>> {
        match self.handle().await? {
            Handle::Buffered(file) => Ok(file),
            Handle::Direct(_) => Err(io::Error::other("a direct-mode file used as buffered")),
        }
    }

    async fn dma(&self) -> io::Result<Rc<DmaFile>> {
        match self.handle().await? {
            Handle::Direct(file) => Ok(file),
            Handle::Buffered(_) => Err(io::Error::other("a buffered file used as direct-mode")),
        }
    }

    /// Whether the file holds a descriptor now (the descriptor cache may have closed it).
    pub fn is_open(&self) -> bool {
        self.fds.handle.borrow().is_some()
    }

    /// The file will be unlinked while others still hold it (a read in flight): from
    /// now on its descriptor stays open (reopened first if the cache had closed it), as
    /// the name that could reopen it is about to go. It closes when the last holder
    /// drops the file.
    pub async fn keep_open(&self) -> io::Result<()> {
        self.handle().await?;
        self.fds.pinned.set(true);
        Ok(())
    }

    /// Buffered mode: from now on, start the device write of every `bytes` appended
    /// without waiting for it (`sync_file_range` on a helper thread, see
    /// [`crate::writeback`]); 0 leaves writeback to the kernel. No effect in direct mode,
    /// whose appends are device writes already.
    pub fn set_writeback_bytes(&self, bytes: u64) {
        if self.direct.is_none() {
            self.writeback_every.set(bytes);
            self.writeback_from.set(self.len.get());
        }
    }

    /// Buffered mode: how appends are written from now on. No effect in direct mode.
    pub fn set_buffered_write(&self, how: BufferedWrite) {
        self.buffered_write.set(how);
    }

    /// Buffered mode: from now on, drop the pages more than `bytes` behind the logical
    /// end from the page cache, once they are written back (done by the helper of
    /// [`crate::writeback`], checked every `log.writeback.bytes` appended, or every
    /// [`CACHE_WINDOW_STEP`] when that is 0); 0 leaves the page cache to the kernel. No
    /// effect in direct mode.
    pub fn set_cache_window(&self, bytes: u64) {
        if self.direct.is_none() {
            self.cache_window.set(bytes);
        }
    }

    /// Buffered mode, with a cache window: this file is the log's new active segment and
    /// `previous` the one it replaces. The window covers the last bytes of the log, not of
    /// one segment: the pages of `previous` (and of the segments before it) still inside
    /// it are dropped as this file's appends push them out, all of them once this file
    /// holds a window of bytes. Without this, every roll would leave up to a window of
    /// pages cached for good, and with segments no longer than the window nothing would
    /// ever be dropped.
    pub fn follow(&self, previous: &SegmentFile) {
        if self.cache_window.get() == 0 {
            return;
        }
        let mut tails = std::mem::take(&mut *previous.predecessors.borrow_mut());
        let (dropped_to, end) = (previous.dropped_to.get(), previous.len.get());
        if end > dropped_to {
            match previous.shared_fd() {
                Ok(Some(fd)) => {
                    previous.dropped_to.set(end);
                    tails.push_back(CachedTail { file_id: previous.id, fd, dropped_to, end });
                }
                Ok(None) => {}
                Err(error) => {
                    debug!(path = %previous.path.display(), %error, "no descriptor for drop-behind")
                }
            }
        }
        while tails.len() > PREDECESSORS_MAX {
            let oldest = tails.pop_front().expect("more than the maximum");
            let range = (oldest.dropped_to, oldest.end - oldest.dropped_to);
            crate::writeback::request(oldest.fd, None, Some(range));
        }
        *self.predecessors.borrow_mut() = tails;
    }

    /// The reverse of [`follow`](Self::follow), for a truncation that deletes `successor`
    /// (the active segment) and makes this file the active one again: the predecessors
    /// `successor` kept come back, and this file's own pages that were handed over and
    /// not yet dropped count as not dropped again. The caller then
    /// [`forget`](Self::forget)s every other deleted segment.
    pub fn take_back(&self, successor: &SegmentFile) {
        let mut tails = std::mem::take(&mut *successor.predecessors.borrow_mut());
        if let Some(at) = tails.iter().position(|tail| tail.file_id == self.id) {
            let tail = tails.remove(at).expect("found");
            self.dropped_to.set(self.dropped_to.get().min(tail.dropped_to));
        }
        let mut mine = self.predecessors.borrow_mut();
        tails.extend(mine.drain(..));
        *mine = tails;
    }

    /// Stops tracking `file`'s cached pages, which go with it: `file` is being deleted
    /// (retention, truncation), and holding its descriptor would keep its disk space.
    pub fn forget(&self, file: &SegmentFile) {
        self.predecessors.borrow_mut().retain(|tail| tail.file_id != file.id);
    }

    /// The predecessors' pages not yet handed to the helper to drop, as (from, end),
    /// oldest first.
    #[cfg(test)]
    pub(crate) fn cached_predecessors(&self) -> Vec<(u64, u64)> {
        self.predecessors.borrow().iter().map(|tail| (tail.dropped_to, tail.end)).collect()
    }

    /// Hands the bytes appended since the last writeback to the helper once there are
    /// `writeback_every` of them, with the pages that fell out of the cache window (this
    /// file's, and its predecessors': see [`SegmentFile::follow`]).
    fn maybe_start_writeback(&self, end: u64) {
        let every = self.writeback_every.get();
        let window = self.cache_window.get();
        let step = if every > 0 { every } else { CACHE_WINDOW_STEP };
        let from = self.writeback_from.get();
        if (every == 0 && window == 0) || end < from.saturating_add(step) {
            return;
        }
        self.writeback_from.set(end);
        let write = (every > 0).then(|| (from, end - from));
        // Whole pages only: the page holding the window's first byte stays.
        let drop_end = end.saturating_sub(window) & !(PAGE_BYTES - 1);
        let dropped_to = self.dropped_to.get();
        let drop =
            (window > 0 && drop_end > dropped_to).then(|| (dropped_to, drop_end - dropped_to));
        if drop.is_some() {
            self.dropped_to.set(drop_end);
        }
        // Without writeback, a check inside the window's first bytes has nothing to hand
        // over for this file.
        if write.is_some() || drop.is_some() {
            match self.shared_fd() {
                Ok(Some(fd)) => crate::writeback::request(fd, write, drop),
                Ok(None) => {}
                Err(error) => {
                    debug!(path = %self.path.display(), %error, "no descriptor for writeback")
                }
            }
        }
        let mut predecessors = self.predecessors.borrow_mut();
        // The last `window - end` bytes of the segments before this one are still inside
        // the window: newest first, each keeps what is left of that.
        let mut keep = window.saturating_sub(end);
        for tail in predecessors.iter_mut().rev() {
            let kept = keep.min(tail.end);
            keep -= kept;
            let drop_end = match kept {
                0 => tail.end,
                kept => (tail.end - kept) & !(PAGE_BYTES - 1),
            };
            if drop_end > tail.dropped_to {
                let range = (tail.dropped_to, drop_end - tail.dropped_to);
                crate::writeback::request(tail.fd.clone(), None, Some(range));
                tail.dropped_to = drop_end;
            }
        }
        predecessors.retain(|tail| tail.dropped_to < tail.end);
    }

    /// In buffered mode, a descriptor of this file that may be sent to other threads and
    /// outlives the segment (for `sendfile` from the page cache); `None` in direct mode,
    /// whose reads bypass the page cache and must go through [`SegmentFile::read_at`].
    /// Made on first use (a duplicate of the open descriptor, or, when the descriptor
    /// cache closed the file, a read-only open of it) and kept until the cache closes the
    /// file; a holder of the `Arc` keeps the descriptor open until it drops it.
    pub fn shared_fd(&self) -> io::Result<Option<Arc<OwnedFd>>> {
        if self.direct.is_some() {
            return Ok(None);
        }
        let kept = self.fds.shared.borrow().clone();
        if let Some(fd) = kept {
            fdcache::touch(&self.fds.entry);
            return Ok(Some(fd));
        }
        let fd = match self.dup_or_open() {
            Err(error) if error.raw_os_error() == Some(nix::libc::EMFILE) => {
                fdcache::shed(SHED_FILES);
                self.dup_or_open()?
            }
            other => other?,
        };
        let fd = Arc::new(fd);
        *self.fds.shared.borrow_mut() = Some(fd.clone());
        self.fds.account(1);
        Ok(Some(fd))
    }

    /// A new descriptor of this file: a duplicate of the open one, or a read-only open of
    /// the path (a plain syscall, as short as the `ftruncate` and `unlink` above).
    fn dup_or_open(&self) -> io::Result<OwnedFd> {
        let raw = match &*self.fds.handle.borrow() {
            Some(Handle::Buffered(file)) => Some(file.as_raw_fd()),
            _ => None,
        };
        match raw {
            Some(raw) => {
                use nix::fcntl::{fcntl, FcntlArg};
                Ok(fcntl(raw, FcntlArg::F_DUPFD_CLOEXEC(0)).map(owned)?)
            }
            None => Ok(std::fs::File::open(&self.path)?.into()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logical length in bytes.
    pub fn len(&self) -> u64 {
        self.len.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    pub fn mode(&self) -> IoMode {
        match self.direct {
            Some(_) => IoMode::Direct,
            None => IoMode::Buffered,
        }
    }

    /// Appends `bytes` at the logical end and returns the position they start at. On error
    /// the logical length is unchanged, but a prefix of `bytes` may be on disk: the caller
    /// must truncate back to the returned-before length (or recovery will).
    ///
    /// Direct mode returns once the write is queued, not landed (see the module docs):
    /// the bytes are readable at once; [`SegmentFile::wait_landed`] waits for the device;
    /// `sync` makes them durable; a failure of the write is reported by the next
    /// operation on the file, and from then on by every one.
    pub async fn append(&self, bytes: &[u8]) -> io::Result<u64> {
        let position = self.len.get();
        let mut data = bytes;
        let mut torn = false;
        let mut fail_write = false;
        if let Some(faults) = &self.faults {
            if let Some(after) = faults.take_tear() {
                data = &bytes[..after.min(bytes.len())];
                torn = true;
            }
            fail_write = faults.take_write();
        }
        self.unsynced.set(true);
        match &self.direct {
            None => {
                if fail_write {
                    return Err(injected("write"));
                }
                let file = self.buffered().await?;
                match self.buffered_write.get() {
                    BufferedWrite::Inline => write_all_inline(borrowed(&*file), data, position)?,
                    BufferedWrite::Uring => write_all_buffered(&file, data, position).await?,
                }
            }
            // A torn append stands for a crash in the middle of the write: what it wrote
            // must be on disk when it returns.
            Some(direct) => {
                let file = self.dma().await?;
                direct.append(&file, data, position, fail_write, torn).await?
            }
        }
        if torn {
            return Err(injected("torn append"));
        }
        let len_new = position + u64::try_from(bytes.len()).expect("usize fits u64");
        self.len.set(len_new);
        self.maybe_start_writeback(len_new);
        Ok(position)
    }

    /// Reads up to `len` bytes at `position`, clipped to the logical length.
    pub async fn read_at(&self, position: u64, len: usize) -> io::Result<FileBytes> {
        if let Some(faults) = &self.faults {
            if faults.take_read() {
                return Err(injected("read"));
            }
        }
        let available = self.len.get().saturating_sub(position);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(FileBytes::Owned(Vec::new()));
        }
        let result = match &self.direct {
            None => {
                let file = self.buffered().await?;
                FileBytes::Uring(file.read_at(position, len).await.map_err(to_io)?)
            }
            Some(direct) => {
                direct.check_failed()?;
                let file = self.dma().await?;
                direct.read_at(&file, position, len).await?
            }
        };
        if result.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "short read of {} at {position}: {} of {len} bytes",
                    self.path.display(),
                    result.len()
                ),
            ));
        }
        Ok(result)
    }

    /// fdatasync: everything appended so far is durable when this returns (direct mode
    /// waits for the write in flight first, and fails if any write failed). A file with
    /// nothing appended or cut since its last sync is not synced again (nor reopened).
    /// Safe across a close by the descriptor cache: since Linux 4.16 a writeback error
    /// nobody has seen yet is reported to the next fsync on the file, even through a
    /// descriptor opened after the error.
    pub async fn sync(&self) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            if faults.take_sync() {
                return Err(injected("fsync"));
            }
        }
        if let Some(direct) = &self.direct {
            direct.settle().await?;
        }
        if !self.unsynced.get() {
            return Ok(());
        }
        // Appends after this point are not covered by this sync.
        self.unsynced.set(false);
        let synced = match self.handle().await {
            Ok(Handle::Buffered(file)) => file.fdatasync().await.map_err(to_io),
            Ok(Handle::Direct(file)) => file.fdatasync().await.map_err(to_io),
            Err(error) => Err(error),
        };
        if synced.is_err() {
            self.unsynced.set(true);
        }
        synced
    }

    /// Waits until no write of this file is in flight (direct mode; at once in buffered
    /// mode) and fails if any write failed. No fsync.
    pub async fn writes_landed(&self) -> io::Result<()> {
        match &self.direct {
            None => Ok(()),
            Some(direct) => direct.settle().await,
        }
    }

    /// Waits until the bytes before logical position `end` are on the device (direct
    /// mode; at once in buffered mode, whose writes are in the page cache when `append`
    /// returns). Fails if any write failed. What the log waits for before it acknowledges
    /// an append: a process killed after the acknowledgement loses nothing.
    pub async fn wait_landed(&self, end: u64) -> io::Result<()> {
        match &self.direct {
            None => Ok(()),
            Some(direct) => direct.wait_landed(end).await,
        }
    }

    /// True once a direct-mode write failed: bytes an append returned for are lost, and
    /// every later operation on the file fails.
    pub fn write_failed(&self) -> bool {
        match &self.direct {
            None => false,
            Some(direct) => direct.state.borrow().failed.is_some(),
        }
    }

    /// Cuts the file to `len` bytes (recovery, replication truncation, failed appends).
    /// Fails, cutting nothing, when a direct-mode write failed: the bytes before `len`
    /// may be missing, so the file cannot be trusted until recovery has checked it.
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        match &self.direct {
            None => {
                let file = self.buffered().await?;
                set_len(file.as_raw_fd(), len)?;
            }
            Some(direct) => {
                direct.settle().await?;
                let file = self.dma().await?;
                set_len(file.as_raw_fd(), len)?;
                direct.load_tail(&file, len).await?;
            }
        }
        self.unsynced.set(true);
        self.len.set(len);
        // Writeback and drop-behind go on from the new end.
        self.writeback_from.set(self.writeback_from.get().min(len));
        self.dropped_to.set(self.dropped_to.get().min(len));
        Ok(())
    }

    /// Makes the on-disk file exactly the logical bytes (trims direct-mode padding, once
    /// the write in flight has landed) and syncs it. Called when a segment stops being
    /// active and on clean close. A file already sealed is left alone (not reopened).
    pub async fn seal(&self) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            direct.settle().await?;
            if direct.state.borrow().allocated != self.len.get() {
                let file = self.dma().await?;
                set_len(file.as_raw_fd(), self.len.get())?;
                direct.state.borrow_mut().set_size_on_disk(self.len.get());
                self.unsynced.set(true);
            }
        }
        self.sync().await
    }

    /// Deletes the file from its directory. Reads in flight on other `Rc`s keep working
    /// until they drop the file (the inode lives while it is open).
    pub async fn remove(&self) -> io::Result<()> {
        remove_file(&self.path)
    }
}

/// A segment's offset or time index file (`.index`, `.timeindex`). Its entries live in
/// memory (the log's `OffsetIndex` and `TimeIndex`); the file is opened only while it is
/// written (flush, seal, truncation) or read (a trusted segment at open), and closed at
/// once, so an index holds no descriptor in between. Written with a `pwrite` on the
/// shard's thread (a few entries per flush, into the page cache) and synced before
/// [`IndexFile::write_at`] returns.
#[derive(Debug)]
pub struct IndexFile {
    path: PathBuf,
    /// Bytes on disk.
    len: Cell<u64>,
    /// Cut since it was last synced.
    unsynced: Cell<bool>,
}

impl IndexFile {
    /// The index file at `path`, created empty if missing (Kafka keeps both index files
    /// beside every segment).
    pub async fn open(path: &Path) -> io::Result<IndexFile> {
        let len = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Self::open_file(path).await?.close().await.map_err(to_io)?;
                0
            }
            Err(error) => return Err(error),
        };
        Ok(IndexFile { path: path.to_path_buf(), len: Cell::new(len), unsynced: Cell::new(false) })
    }

    async fn open_file(path: &Path) -> io::Result<BufferedFile> {
        open_retrying(path, || async { options(true).buffered_open(path).await }).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk.
    pub fn len(&self) -> u64 {
        self.len.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// Cuts the file to `len` bytes, without a sync (the next [`IndexFile::write_at`]
    /// syncs the cut with what it writes).
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        if self.len.get() == len {
            return Ok(());
        }
        let file = Self::open_file(&self.path).await?;
        set_len(file.as_raw_fd(), len)?;
        file.close().await.map_err(to_io)?;
        self.len.set(len);
        self.unsynced.set(true);
        Ok(())
    }

    /// Makes the file `bytes` at `at` (its first `at` bytes are kept, anything after
    /// them cut) and syncs it. Nothing to do (no open) when it already ends at `at`,
    /// synced, and `bytes` is empty.
    pub async fn write_at(&self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if self.len.get() == at && bytes.is_empty() && !self.unsynced.get() {
            return Ok(());
        }
        let file = Self::open_file(&self.path).await?;
        if self.len.get() != at {
            set_len(file.as_raw_fd(), at)?;
            self.len.set(at);
            self.unsynced.set(true);
        }
        if !bytes.is_empty() {
            write_all_inline(borrowed(&file), bytes, at)?;
            self.len.set(at + u64::try_from(bytes.len()).expect("usize fits u64"));
        }
        file.fdatasync().await.map_err(to_io)?;
        self.unsynced.set(false);
        file.close().await.map_err(to_io)
    }

    /// The whole file.
    pub async fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len.get()).expect("index < 2 GiB");
        if len == 0 {
            return Ok(Vec::new());
        }
        let file = open_retrying(&self.path, || async {
            OpenOptions::new().read(true).buffered_open(&self.path).await
        })
        .await?;
        let bytes = file.read_at(0, len).await.map_err(to_io)?.to_vec();
        file.close().await.map_err(to_io)?;
        if bytes.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of {}: {} of {len} bytes", self.path.display(), bytes.len()),
            ));
        }
        Ok(bytes)
    }
}

thread_local! {
    /// Directories whose device glommio has probed for iopoll on this thread.
    static PROBED_DIRS: RefCell<std::collections::HashSet<PathBuf>> =
        RefCell::new(std::collections::HashSet::new());
}

/// Works around a glommio 0.9 bug: the first DMA file opened on a device (per thread)
/// decides whether the device supports io_uring polled I/O by reading its first block,
/// and an empty file answers that read with 0 bytes and no error, so the device is taken
/// as pollable and every later O_DIRECT read fails with EOPNOTSUPP. Opening a file that
/// has a whole block first makes the probe see the device's real answer.
async fn probe_iopoll_once(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if PROBED_DIRS.with(|dirs| dirs.borrow().contains(&dir)) {
        return Ok(());
    }
    let probe_path = dir.join(format!(".sluice-iopoll-probe-{}", std::process::id()));
    let probe = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&probe_path)
        .await
        .map_err(to_io)?;
    write_all_buffered(&probe, &[0u8; 4096], 0).await?;
    probe.close().await.map_err(to_io)?;
    let opened = OpenOptions::new().read(true).dma_open(&probe_path).await;
    let removed = remove_file(&probe_path);
    opened.map_err(to_io)?.close().await.map_err(to_io)?;
    removed?;
    PROBED_DIRS.with(|dirs| dirs.borrow_mut().insert(dir));
    Ok(())
}

/// `pwrite` until `data` is written: the copy into the page cache, on this thread.
fn write_all_inline(fd: std::os::fd::BorrowedFd<'_>, data: &[u8], position: u64) -> io::Result<()> {
    let mut written = 0usize;
    while written < data.len() {
        let at = position + u64::try_from(written).expect("usize fits u64");
        let at = libc::off_t::try_from(at)
            .map_err(|_| io::Error::other(format!("file offset {at} out of range")))?;
        match nix::sys::uio::pwrite(fd, &data[written..], at) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote 0 bytes")),
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

async fn write_all_buffered(file: &BufferedFile, data: &[u8], position: u64) -> io::Result<()> {
    let mut written = 0usize;
    while written < data.len() {
        let at = position + u64::try_from(written).expect("usize fits u64");
        let n = file.write_at(data[written..].to_vec(), at).await.map_err(to_io)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "buffered write wrote 0 bytes"));
        }
        written += n;
    }
    Ok(())
}

impl DirectFile {
    fn align_down(&self, value: u64) -> u64 {
        value - value % self.alignment
    }

    fn align_up(&self, value: u64) -> u64 {
        value.div_ceil(self.alignment) * self.alignment
    }

    /// Reloads the partial last block of a file of logical length `len` into memory.
    async fn load_tail(&self, file: &DmaFile, len: u64) -> io::Result<()> {
        let start = self.align_down(len);
        let tail_len = usize::try_from(len - start).expect("tail < alignment");
        let mut tail = Vec::with_capacity(tail_len);
        if tail_len > 0 {
            let block = file
                .read_at_aligned(start, usize::try_from(self.alignment).expect("small"))
                .await
                .map_err(to_io)?;
            if block.len() < tail_len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short tail read"));
            }
            tail.extend_from_slice(&block[..tail_len]);
        }
        let mut state = self.state.borrow_mut();
        state.tail = tail;
        state.landed = len;
        state.set_size_on_disk(len);
        Ok(())
    }

    /// Fails if a write of this file has failed.
    fn check_failed(&self) -> io::Result<()> {
        match &self.state.borrow().failed {
            Some(reason) => Err(io::Error::other(format!(
                "an earlier write to this file failed, bytes already appended are lost: {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Waits for every write in flight to land; then fails if any write failed.
    async fn settle(&self) -> io::Result<()> {
        wait_for(&self.state, |state| state.in_flight.is_empty()).await;
        self.check_failed()
    }

    /// Writes `tail + data`, zero-padded to whole blocks, at `align_down(position)`, in
    /// the background, and returns once the write is queued (with `wait`, once it has
    /// landed). `fail` makes the write fail without writing (an injected fault).
    ///
    /// Up to [`MAX_WRITES_IN_FLIGHT`] writes are in flight at once, and no two of them
    /// write one block: two writes of one block in flight may land in either order.
    /// Consecutive appends share a block when the file ends mid-block, so:
    /// - While earlier writes are in flight, an append holds back its partial last
    ///   block (`Held`). The next append takes it over and writes it, with its own
    ///   bytes, in its own write, submitted at once: a stream of appends becomes a
    ///   stream of writes of distinct blocks, none waiting for another. If no append
    ///   comes first, the held block is submitted once every write before it landed.
    /// - An append whose first block is still being written (it was not held back)
    ///   writes that block in a piece that waits until every earlier write has landed
    ///   (`Waits`); its other blocks go at once.
    /// - A block the file already holds (the partial block of a write that landed) is
    ///   written in a piece of its own: ext4 would hand a write that covers both
    ///   written blocks and blocks only allocated ahead to a kernel worker thread.
    ///
    /// When all of them are in flight, the append does not wait for one to land: it
    /// opens a write that gathers (group commit). Its body is a buffer with room for
    /// [`GATHER_BYTES`]; the appends that come while it is open are copied into it, one
    /// after another, and it goes to the device as one write once a write lands. So a
    /// stream of small appends (a producer with many small requests in flight) costs the
    /// device a few large writes, not one write each: on a virtual disk every write
    /// also costs the shard a notification of the device (a VM exit).
    ///
    /// The copy into the DMA buffers runs while earlier writes are in flight. An append
    /// has landed once its bytes and every byte before them are on the device.
    async fn append(
        &self,
        file: &Rc<DmaFile>,
        data: &[u8],
        position: u64,
        fail: bool,
        wait: bool,
    ) -> io::Result<()> {
        let end = position + data.len() as u64;
        let padded_end = self.align_up(end);
        // Injected faults and torn appends take a write of their own.
        let gather = !fail && !wait;
        // An open write's body starts at the latest one block past the append's start
        // (see `place`): an append within one block has no body to gather into.
        let can_open = gather && end > self.align_down(position) + self.alignment;
        self.check_failed()?;
        self.allocate_for(file, padded_end).await;
        loop {
            self.check_failed()?;
            let step = self.state.borrow().step(padded_end, gather, can_open);
            match step {
                Step::Join => {
                    self.join(data, position);
                    break;
                }
                Step::Place => {
                    let (id, jobs) = self.place(file, data, position, fail, false);
                    spawn_pieces(file, &self.state, id, jobs, fail);
                    break;
                }
                Step::Open => {
                    let (id, jobs) = self.place(file, data, position, false, true);
                    spawn_pieces(file, &self.state, id, jobs, false);
                    spawn_open(file, &self.state, id, self.alignment);
                    break;
                }
                Step::Wait => {
                    wait_for(&self.state, |state| {
                        state.step(padded_end, gather, can_open) != Step::Wait
                    })
                    .await;
                }
            }
        }
        if wait {
            return self.settle().await;
        }
        Ok(())
    }

    /// Copies an append into the open write's buffer (its room checked by
    /// [`DirectState::step`]) and moves the write's end.
    fn join(&self, data: &[u8], position: u64) {
        let end = position + data.len() as u64;
        let (last_block, padded_end) = (self.align_down(end), self.align_up(end));
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let open = state.open.as_mut().expect("an open write to join");
        let write = state.in_flight.back_mut().expect("the open write is in flight");
        assert_eq!(write.id, open.id);
        debug_assert_eq!(write.end, position);
        debug_assert_eq!(self.align_down(position) + state.tail.len() as u64, position);
        let to = |offset: u64| usize::try_from(offset - open.at).expect("within the buffer");
        let bytes = open.buffer.as_bytes_mut();
        bytes[to(position)..to(end)].copy_from_slice(data);
        bytes[to(end)..to(padded_end)].fill(0);
        state.tail = bytes[to(last_block)..to(end)].to_vec();
        write.end = end;
    }

    /// The part of [`DirectFile::append`] that runs without waiting: cuts the append
    /// into pieces and puts its write in `in_flight`. Returns the write's id and, per
    /// piece, what its task needs. With `gathering`, the write is the open write: its
    /// body goes to a buffer with room for more appends (`state.open`) instead of a
    /// piece, and its partial last block stays in that body (the next append joins it).
    fn place(
        &self,
        file: &DmaFile,
        data: &[u8],
        position: u64,
        fail: bool,
        gathering: bool,
    ) -> (u64, Vec<PieceJob>) {
        let start = self.align_down(position);
        let end = position + data.len() as u64;
        let write_end = self.align_up(end);
        let mut state = self.state.borrow_mut();
        let tail = std::mem::take(&mut state.tail);
        debug_assert_eq!(start + tail.len() as u64, position);
        let total = tail.len() + data.len();
        // The new partial block: the bytes past the last whole block.
        let last_block = usize::try_from(self.align_down(end) - start).expect("within write");
        let mut new_tail = vec![0; total - last_block];
        fill(&mut new_tail, &tail, data, last_block);
        state.tail = new_tail;

        let alignment = usize::try_from(self.alignment).expect("small");
        let padded = usize::try_from(write_end - start).expect("write < 2 GiB");
        let took_held = state.take_held();
        let busy = state.busy();
        // The first block: held back by the last append (now ours, never written), being
        // written by an earlier write (wait for it), on disk (a piece of its own), or new.
        let head_waits = !tail.is_empty() && !took_held && busy;
        let head_written = !tail.is_empty() && !took_held && !busy;
        // (An injected failure goes to a piece that is written for sure.)
        let hold = busy
            && !fail
            && !gathering
            && end % self.alignment != 0
            && !(head_waits && last_block == 0);
        let mut cuts: Vec<(usize, usize, PieceState)> = Vec::with_capacity(3);
        let body_end = if hold { last_block } else { padded };
        let mut at = 0;
        if (head_waits || head_written) && body_end > 0 {
            let state = if head_waits { PieceState::Waits } else { PieceState::Submitted };
            cuts.push((0, alignment, state));
            at = alignment;
        }
        let id = state.next_id;
        state.next_id += 1;
        let mut gathers = false;
        if body_end > at {
            if gathering {
                let mut buffer = file.alloc_dma_buffer(GATHER_BYTES.max(body_end - at));
                fill(&mut buffer.as_bytes_mut()[..body_end - at], &tail, data, at);
                state.open = Some(OpenWrite { id, at: start + at as u64, buffer });
                gathers = true;
            } else {
                cuts.push((at, body_end, PieceState::Submitted));
            }
        }
        assert_eq!(gathers, gathering, "an open write has a body");
        if hold {
            cuts.push((last_block, padded, PieceState::Held));
        }
        let pieces: Vec<Piece> = cuts
            .iter()
            .map(|&(from, until, state)| {
                let mut buffer = file.alloc_dma_buffer(until - from);
                fill(buffer.as_bytes_mut(), &tail, data, from);
                Piece { at: start + from as u64, buffer: Rc::new(buffer), state }
            })
            .collect();
        let jobs = jobs_of(&pieces, 0);
        // The open body counts as one pending piece until it is cut into pieces.
        let pending = pieces.len() + usize::from(gathers);
        state.in_flight.push_back(InFlight { id, end, pending, pieces });
        // A write left with nothing pending by the take-over retires now.
        let waiters = if took_held { state.retire() } else { Vec::new() };
        drop(state);
        for waker in waiters {
            waker.wake();
        }
        (id, jobs)
    }

    /// Makes the file's size on disk at least `end`, allocating ahead (unwritten extents,
    /// which read as zeros). A write past the size on disk extends the file, and ext4
    /// cannot do that without blocking: io_uring would hand every such write to a
    /// kernel worker thread (on the shard's CPU), which runs the writes of one file one
    /// at a time and waits for each. Writes within the size are submitted from the
    /// shard and several run at once. The space past the logical end is given back by
    /// `seal` (and by recovery after a crash, which reads it as zero padding).
    ///
    /// Best effort: where the file system refuses (no `fallocate`, or no room for the
    /// space ahead), the write extends the file as it would without this, and fails
    /// only if the write itself does.
    async fn allocate_for(&self, file: &DmaFile, end: u64) {
        let (allocated, resized, cannot) = {
            let state = self.state.borrow();
            (state.allocated, state.resized, state.cannot_allocate)
        };
        if end <= allocated || cannot {
            return;
        }
        let ahead = end + end.clamp(ALLOCATE_AHEAD_MIN, ALLOCATE_AHEAD_MAX);
        let ahead = ahead - ahead % self.alignment;
        let mut allocated_to = None;
        for target in [ahead, end] {
            match file.pre_allocate(target, false).await.map_err(to_io) {
                Ok(()) => {
                    allocated_to = Some(target);
                    break;
                }
                Err(error) if error.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                    debug!(%error, "no fallocate here: direct writes extend the file");
                    self.state.borrow_mut().cannot_allocate = true;
                    return;
                }
                Err(_) => {} // No room for the space ahead: try for this write alone.
            }
        }
        let mut state = self.state.borrow_mut();
        if let Some(target) = allocated_to.filter(|_| state.resized == resized) {
            state.allocated = state.allocated.max(target);
        }
    }

    /// Waits until the logical bytes before `end` are on the device: the writes up to
    /// `end` have left `in_flight` landed, or none is in flight. Fails if any write
    /// failed.
    async fn wait_landed(&self, end: u64) -> io::Result<()> {
        wait_for(&self.state, |state| state.in_flight.is_empty() || state.landed >= end).await;
        self.check_failed()
    }

    /// A copy of the open write's body, with its file offset, if it reaches past
    /// `position`.
    fn open_copy(&self, file: &DmaFile, position: u64) -> Option<(u64, Rc<DmaBuffer>)> {
        let state = self.state.borrow();
        let open = state.open.as_ref()?;
        let end = state.in_flight.back().expect("the open write is in flight").end;
        let len = usize::try_from(self.align_up(end) - open.at).expect("within the buffer");
        if open.at + len as u64 <= position {
            return None;
        }
        let mut copy = file.alloc_dma_buffer(len);
        copy.as_bytes_mut().copy_from_slice(&open.buffer.as_bytes()[..len]);
        Some((open.at, Rc::new(copy)))
    }

    /// Reads `len` bytes at `position` (within the logical length): from disk up to the
    /// first piece not yet landed, from the pieces' buffers after.
    async fn read_at(&self, file: &DmaFile, position: u64, len: usize) -> io::Result<FileBytes> {
        self.check_failed()?;
        let end = position + len as u64;
        let mut pieces: Vec<(u64, Rc<DmaBuffer>)> = self
            .state
            .borrow()
            .in_flight
            .iter()
            .flat_map(|write| &write.pieces)
            .filter(|piece| piece.at + piece.buffer.len() as u64 > position)
            .map(|piece| (piece.at, piece.buffer.clone()))
            .collect();
        // The open write's body comes last in file order; its buffer keeps growing, so
        // the read takes a copy of what it holds now.
        if let Some(copy) = self.open_copy(file, position) {
            pieces.push(copy);
        }
        let Some(from) = pieces.first().map(|(at, _)| (*at).max(position)).filter(|at| end > *at)
        else {
            return Ok(FileBytes::Uring(file.read_at(position, len).await.map_err(to_io)?));
        };
        let mut bytes = Vec::with_capacity(len);
        if position < from {
            let on_disk = usize::try_from(from - position).expect("read < 2 GiB");
            let read = file.read_at(position, on_disk).await.map_err(to_io)?;
            if read.len() < on_disk {
                return Ok(FileBytes::Owned(read.to_vec()));
            }
            bytes.extend_from_slice(&read);
        }
        copy_from_pieces(&pieces, from, end, &mut bytes);
        Ok(FileBytes::Owned(bytes))
    }
}

/// Resolves once `ready` holds for `state`, re-checked whenever a write finishes.
async fn wait_for(state: &RefCell<DirectState>, ready: impl Fn(&DirectState) -> bool) {
    std::future::poll_fn(|context| {
        let mut state = state.borrow_mut();
        if ready(&state) {
            return Poll::Ready(());
        }
        state.waiters.push(context.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Fills `out` with the bytes of `tail + data + zero padding` starting at `offset`.
fn fill(out: &mut [u8], tail: &[u8], data: &[u8], offset: usize) {
    let mut written = 0;
    let mut skip = offset;
    for source in [tail, data] {
        if skip >= source.len() {
            skip -= source.len();
            continue;
        }
        let n = (source.len() - skip).min(out.len() - written);
        out[written..written + n].copy_from_slice(&source[skip..skip + n]);
        written += n;
        skip = 0;
    }
    out[written..].fill(0);
}

/// Appends the logical bytes `[position, end)` to `bytes` from `pieces` (in file
/// order, covering the range from the first piece's start; where two share a block,
/// the later one holds the newer bytes).
fn copy_from_pieces(pieces: &[(u64, Rc<DmaBuffer>)], position: u64, end: u64, bytes: &mut Vec<u8>) {
    let base = bytes.len();
    let len = usize::try_from(end - position).expect("read < 2 GiB");
    bytes.resize(base + len, 0);
    let mut covered = position;
    for (at, buffer) in pieces {
        let (a, b) = (position.max(*at), end.min(at + buffer.len() as u64));
        if a < b {
            debug_assert!(a <= covered, "the pieces leave no gap");
            let from = usize::try_from(a - at).expect("within buffer");
            let until = usize::try_from(b - at).expect("within buffer");
            let to = base + usize::try_from(a - position).expect("within read");
            bytes[to..to + (until - from)].copy_from_slice(&buffer.as_bytes()[from..until]);
            covered = covered.max(b);
        }
    }
    debug_assert_eq!(covered, end, "the pieces cover the read");
}

/// Waits until held piece `index` of write `id` is to be submitted (every other piece
/// of the write and every earlier write have landed: true, and the piece is marked
/// submitted) or has been taken over by the next append (false).
async fn wait_to_flush(state: &RefCell<DirectState>, id: u64, index: usize) -> bool {
    std::future::poll_fn(|context| {
        let mut state = state.borrow_mut();
        let front = state.in_flight.front().is_some_and(|write| write.id == id);
        let Some(write) = state.in_flight.iter_mut().find(|write| write.id == id) else {
            return Poll::Ready(false);
        };
        let Some(piece) = write.pieces.get_mut(index).filter(|p| p.state == PieceState::Held)
        else {
            return Poll::Ready(false);
        };
        if front && write.pending == 1 {
            piece.state = PieceState::Submitted;
            return Poll::Ready(true);
        }
        state.waiters.push(context.waker().clone());
        Poll::Pending
    })
    .await
}

/// Starts one task per piece of write `id`: it waits as its piece's state says, then
/// writes the piece (or fails it: `fail` fails the last one, an injected fault) and
/// records the result.
fn spawn_pieces(
    file: &Rc<DmaFile>,
    state: &Rc<RefCell<DirectState>>,
    id: u64,
    jobs: Vec<PieceJob>,
    fail: bool,
) {
    let last = jobs.len().saturating_sub(1);
    for (index, at, buffer, piece_state) in jobs {
        let counted = WriteCounted::new();
        let (file, shared) = (file.clone(), state.clone());
        let fail = fail && index == last;
        glommio::spawn_local(async move {
            let _counted = counted;
            match piece_state {
                PieceState::Submitted => {}
                // Every earlier write has left `in_flight` (landed or failed).
                PieceState::Waits => {
                    wait_for(&shared, |state| state.in_flight.front().is_some_and(|w| w.id == id))
                        .await
                }
                PieceState::Held => {
                    if !wait_to_flush(&shared, id, index).await {
                        return; // Taken over by the next append.
                    }
                }
            }
            let earlier_failed = shared.borrow().failed.is_some();
            let result = if earlier_failed {
                Err(io::Error::other("not written: an earlier write failed"))
            } else if fail {
                Err(injected("write"))
            } else {
                write_whole(&file, buffer, at).await
            };
            let waiters = shared.borrow_mut().piece_done(id, result);
            for waker in waiters {
                waker.wake();
            }
        })
        .detach();
    }
}

/// Starts the task that closes the open write `id` once fewer than
/// [`MAX_WRITES_IN_FLIGHT`] writes are in flight before it, and submits its pieces.
fn spawn_open(file: &Rc<DmaFile>, state: &Rc<RefCell<DirectState>>, id: u64, alignment: u64) {
    let counted = WriteCounted::new();
    let (file, shared) = (file.clone(), state.clone());
    glommio::spawn_local(async move {
        let _counted = counted;
        // The open write is the back of `in_flight`: the writes before it are the rest.
        wait_for(&shared, |state| state.in_flight.len() <= MAX_WRITES_IN_FLIGHT).await;
        let jobs = shared.borrow_mut().close_open(id, &file, alignment);
        // Appends waiting for the open write to close may go now.
        let waiters = std::mem::take(&mut shared.borrow_mut().waiters);
        for waker in waiters {
            waker.wake();
        }
        spawn_pieces(&file, &shared, id, jobs, false);
    })
    .detach();
}

/// Writes a whole DMA buffer at `at` (a block boundary).
async fn write_whole(file: &DmaFile, buffer: Rc<DmaBuffer>, at: u64) -> io::Result<()> {
    let len = buffer.len();
    let mut done = file.write_rc_at(buffer.clone(), at).await.map_err(to_io)?;
    while done < len {
        // The kernel accepted a prefix (rare with O_DIRECT; block-aligned): write the
        // rest from a new buffer.
        let rest = &buffer.as_bytes()[done..];
        let mut more = file.alloc_dma_buffer(rest.len());
        more.as_bytes_mut().copy_from_slice(rest);
        let n = file.write_at(more, at + done as u64).await.map_err(to_io)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("direct write at {} wrote 0 bytes", at + done as u64),
            ));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::test_support::run;

    async fn round_trip(mode: IoMode) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        let file = SegmentFile::open(&path, mode, None).await.unwrap();
        let mut expected = Vec::new();
        // Sizes that cross block boundaries in every way: tiny, odd, exact, large.
        for (i, size) in [1usize, 100, 4095, 4096, 1, 8191, 70_000, 3, 4093].iter().enumerate() {
            let chunk: Vec<u8> = (0..*size).map(|j| (i * 31 + j) as u8).collect();
            let position = file.append(&chunk).await.unwrap();
            assert_eq!(position, expected.len() as u64);
            expected.extend_from_slice(&chunk);
        }
        assert_eq!(file.len(), expected.len() as u64);
        let read = file.read_at(0, expected.len() + 100).await.unwrap();
        assert_eq!(&read[..], &expected[..]);
        let middle = file.read_at(5000, 10_000).await.unwrap();
        assert_eq!(&middle[..], &expected[5000..15_000]);
        // Truncate into the middle of a block and keep appending.
        file.truncate(9_000).await.unwrap();
        expected.truncate(9_000);
        file.append(b"after-truncate").await.unwrap();
        expected.extend_from_slice(b"after-truncate");
        file.seal().await.unwrap();
        drop(file);
        // The sealed file on disk is exactly the logical bytes, no padding.
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Reopen and append: the tail block is reloaded correctly.
        let file = SegmentFile::open(&path, mode, None).await.unwrap();
        assert_eq!(file.len(), expected.len() as u64);
        file.append(b"reopened").await.unwrap();
        expected.extend_from_slice(b"reopened");
        file.seal().await.unwrap();
        let read = file.read_at(0, usize::MAX).await.unwrap();
        assert_eq!(&read[..], &expected[..]);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn buffered_round_trip() {
        run(round_trip(IoMode::Buffered));
    }

    #[test]
    fn direct_round_trip() {
        run(round_trip(IoMode::Direct));
    }

    /// Buffered appends written inline (`pwrite`) and through io_uring, interleaved in one
    /// file, read back in order, through the segment and from the file itself.
    #[test]
    fn buffered_appends_inline_and_through_io_uring_land_in_order() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.log");
            let file = SegmentFile::open(&path, IoMode::Buffered, None).await.unwrap();
            let mut expected = Vec::new();
            for i in 0..40u8 {
                let how = if i % 3 == 0 { BufferedWrite::Uring } else { BufferedWrite::Inline };
                file.set_buffered_write(how);
                let chunk = vec![i; 1000 + usize::from(i) * 97];
                let at = file.append(&chunk).await.unwrap();
                assert_eq!(at, expected.len() as u64);
                expected.extend_from_slice(&chunk);
            }
            assert_eq!(file.len(), expected.len() as u64);
            let read = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&read[..], &expected[..]);
            assert_eq!(std::fs::read(&path).unwrap(), expected);
            assert_eq!("io_uring".parse::<BufferedWrite>(), Ok(BufferedWrite::Uring));
            assert_eq!("inline".parse::<BufferedWrite>(), Ok(BufferedWrite::Inline));
            assert!("uring".parse::<BufferedWrite>().is_err());
        });
    }

    /// With a cache window, the helper is handed, page-aligned and exactly once, every
    /// byte that fell more than the window behind the end: checked every
    /// `log.writeback.bytes`, or every `CACHE_WINDOW_STEP` without writeback; across a
    /// roll, the previous segment's cached tail too, as the next segment grows. The bytes
    /// dropped from the page cache read back unchanged. Direct mode ignores the window.
    #[test]
    fn pages_behind_the_cache_window_are_handed_over_once_and_read_back() {
        use std::sync::atomic::Ordering::Relaxed;

        use crate::writeback::{DROPPED_BEHIND_BYTES, DROP_BEHIND_TESTS};
        let _alone = DROP_BEHIND_TESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let direct =
                SegmentFile::open(&dir.path().join("d.log"), IoMode::Direct, None).await.unwrap();
            direct.set_cache_window(4096);
            assert_eq!(direct.cache_window.get(), 0, "direct mode has no page cache");

            let before = DROPPED_BEHIND_BYTES.load(Relaxed);
            let mut dropped = 0;
            for (writeback, name) in [(64u64 << 10, "w.log"), (0, "n.log")] {
                let file = SegmentFile::open(&dir.path().join(name), IoMode::Buffered, None)
                    .await
                    .unwrap();
                file.set_writeback_bytes(writeback);
                file.set_cache_window(256 << 10);
                let mut expected = Vec::new();
                // 2 MiB in appends of 10 000 bytes: not page multiples.
                while expected.len() < 2 << 20 {
                    let chunk = vec![(expected.len() / 10_000) as u8; 10_000];
                    file.append(&chunk).await.unwrap();
                    expected.extend_from_slice(&chunk);
                }
                let end = expected.len() as u64;
                let step = if writeback > 0 { writeback } else { CACHE_WINDOW_STEP };
                // The last check came at the last append that completed a step.
                assert!(file.writeback_from.get() + step > end);
                let last_check = file.writeback_from.get();
                assert_eq!(file.dropped_to.get(), (last_check - (256 << 10)) & !4095);
                dropped += file.dropped_to.get();
                let read = file.read_at(0, usize::MAX).await.unwrap();
                assert_eq!(&read[..], &expected[..], "{name}");
            }

            // Rolls: the window is the log's, so the pages of the segments before that were
            // still in it go as the next one grows, all of them once it holds a window of
            // bytes. r1 is shorter than the window: r2 keeps track of r0's pages and r1's.
            // Every byte of r0 and r1 is dropped once.
            let (window, step) = (256u64 << 10, 64u64 << 10);
            let mut previous = None::<(SegmentFile, Vec<u8>)>;
            // (name, bytes, segments before it tracked after the roll, any left at the end)
            let files = [
                ("r0.log", 1u64 << 20, 0, false),
                ("r1.log", 100 << 10, 1, true),
                ("r2.log", 600 << 10, 2, false),
            ];
            for (name, size, tracked_at_start, tracked_at_end) in files {
                let file = SegmentFile::open(&dir.path().join(name), IoMode::Buffered, None)
                    .await
                    .unwrap();
                file.set_writeback_bytes(step);
                file.set_cache_window(window);
                if let Some((prior, _)) = &previous {
                    file.follow(prior);
                    assert_eq!(prior.dropped_to.get(), prior.len.get(), "{name}: handed over");
                    assert!(prior.predecessors.borrow().is_empty(), "{name}: passed on");
                    dropped += prior.len.get();
                }
                let tracked = file.cached_predecessors().len();
                assert_eq!(tracked, tracked_at_start, "{name}");
                let mut expected = Vec::new();
                while (expected.len() as u64) < size {
                    let chunk = vec![(expected.len() / 10_000) as u8; 10_000];
                    file.append(&chunk).await.unwrap();
                    expected.extend_from_slice(&chunk);
                    let end = expected.len() as u64;
                    if file.writeback_from.get() == end {
                        // Just checked: what is left is what the window still covers, up
                        // to a page per segment.
                        let left: u64 =
                            file.cached_predecessors().iter().map(|(from, end)| end - from).sum();
                        let slack = 4096 * tracked as u64;
                        assert!(left <= window.saturating_sub(end) + slack, "{name} {end}");
                    }
                }
                assert_eq!(!file.cached_predecessors().is_empty(), tracked_at_end, "{name}");
                let read = file.read_at(0, usize::MAX).await.unwrap();
                assert_eq!(&read[..], &expected[..], "{name}");
                if let Some((prior, prior_bytes)) = &previous {
                    let read = prior.read_at(0, usize::MAX).await.unwrap();
                    assert_eq!(&read[..], &prior_bytes[..], "the one before {name}");
                }
                previous = Some((file, expected));
            }
            let (last, _) = previous.unwrap();
            dropped += last.dropped_to.get();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while DROPPED_BEHIND_BYTES.load(Relaxed) < before + dropped {
                assert!(std::time::Instant::now() < deadline, "the helper never dropped them");
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(DROPPED_BEHIND_BYTES.load(Relaxed), before + dropped, "each byte once");
        });
    }

    /// Buffered appends hand every `log.writeback.bytes` to the writeback helper, which
    /// starts their device write (`sync_file_range` succeeds on each range); the bytes
    /// read back unchanged. Direct mode ignores the setting.
    #[test]
    fn buffered_appends_start_writeback_every_so_many_bytes() {
        use std::sync::atomic::Ordering::Relaxed;

        use crate::writeback::{DROPPED, STARTED};
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let direct =
                SegmentFile::open(&dir.path().join("d.log"), IoMode::Direct, None).await.unwrap();
            direct.set_writeback_bytes(4096);
            assert_eq!(direct.writeback_every.get(), 0, "direct mode writes to the device");

            let file =
                SegmentFile::open(&dir.path().join("b.log"), IoMode::Buffered, None).await.unwrap();
            file.append(&[7u8; 1000]).await.unwrap(); // before: not handed over
            file.set_writeback_bytes(64 << 10);
            let (started, dropped) = (STARTED.load(Relaxed), DROPPED.load(Relaxed));
            let mut expected = vec![7u8; 1000];
            for i in 0..64u8 {
                let chunk = vec![i; 16 << 10];
                file.append(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
            }
            // 1 MiB appended in 16 KiB pieces, 64 KiB per range: 16 ranges, from where
            // the setting was made to the end.
            assert_eq!(file.writeback_from.get(), expected.len() as u64);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while STARTED.load(Relaxed) < started + 16 {
                assert!(std::time::Instant::now() < deadline, "writeback never started");
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(DROPPED.load(Relaxed), dropped, "no range dropped or failed");
            let read = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&read[..], &expected[..]);
        });
    }

    #[test]
    fn direct_unsealed_file_has_zero_padding_after_logical_end() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.log");
            let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
            file.append(&[7u8; 10]).await.unwrap();
            file.writes_landed().await.unwrap();
            let on_disk = std::fs::read(&path).unwrap();
            assert!(on_disk.len() >= 512, "a whole block is written");
            assert_eq!(&on_disk[..10], &[7u8; 10]);
            assert!(on_disk[10..].iter().all(|b| *b == 0));
        });
    }

    /// Reads right after each append, while its write is (usually) still in flight: the
    /// bytes come from the write's buffer and, before it, from disk.
    #[test]
    fn direct_reads_see_bytes_whose_write_is_in_flight() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.log");
            let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
            let mut expected = Vec::new();
            for (i, size) in [5000usize, 1, 300_000, 4096, 77, 12_345, 1 << 20].iter().enumerate() {
                let chunk: Vec<u8> = (0..*size).map(|j| (i * 7 + j * 13) as u8).collect();
                file.append(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
                let all = file.read_at(0, usize::MAX).await.unwrap();
                assert_eq!(&all[..], &expected[..]);
                let from = expected.len() - size - 100.min(expected.len() - size);
                let last = file.read_at(from as u64, usize::MAX).await.unwrap();
                assert_eq!(&last[..], &expected[from..]);
            }
            file.seal().await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        });
    }

    /// Appends of every alignment back to back, with reads between them at every kind of
    /// position: several writes are in flight at once, writes that share a block with
    /// the previous one are split, and every read and the sealed file see exactly the
    /// bytes appended.
    #[test]
    fn direct_pipelined_writes_keep_every_byte() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.log");
            let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
            let Some(direct) = &file.direct else { unreachable!() };
            let mut expected = Vec::new();
            let (mut most_in_flight, mut split) = (0, false);
            let sizes = [700usize, 1 << 20, 33, 9000, 4096, 300_001, 1, 5000, 65_536, 123_457];
            for round in 0..6 {
                for (i, size) in sizes.iter().enumerate() {
                    let chunk: Vec<u8> =
                        (0..*size).map(|j| (round * 101 + i * 7 + j * 13) as u8).collect();
                    file.append(&chunk).await.unwrap();
                    expected.extend_from_slice(&chunk);
                    {
                        let state = direct.state.borrow();
                        most_in_flight = most_in_flight.max(state.in_flight.len());
                        split |= state.in_flight.iter().any(|write| write.pieces.len() == 2);
                        // Plus the open write gathering appends, if there is one.
                        let open = usize::from(state.open.is_some());
                        assert!(state.in_flight.len() <= MAX_WRITES_IN_FLIGHT + open);
                    }
                    if i % 3 == 0 {
                        let from = expected.len() - (size + 5000).min(expected.len());
                        let read = file.read_at(from as u64, usize::MAX).await.unwrap();
                        assert_eq!(&read[..], &expected[from..]);
                    }
                }
            }
            assert!(most_in_flight > 1, "writes were pipelined ({most_in_flight} at most)");
            assert!(split, "some write shared its first block with a write in flight");
            file.writes_landed().await.unwrap();
            let size = std::fs::metadata(&path).unwrap().len();
            assert!(size >= expected.len() as u64 + ALLOCATE_AHEAD_MIN, "allocated ahead: {size}");
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..expected.len()], &expected[..]);
            assert!(on_disk[expected.len()..].iter().all(|b| *b == 0), "padding is zeros");
            let all = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&all[..], &expected[..]);
            file.seal().await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        });
    }

    /// A held last block taken over by the next write: the write that held it ends where
    /// the block starts, so its append counts as landed only once the next write (which
    /// carries its last bytes) has; a held piece that was taken over is never written,
    /// and one that was not is flushed once everything before it has landed.
    #[test]
    fn direct_held_block_lands_with_the_write_that_took_it_over() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let file =
                SegmentFile::open(&dir.path().join("h.log"), IoMode::Direct, None).await.unwrap();
            let dma = file.dma().await.unwrap();
            let piece = |at: u64, state: PieceState| Piece {
                at,
                buffer: Rc::new(dma.alloc_dma_buffer(4096)),
                state,
            };
            let mut state = DirectState::default();
            assert!(!state.take_held(), "nothing to take over");
            state.in_flight.push_back(InFlight {
                id: 0,
                end: 6000,
                pieces: vec![piece(0, PieceState::Submitted), piece(4096, PieceState::Held)],
                pending: 2,
            });
            state.piece_done(0, Ok(()));
            assert_eq!(state.landed, 0, "the held block is not on the device");
            assert!(state.busy());
            assert!(state.take_held());
            assert!(!state.take_held(), "taken once");
            state.retire();
            assert_eq!(state.landed, 4096, "landed up to the block taken over, not to 6000");
            assert!(!state.busy());
            state.in_flight.push_back(InFlight {
                id: 1,
                end: 9000,
                pieces: vec![piece(4096, PieceState::Submitted), piece(8192, PieceState::Held)],
                pending: 2,
            });
            let shared = RefCell::new(state);
            // Not flushed while the write's other piece is in flight.
            let mut flush = std::pin::pin!(wait_to_flush(&shared, 1, 1));
            let first = std::future::poll_fn(|cx| {
                use std::future::Future as _;
                Poll::Ready(flush.as_mut().poll(cx))
            })
            .await;
            assert!(first.is_pending());
            shared.borrow_mut().piece_done(1, Ok(()));
            assert!(wait_to_flush(&shared, 1, 1).await, "flushed once alone");
            assert!(!shared.borrow_mut().take_held(), "a flushed block cannot be taken over");
            // A held piece taken over: its task finds it gone.
            shared.borrow_mut().in_flight.push_back(InFlight {
                id: 2,
                end: 13000,
                pieces: vec![piece(12288, PieceState::Held)],
                pending: 1,
            });
            assert!(shared.borrow_mut().take_held());
            assert!(!wait_to_flush(&shared, 2, 0).await);
        });
    }

    /// Appends pipelined two by two: once `wait_landed` returns for the first, its bytes
    /// and every byte before them are on disk, although its last block was (usually)
    /// held back and written by the second append's write.
    #[test]
    fn direct_landed_bytes_are_on_disk_when_blocks_are_held_back() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("l.log");
            let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
            let Some(direct) = &file.direct else { unreachable!() };
            let mut expected = Vec::new();
            let mut held = 0;
            for round in 0..200usize {
                let first = 1 + round * 7919 % 20_000;
                let second = 1 + round * 104_729 % 9000;
                for (size, salt) in [(first, 1usize), (second, 2)] {
                    let chunk: Vec<u8> = (0..size).map(|j| (round * 31 + salt + j) as u8).collect();
                    file.append(&chunk).await.unwrap();
                    expected.extend_from_slice(&chunk);
                    let state = direct.state.borrow();
                    let last = state.in_flight.back().and_then(|write| write.pieces.last());
                    held += usize::from(last.is_some_and(|p| p.state == PieceState::Held));
                }
                let landed_end = expected.len() - second;
                file.wait_landed(landed_end as u64).await.unwrap();
                let on_disk = std::fs::read(&path).unwrap();
                assert_eq!(&on_disk[..landed_end], &expected[..landed_end], "round {round}");
            }
            assert!(held > 0, "some appends held their last block back");
            file.seal().await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        });
    }

    /// Writes land out of order, but the landed end only moves over writes whose
    /// predecessors have all landed, and a failure stops it for good.
    #[test]
    fn direct_landed_end_moves_in_append_order() {
        let write =
            |id: u64, end: u64, pending: usize| InFlight { id, end, pieces: Vec::new(), pending };
        let mut state = DirectState::default();
        state.in_flight.extend([write(0, 10, 1), write(1, 20, 2), write(2, 30, 1)]);
        state.piece_done(2, Ok(()));
        state.piece_done(1, Ok(()));
        assert_eq!((state.landed, state.in_flight.len()), (0, 3), "write 0 has not landed");
        state.piece_done(0, Ok(()));
        assert_eq!((state.landed, state.in_flight.len()), (10, 2), "write 1 has a piece left");
        state.piece_done(1, Ok(()));
        assert_eq!((state.landed, state.in_flight.len()), (30, 0));
        state.in_flight.extend([write(3, 40, 1), write(4, 50, 1)]);
        state.piece_done(3, Err(io::Error::other("device gone")));
        state.piece_done(4, Ok(()));
        assert!(state.in_flight.is_empty());
        assert_eq!(state.landed, 30, "nothing after a failed write counts as landed");
        assert!(state.failed.as_deref().unwrap().contains("device gone"));
    }

    /// A write that fails while later ones are in flight: the later appends fail or are
    /// lost with it, and every operation after reports the failure.
    #[test]
    fn direct_failed_write_among_pipelined_writes_fails_the_file() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FaultPlan::default());
            let path = dir.path().join("q.log");
            let file =
                SegmentFile::open(&path, IoMode::Direct, Some(faults.clone())).await.unwrap();
            file.append(&[1u8; 5000]).await.unwrap();
            faults.fail_next_write();
            file.append(&[2u8; 70_000]).await.unwrap();
            // Queued behind the failing write, or refused once it has failed.
            let _ = file.append(&[3u8; 70_000]).await;
            assert!(file.wait_landed(5000 + 70_000).await.is_err());
            assert!(file.write_failed());
            assert!(file.append(b"more").await.is_err());
            assert!(file.read_at(0, 10).await.is_err());
            assert!(file.sync().await.is_err());
            writes_landed().await;
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..5000], &[1u8; 5000][..], "the write before the failure landed");
        });
    }

    /// Group commit: once `MAX_WRITES_IN_FLIGHT` writes are in flight, appends gather
    /// into one open write instead of one write each. Far fewer writes than appends
    /// reach the device; reads between appends see the gathered bytes; an append that
    /// joined counts as landed only once its bytes are on disk; the file ends up exactly
    /// the bytes appended.
    #[test]
    fn direct_appends_gather_into_one_write_while_writes_are_in_flight() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("g.log");
            let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
            let Some(direct) = &file.direct else { unreachable!() };
            let mut expected = Vec::new();
            let (mut appends, mut joined) = (0u64, 0u64);
            // Unaligned sizes, so that appends share blocks; 400 appends back to back
            // without awaiting the device.
            for i in 0..400usize {
                let size = [1000, 4096, 70_000, 1, 12_345][i % 5];
                let chunk: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
                let open_before = direct.state.borrow().open.as_ref().map(|open| open.id);
                file.append(&chunk).await.unwrap();
                appends += 1;
                expected.extend_from_slice(&chunk);
                let open_after = direct.state.borrow().open.as_ref().map(|open| open.id);
                joined += u64::from(open_before.is_some() && open_before == open_after);
                if i % 7 == 0 {
                    let from = expected.len() - (size + 3000).min(expected.len());
                    let read = file.read_at(from as u64, usize::MAX).await.unwrap();
                    assert_eq!(&read[..], &expected[from..], "read after append {i}");
                }
                if i % 50 == 49 {
                    // Landed means on disk, for the bytes of a joined append too.
                    file.wait_landed(expected.len() as u64).await.unwrap();
                    let on_disk = std::fs::read(&path).unwrap();
                    assert_eq!(&on_disk[..expected.len()], &expected[..], "landed at {i}");
                }
            }
            let writes = direct.state.borrow().next_id;
            assert!(joined > 0, "some appends joined an open write");
            assert!(writes < appends, "{writes} writes for {appends} appends");
            file.writes_landed().await.unwrap();
            assert!(direct.state.borrow().open.is_none(), "the open write was closed");
            let all = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&all[..], &expected[..]);
            file.seal().await.unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        });
    }

    /// A write that fails behind an open write (an injected fault fails its write as
    /// soon as it is submitted, so it goes right behind the open one): nothing from the
    /// failure on counts as landed, later appends are refused, and what is on disk
    /// before the failure is intact.
    #[test]
    fn direct_failed_write_behind_an_open_write_fails_the_file() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FaultPlan::default());
            let path = dir.path().join("h.log");
            let file =
                SegmentFile::open(&path, IoMode::Direct, Some(faults.clone())).await.unwrap();
            let Some(direct) = &file.direct else { unreachable!() };
            file.append(&[1u8; 5000]).await.unwrap();
            file.wait_landed(5000).await.unwrap();
            let mut len = 5000u64;
            while direct.state.borrow().open.is_none() {
                file.append(&[2u8; 9000]).await.unwrap();
                len += 9000;
                assert!(len < 64 << 20, "no write gathered appends");
            }
            file.append(&[3u8; 9000]).await.unwrap(); // joins the open write
            len += 9000;
            faults.fail_next_write();
            // Waits for the open write to close, then its own write fails.
            let _ = file.append(&[4u8; 9000]).await;
            assert!(file.wait_landed(len + 9000).await.is_err());
            assert!(file.write_failed());
            assert!(file.append(b"more").await.is_err());
            writes_landed().await;
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..5000], &[1u8; 5000][..], "the write before the failure landed");
        });
    }

    /// A direct-mode write that fails after its append returned is reported by every
    /// later operation: nothing goes on as if the appended bytes were there.
    #[test]
    fn direct_failed_write_fails_every_later_operation() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FaultPlan::default());
            let path = dir.path().join("w.log");
            let file =
                SegmentFile::open(&path, IoMode::Direct, Some(faults.clone())).await.unwrap();
            file.append(b"landed").await.unwrap();
            faults.fail_next_write();
            file.append(b"lost").await.unwrap();
            assert_eq!(file.len(), 10);
            assert!(file.writes_landed().await.is_err());
            assert!(file.write_failed());
            assert!(file.append(b"more").await.is_err());
            assert!(file.sync().await.is_err());
            assert!(file.read_at(0, 6).await.is_err());
            assert!(file.truncate(6).await.is_err(), "the bytes before 6 are not trusted");
            assert!(file.seal().await.is_err());
            drop(file);
            // On disk: what landed before the failure, padded; the lost bytes never came.
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..6], b"landed");
            assert!(on_disk[6..].iter().all(|b| *b == 0));
        });
    }

    #[test]
    fn buffered_failed_write_fails_the_append() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FaultPlan::default());
            let path = dir.path().join("b.log");
            let file =
                SegmentFile::open(&path, IoMode::Buffered, Some(faults.clone())).await.unwrap();
            faults.fail_next_write();
            assert!(file.append(b"lost").await.is_err());
            assert_eq!(file.len(), 0);
            file.append(b"kept").await.unwrap();
            assert_eq!(&file.read_at(0, 4).await.unwrap()[..], b"kept");
        });
    }

    #[test]
    fn faults_are_injected_once() {
        run(async {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(FaultPlan::default());
            let path = dir.path().join("f.log");
            let file =
                SegmentFile::open(&path, IoMode::Buffered, Some(faults.clone())).await.unwrap();
            file.append(b"0123456789").await.unwrap();
            faults.tear_next_append_after(3);
            assert!(file.append(b"abcdef").await.is_err());
            assert_eq!(file.len(), 10, "a failed append does not move the logical end");
            assert_eq!(std::fs::read(&path).unwrap(), b"0123456789abc");
            faults.fail_next_sync();
            assert!(file.sync().await.is_err());
            file.sync().await.unwrap();
            faults.fail_next_read();
            assert!(file.read_at(0, 4).await.is_err());
            assert_eq!(&file.read_at(0, 4).await.unwrap()[..], b"0123");
        });
    }

    /// Descriptors of this process that point into `dir`, once glommio has closed the
    /// files dropped before (it closes them from its ring, at the next poll).
    pub(crate) async fn open_fds_under(dir: &Path) -> usize {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|entry| std::fs::read_link(entry.path()).is_ok_and(|to| to.starts_with(&dir)))
            .count()
    }

    /// With a budget of two descriptors, files beyond it are closed while idle and
    /// reopened on their next use: reads return the same bytes, appends go on where the
    /// file ends (direct mode: from the tail block kept in memory, into the space
    /// allocated ahead), and the process never holds more than the budget.
    async fn evicted_files_reopen_with_the_same_bytes(mode: IoMode) {
        crate::fdcache::set_budget(2);
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut expected: Vec<Vec<u8>> = Vec::new();
        for i in 0..6u8 {
            let file =
                SegmentFile::open(&dir.path().join(format!("{i}.log")), mode, None).await.unwrap();
            // Not block-aligned, so direct mode keeps a partial tail block.
            let data: Vec<u8> = (0..5000 + usize::from(i) * 777).map(|b| b as u8 ^ i).collect();
            file.append(&data).await.unwrap();
            file.writes_landed().await.unwrap();
            files.push(file);
            expected.push(data);
        }
        assert!(crate::fdcache::stats().held <= 2);
        assert!(!files[0].is_open(), "the oldest file was closed");
        assert!(open_fds_under(dir.path()).await <= 2);
        for round in 0..2u8 {
            for (i, file) in files.iter().enumerate() {
                let read = file.read_at(0, usize::MAX).await.unwrap();
                assert_eq!(&read[..], &expected[i][..], "file {i} reads back");
                // Append to a file that was closed: the next bytes follow the old ones.
                let more: Vec<u8> = (0..3000).map(|b| (b as u8).wrapping_mul(round + 3)).collect();
                file.append(&more).await.unwrap();
                file.writes_landed().await.unwrap();
                expected[i].extend_from_slice(&more);
                assert!(crate::fdcache::stats().held <= 2);
            }
        }
        assert!(open_fds_under(dir.path()).await <= 2);
        for (i, file) in files.iter().enumerate() {
            file.seal().await.unwrap();
            let on_disk = std::fs::read(file.path()).unwrap();
            assert_eq!(on_disk, expected[i], "file {i} on disk after the seal");
        }
        let stats = crate::fdcache::stats();
        assert!(stats.evictions >= 20, "files were closed and reopened: {stats:?}");
        assert_eq!(stats.over_budget, 0, "{stats:?}");
        drop(files);
        assert_eq!(crate::fdcache::stats().held, 0);
        assert_eq!(open_fds_under(dir.path()).await, 0);
    }

    #[test]
    fn buffered_evicted_files_reopen_with_the_same_bytes() {
        run(evicted_files_reopen_with_the_same_bytes(IoMode::Buffered));
    }

    #[test]
    fn direct_evicted_files_reopen_with_the_same_bytes() {
        run(evicted_files_reopen_with_the_same_bytes(IoMode::Direct));
    }

    /// A file whose descriptor an operation holds is not closed, however far over the
    /// budget the shard goes; it is closed once idle, by the next file that opens.
    #[test]
    fn a_file_in_use_is_not_closed() {
        run(async {
            crate::fdcache::set_budget(1);
            let dir = tempfile::tempdir().unwrap();
            let path = |name: &str| dir.path().join(name);
            let open = |path: PathBuf| async move {
                SegmentFile::open(&path, IoMode::Buffered, None).await
            };
            let a = open(path("a.log")).await.unwrap();
            a.append(b"held by a read").await.unwrap();
            let in_use = a.handle().await.unwrap();
            let b = open(path("b.log")).await.unwrap();
            assert!(a.is_open(), "a read holds a: it stays open");
            assert_eq!(crate::fdcache::stats().over_budget, 1);
            assert_eq!(open_fds_under(dir.path()).await, 2);
            drop(in_use);
            let c = open(path("c.log")).await.unwrap();
            assert!(!a.is_open() && !b.is_open() && c.is_open());
            assert_eq!(open_fds_under(dir.path()).await, 1);
            assert_eq!(&a.read_at(0, 100).await.unwrap()[..], b"held by a read");
        });
    }

    /// A descriptor handed out for sendfile stays valid when the cache closes the file,
    /// and one of a file that was deleted stays readable while kept open.
    #[test]
    fn shared_descriptors_outlive_the_close_and_deleted_files_stay_readable() {
        run(async {
            crate::fdcache::set_budget(2);
            let dir = tempfile::tempdir().unwrap();
            let path = |name: &str| dir.path().join(name);
            let open = |path: PathBuf| async move {
                SegmentFile::open(&path, IoMode::Buffered, None).await
            };
            let a = open(path("a.log")).await.unwrap();
            a.append(b"sent with sendfile").await.unwrap();
            let shared = a.shared_fd().unwrap().unwrap();
            assert_eq!(crate::fdcache::stats().held, 2, "the file and its duplicate");
            let b = open(path("b.log")).await.unwrap();
            b.append(b"deleted under a read").await.unwrap();
            assert!(!a.is_open(), "a closed for b");
            let mut bytes = [0u8; 18];
            nix::sys::uio::pread(&*shared, &mut bytes, 0).unwrap();
            assert_eq!(&bytes, b"sent with sendfile");
            drop(shared);
            // b is deleted while a read still holds it: it stays open, whatever the budget.
            b.keep_open().await.unwrap();
            remove_file(b.path()).unwrap();
            let mut others = Vec::new();
            for name in ["c.log", "d.log", "e.log"] {
                others.push(open(path(name)).await.unwrap());
            }
            assert!(!others[0].is_open(), "the budget holds for the others");
            assert!(b.is_open());
            assert_eq!(&b.read_at(0, 100).await.unwrap()[..], b"deleted under a read");
            // A closed file whose name is gone cannot come back: an error, never an empty
            // file of that name.
            assert!(!a.is_open());
            remove_file(a.path()).unwrap();
            assert!(a.read_at(0, 1).await.is_err());
            assert!(!a.path().exists());
        });
    }
}
