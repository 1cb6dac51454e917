//! Start-up helpers for glommio executors: io_uring needs locked memory for its rings and
//! registered buffers, and a too-small `RLIMIT_MEMLOCK` is the most common reason a shard
//! fails to start. We raise the limit when we may, and say clearly what failed when not.
//! The open-file limit is raised to its hard limit the same way: partitions and
//! connections need descriptors, and the usual soft limit (1024) is far below what a
//! broker with thousands of partitions holds.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

pub use crate::limits::MEMLOCK_BYTES_PER_SHARD;

/// Raises `RLIMIT_MEMLOCK` as far as allowed (to unlimited for root). Returns the soft
/// limit in force afterwards.
pub fn raise_memlock_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else {
        return 0;
    };
    // Root (CAP_SYS_RESOURCE) may raise the hard limit too; others up to the hard limit.
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
        return RLIM_INFINITY;
    }
    if soft < hard && setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (not past it: the hard limit is
/// the administrator's word, also for root). Returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A human explanation for an executor that failed to start.
pub fn explain_executor_error(error: &dyn std::fmt::Display, shards: u64) -> String {
    let limit = getrlimit(Resource::RLIMIT_MEMLOCK).map(|(soft, _)| soft).unwrap_or(0);
    let needed = MEMLOCK_BYTES_PER_SHARD * shards;
    let limit_text =
        if limit == RLIM_INFINITY { "unlimited".to_string() } else { format!("{limit} bytes") };
    format!(
        "cannot start the io_uring executor: {error}. Sluice needs io_uring (Linux >= 5.8) \
         and about {needed} bytes of locked memory for {shards} shard(s); the locked-memory \
         limit is {limit_text}. Raise it with `ulimit -l unlimited` (or LimitMEMLOCK= in a \
         systemd unit), and check that io_uring is not disabled (sysctl \
         kernel.io_uring_disabled)."
    )
}

/// Where shard (or benchmark thread) `index` runs: pinned to the `index`-th CPU this
/// process may use (wrapping when there are more shards than CPUs), or unpinned when the
/// CPU list cannot be read.
pub fn pinned_placement(index: usize) -> glommio::Placement {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match cores.get(index % cores.len().max(1)) {
        Some(core) => glommio::Placement::Fixed(core.id),
        None => glommio::Placement::Unbound,
    }
}

/// Logs a shard that did not yield to its reactor for `threshold` past its task queue's
/// budget (Seastar's "reactor stalled" report): a blocking system call, a page fault storm
/// or a long loop on the shard's thread, with the backtrace glommio's stall detector takes
/// by signalling the thread while it is stuck. Installed with
/// `LocalExecutorBuilder::detect_stalls` when `reactor.stall.threshold.ms` is set; the
/// backtrace is symbolized on the shard after the stall, so it is for diagnosis, off by
/// default.
#[derive(Debug)]
pub struct StallLogger {
    pub shard: usize,
    pub threshold: std::time::Duration,
}

impl StallLogger {
    /// Loads the symbol tables a stall report needs, once per process, before the shards
    /// take traffic. Without it the first report makes the shard parse the binary's debug
    /// information, a stall of its own (loading took 93 ms here) that showed up as a 145 ms
    /// p99 second in a half-load `sluice-bench produce` run.
    pub fn prepare() {
        let started = std::time::Instant::now();
        let trace = backtrace::Backtrace::new();
        tracing::info!(
            frames = trace.frames().len(),
            took_ms = started.elapsed().as_millis() as u64,
            "stall detection on: symbols loaded"
        );
    }
}

impl glommio::StallDetectionHandler for StallLogger {
    fn threshold(
        &self,
        _queue: glommio::TaskQueueHandle,
        _budget: std::time::Duration,
    ) -> Option<std::time::Duration> {
        Some(self.threshold)
    }

    fn stall(&self, detection: glommio::StallDetection<'_>) {
        STALLS_REPORTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(shard = self.shard, "reactor stalled: {detection}");
    }
}

/// Stalls [`StallLogger`] has reported in this process.
pub static STALLS_REPORTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs a future to completion on a fresh single-shard glommio executor. For tests,
/// benchmarks and tools; the broker starts its own pinned shards.
pub fn run_local<F, T>(future: F) -> T
where
    F: std::future::Future<Output = T> + 'static,
    T: 'static,
{
    raise_memlock_limit();
    let executor = match glommio::LocalExecutorBuilder::default().make() {
        Ok(executor) => executor,
        Err(error) => panic!("{}", explain_executor_error(&error, 1)),
    };
    executor.run(future)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn a_shard_blocked_in_a_system_call_is_reported() {
        raise_memlock_limit();
        let before = STALLS_REPORTED.load(Ordering::Relaxed);
        let logger = StallLogger { shard: 7, threshold: Duration::from_millis(5) };
        let executor = glommio::LocalExecutorBuilder::default()
            .preempt_timer(Duration::from_millis(1))
            .detect_stalls(Some(Box::new(logger)))
            .spawn(|| async {
                // A task that blocks its thread (a synchronous system call) for 60 ms: far
                // past the 1 ms budget plus the 5 ms threshold.
                std::thread::sleep(Duration::from_millis(60));
                glommio::yield_if_needed().await;
            })
            .expect("executor starts");
        executor.join().expect("executor ends");
        assert!(STALLS_REPORTED.load(Ordering::Relaxed) > before, "the stall was not reported");
    }

    /// `reactor.idle.poll.us` is the most an idle shard spins before it sleeps; the
    /// patched executor adapts the spin to how long its idle periods last.
    #[test]
    fn idle_spin_grows_with_short_idle_periods_and_shrinks_with_long_ones() {
        let max = Duration::from_micros(200);
        let mut spin = glommio::SpinWindow::new(max);
        assert_eq!(spin.window(), Duration::ZERO, "an idle shard sleeps at once");
        // Idle periods that a spin of the most would have caught: the window grows.
        for expected in [25, 50, 100, 200, 200] {
            let idle = Duration::from_micros(150).max(spin.window() + Duration::from_micros(1));
            spin.idle_ended(idle.min(max));
            assert_eq!(spin.window(), Duration::from_micros(expected).min(max));
        }
        // An idle period that ends within the window changes nothing.
        spin.idle_ended(Duration::from_micros(10));
        assert_eq!(spin.window(), max);
        // Idle periods longer than the most halve it, down to nothing.
        for expected in [100, 50, 25, 0, 0] {
            spin.idle_ended(Duration::from_millis(5));
            assert_eq!(spin.window(), Duration::from_micros(expected));
        }
    }
}
