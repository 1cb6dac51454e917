//! One level of the wheel's hierarchy (its buckets and the bitmap of non-empty ones),
//! and the arithmetic `advance` runs per step: division by a level's span through a
//! precomputed reciprocal, and finding the next set bit.

/// One level of the hierarchy: `wheel_size` buckets of `tick_span` ticks each.
#[derive(Debug)]
pub(super) struct Level {
    /// Ticks covered by one bucket: `wheel_size^level`.
    pub(super) tick_span: u64,
    /// `reciprocal(tick_span)`: adds divide by `tick_span` with a multiply (a `u64`
    /// division costs tens of cycles, and every add to a level above 0 needs one).
    pub(super) span_reciprocal: u64,
    /// Ticks covered by the whole level: `wheel_size^(level+1)`, `None` when that does not
    /// fit in a `u64` (the level then covers every remaining deadline).
    pub(super) level_span: Option<u64>,
    /// Slab indexes, in the order they were pushed (live entries and tombstones).
    pub(super) buckets: Vec<Vec<u32>>,
    /// Bit `s` set when bucket `s` is non-empty.
    pub(super) occupied: Vec<u64>,
    /// The level's window, cached so that `add` needs at most one division: its first
    /// tick (the wheel's time rounded down to `tick_span`), ...
    pub(super) window_start: u64,
    /// ... its end (exclusive; `None` when it reaches past `u64::MAX`), ...
    pub(super) window_end: Option<u64>,
    /// ... and the slot of the bucket that starts it.
    pub(super) window_slot: usize,
}

impl Level {
    pub(super) fn new(tick_span: u64, wheel_size: u32, current_tick: u64) -> Self {
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
    pub(super) fn sync(&mut self, current_tick: u64, wheel_size: u32) {
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

    pub(super) fn place_window(&mut self, current_tick: u64, wheel_size: u32) {
        let bucket_id = current_tick / self.tick_span;
        self.window_start = bucket_id * self.tick_span;
        self.window_end = self.level_span.and_then(|span| self.window_start.checked_add(span));
        self.window_slot = (bucket_id % u64::from(wheel_size)) as usize;
    }

    /// The slot of a deadline inside the window, and the tick at which that bucket expires.
    pub(super) fn slot_of(&self, deadline_tick: u64, wheel_size: usize) -> (usize, u64) {
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

    pub(super) fn set_occupied(&mut self, slot: usize, occupied: bool) {
        let bit = 1u64 << (slot % 64);
        if occupied {
            self.occupied[slot / 64] |= bit;
        } else {
            self.occupied[slot / 64] &= !bit;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.occupied.iter().all(|word| *word == 0)
    }

    /// First non-empty slot at or after `from`, wrapping around.
    pub(super) fn next_occupied(&self, from: usize, wheel_size: usize) -> Option<usize> {
        first_set(&self.occupied, from, wheel_size).or_else(|| first_set(&self.occupied, 0, from))
    }
}

/// The reciprocal [`divide`] uses for `divisor` (at least 1): `floor((2^64 - 1) / divisor)`.
pub(super) fn reciprocal(divisor: u64) -> u64 {
    assert!(divisor >= 1);
    u64::MAX / divisor
}

/// `n / divisor` through a multiply by `magic = reciprocal(divisor)`, which underestimates
/// `2^64 / divisor` by less than 2, so `(n * magic) >> 64` is the quotient or falls short
/// of it by at most 2, which the remainder then corrects.
#[inline]
pub(super) fn divide(n: u64, divisor: u64, magic: u64) -> u64 {
    let mut quotient = ((u128::from(n) * u128::from(magic)) >> 64) as u64;
    let mut remainder = n - quotient * divisor;
    while remainder >= divisor {
        quotient += 1;
        remainder -= divisor;
    }
    quotient
}

/// First set bit in `bits` within `[lo, hi)`.
pub(super) fn first_set(bits: &[u64], lo: usize, hi: usize) -> Option<usize> {
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
