//! `sluice-bench timer`: the timing wheel against the usual alternatives, in one process.
//!
//! For each size n (10k, 100k, 1M, up to `--timers`): add n timers with deadlines spread
//! uniformly over `1..=spread_ms`, cancel half of them (`--cancel`: every other one in
//! random order, the default; every other one in the order they were added; or a random
//! half in random order), then advance time from 0 to `spread_ms` in `step_ms` steps until
//! all have expired. The same deadlines and the same cancellations go to:
//! - `wheel`: sluice's `TimingWheel` (1 ms tick, 20 slots), cancelling with `discard`
//!   (O(1), the payload is dropped later, like a heap's tombstoned entry);
//! - `wheel-cancel`: the same wheel cancelling with `cancel`, which also hands the payload
//!   back (one more random access per cancel);
//! - `heap+set`: a `BinaryHeap<Reverse<(deadline, id)>>` with cancellation by lazy deletion
//!   through a `HashSet` of cancelled ids (the common way to cancel in a heap);
//! - `heap+vec`: the same heap with tombstones in a `Vec<bool>` indexed by id (the
//!   cheapest cancel a heap can have; shown so the comparison is not against a straw man);
//!   ids are reused once their entry is popped, so it stays bounded in steady state;
//! - `heap-indexed`: a binary heap that really removes a cancelled timer, in O(log n),
//!   through each timer's position in the heap (kept up to date on every move). This is
//!   the heap meant by "a heap costs O(log n)", and the one a JVM broker gets
//!   from `ScheduledThreadPoolExecutor` (its `DelayedWorkQueue` keeps a `heapIndex` per
//!   task for exactly this): memory follows the live timers, as the wheel's does;
//! - `btree`: a `BTreeMap<(deadline, id), payload>`: O(log n) add and exact cancel;
//! - `floor`: no timer at all, the memory any timer with O(1) cancel through a handle must
//!   touch: an add appends a 16-byte (deadline, payload) slot and a 4-byte stamp to two
//!   vectors and returns an 8-byte (index, generation) handle, a cancel checks and bumps
//!   the handle's stamp (one read-modify-write). Its add and cancel
//!   say what this machine's memory costs at each size, so the wheel's figures can be read
//!   as a ratio to it (what the wheel adds, and whether that grows with n). Its advance is
//!   not a timer's (one sort of the survivors, then pops): it is there so that every run
//!   checks that the floor cancelled what the others did.
//!
//! Which timers are cancelled makes no difference (deadlines do not depend on the index);
//! the order does: cancels in the order of the adds walk every structure's memory
//! sequentially, cancels in random order miss the cache once the structure outgrows it.
//!
//! `--warm` measures the steady state of a long-lived structure, the purgatory's case: each
//! implementation first runs the whole workload once on the same instance, unrecorded, so
//! the recorded round adds into memory it already owns (no page faults, reused slots and
//! ids) instead of a freshly built structure's; the vector the bench keeps the handles in
//! is the warm-up's too (in a fresh round it is fresh, for every implementation).
//!
//! Reported per phase: ns per operation (min / median / max over `--repeat` runs), add +
//! cancel throughput in Mops/s, the whole workload's cost per timer (add + cancel +
//! advance: a heap pays for its lazily deleted timers when it pops them, a wheel does
//! not), and bytes per timer at the peak (after the cancels), by
//! capacity accounting: `wheel` asks the wheel (`TimingWheel::heap_bytes`: arena capacity
//! times entry size, plus buckets and bitmaps); the heaps count `capacity * size_of` of the
//! heap and the tombstones (a `HashSet` bucket is its element plus one control byte);
//! `btree` has no capacity to ask, so it is estimated from std's node layout (B = 6: leaves
//! of 11 entries plus a parent link, internal nodes with 12 more edges) at the ~69% fill
//! that random inserts leave. Every run checks that all of them expire the same timers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context as _};
use sluice_engine::timer::{TimerHandle, TimingWheel, WheelOptions};

/// Arguments of the `timer` benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct TimerArgs {
    /// Largest number of timers; sizes 10k, 100k, 1M run up to it (and it, if different).
    #[arg(long, default_value_t = 1_000_000)]
    pub timers: usize,
    /// Runs per size; min / median / max are reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Deadlines are spread uniformly over 1..=spread_ms.
    #[arg(long, default_value_t = 60_000)]
    pub spread_ms: u64,
    /// Time advances in steps of this many ms (1 = every tick, the worst case for a wheel).
    #[arg(long, default_value_t = 1)]
    pub step_ms: u64,
    /// Which half is cancelled, and in which order.
    #[arg(long, value_enum, default_value_t = CancelOrder::Shuffled)]
    pub cancel: CancelOrder,
    /// Seed of the deadline generator.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Measure the steady state: run the workload once on each structure, unrecorded,
    /// and record a second round on the same instance (memory already faulted in, slots
    /// and ids reused), instead of a round on a freshly built structure.
    #[arg(long)]
    pub warm: bool,
    /// Run only these implementations (comma-separated: wheel, wheel-cancel, heap+set,
    /// heap+vec, heap-indexed, btree, floor), e.g. to profile one; all when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Which timers the benchmark cancels, in which order.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOrder {
    /// Every other timer (0, 2, 4, ...), in random order.
    Shuffled,
    /// Every other timer, in the order they were added.
    InOrder,
    /// A random half of the timers, in random order.
    RandomHalf,
}

