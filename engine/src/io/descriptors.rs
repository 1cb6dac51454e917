//! A segment file's descriptors as the shard's descriptor cache ([`crate::fdcache`])
//! sees them: what it may close while the file is idle, and how the file tells it.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use glommio::io::{BufferedFile, DmaFile};

use crate::fdcache;

use super::DirectState;

/// An open descriptor of a segment file (glommio's file). An operation clones it for as
/// long as it uses the descriptor (a direct-mode write's task until the write lands):
/// while a clone lives, the descriptor cache does not close the file.
#[derive(Clone)]
pub(super) enum Handle {
    Buffered(Rc<BufferedFile>),
    Direct(Rc<DmaFile>),
}

impl Handle {
    pub(super) fn in_use(&self) -> bool {
        match self {
            Handle::Buffered(file) => Rc::strong_count(file) > 1,
            Handle::Direct(file) => Rc::strong_count(file) > 1,
        }
    }
}

/// The descriptors of one segment file: what the shard's descriptor cache
/// ([`crate::fdcache`]) may close while the file is idle. The file reopens them on its
/// next use.
pub(super) struct Descriptors {
    pub(super) handle: RefCell<Option<Handle>>,
    /// Buffered mode: a duplicate of the descriptor for zero-copy senders and the
    /// writeback helper on other threads, made on first use. Closing drops only this
    /// reference: a sender still holding the `Arc` keeps the descriptor until it is done.
    pub(super) shared: RefCell<Option<Arc<OwnedFd>>>,
    pub(super) entry: Cell<Option<fdcache::Entry>>,
    /// Set when the file is unlinked while others still hold it (retention deleted the
    /// segment under a read): its name is gone, so it could not be reopened.
    pub(super) pinned: Cell<bool>,
    /// Direct mode: the write state; a file with writes in flight is in use.
    pub(super) writes: Option<Rc<RefCell<DirectState>>>,
}

impl Descriptors {
    pub(super) fn held(&self) -> usize {
        usize::from(self.handle.borrow().is_some()) + usize::from(self.shared.borrow().is_some())
    }

    /// Tells the cache what this file holds now, `opened` of it just opened, and that it
    /// was just used. Never called with `handle` or `shared` borrowed: the cache may
    /// close other files, and looks at this one.
    pub(super) fn account(self: &Rc<Self>, opened: usize) {
        let weak: Weak<dyn fdcache::Holder> = Rc::downgrade(self) as Weak<dyn fdcache::Holder>;
        fdcache::update(&self.entry, weak, self.held(), opened);
    }
}

impl fdcache::Holder for Descriptors {
    fn idle(&self) -> bool {
        let handle_idle = match self.handle.try_borrow() {
            Ok(handle) => !handle.as_ref().is_some_and(Handle::in_use),
            Err(_) => false,
        };
        let writes_idle = match &self.writes {
            None => true,
            Some(state) => state
                .try_borrow()
                .is_ok_and(|state| state.in_flight.is_empty() && state.open.is_none()),
        };
        !self.pinned.get() && handle_idle && writes_idle
    }

    fn evicted(&self) {
        self.entry.set(None);
        let handle = self.handle.borrow_mut().take();
        let shared = self.shared.borrow_mut().take();
        // glommio closes its file from the ring, at the shard's next I/O poll.
        drop((handle, shared));
    }
}
