//! One partition's log: segments named by base offset (`%020d.log`), each with a sparse
//! `.index` and `.timeindex`, byte-compatible with Kafka's. Appends assign offsets and go
//! to the active segment; reads find the batch holding an offset through the segment map,
//! a binary search in the sparse index and a short scan of batch headers, and return the
//! file range to send; recovery re-validates everything after the recovery point.
//!
//! Lives on the shard that owns the partition. All methods take `&self` so that the log
//! can be shared (`Rc`) by the tasks of its shard: state sits in a `RefCell` that is never
//! borrowed across an `.await`; appends, flushes, truncation and retention take the
//! append lock so they run one at a time, while reads run alongside them and see only
//! bytes an append has written into its segment (in direct mode possibly still on their
//! way to the device, read from the write's buffer). An append releases the lock before
//! it waits for its direct-mode write to land, and is acknowledged only after.

mod append;
pub mod index;
mod read;
mod recovery;
mod retention;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use thiserror::Error;
use tracing::warn;

use crate::batch::{Batch, BatchError, HEADER_BYTES};
use crate::clock::Clock;
use crate::io::{BufferedWrite, FaultPlan, FileBytes, IndexFile, IoMode, SegmentFile};
use crate::sync::{FifoGuard, FifoLock};
use index::{BatchExtent, Located, OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use read::find_batch;

pub use crate::limits::{
    CACHE_WINDOW_BYTES_DEFAULT, INDEX_INTERVAL_BYTES_DEFAULT, MAX_MESSAGE_BYTES_DEFAULT,
    RETENTION_MS_DEFAULT, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_MS_DEFAULT,
    WRITEBACK_BYTES_DEFAULT,
};

/// Settings of one log, under Kafka's topic-config names.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub io_mode: IoMode,
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first append is this old.
    pub segment_ms: i64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete old segments while the log is larger; -1 for no limit.
    pub retention_bytes: i64,
    /// `flush.messages`: fsync after this many records; `u64::MAX` leaves it to the OS
    /// and to replication, like Kafka's default.
    pub flush_messages: u64,
    /// `flush.ms`: fsync when the oldest unflushed append is this old (see
    /// [`Log::maybe_flush`]); `u64::MAX` to disable.
    pub flush_ms: u64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `log.writeback.bytes` (Sluice's; RocksDB's `bytes_per_sync`): in buffered mode,
    /// start the device write of every this many bytes appended to a segment without
    /// waiting for it, so dirty pages never pile up to where the kernel throttles the
    /// writer (see [`crate::writeback`]); 0 leaves writeback to the kernel.
    pub writeback_bytes: u64,
    /// `log.buffered.write`: how buffered-mode appends are written (see
    /// [`crate::io::BufferedWrite`]).
    pub buffered_write: BufferedWrite,
    /// `log.page.cache.window.bytes` (Sluice's): in buffered mode, drop the pages of the
    /// log further than this behind its end from the page cache once written back,
    /// across rolls (see [`crate::writeback`]); 0 leaves the page cache to the kernel.
    pub cache_window_bytes: u64,
    /// Faults to inject in tests; `None` in production.
    pub faults: Option<std::sync::Arc<FaultPlan>>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            io_mode: IoMode::Buffered,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: SEGMENT_MS_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            retention_ms: RETENTION_MS_DEFAULT,
            retention_bytes: -1,
            flush_messages: u64::MAX,
            flush_ms: u64::MAX,
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            writeback_bytes: WRITEBACK_BYTES_DEFAULT,
            buffered_write: BufferedWrite::default(),
            cache_window_bytes: CACHE_WINDOW_BYTES_DEFAULT,
            faults: None,
        }
    }
}