impl CancelOrder {
    fn name(self) -> &'static str {
        match self {
            CancelOrder::Shuffled => "every other one, in random order",
            CancelOrder::InOrder => "every other one, in the order added",
            CancelOrder::RandomHalf => "a random half, in random order",
        }
    }
}

/// Runs the benchmark and prints the table (and writes JSON if asked).
pub fn run(args: &TimerArgs) -> anyhow::Result<()> {
    ensure!(args.timers >= 2, "--timers must be at least 2");
    ensure!(args.repeat >= 1, "--repeat must be at least 1");
    ensure!(args.spread_ms >= 1, "--spread-ms must be at least 1");
    ensure!(args.step_ms >= 1, "--step-ms must be at least 1");
    let mut sizes: Vec<usize> =
        [10_000, 100_000, 1_000_000].into_iter().filter(|n| *n < args.timers).collect();
    sizes.push(args.timers);

    type Measure = fn(&Workload, &TimerArgs) -> anyhow::Result<Run>;
    let all: [(&'static str, Measure); 7] = [
        (Wheel::NAME, measure::<Wheel>),
        (WheelCancel::NAME, measure::<WheelCancel>),
        (HeapSet::NAME, measure::<HeapSet>),
        (HeapVec::NAME, measure::<HeapVec>),
        (HeapIndexed::NAME, measure::<HeapIndexed>),
        (BTree::NAME, measure::<BTree>),
        (Floor::NAME, measure::<Floor>),
    ];
    for name in &args.only {
        ensure!(
            all.iter().any(|(known, _)| known == name),
            "--only: no implementation is called {name:?}"
        );
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| args.only.is_empty() || args.only.iter().any(|only| only == name))
        .collect();

    let mut results = Vec::new();
    for &n in &sizes {
        let workload = Workload::new(n, args.spread_ms, args.seed, args.cancel);
        let mut runs: Vec<Vec<Run>> = chosen.iter().map(|_| Vec::new()).collect();
        // One unrecorded round first: it pays for faulting in fresh memory and warming
        // the allocator, which would otherwise land on whichever implementation runs first.
        for (_, measure) in &chosen {
            measure(&workload, args)?;
        }
        for _ in 0..args.repeat {
            // Interleave implementations so drift (thermal, other load) hits all alike.
            for ((_, measure), runs) in chosen.iter().zip(&mut runs) {
                runs.push(measure(&workload, args)?);
            }
            let checksums: Vec<u64> = runs.iter().map(|r| r[r.len() - 1].checksum).collect();
            ensure!(
                checksums.windows(2).all(|pair| pair[0] == pair[1]),
                "implementations disagree on what expired: {checksums:?}"
            );
        }
        for ((name, _), runs) in chosen.iter().zip(runs) {
            results.push(Summary::new(name, n, &runs));
        }
    }

    let table = render_table(&results, args);
    print!("{table}");
    if let Some(path) = &args.json {
        std::fs::write(path, render_json(&results, args))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The same deadlines and cancellations for every implementation.
struct Workload {
    deadlines_ms: Vec<u64>,
    /// Indexes (into `deadlines_ms`) of the timers to cancel, in the order to cancel them:
    /// `ceil(n / 2)` of them, as `--cancel` says.
    cancels: Vec<usize>,
    spread_ms: u64,
}

impl Workload {
    fn new(n: usize, spread_ms: u64, seed: u64, order: CancelOrder) -> Self {
        let mut rng = XorShift::new(seed ^ n as u64);
        let deadlines_ms = (0..n).map(|_| 1 + rng.next() % spread_ms).collect();
        let mut shuffle = |items: &mut Vec<usize>| {
            for i in (1..items.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                items.swap(i, j);
            }
        };
        let cancels = match order {
            CancelOrder::InOrder => (0..n).step_by(2).collect(),
            CancelOrder::Shuffled => {
                let mut cancels = (0..n).step_by(2).collect();
                shuffle(&mut cancels);
                cancels
            }
            CancelOrder::RandomHalf => {
                let mut cancels = (0..n).collect();
                shuffle(&mut cancels);
                cancels.truncate(n.div_ceil(2));
                cancels
            }
        };
        Workload { deadlines_ms, cancels, spread_ms }
    }
}

/// xorshift64*: deterministic, fast, and good enough to scatter deadlines.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What the benchmark needs of a timer structure.
trait BenchTimer: Sized {
    const NAME: &'static str;
    type Handle: Copy;
    fn with_timers(n: usize) -> Self;
    fn add(&mut self, deadline_ms: u64, payload: u64) -> Self::Handle;
    fn cancel(&mut self, handle: Self::Handle);
    /// Expires everything due at `now_ms`; returns (count, sum of payloads).
    fn advance(&mut self, now_ms: u64) -> (u64, u64);
    fn heap_bytes(&self) -> usize;
    fn is_empty(&self) -> bool;
}

struct Wheel {
    wheel: TimingWheel<u64>,
    expired: Vec<(TimerHandle, u64)>,
}

impl Wheel {
    fn with_timers(n: usize) -> Self {
        let options = WheelOptions { entries_max: n.max(1), ..WheelOptions::DEFAULT };
        Wheel { wheel: TimingWheel::new(options), expired: Vec::new() }
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        self.wheel.advance(now_ms, &mut self.expired);
        let sum = self.expired.iter().fold(0u64, |sum, (_, p)| sum.wrapping_add(*p));
        let count = self.expired.len() as u64;
        self.expired.clear();
        (count, sum)
    }

    fn heap_bytes(&self) -> usize {
        self.wheel.heap_bytes()
            + self.expired.capacity() * std::mem::size_of::<(TimerHandle, u64)>()
    }
}

impl BenchTimer for Wheel {
    const NAME: &'static str = "wheel";
    type Handle = TimerHandle;

    fn with_timers(n: usize) -> Self {
        Wheel::with_timers(n)
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> TimerHandle {
        self.wheel.add(deadline_ms, payload).expect("entries_max is the workload size")
    }

    fn cancel(&mut self, handle: TimerHandle) {
        let discarded = self.wheel.discard(handle);
        debug_assert!(discarded);
        black_box(discarded);
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        Wheel::advance(self, now_ms)
    }

    fn heap_bytes(&self) -> usize {
        Wheel::heap_bytes(self)
    }

    fn is_empty(&self) -> bool {
        self.wheel.is_empty()
    }
}

/// The wheel cancelling with `cancel`, which hands each payload back.
struct WheelCancel(Wheel);

impl BenchTimer for WheelCancel {
    const NAME: &'static str = "wheel-cancel";
    type Handle = TimerHandle;

    fn with_timers(n: usize) -> Self {
        WheelCancel(Wheel::with_timers(n))
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> TimerHandle {
        self.0.wheel.add(deadline_ms, payload).expect("entries_max is the workload size")
    }

    fn cancel(&mut self, handle: TimerHandle) {
        let cancelled = self.0.wheel.cancel(handle);
        debug_assert!(cancelled.is_some());
        black_box(cancelled);
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        self.0.advance(now_ms)
    }

    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }

    fn is_empty(&self) -> bool {
        self.0.wheel.is_empty()
    }
}

/// Heap entry: (deadline, id, payload), smallest deadline first.
type HeapEntry = Reverse<(u64, u64, u64)>;

struct HeapSet {
    heap: BinaryHeap<HeapEntry>,
    cancelled: HashSet<u64>,
    next_id: u64,
}

impl BenchTimer for HeapSet {
    const NAME: &'static str = "heap+set";
    type Handle = u64;

    fn with_timers(_n: usize) -> Self {
        HeapSet { heap: BinaryHeap::new(), cancelled: HashSet::new(), next_id: 0 }
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((deadline_ms, id, payload)));
        id
    }

    fn cancel(&mut self, id: u64) {
        self.cancelled.insert(id);
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        drain_due(&mut self.heap, now_ms, |id| !self.cancelled.remove(&id))
    }

    fn heap_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<HeapEntry>()
            + self.cancelled.capacity() * (std::mem::size_of::<u64>() + 1)
    }

    fn is_empty(&self) -> bool {
        self.heap.is_empty() && self.cancelled.is_empty()
    }
}

/// Pops every entry of a lazy-deletion heap due at `now_ms`; `live(id)` says whether the
/// entry still counts (was not cancelled). Returns the live count and a payload checksum.
fn drain_due(
    heap: &mut BinaryHeap<HeapEntry>,
    now_ms: u64,
    mut live: impl FnMut(u64) -> bool,
) -> (u64, u64) {
    let (mut count, mut sum) = (0, 0u64);
    while let Some(Reverse((deadline_ms, id, payload))) = heap.peek().copied() {
        if deadline_ms > now_ms {
            break;
        }
        heap.pop();
        if live(id) {
            count += 1;
            sum = sum.wrapping_add(payload);
        }
    }
    (count, sum)
}

struct HeapVec {
    heap: BinaryHeap<HeapEntry>,
    cancelled: Vec<bool>,
    /// Ids whose entry has been popped, reused first.
    free: Vec<u64>,
}

impl BenchTimer for HeapVec {
    const NAME: &'static str = "heap+vec";
    type Handle = u64;

    fn with_timers(_n: usize) -> Self {
        HeapVec { heap: BinaryHeap::new(), cancelled: Vec::new(), free: Vec::new() }
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> u64 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.cancelled.push(false);
                self.cancelled.len() as u64 - 1
            }
        };
        self.heap.push(Reverse((deadline_ms, id, payload)));
        id
    }

    fn cancel(&mut self, id: u64) {
        self.cancelled[id as usize] = true;
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        let (cancelled, free) = (&mut self.cancelled, &mut self.free);
        drain_due(&mut self.heap, now_ms, |id| {
            free.push(id);
            !std::mem::replace(&mut cancelled[id as usize], false)
        })
    }

    fn heap_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<HeapEntry>()
            + self.cancelled.capacity()
            + self.free.capacity() * std::mem::size_of::<u64>()
    }

    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// A binary min-heap with exact removal: `positions[id]` is where timer `id` sits in
