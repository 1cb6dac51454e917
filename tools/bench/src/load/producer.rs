//! One producer: a connection, a record batch per partition (reused), and a loop that
//! makes messages (as fast as it can, or on a schedule for `--rate`), closes batches when
//! full or when `--linger-ms` has passed, and sends every ready batch in one Produce
//! request, up to `--in-flight` requests in flight. An acknowledgement task per producer
//! awaits the answers in order and records each message's latency: from the time the
//! message was made (its scheduled time under `--rate`, so a late producer counts its own
//! delay) to the time its acknowledgement was read; and how much of that it spent in the
//! producer (made -> written, the Java producer's `record-queue-time`).
//!
//! Nothing is allocated per message: values are written into the batch buffers in place
//! (a 16-byte stamp, then filler from a precomputed pool), and creation times go into
//! per-partition vectors that circulate between the producer and its acknowledgement task.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use glommio::channels::local_channel;
use kafka_protocol::messages::ProduceResponse;
use sluice_engine::batch::Compression;
use sluice_net::client::batch::{BatchBuilder, BatchOptions};
use sluice_net::client::{
    error_name, Connection, ProducePartition, ProduceSpec, ProduceTopic, ResponseFuture,
};

use super::codec;
use super::stats::{now_us, Stats};

/// First 8 bytes of every value the bench writes (when the message is at least
/// `STAMP_BYTES` long), followed by the creation time in µs since the epoch, big-endian.
pub const STAMP_MAGIC: [u8; 8] = *b"SLCBENCH";
pub const STAMP_BYTES: usize = 16;
/// glommio's timers fire late on this kind of VM (a 1 ms sleep wakes ~130 us late at the
/// median and ~250 us at p99; a 50 us sleep ~75 us late), and with `--rate` a late
/// wake-up counts as latency. So the producer sleeps until this long before its next
/// message is due and spins the rest of the way, yielding to the executor (which reads
/// acknowledgements meanwhile) on every turn.
const SPIN_BEFORE_DUE_US: u64 = 300;
/// Filler bytes the values are cut from, at rotating offsets (so compressors see data
/// that does not repeat every message).
const FILLER_BYTES: usize = 1 << 20;

/// `--key-distribution`: how messages are keyed, which picks their partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDistribution {
    /// No key; each producer fills one partition's batch, then moves to the next
    /// (round robin, a sticky partitioner).
    None,
    /// An 8-byte random key; partition = murmur2(key) % partitions, Kafka's default.
    Random,
    /// An 8-byte counter (per producer) as the key, partitioned like `random`.
    Sequential,
}

/// What every producer of a run does.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    pub topic: String,
    pub partitions: i32,
    pub message_bytes: usize,
    pub batch_bytes: usize,
    pub linger_us: u64,
    pub acks: i16,
    pub timeout_ms: i32,
    pub compression: Compression,
    /// Messages per second for this producer; 0 for as fast as it can.
    pub rate: f64,
    /// Messages this producer sends, if limited by count.
    pub messages: Option<u64>,
    /// Stop making messages at this time (µs since the epoch), if limited by time.
    pub deadline_us: Option<u64>,
    pub keys: KeyDistribution,
}

/// A sent request, for the acknowledgement task.
struct InFlight {
    response: ResponseFuture<ProduceResponse>,
    /// Creation times (µs) of the request's messages, one vector per batch.
    created: Vec<Vec<u64>>,
    payload_bytes: u64,
    wire_bytes: u64,
    /// When the request was about to be written (µs).
    sent_us: u64,
}

/// Vectors of creation times, returned by the acknowledgement task for reuse.
type Pool = Rc<RefCell<Vec<Vec<u64>>>>;

