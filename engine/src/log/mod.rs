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

pub mod index;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use thiserror::Error;
use tracing::{error, info, warn};

use crate::batch::{self, Batch, BatchError, HEADER_BYTES};
use crate::clock::Clock;
use crate::io::{BufferedWrite, FaultPlan, FileBytes, IndexFile, IoMode, SegmentFile};
use crate::sync::{FifoGuard, FifoLock};
use index::{BatchExtent, Located, OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};

/// Kafka's defaults for the topic-level settings the log obeys.
pub const SEGMENT_BYTES_DEFAULT: u64 = 1 << 30;
pub const SEGMENT_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4096;
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
pub const MAX_MESSAGE_BYTES_DEFAULT: usize = 1_048_588;
/// `log.writeback.bytes` (not a Kafka setting; RocksDB's `bytes_per_sync`): 1 MiB. It
/// keeps the dirty pages of a segment under ~2 MiB, so the kernel's flusher never writes
/// back gigabytes in a burst (which, with inline appends, made a 1-3 ms p99 second early
/// in every half-load run; perf/RESULTS.md, "Page-cache appends inline, drop-behind,
/// idle polling", 2026-11-21), and drop-behind finds the pages it drops already clean.
pub const WRITEBACK_BYTES_DEFAULT: u64 = 1 << 20;
/// `log.page.cache.window.bytes` (not a Kafka setting): 0, the page cache is left to
/// the kernel, as in Kafka. See [`crate::writeback`] for when a window helps.
pub const CACHE_WINDOW_BYTES_DEFAULT: u64 = 0;
/// Positions in `.index` are u32 and Kafka caps `segment.bytes` at `Int.MaxValue`.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Bytes read per I/O when recovery walks a segment.
const RECOVERY_READ_BYTES: usize = 1 << 20;
/// Bytes read per I/O when scanning batch headers after an index lookup.
const SCAN_READ_BYTES: usize = 16 << 10;

