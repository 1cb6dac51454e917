//! The storage engine's tunable limits and defaults, in one place, with the relations
//! between them checked at compile time: a change that breaks one (a gather buffer that
//! is not a whole number of file-system blocks, a default segment too small for a
//! default batch) fails the build instead of a test or a broker.
//!
//! The modules that use these re-export the public ones under their old paths
//! (`crate::log::SEGMENT_BYTES_MAX`, `crate::io::CACHE_WINDOW_STEP`, ...). Constants that
//! describe a format (magic numbers, field offsets, entry sizes) stay with their format;
//! some of them appear below only in the relations.

use crate::batch::HEADER_BYTES;

// ---------------------------------------------------------------------------------------
// The log: Kafka's topic-level settings and how recovery and reads walk a segment.
// ---------------------------------------------------------------------------------------

/// Kafka's default `segment.bytes`: 1 GiB.
pub const SEGMENT_BYTES_DEFAULT: u64 = 1 << 30;
/// Kafka's default `segment.ms`: 7 days.
pub const SEGMENT_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's default `index.interval.bytes`: an offset index entry every 4 KiB of batches.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4096;
/// Kafka's default `retention.ms`: 7 days.
pub const RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's default `max.message.bytes`: 1 MiB plus a batch's overhead.
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
/// Bytes read per I/O when recovery walks a segment: large, as recovery reads a segment
/// from end to end.
pub(crate) const RECOVERY_READ_BYTES: usize = 1 << 20;
/// Bytes read per I/O when scanning batch headers after an index lookup: a few index
/// intervals, as the scan starts at most one interval before the batch it looks for.
pub(crate) const SCAN_READ_BYTES: usize = 16 << 10;
/// Zeros after the last batch up to this size (a block's padding) are trimmed by
/// recovery without a log line; more (space allocated ahead, or a lost tail) is logged.
pub(crate) const PADDING_QUIET_BYTES: u64 = 64 << 10;
/// A segment this small may legitimately have an empty offset index (Kafka writes the
/// first entry after one interval); a larger one with none lost its index.
pub(crate) const INDEX_REBUILD_FREE: u64 = 2 * INDEX_INTERVAL_BYTES_DEFAULT;

// ---------------------------------------------------------------------------------------
// File I/O: direct mode's writes and buffered mode's page cache.
// ---------------------------------------------------------------------------------------

/// Direct mode aligns writes to the file system's block (`st_blksize`) when it is a power
/// of two up to this size; a larger or odd answer is not believed.
pub(crate) const FS_BLOCK_BYTES_MAX: u64 = 64 << 10;
/// The block direct mode assumes when the file system's answer is not believed.
pub(crate) const FS_BLOCK_BYTES_FALLBACK: u64 = 4096;
/// Most direct-mode writes in flight per file. An append beyond it waits for the oldest
/// to land, which bounds the DMA memory a file holds.
pub(crate) const MAX_WRITES_IN_FLIGHT: usize = 4;
/// Room a direct-mode open write gathers appends into (group commit): past it, an append
/// waits for a write to land.
pub(crate) const GATHER_BYTES: usize = 1 << 20;
/// Space a direct-mode file allocates ahead of its writes: as much as the file already
/// holds, within these bounds, so a small partition holds little unused space and a busy
/// one calls `fallocate` every 64 MiB.
pub(crate) const ALLOCATE_AHEAD_MIN: u64 = 1 << 20;
/// See [`ALLOCATE_AHEAD_MIN`].
pub(crate) const ALLOCATE_AHEAD_MAX: u64 = 64 << 20;
/// Sealed segments whose cached pages an active segment keeps track of, at most (each
/// holds a descriptor, outside the descriptor cache's budget); past it, the oldest one's
/// pages are dropped at once.
pub(crate) const PREDECESSORS_MAX: usize = 64;
/// Bytes appended between two checks of the cache window when no writeback is asked for.
pub const CACHE_WINDOW_STEP: u64 = 1 << 20;
/// Page-cache granularity for dropping pages.
pub(crate) const PAGE_BYTES: u64 = 4096;
/// Times an open that failed for want of descriptors (EMFILE, ENFILE) is retried after
/// closing idle files.
pub(crate) const OPEN_RETRIES: usize = 3;
/// Idle files each retry of an open closes (see [`OPEN_RETRIES`]).
pub(crate) const SHED_FILES: usize = 64;

