//! The hierarchical timing wheel: O(1) add and cancel of deadlines, driven only by
//! `advance(now_ms)`, so that the purgatory and every timeout in a shard cost a couple of
//! writes instead of a heap's O(log n), and tests drive time by hand.
//!
//! Measured against a `BinaryHeap` and a `BTreeMap` timer by `sluice-bench timer` (figures
//! and command in `perf/RESULTS.md`, "Timing wheel (2026-11-21)").
//!
//! Layout (one wheel per shard, no locks, no `Rc`):
//! - every entry lives in one slab (`Vec<Slot<T>>`: deadline and payload, 16 bytes for
//!   an 8-byte payload) with a stamp per slot in a dense `Vec<u32>` beside it. A stamp is
//!   the slot's generation and its state (free, live, or one of two kinds of tombstone),
//!   so a [`TimerHandle`] is `(index, generation)`, a stale handle is harmless, and the
//!   payload needs no `Option` tag of its own. The lowest free slot is reused
//!   first (a bitmap with summaries, see `free.rs`), so adds fill the slab front to back
//!   even after `advance` freed slots in a random order;
//! - add is "fill a slot, append its index to the incoming list" (kept as runs of
//!   consecutive indexes: a burst of adds into lowest-first slots is one run, so most adds
//!   write no index at all; ~3 ns less per add at 1M fresh); the next `advance` places the
//!   incoming entries into their buckets before it moves time (the wheel's time has
//!   not moved since they were added, so they land where an immediate placement would
//!   have put them), and frees the ones cancelled meanwhile without placing them.
//!   Netty's `HashedWheelTimer` defers placement the same way (its adds go to a queue the
//!   tick thread drains). Most delayed operations finish long before their timeout, often
//!   within the tick they were parked in, so their timers are never placed at all; a
//!   burst of adds is placed in one tight loop;
//! - every bucket is a `Vec<u32>` of slab indexes: placing is pushing an index at the end
//!   of a bucket, with no allocation (drained buckets keep their vector), and the few
//!   buckets that take most entries keep their ends in cache;
//! - cancel is lazy: it bumps the slot's stamp (`discard`: one write to the dense stamp
//!   array; `cancel` also takes the payload out of the slot), unlinks nothing and leaves
//!   the index in its bucket as a tombstone. The slot is freed only when `advance` drains
//!   or cascades that bucket, or by a compaction, so a slot is never reused while its
//!   index sits in a list (no stale index can alias a newer entry). A compaction sweeps
//!   every bucket when the slab would otherwise grow while tombstones outnumber live
//!   entries by more than a small slack, so cancels never leak memory: the slab holds at
//!   most `2 * peak_live + 4097` slots, and compactions cost O(1) per cancel amortized;
//! - level `k` has `wheel_size` buckets of `wheel_size^k` ticks each; levels above 0 are
//!   created on demand for far deadlines (Kafka's overflow wheels) and their buckets move
//!   down a level (cascade) when time reaches them;
//! - a bitmap of non-empty buckets per level lets `advance` jump straight to the next
//!   non-empty bucket, so a jump of an hour over a near-empty wheel costs a handful of
//!   steps, not 3.6 million.
//!
//! Time is counted in ticks. A deadline `d` (ms) belongs to tick `ceil(d / tick_ms)`; the
//! wheel's clock is `floor(now / tick_ms)`. An entry expires when the clock reaches its
//! tick, which gives the guarantee stated on [`TimingWheel::advance`].

use std::mem::MaybeUninit;

use thiserror::Error;

use super::free::FreeSlots;

mod level;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use level::Level;

use crate::limits::{BUCKET_KEEP_CAPACITY, TOMBSTONE_SLACK};
pub use crate::limits::{ENTRIES_MAX_LIMIT, WHEEL_SIZE_MAX};

/// Errors of the timing wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TimerError {
    /// The wheel already holds `entries_max` entries.
    #[error("timing wheel full: {entries_max} entries")]
    Full { entries_max: usize },
    /// `tick_ms` must be at least 1.
    #[error("tick_ms must be >= 1, got {tick_ms}")]
    TickZero { tick_ms: u64 },
    /// `wheel_size` must lie in `2..=WHEEL_SIZE_MAX`.
    #[error("wheel_size must be in 2..={max}, got {wheel_size}")]
    WheelSize { wheel_size: u32, max: u32 },
    /// `entries_max` must lie in `1..=ENTRIES_MAX_LIMIT`.
    #[error("entries_max must be in 1..={max}, got {entries_max}")]
    EntriesMax { entries_max: usize, max: usize },
}