/// `heap`, rewritten whenever an entry moves, so a cancel finds its entry in O(1), puts
/// the last entry in its place and sifts that one up or down: O(log n).
struct HeapIndexed {
    /// (deadline, id, payload), a min-heap on the deadline.
    heap: Vec<(u64, u32, u64)>,
    positions: Vec<u32>,
    /// Ids not in the heap, reused first.
    free: Vec<u32>,
}

impl HeapIndexed {
    fn place(&mut self, position: usize, entry: (u64, u32, u64)) {
        self.positions[entry.1 as usize] = position as u32;
        self.heap[position] = entry;
    }

    /// Moves the entry at `position` up until its parent is not later; returns where it
    /// ended up.
    fn sift_up(&mut self, mut position: usize) -> usize {
        let entry = self.heap[position];
        while position > 0 {
            let parent = (position - 1) / 2;
            if self.heap[parent].0 <= entry.0 {
                break;
            }
            self.place(position, self.heap[parent]);
            position = parent;
        }
        self.place(position, entry);
        position
    }

    fn sift_down(&mut self, mut position: usize) {
        let entry = self.heap[position];
        let len = self.heap.len();
        loop {
            let left = 2 * position + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child =
                if right < len && self.heap[right].0 < self.heap[left].0 { right } else { left };
            if self.heap[child].0 >= entry.0 {
                break;
            }
            self.place(position, self.heap[child]);
            position = child;
        }
        self.place(position, entry);
    }

