//! [`IndexFile`]: a segment's offset or time index file, opened only while written or read.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, OpenOptions};

use super::{borrowed, open_retrying, options, set_len, to_io, write_all_inline};

/// A segment's offset or time index file (`.index`, `.timeindex`). Its entries live in
/// memory (the log's `OffsetIndex` and `TimeIndex`); the file is opened only while it is
/// written (flush, seal, truncation) or read (a trusted segment at open), and closed at
/// once, so an index holds no descriptor in between. Written with a `pwrite` on the
/// shard's thread (a few entries per flush, into the page cache) and synced before
/// [`IndexFile::write_at`] returns.
#[derive(Debug)]
pub struct IndexFile {
    pub(super) path: PathBuf,
    /// Bytes on disk.
    pub(super) len: Cell<u64>,
    /// Cut since it was last synced.
    pub(super) unsynced: Cell<bool>,
}

impl IndexFile {
    /// The index file at `path`, created empty if missing (Kafka keeps both index files
    /// beside every segment).
    pub async fn open(path: &Path) -> io::Result<IndexFile> {
        let len = match std::fs::metadata(path) {
            Ok(meta) => meta.len(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Self::open_file(path).await?.close().await.map_err(to_io)?;
                0
            }
            Err(error) => return Err(error),
        };
        Ok(IndexFile { path: path.to_path_buf(), len: Cell::new(len), unsynced: Cell::new(false) })
    }

    async fn open_file(path: &Path) -> io::Result<BufferedFile> {
        open_retrying(path, || async { options(true).buffered_open(path).await }).await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk.
    pub fn len(&self) -> u64 {
        self.len.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// Cuts the file to `len` bytes, without a sync (the next [`IndexFile::write_at`]
    /// syncs the cut with what it writes).
    pub async fn truncate(&self, len: u64) -> io::Result<()> {
        if self.len.get() == len {
            return Ok(());
        }
        let file = Self::open_file(&self.path).await?;
        set_len(file.as_raw_fd(), len)?;
        file.close().await.map_err(to_io)?;
        self.len.set(len);
        self.unsynced.set(true);
        Ok(())
    }

    /// Makes the file `bytes` at `at` (its first `at` bytes are kept, anything after
    /// them cut) and syncs it. Nothing to do (no open) when it already ends at `at`,
    /// synced, and `bytes` is empty.
    pub async fn write_at(&self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if self.len.get() == at && bytes.is_empty() && !self.unsynced.get() {
            return Ok(());
        }
        let file = Self::open_file(&self.path).await?;
        if self.len.get() != at {
            set_len(file.as_raw_fd(), at)?;
            self.len.set(at);
            self.unsynced.set(true);
        }
        if !bytes.is_empty() {
            write_all_inline(borrowed(&file), bytes, at)?;
            self.len.set(at + u64::try_from(bytes.len()).expect("usize fits u64"));
        }
        file.fdatasync().await.map_err(to_io)?;
        self.unsynced.set(false);
        file.close().await.map_err(to_io)
    }

    /// The whole file.
    pub async fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len.get()).expect("index < 2 GiB");
        if len == 0 {
            return Ok(Vec::new());
        }
        let file = open_retrying(&self.path, || async {
            OpenOptions::new().read(true).buffered_open(&self.path).await
        })
        .await?;
        let bytes = file.read_at(0, len).await.map_err(to_io)?.to_vec();
        file.close().await.map_err(to_io)?;
        if bytes.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of {}: {} of {len} bytes", self.path.display(), bytes.len()),
            ));
        }
        Ok(bytes)
    }
}
