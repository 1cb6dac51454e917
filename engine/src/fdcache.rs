//! The shard's budget of open segment-file descriptors. A broker with 10,000 partitions
//! held three descriptors per partition for the whole life of every segment (log,
//! offset index, time index) and ran out of them: a third of the partitions of a
//! CreateTopics went offline with EMFILE. Index files are now opened only while they are
//! written or read (their entries live in memory), and segment log files hold their
//! descriptors through this cache: a per-thread (per-shard) LRU list of the files that
//! hold descriptors, with a budget. When a file opens a descriptor and the shard holds
//! more than its budget, the least recently used files that nothing is using close
//! theirs; such a file reopens on its next read or append. Redpanda bounds its open
//! segment readers per shard the same way; Kafka leaves it to `ulimit -n`.
//!
//! A file is in use while an operation holds a clone of its handle (`Rc`): reads and
//! writes in flight, direct-mode writes still landing. Those are never closed; when every
//! file over the budget is in use the shard goes over its budget until they finish (the
//! budget is soft, counted in [`Stats::over_budget`]). Descriptors handed out for
//! `sendfile` (`Arc<OwnedFd>`) stay open until the last holder drops them, whatever the
//! cache does: it only drops the file's own reference.
//!
//! One cache per thread: a shard is one thread (one glommio executor), and the files of
//! a shard never leave it. The budget is [`UNBOUNDED`] until [`set_budget`] is called
//! (the broker sets it from `log.open.files.max` when a shard starts).

use std::cell::{Cell, RefCell};
use std::rc::Weak;

/// The budget of a thread that never set one.
pub const UNBOUNDED: usize = usize::MAX;

/// Something that holds descriptors the cache may close: a segment file.
pub(crate) trait Holder {
    /// Whether nothing uses its descriptors now, so that closing them breaks nothing.
    fn idle(&self) -> bool;
    /// Closes its descriptors (drops its handles). Called by the cache, which has already
    /// forgotten the entry: it must not call back into the cache.
    fn evicted(&self);
}

/// Where a holder sits in its thread's cache: an index and the generation of that slot,
/// so a stale entry (its slot reused) is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    index: u32,
    generation: u32,
}

/// What a shard's cache did, for its log lines and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Descriptors held by files in the cache now.
    pub held: usize,
    /// The most ever held at once.
    pub peak: usize,
    pub budget: usize,
    /// Files in the cache (holding one descriptor or more).
    pub files: usize,
    /// Descriptors opened (first opens, reopens and sendfile duplicates).
    pub opened: u64,
    /// Files whose descriptors the cache closed to stay within the budget.
    pub evictions: u64,
    /// Times the budget was exceeded because every file over it was in use.
    pub over_budget: u64,
}

const NIL: u32 = u32::MAX;

struct Slot {
    prev: u32,
    next: u32,
    generation: u32,
    held: usize,
    holder: Option<Weak<dyn Holder>>,
}

/// The LRU list: a doubly linked list threaded through a slab of slots, least recently
/// used at `head`.
struct Cache {
    budget: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    stats: Stats,
}

impl Cache {
    fn new() -> Self {
        Cache {
            budget: UNBOUNDED,
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            stats: Stats { budget: UNBOUNDED, ..Stats::default() },
        }
    }

    fn live(&self, entry: Entry) -> bool {
        self.slots
            .get(entry.index as usize)
            .is_some_and(|slot| slot.generation == entry.generation && slot.holder.is_some())
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next) = {
            let slot = &self.slots[index as usize];
            (slot.prev, slot.next)
        };
        match prev {
            NIL => self.head = next,
            prev => self.slots[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.slots[next as usize].prev = prev,
        }
    }

    fn push_back(&mut self, index: u32) {
        let tail = self.tail;
        {
            let slot = &mut self.slots[index as usize];
            slot.prev = tail;
            slot.next = NIL;
        }
        match tail {
            NIL => self.head = index,
            tail => self.slots[tail as usize].next = index,
        }
        self.tail = index;
    }

