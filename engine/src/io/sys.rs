//! Plain syscalls and opening files: what glommio 0.9 does not do reliably for us
//! (ftruncate, unlink, the iopoll probe), the errors the engine acts on (out of space, out
//! of descriptors) and retrying an open after closing idle files.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use glommio::io::OpenOptions;
use tracing::warn;

use crate::fdcache;
use crate::limits::{OPEN_RETRIES, SHED_FILES};

use super::write_all_buffered;

/// glommio 0.9 runs ftruncate, unlink, rename and mkdir on its blocking thread pool, whose
/// completion was seen, rarely and only under load, never to arrive: a partition log
/// stayed in `Log::open` for good. These metadata operations are plain syscalls here
/// (short on a local file system, and never on the produce or fetch path except when a
/// segment rolls or retention deletes one).
#[allow(unsafe_code)]
pub(super) fn set_len(fd: std::os::fd::RawFd, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::other("file length over i64"))?;
    // SAFETY: `fd` is the descriptor of a file whose handle the caller holds for the
    // whole call; the borrow does not outlive it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::unistd::ftruncate(fd, len).map_err(io::Error::from)
}

#[allow(unsafe_code)]
pub(super) fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by fcntl(F_DUPFD_CLOEXEC): open, and owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[allow(unsafe_code)]
pub(super) fn borrowed(fd: &impl AsRawFd) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `fd`, which the borrow cannot outlive.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// Removes a file with a plain syscall (see [`set_len`] for why not glommio's).
pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)
}

pub(super) fn to_io(error: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(error)
}

/// True for an error that says the file system is full (or the user's quota spent).
pub fn out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(nix::libc::ENOSPC | nix::libc::EDQUOT))
}

/// True for an error that says the process (or the system) has no descriptor left.
pub(super) fn out_of_descriptors(error: &glommio::GlommioError<()>) -> bool {
    let errno = match error {
        glommio::GlommioError::IoError(error) => error.raw_os_error(),
        glommio::GlommioError::EnhancedIoError { source, .. } => source.raw_os_error(),
        _ => None,
    };
    matches!(errno, Some(nix::libc::EMFILE | nix::libc::ENFILE))
}

/// Runs `open` and, when it fails for want of descriptors, closes idle segment files
/// (the shard's own, through its descriptor cache) and tries again: connections or a
/// burst of reopens may have taken what the budget left free.
pub(super) async fn open_retrying<T, F, Fut>(path: &Path, open: F) -> io::Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, glommio::GlommioError<()>>>,
{
    let mut attempt = 0;
    loop {
        match open().await {
            Ok(file) => return Ok(file),
            Err(error) if out_of_descriptors(&error) && attempt < OPEN_RETRIES => {
                attempt += 1;
                let closed = fdcache::shed(SHED_FILES);
                warn!(
                    path = %path.display(), %error, closed, attempt,
                    "out of file descriptors; closed idle segment files and trying again"
                );
                // glommio closes dropped files from its ring: give it a poll first.
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Err(error) => return Err(to_io(error)),
        }
    }
}

pub(super) fn options(create: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create);
    options
}

thread_local! {
    /// Directories whose device glommio has probed for iopoll on this thread.
    pub(super) static PROBED_DIRS: RefCell<std::collections::HashSet<PathBuf>> =
        RefCell::new(std::collections::HashSet::new());
}

/// Works around a glommio 0.9 bug: the first DMA file opened on a device (per thread)
/// decides whether the device supports io_uring polled I/O by reading its first block,
/// and an empty file answers that read with 0 bytes and no error, so the device is taken
/// as pollable and every later O_DIRECT read fails with EOPNOTSUPP. Opening a file that
/// has a whole block first makes the probe see the device's real answer.
pub(super) async fn probe_iopoll_once(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if PROBED_DIRS.with(|dirs| dirs.borrow().contains(&dir)) {
        return Ok(());
    }
    let probe_path = dir.join(format!(".sluice-iopoll-probe-{}", std::process::id()));
    let probe = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&probe_path)
        .await
        .map_err(to_io)?;
    write_all_buffered(&probe, &[0u8; 4096], 0).await?;
    probe.close().await.map_err(to_io)?;
    let opened = OpenOptions::new().read(true).dma_open(&probe_path).await;
    let removed = remove_file(&probe_path);
    opened.map_err(to_io)?.close().await.map_err(to_io)?;
    removed?;
    PROBED_DIRS.with(|dirs| dirs.borrow_mut().insert(dir));
    Ok(())
}