const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SCAN_READ_BYTES >= HEADER_BYTES);

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
    /// Opens (creating if needed) the log in `dir` and recovers it: segments from the one
    /// holding `hints.recovery_point` on are re-validated batch by batch and their indexes
    /// rebuilt; the log is cut at the first torn or corrupt batch. Errors mean the
    /// partition cannot be served (the caller takes it offline), never a panic.
    pub async fn open(
        dir: &Path,
        options: LogOptions,
        hints: OpenHints,
        clock: Rc<dyn Clock>,
    ) -> Result<Log, LogError> {
        validate_options(&options)?;
        // Listing the directory is a blocking syscall, done only when a partition is
        // opened (start-up, topic creation), never on the append or fetch path. glommio's
        // blocking pool was used here first; a rare hang waiting on its completion in the
        // tests made the plain call the safer choice.
        let listing = list_dir(dir).map_err(io_error(dir))?;

        let mut bases = Vec::new();
        let mut leftovers = Vec::new();
        for name in &listing {
            match parse_segment_name(name) {
                Some((base, "log")) => bases.push(base),
                Some((_, "index" | "timeindex" | "txnindex")) => {}
                // Kafka's in-progress suffixes: a crash left them; they are not the log.
                Some((_, extension))
                    if extension.ends_with(".deleted")
                        || extension.ends_with(".cleaned")
                        || extension.ends_with(".swap")
                        || extension.ends_with(".tmp") =>
                {
                    leftovers.push(dir.join(name));
                }
                _ => {}
            }
        }
        for path in leftovers {
            warn!(path = %path.display(), "removing leftover file from an interrupted operation");
            crate::io::remove_file(&path).map_err(io_error(&path))?;
        }
        bases.sort_unstable();

        let log = Log {
            dir: dir.to_path_buf(),
            options: RefCell::new(options),
            state: RefCell::new(State {
                segments: BTreeMap::new(),
                log_start_offset: hints.log_start_offset.max(0),
                log_end_offset: 0,
                recovery_point: hints.recovery_point.max(0),
                unflushed_records: 0,
                unflushed_since_ms: None,
                flush_all_segments: false,
                offline: None,
            }),
            append_lock: FifoLock::new(),
            clock,
        };
        log.recover(&bases, hints).await?;
        Ok(log)
    }

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

    async fn recover(&self, bases: &[i64], hints: OpenHints) -> Result<(), LogError> {
        let recover_from = bases
            .iter()
            .rev()
            .find(|base| **base <= hints.recovery_point)
            .or(bases.first())
            .copied()
            .unwrap_or(0);
        let interval = self.options.borrow().index_interval_bytes;
        // Where writes may have been lost out of order (see `OpenHints`).
        let reordered_from =
            if hints.machine_restarted { hints.recovery_point.max(0) } else { i64::MAX };
        let mut segments: BTreeMap<i64, Segment> = BTreeMap::new();
        let mut cut = false;
        for (at, &base) in bases.iter().enumerate() {
            if cut {
                self.delete_segment_files(base).await?;
                continue;
            }
            let (log, index_file, time_file) = self.open_segment_files(base).await?;
            let mut segment = Segment {
                base_offset: base,
                size: log.len(),
                log,
                index_file,
                time_file,
                offset_index: OffsetIndex::default(),
                time_index: TimeIndex::default(),
                next_offset: base,
                max_timestamp: -1,
                offset_of_max_timestamp: base,
                bytes_since_last_index_entry: 0,
                rolling_since_ms: Some(self.clock.wall_ms()),
            };
            let next_base = bases.get(at + 1).copied();
            // A rolled segment whose seal had not run at the crash still ends in zeros
            // (direct-mode padding and space allocated ahead): its size on disk is not
            // its length, so it is scanned like the segments after the recovery point.
            let trusted =
                base < recover_from && next_base.is_some() && !ends_in_zeros(&segment.log).await?;
            if trusted && self.load_indexes(&mut segment, next_base).await? {
                segments.insert(base, segment);
                continue;
            }
            let expected_first = segments.values().next_back().map_or(base, |s| s.next_offset);
            let outcome = self
                .recover_segment(&mut segment, expected_first, interval, reordered_from)
                .await?;
            let path = self.dir.join(segment_file_name(base, "log"));
            let damaged = |position: u64, offset: i64, reason: String| {
                error!(
                    segment = %path.display(), position, offset, %reason,
                    "damaged log followed by valid batches: not a torn tail; the partition stays offline with its files as they are"
                );
                LogError::Corrupt { path: path.clone(), position, reason }
            };
            // Segments follow each other without a gap. One that ends short of where the
            // next begins lost batches; with valid batches after them (the next segment)
            // that is damage, not a torn tail, unless the machine restarted.
            let lost_before_next = next_base.filter(|next| *next != segment.next_offset);
            if let Some(next) = lost_before_next {
                if !matches!(outcome, Recovered::Damaged { .. })
                    && segment.next_offset < reordered_from
                    && self.starts_with_valid_batch(next).await?
                {
                    let (position, reason) = match &outcome {
                        Recovered::Cut { reason, position, .. } => (*position, reason.clone()),
                        _ => (segment.size, "the segment ends early".to_string()),
                    };
                    let offset = segment.next_offset;
                    return Err(damaged(
                        position,
                        offset,
                        format!(
                            "batches from offset {offset} are missing ({reason}) before segment {next}"
                        ),
                    ));
                }
            }
            let position = match outcome {
                Recovered::Damaged { reason, position, offset } => {
                    return Err(damaged(
                        position,
                        offset,
                        format!(
                            "the batch at offset {offset} is damaged ({reason}) and valid batches follow it"
                        ),
                    ));
                }
                Recovered::Cut { reason, position, bytes } => {
                    warn!(
                        segment = %path.display(), position, bytes_cut = bytes, %reason,
                        "torn tail: segment cut at its last whole batch during recovery"
                    );
                    position
                }
                Recovered::Padding { position } => position,
                Recovered::Clean => segment.size,
            };
            self.finish_scan(&mut segment, position).await?;
            if let Some(next) = lost_before_next {
                warn!(
                    dir = %self.dir.display(), segment = next, expected = segment.next_offset,
                    later_segments = bases.len() - at - 1,
                    "the log ends before the next segment begins; dropping it and the rest"
                );
                cut = true;
            }
            if segment.size == 0 {
                segment.rolling_since_ms = None;
            }
            segments.insert(base, segment);
        }
        let first_base = bases.first().copied().unwrap_or(hints.log_start_offset.max(0));
        if segments.is_empty() {
            let segment = self.new_segment(first_base).await?;
            segments.insert(first_base, segment);
        }
        {
            let mut state = self.state.borrow_mut();
            state.segments = segments;
            state.log_end_offset = state.active().next_offset;
            let log_end_offset = state.log_end_offset;
            let first = *state.segments.keys().next().expect("non-empty");
            state.log_start_offset = state.log_start_offset.clamp(first, log_end_offset);
            // The hint may point past what survived; the flush below moves it to the end.
            state.recovery_point = state.recovery_point.min(log_end_offset);
        }
        // Make the recovered state durable and indexed, then trust it. On a full disk
        // the rebuilt index files may not fit: the log is served as recovered (its
        // indexes are in memory), the recovery point stays where it was, so a crash
        // before a flush succeeds scans the same bytes again, and the next flush (the
        // scheduled one when `flush.ms` or `flush.messages` is set, else the one at
        // shutdown) writes every segment's indexes again.
        if let Err(error) = self.flush_locked(true).await {
            if !index_out_of_space(&error) || self.offline_reason().is_some() {
                return Err(error);
            }
            warn!(
                dir = %self.dir.display(), %error,
                "the recovered log's indexes could not be written: no space left; serving it as recovered, the next flush writes them"
            );
            let now = self.clock.monotonic_ms();
            let mut state = self.state.borrow_mut();
            state.unflushed_since_ms.get_or_insert(now);
            state.flush_all_segments = true;
        }
        info!(
            dir = %self.dir.display(),
            log_start_offset = self.log_start_offset(),
            log_end_offset = self.log_end_offset(),
            segments = self.segment_count(),
            "log opened"
        );
        Ok(())
    }

    /// Loads a trusted segment's indexes; returns false when they are missing or corrupt
    /// (the caller then rebuilds them by scanning the segment).
    async fn load_indexes(
        &self,
        segment: &mut Segment,
        next_base: Option<i64>,
    ) -> Result<bool, LogError> {
        let index_file = &segment.index_file;
        let index_bytes = index_file.read_all().await.map_err(io_error(index_file.path()))?;
        let time_file = &segment.time_file;
        let time_bytes = time_file.read_all().await.map_err(io_error(time_file.path()))?;
        let Ok(offset_index) = OffsetIndex::decode(&index_bytes, segment.size) else {
            warn!(segment = %segment.log.path().display(), "offset index corrupt, rebuilding");
            return Ok(false);
        };
        let Ok(time_index) = TimeIndex::decode(&time_bytes) else {
            warn!(segment = %segment.log.path().display(), "time index corrupt, rebuilding");
            return Ok(false);
        };
        if segment.size > 0 && offset_index.is_empty() && segment.size > INDEX_REBUILD_FREE {
            // Kafka writes the first entry after one interval; a big segment with none is
            // an index that was lost.
            return Ok(false);
        }
        segment.offset_index = offset_index;
        segment.time_index = time_index;
        segment.next_offset = next_base.unwrap_or(segment.base_offset);
        if let Some(last) = segment.time_index.last() {
            segment.max_timestamp = last.timestamp;
            segment.offset_of_max_timestamp = segment.base_offset + i64::from(last.relative_offset);
        }
        Ok(true)
    }

    /// Walks every batch of a segment: validates it and rebuilds the indexes, up to the
    /// first invalid batch. Zeros from there to the end are padding (direct mode writes
    /// whole blocks and allocates ahead; not a sign of damage); anything else there is a
    /// torn tail, the bytes a crash left half-written (a partial batch at the end of a
    /// file, zeros where a direct-mode write had not landed, a batch whose header reached
    /// the disk and whose body did not). Nothing is cut here: the caller cuts
    /// (`finish_scan`) once it has checked that no valid batches follow in the next
    /// segment.
    ///
    /// When a valid batch follows the invalid one right after it, the damage is not what
    /// a crash leaves, and the segment is reported `Damaged` so the log stays offline with
    /// its bytes intact; except from offset `reordered_from` on, where the machine may
    /// have lost writes in any order (see `OpenHints::machine_restarted`). Direct mode
    /// acknowledges an append only once every earlier write of the file has landed, and
    /// rolls only once the old segment's writes have, so a hole followed by landed data
    /// holds only unacknowledged appends; such a hole reads as zeros, whose batch length
    /// is not a length, so it is a tail, not damage.
    async fn recover_segment(
        &self,
        segment: &mut Segment,
        expected_first: i64,
        interval: u64,
        reordered_from: i64,
    ) -> Result<Recovered, LogError> {
        let file = segment.log.clone();
        let file_len = file.len();
        let mut position = 0u64;
        let mut expected = expected_first.max(segment.base_offset);
        let mut buffer: Option<(u64, FileBytes)> = None;
        segment.offset_index = OffsetIndex::default();
        segment.time_index = TimeIndex::default();
        let outcome = loop {
            if position >= file_len {
                break Recovered::Clean;
            }
            // Make sure the buffer holds the header, then the whole batch.
            let mut need = HEADER_BYTES as u64;
            // The batch's size, once its length field is read and the batch fits the file.
            let mut intact_size: Option<u64> = None;
            let checked = loop {
                let have = buffer.as_ref().map_or(0, |(start, bytes)| {
                    if *start <= position && position < *start + bytes.len() as u64 {
                        *start + bytes.len() as u64 - position
                    } else {
                        0
                    }
                });
                if have >= need.min(file_len - position) {
                    let (start, bytes) = buffer.as_ref().expect("have > 0");
                    let from = usize::try_from(position - start).expect("in buffer");
                    let window = &bytes[from..];
                    if need == HEADER_BYTES as u64 {
                        match batch::batch_size(window) {
                            Ok(size) if window.len() >= HEADER_BYTES => {
                                need = size as u64;
                                if need > file_len - position {
                                    break Err(format!(
                                        "batch of {size} bytes runs past the end of the file"
                                    ));
                                }
                                intact_size = Some(need);
                                continue;
                            }
                            Ok(_) => break Err("truncated batch header".to_string()),
                            Err(error) => break Err(error.to_string()),
                        }
                    }
                    let size = usize::try_from(need).expect("batch < 2 GiB");
                    let (one, _) = match Batch::parse(&window[..size]) {
                        Ok(parsed) => parsed,
                        Err(error) => break Err(error.to_string()),
                    };
                    if let Err(error) = one.validate(usize::MAX) {
                        break Err(error.to_string());
                    }
                    // Offsets are dense: a base offset flipped on disk (it is outside the
                    // CRC) shows up here. Compaction will relax this for compacted topics.
                    if one.base_offset() != expected {
                        break Err(format!(
                            "batch base offset {} where {expected} was expected",
                            one.base_offset()
                        ));
                    }
                    if one.last_offset() - segment.base_offset > i64::from(i32::MAX) {
                        break Err("offset too far from the segment base".to_string());
                    }
                    segment.index_batch(&one, position, interval);
                    expected = one.last_offset() + 1;
                    break Ok(need);
                }
                let want = need.max(RECOVERY_READ_BYTES as u64).min(file_len - position);
                let want = usize::try_from(want).expect("read < 2 GiB");
                let bytes = file.read_at(position, want).await.map_err(io_error(file.path()))?;
                buffer = Some((position, bytes));
            };
            match checked {
                Ok(size) => position += size,
                Err(reason) => {
                    // Zeros to the end are what a direct-mode file has after its last
                    // batch until it is sealed, whichever mode opens it now. (Batches
                    // lost from the end of a segment with segments after it leave a
                    // gap in the offsets, which the caller checks.)
                    let padding = zeros_to_end(&file, position).await?;
                    if !padding && expected < reordered_from {
                        let followed = match intact_size {
                            Some(size) => valid_batch_at(&file, position + size).await?,
                            None => false,
                        };
                        if followed {
                            return Ok(Recovered::Damaged { reason, position, offset: expected });
                        }
                    }
                    if padding {
                        if file_len - position > PADDING_QUIET_BYTES {
                            info!(
                                segment = %file.path().display(), position,
                                zeros = file_len - position,
                                "trimming zeros after the last batch (unsealed segment)"
                            );
                        }
                        break Recovered::Padding { position };
                    }
                    break Recovered::Cut { reason, position, bytes: file_len - position };
                }
            }
        };
        segment.size = position;
        Ok(outcome)
    }

    /// Ends the recovery of a scanned segment: cuts the file at `position` (a torn tail or
    /// padding) and empties its index files (the flush at the end of recovery rewrites
    /// them from memory).
    async fn finish_scan(&self, segment: &mut Segment, position: u64) -> Result<(), LogError> {
        let file = segment.log.clone();
        if position < file.len() {
            file.truncate(position).await.map_err(io_error(file.path()))?;
        }
        segment.size = position;
        for index_file in [&segment.index_file, &segment.time_file] {
            index_file.truncate(0).await.map_err(io_error(index_file.path()))?;
        }
        Ok(())
    }

    /// True when the segment `base` starts with a whole, valid batch.
    async fn starts_with_valid_batch(&self, base: i64) -> Result<bool, LogError> {
        let path = self.dir.join(segment_file_name(base, "log"));
        let file =
            SegmentFile::open(&path, IoMode::Buffered, None).await.map_err(io_error(&path))?;
        valid_batch_at(&file, 0).await
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

    /// Appends one or more batches laid out back to back in `batches`: validates every
    /// batch (magic, CRC, size against `max.message.bytes`) before writing any, assigns
    /// offsets by rewriting base offsets in place, and writes the bytes as they are.
    pub async fn append(&self, batches: &mut [u8]) -> Result<AppendInfo, LogError> {
        self.append_then(batches, |_| {}).await
    }

    /// [`append`](Self::append), calling `on_appended` with the offsets assigned at the
    /// moment the batches become part of the log (the log end offset moves), before any
    /// `.await`: state kept beside the log (producer sequences, open transactions, which
    /// bound what read_committed fetches may see) then changes together with the log end.
    /// In direct mode the append is acknowledged later, once its write has landed, and
    /// reads and other appends run meanwhile.
    pub async fn append_then(
        &self,
        batches: &mut [u8],
        on_appended: impl FnOnce(&AppendInfo),
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        if batches.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        let max_message_bytes = self.options.borrow().max_message_bytes;
        for batch in batch::BatchIter::new(batches) {
            batch?.validate(max_message_bytes)?;
        }
        let permit = self.lock().await;
        self.check_online()?;

        // Assign offsets: base offsets are outside the CRC, so this is a pure rewrite.
        let base_offset = self.log_end_offset();
        let mut next = base_offset;
        let mut at = 0usize;
        while at < batches.len() {
            let size = batch::batch_size(&batches[at..])?;
            let (one, _) = Batch::parse(&batches[at..])?;
            let delta = i64::from(one.last_offset_delta());
            batch::set_base_offset(&mut batches[at..at + size], next);
            next += delta + 1;
            at += size;
        }
        let last_offset = next - 1;
        let bytes_len = batches.len() as u64;

        if self.should_roll(bytes_len, last_offset) {
            self.roll(base_offset).await?;
        }
        let (file, position_expected) = {
            let state = self.state.borrow();
            (state.active().log.clone(), state.active().size)
        };
        let position = match file.append(batches).await {
            Ok(position) => position,
            Err(error) => {
                // Put the file back as it was; if even that fails the log cannot be trusted
                // until recovery runs, so it goes offline. (It fails when an earlier
                // direct-mode write failed: bytes of appends already acknowledged are lost.)
                if let Err(undo) = file.truncate(position_expected).await {
                    self.take_offline(format!("append failed ({error}) and undo failed ({undo})"));
                }
                return Err(io_error(file.path())(error));
            }
        };
        assert_eq!(position, position_expected);

        let interval = self.options.borrow().index_interval_bytes;
        let now_ms = self.clock.wall_ms();
        let mut records = 0u64;
        let mut max_timestamp = -1i64;
        let mut offset_of_max_timestamp = base_offset;
        {
            let mut state = self.state.borrow_mut();
            let segment = state.active_mut();
            let mut batch_position = position;
            for one in batch::BatchIter::new(batches) {
                let one = one.expect("validated above");
                segment.index_batch(&one, batch_position, interval);
                batch_position += one.size() as u64;
                records += u64::try_from(one.record_count()).unwrap_or(0);
                if one.max_timestamp() > max_timestamp {
                    max_timestamp = one.max_timestamp();
                    offset_of_max_timestamp = one.last_offset();
                }
            }
            segment.size = batch_position;
            segment.rolling_since_ms.get_or_insert(now_ms);
            assert_eq!(segment.next_offset, next);
            state.log_end_offset = next;
            state.unflushed_records += records;
            state.unflushed_since_ms.get_or_insert(self.clock.monotonic_ms());
        }
        let info = AppendInfo {
            base_offset,
            last_offset,
            max_timestamp,
            offset_of_max_timestamp,
            records,
            bytes: bytes_len,
        };
        on_appended(&info);
        let flush_messages = self.options.borrow().flush_messages;
        if self.state.borrow().unflushed_records >= flush_messages {
            self.flush_locked(false).await?;
        }
        // Direct mode: the write may still be in flight. Acknowledge only once it is on
        // the device (a process killed after the acknowledgement must not lose the
        // batch), but let the next append in meanwhile: its copy overlaps this write.
        drop(permit);
        if let Err(error) = file.wait_landed(position + bytes_len).await {
            // The log already counts these bytes: it cannot go on until recovery runs.
            self.take_offline(format!("a write to {} failed: {error}", file.path().display()));
            return Err(io_error(file.path())(error));
        }
        Ok(info)
    }

    fn should_roll(&self, bytes_len: u64, last_offset: i64) -> bool {
        let options = self.options.borrow();
        let state = self.state.borrow();
        let active = state.active();
        if active.size == 0 {
            return false;
        }
        let too_big = active.size + bytes_len > options.segment_bytes;
        let too_old = active
            .rolling_since_ms
            .is_some_and(|since| self.clock.wall_ms().saturating_sub(since) >= options.segment_ms);
        let offsets_overflow = last_offset - active.base_offset > i64::from(i32::MAX);
        too_big || too_old || offsets_overflow
    }

    /// Rolls now if the active segment holds anything (Kafka's `log.roll()`, used by tools
    /// and tests). Returns the new active segment's base offset.
    pub async fn roll_active(&self) -> Result<i64, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        let (empty, log_end_offset) = {
            let state = self.state.borrow();
            (state.active().size == 0, state.log_end_offset)
        };
        if !empty {
            self.roll(log_end_offset).await?;
        }
        Ok(log_end_offset)
    }

    /// Starts a new active segment at `base_offset` (the log end offset).
    async fn roll(&self, base_offset: i64) -> Result<(), LogError> {
        // The old segment's last direct-mode write may still be in flight: wait for it
        // here, where a failure can still take the log offline (the detached seal below
        // could only log it).
        let old_file = self.state.borrow().active().log.clone();
        if let Err(error) = old_file.writes_landed().await {
            self.take_offline(format!("a write to {} failed: {error}", old_file.path().display()));
            return Err(io_error(old_file.path())(error));
        }
        let segment = self.new_segment(base_offset).await?;
        segment.log.follow(&old_file);
        let mut state = self.state.borrow_mut();
        assert_eq!(state.log_end_offset, base_offset);
        let old = state.active_mut();
        old.close_time_index();
        state.segments.insert(base_offset, segment);
        drop(state);
        // Seal the old segment off the append path (Kafka flushes it asynchronously too;
        // KAFKA-9693 showed what a synchronous fsync on roll costs). Until the seal lands,
        // recovery treats direct-mode zero padding at its end as padding, not damage.
        glommio::spawn_local(async move {
            if let Err(error) = old_file.seal().await {
                warn!(path = %old_file.path().display(), %error, "sealing a rolled segment failed");
            }
        })
        .detach();
        Ok(())
    }

    /// fsyncs everything appended so far, writes pending index entries, and moves the
    /// recovery point to the log end offset. Acks that need durability wait for this.
    pub async fn flush(&self) -> Result<(), LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        self.flush_locked(false).await
    }

    /// Flushes when `flush.ms` has passed since the oldest unflushed append. The shard
    /// calls this periodically.
    pub async fn maybe_flush(&self) -> Result<bool, LogError> {
        let flush_ms = self.options.borrow().flush_ms;
        let due = self
            .state
            .borrow()
            .unflushed_since_ms
            .is_some_and(|since| self.clock.monotonic_ms().saturating_sub(since) >= flush_ms);
        if due {
            self.flush().await?;
        }
        Ok(due)
    }

    /// Flush with the append lock held (or during open, before anyone else has the log).
    async fn flush_locked(&self, all_segments: bool) -> Result<(), LogError> {
        struct Pending {
            base: i64,
            active: bool,
            log: Rc<SegmentFile>,
            index: (Rc<IndexFile>, u64, Vec<u8>),
            time: (Rc<IndexFile>, u64, Vec<u8>),
        }
        let (target, pending, all_segments) = {
            let state = self.state.borrow();
            let all_segments = all_segments || state.flush_all_segments;
            let from = if all_segments {
                i64::MIN
            } else {
                state
                    .segments
                    .range(..=state.recovery_point)
                    .next_back()
                    .map_or(i64::MIN, |(base, _)| *base)
            };
            let active_base = state.active().base_offset;
            let pending: Vec<Pending> = state
                .segments
                .range(from..)
                .map(|(base, segment)| {
                    let (index_at, index_bytes) = segment.offset_index.unflushed();
                    let (time_at, time_bytes) = segment.time_index.unflushed();
                    Pending {
                        base: *base,
                        active: *base == active_base,
                        log: segment.log.clone(),
                        index: (segment.index_file.clone(), index_at, index_bytes),
                        time: (segment.time_file.clone(), time_at, time_bytes),
                    }
                })
                .collect();
            (state.log_end_offset, pending, all_segments)
        };
        let result: Result<(), LogError> = async {
            for one in &pending {
                // Open, write, sync, close: an index file holds no descriptor after.
                for (file, at, bytes) in [&one.index, &one.time] {
                    file.write_at(*at, bytes).await.map_err(io_error(file.path()))?;
                }
                // A rolled segment is sealed (direct-mode padding trimmed) before the
                // recovery point passes it: recovery trusts the size of such segments.
                let synced = if one.active { one.log.sync().await } else { one.log.seal().await };
                synced.map_err(io_error(one.log.path()))?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            // A failed fsync leaves the page cache in an unknown state (fsyncgate): the
            // recovery point stays where it was and the error goes to the caller.
            warn!(dir = %self.dir.display(), %error, "flush failed");
            // A failed direct-mode write lost bytes of acknowledged appends: the log
            // cannot go on from here until recovery has cut it.
            if let Some(one) = pending.iter().find(|one| one.log.write_failed()) {
                self.take_offline(format!("a write to {} failed", one.log.path().display()));
            }
            return Err(error);
        }
        let mut state = self.state.borrow_mut();
        for one in &pending {
            if let Some(segment) = state.segments.get_mut(&one.base) {
                segment.offset_index.mark_flushed();
                segment.time_index.mark_flushed();
            }
        }
        state.recovery_point = state.recovery_point.max(target);
        if all_segments {
            state.flush_all_segments = false;
        }
        if state.log_end_offset == target {
            state.unflushed_records = 0;
            state.unflushed_since_ms = None;
        }
        Ok(())
    }

    /// Finds the bytes to send for a fetch at `offset`: from the start of the batch holding
    /// `offset`, up to `max_bytes`, never past `max_offset` (exclusive: the high watermark
    /// or the log end offset), within one segment like Kafka. With `min_one_batch` the
    /// first batch is returned whole even when larger than `max_bytes` (KIP-74). The range
    /// may end inside a batch when `max_bytes` cuts it; clients drop the partial batch.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: u64,
        max_offset: i64,
        min_one_batch: bool,
    ) -> Result<ReadSlice, LogError> {
        self.check_online()?;
        let (file, segment_base, start, segment_end, limit) = {
            let state = self.state.borrow();
            if offset < state.log_start_offset || offset > state.log_end_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.log_end_offset,
                });
            }
            let max_offset = max_offset.min(state.log_end_offset);
            if offset >= max_offset {
                return Ok(ReadSlice::empty(offset));
            }
            // The segment holding `offset`: the last with base <= offset whose range
            // reaches it (an offset at a segment's end lives in the next one).
            let Some(segment) = state
                .segments
                .range(..=offset)
                .rev()
                .find(|(_, segment)| offset < segment.next_offset)
                .map(|(_, segment)| segment)
                .or_else(|| state.segments.range(offset + 1..).next().map(|(_, s)| s))
            else {
                return Ok(ReadSlice::empty(offset));
            };
            let start = segment.locate(offset);
            let limit = (max_offset < segment.next_offset)
                .then(|| (max_offset, segment.locate(max_offset)));
            (segment.log.clone(), segment.base_offset, start, segment.size, limit)
        };
        // Most lookups end here, from memory; a scan reads batch headers otherwise.
        let (position, first_base_offset, first_size) = match start {
            Located::Exact { position, base_relative_offset, size } => (
                u64::from(position),
                segment_base + i64::from(base_relative_offset),
                u64::from(size),
            ),
            Located::ScanFrom(from) => {
                match find_batch(&file, u64::from(from), segment_end, offset).await? {
                    Some((position, header)) => (position, header.base_offset, header.size),
                    None => return Ok(ReadSlice::empty(offset)),
                }
            }
        };
        let end = match limit {
            None => segment_end,
            Some((_, Located::Exact { position, .. })) => u64::from(position),
            Some((limit, Located::ScanFrom(from))) => {
                find_batch(&file, u64::from(from).max(position), segment_end, limit)
                    .await?
                    .map_or(segment_end, |(at, _)| at)
            }
        };
        if end <= position {
            return Ok(ReadSlice::empty(offset));
        }
        let mut bytes = (end - position).min(max_bytes);
        if min_one_batch && bytes < first_size {
            bytes = first_size.min(end - position);
        }
        if bytes == 0 {
            return Ok(ReadSlice::empty(offset));
        }
        Ok(ReadSlice { file: Some(file), position, bytes, first_batch_offset: first_base_offset })
    }

    /// The first offset with a record timestamp >= `timestamp` (ListOffsets by time), or
    /// `None` when every record is older. Follows Kafka: the first segment whose max
    /// timestamp reaches the target, the time index, the offset index, then a scan.
    /// Compressed batches are resolved to their base offset (the record-level answer needs
    /// a codec; the broker refines it).
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        self.check_online()?;
        let (file, start, end, log_start_offset) = {
            let state = self.state.borrow();
            let Some(segment) =
                state.segments.values().find(|segment| segment.max_timestamp >= timestamp)
            else {
                return Ok(None);
            };
            let from_offset =
                segment.time_index.lookup(timestamp).map_or(segment.base_offset, |e| {
                    segment.base_offset + i64::from(e.relative_offset)
                });
            let start = segment
                .offset_index
                .lookup(segment.relative(from_offset))
                .map_or(0, |entry| u64::from(entry.position));
            (segment.log.clone(), start, segment.size, state.log_start_offset)
        };
        let mut position = start;
        while position < end {
            let header = read_header(&file, position).await?;
            if header.max_timestamp >= timestamp {
                let size = usize::try_from(header.size).expect("batch < 2 GiB");
                let bytes = file.read_at(position, size).await.map_err(io_error(file.path()))?;
                let (one, _) = Batch::parse(&bytes).map_err(|error| LogError::Corrupt {
                    path: file.path().to_path_buf(),
                    position,
                    reason: error.to_string(),
                })?;
                let found = match one.timestamp_type() {
                    batch::TimestampType::LogAppendTime => {
                        Some((one.base_offset(), one.max_timestamp()))
                    }
                    batch::TimestampType::CreateTime => match one.record_offsets_and_timestamps() {
                        Some(records) => records.into_iter().find(|(_, ts)| *ts >= timestamp),
                        None => Some((one.base_offset(), one.max_timestamp())),
                    },
                };
                if let Some((offset, found_timestamp)) = found {
                    let offset = offset.max(log_start_offset);
                    return Ok(Some(TimestampOffset { timestamp: found_timestamp, offset }));
                }
            }
            position += header.size;
        }
        Ok(None)
    }

    /// The largest record timestamp and its offset (ListOffsets MAX_TIMESTAMP, KIP-734).
    pub fn max_timestamp_and_offset(&self) -> Option<TimestampOffset> {
        let state = self.state.borrow();
        state
            .segments
            .values()
            .filter(|segment| segment.max_timestamp >= 0)
            .max_by_key(|segment| segment.max_timestamp)
            .map(|segment| TimestampOffset {
                timestamp: segment.max_timestamp,
                offset: segment.offset_of_max_timestamp,
            })
    }

    /// Removes every record at or after `offset` (a follower truncating to its leader).
    /// The batch holding `offset` goes whole, so the new log end offset is that batch's
    /// base offset (the same as `offset` whenever it is a batch boundary).
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        let (log_end_offset, first_base) = {
            let state = self.state.borrow();
            (state.log_end_offset, *state.segments.keys().next().expect("non-empty"))
        };
        if offset >= log_end_offset {
            return Ok(log_end_offset);
        }
        if offset <= first_base {
            return self.truncate_fully_locked(offset.max(0)).await;
        }
        // Whole segments at or above the target go; the one below holds the cut.
        let doomed: Vec<i64> =
            self.state.borrow().segments.range(offset..).map(|(base, _)| *base).collect();
        let old_active = self.state.borrow().active().log.clone();
        let mut deleted = Vec::new();
        for base in &doomed {
            deleted.extend(self.state.borrow_mut().segments.remove(base).map(|s| s.log));
            if let Some(file) = deleted.last() {
                keep_open_for_readers(file.clone()).await;
            }
            self.delete_segment_files(*base).await?;
        }
        if !doomed.is_empty() {
            // The segment holding the cut is active again: the cached pages the deleted
            // active one kept track of come back to it, but the deleted segments'.
            let active = self.state.borrow().active().log.clone();
            active.take_back(&old_active);
            for file in &deleted {
                active.forget(file);
            }
        }
        let (file, index_file, time_file, start, size) = {
            let state = self.state.borrow();
            let segment = state.active();
            let start = match segment.locate(offset) {
                Located::Exact { position, .. } | Located::ScanFrom(position) => position,
            };
            (
                segment.log.clone(),
                segment.index_file.clone(),
                segment.time_file.clone(),
                u64::from(start),
                segment.size,
            )
        };
        let cut = find_batch(&file, start, size, offset).await?;
        let (position, new_end) = match cut {
            Some((position, header)) => (position, header.base_offset),
            None => (size, self.state.borrow().active().next_offset),
        };
        file.truncate(position).await.map_err(io_error(file.path()))?;
        let (index_len, time_len) = {
            let mut state = self.state.borrow_mut();
            let segment = state.active_mut();
            segment.size = position;
            segment.next_offset = new_end;
            segment.offset_index.truncate_to_position(position);
            let relative_end = segment.relative(new_end);
            segment.time_index.truncate_to_offset(relative_end);
            match segment.time_index.last() {
                Some(last) => {
                    segment.max_timestamp = last.timestamp;
                    segment.offset_of_max_timestamp =
                        segment.base_offset + i64::from(last.relative_offset);
                }
                None => {
                    segment.max_timestamp = -1;
                    segment.offset_of_max_timestamp = segment.base_offset;
                }
            }
            segment.bytes_since_last_index_entry = 0;
            state.log_end_offset = new_end;
            state.recovery_point = state.recovery_point.min(new_end);
            state.log_start_offset = state.log_start_offset.min(new_end);
            let segment = state.active();
            (segment.offset_index.file_len(), segment.time_index.file_len())
        };
        // Cut stale index entries on disk now, so they never describe newer bytes.
        index_file.truncate(index_len).await.map_err(io_error(index_file.path()))?;
        time_file.truncate(time_len).await.map_err(io_error(time_file.path()))?;
        Ok(new_end)
    }

    async fn truncate_fully_locked(&self, start: i64) -> Result<i64, LogError> {
        let bases: Vec<i64> = self.state.borrow().segments.keys().copied().collect();
        for base in &bases {
            let removed = self.state.borrow_mut().segments.remove(base);
            if let Some(segment) = removed {
                keep_open_for_readers(segment.log).await;
            }
            self.delete_segment_files(*base).await?;
        }
        let segment = self.new_segment(start).await?;
        let mut state = self.state.borrow_mut();
        state.segments.insert(start, segment);
        state.log_start_offset = start;
        state.log_end_offset = start;
        state.recovery_point = start;
        state.unflushed_records = 0;
        state.unflushed_since_ms = None;
        Ok(start)
    }

    /// Moves the log start offset forward (DeleteRecords); whole segments below it are
    /// deleted by the next [`Log::apply_retention`]. Returns the new log start offset.
    pub fn advance_log_start_offset(&self, offset: i64) -> Result<i64, LogError> {
        self.check_online()?;
        let mut state = self.state.borrow_mut();
        if offset > state.log_end_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: state.log_start_offset,
                log_end_offset: state.log_end_offset,
            });
        }
        state.log_start_offset = state.log_start_offset.max(offset);
        Ok(state.log_start_offset)
    }

    /// Deletes whole non-active segments, oldest first, while one of Kafka's rules holds:
    /// every record is below the log start offset; the newest record is older than
    /// `retention.ms`; or the log is larger than `retention.bytes` without the segment.
    /// Returns the base offsets of the deleted segments.
    pub async fn apply_retention(&self) -> Result<Vec<i64>, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        let now_ms = self.clock.wall_ms();
        let (retention_ms, retention_bytes) = {
            let options = self.options.borrow();
            (options.retention_ms, options.retention_bytes)
        };
        let doomed: Vec<i64> = {
            let state = self.state.borrow();
            let mut size = state.size_bytes();
            let mut doomed = Vec::new();
            let segments: Vec<&Segment> = state.segments.values().collect();
            for pair in segments.windows(2) {
                let (segment, next) = (pair[0], pair[1]);
                let below_start = next.base_offset <= state.log_start_offset;
                let expired = retention_ms >= 0
                    && segment.size > 0
                    && now_ms.saturating_sub(segment.max_timestamp) > retention_ms;
                let over_size = retention_bytes >= 0
                    && size.saturating_sub(segment.size) >= retention_bytes as u64
                    && size > retention_bytes as u64;
                if !(below_start || expired || over_size) {
                    break;
                }
                size -= segment.size;
                doomed.push(segment.base_offset);
            }
            doomed
        };
        for base in &doomed {
            let removed = {
                let mut state = self.state.borrow_mut();
                let removed = state.segments.remove(base).map(|segment| segment.log);
                if let Some(file) = &removed {
                    // Its pages go with the file; the active segment stops tracking them.
                    state.active().log.forget(file);
                }
                let first = *state.segments.keys().next().expect("the active segment stays");
                state.log_start_offset = state.log_start_offset.max(first);
                removed
            };
            if let Some(file) = removed {
                keep_open_for_readers(file).await;
            }
            self.delete_segment_files(*base).await?;
            info!(dir = %self.dir.display(), segment = base, "deleted segment by retention");
        }
        Ok(doomed)
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