    fn insert(&mut self, holder: Weak<dyn Holder>) -> Entry {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    prev: NIL,
                    next: NIL,
                    generation: 0,
                    held: 0,
                    holder: None,
                });
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 open files")
            }
        };
        let generation = {
            let slot = &mut self.slots[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.holder = Some(holder);
            slot.held = 0;
            slot.generation
        };
        self.push_back(index);
        self.stats.files += 1;
        Entry { index, generation }
    }

    /// Forgets the slot at `index` (a live one) and returns its holder.
    fn take(&mut self, index: u32) -> Option<Weak<dyn Holder>> {
        self.unlink(index);
        let slot = &mut self.slots[index as usize];
        let holder = slot.holder.take();
        self.stats.held -= slot.held;
        slot.held = 0;
        self.free.push(index);
        self.stats.files -= 1;
        holder
    }

    /// Picks idle files, least recently used first, whose descriptors bring the count
    /// down to `target`, forgetting them; files in use move to the back. Never `keep`.
    /// The caller closes the returned files once the cache is no longer borrowed.
    fn pick_victims(&mut self, target: usize, keep: Option<Entry>) -> Vec<Weak<dyn Holder>> {
        let mut victims = Vec::new();
        let mut visits = self.stats.files;
        let mut index = self.head;
        while self.stats.held > target && visits > 0 && index != NIL {
            visits -= 1;
            let next = self.slots[index as usize].next;
            let generation = self.slots[index as usize].generation;
            if keep == Some(Entry { index, generation }) {
                index = next;
                continue;
            }
            let holder = self.slots[index as usize].holder.as_ref().and_then(Weak::upgrade);
            match holder {
                // Dropped without saying so (cannot happen while `SegmentFile::drop`
                // removes its entry, but a dead entry must not hold budget).
                None => {
                    self.take(index);
                }
                Some(holder) if holder.idle() => {
                    victims.extend(self.take(index));
                    self.stats.evictions += 1;
                }
                // In use: it was just used, so it is among the most recent.
                Some(_) => {
                    if next != NIL {
                        self.unlink(index);
                        self.push_back(index);
                    }
                }
            }
            index = next;
        }
        victims
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::new());
}

/// Runs `f` on this thread's cache; `None` once the thread is being torn down.
fn with<R>(f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
    CACHE.try_with(|cache| f(&mut cache.borrow_mut())).ok()
}

fn close_all(victims: Vec<Weak<dyn Holder>>) {
    for victim in victims {
        if let Some(holder) = victim.upgrade() {
            holder.evicted();
        }
    }
}

/// Sets this thread's budget of descriptors held by segment files (at least 1), and
/// closes idle files at once if more are open.
pub fn set_budget(budget: usize) {
    let budget = budget.max(1);
    let victims = with(|cache| {
        cache.budget = budget;
        cache.stats.budget = budget;
        cache.pick_victims(budget, None)
    });
    close_all(victims.unwrap_or_default());
}

/// What this thread's cache holds and did.
pub fn stats() -> Stats {
    with(|cache| cache.stats).unwrap_or_default()
}

/// Records that `holder` now holds `held` descriptors (0: none, it leaves the cache)
/// and was just used; `opened` of them were opened just now. Closes idle files, least
/// recently used first, while the thread holds more than its budget (never `holder`).
pub(crate) fn update(
    entry: &Cell<Option<Entry>>,
    holder: Weak<dyn Holder>,
    held: usize,
    opened: usize,
) {
    let victims = with(|cache| {
        let current = entry.get().filter(|entry| cache.live(*entry));
        let current = match (current, held) {
            (None, 0) => {
                entry.set(None);
                return Vec::new();
            }
            (Some(current), 0) => {
                cache.take(current.index);
                entry.set(None);
                return Vec::new();
            }
            (Some(current), _) => {
                cache.unlink(current.index);
                cache.push_back(current.index);
                current
            }
            (None, _) => cache.insert(holder),
        };
        entry.set(Some(current));
        let slot = &mut cache.slots[current.index as usize];
        let before = slot.held;
        slot.held = held;
        cache.stats.held = cache.stats.held - before + held;
        cache.stats.opened += opened as u64;
        cache.stats.peak = cache.stats.peak.max(cache.stats.held);
        let budget = cache.budget;
        let victims = cache.pick_victims(budget, Some(current));
        if cache.stats.held > budget {
            cache.stats.over_budget += 1;
        }
        victims
    });
    close_all(victims.unwrap_or_default());
}

/// Marks the file of `entry` as just used (most recently used).
pub(crate) fn touch(entry: &Cell<Option<Entry>>) {
    let Some(current) = entry.get() else { return };
    with(|cache| {
        if cache.live(current) {
            cache.unlink(current.index);
            cache.push_back(current.index);
        }
    });
}

/// Forgets the file of `entry` (it closed its descriptors or is dropped).
pub(crate) fn remove(entry: &Cell<Option<Entry>>) {
    let Some(current) = entry.take() else { return };
    with(|cache| {
        if cache.live(current) {
            cache.take(current.index);
        }
    });
}

