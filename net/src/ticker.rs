//! A task that wakes its executor every millisecond while some start-up work runs.
//!
//! glommio 0.9 can leave an executor parked although work it waits for has completed: a
//! shared channel's connect (see `mesh.rs`) stayed pending until something else woke the
//! executor. Once a shard serves, its timers (housekeeping every 100 ms, the fetch
//! purgatory) wake it; while the mesh connects nothing does, so it connects under a
//! ticker.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use glommio::task::JoinHandle;

pub struct Ticker {
    done: Rc<Cell<bool>>,
    task: JoinHandle<()>,
}

impl Ticker {
    /// Starts ticking on the current executor.
    pub fn start() -> Ticker {
        let done = Rc::new(Cell::new(false));
        let task = {
            let done = done.clone();
            glommio::spawn_local(async move {
                while !done.get() {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .detach()
        };
        Ticker { done, task }
    }

    /// Stops ticking and waits for the task to end.
    pub async fn stop(self) {
        self.done.set(true);
        self.task.await;
    }
}
