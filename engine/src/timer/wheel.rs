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

/// Largest wheel size accepted (a level is `wheel_size` bucket headers and a bitmap).
pub const WHEEL_SIZE_MAX: u32 = 4096;
/// Tombstones tolerated beyond the live count: past it, the slab does not grow without a
/// compaction first. Small under test so that the model test compacts often.
const TOMBSTONE_SLACK: usize = if cfg!(test) { 4 } else { 4096 };
/// Largest number of live entries one wheel can hold. Live entries and tombstones share
/// `u32` slab indexes, and the slab holds at most `2 * entries_max + TOMBSTONE_SLACK`
/// slots (see [`TimingWheel::add`]), which this keeps below `u32::MAX`.
pub const ENTRIES_MAX_LIMIT: usize = (u32::MAX as usize - 4096) / 2;
/// A drained bucket keeps its vector (and the next adds to it allocate nothing) up to this
/// capacity; a larger one, left by a burst, is freed.
const BUCKET_KEEP_CAPACITY: usize = 1024;

const _: () = assert!(TOMBSTONE_SLACK <= 4096);

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

/// One level of the hierarchy: `wheel_size` buckets of `tick_span` ticks each.
#[derive(Debug)]
struct Level {
    /// Ticks covered by one bucket: `wheel_size^level`.
    tick_span: u64,
    /// `reciprocal(tick_span)`: adds divide by `tick_span` with a multiply (a `u64`
    /// division costs tens of cycles, and every add to a level above 0 needs one).
    span_reciprocal: u64,
    /// Ticks covered by the whole level: `wheel_size^(level+1)`, `None` when that does not
    /// fit in a `u64` (the level then covers every remaining deadline).
    level_span: Option<u64>,
    /// Slab indexes, in the order they were pushed (live entries and tombstones).
    buckets: Vec<Vec<u32>>,
    /// Bit `s` set when bucket `s` is non-empty.
    occupied: Vec<u64>,
    /// The level's window, cached so that `add` needs at most one division: its first
    /// tick (the wheel's time rounded down to `tick_span`), ...
    window_start: u64,
    /// ... its end (exclusive; `None` when it reaches past `u64::MAX`), ...
    window_end: Option<u64>,
    /// ... and the slot of the bucket that starts it.
    window_slot: usize,
}

impl Level {
    fn new(tick_span: u64, wheel_size: u32, current_tick: u64) -> Self {
        let words = (wheel_size as usize).div_ceil(64);
        let mut level = Level {
            tick_span,
            span_reciprocal: reciprocal(tick_span),
            level_span: tick_span.checked_mul(u64::from(wheel_size)),
            buckets: (0..wheel_size).map(|_| Vec::new()).collect(),
            occupied: vec![0; words],
            window_start: 0,
            window_end: None,
            window_slot: 0,
        };
        level.place_window(current_tick, wheel_size);
        level
    }

    /// Moves the cached window to the wheel's time `current_tick`.
    fn sync(&mut self, current_tick: u64, wheel_size: u32) {
        // Advancing tick by tick mostly stays inside the current bucket of every level
        // above 0, and moves level 0 by a slot or two: spare those the divisions.
        if current_tick >= self.window_start {
            let delta = current_tick - self.window_start;
            if delta < self.tick_span {
                return;
            }
            if self.tick_span == 1 && delta < u64::from(wheel_size) {
                self.window_start = current_tick;
                self.window_end = self.level_span.and_then(|span| current_tick.checked_add(span));
                let slot = self.window_slot + delta as usize;
                self.window_slot = slot.checked_sub(wheel_size as usize).unwrap_or(slot);
                return;
            }
        }
        self.place_window(current_tick, wheel_size);
    }

    fn place_window(&mut self, current_tick: u64, wheel_size: u32) {
        let bucket_id = current_tick / self.tick_span;
        self.window_start = bucket_id * self.tick_span;
        self.window_end = self.level_span.and_then(|span| self.window_start.checked_add(span));
        self.window_slot = (bucket_id % u64::from(wheel_size)) as usize;
    }