/// Runs one producer on `connection` until its count or time is up, then waits for the
/// outstanding acknowledgements.
pub async fn run(
    index: usize,
    mut connection: Connection,
    plan: Rc<ProducerPlan>,
    stats: Rc<Stats>,
) -> anyhow::Result<()> {
    let version = connection.version::<kafka_protocol::messages::ProduceRequest>()?;
    let pool: Pool = Rc::new(RefCell::new(Vec::new()));
    let (acks_sender, acks_receiver) = local_channel::new_bounded::<InFlight>(64);
    let acknowledger = glommio::spawn_local(acknowledge(
        acks_receiver,
        stats.clone(),
        pool.clone(),
        plan.topic.clone(),
    ));
    let mut producer = Producer::new(index, &plan);
    let result = producer.run(&mut connection, version, &plan, &stats, &pool, &acks_sender).await;
    drop(acks_sender);
    // The acknowledgement task ends when the channel is drained; on failure, stop waiting.
    if result.is_err() {
        stats.stop.set(true);
    }
    let acked = acknowledger.await;
    result.and(acked)
}

async fn acknowledge(
    receiver: local_channel::LocalReceiver<InFlight>,
    stats: Rc<Stats>,
    pool: Pool,
    topic: String,
) -> anyhow::Result<()> {
    while let Some(in_flight) = receiver.recv().await {
        let response = in_flight.response.await.context("Produce")?;
        let now = now_us();
        for topic_response in &response.responses {
            for partition in &topic_response.partition_responses {
                if partition.error_code != 0 {
                    anyhow::bail!(
                        "Produce to {topic}-{}: Kafka error {} ({}){}",
                        partition.index,
                        partition.error_code,
                        error_name(partition.error_code),
                        partition
                            .error_message
                            .as_ref()
                            .map(|m| format!(": {}", m.as_str()))
                            .unwrap_or_default()
                    );
                }
            }
        }
        let measuring = stats.measuring(now);
        stats
            .request_latency
            .recorder(measuring)
            .record(now.saturating_sub(in_flight.sent_us).max(1));
        let mut msgs = 0;
        {
            let mut latency = stats.produce_latency.recorder(measuring);
            for created in &in_flight.created {
                msgs += created.len() as u64;
                for &at in created {
                    latency.record(now.saturating_sub(at).max(1));
                }
            }
        }
        stats.produced.add(now, measuring, msgs, in_flight.payload_bytes, in_flight.wire_bytes);
        let mut pool = pool.borrow_mut();
        for mut created in in_flight.created {
            created.clear();
            pool.push(created);
        }
    }
    Ok(())
}

struct Producer {
    builders: Vec<BatchBuilder>,
    /// Creation time of each message in each partition's open batch.
    created: Vec<Vec<u64>>,
    /// Payload bytes in each open batch.
    payload: Vec<u64>,
    /// When each open batch got its first message (µs).
    opened_us: Vec<u64>,
    /// Batches that cannot take the next message: they go in the next request.
    full: Vec<bool>,
    /// The sticky partition for unkeyed messages.
    sticky: usize,
    /// The next message's partition and key, chosen but not yet appended (its batch was
    /// full).
    next: Option<(usize, u64)>,
    filler: Vec<u8>,
    filler_at: usize,
    rng: u64,
    sequence: u64,
    made: u64,
}

