//! The purgatory: operations that cannot finish yet (a fetch short of `min_bytes`, a
//! produce with acks=all short of the high watermark, a session waiting for a heartbeat)
//! wait here, watched by keys and timed by the [`TimingWheel`], until an event on one of
//! their keys completes them or their deadline expires them — exactly once.
//!
//! Sans-I/O, like raft-rs's `RawNode`: the purgatory never answers a request itself. It
//! owns each parked operation and hands it back, by value, from exactly one of
//! [`try_complete_else_watch`](Purgatory::try_complete_else_watch) /
//! [`check_key`](Purgatory::check_key) (completed), [`advance`](Purgatory::advance)
//! (expired) or [`cancel`](Purgatory::cancel). Ownership makes "never both" a type fact:
//! once an operation is handed back it is no longer here.
//!
//! Storage: each operation is stored once, in a slab, whatever the number of keys it
//! watches; each key's watch list holds slab indexes; each operation remembers where it
//! sits in each list, so leaving all lists is O(keys) with `swap_remove`, and a key whose
//! list empties leaves the map. Nothing is left behind by completed operations, so
//! millions can pass through without growth (Kafka instead purges lazily every
//! `purge.interval.requests`).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use thiserror::Error;

use super::wheel::{TimerError, TimerHandle, TimingWheel, WheelOptions};

/// An operation that may be able to finish when something it watches changes.
///
/// `C` is whatever the caller passes to let the operation look at the world (a partition's
/// high watermark and log end, a group's member table). Completing or expiring is the
/// caller's business once the purgatory hands the operation back: read what is there,
/// build the response, send it.
pub trait DelayedOperation<C: ?Sized = ()> {
    /// Whether the operation can finish now. Called when it is first offered and on every
    /// event on one of its keys; after it returns `true` the operation is handed back as
    /// completed and never called again. It must not block and should be cheap: it runs
    /// once per watcher per event.
    fn try_complete(&mut self, context: &mut C) -> bool;
}

/// Names one parked operation. Stale after the operation leaves (completed, expired,
/// cancelled): every method then treats it as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId {
    index: u32,
    generation: u32,
}

/// An operation that `try_complete` let finish; the caller now answers it.
#[derive(Debug)]
pub struct Completed<O> {
    pub id: OpId,
    pub op: O,
}

/// An operation whose deadline passed first; the caller now answers it as timed out
/// (Kafka: a delayed fetch answers with whatever is there, a delayed produce with
/// REQUEST_TIMED_OUT).
#[derive(Debug)]
pub struct Expired<O> {
    pub id: OpId,
    pub op: O,
}

/// What [`Purgatory::try_complete_else_watch`] did with an operation.
#[derive(Debug)]
pub enum Watched<O> {
    /// It could finish at once and was never parked.
    Completed(O),
    /// It waits under this id.
    Parked(OpId),
}

/// Errors of the purgatory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PurgatoryError {
    /// `ops_max` operations are already parked.
    #[error("purgatory full: {ops_max} operations")]
    Full { ops_max: usize },
    /// The timing wheel refused the deadline.
    #[error("purgatory timer: {0}")]
    Timer(#[from] TimerError),
}

/// An operation the purgatory would not park, handed back so the caller can still answer
/// it (for instance with an error code).
pub struct Rejected<O> {
    pub op: O,
    pub error: PurgatoryError,
}

impl<O> fmt::Debug for Rejected<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected").field("error", &self.error).finish_non_exhaustive()
    }
}

/// Shape and bounds of a purgatory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgatoryOptions {
    /// The timing wheel (its `entries_max` is raised to `ops_max` if lower).
    pub wheel: WheelOptions,
    /// Parked operations at most; beyond it operations are [`Rejected`].
    pub ops_max: usize,
}

impl PurgatoryOptions {
    pub const DEFAULT: PurgatoryOptions =
        PurgatoryOptions { wheel: WheelOptions::DEFAULT, ops_max: 1 << 20 };

    /// Starts the wheel at `start_ms` (the shard clock's reading at creation).
    pub fn starting_at(start_ms: u64) -> Self {
        let mut options = Self::DEFAULT;
        options.wheel.start_ms = start_ms;
        options
    }
}

