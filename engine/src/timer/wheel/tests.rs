//! Tests of the timing wheel: exact expiry and cancel, far jumps, compaction, drops, and a
//! model test against a `BTreeMap` of deadlines.

use super::level::{divide, reciprocal};
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
    let numerators = [0, 1, 2, 19, 20, 21, u64::from(u32::MAX), 1 << 63, u64::MAX - 1, u64::MAX];
    for divisor in divisors {
        for n in numerators.into_iter().chain([divisor - 1, divisor, divisor.saturating_add(1)]) {
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
        assert!(slots <= 2 * peak_live + TOMBSTONE_SLACK + 1, "{slots} slots, peak {peak_live}");
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