/// Where a log starts from on open, as read from the checkpoint files.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenHints {
    /// From `recovery-point-offset-checkpoint`: every offset below is known durable and
    /// indexed; everything from its segment on is re-validated.
    pub recovery_point: i64,
    /// From `log-start-offset-checkpoint`.
    pub log_start_offset: i64,
    /// The machine restarted since the log was last open (a power loss or a kernel crash,
    /// unless the broker stopped cleanly first). Writes not yet on the device may then be
    /// lost in any order, so above the recovery point damage followed by valid batches
    /// is a torn tail, cut as Kafka cuts it. Without a restart only the process stopped:
    /// the page cache kept every write it had taken, and such damage takes the log
    /// offline instead of cutting away the valid batches after it.
    pub machine_restarted: bool,
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange { offset: i64, log_start_offset: i64, log_end_offset: i64 },
    #[error("corrupt log {path} at byte {position}: {reason}")]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("log {dir} is offline: {reason}")]
    Offline { dir: PathBuf, reason: String },
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
    #[error("empty append")]
    EmptyAppend,
    /// The append's admission check failed (see [`Log::append_admitted`]).
    #[error("append refused: {0}")]
    Refused(String),
}

/// True for a write of an index file that failed because the file system is full (or
/// the quota spent). Not for the log file itself: a failed fsync of it may have lost
/// acknowledged bytes (the kernel can mark the pages clean and report the error once),
/// which no later flush can make durable.
fn index_out_of_space(error: &LogError) -> bool {
    matches!(error, LogError::Io { path, source }
        if crate::io::out_of_space(source)
            && matches!(path.extension().and_then(|e| e.to_str()), Some("index" | "timeindex")))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
    pub records: u64,
    pub bytes: u64,
}

/// A range of one segment file to send to a consumer. Holds the file open, so retention
/// may delete the segment meanwhile without breaking the read.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    pub file: Option<Rc<SegmentFile>>,
    pub position: u64,
    pub bytes: u64,
    /// Base offset of the first batch in the range (the requested offset may lie inside it).
    pub first_batch_offset: i64,
}

impl ReadSlice {
    fn empty(offset: i64) -> Self {
        Self { file: None, position: 0, bytes: 0, first_batch_offset: offset }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The bytes of the range (a copy; zero-copy senders use `file` and `position`).
    pub async fn read(&self) -> Result<FileBytes, LogError> {
        match &self.file {
            None => Ok(FileBytes::Owned(Vec::new())),
            Some(file) => {
                let len = usize::try_from(self.bytes).expect("slice < 2 GiB");
                file.read_at(self.position, len).await.map_err(io_error(file.path()))
            }
        }
    }
}

/// The first offset whose record timestamp is at or after a target time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub timestamp: i64,
    pub offset: i64,
}

struct Segment {
    base_offset: i64,
    /// Its descriptor comes and goes with the shard's descriptor cache.
    log: Rc<SegmentFile>,
    /// Opened only to be written or read (the entries are in memory).
    index_file: Rc<IndexFile>,
    time_file: Rc<IndexFile>,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    /// Logical bytes whose append completed.
    size: u64,
    /// One past the last offset in the segment (`base_offset` when empty).
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    bytes_since_last_index_entry: u64,
    /// Wall time of the first append (or of opening, for a reopened segment): `segment.ms`.
    rolling_since_ms: Option<i64>,
}

impl Segment {
    fn relative(&self, offset: i64) -> u32 {
        assert!(offset >= self.base_offset);
        u32::try_from(offset - self.base_offset).expect("relative offset checked at roll")
    }