/// A segment file about to be deleted keeps its descriptor while reads still hold it
/// (reopened first if the descriptor cache had closed it), as its name is about to go.
/// A file nobody else holds just closes.
async fn keep_open_for_readers(file: Rc<SegmentFile>) {
    if Rc::strong_count(&file) > 1 {
        if let Err(error) = file.keep_open().await {
            warn!(path = %file.path().display(), %error, "a read of a deleted segment may fail");
        }
    }
}

/// Zeros after the last batch up to this size (a block's padding) are trimmed without a
/// log line; more (space allocated ahead, or a lost tail) is logged.
const PADDING_QUIET_BYTES: u64 = 64 << 10;

/// True when the last block of `file` is all zeros: an unsealed direct-mode segment.
async fn ends_in_zeros(file: &SegmentFile) -> Result<bool, LogError> {
    let len = file.len();
    Ok(len > 0 && zeros_to_end(file, len.saturating_sub(4096)).await?)
}

/// True when the file holds only zeros from `position` to its end: what a direct-mode
/// segment has after its last batch until it is sealed (the padding of the last block,
/// and the space allocated ahead of the writes), not a sign of damage.
async fn zeros_to_end(file: &SegmentFile, mut position: u64) -> Result<bool, LogError> {
    while position < file.len() {
        let bytes =
            file.read_at(position, RECOVERY_READ_BYTES).await.map_err(io_error(file.path()))?;
        if bytes.is_empty() {
            break;
        }
        if bytes.iter().any(|byte| *byte != 0) {
            return Ok(false);
        }
        position += bytes.len() as u64;
    }
    Ok(true)
}

