//! Timing wheel and purgatory: where a shard parks every operation that cannot finish
//! yet (a fetch short of `min_bytes`, a produce with acks=all short of the high
//! watermark, a group member's session, a transaction's timeout) until an event completes
//! it or its deadline expires it. Kafka's `TimingWheel` / `SystemTimer` /
//! `DelayedOperationPurgatory`, rebuilt per shard without locks.
//!
//! Three layers, each usable alone:
//! - [`TimingWheel<T>`]: a hierarchical timing wheel of payloads `T`. O(1) `add`, and
//!   O(1) `cancel` (payload handed back) or `discard` (payload dropped later) through a
//!   `Copy` [`TimerHandle`]; buckets are vectors of slab indexes and cancelled entries
//!   stay in them as tombstones until `advance` or a compaction frees them. Overflow
//!   wheels created on demand, driven only by `advance(now_ms)`. Bounded by
//!   `entries_max` live entries. The exact expiry
//!   guarantee is on [`TimingWheel::advance`]: an entry with deadline `d` comes out of the
//!   first `advance(now)` with `now >= ceil(d / tick) * tick`, never earlier; so never
//!   before its deadline and, when `advance` runs every tick, less than a tick after it.
//! - [`Purgatory<K, O>`]: delayed operations `O` watched by keys `K` (topic-partitions,
//!   group ids) and timed by a wheel. Sans-I/O: it hands each operation back exactly once,
//!   as [`Completed`] (by [`Purgatory::try_complete_else_watch`] or
//!   [`Purgatory::check_key`]), [`Expired`] (by [`Purgatory::advance`]) or cancelled, and
//!   the caller answers it. Operations leave every watch list when they leave.
//! - [`TimerDriver`]: the glommio task that advances a wheel or purgatory from the shard's
//!   [`Clock`](crate::clock::Clock) and dispatches what expired.
//!
//! How later parts of the broker use it:
//! - delayed fetch and delayed produce: a purgatory keyed by topic-partition, checked on
//!   append and on high watermark moves (both worked out below);
//! - group session and rebalance timeouts: a purgatory keyed by member or group id; a
//!   heartbeat calls [`Purgatory::reschedule`] to push the session's deadline out;
//! - transaction timeouts: operations with no keys, plain deadlines, cancelled on commit;
//! - delayed messages: a bare [`TimingWheel`] whose payload is the message's position.
//!
//! # Delayed fetch (min_bytes / max_wait_ms)
//!
//! A fetch waits until the partitions it reads hold `min_bytes` past its positions, or
//! `max_wait_ms` passes; either way it answers with what is there.
//!
//! ```
//! use std::collections::HashMap;
//! use sluice_engine::timer::{DelayedOperation, Purgatory, PurgatoryOptions, Watched};
//!
//! #[derive(Debug, Clone, PartialEq, Eq, Hash)]
//! struct TopicPartition { topic: &'static str, partition: i32 }
//!
//! /// The shard's view of its logs: bytes readable (below the high watermark) per partition.
//! #[derive(Default)]
//! struct Logs { readable_bytes: HashMap<TopicPartition, u64> }
//!
//! impl Logs {
//!     fn append(&mut self, tp: &TopicPartition, bytes: u64) {
//!         *self.readable_bytes.entry(tp.clone()).or_default() += bytes;
//!     }
//!     fn bytes_after(&self, tp: &TopicPartition, position: u64) -> u64 {
//!         self.readable_bytes.get(tp).map_or(0, |end| end.saturating_sub(position))
//!     }
//! }
//!
//! struct DelayedFetch { correlation_id: i32, min_bytes: u64, positions: Vec<(TopicPartition, u64)> }
//!
//! impl DelayedFetch {
//!     fn accumulated_bytes(&self, logs: &Logs) -> u64 {
//!         self.positions.iter().map(|(tp, position)| logs.bytes_after(tp, *position)).sum()
//!     }
//!     /// The response: what each partition holds past the fetch position.
//!     fn respond(&self, logs: &Logs) -> (i32, Vec<u64>) {
//!         let bytes = self.positions.iter().map(|(tp, p)| logs.bytes_after(tp, *p)).collect();
//!         (self.correlation_id, bytes)
//!     }
//! }
//!
//! impl DelayedOperation<Logs> for DelayedFetch {
//!     fn try_complete(&mut self, logs: &mut Logs) -> bool {
//!         self.accumulated_bytes(logs) >= self.min_bytes
//!     }
//! }
//!
//! let tp0 = TopicPartition { topic: "orders", partition: 0 };
//! let tp1 = TopicPartition { topic: "orders", partition: 1 };
//! let mut logs = Logs::default();
//! let mut fetches: Purgatory<TopicPartition, DelayedFetch> =
//!     Purgatory::new(PurgatoryOptions::starting_at(0));
//!
//! // A Fetch arrives at t=0 with min_bytes=1024, max_wait_ms=500, over two partitions.
//! let fetch = DelayedFetch {
//!     correlation_id: 7,
//!     min_bytes: 1024,
//!     positions: vec![(tp0.clone(), 0), (tp1.clone(), 0)],
//! };
//! let keys: Vec<TopicPartition> = fetch.positions.iter().map(|(tp, _)| tp.clone()).collect();
//! let now_ms = 0;
//! let max_wait_ms = 500;
//! match fetches.try_complete_else_watch(fetch, keys, now_ms + max_wait_ms, &mut logs) {
//!     Ok(Watched::Completed(fetch)) => unreachable!("empty logs: {:?}", fetch.respond(&logs)),
//!     Ok(Watched::Parked(_id)) => {}              // Answered later.
//!     Err(rejected) => { let _answer_now = rejected.op.respond(&logs); }
//! }
//!
//! // Appends wake the fetches watching the partition appended to.
//! logs.append(&tp0, 600);
//! assert!(fetches.check_key(&tp0, &mut logs).is_empty()); // 600 < 1024: keeps waiting.
//! logs.append(&tp1, 600);
//! let completed = fetches.check_key(&tp1, &mut logs);      // 1200 >= 1024.
//! assert_eq!(completed.len(), 1);
//! assert_eq!(completed[0].op.respond(&logs), (7, vec![600, 600]));
//! assert_eq!(fetches.watched_keys(), 0);                   // Gone from both partitions.
//!
//! // A second fetch finds too little and times out: it answers with what is there.
//! let fetch = DelayedFetch { correlation_id: 8, min_bytes: 1024, positions: vec![(tp0.clone(), 600)] };
//! fetches.try_complete_else_watch(fetch, [tp0.clone()], 100 + max_wait_ms, &mut logs).unwrap();
//! logs.append(&tp0, 10);
//! assert!(fetches.check_key(&tp0, &mut logs).is_empty());
//! assert!(fetches.advance(599).is_empty());                // Never early.
//! let expired = fetches.advance(600);
//! assert_eq!(expired.len(), 1);
//! assert_eq!(expired[0].op.respond(&logs), (8, vec![10]));
//! ```
//!
//! # Delayed produce (acks=all)
//!
//! A produce with acks=all waits until the high watermark of every partition it wrote
//! passes its batch; on expiry, the partitions still short answer REQUEST_TIMED_OUT.
//!
//! ```
//! use std::collections::HashMap;
//! use sluice_engine::timer::{DelayedOperation, Purgatory, PurgatoryOptions, Watched};
//!
//! const NONE: i16 = 0;
//! const REQUEST_TIMED_OUT: i16 = 7;
//!
//! type TopicPartition = (&'static str, i32);
//!
//! /// The shard's replica state: high watermark per partition.
//! #[derive(Default)]
//! struct Replicas { high_watermark: HashMap<TopicPartition, i64> }
//!
//! impl Replicas {
//!     fn high_watermark(&self, tp: &TopicPartition) -> i64 {
//!         self.high_watermark.get(tp).copied().unwrap_or(0)
//!     }
//! }
//!
//! /// `required_offset`: the offset after the last record of the batch this produce wrote.
//! struct DelayedProduce { correlation_id: i32, partitions: Vec<(TopicPartition, i64)> }
//!
//! impl DelayedProduce {
//!     fn respond(&self, replicas: &Replicas) -> (i32, Vec<i16>) {
//!         let codes = self.partitions.iter().map(|(tp, required_offset)| {
//!             if replicas.high_watermark(tp) >= *required_offset { NONE } else { REQUEST_TIMED_OUT }
//!         });
//!         (self.correlation_id, codes.collect())
//!     }
//! }
//!
//! impl DelayedOperation<Replicas> for DelayedProduce {
//!     fn try_complete(&mut self, replicas: &mut Replicas) -> bool {
//!         self.partitions.iter().all(|(tp, required)| replicas.high_watermark(tp) >= *required)
//!     }
//! }
//!
//! let mut replicas = Replicas::default();
//! let mut produces: Purgatory<TopicPartition, DelayedProduce> =
//!     Purgatory::new(PurgatoryOptions::starting_at(1_000));
//!
//! // Produce (acks=all, timeout_ms=30000) appended up to offset 10 on p0 and 4 on p1.
//! let produce = DelayedProduce {
//!     correlation_id: 41,
//!     partitions: vec![(("payments", 0), 10), (("payments", 1), 4)],
//! };
//! let keys = [("payments", 0), ("payments", 1)];
//! let Ok(Watched::Parked(_)) =
//!     produces.try_complete_else_watch(produce, keys, 1_000 + 30_000, &mut replicas)
//! else { panic!("no follower has caught up yet") };
//!
//! // Followers fetch; each high watermark move checks the produces on that partition.
//! replicas.high_watermark.insert(("payments", 0), 10);
//! assert!(produces.check_key(&("payments", 0), &mut replicas).is_empty());
//! replicas.high_watermark.insert(("payments", 1), 4);
//! let completed = produces.check_key(&("payments", 1), &mut replicas);
//! assert_eq!(completed[0].op.respond(&replicas), (41, vec![NONE, NONE]));
//!
//! // Another produce whose follower never catches up on p1 times out.
//! let produce = DelayedProduce {
//!     correlation_id: 42,
//!     partitions: vec![(("payments", 0), 12), (("payments", 1), 6)],
//! };
//! produces.try_complete_else_watch(produce, keys, 2_000 + 30_000, &mut replicas).unwrap();
//! replicas.high_watermark.insert(("payments", 0), 12);
//! assert!(produces.check_key(&("payments", 0), &mut replicas).is_empty());
//! let expired = produces.advance(32_000);
//! assert_eq!(expired[0].op.respond(&replicas), (42, vec![NONE, REQUEST_TIMED_OUT]));
//! assert!(produces.is_empty());
//! assert_eq!(produces.watched_keys(), 0);
//! ```

mod driver;
mod free;
mod purgatory;
mod wheel;

pub use driver::{DriverOptions, Timed, TimerDriver};
pub use purgatory::{
    Completed, DelayedOperation, Expired, OpId, Purgatory, PurgatoryError, PurgatoryOptions,
    Rejected, Watched,
};
pub use wheel::{
    TimerError, TimerHandle, TimingWheel, WheelOptions, ENTRIES_MAX_LIMIT, WHEEL_SIZE_MAX,
};
