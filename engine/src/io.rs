//! The one seam for file I/O. Every byte the log writes or reads goes through
//! [`SegmentFile`], which has two implementations chosen by configuration:
//!
//! - `direct`: O_DIRECT through glommio DMA files. Writes must be aligned, so the
//!   unaligned tail of the file (less than one block) is kept in memory and rewritten,
//!   padded with zeros, by the next append. The padding on disk is trimmed when the file
//!   is sealed; after a crash it reads as a torn batch, which recovery truncates.
//!   Appends are write-behind: an append copies its bytes into a DMA buffer, queues the
//!   write and returns without waiting for the device; `wait_landed` waits for it. The
//!   log waits there after releasing its append lock, so the next append (another
//!   producer's, or the next pipelined request) is copied while this one is written.
//!   One write is in flight per file: consecutive writes share the partial block, so an
//!   append's copy runs before, and its submission after, the previous write lands.
//!   Reads of bytes still in flight are served from the write's buffer. A failed write
//!   is sticky: every later append, sync, truncate, seal and read of the file fails, so
//!   no loss goes unnoticed. `sync` and `seal` wait for the write in flight first.
//! - `buffered`: the page cache, through glommio buffered files (also io_uring), which is
//!   what zero-copy fetch (sendfile/splice) reads from.
//!
//! Both submit through io_uring, so a shard never blocks in a syscall here. Appends are
//! sequential: a file is only ever appended to by one task at a time (the log's append
//! lock) and the position is the logical length.
//!
//! A [`FaultPlan`] can be attached for tests: fail the next fsync, tear the next append
//! after N bytes, fail the next read, fail the next write (in direct mode after the
//! append returned, as a device error would). Faults hit real files, so what recovery
//! then finds on disk is exactly what a crash would leave.

use std::cell::{Cell, OnceCell, RefCell};
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions, ReadResult};
use tracing::warn;

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

enum Backend {
    Direct(DirectFile),
    Buffered(BufferedFile),
}

struct DirectFile {
    /// Shared with the task that writes in the background.
    file: Rc<DmaFile>,
    alignment: u64,
    state: Rc<RefCell<DirectState>>,
}

#[derive(Default)]
struct DirectState {
    /// Bytes from `align_down(len)` to `len`: the logical bytes of the last, partial
    /// block (on disk, zero-padded, once the write in flight lands).
    tail: Vec<u8>,
    /// The write of the last append, until it lands.
    in_flight: Option<InFlight>,
    /// Logical end of the last write that landed (reset by `load_tail`).
    landed: u64,
    /// Why a write failed, once one has. Sticky: bytes an append already returned for
    /// are lost, so the file refuses all further use (the log goes offline).
    failed: Option<String>,
    /// Tasks waiting for `in_flight` to clear.
    waiters: Vec<Waker>,
}

struct InFlight {
    /// File offset of `buffer[0]` (block-aligned). From here to the logical end, the
    /// bytes are read from `buffer`; before it they are on disk.
    start: u64,
    /// Logical end of the file once this write lands.
    end: u64,
    buffer: Rc<DmaBuffer>,
}

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
pub struct SegmentFile {
    backend: Backend,
    path: PathBuf,
    /// Logical length: the bytes appended so far. Direct-mode padding is not counted.
    len: Cell<u64>,
    faults: Option<Arc<FaultPlan>>,
    /// A duplicate of the descriptor for zero-copy senders on any shard (buffered mode),
    /// made on first use.
    shared_fd: OnceCell<Arc<OwnedFd>>,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile")
            .field("path", &self.path)
            .field("len", &self.len.get())
            .field("direct", &matches!(self.backend, Backend::Direct(_)))
            .finish()
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
    // SAFETY: `fd` is the descriptor of a file this `SegmentFile` owns and keeps open for
    // the whole call; the borrow does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::unistd::ftruncate(fd, len).map_err(io::Error::from)
}

#[allow(unsafe_code)]
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by fcntl(F_DUPFD_CLOEXEC): open, and owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Removes a file with a plain syscall (see [`set_len`] for why not glommio's).
pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)
}

fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(error)
}