    /// The slot of a deadline inside the window, and the tick at which that bucket expires.
    fn slot_of(&self, deadline_tick: u64, wheel_size: usize) -> (usize, u64) {
        let offset = deadline_tick - self.window_start;
        // Level 0 (one tick per bucket) is where most entries land: spare it the division.
        let offset = if self.tick_span == 1 {
            offset
        } else {
            divide(offset, self.tick_span, self.span_reciprocal)
        };
        assert!(offset < wheel_size as u64);
        let slot = self.window_slot + offset as usize;
        let slot = if slot >= wheel_size { slot - wheel_size } else { slot };
        (slot, self.window_start + offset * self.tick_span)
    }

    fn set_occupied(&mut self, slot: usize, occupied: bool) {
        let bit = 1u64 << (slot % 64);
        if occupied {
            self.occupied[slot / 64] |= bit;
        } else {
            self.occupied[slot / 64] &= !bit;
        }
    }

    fn is_empty(&self) -> bool {
        self.occupied.iter().all(|word| *word == 0)
    }

    /// First non-empty slot at or after `from`, wrapping around.
    fn next_occupied(&self, from: usize, wheel_size: usize) -> Option<usize> {
        first_set(&self.occupied, from, wheel_size).or_else(|| first_set(&self.occupied, 0, from))
    }
}

/// The reciprocal [`divide`] uses for `divisor` (at least 1): `floor((2^64 - 1) / divisor)`.
fn reciprocal(divisor: u64) -> u64 {
    assert!(divisor >= 1);
    u64::MAX / divisor
}

/// `n / divisor` through a multiply by `magic = reciprocal(divisor)`, which underestimates
/// `2^64 / divisor` by less than 2, so `(n * magic) >> 64` is the quotient or falls short
/// of it by at most 2, which the remainder then corrects.
#[inline]
fn divide(n: u64, divisor: u64, magic: u64) -> u64 {
    let mut quotient = ((u128::from(n) * u128::from(magic)) >> 64) as u64;
    let mut remainder = n - quotient * divisor;
    while remainder >= divisor {
        quotient += 1;
        remainder -= divisor;
    }
    quotient
}

