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

mod descriptors;
mod direct;
mod direct_state;
mod fault;
mod index;
mod page_cache;
mod segment;
mod sys;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;

use std::ops::Deref;

use glommio::io::ReadResult;

pub use crate::limits::CACHE_WINDOW_STEP;
pub use direct::writes_landed;
pub use fault::FaultPlan;
pub use index::IndexFile;
pub use segment::SegmentFile;
pub use sys::{out_of_space, remove_file};

use descriptors::{Descriptors, Handle};
use direct::DirectFile;
use direct_state::{jobs_of, DirectState, InFlight, OpenWrite, Piece, PieceJob, PieceState, Step};
use fault::injected;
use page_cache::{write_all_buffered, write_all_inline};
use segment::CachedTail;
use sys::{borrowed, open_retrying, options, owned, probe_iopoll_once, set_len, to_io};

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