    /// Adds index entries for a batch that now sits at `position`, as Kafka's
    /// `LogSegment.append` does: an offset-index entry once `index.interval.bytes` have
    /// passed since the last one, and a time-index entry whenever the max grows.
    fn index_batch(&mut self, batch: &Batch<'_>, position: u64, interval: u64) {
        if batch.max_timestamp() > self.max_timestamp {
            self.max_timestamp = batch.max_timestamp();
            self.offset_of_max_timestamp = batch.last_offset();
        }
        if self.bytes_since_last_index_entry > interval {
            let relative = self.relative(batch.last_offset());
            let end = position + batch.size() as u64;
            let position = u32::try_from(position).expect("segment.bytes <= i32::MAX");
            let extent = BatchExtent {
                base_relative_offset: self.relative(batch.base_offset()),
                end_position: u32::try_from(end).expect("segment.bytes <= i32::MAX"),
            };
            self.offset_index
                .append_batch(OffsetEntry { relative_offset: relative, position }, extent);
            let entry = TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: self.relative(self.offset_of_max_timestamp),
            };
            self.time_index.maybe_append(entry);
            self.bytes_since_last_index_entry = 0;
        }
        self.bytes_since_last_index_entry += batch.size() as u64;
        self.next_offset = batch.last_offset() + 1;
    }

    /// Where the batch holding `offset` starts: exact from memory when the index knows
    /// the batch, else a batch boundary at or before it to scan from.
    fn locate(&self, offset: i64) -> Located {
        if offset < self.base_offset || offset >= self.next_offset {
            return Located::ScanFrom(0);
        }
        self.offset_index.locate(self.relative(offset))
    }

    /// Kafka's `onBecomeInactiveSegment`: the time index ends with the segment's max.
    fn close_time_index(&mut self) {
        if self.max_timestamp >= 0 && self.size > 0 {
            let entry = TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: self.relative(self.offset_of_max_timestamp),
            };
            self.time_index.maybe_append(entry);
        }
    }
}

struct State {
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    log_end_offset: i64,
    recovery_point: i64,
    unflushed_records: u64,
    /// Monotonic time of the first append since the last flush.
    unflushed_since_ms: Option<u64>,
    /// The next flush covers every segment, not only those from the recovery point on:
    /// recovery rebuilt indexes it could not write (a full disk).
    flush_all_segments: bool,
    offline: Option<String>,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    fn size_bytes(&self) -> u64 {
        self.segments.values().map(|segment| segment.size).sum()
    }
}

/// A partition log. See the module docs.
pub struct Log {
    dir: PathBuf,
    options: RefCell<LogOptions>,
    state: RefCell<State>,
    append_lock: FifoLock,
    clock: Rc<dyn Clock>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("log_start_offset", &self.log_start_offset())
            .field("log_end_offset", &self.log_end_offset())
            .finish()
    }
}

/// File names of a segment: `<base:020>.log`, `.index`, `.timeindex`.
pub fn segment_file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, extension))
}

/// Creates `dir` if missing and returns the names in it.
fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn validate_options(options: &LogOptions) -> Result<(), LogError> {
    if options.segment_bytes < HEADER_BYTES as u64 || options.segment_bytes > SEGMENT_BYTES_MAX {
        return Err(LogError::InvalidOptions(format!(
            "segment.bytes {} must be in [{HEADER_BYTES}, {SEGMENT_BYTES_MAX}]",
            options.segment_bytes
        )));
    }
    if options.max_message_bytes < HEADER_BYTES {
        return Err(LogError::InvalidOptions("max.message.bytes below a batch header".into()));
    }
    if options.segment_ms <= 0 {
        return Err(LogError::InvalidOptions("segment.ms must be positive".into()));
    }
    Ok(())
}

impl Log {
    async fn open_segment_files(
        &self,
        base_offset: i64,
    ) -> Result<(Rc<SegmentFile>, Rc<IndexFile>, Rc<IndexFile>), LogError> {
        let (mode, faults, writeback_bytes, buffered_write, cache_window) = {
            let options = self.options.borrow();
            (
                options.io_mode,
                options.faults.clone(),
                options.writeback_bytes,
                options.buffered_write,
                options.cache_window_bytes,
            )
        };
        let log_path = self.dir.join(segment_file_name(base_offset, "log"));
        let index_path = self.dir.join(segment_file_name(base_offset, "index"));
        let time_path = self.dir.join(segment_file_name(base_offset, "timeindex"));
        let log = SegmentFile::open(&log_path, mode, faults).await.map_err(io_error(&log_path))?;
        log.set_buffered_write(buffered_write);
        log.set_writeback_bytes(writeback_bytes);
        log.set_cache_window(cache_window);
        // Index files hold no descriptor: they are opened when written or read.
        let index = IndexFile::open(&index_path).await.map_err(io_error(&index_path))?;
        let time = IndexFile::open(&time_path).await.map_err(io_error(&time_path))?;
        Ok((Rc::new(log), Rc::new(index), Rc::new(time)))
    }