/// How a wheel is shaped and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelOptions {
    /// Resolution in milliseconds (Kafka: 1 ms).
    pub tick_ms: u64,
    /// Buckets per level (Kafka: 20).
    pub wheel_size: u32,
    /// Live entries at most; `add` fails with [`TimerError::Full`] beyond it. Cancelled
    /// entries do not count (see [`TimingWheel::add`] for the memory they hold).
    pub entries_max: usize,
    /// The clock's reading when the wheel is created (monotonic ms).
    pub start_ms: u64,
}

impl WheelOptions {
    /// Kafka's defaults: 1 ms tick, 20 buckets per level.
    pub const DEFAULT: WheelOptions =
        WheelOptions { tick_ms: 1, wheel_size: 20, entries_max: 1 << 24, start_ms: 0 };

    /// Checks the options without building a wheel (for config validation).
    pub fn validate(&self) -> Result<(), TimerError> {
        if self.tick_ms == 0 {
            return Err(TimerError::TickZero { tick_ms: self.tick_ms });
        }
        if self.wheel_size < 2 || self.wheel_size > WHEEL_SIZE_MAX {
            return Err(TimerError::WheelSize { wheel_size: self.wheel_size, max: WHEEL_SIZE_MAX });
        }
        if self.entries_max == 0 || self.entries_max > ENTRIES_MAX_LIMIT {
            return Err(TimerError::EntriesMax {
                entries_max: self.entries_max,
                max: ENTRIES_MAX_LIMIT,
            });
        }
        Ok(())
    }
}

impl Default for WheelOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Names one entry of one wheel. Copy it freely: once the entry has expired or been
/// cancelled the handle is stale and `cancel` on it returns `None` (the slot's generation
/// moved on). Generations are `u32` stamps that move by four per use of a slot (their two
/// low bits are the slot's state) and wrap: a handle kept across 2^30 reuses of the same
/// slot could alias a newer entry, which no caller in the broker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerHandle {
    index: u32,
    generation: u32,
}

/// One slab slot. What it holds is told by its stamp (kept apart, in
/// `TimingWheel::stamps`): the payload is initialized exactly while the stamp's state is
/// [`LIVE`] or [`DISCARDED`] ([`holds_payload`]). An `Option` would tell it twice and cost
/// 8 more bytes per slot for an 8-byte payload (24 instead of 16), which a fresh wheel
/// pays in page faults on every add (perf/RESULTS.md, "The slot drops its `Option`",
/// 2026-11-21).
#[derive(Debug)]
struct Slot<T> {
    /// `ceil(deadline_ms / tick_ms)`.
    deadline_tick: u64,
    /// Written by `add`; moved out by expiry and `cancel`; left by `discard` and dropped
    /// when the slot is freed (or the wheel is dropped).
    payload: MaybeUninit<T>,
}

// A stamp's two low bits are its slot's state; the bits above count the slot's uses. Every
// use goes FREE -> LIVE -> (DISCARDED | CANCELLED ->) FREE of the next use, so a handle
// (which carries the LIVE stamp of its entry) matches only while that entry is live.
/// No entry and no payload: the slot is on the free list.
const FREE: u32 = 0;
/// An entry waiting for its deadline; the slot holds its payload.
const LIVE: u32 = 1;
/// A tombstone left by `discard`: the payload stays until the slot is freed.
const DISCARDED: u32 = 2;
/// A tombstone left by `cancel`, which took the payload.
const CANCELLED: u32 = 3;
const STATE: u32 = 3;

fn is_live(stamp: u32) -> bool {
    stamp & STATE == LIVE
}

/// Whether a slot with this stamp holds an initialized payload.
fn holds_payload(stamp: u32) -> bool {
    matches!(stamp & STATE, LIVE | DISCARDED)
}

/// The FREE stamp of the slot's next use.
fn next_use(stamp: u32) -> u32 {
    (stamp | STATE).wrapping_add(1)
}

