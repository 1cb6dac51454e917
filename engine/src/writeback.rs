//! Early writeback for buffered-mode segments: every `log.writeback.bytes` appended to a
//! segment, the range just written is handed to a helper thread that calls
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` on it, which starts writing those dirty pages
//! to the device without waiting for them (RocksDB's `bytes_per_sync` does the same).
//!
//! Why: left to itself, the kernel lets dirty pages pile up to `dirty_background_ratio`
//! of memory (gigabytes here) before it writes them back, and once they pass the midpoint
//! to `dirty_ratio` it throttles the writers (`balance_dirty_pages`). A producer at half
//! the device's bandwidth then runs fine for a few seconds and stalls for the rest: in
//! session 14, buffered produce at 540 MB/s fell to ~250 MB/s after 5 s, with request
//! latency going from 0.6 ms to 5-9 ms at p99 on the broker. Started early, writeback
//! proceeds at the pace of the appends and the dirty set stays a few MiB per segment.
//! Pages stay in the page cache (clean), so fetches still read them from memory.
//!
//! The call runs on a helper thread, not on the shard: it submits the pages' I/O itself
//! and can block when the device queue is full. The shard only does a non-blocking send
//! on a bounded channel; when the helper is behind, the hint is dropped (the kernel's own
//! writeback still covers those pages) and counted. Each job holds a duplicate of the
//! segment's descriptor, so a segment deleted meanwhile is harmless.
//!
//! One helper serves every shard. It is spawned by the first shard that asks and so
//! inherits that shard's CPU affinity: with several shards, all of the helper's work runs
//! on the first one's core. It is off by default (see `log.writeback.bytes`); spreading
//! it is for when it is shown to help.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use tracing::warn;

/// Ranges queued for the helper at most; more are dropped (see the module docs).
const QUEUE_JOBS: usize = 1024;

/// Ranges whose writeback the helper started.
pub static STARTED: AtomicU64 = AtomicU64::new(0);
/// Ranges dropped because the helper was behind, could not be started, or failed.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether a failed `sync_file_range` was logged (once per process).
static FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

struct Job {
    fd: Arc<OwnedFd>,
    offset: u64,
    len: u64,
}

/// The helper's queue, started on first use; `None` when the thread could not be
/// spawned (every hint is then dropped).
static QUEUE: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static SyncSender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUE_JOBS);
            let spawned = std::thread::Builder::new()
                .name("sluice-writeback".into())
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        start(&job);
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

#[allow(unsafe_code)]
fn start(job: &Job) {
    let (Ok(offset), Ok(len)) = (i64::try_from(job.offset), i64::try_from(job.len)) else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // SAFETY: a plain syscall on a descriptor the job keeps open.
    let result = unsafe {
        libc::sync_file_range(job.fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if result == 0 {
        STARTED.fetch_add(1, Ordering::Relaxed);
    } else {
        // Not a loss: the pages stay dirty and the kernel writes them back later; a
        // device error also shows at the next fsync, which reports it to the log.
        let error = std::io::Error::last_os_error();
        DROPPED.fetch_add(1, Ordering::Relaxed);
        if !FAILURE_LOGGED.swap(true, Ordering::Relaxed) {
            warn!(%error, "sync_file_range failed; writeback is left to the kernel");
        }
    }
}

/// Asks the helper to start writeback of `len` bytes at `offset` of `fd`. Never blocks.
pub fn request(fd: Arc<OwnedFd>, offset: u64, len: u64) {
    let Some(queue) = queue() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        queue.try_send(Job { fd, offset, len })
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}