    /// Takes the entry at `position` out of the heap.
    fn remove_at(&mut self, position: usize) -> (u64, u32, u64) {
        let last = self.heap.pop().expect("position is in the heap");
        if position == self.heap.len() {
            return last;
        }
        let removed = self.heap[position];
        self.heap[position] = last;
        if self.sift_up(position) == position {
            self.sift_down(position);
        }
        removed
    }
}

impl BenchTimer for HeapIndexed {
    const NAME: &'static str = "heap-indexed";
    type Handle = u32;

    fn with_timers(_n: usize) -> Self {
        HeapIndexed { heap: Vec::new(), positions: Vec::new(), free: Vec::new() }
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.positions.push(u32::MAX);
                u32::try_from(self.positions.len() - 1).expect("fewer than 2^32 timers")
            }
        };
        self.heap.push((deadline_ms, id, payload));
        self.sift_up(self.heap.len() - 1);
        id
    }

    fn cancel(&mut self, id: u32) {
        let position = self.positions[id as usize] as usize;
        let removed = self.remove_at(position);
        debug_assert_eq!(removed.1, id);
        self.positions[id as usize] = u32::MAX;
        self.free.push(id);
        black_box(removed);
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        let (mut count, mut sum) = (0, 0u64);
        while self.heap.first().is_some_and(|root| root.0 <= now_ms) {
            let (_, id, payload) = self.remove_at(0);
            self.positions[id as usize] = u32::MAX;
            self.free.push(id);
            count += 1;
            sum = sum.wrapping_add(payload);
        }
        (count, sum)
    }

    fn heap_bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<(u64, u32, u64)>()
            + (self.positions.capacity() + self.free.capacity()) * std::mem::size_of::<u32>()
    }

    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

struct BTree {
    map: BTreeMap<(u64, u64), u64>,
    next_id: u64,
}

