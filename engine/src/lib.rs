//! Sluice storage engine: Kafka record batches, the segmented partition log, the file I/O
//! seam (O_DIRECT and page cache, both through io_uring), recovery, retention, and the
//! timing wheel / purgatory for delayed operations. No sockets live here.

pub mod batch;
pub mod checkpoint;
pub mod clock;
pub mod io;
pub mod log;
pub mod runtime;
pub mod shard;
pub mod timer;

#[cfg(test)]
pub(crate) mod test_support {
    /// Runs a test body on a glommio executor.
    pub fn run<F: std::future::Future<Output = ()> + 'static>(future: F) {
        crate::runtime::run_local(future)
    }
}