impl SegmentFile {
    /// Opens `path` for reading and appending, creating it if missing. The logical length
    /// is the file's size; the caller truncates further if recovery says so.
    pub async fn open(
        path: &Path,
        mode: IoMode,
        faults: Option<Arc<FaultPlan>>,
    ) -> io::Result<SegmentFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true);
        let (backend, len) = match mode {
            IoMode::Buffered => {
                let file = options.buffered_open(path).await.map_err(to_io)?;
                let len = file.file_size().await.map_err(to_io)?;
                (Backend::Buffered(file), len)
            }
            IoMode::Direct => {
                probe_iopoll_once(path).await?;
                let file = options.dma_open(path).await.map_err(to_io)?;
                let len = file.file_size().await.map_err(to_io)?;
                let alignment = file.alignment().max(512);
                let direct = DirectFile {
                    file: Rc::new(file),
                    alignment,
                    state: Rc::new(RefCell::new(DirectState::default())),
                };
                direct.load_tail(len).await?;
                (Backend::Direct(direct), len)
            }
        };
        Ok(SegmentFile {
            backend,
            path: path.to_path_buf(),
            len: Cell::new(len),
            faults,
            shared_fd: OnceCell::new(),
        })
    }

    /// In buffered mode, a descriptor of this file that may be sent to other threads and
    /// outlives the segment (for `sendfile` from the page cache); `None` in direct mode,
    /// whose reads bypass the page cache and must go through [`SegmentFile::read_at`].
    pub fn shared_fd(&self) -> io::Result<Option<Arc<OwnedFd>>> {
        let Backend::Buffered(file) = &self.backend else { return Ok(None) };
        if let Some(fd) = self.shared_fd.get() {
            return Ok(Some(fd.clone()));
        }
        use nix::fcntl::{fcntl, FcntlArg};
        let fd = Arc::new(fcntl(file.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(0)).map(owned)?);
        Ok(Some(self.shared_fd.get_or_init(|| fd).clone()))
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
        match self.backend {
            Backend::Direct(_) => IoMode::Direct,
            Backend::Buffered(_) => IoMode::Buffered,
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
        match &self.backend {
            Backend::Buffered(file) => {
                if fail_write {
                    return Err(injected("write"));
                }
                write_all_buffered(file, data, position).await?;
            }
            // A torn append stands for a crash in the middle of the write: what it wrote
            // must be on disk when it returns.
            Backend::Direct(direct) => direct.append(data, position, fail_write, torn).await?,
        }
        if torn {
            return Err(injected("torn append"));
        }
        let len_new = position + u64::try_from(bytes.len()).expect("usize fits u64");
        self.len.set(len_new);
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
        let result = match &self.backend {
            Backend::Buffered(file) => {
                FileBytes::Uring(file.read_at(position, len).await.map_err(to_io)?)
            }
            Backend::Direct(direct) => direct.read_at(position, len).await?,
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
    /// waits for the write in flight first, and fails if any write failed).
    pub async fn sync(&self) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            if faults.take_sync() {
                return Err(injected("fsync"));
            }
        }
        match &self.backend {
            Backend::Buffered(file) => file.fdatasync().await.map_err(to_io),
            Backend::Direct(direct) => {
                direct.settle().await?;
                direct.file.fdatasync().await.map_err(to_io)
            }
        }
    }

    /// Waits until no write of this file is in flight (direct mode; at once in buffered
    /// mode) and fails if any write failed. No fsync.
    pub async fn writes_landed(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Buffered(_) => Ok(()),
            Backend::Direct(direct) => direct.settle().await,
        }
    }

    /// Waits until the bytes before logical position `end` are on the device (direct
    /// mode; at once in buffered mode, whose writes are in the page cache when `append`
    /// returns). Fails if any write failed. What the log waits for before it acknowledges
    /// an append: a process killed after the acknowledgement loses nothing.
    pub async fn wait_landed(&self, end: u64) -> io::Result<()> {
        match &self.backend {
            Backend::Buffered(_) => Ok(()),
            Backend::Direct(direct) => direct.wait_landed(end).await,
        }
    }

    /// True once a direct-mode write failed: bytes an append returned for are lost, and
    /// every later operation on the file fails.
    pub fn write_failed(&self) -> bool {
        match &self.backend {
            Backend::Buffered(_) => false,
            Backend::Direct(direct) => direct.state.borrow().failed.is_some(),
        }
    }

    /// Cuts the file to `len` bytes (recovery, replication truncation, failed appends).
    /// Fails, cutting nothing, when a direct-mode write failed: the bytes before `len`
    /// may be missing, so the file cannot be trusted until recovery has checked it.
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        match &self.backend {
            Backend::Buffered(file) => set_len(file.as_raw_fd(), len)?,
            Backend::Direct(direct) => {
                direct.settle().await?;
                set_len(direct.file.as_raw_fd(), len)?;
                direct.load_tail(len).await?;
            }
        }
        self.len.set(len);
        Ok(())
    }

    /// Makes the on-disk file exactly the logical bytes (trims direct-mode padding, once
    /// the write in flight has landed) and syncs it. Called when a segment stops being
    /// active and on clean close.
    pub async fn seal(&self) -> io::Result<()> {
        if let Backend::Direct(direct) = &self.backend {
            direct.settle().await?;
            set_len(direct.file.as_raw_fd(), self.len.get())?;
        }
        self.sync().await
    }

    /// Deletes the file from its directory. Reads in flight on other `Rc`s keep working
    /// until they drop the file (the inode lives while it is open).
    pub async fn remove(&self) -> io::Result<()> {
        remove_file(&self.path)
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

    /// Reloads the partial last block of a file of logical length `len` into memory.
    async fn load_tail(&self, len: u64) -> io::Result<()> {
        let start = self.align_down(len);
        let tail_len = usize::try_from(len - start).expect("tail < alignment");
        let mut tail = Vec::with_capacity(tail_len);
        if tail_len > 0 {
            let block = self
                .file
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

    /// Waits for the write in flight, if any, to land; then fails if any write failed.
    async fn settle(&self) -> io::Result<()> {
        std::future::poll_fn(|context| {
            let mut state = self.state.borrow_mut();
            if state.in_flight.is_none() {
                return Poll::Ready(());
            }
            state.waiters.push(context.waker().clone());
            Poll::Pending
        })
        .await;
        self.check_failed()
    }

    /// Writes `tail + data`, zero-padded to whole blocks, at `align_down(position)`, in
    /// the background. The copy into the DMA buffer runs while the previous write may
    /// still be in flight; the new write is submitted once that one has landed (both
    /// cover the partial block, and two writes of one block in flight may land in either
    /// order). Returns once the write is queued for the kernel (with `wait`, once it has
    /// landed). `fail` makes the write fail without writing (an injected fault).
    async fn append(&self, data: &[u8], position: u64, fail: bool, wait: bool) -> io::Result<()> {
        let start = self.align_down(position);
        let alignment = usize::try_from(self.alignment).expect("small");
        let (buffer, total) = {
            let state = self.state.borrow();
            let tail = &state.tail;
            debug_assert_eq!(start + tail.len() as u64, position);
            let total = tail.len() + data.len();
            let padded = total.div_ceil(alignment) * alignment;
            let mut buffer = self.file.alloc_dma_buffer(padded);
            let bytes = buffer.as_bytes_mut();
            bytes[..tail.len()].copy_from_slice(tail);
            bytes[tail.len()..total].copy_from_slice(data);
            bytes[total..].fill(0);
            (Rc::new(buffer), total)
        };
        self.settle().await?;
        {
            let mut state = self.state.borrow_mut();
            // The new partial block: the end of the buffer past the last whole block.
            let end = position + data.len() as u64;
            let from = usize::try_from(self.align_down(end) - start).expect("within buffer");
            state.tail.clear();
            state.tail.extend_from_slice(&buffer.as_bytes()[from..total]);
            debug_assert!(state.tail.len() < alignment);
            state.in_flight = Some(InFlight { start, end, buffer: buffer.clone() });
        }
        let counted = WriteCounted::new();
        let (file, shared) = (self.file.clone(), self.state.clone());
        glommio::spawn_local(async move {
            let _counted = counted;
            let result =
                if fail { Err(injected("write")) } else { write_whole(&file, buffer, start).await };
            let waiters = {
                let mut state = shared.borrow_mut();
                if let Some(write) = state.in_flight.take() {
                    if result.is_ok() {
                        state.landed = write.end;
                    }
                }
                if let Err(error) = result {
                    warn!(%error, "direct write failed; the file refuses further use");
                    state.failed.get_or_insert_with(|| error.to_string());
                }
                std::mem::take(&mut state.waiters)
            };
            for waker in waiters {
                waker.wake();
            }
        })
        .detach();
        if wait {
            return self.settle().await;
        }
        Ok(())
    }

    /// Waits until the logical bytes before `end` are on the device: the write in
    /// flight ends at or past `end` and has landed, or none is in flight (every write
    /// queued so far has landed). Fails if any write failed.
    async fn wait_landed(&self, end: u64) -> io::Result<()> {
        std::future::poll_fn(|context| {
            let mut state = self.state.borrow_mut();
            if state.in_flight.is_none() || state.landed >= end {
                return Poll::Ready(());
            }
            state.waiters.push(context.waker().clone());
            Poll::Pending
        })
        .await;
        self.check_failed()
    }

    /// Reads `len` bytes at `position` (within the logical length): from disk up to the
    /// write in flight, from that write's buffer after.
    async fn read_at(&self, position: u64, len: usize) -> io::Result<FileBytes> {
        self.check_failed()?;
        let end = position + len as u64;
        let in_flight =
            self.state.borrow().in_flight.as_ref().map(|write| (write.start, write.buffer.clone()));
        let Some((start, buffer)) = in_flight.filter(|(start, _)| end > *start) else {
            return Ok(FileBytes::Uring(self.file.read_at(position, len).await.map_err(to_io)?));
        };
        let mut bytes = Vec::with_capacity(len);
        if position < start {
            let on_disk = usize::try_from(start - position).expect("read < 2 GiB");
            let read = self.file.read_at(position, on_disk).await.map_err(to_io)?;
            if read.len() < on_disk {
                return Ok(FileBytes::Owned(read.to_vec()));
            }
            bytes.extend_from_slice(&read);
        }
        let from = usize::try_from(position.max(start) - start).expect("within buffer");
        let to = usize::try_from(end - start).expect("within buffer");
        bytes.extend_from_slice(&buffer.as_bytes()[from..to]);
        Ok(FileBytes::Owned(bytes))
    }
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
mod tests {
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
}
