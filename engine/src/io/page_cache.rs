//! Buffered mode's own parts of [`SegmentFile`]: writing into the page cache (inline
//! `pwrite` or io_uring), early writeback and the cache window (dropping pages far
//! behind the end, across segment rolls), and descriptors shared with other threads.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use glommio::io::BufferedFile;
use tracing::debug;

use crate::fdcache;

use super::{owned, to_io, BufferedWrite, CachedTail, Handle, SegmentFile};
use crate::limits::{CACHE_WINDOW_STEP, PAGE_BYTES, PREDECESSORS_MAX, SHED_FILES};

impl SegmentFile {
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
    pub(super) fn maybe_start_writeback(&self, end: u64) {
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
}

/// `pwrite` until `data` is written: the copy into the page cache, on this thread.
pub(super) fn write_all_inline(
    fd: std::os::fd::BorrowedFd<'_>,
    data: &[u8],
    position: u64,
) -> io::Result<()> {
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

pub(super) async fn write_all_buffered(
    file: &BufferedFile,
    data: &[u8],
    position: u64,
) -> io::Result<()> {
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