/// A hierarchical timing wheel holding payloads of type `T`. Lives on one shard; it is not
/// `Sync` in spirit (no locks) and never reads a clock: time enters only through
/// [`advance`](Self::advance).
#[derive(Debug)]
pub struct TimingWheel<T> {
    options: WheelOptions,
    /// One stamp per slab slot, apart from the slots so that `discard` (and the liveness
    /// checks of cascades and compactions) touch 4 bytes per entry in a dense array.
    stamps: Vec<u32>,
    slots: Vec<Slot<T>>,
    /// Free slot indexes; the lowest is reused first.
    free: FreeSlots,
    /// Live entries.
    len: usize,
    /// Cancelled entries whose index still sits in a bucket or the due list.
    tombstones: usize,
    /// The wheel's clock: `floor(now_ms / tick_ms)` of the latest `advance` (or `start_ms`).
    current_tick: u64,
    levels: Vec<Level>,
    /// Entries added since the last `advance`, not yet in a bucket: `add` appends here and
    /// `advance` places them first (see [`TimingWheel::add`]). Tombstones among them are
    /// freed then, without ever being placed. Kept as runs of consecutive slot indexes
    /// (`start..end`), in the order added: slots are handed out lowest first, so a burst of
    /// adds is one run and an add usually writes no index at all.
    incoming: Vec<(u32, u32)>,
    /// The earliest deadline tick in `incoming` (`u64::MAX` when empty), so that
    /// `next_deadline_ms` need not scan it.
    incoming_min_tick: u64,
    /// Entries whose tick had already come when they were added or cascaded; the next
    /// `advance` returns them first.
    due: Vec<u32>,
    /// A lower bound on the expiry tick of every non-empty bucket (`u64::MAX`: none), so
    /// an `advance` that reaches no bucket costs no scan. Cancels may leave it low, which
    /// only costs one scan.
    next_event_tick: u64,
}

impl<T> TimingWheel<T> {
    /// Builds an empty wheel.
    ///
    /// # Panics
    /// When `options` fail [`WheelOptions::validate`]; options are constants or validated
    /// config, so a bad value is a programming error.
    pub fn new(options: WheelOptions) -> Self {
        if let Err(error) = options.validate() {
            panic!("invalid timing wheel options {options:?}: {error}");
        }
        let current_tick = options.start_ms / options.tick_ms;
        let level = Level::new(1, options.wheel_size, current_tick);
        TimingWheel {
            options,
            stamps: Vec::new(),
            slots: Vec::new(),
            free: FreeSlots::default(),
            len: 0,
            tombstones: 0,
            current_tick,
            levels: vec![level],
            incoming: Vec::new(),
            incoming_min_tick: u64::MAX,
            due: Vec::new(),
            next_event_tick: u64::MAX,
        }
    }

    /// The options the wheel was built with.
    pub fn options(&self) -> &WheelOptions {
        &self.options
    }

    /// Live entries (added, neither expired nor cancelled).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's time: the latest `advance(now_ms)` rounded down to the tick.
    pub fn now_ms(&self) -> u64 {
        self.current_tick.saturating_mul(self.options.tick_ms)
    }

    /// Levels currently allocated (1 + overflow wheels created so far).
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// Heap bytes held by the wheel, by capacity: the slab (`size_of` slot times its
    /// capacity), the free-slot bitmaps, the incoming and due lists, and every level's
    /// bucket headers, bucket vectors and bitmap. Used by the benchmark to report bytes
    /// per timer.
    pub fn heap_bytes(&self) -> usize {
        let index = std::mem::size_of::<u32>();
        let slab = self.slots.capacity() * std::mem::size_of::<Slot<T>>()
            + (self.stamps.capacity() + self.due.capacity()) * index
            + self.incoming.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.free.heap_bytes();
        let levels: usize = self
            .levels
            .iter()
            .map(|level| {
                level.buckets.capacity() * std::mem::size_of::<Vec<u32>>()
                    + level.buckets.iter().map(|bucket| bucket.capacity() * index).sum::<usize>()
                    + level.occupied.capacity() * std::mem::size_of::<u64>()
            })
            .sum();
        slab + levels + self.levels.capacity() * std::mem::size_of::<Level>()
    }

