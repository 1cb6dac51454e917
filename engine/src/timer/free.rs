//! The timing wheel's free slab slots: a set of `u32` indexes that hands out the lowest one
//! first.
//!
//! Why lowest first, not a stack: a stack hands slots back in the order they were freed,
//! and `advance` frees them in deadline order, which for timers added at random deadlines
//! is a random order over the slab. A burst of adds after a burst of expiries (a million
//! fetches parked at once, then released) then writes each slot and its stamp at a random
//! place, two cache misses per add: in `sluice-bench timer --warm` at 1M timers a reused
//! wheel's add cost ~55 ns against ~27 ns into fresh memory. Lowest first, the same adds
//! fill the slab front to back, as a fresh wheel's do, and the live entries stay packed at
//! the front of the slab.
//!
//! A bitmap of free slots with a summary bitmap per 64 words above it, up to one word: a
//! pop descends one word per level (four below the top for two million slots) and a push
//! sets at most one bit per level, so both are O(log64 n) with n the slab size, a handful
//! of word operations, and no scan however the free slots are spread.

/// Free slab indexes, lowest handed out first.
#[derive(Debug, Default)]
pub(super) struct FreeSlots {
    /// `levels[0]` has one bit per slab slot, set when the slot is free; `levels[k + 1]`
    /// has one bit per word of `levels[k]`, set when that word is non-zero. The last level
    /// is a single word. Empty until the first push.
    levels: Vec<Vec<u64>>,
    len: usize,
    /// A word of `levels[0]` below which no bit is set: when that word is non-zero, its
    /// lowest bit is the lowest free slot, found without a descent. Adds after a burst of
    /// frees take this path 63 times out of 64.
    lowest_word: usize,
}

impl FreeSlots {
    /// Free slots held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes held by the bitmaps, by capacity.
    pub(super) fn heap_bytes(&self) -> usize {
        self.levels.iter().map(|level| level.capacity() * std::mem::size_of::<u64>()).sum::<usize>()
            + self.levels.capacity() * std::mem::size_of::<Vec<u64>>()
    }

    /// Whether `index` is free.
    #[cfg(test)]
    pub(super) fn contains(&self, index: u32) -> bool {
        let index = index as usize;
        self.levels
            .first()
            .and_then(|bits| bits.get(index / 64))
            .is_some_and(|word| word >> (index % 64) & 1 == 1)
    }

    /// Marks `index` free. It must not be free already.
    #[inline]
    pub(super) fn push(&mut self, index: u32) {
        let mut at = index as usize;
        if at / 64 >= self.levels.first().map_or(0, Vec::len) {
            self.cover(at);
        }
        self.lowest_word = self.lowest_word.min(at / 64);
        for level in &mut self.levels {
            let word = &mut level[at / 64];
            let was = *word;
            debug_assert!(was >> (at % 64) & 1 == 0, "slot freed twice");
            *word = was | 1 << (at % 64);
            if was != 0 {
                break; // The levels above already know this word is non-zero.
            }
            at /= 64;
        }
        self.len += 1;
    }

    /// Takes the lowest free index, or `None` when no slot is free. Inlined up to the
    /// common case, a known lowest word that keeps other free slots: no summary changes.
    #[inline(always)]
    pub(super) fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        if let Some(word) = self.levels.first_mut().and_then(|bits| bits.get_mut(self.lowest_word))
        {
            let bits = *word;
            if bits & bits.wrapping_sub(1) != 0 {
                // At least two bits set: take the lowest, the word stays non-zero.
                *word = bits & (bits - 1);
                self.len -= 1;
                let index = self.lowest_word * 64 + bits.trailing_zeros() as usize;
                return Some(u32::try_from(index).expect("free indexes are slab indexes"));
            }
        }
        self.pop_slow()
    }

    /// The rest of [`pop`](Self::pop): a descent from the top summary when the lowest
    /// known word is empty, and summary updates when the pop empties a word.
    #[inline(never)]
    fn pop_slow(&mut self) -> Option<u32> {
        let bits = &self.levels[0];
        let mut at = match bits[self.lowest_word] {
            0 => {
                let mut at = 0usize;
                for level in self.levels.iter().rev() {
                    let word = level[at];
                    debug_assert_ne!(word, 0, "a summary bit names an empty word");
                    at = at * 64 + word.trailing_zeros() as usize;
                }
                self.lowest_word = at / 64;
                at
            }
            word => self.lowest_word * 64 + word.trailing_zeros() as usize,
        };
        let index = at;
        for level in &mut self.levels {
            let word = &mut level[at / 64];
            *word &= !(1 << (at % 64));
            if *word != 0 {
                break; // Still non-zero: the levels above stay as they are.
            }
            at /= 64;
        }
        self.len -= 1;
        Some(u32::try_from(index).expect("free indexes are slab indexes"))
    }

    /// Grows the bitmaps to cover `index` (doubling, so this is amortized O(1) per slot)
    /// and rebuilds the summaries, which may gain a level.
    #[cold]
    #[inline(never)]
    fn cover(&mut self, index: usize) {
        let words = (index / 64 + 1).next_power_of_two();
        let mut bits = std::mem::take(&mut self.levels).into_iter().next().unwrap_or_default();
        bits.resize(words, 0);
        let mut levels = vec![bits];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().map_or(&[][..], Vec::as_slice);
            let mut summary = vec![0u64; below.len().div_ceil(64)];
            for (at, word) in below.iter().enumerate() {
                if *word != 0 {
                    summary[at / 64] |= 1 << (at % 64);
                }
            }
            levels.push(summary);
        }
        self.levels = levels;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn hands_out_the_lowest_free_slot() {
        let mut free = FreeSlots::default();
        assert_eq!(free.pop(), None);
        for index in [300_000, 5, 64, 63, 4096, 1] {
            free.push(index);
        }
        assert_eq!(free.len(), 6);
        let popped: Vec<u32> = std::iter::from_fn(|| free.pop()).collect();
        assert_eq!(popped, [1, 5, 63, 64, 4096, 300_000]);
        assert_eq!(free.len(), 0);
        // Emptied, it still knows nothing is free, at every level.
        assert_eq!(free.pop(), None);
        free.push(262_143);
        assert_eq!(free.pop(), Some(262_143));
    }

    #[test]
    fn growing_keeps_what_was_free() {
        let mut free = FreeSlots::default();
        free.push(7);
        free.push(100);
        // 2^20 needs three levels above the bits: the rebuild must carry 7 and 100 up.
        free.push(1 << 20);
        assert_eq!(free.levels.len(), 4);
        assert_eq!(free.levels.last().map(Vec::len), Some(1));
        assert_eq!(free.pop(), Some(7));
        assert_eq!(free.pop(), Some(100));
        assert_eq!(free.pop(), Some(1 << 20));
        assert_eq!(free.pop(), None);
    }

    proptest! {
        /// Against a `BTreeSet`: the same lowest index comes out, the same count is held.
        #[test]
        fn matches_an_ordered_set(
            ops in prop::collection::vec((any::<bool>(), 0u32..20_000), 1..600),
        ) {
            let mut free = FreeSlots::default();
            let mut model = BTreeSet::new();
            for (is_push, index) in ops {
                if is_push {
                    if model.insert(index) {
                        free.push(index);
                    }
                } else {
                    prop_assert_eq!(free.pop(), model.pop_first());
                }
                prop_assert_eq!(free.len(), model.len());
                prop_assert!(model.iter().all(|index| free.contains(*index)));
            }
        }
    }
}