impl BenchTimer for BTree {
    const NAME: &'static str = "btree";
    type Handle = (u64, u64);

    fn with_timers(_n: usize) -> Self {
        BTree { map: BTreeMap::new(), next_id: 0 }
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> (u64, u64) {
        let key = (deadline_ms, self.next_id);
        self.next_id += 1;
        self.map.insert(key, payload);
        key
    }

    fn cancel(&mut self, key: (u64, u64)) {
        black_box(self.map.remove(&key));
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        let (mut count, mut sum) = (0, 0u64);
        while let Some(entry) = self.map.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            sum = sum.wrapping_add(entry.remove());
            count += 1;
        }
        (count, sum)
    }

    fn heap_bytes(&self) -> usize {
        // std's BTreeMap (B = 6): a leaf holds 11 keys and values, a parent pointer and two
        // u16s; an internal node adds 12 edges. Random inserts leave nodes ~69% full, and
        // there is about one internal node per 8 leaves.
        let entry = std::mem::size_of::<(u64, u64)>() + std::mem::size_of::<u64>();
        let leaf = 11 * entry + 8 + 4;
        let internal = leaf + 12 * 8;
        let leaves = self.map.len() as f64 / (11.0 * 0.69);
        (leaves * leaf as f64 + leaves / 8.0 * internal as f64) as usize
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The floor: what a timer with O(1) cancel through a handle cannot avoid touching,
/// without any timer logic (see the module docs).
#[derive(Default)]
struct Floor {
    slots: Vec<(u64, u64)>,
    stamps: Vec<u32>,
    /// The survivors, latest deadline first, once `advance` has started.
    due: Vec<(u64, u64)>,
}

impl BenchTimer for Floor {
    const NAME: &'static str = "floor";
    /// (index, generation): 8 bytes like the wheel's handle, so that the caller's vector
    /// of handles costs the same.
    type Handle = (u32, u32);

    fn with_timers(_n: usize) -> Self {
        Floor::default()
    }

    fn add(&mut self, deadline_ms: u64, payload: u64) -> (u32, u32) {
        let index = self.slots.len() as u32;
        self.slots.push((deadline_ms, payload));
        self.stamps.push(0);
        (index, 0)
    }

    fn cancel(&mut self, (index, generation): (u32, u32)) {
        // What a cancel through a handle cannot do less than: check the generation and
        // bump it, one read-modify-write of the stamp.
        let stamp = &mut self.stamps[index as usize];
        if *stamp == generation {
            *stamp = generation.wrapping_add(1);
        }
    }

    fn advance(&mut self, now_ms: u64) -> (u64, u64) {
        if !self.slots.is_empty() {
            let live = self.slots.iter().zip(&self.stamps).filter(|(_, stamp)| **stamp == 0);
            self.due.extend(live.map(|(slot, _)| *slot));
            self.due.sort_unstable_by(|a, b| b.cmp(a));
            self.slots.clear();
            self.stamps.clear();
        }
        let (mut count, mut sum) = (0, 0u64);
        while let Some(&(deadline_ms, payload)) = self.due.last() {
            if deadline_ms > now_ms {
                break;
            }
            self.due.pop();
            count += 1;
            sum = sum.wrapping_add(payload);
        }
        (count, sum)
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(u64, u64)>()
            + self.stamps.capacity() * std::mem::size_of::<u32>()
            + self.due.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.due.is_empty()
    }
}

/// One run of one implementation at one size.
#[derive(Debug, Clone, Copy)]
struct Run {
    add_ns: f64,
    cancel_ns: f64,
    advance_ns: f64,
    bytes_peak: usize,
    checksum: u64,
}

fn measure<T: BenchTimer>(workload: &Workload, args: &TimerArgs) -> anyhow::Result<Run> {
    let mut timers = T::with_timers(workload.deadlines_ms.len());
    // The caller's handles: fresh memory in a fresh round, and in a warm round the same
    // vector as the warm-up's, already faulted in like the structure it names.
    let mut handles = Vec::with_capacity(workload.deadlines_ms.len());
    if !args.warm {
        return round(&mut timers, &mut handles, workload, args, 0);
    }
    round(&mut timers, &mut handles, workload, args, 0)?;
    round(&mut timers, &mut handles, workload, args, workload.spread_ms)
}

/// Adds the workload's timers with deadlines `base_ms` later than the workload says,
/// cancels its half, and advances from `base_ms` until every other one expired.
fn round<T: BenchTimer>(
    timers: &mut T,
    handles: &mut Vec<T::Handle>,
    workload: &Workload,
    args: &TimerArgs,
    base_ms: u64,
) -> anyhow::Result<Run> {
    let n = workload.deadlines_ms.len();
    handles.clear();
    let started = Instant::now();
    for (payload, deadline_ms) in workload.deadlines_ms.iter().enumerate() {
        handles.push(timers.add(base_ms + *deadline_ms, payload as u64));
    }
    let add_ns = started.elapsed().as_nanos() as f64;

    let started = Instant::now();
    for &index in &workload.cancels {
        timers.cancel(handles[index]);
    }
    let cancel_ns = started.elapsed().as_nanos() as f64;
    let bytes_peak = timers.heap_bytes();

    let started = Instant::now();
    let (mut expired, mut checksum) = (0u64, 0u64);
    let mut now_ms = 0;
    while now_ms < workload.spread_ms {
        now_ms = (now_ms + args.step_ms).min(workload.spread_ms);
        let (count, sum) = timers.advance(base_ms + now_ms);
        expired += count;
        checksum = checksum.wrapping_add(sum);
    }
    let advance_ns = started.elapsed().as_nanos() as f64;

    let survivors = (n - workload.cancels.len()) as u64;
    ensure!(expired == survivors, "{}: {expired} expired, {survivors} expected", T::NAME);
    ensure!(timers.is_empty(), "{}: timers left after the last deadline", T::NAME);
    black_box(&*handles);
    Ok(Run { add_ns, cancel_ns, advance_ns, bytes_peak, checksum })
}

/// Min / median / max of one metric over the runs.
#[derive(Debug, Clone, Copy)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Spread { min: values[0], median: values[values.len() / 2], max: values[values.len() - 1] }
    }
}