    async fn new_segment(&self, base_offset: i64) -> Result<Segment, LogError> {
        let (log, index_file, time_file) = self.open_segment_files(base_offset).await?;
        // A fresh segment: any stale files of the same name (truncation, crash) go.
        if !log.is_empty() {
            log.truncate(0).await.map_err(io_error(log.path()))?;
        }
        for file in [&index_file, &time_file] {
            file.truncate(0).await.map_err(io_error(file.path()))?;
        }
        Ok(Segment {
            base_offset,
            log,
            index_file,
            time_file,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            bytes_since_last_index_entry: 0,
            rolling_since_ms: None,
        })
    }

    async fn delete_segment_files(&self, base_offset: i64) -> Result<(), LogError> {
        for extension in ["log", "index", "timeindex", "txnindex"] {
            let path = self.dir.join(segment_file_name(base_offset, extension));
            match crate::io::remove_file(&path) {
                Ok(()) => {}
                Err(error) => {
                    if error.kind() != io::ErrorKind::NotFound {
                        return Err(io_error(&path)(error));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start_offset
    }

    /// The offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().log_end_offset
    }

    pub fn recovery_point(&self) -> i64 {
        self.state.borrow().recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().size_bytes()
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.state.borrow().segments.keys().copied().collect()
    }

    pub fn options(&self) -> LogOptions {
        self.options.borrow().clone()
    }

    /// Changes settings at run time (AlterConfigs). The I/O mode of open files stays, and
    /// so does the page-cache window (a broker setting the shard may adapt; see
    /// [`set_cache_window`](Self::set_cache_window)).
    pub fn set_options(&self, mut options: LogOptions) -> Result<(), LogError> {
        validate_options(&options)?;
        let mut current = self.options.borrow_mut();
        options.cache_window_bytes = current.cache_window_bytes;
        *current = options;
        Ok(())
    }

    /// The page-cache window (`log.page.cache.window.bytes`) in bytes; 0 = none.
    pub fn cache_window(&self) -> u64 {
        self.options.borrow().cache_window_bytes
    }

    /// Buffered mode: the page-cache window from now on, for the active segment and the
    /// ones after it (`log.page.cache.window.bytes=auto` moves it with the number of logs
    /// appended to). No effect in direct mode.
    pub fn set_cache_window(&self, bytes: u64) {
        self.options.borrow_mut().cache_window_bytes = bytes;
        self.state.borrow().active().log.set_cache_window(bytes);
    }

    /// The reason the log is offline, if it is.
    pub fn offline_reason(&self) -> Option<String> {
        self.state.borrow().offline.clone()
    }

    fn check_online(&self) -> Result<(), LogError> {
        match &self.state.borrow().offline {
            Some(reason) => {
                Err(LogError::Offline { dir: self.dir.clone(), reason: reason.clone() })
            }
            None => Ok(()),
        }
    }

    fn take_offline(&self, reason: String) {
        warn!(dir = %self.dir.display(), %reason, "log taken offline");
        self.state.borrow_mut().offline = Some(reason);
    }

    /// Appends and other writers take the log in call order (a FIFO lock: pipelined
    /// produce requests must land in the order they arrived).
    async fn lock(&self) -> FifoGuard<'_> {
        self.append_lock.lock().await
    }

    /// Waits for every append, truncation and flush before this call to finish, and holds
    /// the log until the guard drops: a partition's role changes under it, between two
    /// appends, never in the middle of one.
    pub async fn exclusive(&self) -> FifoGuard<'_> {
        self.lock().await
    }

    /// Flushes and seals every segment (trims direct-mode padding). After this the files
    /// on disk are exactly Kafka's, and the recovery point equals the log end offset.
    pub async fn close(&self) -> Result<(), LogError> {
        let _permit = self.lock().await;
        if self.state.borrow().offline.is_some() {
            return Ok(());
        }
        self.flush_locked(true).await?;
        let files: Vec<Rc<SegmentFile>> =
            self.state.borrow().segments.values().map(|segment| segment.log.clone()).collect();
        for file in files {
            file.seal().await.map_err(io_error(file.path()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
