//! Sluice storage engine: Kafka record batches, the segmented partition log, the file I/O
//! seam (O_DIRECT and page cache, both through io_uring), recovery, retention, and the
//! timing wheel / purgatory for delayed operations. No sockets live here.

pub mod batch;
pub mod checkpoint;
pub mod clock;
pub mod fdcache;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod limits;
pub mod log;
pub mod metadata;
pub mod partition;
pub mod producer;
pub mod replay;
pub mod runtime;
pub mod shard;
pub mod sync;
pub mod timer;
pub mod txnindex;
pub mod writeback;

#[cfg(test)]
pub(crate) mod test_support {
    /// Runs a test body on a glommio executor, under a watchdog: a test stuck for two
    /// minutes aborts the test process with a message instead of hanging CI. The watchdog
    /// stops when the body returns or panics (either drops `alive`).
    pub fn run<F: std::future::Future<Output = ()> + 'static>(future: F) {
        let (alive, watched) = std::sync::mpsc::channel::<()>();
        let name = std::thread::current().name().unwrap_or("?").to_string();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watched.recv_timeout(std::time::Duration::from_secs(120))
            {
                eprintln!("test {name} still running after 120 s: aborting");
                std::process::abort();
            }
        });
        crate::runtime::run_local(future);
        drop(alive);
    }
}
