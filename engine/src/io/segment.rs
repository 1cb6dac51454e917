//! [`SegmentFile`]: a segment's records, in either I/O mode. Opening, reopening after the
//! descriptor cache closed it, append, read, sync, truncate, seal and remove; each
//! dispatches to direct mode ([`super::direct`]) or the page cache ([`super::page_cache`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::{BufferedFile, DmaFile};

use crate::fdcache;
use crate::limits::{FS_BLOCK_BYTES_FALLBACK, FS_BLOCK_BYTES_MAX};

use super::{
    borrowed, injected, open_retrying, options, probe_iopoll_once, remove_file, set_len, to_io,
    write_all_buffered, write_all_inline, BufferedWrite, Descriptors, DirectFile, DirectState,
    FaultPlan, FileBytes, Handle, IoMode,
};

/// A file that the log appends to and reads from. Lives on one shard; shared by `Rc`
/// between the log and in-flight reads, so every method takes `&self`.
///
/// Its descriptor is opened when the file is opened and may be closed by the shard's
/// descriptor cache ([`crate::fdcache`]) whenever no operation is using it; the next
/// operation reopens it. What the file knows lives beside the descriptor and survives
/// that: the logical length, direct mode's tail block, writes in flight and allocation.
pub struct SegmentFile {
    pub(super) path: PathBuf,
    /// Tells files apart in drop-behind bookkeeping, whatever descriptors they hold.
    pub(super) id: u64,
    pub(super) fds: Rc<Descriptors>,
    /// Direct mode's state; `None` in buffered mode.
    pub(super) direct: Option<DirectFile>,
    /// Logical length: the bytes appended so far. Direct-mode padding is not counted.
    pub(super) len: Cell<u64>,
    /// Appended to or cut since the last successful sync. True at open for a file with
    /// bytes: the page cache may hold writes of a process that was killed, which recovery
    /// then trusts. An empty file has nothing to sync: creating a partition costs no
    /// fsync (10,000 of them made creating 10,000 partitions take up to 39 s here).
    pub(super) unsynced: Cell<bool>,
    pub(super) faults: Option<Arc<FaultPlan>>,
    /// Buffered mode: start writeback every this many appended bytes (0: never; see
    /// [`crate::writeback`]), and where the range not yet handed over starts.
    pub(super) writeback_every: Cell<u64>,
    pub(super) writeback_from: Cell<u64>,
    /// Buffered mode: how appends are written.
    pub(super) buffered_write: Cell<BufferedWrite>,
    /// Buffered mode: pages more than this many bytes behind the logical end are dropped
    /// from the page cache once written back (0: never), and where the range not yet
    /// dropped starts.
    pub(super) cache_window: Cell<u64>,
    pub(super) dropped_to: Cell<u64>,
    /// Buffered mode, with a cache window: the sealed segments of the same log whose last
    /// pages were still inside the window when this file became the active one, oldest
    /// first (the window is the log's, so it spans rolls). See [`SegmentFile::follow`].
    pub(super) predecessors: RefCell<VecDeque<CachedTail>>,
}

/// A sealed segment's pages still in the page cache: `dropped_to..end` of the file `fd`
/// (the segment file `file_id`).
#[derive(Debug)]
pub(super) struct CachedTail {
    pub(super) file_id: u64,
    pub(super) fd: Arc<OwnedFd>,
    pub(super) dropped_to: u64,
    pub(super) end: u64,
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

thread_local! {
    /// Numbers this thread's segment files (see `SegmentFile::id`).
    pub(super) static NEXT_FILE_ID: Cell<u64> = const { Cell::new(0) };
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
                let fs_block = if fs_block.is_power_of_two() && fs_block <= FS_BLOCK_BYTES_MAX {
                    fs_block
                } else {
                    FS_BLOCK_BYTES_FALLBACK
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
    pub(super) async fn handle(&self) -> io::Result<Handle> {
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

    pub(super) async fn dma(&self) -> io::Result<Rc<DmaFile>> {
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