/// A segment this small may legitimately have an empty offset index.
const INDEX_REBUILD_FREE: u64 = 2 * INDEX_INTERVAL_BYTES_DEFAULT;

enum Recovered {
    /// Every byte is a valid batch.
    Clean,
    /// Valid batches up to `position`, zeros after it.
    Padding { position: u64 },
    /// A torn tail, cut at `position`: `bytes` were dropped from this segment.
    Cut { reason: String, position: u64, bytes: u64 },
    /// An invalid batch at `position` (offset `offset` expected there) with a valid batch
    /// after it: left as it is.
    Damaged { reason: String, position: u64, offset: i64 },
}

/// True when a whole batch with a valid CRC starts at `position` of `file`.
async fn valid_batch_at(file: &SegmentFile, position: u64) -> Result<bool, LogError> {
    let file_len = file.len();
    if file_len.saturating_sub(position) < HEADER_BYTES as u64 {
        return Ok(false);
    }
    let header = file.read_at(position, HEADER_BYTES).await.map_err(io_error(file.path()))?;
    let Ok(size) = batch::batch_size(&header) else { return Ok(false) };
    if size as u64 > file_len - position {
        return Ok(false);
    }
    let bytes = file.read_at(position, size).await.map_err(io_error(file.path()))?;
    Ok(Batch::parse(&bytes).is_ok_and(|(one, _)| one.validate(usize::MAX).is_ok()))
}