    /// Schedules `payload` for `deadline_ms` (monotonic ms). A deadline at or before the
    /// wheel's time is not lost: the next `advance` returns it, whatever its `now_ms`.
    ///
    /// O(1): it fills a slab slot and appends its index to the incoming list, which the
    /// next `advance` places into the buckets (see the module docs).
    ///
    /// Fails with [`TimerError::Full`] when `entries_max` entries are live. Cancelled
    /// entries hold their slot until `advance` reaches their bucket; when no slot is free
    /// and tombstones outnumber live entries by more than a small slack, `add` first
    /// compacts (sweeps every bucket and frees the tombstones: amortized O(1) per cancel),
    /// so the slab never holds more than about twice the live entries at their peak.
    // Always inlined: out of line, the call (six saved registers, a `Result` returned
    // through memory) cost about as much as the add itself (`sluice-bench timer --warm`
    // at 1M timers: 15 ns per add out of line, 9 ns inlined).
    #[inline(always)]
    pub fn add(&mut self, deadline_ms: u64, payload: T) -> Result<TimerHandle, TimerError> {
        if self.len >= self.options.entries_max {
            return Err(TimerError::Full { entries_max: self.options.entries_max });
        }
        let deadline_tick = match self.options.tick_ms {
            1 => deadline_ms, // Kafka's tick: no division on the hot path.
            tick_ms => deadline_ms.div_ceil(tick_ms),
        };
        if self.free.len() == 0 && self.tombstones > self.len + TOMBSTONE_SLACK {
            // Rather than grow the slab, free the tombstones: slots to reuse below.
            self.compact();
        }
        let handle = match self.free.pop() {
            None => {
                // A new slot at the end of the slab (a growing wheel's every add), written
                // once, whole, with the first LIVE stamp (FREE + 1, as below). The slab grows
                // only while tombstones <= live + slack, with live < entries_max, so it stays
                // below 2 * ENTRIES_MAX_LIMIT + TOMBSTONE_SLACK < u32::MAX slots.
                let index =
                    u32::try_from(self.slots.len()).expect("entries_max <= ENTRIES_MAX_LIMIT");
                self.slots.push(Slot { deadline_tick, payload: MaybeUninit::new(payload) });
                self.stamps.push(FREE.wrapping_add(1));
                TimerHandle { index, generation: FREE.wrapping_add(1) }
            }
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.deadline_tick = deadline_tick;
                // A free slot's payload is uninitialized (moved out or dropped): nothing is
                // overwritten. The stamp says LIVE only once the payload is written.
                slot.payload.write(payload);
                let stamp = &mut self.stamps[index as usize];
                debug_assert_eq!(*stamp & STATE, FREE);
                *stamp = stamp.wrapping_add(1);
                TimerHandle { index, generation: *stamp }
            }
        };
        self.len += 1;
        push_run(&mut self.incoming, handle.index);
        self.incoming_min_tick = self.incoming_min_tick.min(deadline_tick);
        Ok(handle)
    }

    /// Removes the entry `handle` names and returns its payload; `None` when the handle is
    /// stale (the entry already expired or was cancelled). O(1): it bumps the entry's
    /// stamp and takes the payload out of its slot, and leaves its index in the bucket as a
    /// tombstone.
    #[allow(unsafe_code)]
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        if !self.kill(handle, CANCELLED) {
            return None;
        }
        let slot = &mut self.slots[handle.index as usize];
        // SAFETY: the stamp was LIVE, so the payload is initialized; it is CANCELLED now,
        // which holds no payload, so nothing reads or drops this one again.
        Some(unsafe { slot.payload.assume_init_read() })
    }

    /// Removes the entry `handle` names without handing its payload back (it is dropped
    /// when the slot is freed: when `advance` reaches the entry's bucket, or at a
    /// compaction). Returns whether the handle named a live entry. O(1), and cheaper than
    /// [`cancel`](Self::cancel): one write to a dense array of 4-byte stamps.
    pub fn discard(&mut self, handle: TimerHandle) -> bool {
        self.kill(handle, DISCARDED)
    }

    /// Whether `handle` still names a live entry.
    pub fn contains(&self, handle: TimerHandle) -> bool {
        self.stamps
            .get(handle.index as usize)
            .is_some_and(|stamp| *stamp == handle.generation && is_live(*stamp))
    }

    /// Turns the live entry `handle` names into a tombstone of state `tombstone`
    /// (`DISCARDED` or `CANCELLED`); false when the handle is stale.
    #[inline]
    fn kill(&mut self, handle: TimerHandle, tombstone: u32) -> bool {
        let Some(stamp) = self.stamps.get_mut(handle.index as usize) else {
            return false;
        };
        if *stamp != handle.generation || !is_live(*stamp) {
            return false;
        }
        *stamp = (*stamp & !STATE) | tombstone;
        self.len -= 1;
        self.tombstones += 1;
        true
    }

    /// The deadline of a live entry, rounded up to the tick (the time it will expire at).
    pub fn expiry_ms(&self, handle: TimerHandle) -> Option<u64> {
        self.contains(handle).then(|| {
            self.slots[handle.index as usize].deadline_tick.saturating_mul(self.options.tick_ms)
        })
    }

    /// Moves the wheel's time to `now_ms` and appends every entry that expires to
    /// `expired`, returning how many it appended.
    ///
    /// **Guarantee.** Let `D = ceil(deadline_ms / tick_ms) * tick_ms`. An entry is returned
    /// by the first call with `now_ms >= D` (or, if `D` was already at or before the wheel's
    /// time when it was added, by the very next call), and by no earlier call. So it never
    /// expires before its deadline, and if `advance` is called at least once per tick it
    /// expires less than one tick after it. With `tick_ms = 1` the rounding vanishes: the
    /// entry is returned by the first call with `now_ms >= deadline_ms`.
    ///
    /// Entries come out in order of their tick; within a tick the order is unspecified.
    /// Time never goes back: a `now_ms` older than the wheel's time returns only the due
    /// entries and leaves the time as it is.
    ///
    /// Cost: O(entries added since the last call + expired + cascaded entries + tombstones
    /// freed + non-empty buckets passed), independent of how far time jumps.
    pub fn advance(&mut self, now_ms: u64, expired: &mut Vec<(TimerHandle, T)>) -> usize {
        let before = expired.len();
        let target_tick = (now_ms / self.options.tick_ms).max(self.current_tick);
        self.place_incoming();
        self.drain_due(expired);
        // Advancing every tick mostly finds nothing to do: answer that without a scan.
        if target_tick < self.next_event_tick {
            self.set_current_tick(target_tick);
            return expired.len() - before;
        }
        loop {
            let Some((level_index, slot, expiry_tick)) = self.next_bucket() else {
                self.next_event_tick = u64::MAX;
                break;
            };
            if expiry_tick > target_tick {
                self.next_event_tick = expiry_tick;
                break;
            }
            assert!(expiry_tick >= self.current_tick);
            self.set_current_tick(expiry_tick);
            let level = &mut self.levels[level_index];
            let mut bucket = std::mem::take(&mut level.buckets[slot]);
            let tick_span = level.tick_span;
            level.set_occupied(slot, false);
            if level_index == 0 {
                for &index in &bucket {
                    self.expire(index, expired);
                }
            } else {
                for &index in &bucket {
                    if !is_live(self.stamps[index as usize]) {
                        self.free_tombstone(index);
                        continue;
                    }
                    // Every entry of a bucket lies in the bucket's span, which starts now.
                    let deadline_tick = self.slots[index as usize].deadline_tick;
                    assert!(deadline_tick >= expiry_tick);
                    assert!(deadline_tick - expiry_tick < tick_span);
                    self.place(index, deadline_tick);
                }
            }
            // Keep the vector for the next adds to this bucket (a cascade only places
            // entries on lower levels, so the bucket is still empty).
            bucket.clear();
            let emptied = &mut self.levels[level_index].buckets[slot];
            if bucket.capacity() <= BUCKET_KEEP_CAPACITY && emptied.capacity() == 0 {
                *emptied = bucket;
            }
            self.drain_due(expired);
        }
        self.set_current_tick(target_tick);
        expired.len() - before
    }

    /// The earliest time at which the wheel needs an `advance`: no entry expires before it,
    /// and the earliest entry expires at it (level 0) or after it (an overflow bucket that
    /// only cascades then, or a bucket holding only cancelled entries). `Some(now_ms())`
    /// when entries are already due; `None` when the wheel is empty. A driver sleeps until
    /// this and never misses an expiry.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if !self.due.is_empty() {
            return Some(self.now_ms());
        }
        // An incoming entry is placed by the next `advance` at the wheel's time: it comes
        // out then if its tick has come, else not before its tick.
        let incoming =
            (!self.incoming.is_empty()).then(|| self.incoming_min_tick.max(self.current_tick));
        let bucket = self.next_bucket().map(|(_, _, tick)| tick);
        let tick = match (incoming, bucket) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(tick.saturating_mul(self.options.tick_ms))
    }

    fn set_current_tick(&mut self, current_tick: u64) {
        if current_tick == self.current_tick {
            return;
        }
        self.current_tick = current_tick;
        for level in &mut self.levels {
            level.sync(current_tick, self.options.wheel_size);
        }
    }

    /// The non-empty bucket that expires first: (level, slot, expiry tick).
    fn next_bucket(&self) -> Option<(usize, usize, u64)> {
        let wheel_size = self.options.wheel_size as usize;
        let mut best: Option<(usize, usize, u64)> = None;
        for (level_index, level) in self.levels.iter().enumerate() {
            if level.is_empty() {
                continue;
            }
            // Non-empty buckets of a level lie in its window, one bucket per slot, so the
            // first non-empty slot from the window's first one (wrapping) is the earliest.
            let Some(slot) = level.next_occupied(level.window_slot, wheel_size) else {
                continue;
            };
            let distance = (slot + wheel_size - level.window_slot) % wheel_size;
            let expiry_tick = level
                .window_start
                .saturating_add((distance as u64).saturating_mul(level.tick_span));
            if best.map_or(true, |(_, _, tick)| expiry_tick < tick) {
                best = Some((level_index, slot, expiry_tick));
            }
        }
        best
    }

    /// Frees every tombstone: drops cancelled indexes from the due list and every bucket
    /// (keeping the order of the rest) and frees their slots.
    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        let stamps = &mut self.stamps;
        let slots = &mut self.slots;
        let free = &mut self.free;
        let mut keep = |index: &u32| {
            let live = is_live(stamps[*index as usize]);
            if !live {
                release(&mut stamps[*index as usize], &mut slots[*index as usize]);
                free.push(*index);
            }
            live
        };
        self.due.retain(&mut keep);
        let runs = std::mem::take(&mut self.incoming);
        for index in run_indexes(&runs) {
            if keep(&index) {
                push_run(&mut self.incoming, index);
            }
        }
        for level in &mut self.levels {
            for slot in 0..level.buckets.len() {
                let bucket = &mut level.buckets[slot];
                if bucket.is_empty() {
                    continue;
                }
                bucket.retain(&mut keep);
                if bucket.is_empty() {
                    if bucket.capacity() > BUCKET_KEEP_CAPACITY {
                        *bucket = Vec::new();
                    }
                    level.set_occupied(slot, false);
                }
            }
        }
        assert_eq!(self.free.len() + self.len, self.slots.len(), "every tombstone freed");
        self.tombstones = 0;
    }

    /// Takes an entry out of a drained level-0 bucket or the due list: a live one expires
    /// (handed to `expired`), a tombstone is dropped; either way the slot is freed.
    #[allow(unsafe_code)]
    fn expire(&mut self, index: u32, expired: &mut Vec<(TimerHandle, T)>) {
        let stamp = &mut self.stamps[index as usize];
        if is_live(*stamp) {
            let handle = TimerHandle { index, generation: *stamp };
            *stamp = next_use(*stamp);
            // SAFETY: the stamp was LIVE, so the payload is initialized; it is FREE now,
            // which holds no payload, so nothing reads or drops this one again.
            let payload = unsafe { self.slots[index as usize].payload.assume_init_read() };
            self.len -= 1;
            self.free.push(index);
            expired.push((handle, payload));
        } else {
            self.free_tombstone(index);
        }
    }

    fn free_tombstone(&mut self, index: u32) {
        release(&mut self.stamps[index as usize], &mut self.slots[index as usize]);
        self.tombstones -= 1;
        self.free.push(index);
    }

    /// Puts a live entry's index in the list its deadline belongs to, given the wheel's
    /// current time: the due list, or the lowest level whose span reaches it.
    #[inline]
    fn place(&mut self, index: u32, deadline_tick: u64) {
        if deadline_tick <= self.current_tick {
            self.due.push(index);
            return;
        }
        let wheel_size = self.options.wheel_size;
        let mut level_index = 0;
        loop {
            if level_index == self.levels.len() {
                let below = &self.levels[level_index - 1];
                let tick_span =
                    below.level_span.expect("a level without span accepts every deadline");
                self.levels.push(Level::new(tick_span, wheel_size, self.current_tick));
            }
            let level = &mut self.levels[level_index];
            if level.window_end.map_or(true, |end| deadline_tick < end) {
                let (slot, expiry_tick) = level.slot_of(deadline_tick, wheel_size as usize);
                self.next_event_tick = self.next_event_tick.min(expiry_tick);
                level.buckets[slot].push(index);
                level.set_occupied(slot, true);
                return;
            }
            level_index += 1;
        }
    }

    /// Places every entry added since the last `advance` (in the order they were added) and
    /// frees those cancelled meanwhile. The wheel's time has not moved since they were
    /// added, so each lands where `add` would have put it.
    fn place_incoming(&mut self) {
        if self.incoming.is_empty() {
            return;
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        for index in run_indexes(&incoming) {
            if is_live(self.stamps[index as usize]) {
                let deadline_tick = self.slots[index as usize].deadline_tick;
                self.place(index, deadline_tick);
            } else {
                self.free_tombstone(index);
            }
        }
        // Placing adds nothing to the incoming list: keep its vector.
        incoming.clear();
        self.incoming = incoming;
        self.incoming_min_tick = u64::MAX;
    }

    fn drain_due(&mut self, expired: &mut Vec<(TimerHandle, T)>) {
        if self.due.is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        for &index in &due {
            self.expire(index, expired);
        }
        // Expiring adds nothing to the due list: keep its vector.
        due.clear();
        self.due = due;
    }
}