// ---------------------------------------------------------------------------------------
// Page-cache writeback and auto windows.
// ---------------------------------------------------------------------------------------

/// `log.page.cache.window.bytes=auto` (the default): the page cache a broker keeps for
/// appends is a budget, a sixteenth of memory between these bounds, shared by its shards
/// and, on each shard, by the logs appended to lately; each such log's window is its share,
/// between [`AUTO_WINDOW_BYTES_MIN`] and [`AUTO_WINDOW_BYTES_MAX`]. On this VM the window
/// keeps produce off the page-cache cliff (see [`crate::writeback`]); on a machine whose
/// memory is simply there, it costs consumers further behind than the window a read from
/// the device, and `0` (Kafka's behaviour) may suit it better.
pub const AUTO_BUDGET_BYTES_MIN: u64 = 256 << 20;
/// See [`AUTO_BUDGET_BYTES_MIN`].
pub const AUTO_BUDGET_BYTES_MAX: u64 = 4 << 30;
/// The smallest window an auto window shrinks to, however many logs share the budget.
pub const AUTO_WINDOW_BYTES_MIN: u64 = 8 << 20;
/// The largest auto window: 256 MiB held half-load produce at p99 1.3-11 ms where no
/// window gave 130-200 ms (perf/RESULTS.md).
pub const AUTO_WINDOW_BYTES_MAX: u64 = 256 << 20;
/// Ranges queued for the writeback helper at most; more are dropped (see
/// [`crate::writeback`]).
pub(crate) const WRITEBACK_QUEUE_JOBS: usize = 1024;

// ---------------------------------------------------------------------------------------
// Start-up.
// ---------------------------------------------------------------------------------------

/// Locked memory a shard needs: glommio's default 10 MiB of I/O memory plus the rings.
pub const MEMLOCK_BYTES_PER_SHARD: u64 = 16 << 20;

// ---------------------------------------------------------------------------------------
// The timing wheel.
// ---------------------------------------------------------------------------------------

/// Largest wheel size accepted (a level is `wheel_size` bucket headers and a bitmap).
pub const WHEEL_SIZE_MAX: u32 = 4096;
/// Tombstones tolerated beyond the live count: past it, the wheel's slab does not grow
/// without a compaction first. Small under test so that the model test compacts often.
pub(crate) const TOMBSTONE_SLACK: usize = if cfg!(test) { 4 } else { 4096 };
/// Largest number of live entries one wheel can hold. Live entries and tombstones share
/// `u32` slab indexes, and the slab holds at most `2 * entries_max + TOMBSTONE_SLACK`
/// slots (see `TimingWheel::add`), which this keeps below `u32::MAX`.
pub const ENTRIES_MAX_LIMIT: usize = (u32::MAX as usize - 4096) / 2;
/// A drained bucket keeps its vector (and the next adds to it allocate nothing) up to this
/// capacity; a larger one, left by a burst, is freed.
pub(crate) const BUCKET_KEEP_CAPACITY: usize = 1024;

// ---------------------------------------------------------------------------------------
// Relations, checked when the crate compiles.
// ---------------------------------------------------------------------------------------