/// One implementation at one size, over all runs. Per-op figures divide by the operations
/// of the phase: n adds, n/2 cancels, n + n/2 for add+cancel, n/2 expiries for advance.
#[derive(Debug)]
struct Summary {
    name: &'static str,
    timers: usize,
    add_ns_per_op: Spread,
    cancel_ns_per_op: Spread,
    add_cancel_ns_per_op: Spread,
    advance_ns_per_expiry: Spread,
    /// Whole life of the workload (add + cancel + advance) per timer added.
    total_ns_per_timer: Spread,
    bytes_per_timer: f64,
}

impl Summary {
    fn new(name: &'static str, timers: usize, runs: &[Run]) -> Self {
        let adds = timers as f64;
        let cancels = timers.div_ceil(2) as f64;
        let expiries = (timers - timers.div_ceil(2)).max(1) as f64;
        let per = |f: &dyn Fn(&Run) -> f64, ops: f64| {
            Spread::of(runs.iter().map(|r| f(r) / ops).collect())
        };
        Summary {
            name,
            timers,
            add_ns_per_op: per(&|r| r.add_ns, adds),
            cancel_ns_per_op: per(&|r| r.cancel_ns, cancels),
            add_cancel_ns_per_op: per(&|r| r.add_ns + r.cancel_ns, adds + cancels),
            advance_ns_per_expiry: per(&|r| r.advance_ns, expiries),
            total_ns_per_timer: per(&|r| r.add_ns + r.cancel_ns + r.advance_ns, adds),
            bytes_per_timer: runs.iter().map(|r| r.bytes_peak).max().unwrap_or(0) as f64 / adds,
        }
    }
}