/// Appends `index` to a list of runs of consecutive indexes (`start..end`, see
/// `TimingWheel::incoming`): it extends the last run when it follows it.
#[inline(always)]
fn push_run(runs: &mut Vec<(u32, u32)>, index: u32) {
    match runs.last_mut() {
        Some((_, end)) if *end == index => *end += 1,
        _ => runs.push((index, index + 1)),
    }
}

/// The indexes of a list of runs, in order.
fn run_indexes(runs: &[(u32, u32)]) -> impl Iterator<Item = u32> + '_ {
    runs.iter().flat_map(|&(start, end)| start..end)
}

/// Frees a tombstone's slot: its stamp becomes the FREE stamp of the next use, and the
/// payload a discarded entry left is dropped. Payloads without drop glue are left to be
/// overwritten, which spares a read of the slot.
#[allow(unsafe_code)]
fn release<T>(stamp: &mut u32, slot: &mut Slot<T>) {
    let state = *stamp & STATE;
    debug_assert!(state == DISCARDED || state == CANCELLED, "not a tombstone: {state}");
    // The stamp moves first: should the payload's drop panic, the slot does not claim a
    // payload it no longer holds.
    *stamp = next_use(*stamp);
    if state == DISCARDED && std::mem::needs_drop::<T>() {
        // SAFETY: a DISCARDED slot holds an initialized payload (`discard` leaves it);
        // the slot is FREE now, so nothing reads or drops it again.
        unsafe { slot.payload.assume_init_drop() };
    }
}

impl<T> Drop for TimingWheel<T> {
    /// Drops the payloads still held: live entries' and discarded ones'.
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if !std::mem::needs_drop::<T>() {
            return;
        }
        for (stamp, slot) in self.stamps.iter_mut().zip(&mut self.slots) {
            if holds_payload(*stamp) {
                *stamp = next_use(*stamp);
                // SAFETY: the stamp said the payload is initialized, and it now says FREE,
                // so it is dropped once.
                unsafe { slot.payload.assume_init_drop() };
            }
        }
    }
}

impl<T> Default for TimingWheel<T> {
    fn default() -> Self {
        Self::new(WheelOptions::DEFAULT)
    }
}