/// The batch header fields the read path needs.
#[derive(Debug, Clone, Copy)]
struct Header {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    size: u64,
}

fn decode_header(bytes: &[u8], path: &Path, position: u64) -> Result<Header, LogError> {
    let corrupt = |reason: String| LogError::Corrupt { path: path.to_path_buf(), position, reason };
    let size = batch::batch_size(bytes).map_err(|e| corrupt(e.to_string()))?;
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt("truncated batch header".into()));
    }
    let base_offset = batch::base_offset_of(bytes).expect("length checked");
    let delta = i32::from_be_bytes(bytes[23..27].try_into().expect("length checked"));
    let max_timestamp = i64::from_be_bytes(bytes[35..43].try_into().expect("length checked"));
    Ok(Header {
        base_offset,
        last_offset: base_offset + i64::from(delta),
        max_timestamp,
        size: size as u64,
    })
}

async fn read_header(file: &SegmentFile, position: u64) -> Result<Header, LogError> {
    let bytes = file.read_at(position, HEADER_BYTES).await.map_err(io_error(file.path()))?;
    decode_header(&bytes, file.path(), position)
}

/// From `position` (a batch boundary, from the index), finds the first batch below `end`
/// whose last offset is >= `target`. Reads headers in windows of `SCAN_READ_BYTES`.
async fn find_batch(
    file: &SegmentFile,
    mut position: u64,
    end: u64,
    target: i64,
) -> Result<Option<(u64, Header)>, LogError> {
    let mut window: Option<(u64, FileBytes)> = None;
    while position < end {
        let in_window = window.as_ref().and_then(|(start, bytes)| {
            let from = usize::try_from(position.checked_sub(*start)?).ok()?;
            (from + HEADER_BYTES <= bytes.len()).then_some(from)
        });
        let header = match in_window {
            Some(from) => {
                let (_, bytes) = window.as_ref().expect("checked");
                decode_header(&bytes[from..], file.path(), position)?
            }
            None => {
                let want =
                    usize::try_from((end - position).min(SCAN_READ_BYTES as u64)).expect("small");
                let bytes = file.read_at(position, want).await.map_err(io_error(file.path()))?;
                let header = decode_header(&bytes, file.path(), position)?;
                window = Some((position, bytes));
                header
            }
        };
        if header.last_offset >= target {
            return Ok(Some((position, header)));
        }
        position += header.size;
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
