//! The broker's fixed limits and intervals in one place, with the relations between them
//! checked at compile time. What an operator may change is in [`crate::config`]; these
//! are the bounds that keep a shard's memory, queues and waits finite whatever clients
//! do. Wire-format constants (versions, field sizes) stay beside their codecs.

use std::time::Duration;

// ---- connections ----

/// Bytes a connection asks the kernel for at once while framing requests; frames larger
/// than this are read into an allocation of their own (see `server::FrameReader`).
pub const READ_BUFFER_BYTES: usize = 64 << 10;
/// The most iovecs handed to one `sendmsg`.
pub const SEND_IOVECS_MAX: usize = 64;
/// How much of a file range one page-cache residency probe vouches for.
pub const RESIDENCY_PROBE_STRIDE_BYTES: u64 = 256 << 10;
/// How often a stopping shard looks whether its connections have closed.
pub const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a stopping shard waits for its connections to finish in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

// ---- fetch ----

/// The longest fetch wait honoured, whatever `max_wait_ms` says.
pub const FETCH_WAIT_MS_MAX: u64 = 60_000;
/// Delayed fetches one shard parks at once; past it a fetch waits out its time unwoken.
pub const FETCH_WAITERS_MAX: usize = 100_000;
/// Direct mode: the bytes of recently appended batches a shard keeps for tail fetches.
pub const RECENT_BATCHES_BYTES: u64 = 64 << 20;

// ---- shards ----

/// Messages between shards waiting in one mesh channel before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How long a shard waits for its peers to join the mesh at start-up.
pub const MESH_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The period of a shard's housekeeping loop (flush, retention, page-cache windows).
pub const HOUSEKEEPING_TICK: Duration = Duration::from_millis(100);
/// Housekeeping ticks between two adaptations of the auto page-cache windows.
pub const CACHE_WINDOW_TICKS: u64 = 10;
/// A log appended to within this long shares the page-cache budget.
pub const CACHE_WINDOW_ACTIVE: Duration = Duration::from_secs(10);

// ---- metadata ----

/// Producer ids stored per metadata record.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// How long a metadata change forwarded to the controller may take, from the call to this
/// broker having applied it.
pub const CONTROLLER_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How often shard 0 looks for metadata the broker's agent fetched.
pub const METADATA_PUMP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);
/// Reasons quoted in a CreateTopics or CreatePartitions error message; the log has all.
pub const OFFLINE_REASONS_QUOTED: usize = 3;

// ---- request metrics ----

/// The longest latency a histogram holds, in microseconds (one hour); longer ones are
/// clamped to it.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

// The relations between them.
const _: () = assert!(
    READ_BUFFER_BYTES >= crate::protocol::SIZE_PREFIX_BYTES + crate::protocol::FIXED_HEADER_BYTES
);
const _: () = assert!(SEND_IOVECS_MAX >= 2, "a response header and at least one record range");
const _: () = assert!(DRAIN_TIMEOUT.as_millis() > STOP_POLL.as_millis());
// The slowest request we let happen, a fetch waiting its longest, must fit the histograms.
const _: () = assert!(FETCH_WAIT_MS_MAX * 1000 < LATENCY_US_MAX);
// An auto page-cache window adapts several times while a log still counts as active.
const _: () = assert!(
    CACHE_WINDOW_ACTIVE.as_millis()
        >= 4 * CACHE_WINDOW_TICKS as u128 * HOUSEKEEPING_TICK.as_millis()
);
// One default-sized (1 MiB) batch fits the recent-batches cache many times over.
const _: () = assert!(RECENT_BATCHES_BYTES >= 16 << 20);
const _: () = assert!(PRODUCER_ID_BLOCK > 0);