fn render_table(results: &[Summary], args: &TimerArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "timer benchmark: deadlines over 1..={} ms, cancel {}, advance in {} ms steps, {} runs \
         of {} (ns/op: median [min..max])",
        args.spread_ms,
        args.cancel.name(),
        args.step_ms,
        args.repeat,
        if args.warm { "a warm structure (second round)" } else { "a fresh structure" }
    );
    let _ = writeln!(
        out,
        "{:>9} {:<12} {:>22} {:>22} {:>22} {:>9} {:>22} {:>22} {:>8}",
        "timers",
        "impl",
        "add ns/op",
        "cancel ns/op",
        "add+cancel ns/op",
        "Mops/s",
        "advance ns/expiry",
        "total ns/timer",
        "B/timer"
    );
    let cell = |s: &Spread| format!("{:.1} [{:.1}..{:.1}]", s.median, s.min, s.max);
    for summary in results {
        let _ = writeln!(
            out,
            "{:>9} {:<12} {:>22} {:>22} {:>22} {:>9.1} {:>22} {:>22} {:>8.1}",
            summary.timers,
            summary.name,
            cell(&summary.add_ns_per_op),
            cell(&summary.cancel_ns_per_op),
            cell(&summary.add_cancel_ns_per_op),
            1_000.0 / summary.add_cancel_ns_per_op.median,
            cell(&summary.advance_ns_per_expiry),
            cell(&summary.total_ns_per_timer),
            summary.bytes_per_timer,
        );
    }
    let _ = writeln!(out, "\nadd+cancel speed-up of the wheel (median ns/op ratio):");
    for wheel in results.iter().filter(|s| s.name == Wheel::NAME || s.name == WheelCancel::NAME) {
        let versus = |name: &str| {
            results
                .iter()
                .find(|s| s.name == name && s.timers == wheel.timers)
                .map_or(f64::NAN, |s| {
                    s.add_cancel_ns_per_op.median / wheel.add_cancel_ns_per_op.median
                })
        };
        let _ = writeln!(
            out,
            "{:>9} timers, {:<12}: {:.2}x vs {}, {:.2}x vs {}, {:.2}x vs {}, {:.2}x vs {}",
            wheel.timers,
            wheel.name,
            versus(HeapSet::NAME),
            HeapSet::NAME,
            versus(HeapVec::NAME),
            HeapVec::NAME,
            versus(HeapIndexed::NAME),
            HeapIndexed::NAME,
            versus(BTree::NAME),
            BTree::NAME
        );
    }
    for wheel in results.iter().filter(|s| s.name == Wheel::NAME) {
        if let Some(floor) =
            results.iter().find(|s| s.name == Floor::NAME && s.timers == wheel.timers)
        {
            let ratio = |w: &Spread, f: &Spread| w.median / f.median;
            let _ = writeln!(
                out,
                "{:>9} timers, wheel / floor (median ns/op): add {:.2}x, cancel {:.2}x, \
                 add+cancel {:.2}x",
                wheel.timers,
                ratio(&wheel.add_ns_per_op, &floor.add_ns_per_op),
                ratio(&wheel.cancel_ns_per_op, &floor.cancel_ns_per_op),
                ratio(&wheel.add_cancel_ns_per_op, &floor.add_cancel_ns_per_op),
            );
        }
    }
    for name in [Wheel::NAME, WheelCancel::NAME, Floor::NAME] {
        // `results` runs size by size, so an implementation's rows are smallest first.
        let at: Vec<&Summary> = results.iter().filter(|s| s.name == name).collect();
        if let (Some(first), Some(last)) = (at.first(), at.last()) {
            let (from, to) = (first.add_cancel_ns_per_op.median, last.add_cancel_ns_per_op.median);
            let _ = writeln!(
                out,
                "{name} add+cancel cost from {} to {} timers: {from:.1} -> {to:.1} ns/op ({:.2}x)",
                first.timers,
                last.timers,
                to / from
            );
        }
    }
    out
}

