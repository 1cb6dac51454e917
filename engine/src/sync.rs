//! A first-come, first-served async lock for tasks of one executor.
//!
//! Why not glommio's `Semaphore`: a release wakes the first waiter but does not hand it
//! the unit, so a task that asks in between takes it first and the woken waiter queues
//! again at the back. On a partition log that reordered pipelined appends (seen as
//! batches of one producer landing out of order under load). Here the lock is taken in
//! the order `lock()` was called, always.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Lives on one shard; not `Send`.
#[derive(Debug, Default)]
pub struct FifoLock {
    /// The ticket the next `lock()` gets.
    next_ticket: Cell<u64>,
    /// The ticket that holds, or may take, the lock.
    serving: Cell<u64>,
    waiters: RefCell<BTreeMap<u64, Waker>>,
    /// Tickets whose `lock()` future was dropped before its turn: skipped.
    abandoned: RefCell<BTreeSet<u64>>,
}

impl FifoLock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a ticket now; the future resolves when every earlier ticket has held and
    /// released the lock (or was dropped).
    pub fn lock(&self) -> Acquire<'_> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Acquire { lock: self, ticket, acquired: false }
    }

    fn release(&self) {
        let mut next = self.serving.get() + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&next) {
                next += 1;
            }
        }
        self.serving.set(next);
        if let Some(waker) = self.waiters.borrow_mut().remove(&next) {
            waker.wake();
        }
    }
}

/// The future of [`FifoLock::lock`].
#[derive(Debug)]
pub struct Acquire<'a> {
    lock: &'a FifoLock,
    ticket: u64,
    acquired: bool,
}

impl<'a> Future for Acquire<'a> {
    type Output = FifoGuard<'a>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<FifoGuard<'a>> {
        let lock = self.lock;
        if lock.serving.get() == self.ticket {
            lock.waiters.borrow_mut().remove(&self.ticket);
            self.acquired = true;
            return Poll::Ready(FifoGuard { lock });
        }
        lock.waiters.borrow_mut().insert(self.ticket, context.waker().clone());
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if self.acquired {
            return;
        }
        self.lock.waiters.borrow_mut().remove(&self.ticket);
        if self.lock.serving.get() == self.ticket {
            // Our turn came but we are gone: pass it on.
            self.lock.release();
        } else {
            self.lock.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct FifoGuard<'a> {
    lock: &'a FifoLock,
}

impl Drop for FifoGuard<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    /// A task that asks right after a release waits for the waiter that release woke
    /// (glommio's Semaphore let it jump the queue; this order came out [0, 2, 1]).
    #[test]
    fn a_newcomer_does_not_jump_a_woken_waiter() {
        crate::test_support::run(async {
            let lock = Rc::new(FifoLock::new());
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = lock.lock().await;
            order.borrow_mut().push(0);
            let waiter = {
                let (lock, order) = (lock.clone(), order.clone());
                glommio::spawn_local(async move {
                    let _guard = lock.lock().await;
                    order.borrow_mut().push(1);
                })
            };
            glommio::timer::sleep(Duration::from_millis(1)).await; // The waiter queues.
            drop(first); // Wakes the waiter, which has not run yet.
            let newcomer = lock.lock().await;
            order.borrow_mut().push(2);
            drop(newcomer);
            waiter.await;
            assert_eq!(*order.borrow(), vec![0, 1, 2]);
        });
    }

    /// Many tasks, some holding across an await: the lock goes in call order.
    #[test]
    fn lock_is_taken_in_call_order() {
        crate::test_support::run(async {
            let lock = Rc::new(FifoLock::new());
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..20u32 {
                let (lock, order) = (lock.clone(), order.clone());
                tasks.push(glommio::spawn_local(async move {
                    let _guard = lock.lock().await;
                    order.borrow_mut().push(i);
                    if i % 3 == 0 {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            assert_eq!(*order.borrow(), (0..20).collect::<Vec<_>>());
        });
    }

    #[test]
    fn dropped_waiters_are_skipped() {
        crate::test_support::run(async {
            let lock = FifoLock::new();
            let first = lock.lock().await;
            let second = lock.lock(); // Waits behind `first`, then is dropped.
            let third = lock.lock();
            drop(second);
            drop(first);
            let _third = third.await;
            // A future dropped exactly at its turn passes the turn on.
            let lock = FifoLock::new();
            let first = lock.lock().await;
            let second = lock.lock();
            let third = lock.lock();
            drop(first);
            drop(second);
            let _third = third.await;
        });
    }
}