impl Producer {
    fn new(index: usize, plan: &ProducerPlan) -> Producer {
        let partitions = usize::try_from(plan.partitions).unwrap_or(1).max(1);
        let mut rng =
            0x9E37_79B9_7F4A_7C15u64 ^ (index as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        // Kafka's perf test fills values with random upper-case letters; so do we, so
        // compression ratios are comparable.
        let filler: Vec<u8> = (0..FILLER_BYTES + plan.message_bytes)
            .map(|_| b'A' + (xorshift(&mut rng) % 26) as u8)
            .collect();
        let capacity = plan.batch_bytes.min(16 << 20) + plan.message_bytes + 64;
        Producer {
            builders: (0..partitions).map(|_| BatchBuilder::with_capacity(capacity)).collect(),
            created: vec![Vec::new(); partitions],
            payload: vec![0; partitions],
            opened_us: vec![0; partitions],
            full: vec![false; partitions],
            sticky: index % partitions,
            next: None,
            filler,
            filler_at: 0,
            rng,
            sequence: 0,
            made: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        connection: &mut Connection,
        version: i16,
        plan: &ProducerPlan,
        stats: &Stats,
        pool: &Pool,
        acks: &local_channel::LocalSender<InFlight>,
    ) -> anyhow::Result<()> {
        let started_us = now_us();
        let interval_us = if plan.rate > 0.0 { 1e6 / plan.rate } else { 0.0 };
        loop {
            if stats.stop.get() {
                return Ok(());
            }
            connection.wait_for_slot().await?;
            let now = now_us();
            let out_of_time = plan.deadline_us.is_some_and(|deadline| now >= deadline);
            let out_of_messages = plan.messages.is_some_and(|limit| self.made >= limit);
            if out_of_time || out_of_messages {
                // Send what is left, then stop.
                for partition in 0..self.builders.len() {
                    self.full[partition] |= !self.builders[partition].is_empty();
                }
                if self.full.iter().any(|&full| full) {
                    self.send(connection, version, plan, stats, pool, acks).await?;
                }
                return Ok(());
            }
            let mut wake_us = None;
            if plan.rate > 0.0 {
                // Make every message whose time has come, stamped with that time.
                loop {
                    let due = started_us + (self.made as f64 * interval_us) as u64;
                    if due > now {
                        wake_us = Some(due);
                        break;
                    }
                    if plan.messages.is_some_and(|limit| self.made >= limit)
                        || !self.append(plan, due)
                    {
                        break;
                    }
                }
            } else {
                // As fast as possible: fill until a batch is full.
                while plan.messages.map_or(true, |limit| self.made < limit) {
                    if !self.append(plan, now) {
                        break;
                    }
                }
            }
            // Ready: full batches, and open ones whose linger has passed.
            let mut linger_wake = None;
            for partition in 0..self.builders.len() {
                if self.builders[partition].is_empty() || self.full[partition] {
                    continue;
                }
                let expires = self.opened_us[partition] + plan.linger_us;
                if expires <= now {
                    self.full[partition] = true;
                } else {
                    linger_wake = Some(linger_wake.map_or(expires, |w: u64| w.min(expires)));
                }
            }
            if self.full.iter().any(|&full| full) {
                self.send(connection, version, plan, stats, pool, acks).await?;
                glommio::executor().yield_if_needed().await;
                continue;
            }
            let wake = match (wake_us, linger_wake) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => now + 1_000,
            };
            let wake = plan.deadline_us.map_or(wake, |deadline| wake.min(deadline));
            let left = wake.saturating_sub(now_us());
            if left > SPIN_BEFORE_DUE_US {
                glommio::timer::sleep(Duration::from_micros(left - SPIN_BEFORE_DUE_US)).await;
            } else {
                glommio::executor().yield_task_queue_now().await;
            }
        }
    }

    /// Appends the next message, made at `created_us`, unless its batch is full (then the
    /// batch is marked full and the message waits). Returns whether it was appended.
    fn append(&mut self, plan: &ProducerPlan, created_us: u64) -> bool {
        let (partition, key) = match self.next.take() {
            Some(next) => next,
            None => self.choose(plan),
        };
        let key_bytes = key.to_be_bytes();
        let key = (plan.keys != KeyDistribution::None).then_some(&key_bytes[..]);
        let builder = &mut self.builders[partition];
        let fits =
            builder.size_after(key.map_or(0, <[u8]>::len), plan.message_bytes) <= plan.batch_bytes;
        if self.full[partition] || (!builder.is_empty() && !fits) {
            self.full[partition] = true;
            self.next = Some((partition, u64::from_be_bytes(key_bytes)));
            if plan.keys == KeyDistribution::None {
                // The sticky partition moves on once its batch is full.
                self.sticky = (self.sticky + 1) % self.builders.len();
            }
            return false;
        }
        if builder.is_empty() {
            self.opened_us[partition] = created_us;
        }
        let size = plan.message_bytes;
        let filler = &self.filler[self.filler_at..];
        builder.push_with((created_us / 1000) as i64, key, size, |out| {
            if size >= STAMP_BYTES {
                out.extend_from_slice(&STAMP_MAGIC);
                out.extend_from_slice(&created_us.to_be_bytes());
                out.extend_from_slice(&filler[..size - STAMP_BYTES]);
            } else {
                out.extend_from_slice(&filler[..size]);
            }
        });
        // Move the filler window by a prime number of bytes.
        self.filler_at = (self.filler_at + 4099) % FILLER_BYTES;
        self.created[partition].push(created_us);
        self.payload[partition] += (size + key.map_or(0, <[u8]>::len)) as u64;
        self.made += 1;
        true
    }

    fn choose(&mut self, plan: &ProducerPlan) -> (usize, u64) {
        let partitions = self.builders.len();
        match plan.keys {
            KeyDistribution::None => (self.sticky, 0),
            KeyDistribution::Random => {
                let key = xorshift(&mut self.rng);
                (partition_of(&key.to_be_bytes(), partitions), key)
            }
            KeyDistribution::Sequential => {
                let key = self.sequence;
                self.sequence += 1;
                (partition_of(&key.to_be_bytes(), partitions), key)
            }
        }
    }

    /// Sends every full batch in one request and hands it to the acknowledgement task.
    async fn send(
        &mut self,
        connection: &mut Connection,
        version: i16,
        plan: &ProducerPlan,
        stats: &Stats,
        pool: &Pool,
        acks: &local_channel::LocalSender<InFlight>,
    ) -> anyhow::Result<()> {
        let mut payload_bytes = 0;
        let mut created = Vec::new();
        for partition in 0..self.builders.len() {
            if !self.full[partition] || self.builders[partition].is_empty() {
                continue;
            }
            let builder = &mut self.builders[partition];
            if plan.compression == Compression::None {
                builder.finish(BatchOptions::default());
            } else {
                builder.finish_compressed(
                    BatchOptions::default(),
                    plan.compression,
                    |records, out| codec::compress(plan.compression, records, out),
                )?;
            }
            payload_bytes += self.payload[partition];
            let fresh = pool.borrow_mut().pop().unwrap_or_default();
            created.push(std::mem::replace(&mut self.created[partition], fresh));
        }
        let parts: Vec<ProducePartition<'_>> = self
            .builders
            .iter()
            .enumerate()
            .filter(|(partition, _)| self.full[*partition])
            .filter_map(|(partition, builder)| {
                Some(ProducePartition {
                    partition: partition as i32,
                    records: builder.finished_bytes()?,
                })
            })
            .collect();
        let topics = [ProduceTopic { name: &plan.topic, partitions: &parts }];
        let spec = ProduceSpec {
            acks: plan.acks,
            timeout_ms: plan.timeout_ms,
            transactional_id: None,
            topics: &topics,
        };
        let msgs: u64 = created.iter().map(|c| c.len() as u64).sum();
        let written_before = connection.bytes_written();
        let sent_us = now_us();
        if plan.acks != 0 {
            // Only acknowledged messages have a latency; their time in the client is part of it.
            let mut queued = stats.queue_latency.recorder(stats.measuring(sent_us));
            for &at in created.iter().flatten() {
                queued.record(sent_us.saturating_sub(at).max(1));
            }
        }
        let response = connection.send_produce(version, &spec).await?;
        let wire_bytes = connection.bytes_written() - written_before;
        stats.sent_msgs.set(stats.sent_msgs.get() + msgs);
        for partition in 0..self.builders.len() {
            if self.full[partition] {
                self.builders[partition].clear();
                self.payload[partition] = 0;
                self.full[partition] = false;
            }
        }
        match response {
            Some(response) => {
                let in_flight = InFlight { response, created, payload_bytes, wire_bytes, sent_us };
                if acks.send(in_flight).await.is_err() {
                    // The acknowledgement task failed; its error is the run's.
                    stats.stop.set(true);
                }
            }
            None => {
                // acks=0: counted when written; no latency to measure.
                let now = now_us();
                stats.produced.add(now, stats.measuring(now), msgs, payload_bytes, wire_bytes);
                let mut pool = pool.borrow_mut();
                for mut vector in created {
                    vector.clear();
                    pool.push(vector);
                }
            }
        }
        Ok(())
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Kafka's default partitioner for keyed records: `toPositive(murmur2(key)) % partitions`.
pub fn partition_of(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), so keyed records land on the partitions a
/// Java client would choose.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = 0x9747_b28c ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    fn plan(keys: KeyDistribution, partitions: i32) -> ProducerPlan {
        ProducerPlan {
            topic: "t".to_string(),
            partitions,
            message_bytes: 100,
            batch_bytes: 1000,
            linger_us: 0,
            acks: 1,
            timeout_ms: 1000,
            compression: Compression::None,
            rate: 0.0,
            messages: None,
            deadline_us: None,
            keys,
        }
    }

    #[test]
    fn batches_fill_to_the_batch_size_and_carry_stamps() {
        let plan = plan(KeyDistribution::None, 2);
        let mut producer = Producer::new(0, &plan);
        let mut appended = 0;
        while producer.append(&plan, 1_234_567) {
            appended += 1;
        }
        // 100-byte values with a few bytes of record overhead: 8 fit in 1000 bytes
        // after the 61-byte header.
        assert_eq!(appended, 8);
        assert!(producer.full[0]);
        assert_eq!(producer.sticky, 1, "the sticky partition moved on");
        assert!(producer.builders[1].is_empty());
        let bytes = producer.builders[0].finish(BatchOptions::default()).to_vec();
        assert!(bytes.len() <= plan.batch_bytes);
        let (batch, _) = sluice_engine::batch::Batch::parse(&bytes).unwrap();
        batch.validate(usize::MAX).unwrap();
        let records: Vec<_> =
            sluice_net::client::batch::Records::of(&batch).map(Result::unwrap).collect();
        assert_eq!(records.len(), 8);
        for record in &records {
            let value = record.value.unwrap();
            assert_eq!(value.len(), 100);
            assert_eq!(value[..8], STAMP_MAGIC);
            assert_eq!(u64::from_be_bytes(value[8..16].try_into().unwrap()), 1_234_567);
            assert_eq!(record.timestamp, 1_234);
            assert!(record.key.is_none());
        }
        assert_eq!(producer.created[0], vec![1_234_567; 8]);
        assert_eq!(producer.payload[0], 800);
    }

    #[test]
    fn keyed_messages_go_to_their_keys_partitions() {
        let plan = plan(KeyDistribution::Sequential, 4);
        let mut producer = Producer::new(0, &plan);
        for _ in 0..8 {
            assert!(producer.append(&plan, 1));
        }
        for (partition, builder) in producer.builders.iter_mut().enumerate() {
            if builder.is_empty() {
                continue;
            }
            let bytes = builder.finish(BatchOptions::default()).to_vec();
            let (batch, _) = sluice_engine::batch::Batch::parse(&bytes).unwrap();
            for record in sluice_net::client::batch::Records::of(&batch) {
                let key = record.unwrap().key.unwrap();
                assert_eq!(key.len(), 8);
                assert_eq!(partition_of(key, 4), partition);
            }
        }
        let total: i32 = producer.builders.iter().map(BatchBuilder::record_count).sum();
        assert_eq!(total, 8);
    }
}