impl Default for PurgatoryOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where one key's watch list mentions an operation.
#[derive(Debug)]
struct Watch<K> {
    key: K,
    /// Index of this operation's `Watcher` in `watchers[key]`.
    position: u32,
}

/// One entry of a key's watch list.
#[derive(Debug, Clone, Copy)]
struct Watcher {
    op_index: u32,
    /// Index of the matching `Watch` in the operation's `watches`.
    watch_index: u32,
}

#[derive(Debug)]
struct Parked<K, O> {
    op: O,
    timer: TimerHandle,
    watches: Vec<Watch<K>>,
}

#[derive(Debug)]
struct Slot<K, O> {
    generation: u32,
    /// Next free slot when vacant.
    next_free: u32,
    parked: Option<Parked<K, O>>,
}

const NIL: u32 = u32::MAX;

/// Delayed operations of one shard, watched by keys `K` (a topic-partition, a group id,
/// a member id) and timed by one timing wheel. Lives on one shard; no locks.
#[derive(Debug)]
pub struct Purgatory<K, O> {
    options: PurgatoryOptions,
    slots: Vec<Slot<K, O>>,
    free_head: u32,
    len: usize,
    watchers: HashMap<K, Vec<Watcher>>,
    wheel: TimingWheel<OpId>,
    /// Reused across `advance` calls so expiring costs no allocation in steady state.
    expired_buffer: Vec<(TimerHandle, OpId)>,
}

impl<K: Hash + Eq + Clone, O> Purgatory<K, O> {
    /// # Panics
    /// When the wheel options are invalid (see [`TimingWheel::new`]) or `ops_max` is 0.
    pub fn new(options: PurgatoryOptions) -> Self {
        assert!(options.ops_max > 0, "ops_max must be >= 1");
        let mut wheel_options = options.wheel;
        wheel_options.entries_max = wheel_options.entries_max.max(options.ops_max);
        Purgatory {
            options,
            slots: Vec::new(),
            free_head: NIL,
            len: 0,
            watchers: HashMap::new(),
            wheel: TimingWheel::new(wheel_options),
            expired_buffer: Vec::new(),
        }
    }

    /// Parked operations.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys with at least one watcher (a key leaves as soon as its last watcher does).
    pub fn watched_keys(&self) -> usize {
        self.watchers.len()
    }

    /// Operations watching `key`.
    pub fn watchers_of(&self, key: &K) -> usize {
        self.watchers.get(key).map_or(0, Vec::len)
    }

    /// The purgatory's time (its wheel's).
    pub fn now_ms(&self) -> u64 {
        self.wheel.now_ms()
    }