/// First set bit in `bits` within `[lo, hi)`.
fn first_set(bits: &[u64], lo: usize, hi: usize) -> Option<usize> {
    let mut position = lo;
    while position < hi {
        let word = position / 64;
        let masked = bits[word] & (u64::MAX << (position % 64));
        if masked != 0 {
            let found = word * 64 + masked.trailing_zeros() as usize;
            return (found < hi).then_some(found);
        }
        position = (word + 1) * 64;
    }
    None
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    fn wheel(tick_ms: u64, wheel_size: u32, start_ms: u64) -> TimingWheel<u64> {
        TimingWheel::new(WheelOptions { tick_ms, wheel_size, entries_max: 1 << 20, start_ms })
    }

    fn payloads(expired: &[(TimerHandle, u64)]) -> Vec<u64> {
        expired.iter().map(|(_, payload)| *payload).collect()
    }

    #[test]
    fn divisor_matches_division_at_the_edges() {
        let divisors = [1, 2, 3, 7, 20, 400, 8000, 1 << 32, (1 << 32) + 1, u64::MAX / 3, u64::MAX];
        let numerators =
            [0, 1, 2, 19, 20, 21, u64::from(u32::MAX), 1 << 63, u64::MAX - 1, u64::MAX];
        for divisor in divisors {
            for n in numerators.into_iter().chain([divisor - 1, divisor, divisor.saturating_add(1)])
            {
                assert_eq!(divide(n, divisor, reciprocal(divisor)), n / divisor, "{n} / {divisor}");
            }
        }
    }

    proptest! {
        #[test]
        fn divisor_matches_division(n in any::<u64>(), divisor in 1..u64::MAX) {
            prop_assert_eq!(divide(n, divisor, reciprocal(divisor)), n / divisor);
        }
    }

    #[test]
    fn expires_at_deadline_not_before() {
        let mut wheel = wheel(1, 20, 0);
        wheel.add(5, 5).unwrap();
        wheel.add(25, 25).unwrap(); // Level 1.
        wheel.add(1_000, 1_000).unwrap(); // Level 2.
        let mut out = Vec::new();
        for now in 0..5 {
            assert_eq!(wheel.advance(now, &mut out), 0, "now {now}");
        }
        assert_eq!(wheel.advance(5, &mut out), 1);
        assert_eq!(payloads(&out), [5]);
        out.clear();
        assert_eq!(wheel.advance(24, &mut out), 0);
        assert_eq!(wheel.advance(25, &mut out), 1);
        assert_eq!(payloads(&out), [25]);
        out.clear();
        assert_eq!(wheel.advance(999, &mut out), 0);
        assert_eq!(wheel.advance(1_000, &mut out), 1);
        assert_eq!(payloads(&out), [1_000]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline_ms(), None);
    }

    #[test]
    fn coarse_tick_rounds_deadline_up() {
        let mut wheel = wheel(10, 4, 0);
        wheel.add(11, 11).unwrap(); // Expires at 20.
        wheel.add(20, 20).unwrap(); // Expires at 20.
        wheel.add(21, 21).unwrap(); // Expires at 30.
        let mut out = Vec::new();
        assert_eq!(wheel.advance(19, &mut out), 0);
        assert_eq!(wheel.advance(20, &mut out), 2);
        assert_eq!(payloads(&out), [11, 20]);
        out.clear();
        assert_eq!(wheel.advance(29, &mut out), 0);
        assert_eq!(wheel.advance(35, &mut out), 1);
        assert_eq!(payloads(&out), [21]);
        assert_eq!(wheel.now_ms(), 30);
    }

    #[test]
    fn already_due_entry_comes_out_on_next_advance() {
        let mut wheel = wheel(1, 20, 100);
        wheel.add(50, 50).unwrap();
        wheel.add(100, 100).unwrap();
        assert_eq!(wheel.next_deadline_ms(), Some(100));
        let mut out = Vec::new();
        // Even an advance to an older time returns due entries.
        assert_eq!(wheel.advance(0, &mut out), 2);
        assert_eq!(payloads(&out), [50, 100]);
        assert_eq!(wheel.now_ms(), 100);
    }

    #[test]
    fn cancel_is_exact_and_stale_handles_are_harmless() {
        let mut wheel = wheel(1, 20, 0);
        let a = wheel.add(10, 1).unwrap();
        let b = wheel.add(10, 2).unwrap();
        let c = wheel.add(10, 3).unwrap();
        assert_eq!(wheel.cancel(b), Some(2));
        assert_eq!(wheel.cancel(b), None);
        // The slot is reused with a new generation; the old handle stays stale.
        let d = wheel.add(10, 4).unwrap();
        assert_eq!(wheel.cancel(b), None);
        assert!(wheel.contains(d));
        assert_eq!(wheel.len(), 3);
        let mut out = Vec::new();
        wheel.advance(10, &mut out);
        assert_eq!(payloads(&out), [1, 3, 4]);
        assert_eq!(out.iter().map(|(handle, _)| *handle).collect::<Vec<_>>(), [a, c, d]);
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(wheel.cancel(d), None);
        assert!(wheel.is_empty());
    }

    impl<T> TimingWheel<T> {
        /// Checks the slab's bookkeeping: every slot is free, or live or a tombstone with
        /// its index in exactly one list; the counts and bitmaps agree; and the slab holds
        /// at most `2 * peak_live + TOMBSTONE_SLACK + 1` slots.
        fn check_invariants(&self, peak_live: usize) {
            let slots = self.slots.len();
            assert_eq!(self.stamps.len(), slots);
            let mut seen = vec![0u8; slots];
            for index in 0..slots as u32 {
                if self.free.contains(index) {
                    seen[index as usize] += 1;
                    let state = self.stamps[index as usize] & STATE;
                    assert_eq!(state, FREE, "free slot {index} is in state {state}");
                }
            }
            let mut listed = 0;
            for index in self.due.iter().copied().chain(run_indexes(&self.incoming)) {
                seen[index as usize] += 1;
                listed += 1;
            }
            for level in &self.levels {
                for (slot, bucket) in level.buckets.iter().enumerate() {
                    let bit = level.occupied[slot / 64] >> (slot % 64) & 1 == 1;
                    assert_eq!(bit, !bucket.is_empty(), "occupied bit of slot {slot}");
                    for &index in bucket {
                        seen[index as usize] += 1;
                        listed += 1;
                    }
                }
            }
            assert!(seen.iter().all(|count| *count == 1), "a slot is free or listed, once");
            let count = |state: u32| self.stamps.iter().filter(|s| **s & STATE == state).count();
            assert_eq!(count(LIVE), self.len);
            assert_eq!(count(DISCARDED) + count(CANCELLED), self.tombstones);
            assert_eq!(listed, self.len + self.tombstones);
            assert_eq!(self.free.len() + listed, slots);
            assert!(
                slots <= 2 * peak_live + TOMBSTONE_SLACK + 1,
                "{slots} slots, peak {peak_live}"
            );
        }
    }

    #[test]
    fn discard_frees_the_slot_when_its_bucket_is_reached() {
        let mut wheel = TimingWheel::new(WheelOptions::DEFAULT);
        let payload = std::rc::Rc::new(());
        let a = wheel.add(30, payload.clone()).unwrap(); // Level 1.
        let b = wheel.add(5, payload.clone()).unwrap(); // Level 0.
        let mut out = Vec::new();
        // Discarded before any `advance` placed it: freed by the next one.
        let never_placed = wheel.add(7, payload.clone()).unwrap();
        assert!(wheel.discard(never_placed));
        assert_eq!(std::rc::Rc::strong_count(&payload), 4);
        assert_eq!(wheel.advance(0, &mut out), 0);
        assert_eq!(std::rc::Rc::strong_count(&payload), 3);
        assert!(wheel.discard(a));
        assert!(!wheel.discard(a), "stale");
        assert_eq!(wheel.cancel(a), None);
        assert!(!wheel.contains(a));
        assert_eq!(wheel.len(), 1);
        // The discarded payload is held until the wheel reaches its bucket.
        assert_eq!(std::rc::Rc::strong_count(&payload), 3);
        assert_eq!(wheel.advance(5, &mut out), 1);
        assert_eq!(out[0].0, b);
        out.clear();
        assert_eq!(std::rc::Rc::strong_count(&payload), 2, "b's expired, a's still held");
        assert_eq!(wheel.next_deadline_ms(), None, "only a tombstone left");
        assert_eq!(wheel.advance(40, &mut out), 0);
        assert_eq!(std::rc::Rc::strong_count(&payload), 1);
        wheel.check_invariants(2);
        assert_eq!(wheel.free.len(), wheel.slots.len());
    }

    #[test]
    fn rescheduling_far_timers_does_not_grow_the_slab() {
        // A heartbeat pattern: 100 sessions, each pushed out again and again, far enough
        // that no bucket is ever reached. Every reschedule leaves a tombstone behind.
        let mut wheel = TimingWheel::new(WheelOptions::DEFAULT);
        let payload = std::rc::Rc::new(());
        let mut handles: Vec<TimerHandle> =
            (0..100).map(|_| wheel.add(1_000_000, payload.clone()).unwrap()).collect();
        for round in 0..1_000u64 {
            for handle in &mut handles {
                if round % 2 == 0 {
                    assert!(wheel.discard(*handle));
                } else {
                    assert!(wheel.cancel(*handle).is_some());
                }
                *handle = wheel.add(1_000_000 + round, payload.clone()).unwrap();
            }
            wheel.check_invariants(100);
        }
        assert_eq!(wheel.len(), 100);
        assert!(wheel.slots.len() <= 2 * 100 + TOMBSTONE_SLACK + 1, "{}", wheel.slots.len());
        // Discarded payloads are dropped by the compactions, not kept until expiry.
        assert!(std::rc::Rc::strong_count(&payload) <= 1 + wheel.slots.len());
        let mut out = Vec::new();
        wheel.advance(2_000_000, &mut out);
        assert_eq!(out.len(), 100);
        drop(out);
        assert_eq!(std::rc::Rc::strong_count(&payload), 1);
        wheel.check_invariants(100);
    }

    #[test]
    fn full_wheel_refuses_and_recovers() {
        let mut wheel = TimingWheel::new(WheelOptions { entries_max: 2, ..WheelOptions::DEFAULT });
        let a = wheel.add(1, 1).unwrap();
        wheel.add(2, 2).unwrap();
        assert_eq!(wheel.add(3, 3), Err(TimerError::Full { entries_max: 2 }));
        wheel.cancel(a).unwrap();
        wheel.add(3, 3).unwrap();
        assert_eq!(wheel.len(), 2);
    }

    #[test]
    fn far_jump_over_sparse_wheel_is_cheap() {
        let mut wheel = wheel(1, 20, 0);
        let hour_ms = 3_600_000;
        wheel.add(hour_ms, 1).unwrap();
        wheel.add(hour_ms * 24 * 365, 2).unwrap();
        wheel.add(u64::MAX, 3).unwrap();
        let mut out = Vec::new();
        assert_eq!(wheel.advance(0, &mut out), 0, "places the adds");
        let levels = wheel.levels();
        assert!(levels >= 6, "a year of 1 ms ticks needs 20^6 > 3.2e10: got {levels}");
        let clock = crate::clock::SystemClock::new();
        assert_eq!(wheel.advance(hour_ms + 1, &mut out), 1);
        assert_eq!(wheel.advance(hour_ms * 24 * 365, &mut out), 1);
        assert_eq!(wheel.advance(u64::MAX - 1, &mut out), 0);
        assert_eq!(wheel.advance(u64::MAX, &mut out), 1);
        assert_eq!(payloads(&out), [1, 2, 3]);
        // Stepping tick by tick would take hours; bucket jumps take microseconds.
        assert!(clock.monotonic_ms() < 1_000);
    }

    #[test]
    fn next_deadline_is_never_late() {
        let mut wheel = wheel(1, 8, 0);
        assert_eq!(wheel.next_deadline_ms(), None);
        wheel.add(3, 3).unwrap();
        assert_eq!(wheel.next_deadline_ms(), Some(3));
        let far = wheel.add(100, 100).unwrap();
        assert_eq!(wheel.next_deadline_ms(), Some(3));
        let mut out = Vec::new();
        wheel.advance(3, &mut out);
        // The far entry sits in an overflow bucket that cascades at 64 (8 * 8 buckets of 1
        // ms reach 64): a wake-up point before its deadline, never after.
        let next = wheel.next_deadline_ms().unwrap();
        assert!(next <= 100);
        let mut now = 3;
        let mut steps = 0;
        while wheel.contains(far) {
            now = wheel.next_deadline_ms().unwrap();
            wheel.advance(now, &mut out);
            steps += 1;
        }
        assert_eq!(now, 100);
        assert!(steps <= 3, "one wake-up per level at most: {steps}");
    }

    #[test]
    fn invalid_options_are_reported() {
        let base = WheelOptions::DEFAULT;
        assert!(base.validate().is_ok());
        assert!(WheelOptions { tick_ms: 0, ..base }.validate().is_err());
        assert!(WheelOptions { wheel_size: 1, ..base }.validate().is_err());
        assert!(WheelOptions { wheel_size: WHEEL_SIZE_MAX + 1, ..base }.validate().is_err());
        assert!(WheelOptions { entries_max: 0, ..base }.validate().is_err());
    }

    #[test]
    fn wide_wheel_uses_multi_word_bitmap() {
        let mut wheel = wheel(1, 200, 0);
        for deadline in [1, 63, 64, 65, 130, 199, 250, 40_000] {
            wheel.add(deadline, deadline).unwrap();
        }
        let mut out = Vec::new();
        let mut expired = 0;
        for now in 0..=40_000 {
            wheel.advance(now, &mut out);
            for (_, deadline) in out.drain(..) {
                assert_eq!(deadline, now, "expired early or late");
                expired += 1;
            }
        }
        assert_eq!(expired, 8);
        assert!(wheel.is_empty());
    }

    /// A payload that counts its drops in `drops[id]`.
    #[derive(Debug)]
    struct Token {
        id: u64,
        drops: Rc<RefCell<Vec<u32>>>,
    }

    impl Token {
        fn new(id: u64, drops: &Rc<RefCell<Vec<u32>>>) -> Self {
            Token { id, drops: drops.clone() }
        }
    }

    impl Drop for Token {
        fn drop(&mut self) {
            self.drops.borrow_mut()[self.id as usize] += 1;
        }
    }

    #[test]
    fn dropping_the_wheel_drops_the_payloads_it_holds_once() {
        let drops = Rc::new(RefCell::new(vec![0u32; 5]));
        let mut wheel = TimingWheel::new(WheelOptions::DEFAULT);
        let handles: Vec<TimerHandle> =
            (0..5).map(|id| wheel.add(10 + id, Token::new(id, &drops)).unwrap()).collect();
        let mut out = Vec::new();
        wheel.advance(0, &mut out); // Places them.
        assert!(wheel.discard(handles[0]));
        let cancelled = wheel.cancel(handles[1]).unwrap();
        assert_eq!(cancelled.id, 1);
        assert!(wheel.discard(handles[2]));
        wheel.advance(10, &mut out); // Frees 0's tombstone: its payload is dropped.
        assert!(out.is_empty());
        assert_eq!(*drops.borrow(), [1, 0, 0, 0, 0]);
        drop(wheel); // Drops 2 (discarded) and 3, 4 (live); 1 is the caller's.
        assert_eq!(*drops.borrow(), [1, 0, 1, 1, 1]);
        drop(cancelled);
        assert_eq!(*drops.borrow(), [1, 1, 1, 1, 1]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Add at `now + delay` (delay may be 0 = already due).
        Add { delay_ms: u64 },
        /// Cancel (or discard, when `discard`) the i-th handle ever issued (modulo), live
        /// or stale.
        Cancel { pick: usize, discard: bool },
        /// Advance by `step_ms`.
        Advance { step_ms: u64 },
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![
                0u64..30,
                0u64..500,
                0u64..20_000,
                0u64..5_000_000,
            ].prop_map(|delay_ms| Op::Add { delay_ms }),
            2 => (any::<usize>(), any::<bool>())
                .prop_map(|(pick, discard)| Op::Cancel { pick, discard }),
            3 => prop_oneof![0u64..3, 0u64..50, 0u64..2_000, 0u64..1_000_000]
                .prop_map(|step_ms| Op::Advance { step_ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The wheel against a sorted reference (`BTreeMap<(expiry, id), ()>`): every
        /// advance returns exactly the live entries whose rounded-up deadline is at or
        /// before `now` (none early, none lost, none late by a tick or more), each once, in
        /// tick order; cancel succeeds exactly for live entries. Payloads count their
        /// drops: each is dropped once (by the test, or by the wheel for discarded and
        /// never-expired ones), none while the wheel may still hand it out.
        #[test]
        fn model_matches_sorted_reference(
            tick_ms in prop_oneof![Just(1u64), 1u64..20],
            wheel_size in prop_oneof![Just(20u32), 2u32..70],
            start_ms in 0u64..1_000_000,
            ops in proptest::collection::vec(op_strategy(), 1..300),
        ) {
            let drops = Rc::new(RefCell::new(Vec::new()));
            let mut added = Vec::new();
            let mut wheel = TimingWheel::<Token>::new(WheelOptions {
                tick_ms, wheel_size, entries_max: 10_000, start_ms,
            });
            let mut now = start_ms;
            // Reference: id -> rounded expiry for live entries.
            let mut reference: BTreeMap<(u64, u64), ()> = BTreeMap::new();
            let mut live: BTreeMap<u64, u64> = BTreeMap::new();
            let mut handles: Vec<(TimerHandle, u64)> = Vec::new();
            let mut out = Vec::new();
            let mut peak_live = 0;
            for (id, op) in ops.into_iter().enumerate() {
                let id = id as u64;
                match op {
                    Op::Add { delay_ms } => {
                        let deadline = now + delay_ms;
                        drops.borrow_mut().resize(id as usize + 1, 0u32);
                        added.push(id);
                        let handle = wheel.add(deadline, Token::new(id, &drops)).unwrap();
                        // An already-due entry expires at the next advance: model it as
                        // expiring at the wheel's current time.
                        let expiry = deadline.div_ceil(tick_ms) * tick_ms;
                        reference.insert((expiry, id), ());
                        live.insert(id, expiry);
                        handles.push((handle, id));
                        prop_assert_eq!(wheel.expiry_ms(handle), Some(expiry));
                    }
                    Op::Cancel { pick, discard } => {
                        if handles.is_empty() { continue; }
                        let (handle, target) = handles[pick % handles.len()];
                        let cancelled = if discard {
                            wheel.discard(handle).then_some(target)
                        } else {
                            wheel.cancel(handle).map(|token| token.id)
                        };
                        match live.remove(&target) {
                            Some(expiry) => {
                                prop_assert_eq!(cancelled, Some(target));
                                reference.remove(&(expiry, target));
                            }
                            None => prop_assert_eq!(cancelled, None),
                        }
                    }
                    Op::Advance { step_ms } => {
                        now += step_ms;
                        out.clear();
                        wheel.advance(now, &mut out);
                        let mut expected = Vec::new();
                        while let Some((&(expiry, target), _)) = reference.first_key_value() {
                            if expiry > now { break; }
                            reference.pop_first();
                            live.remove(&target);
                            expected.push((expiry, target));
                        }
                        // Same set, and tick order (ties in any order).
                        let mut got: Vec<(u64, u64)> = out.iter()
                            .map(|(_, token)| (expected.iter()
                                .find(|(_, id)| *id == token.id).map_or(u64::MAX, |(e, _)| *e),
                                token.id))
                            .collect();
                        let expiries: Vec<u64> = got.iter().map(|(e, _)| *e).collect();
                        prop_assert!(expiries.windows(2).all(|w| w[0] <= w[1]),
                            "not in tick order: {:?}", expiries);
                        got.sort_unstable();
                        prop_assert_eq!(got, expected);
                        prop_assert_eq!(wheel.now_ms(), now / tick_ms * tick_ms);
                    }
                }
                prop_assert_eq!(wheel.len(), live.len());
                for &target in live.keys() {
                    prop_assert_eq!(drops.borrow()[target as usize], 0, "live {} dropped", target);
                }
                peak_live = peak_live.max(live.len());
                wheel.check_invariants(peak_live);
                // next_deadline_ms is a safe wake-up point: nothing expires before it.
                match (wheel.next_deadline_ms(), reference.first_key_value()) {
                    (None, None) => {}
                    (Some(next), Some((&(expiry, _), _))) => {
                        prop_assert!(next <= expiry.max(wheel.now_ms()),
                            "next {} after earliest expiry {}", next, expiry);
                    }
                    (next, first) => prop_assert!(false, "next {:?} vs {:?}", next, first),
                }
            }
            // Drain: everything left expires by the last rounded deadline, once.
            out.clear();
            wheel.advance(u64::MAX, &mut out);
            prop_assert_eq!(out.len(), reference.len());
            prop_assert!(wheel.is_empty());
            // Whatever `discard` left in slots the wheel never reached goes with it.
            drop(out);
            drop(wheel);
            let drops = drops.borrow();
            let live_added = added.len();
            for id in added {
                prop_assert_eq!(drops[id as usize], 1, "drops of payload {}", id);
            }
            prop_assert_eq!(drops.iter().sum::<u32>() as usize, live_added, "drops in all");
        }
    }
}
