//! Early writeback and drop-behind for buffered-mode segments, on a helper thread.
//!
//! **Early writeback** (`log.writeback.bytes`): every so many bytes appended to a
//! segment, the range just written is handed to the helper, which calls
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` on it: that starts writing those dirty pages
//! to the device without waiting for them (RocksDB's `bytes_per_sync` does the same).
//! Left to itself, the kernel lets dirty pages pile up to `dirty_background_ratio` of
//! memory (gigabytes here) and then writes them back in a burst from its flusher thread,
//! which takes a core from the broker or its clients for a while (with inline appends,
//! a half-load run had a 1-3 ms p99 second ~3 s in without it, none with it;
//! perf/RESULTS.md, "Page-cache appends inline, drop-behind, idle polling", 2026-11-21);
//! past the midpoint to `dirty_ratio` it throttles the writers. Started early, writeback
//! proceeds at the pace of the appends and the dirty set stays a few MiB per segment.
//! Pages stay in the page cache (clean), so fetches still read them from memory.
//!
//! **Drop-behind** (`log.page.cache.window.bytes`): pages further than the window
//! behind a log's end are written back if they are not yet (`sync_file_range` with both
//! waits) and dropped from the page cache (`POSIX_FADV_DONTNEED`), so the page cache of
//! an appended-to log stays within the window, and the memory it frees is reused by the
//! next appends. The window is the log's, not a segment's: after a roll, the pages of
//! the segments before the new one go as it grows (`SegmentFile::follow`); a window per
//! segment left a window of pages cached at every roll, and a log whose segments were
//! no longer than the window dropped nothing at all (perf/RESULTS.md, "The page-cache
//! window becomes the log's", 2026-11-21). Why: on a VM whose host backs guest memory
//! lazily and takes back what the guest frees (free page reporting, as in Firecracker),
//! writing into memory the guest has not touched recently costs a host page fault per
//! page: 12.7 us per 4 KiB here against 1.5 us (`perf/fresh-memory.c`), so buffered
//! produce at 540 MB/s fell to ~250 MB/s once the page cache had grown past the ~3.7 GB
//! recently touched (perf/RESULTS.md, "The broker's share of the latency" and "Page-cache
//! appends inline, drop-behind, idle polling", 2026-11-21). The price: a consumer further
//! behind than the window reads from the device, which zero-copy fetch serves off the
//! shard (net/zerocopy.rs).
//!
//! The call runs on a helper thread, not on the shard: it submits the pages' I/O itself
//! and can block when the device queue is full. The shard only does a non-blocking send
//! on a bounded channel; when the helper is behind, the hint is dropped (the kernel's own
//! writeback still covers those pages) and counted. Each job holds a duplicate of the
//! segment's descriptor, so a segment deleted meanwhile is harmless.
//!
//! One helper serves every shard. It is spawned by the first shard that asks and so
//! inherits that shard's CPU affinity: with several shards, all of the helper's work runs
//! on the first one's core. Early writeback is on by default (`log.writeback.bytes`, 1
//! MiB), and so is drop-behind, with windows from a page-cache budget
//! (`log.page.cache.window.bytes=auto`, [`auto_window_bytes`]); spreading the helper over
//! cores is for when it is shown to help.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use tracing::warn;

use crate::limits::WRITEBACK_QUEUE_JOBS;

pub use crate::limits::{
    AUTO_BUDGET_BYTES_MAX, AUTO_BUDGET_BYTES_MIN, AUTO_WINDOW_BYTES_MAX, AUTO_WINDOW_BYTES_MIN,
};

/// The broker's page-cache budget for appends with auto windows, from its memory.
pub fn auto_budget_bytes(memory_bytes: u64) -> u64 {
    (memory_bytes / 16).clamp(AUTO_BUDGET_BYTES_MIN, AUTO_BUDGET_BYTES_MAX)
}

/// The window of each of `active_logs` logs sharing `budget_bytes` (auto windows).
pub fn auto_window_bytes(budget_bytes: u64, active_logs: usize) -> u64 {
    let logs = u64::try_from(active_logs.max(1)).unwrap_or(u64::MAX);
    (budget_bytes / logs).clamp(AUTO_WINDOW_BYTES_MIN, AUTO_WINDOW_BYTES_MAX)
}

/// Ranges whose writeback the helper started.
pub static STARTED: AtomicU64 = AtomicU64::new(0);
/// Ranges dropped because the helper was behind, could not be started, or failed.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether a failed `sync_file_range` or drop-behind was logged (once per process).
static FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

/// Bytes dropped from the page cache by drop-behind.
pub static DROPPED_BEHIND_BYTES: AtomicU64 = AtomicU64::new(0);

/// Held by the tests that drop pages behind a cache window, so that a test counting
/// [`DROPPED_BEHIND_BYTES`] exactly sees no other test's drops.
#[cfg(test)]
pub(crate) static DROP_BEHIND_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Job {
    fd: Arc<OwnedFd>,
    /// Start writeback of this range (offset, length).
    write: Option<(u64, u64)>,
    /// Write back and drop this range from the page cache (offset, length).
    drop: Option<(u64, u64)>,
}

/// The helper's queue, started on first use; `None` when the thread could not be
/// spawned (every hint is then dropped).
static QUEUE: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static SyncSender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = mpsc::sync_channel::<Job>(WRITEBACK_QUEUE_JOBS);
            let spawned = std::thread::Builder::new()
                .name("sluice-writeback".into())
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        if let Some((offset, len)) = job.write {
                            start(&job.fd, offset, len);
                        }
                        if let Some((offset, len)) = job.drop {
                            drop_behind(&job.fd, offset, len);
                        }
                    }
                });
            match spawned {
                Ok(_) => Some(sender),
                Err(error) => {
                    warn!(%error, "cannot start the writeback thread; writeback is left to the kernel");
                    None
                }
            }
        })
        .as_ref()
}

fn start(fd: &OwnedFd, offset: u64, len: u64) {
    match sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE) {
        Ok(()) => {
            STARTED.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            // Not a loss: the pages stay dirty and the kernel writes them back later; a
            // device error also shows at the next fsync, which reports it to the log.
            DROPPED.fetch_add(1, Ordering::Relaxed);
            log_failure_once("sync_file_range", &error);
        }
    }
}

fn drop_behind(fd: &OwnedFd, offset: u64, len: u64) {
    // DONTNEED skips dirty pages and pages under writeback: write the range back and
    // wait for it first (it was started `window` bytes ago, so this rarely waits).
    let waits = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let dropped = sync_file_range(fd, offset, len, waits).and_then(|()| {
        let (offset, len) = offsets(offset, len)?;
        nix::fcntl::posix_fadvise(
            fd.as_raw_fd(),
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(std::io::Error::from)
    });
    match dropped {
        Ok(()) => {
            DROPPED_BEHIND_BYTES.fetch_add(len, Ordering::Relaxed);
        }
        Err(error) => {
            // Not a loss either: the pages stay cached until the kernel evicts them.
            DROPPED.fetch_add(1, Ordering::Relaxed);
            log_failure_once("drop-behind", &error);
        }
    }
}

fn offsets(offset: u64, len: u64) -> std::io::Result<(i64, i64)> {
    match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(offset), Ok(len)) => Ok((offset, len)),
        _ => Err(std::io::Error::other(format!("range {offset}+{len} out of range"))),
    }
}

#[allow(unsafe_code)]
fn sync_file_range(fd: &OwnedFd, offset: u64, len: u64, flags: u32) -> std::io::Result<()> {
    let (offset, len) = offsets(offset, len)?;
    // SAFETY: a plain syscall on a descriptor the caller keeps open.
    let result = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn log_failure_once(what: &str, error: &std::io::Error) {
    if !FAILURE_LOGGED.swap(true, Ordering::Relaxed) {
        warn!(%error, "{what} failed; writeback and the page cache are left to the kernel");
    }
}

/// Logs the helper's counters (per process) at `info`.
pub fn log_counters() {
    tracing::info!(
        started = STARTED.load(Ordering::Relaxed),
        skipped = DROPPED.load(Ordering::Relaxed),
        dropped_behind_bytes = DROPPED_BEHIND_BYTES.load(Ordering::Relaxed),
        "page cache writeback"
    );
}

/// Asks the helper to start writeback of the range `write` of `fd`, and to write back and
/// drop the range `drop` from the page cache, each (offset, length). Never blocks.
pub fn request(fd: Arc<OwnedFd>, write: Option<(u64, u64)>, drop: Option<(u64, u64)>) {
    let Some(queue) = queue() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        queue.try_send(Job { fd, write, drop })
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_windows_share_a_budget_from_memory() {
        const GIB: u64 = 1 << 30;
        assert_eq!(auto_budget_bytes(24 * GIB), 24 * GIB / 16);
        assert_eq!(auto_budget_bytes(GIB), AUTO_BUDGET_BYTES_MIN, "small machines");
        assert_eq!(auto_budget_bytes(1024 * GIB), AUTO_BUDGET_BYTES_MAX, "large machines");
        assert_eq!(auto_window_bytes(GIB, 0), AUTO_WINDOW_BYTES_MAX, "an idle shard");
        assert_eq!(auto_window_bytes(GIB, 1), AUTO_WINDOW_BYTES_MAX);
        assert_eq!(auto_window_bytes(GIB, 8), 128 << 20);
        assert_eq!(auto_window_bytes(GIB, 10_000), AUTO_WINDOW_BYTES_MIN, "many logs");
    }
}