    /// When the next `advance` is needed; see [`TimingWheel::next_deadline_ms`].
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.wheel.next_deadline_ms()
    }

    /// A parked operation, to read.
    pub fn get(&self, id: OpId) -> Option<&O> {
        self.parked(id).map(|parked| &parked.op)
    }

    /// A parked operation, to change (for instance to record a heartbeat).
    pub fn get_mut(&mut self, id: OpId) -> Option<&mut O> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.parked.as_mut().map(|parked| &mut parked.op)
    }

    /// Kafka's `tryCompleteElseWatch`: completes `op` at once if it can, else parks it
    /// under every key of `keys` (duplicates are watched once) until an event completes it
    /// or `deadline_ms` expires it.
    pub fn try_complete_else_watch<C: ?Sized>(
        &mut self,
        mut op: O,
        keys: impl IntoIterator<Item = K>,
        deadline_ms: u64,
        context: &mut C,
    ) -> Result<Watched<O>, Rejected<O>>
    where
        O: DelayedOperation<C>,
    {
        if op.try_complete(context) {
            return Ok(Watched::Completed(op));
        }
        self.watch(op, keys, deadline_ms).map(Watched::Parked)
    }

    /// Parks `op` without trying it first (the caller knows it cannot finish yet). An
    /// operation with no keys is a plain timeout. A deadline already past expires on the
    /// next `advance`.
    pub fn watch(
        &mut self,
        op: O,
        keys: impl IntoIterator<Item = K>,
        deadline_ms: u64,
    ) -> Result<OpId, Rejected<O>> {
        if self.len >= self.options.ops_max {
            return Err(Rejected {
                op,
                error: PurgatoryError::Full { ops_max: self.options.ops_max },
            });
        }
        let full = PurgatoryError::Full { ops_max: self.options.ops_max };
        let (index, generation) = if self.free_head != NIL {
            (self.free_head, self.slots[self.free_head as usize].generation)
        } else {
            match u32::try_from(self.slots.len()) {
                Ok(index) if index != NIL => (index, 0),
                _ => return Err(Rejected { op, error: full }),
            }
        };
        let id = OpId { index, generation };
        let timer = match self.wheel.add(deadline_ms, id) {
            Ok(timer) => timer,
            Err(error) => return Err(Rejected { op, error: error.into() }),
        };
        // Committed: claim the slot.
        if self.free_head == index {
            self.free_head = self.slots[index as usize].next_free;
        } else {
            self.slots.push(Slot { generation, next_free: NIL, parked: None });
        }
        let mut watches: Vec<Watch<K>> = Vec::new();
        for key in keys {
            let list = self.watchers.entry(key.clone()).or_default();
            // The operation's own watchers are the latest pushed onto each list, so a
            // duplicate key shows up as this operation at the tail.
            if list.last().is_some_and(|watcher| watcher.op_index == index) {
                continue;
            }
            let watch_index = u32::try_from(watches.len()).expect("keys per operation fit u32");
            let position = u32::try_from(list.len()).expect("watchers per key fit u32");
            list.push(Watcher { op_index: index, watch_index });
            watches.push(Watch { key, position });
        }
        let slot = &mut self.slots[index as usize];
        assert!(slot.parked.is_none());
        slot.next_free = NIL;
        slot.parked = Some(Parked { op, timer, watches });
        self.len += 1;
        Ok(id)
    }

    /// An event happened on `key` (an append, a high watermark move, a heartbeat): tries
    /// every operation watching it and hands back those that completed, each removed from
    /// all of its keys and its timer. Operations that cannot finish stay parked.
    pub fn check_key<C: ?Sized>(&mut self, key: &K, context: &mut C) -> Vec<Completed<O>>
    where
        O: DelayedOperation<C>,
    {
        let mut completed = Vec::new();
        let mut position = 0;
        // The list is looked up again each round: completing an operation changes it (and
        // may drop it from the map when it empties).
        while let Some(watcher) = self.watchers.get(key).and_then(|list| list.get(position)) {
            let op_index = watcher.op_index;
            let parked = self.slots[op_index as usize]
                .parked
                .as_mut()
                .expect("watch lists hold only parked operations");
            if parked.op.try_complete(context) {
                let (id, parked) = self.remove(op_index);
                assert!(self.wheel.discard(parked.timer), "a parked operation's timer is live");
                completed.push(Completed { id, op: parked.op });
                // `swap_remove` moved the list's last watcher into `position`: try it next.
            } else {
                position += 1;
            }
        }
        completed
    }

    /// Moves time to `now_ms` and hands back every operation whose deadline passed (see
    /// [`TimingWheel::advance`] for exactly when), removed from all of its keys.
    pub fn advance(&mut self, now_ms: u64) -> Vec<Expired<O>> {
        let mut expired = Vec::new();
        self.advance_into(now_ms, &mut expired);
        expired
    }

    /// [`advance`](Self::advance) into a caller's buffer (appends; returns how many).
    pub fn advance_into(&mut self, now_ms: u64, expired: &mut Vec<Expired<O>>) -> usize {
        let mut buffer = std::mem::take(&mut self.expired_buffer);
        self.wheel.advance(now_ms, &mut buffer);
        let count = buffer.len();
        for (_, id) in buffer.drain(..) {
            let slot = &self.slots[id.index as usize];
            // The timer is cancelled whenever an operation leaves another way, so every
            // expired timer names a parked operation.
            assert_eq!(slot.generation, id.generation);
            assert!(slot.parked.is_some());
            let (removed, parked) = self.remove(id.index);
            assert_eq!(removed, id);
            expired.push(Expired { id, op: parked.op });
        }
        self.expired_buffer = buffer;
        count
    }

    /// Removes a parked operation without completing it (its client went away). `None`
    /// when `id` is stale.
    pub fn cancel(&mut self, id: OpId) -> Option<O> {
        self.parked(id)?;
        let (_, parked) = self.remove(id.index);
        assert!(self.wheel.discard(parked.timer), "a parked operation's timer is live");
        Some(parked.op)
    }

    /// Moves a parked operation's deadline (a heartbeat extends a session). O(1). Returns
    /// false when `id` is stale.
    pub fn reschedule(&mut self, id: OpId, deadline_ms: u64) -> bool {
        let Some(parked) = self.parked(id) else {
            return false;
        };
        assert!(self.wheel.discard(parked.timer), "a parked operation's timer is live");
        // One live entry just left, so the wheel has room (`entries_max` counts live ones).
        let timer = self.wheel.add(deadline_ms, id).expect("a wheel entry was just freed");
        if let Some(parked) = self.slots[id.index as usize].parked.as_mut() {
            parked.timer = timer;
        }
        true
    }

    fn parked(&self, id: OpId) -> Option<&Parked<K, O>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.parked.as_ref()
    }

    /// Takes a parked operation out of its slot and out of every watch list (dropping
    /// lists that empty). Leaves its timer alone.
    fn remove(&mut self, op_index: u32) -> (OpId, Parked<K, O>) {
        let slot = &mut self.slots[op_index as usize];
        let parked = slot.parked.take().expect("remove of a parked operation");
        let id = OpId { index: op_index, generation: slot.generation };
        slot.generation = slot.generation.wrapping_add(1);
        slot.next_free = self.free_head;
        self.free_head = op_index;
        self.len -= 1;
        for watch in &parked.watches {
            let list = self.watchers.get_mut(&watch.key).expect("a watched key has a list");
            let position = watch.position as usize;
            assert_eq!(list[position].op_index, op_index);
            list.swap_remove(position);
            if let Some(moved) = list.get(position) {
                let moved_parked = self.slots[moved.op_index as usize]
                    .parked
                    .as_mut()
                    .expect("watch lists hold only parked operations");
                moved_parked.watches[moved.watch_index as usize].position = watch.position;
            } else if list.is_empty() {
                self.watchers.remove(&watch.key);
            }
        }
        (id, parked)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Completes when the level of the key being checked reaches `need`.
    #[derive(Debug, PartialEq, Eq)]
    struct Waiter {
        name: u64,
        need: u64,
        tries: u32,
    }

    impl Waiter {
        fn new(name: u64, need: u64) -> Self {
            Waiter { name, need, tries: 0 }
        }
    }

    /// The world an event shows the operations: a level (say, a high watermark).
    struct Level(u64);

    impl DelayedOperation<Level> for Waiter {
        fn try_complete(&mut self, context: &mut Level) -> bool {
            self.tries += 1;
            context.0 >= self.need
        }
    }

    fn new_purgatory(ops_max: usize) -> Purgatory<u32, Waiter> {
        Purgatory::new(PurgatoryOptions { ops_max, ..PurgatoryOptions::DEFAULT })
    }

    fn names_completed(done: &[Completed<Waiter>]) -> Vec<u64> {
        done.iter().map(|done| done.op.name).collect()
    }

    #[test]
    fn completes_at_once_when_it_can() {
        let mut purgatory = new_purgatory(8);
        let watched =
            purgatory.try_complete_else_watch(Waiter::new(1, 5), [7], 100, &mut Level(5)).unwrap();
        assert!(matches!(watched, Watched::Completed(Waiter { name: 1, tries: 1, .. })));
        assert!(purgatory.is_empty());
        assert_eq!(purgatory.watched_keys(), 0);
        assert_eq!(purgatory.next_deadline_ms(), None);
    }

    #[test]
    fn event_completes_only_ready_ops_and_clears_their_watches() {
        let mut purgatory = new_purgatory(8);
        let mut ids = Vec::new();
        for (name, need) in [(1, 10), (2, 20), (3, 10)] {
            let watched = purgatory
                .try_complete_else_watch(Waiter::new(name, need), [7, 8], 100, &mut Level(0))
                .unwrap();
            let Watched::Parked(id) = watched else { panic!("parked expected") };
            ids.push(id);
        }
        assert_eq!(purgatory.watchers_of(&7), 3);
        assert_eq!(purgatory.watchers_of(&8), 3);
        let done = purgatory.check_key(&7, &mut Level(10));
        let mut names = names_completed(&done);
        names.sort_unstable();
        assert_eq!(names, [1, 3]);
        assert_eq!(
            done.iter().map(|done| done.id).collect::<BTreeSet<_>>(),
            [ids[0], ids[2]].into()
        );
        assert_eq!(purgatory.len(), 1);
        assert_eq!(purgatory.watchers_of(&7), 1);
        assert_eq!(purgatory.watchers_of(&8), 1);
        assert!(purgatory.get(ids[0]).is_none());
        assert_eq!(purgatory.get(ids[1]).map(|op| op.name), Some(2));
        // Completed operations are gone from the timer too.
        let expired = purgatory.advance(100);
        assert_eq!(expired.iter().map(|e| e.op.name).collect::<Vec<_>>(), [2]);
        assert_eq!(expired[0].id, ids[1]);
        assert!(purgatory.is_empty());
        assert_eq!(purgatory.watched_keys(), 0);
        assert!(purgatory.check_key(&8, &mut Level(u64::MAX)).is_empty());
    }

    #[test]
    fn expiry_is_not_early_and_clears_watches() {
        let mut purgatory = new_purgatory(8);
        purgatory.watch(Waiter::new(1, 1), [1, 2, 3], 50).unwrap();
        assert!(purgatory.advance(49).is_empty());
        assert_eq!(purgatory.watched_keys(), 3);
        let expired = purgatory.advance(50);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].op.tries, 0, "watch does not try the operation");
        assert_eq!(purgatory.watched_keys(), 0);
        for key in [1, 2, 3] {
            assert!(purgatory.check_key(&key, &mut Level(9)).is_empty());
        }
    }

    #[test]
    fn event_and_deadline_in_the_same_step_complete_once() {
        // Event first, then the advance that reaches the deadline: completed only.
        let mut purgatory = new_purgatory(8);
        purgatory.watch(Waiter::new(1, 1), [1], 10).unwrap();
        let done = purgatory.check_key(&1, &mut Level(1));
        assert_eq!(names_completed(&done), [1]);
        assert!(purgatory.advance(10).is_empty());
        assert!(purgatory.is_empty());

        // Advance first, then the event in the same millisecond: expired only.
        let mut purgatory = new_purgatory(8);
        purgatory.watch(Waiter::new(2, 1), [1], 10).unwrap();
        let expired = purgatory.advance(10);
        assert_eq!(expired.len(), 1);
        assert!(purgatory.check_key(&1, &mut Level(1)).is_empty());
        assert_eq!(purgatory.watched_keys(), 0);
    }

    #[test]
    fn op_watching_100_keys_completes_once() {
        let mut purgatory = new_purgatory(8);
        let id = purgatory.watch(Waiter::new(1, 5), 0..100u32, 1_000).unwrap();
        let other = purgatory.watch(Waiter::new(2, 99), [50], 1_000).unwrap();
        assert_eq!(purgatory.watched_keys(), 100);
        // Events on keys that do not let it finish leave it parked.
        for key in 0..40 {
            assert!(purgatory.check_key(&key, &mut Level(4)).is_empty());
        }
        assert_eq!(purgatory.get(id).map(|op| op.tries), Some(40));
        // Found from any key; completes once.
        let done = purgatory.check_key(&73, &mut Level(5));
        assert_eq!(names_completed(&done), [1]);
        assert_eq!(done[0].id, id);
        let mut again = 0;
        for key in 0..100 {
            again += purgatory.check_key(&key, &mut Level(5)).len();
        }
        assert_eq!(again, 0);
        // Only the other operation's key remains.
        assert_eq!(purgatory.watched_keys(), 1);
        assert_eq!(purgatory.watchers_of(&50), 1);
        let expired = purgatory.advance(1_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, other);
        assert_eq!(purgatory.watched_keys(), 0);
    }

    #[test]
    fn duplicate_keys_are_watched_once() {
        let mut purgatory = new_purgatory(8);
        purgatory.watch(Waiter::new(1, 1), [4, 4, 5, 4], 10).unwrap();
        assert_eq!(purgatory.watchers_of(&4), 1);
        assert_eq!(purgatory.watchers_of(&5), 1);
        let done = purgatory.check_key(&4, &mut Level(0));
        assert!(done.is_empty());
        assert_eq!(purgatory.slots[0].parked.as_ref().unwrap().op.tries, 1);
        assert_eq!(purgatory.check_key(&5, &mut Level(1)).len(), 1);
        assert_eq!(purgatory.watched_keys(), 0);
    }

    #[test]
    fn full_purgatory_hands_the_operation_back() {
        let mut purgatory = new_purgatory(2);
        let a = purgatory.watch(Waiter::new(1, 1), [1], 10).unwrap();
        purgatory.watch(Waiter::new(2, 1), [1], 10).unwrap();
        let rejected = purgatory.watch(Waiter::new(3, 1), [1], 10).unwrap_err();
        assert_eq!(rejected.op.name, 3);
        assert_eq!(rejected.error, PurgatoryError::Full { ops_max: 2 });
        assert_eq!(purgatory.watchers_of(&1), 2);
        assert_eq!(purgatory.cancel(a).map(|op| op.name), Some(1));
        assert_eq!(purgatory.cancel(a), None);
        purgatory.watch(Waiter::new(3, 1), [1], 10).unwrap();
        assert_eq!(purgatory.len(), 2);
    }

    #[test]
    fn reschedule_moves_the_deadline() {
        let mut purgatory = new_purgatory(8);
        let id = purgatory.watch(Waiter::new(1, 1), [1], 10).unwrap();
        assert!(purgatory.reschedule(id, 30));
        assert!(purgatory.advance(29).is_empty());
        assert_eq!(purgatory.advance(30).len(), 1);
        assert!(!purgatory.reschedule(id, 40));
        assert_eq!(purgatory.get_mut(id), None);
    }

    #[test]
    fn a_million_ops_pass_through_without_growth() {
        let mut purgatory: Purgatory<u32, Waiter> = new_purgatory(50_000);
        let live_max = 1_000u64;
        let mut now = 0;
        let (mut completed, mut expired) = (0u64, 0u64);
        for name in 0..1_000_000u64 {
            let key = (name % 1_024) as u32;
            // Every other operation watches a second key too.
            let keys = if name % 2 == 0 { vec![key] } else { vec![key, key + 5_000] };
            purgatory.watch(Waiter::new(name, name % 3), keys, now + 20).unwrap();
            if name % 3 == 0 {
                completed += purgatory.check_key(&key, &mut Level(name % 3)).len() as u64;
            }
            if name % live_max == 0 {
                now += 1;
                expired += purgatory.advance(now).len() as u64;
            }
        }
        expired += purgatory.advance(now + 20).len() as u64;
        assert_eq!(completed + expired, 1_000_000);
        assert!(completed > 300_000, "completed {completed}");
        assert!(purgatory.is_empty());
        assert_eq!(purgatory.watched_keys(), 0);
        assert!(purgatory.wheel.is_empty());
        // About 20 ms of 1 000 operations each were ever live at once.
        assert!(purgatory.slots.len() <= 21 * live_max as usize, "slots {}", purgatory.slots.len());
        assert!(purgatory.watchers.capacity() <= 4 * 2_048, "{}", purgatory.watchers.capacity());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Watch { keys: Vec<u32>, need: u64, delay_ms: u64 },
        Event { key: u32, level: u64 },
        Advance { step_ms: u64 },
        Cancel { pick: usize },
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (proptest::collection::vec(0u32..6, 0..4), 0u64..8, 0u64..40)
                .prop_map(|(keys, need, delay_ms)| Step::Watch { keys, need, delay_ms }),
            4 => (0u32..6, 0u64..8).prop_map(|(key, level)| Step::Event { key, level }),
            3 => (0u64..15).prop_map(|step_ms| Step::Advance { step_ms }),
            1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        ]
    }

    #[derive(Debug)]
    struct Reference {
        keys: BTreeSet<u32>,
        need: u64,
        deadline_ms: u64,
    }

    proptest! {
        /// Interleaved events, expiry and cancellation against a reference: each operation
        /// leaves exactly once (completed iff an event on one of its keys was at its level,
        /// expired iff its deadline passed first), never early, and the watch lists always
        /// hold exactly the live operations' keys.
        #[test]
        fn exactly_once_under_interleaving(
            steps in proptest::collection::vec(step_strategy(), 1..200),
        ) {
            let mut purgatory = new_purgatory(1_000);
            let mut live: BTreeMap<OpId, Reference> = BTreeMap::new();
            let mut left: BTreeSet<u64> = BTreeSet::new();
            let mut ids: Vec<OpId> = Vec::new();
            let mut now = 0;
            let mut name = 0;
            for step in steps {
                match step {
                    Step::Watch { keys, need, delay_ms } => {
                        name += 1;
                        let deadline_ms = now + delay_ms;
                        let watched = purgatory.try_complete_else_watch(
                            Waiter::new(name, need), keys.clone(), deadline_ms, &mut Level(0));
                        match watched.unwrap() {
                            Watched::Completed(op) => {
                                prop_assert_eq!(need, 0);
                                prop_assert!(left.insert(op.name));
                            }
                            Watched::Parked(id) => {
                                prop_assert!(need > 0);
                                ids.push(id);
                                live.insert(id, Reference {
                                    keys: keys.into_iter().collect(), need, deadline_ms,
                                });
                            }
                        }
                    }
                    Step::Event { key, level } => {
                        let done = purgatory.check_key(&key, &mut Level(level));
                        let expected: BTreeSet<OpId> = live.iter()
                            .filter(|(_, r)| r.keys.contains(&key) && r.need <= level)
                            .map(|(id, _)| *id).collect();
                        let got: BTreeSet<OpId> = done.iter().map(|d| d.id).collect();
                        prop_assert_eq!(got.len(), done.len());
                        prop_assert_eq!(&got, &expected);
                        for done in done {
                            prop_assert!(left.insert(done.op.name), "left twice");
                            live.remove(&done.id);
                        }
                    }
                    Step::Advance { step_ms } => {
                        now += step_ms;
                        let expired = purgatory.advance(now);
                        let expected: BTreeSet<OpId> = live.iter()
                            .filter(|(_, r)| r.deadline_ms <= now)
                            .map(|(id, _)| *id).collect();
                        let got: BTreeSet<OpId> = expired.iter().map(|e| e.id).collect();
                        prop_assert_eq!(got.len(), expired.len());
                        prop_assert_eq!(&got, &expected);
                        for expired in expired {
                            prop_assert!(left.insert(expired.op.name), "left twice");
                            live.remove(&expired.id);
                        }
                    }
                    Step::Cancel { pick } => {
                        if ids.is_empty() { continue; }
                        let id = ids[pick % ids.len()];
                        match (purgatory.cancel(id), live.remove(&id)) {
                            (Some(op), Some(_)) => prop_assert!(left.insert(op.name)),
                            (None, None) => {}
                            (got, expected) => prop_assert!(false, "{:?} vs {:?}", got, expected),
                        }
                    }
                }
                prop_assert_eq!(purgatory.len(), live.len());
                let keys: BTreeSet<u32> = live.values().flat_map(|r| r.keys.iter().copied()).collect();
                prop_assert_eq!(purgatory.watched_keys(), keys.len());
                for key in keys {
                    let watching = live.values().filter(|r| r.keys.contains(&key)).count();
                    prop_assert_eq!(purgatory.watchers_of(&key), watching);
                }
            }
            let total = left.len() + live.len();
            prop_assert_eq!(total as u64, name);
            prop_assert_eq!(purgatory.advance(u64::MAX).len(), live.len());
            prop_assert!(purgatory.is_empty());
            prop_assert_eq!(purgatory.watched_keys(), 0);
        }
    }
}