fn render_json(results: &[Summary], args: &TimerArgs) -> String {
    let spread = |s: &Spread| {
        format!("{{\"min\":{:.3},\"median\":{:.3},\"max\":{:.3}}}", s.min, s.median, s.max)
    };
    let rows: Vec<String> = results
        .iter()
        .map(|s| {
            format!(
                "{{\"impl\":\"{}\",\"timers\":{},\"add_ns_per_op\":{},\"cancel_ns_per_op\":{},\
                 \"add_cancel_ns_per_op\":{},\"advance_ns_per_expiry\":{},\"total_ns_per_timer\":{},\
                 \"bytes_per_timer\":{:.2}}}",
                s.name,
                s.timers,
                spread(&s.add_ns_per_op),
                spread(&s.cancel_ns_per_op),
                spread(&s.add_cancel_ns_per_op),
                spread(&s.advance_ns_per_expiry),
                spread(&s.total_ns_per_timer),
                s.bytes_per_timer
            )
        })
        .collect();
    format!(
        "{{\"bench\":\"timer\",\"spread_ms\":{},\"cancel\":\"{:?}\",\"step_ms\":{},\"repeat\":{},\"warm\":{},\"seed\":{},\"results\":[{}]}}\n",
        args.spread_ms,
        args.cancel,
        args.step_ms,
        args.repeat,
        args.warm,
        args.seed,
        rows.join(",")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tiny(json: Option<PathBuf>) -> TimerArgs {
        TimerArgs {
            timers: 2_000,
            repeat: 2,
            spread_ms: 500,
            step_ms: 3,
            cancel: CancelOrder::Shuffled,
            seed: 7,
            warm: false,
            only: Vec::new(),
            json,
        }
    }

    #[test]
    fn all_implementations_expire_the_same_timers() {
        for warm in [false, true] {
            let args = TimerArgs { warm, ..tiny(None) };
            let workload = Workload::new(1_000, args.spread_ms, args.seed, args.cancel);
            let wheel = measure::<Wheel>(&workload, &args).unwrap();
            let wheel_cancel = measure::<WheelCancel>(&workload, &args).unwrap();
            let heap_set = measure::<HeapSet>(&workload, &args).unwrap();
            let heap_vec = measure::<HeapVec>(&workload, &args).unwrap();
            let heap_indexed = measure::<HeapIndexed>(&workload, &args).unwrap();
            let btree = measure::<BTree>(&workload, &args).unwrap();
            let floor = measure::<Floor>(&workload, &args).unwrap();
            // The sum of the payloads (indexes) of the odd, never-cancelled timers.
            let expected: u64 = (1..1_000u64).step_by(2).sum();
            for run in [wheel, wheel_cancel, heap_set, heap_vec, heap_indexed, btree, floor] {
                assert_eq!(run.checksum, expected, "warm: {warm}");
                assert!(run.bytes_peak > 0);
            }
        }
    }

    /// The indexed heap is a baseline, but a wrong one would make the comparison
    /// meaningless: against a sorted model, every cancel removes exactly its timer and
    /// every advance pops exactly the due ones, with positions kept true throughout.
    #[test]
    fn indexed_heap_removes_exactly_what_it_is_asked_to() {
        let mut rng = XorShift::new(11);
        let mut heap = HeapIndexed::with_timers(0);
        let mut model: BTreeMap<(u64, u32), u64> = BTreeMap::new();
        let mut handles: Vec<(u32, u64)> = Vec::new();
        let mut now_ms = 0;
        for step in 0..20_000u64 {
            match rng.next() % 4 {
                0 | 1 => {
                    let deadline_ms = now_ms + 1 + rng.next() % 200;
                    let id = heap.add(deadline_ms, step);
                    model.insert((deadline_ms, id), step);
                    handles.push((id, deadline_ms));
                }
                2 if !handles.is_empty() => {
                    let (id, deadline_ms) =
                        handles.swap_remove((rng.next() % handles.len() as u64) as usize);
                    heap.cancel(id);
                    assert!(model.remove(&(deadline_ms, id)).is_some());
                }
                _ => {
                    now_ms += rng.next() % 20;
                    let due: Vec<_> =
                        model.range(..(now_ms + 1, 0)).map(|(k, v)| (*k, *v)).collect();
                    let expected = due.iter().fold(0u64, |sum, (_, p)| sum.wrapping_add(*p));
                    assert_eq!(heap.advance(now_ms), (due.len() as u64, expected));
                    for (key, _) in due {
                        model.remove(&key);
                        handles.retain(|(id, _)| *id != key.1);
                    }
                }
            }
            for (position, entry) in heap.heap.iter().enumerate() {
                assert_eq!(heap.positions[entry.1 as usize] as usize, position);
                assert!(position == 0 || heap.heap[(position - 1) / 2].0 <= entry.0);
            }
            assert_eq!(heap.heap.len(), model.len());
        }
    }

    #[test]
    fn cancel_orders_cancel_half_of_distinct_timers() {
        for order in [CancelOrder::Shuffled, CancelOrder::InOrder, CancelOrder::RandomHalf] {
            let workload = Workload::new(1_001, 500, 7, order);
            let mut cancels = workload.cancels.clone();
            assert_eq!(cancels.len(), 501, "{order:?}");
            cancels.sort_unstable();
            cancels.dedup();
            assert_eq!(cancels.len(), 501, "{order:?}: duplicates");
            assert!(cancels.iter().all(|&index| index < 1_001));
            if order == CancelOrder::InOrder {
                assert_eq!(workload.cancels, cancels);
            }
            let args = TimerArgs { cancel: order, ..tiny(None) };
            let wheel = measure::<Wheel>(&workload, &args).unwrap();
            assert_eq!(wheel.checksum, measure::<HeapVec>(&workload, &args).unwrap().checksum);
        }
    }

    #[test]
    fn only_runs_the_implementations_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timer.json");
        let only = vec!["floor".to_string(), "wheel".to_string()];
        run(&TimerArgs { only, ..tiny(Some(path.clone())) }).unwrap();
        let json = std::fs::read_to_string(path).unwrap();
        assert_eq!(json.matches("\"impl\":").count(), 2);
        assert!(json.contains("\"impl\":\"wheel\""));
        assert!(json.contains("\"impl\":\"floor\""));
        let unknown = run(&TimerArgs { only: vec!["heap".to_string()], ..tiny(None) });
        assert!(unknown.unwrap_err().to_string().contains("no implementation"));
    }

    #[test]
    fn smoke_run_writes_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timer.json");
        run(&tiny(Some(path.clone()))).unwrap();
        let json = std::fs::read_to_string(path).unwrap();
        assert!(json.starts_with("{\"bench\":\"timer\""));
        // 2 000 is the only size below 10k: seven rows.
        assert_eq!(json.matches("\"impl\":").count(), 7);
        assert!(json.contains("\"impl\":\"floor\",\"timers\":2000"));
        assert!(json.contains("\"impl\":\"wheel\",\"timers\":2000"));
    }
}
