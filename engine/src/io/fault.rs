//! Fault injection for tests: a [`FaultPlan`] makes the next sync, append, read or
//! write of the files sharing it fail, on real files, so recovery sees what a crash or a
//! device error would leave.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Faults to inject into the next operations of the files that share this plan. Atomic
/// so that options holding a plan can cross to a shard's thread.
#[derive(Debug)]
pub struct FaultPlan {
    pub(super) fail_next_sync: AtomicBool,
    /// `usize::MAX` when no tear is planned.
    pub(super) tear_next_append_after: AtomicUsize,
    pub(super) fail_next_read: AtomicBool,
    pub(super) fail_next_write: AtomicBool,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            fail_next_sync: AtomicBool::new(false),
            tear_next_append_after: AtomicUsize::new(usize::MAX),
            fail_next_read: AtomicBool::new(false),
            fail_next_write: AtomicBool::new(false),
        }
    }
}

impl FaultPlan {
    /// The next `sync` fails.
    pub fn fail_next_sync(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// The next append writes only `bytes` bytes of its data, then fails.
    pub fn tear_next_append_after(&self, bytes: usize) {
        self.tear_next_append_after.store(bytes, Ordering::SeqCst);
    }

    /// The next `read_at` fails.
    pub fn fail_next_read(&self) {
        self.fail_next_read.store(true, Ordering::SeqCst);
    }

    pub(super) fn take_sync(&self) -> bool {
        self.fail_next_sync.swap(false, Ordering::SeqCst)
    }

    pub(super) fn take_tear(&self) -> Option<usize> {
        let after = self.tear_next_append_after.swap(usize::MAX, Ordering::SeqCst);
        (after != usize::MAX).then_some(after)
    }

    /// The write of the next append fails without writing anything. Buffered mode: the
    /// append fails. Direct mode: the append returns (its write is in flight) and the
    /// write's failure is reported by every later operation on the file.
    pub fn fail_next_write(&self) {
        self.fail_next_write.store(true, Ordering::SeqCst);
    }

    pub(super) fn take_read(&self) -> bool {
        self.fail_next_read.swap(false, Ordering::SeqCst)
    }

    pub(super) fn take_write(&self) -> bool {
        self.fail_next_write.swap(false, Ordering::SeqCst)
    }
}

pub(super) fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}