/// Closes the descriptors of up to `files` idle files, least recently used first,
/// whatever the budget: the process ran out of descriptors (EMFILE), and an open that
/// failed for that may succeed once they are gone. Returns how many were closed.
pub(crate) fn shed(files: usize) -> usize {
    let victims = with(|cache| {
        let mut victims = Vec::new();
        while victims.len() < files {
            let before = victims.len();
            let held = cache.stats.held;
            // One file at a time: a target just under what is held.
            victims.extend(cache.pick_victims(held.saturating_sub(1), None));
            if victims.len() == before {
                break;
            }
        }
        victims
    })
    .unwrap_or_default();
    let count = victims.len();
    close_all(victims);
    count
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A holder with `held` descriptors that is in use while `busy`.
    struct Fake {
        name: &'static str,
        busy: Cell<bool>,
        closed: Rc<RefCell<Vec<&'static str>>>,
        entry: Cell<Option<Entry>>,
    }

    impl Holder for Fake {
        fn idle(&self) -> bool {
            !self.busy.get()
        }
        fn evicted(&self) {
            self.entry.set(None);
            self.closed.borrow_mut().push(self.name);
        }
    }

    fn fake(name: &'static str, closed: &Rc<RefCell<Vec<&'static str>>>) -> Rc<Fake> {
        Rc::new(Fake {
            name,
            busy: Cell::new(false),
            closed: closed.clone(),
            entry: Cell::new(None),
        })
    }

    fn open(file: &Rc<Fake>, held: usize) {
        let weak: Weak<dyn Holder> = Rc::downgrade(file) as Weak<dyn Holder>;
        update(&file.entry, weak, held, held);
    }

    // Each #[test] runs on its own thread, so each has its own cache.

    #[test]
    fn the_least_recently_used_idle_files_close_first_and_the_budget_holds() {
        set_budget(3);
        let closed = Rc::new(RefCell::new(Vec::new()));
        let files: Vec<Rc<Fake>> =
            ["a", "b", "c", "d", "e"].iter().map(|name| fake(name, &closed)).collect();
        for file in &files[..3] {
            open(file, 1);
        }
        assert_eq!(stats().held, 3);
        touch(&files[0].entry); // order now b, c, a
        open(&files[3], 1); // b goes
        assert_eq!(*closed.borrow(), ["b"]);
        open(&files[4], 1); // c goes
        assert_eq!(*closed.borrow(), ["b", "c"]);
        let stats = stats();
        assert_eq!((stats.held, stats.files, stats.evictions, stats.peak), (3, 3, 2, 4));
        assert!(files[1].entry.get().is_none());
        // An evicted file that opens again comes back as the most recent.
        open(&files[1], 1); // a is the oldest now
        assert_eq!(*closed.borrow(), ["b", "c", "a"]);
    }

    #[test]
    fn files_in_use_are_never_closed_and_the_budget_is_exceeded_until_they_finish() {
        set_budget(2);
        let closed = Rc::new(RefCell::new(Vec::new()));
        let (a, b, c) = (fake("a", &closed), fake("b", &closed), fake("c", &closed));
        open(&a, 1);
        open(&b, 1);
        a.busy.set(true);
        b.busy.set(true);
        open(&c, 1);
        assert!(closed.borrow().is_empty(), "a file in use was closed");
        assert_eq!(stats().held, 3);
        assert_eq!(stats().over_budget, 1);
        // a finished. d's open closes c (idle, and the oldest now that the busy files
        // moved to the back), then a.
        a.busy.set(false);
        let d = fake("d", &closed);
        open(&d, 1);
        assert_eq!(*closed.borrow(), ["c", "a"]);
        assert_eq!(stats().held, 2);
        b.busy.set(false);
        set_budget(1);
        assert_eq!(*closed.borrow(), ["c", "a", "b"]);
    }

    #[test]
    fn descriptors_are_counted_per_file_and_removal_gives_them_back() {
        set_budget(4);
        let closed = Rc::new(RefCell::new(Vec::new()));
        let (a, b) = (fake("a", &closed), fake("b", &closed));
        open(&a, 2); // a file and its sendfile duplicate
        open(&b, 2);
        assert_eq!(stats().held, 4);
        remove(&a.entry);
        assert_eq!((stats().held, stats().files), (2, 1));
        let weak: Weak<dyn Holder> = Rc::downgrade(&b) as Weak<dyn Holder>;
        update(&b.entry, weak, 1, 0); // b dropped its duplicate
        assert_eq!(stats().held, 1);
        assert!(closed.borrow().is_empty());
        // A dropped holder that did not remove its entry costs nothing once found.
        set_budget(10);
        let c = fake("c", &closed);
        open(&c, 4);
        drop(c);
        assert_eq!(stats().held, 5);
        set_budget(2); // b is the oldest and idle; c is dead
        assert_eq!(*closed.borrow(), ["b"]);
        assert_eq!((stats().held, stats().files), (0, 0));
    }

    #[test]
    fn shedding_closes_idle_files_whatever_the_budget() {
        let closed = Rc::new(RefCell::new(Vec::new()));
        let files: Vec<Rc<Fake>> = ["a", "b", "c"].iter().map(|name| fake(name, &closed)).collect();
        for file in &files {
            open(file, 1);
        }
        files[0].busy.set(true);
        assert_eq!(stats().budget, UNBOUNDED);
        assert_eq!(shed(5), 2);
        assert_eq!(*closed.borrow(), ["b", "c"]);
        assert_eq!(stats().held, 1);
    }
}
