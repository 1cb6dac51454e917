//! Start-up helpers for glommio executors: io_uring needs locked memory for its rings and
//! registered buffers, and a too-small `RLIMIT_MEMLOCK` is the most common reason a shard
//! fails to start. We raise the limit when we may, and say clearly what failed when not.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Locked memory a shard needs: glommio's default 10 MiB of I/O memory plus the rings.
pub const MEMLOCK_BYTES_PER_SHARD: u64 = 16 << 20;

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