// The defaults pass `Log::open`'s own validation: a segment holds at least a batch
// header and at most what a u32 `.index` position reaches; a batch holds a header.
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(HEADER_BYTES as u64 <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(MAX_MESSAGE_BYTES_DEFAULT >= HEADER_BYTES);
const _: () = assert!(SEGMENT_MS_DEFAULT > 0);
const _: () = assert!(RETENTION_MS_DEFAULT > 0);
// A default batch fits in a default segment (else every full-size batch rolls a segment
// of its own, over the segment size).
const _: () = assert!(MAX_MESSAGE_BYTES_DEFAULT as u64 <= SEGMENT_BYTES_DEFAULT);
// Index entries are sparse within a segment: the interval (and the size below which a
// segment may have no entry at all) is far below the segment size.
const _: () = assert!(INDEX_INTERVAL_BYTES_DEFAULT > 0);
const _: () = assert!(INDEX_REBUILD_FREE < SEGMENT_BYTES_DEFAULT);
// A read window of the header scan holds at least one batch header, and spans at least
// one index interval, so a scan from an index entry needs a read or two, not many.
const _: () = assert!(SCAN_READ_BYTES >= HEADER_BYTES);
const _: () = assert!(SCAN_READ_BYTES as u64 >= INDEX_INTERVAL_BYTES_DEFAULT);
// Recovery reads at least a batch header per I/O.
const _: () = assert!(RECOVERY_READ_BYTES >= HEADER_BYTES);

// Direct mode's alignment: file-system blocks are powers of two, the gather buffer is a
// whole number of the largest block believed, and a block's padding is trimmed quietly.
const _: () = assert!(FS_BLOCK_BYTES_MAX.is_power_of_two());
const _: () = assert!(FS_BLOCK_BYTES_FALLBACK.is_power_of_two());
const _: () = assert!(FS_BLOCK_BYTES_FALLBACK <= FS_BLOCK_BYTES_MAX);
const _: () = assert!(GATHER_BYTES as u64 >= FS_BLOCK_BYTES_MAX);
const _: () = assert!(GATHER_BYTES as u64 % FS_BLOCK_BYTES_MAX == 0);
const _: () = assert!(PADDING_QUIET_BYTES >= FS_BLOCK_BYTES_MAX);
const _: () = assert!(MAX_WRITES_IN_FLIGHT >= 1);
// `u64::clamp` panics when its bounds are the wrong way round.
const _: () = assert!(ALLOCATE_AHEAD_MIN <= ALLOCATE_AHEAD_MAX);
const _: () = assert!(AUTO_BUDGET_BYTES_MIN <= AUTO_BUDGET_BYTES_MAX);
const _: () = assert!(AUTO_WINDOW_BYTES_MIN <= AUTO_WINDOW_BYTES_MAX);

// The page cache: pages are dropped in whole pages, checked every step, and written
// back in whole pages.
const _: () = assert!(PAGE_BYTES.is_power_of_two());
const _: () = assert!(CACHE_WINDOW_STEP % PAGE_BYTES == 0);
const _: () = assert!(WRITEBACK_BYTES_DEFAULT % PAGE_BYTES == 0);
// An auto window is checked at least once per window: the step is no larger than the
// smallest window.
const _: () = assert!(CACHE_WINDOW_STEP <= AUTO_WINDOW_BYTES_MIN);
// A log alone on a broker with the smallest budget gets the largest window, within it.
const _: () = assert!(AUTO_WINDOW_BYTES_MAX <= AUTO_BUDGET_BYTES_MIN);
const _: () = assert!(WRITEBACK_QUEUE_JOBS > 0);

// The timing wheel: a slab of `2 * ENTRIES_MAX_LIMIT + TOMBSTONE_SLACK` slots keeps its
// indexes below `u32::MAX`, and the default options are valid.
const _: () = assert!(TOMBSTONE_SLACK <= 4096);
const _: () = assert!(2 * ENTRIES_MAX_LIMIT + 4096 <= u32::MAX as usize);
const _: () = assert!(crate::timer::WheelOptions::DEFAULT.wheel_size <= WHEEL_SIZE_MAX);
const _: () = assert!(crate::timer::WheelOptions::DEFAULT.entries_max <= ENTRIES_MAX_LIMIT);

// ---------------------------------------------------------------------------------------
// Producer state, replay at open, the metadata log.
// ---------------------------------------------------------------------------------------

/// Batches remembered per producer: the most a client keeps in flight per partition
/// (librdkafka and the Java client cap `max.in.flight.requests.per.connection` at 5 for
/// idempotence).
pub const CACHED_BATCHES: usize = 5;
/// Bytes read per chunk when a log is read back at open (a batch larger than this is
/// read whole on its own).
pub const REPLAY_CHUNK_BYTES: u64 = 1 << 20;
/// Kafka's limit on a topic name (`Topic.MAX_NAME_LENGTH`).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Limit on one metadata record's payload. Real records are a few hundred bytes; a length
/// past this on disk is corruption, not a record.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 1 << 20;

const _: () = assert!(CACHED_BATCHES >= 5, "clients keep up to 5 batches in flight");
// A chunk holds at least one default-sized batch, so replay reads few batches alone.
const _: () = assert!(REPLAY_CHUNK_BYTES as usize >= MAX_MESSAGE_BYTES_DEFAULT - HEADER_BYTES);
// The length field is a u32, and the limit must admit the largest legal topic name.
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX as usize > TOPIC_NAME_BYTES_MAX);
