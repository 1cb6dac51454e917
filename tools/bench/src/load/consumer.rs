//! One consumer: a connection and a set of partitions, read with full Fetch requests (no
//! group, no fetch session) from given offsets. While catching up, one fetch is prefetched:
//! the next one is sent as soon as a response arrives, before that response is counted
//! (librdkafka's consumer prefetches the same way). Records are counted
//! from batch headers (record count, offsets); each record's end-to-end latency is "now"
//! (when the response was read) minus its creation time: the bench's microsecond stamp at
//! the start of the value when there is one, else the record timestamp (milliseconds).
//! Only the few varints in front of each value are read; compressed batches are
//! decompressed into one reused buffer.

use std::rc::Rc;

use anyhow::{bail, Context};
use sluice_engine::batch::{Batch, Compression, TimestampType};
use sluice_net::client::batch::{Batches, Records};
use sluice_net::client::{error_name, Connection, FetchPartitionSpec, FetchSpec, FetchTopicSpec};

use super::codec;
use super::producer::{STAMP_BYTES, STAMP_MAGIC};
use super::stats::{now_us, Stats};

/// What every consumer of a run does.
#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    pub topic: String,
    pub partition_max_bytes: i32,
    pub max_bytes: i32,
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// Total messages to consume (over all consumers), if limited by count.
    pub messages: Option<u64>,
    /// Stop at this time (µs since the epoch), if limited by time.
    pub deadline_us: Option<u64>,
    /// End-to-end mode: after the producers finish, read until every message they sent
    /// has arrived, or until `drain_us` more have passed.
    pub follow_producers: bool,
    pub drain_us: u64,
}

/// A partition being read: the next offset and, if reading up to a fixed end, that end.
#[derive(Debug, Clone, Copy)]
pub struct Assignment {
    pub partition: i32,
    pub offset: i64,
    pub end: Option<i64>,
}

pub async fn run(
    mut connection: Connection,
    mut assignments: Vec<Assignment>,
    plan: Rc<ConsumerPlan>,
    stats: Rc<Stats>,
) -> anyhow::Result<()> {
    let mut decompressed = Vec::new();
    let mut producers_done_at = None;
    let mut in_flight = None;
    let mut read_mark = connection.bytes_read();
    loop {
        if stats.stop.get() {
            return Ok(());
        }
        let now = now_us();
        if plan.deadline_us.is_some_and(|deadline| now >= deadline) {
            return Ok(());
        }
        if plan.messages.is_some_and(|limit| stats.consumed.msgs.get() >= limit) {
            return Ok(());
        }
        if plan.follow_producers && stats.producers_done.get() {
            if stats.consumed.msgs.get() >= stats.sent_msgs.get() {
                return Ok(());
            }
            let done_at = *producers_done_at.get_or_insert(now);
            if now.saturating_sub(done_at) > plan.drain_us {
                return Ok(());
            }
        }
        let pending = match in_flight.take() {
            Some(pending) => pending,
            None => match fetch_spec(&plan, &assignments) {
                Some(spec) => connection.send_fetch(&spec).await?,
                None => return Ok(()),
            },
        };
        let response = pending.await.context("Fetch")?;
        let now = now_us();
        let wire_bytes = connection.bytes_read() - read_mark;
        read_mark = connection.bytes_read();
        if response.error_code != 0 {
            bail!(
                "Fetch: Kafka error {} ({})",
                response.error_code,
                error_name(response.error_code)
            );
        }
        // Catching up (a partition's share of the response at least half full): prefetch,
        // as librdkafka does. The next fetch (from the offsets after this response's last
        // whole batch) goes out before this response is counted, so the broker sends while
        // we parse. Caught up, the next fetch waits until this response is counted: sent
        // at once it would come back with a batch or two, and the broker's core (shared
        // with the producers in e2e runs) would spend itself on small fetches.
        let mut next = assignments.clone();
        let mut catching_up = false;
        for topic in &response.responses {
            for data in &topic.partitions {
                let (Some(assignment), Some(records)) =
                    (next.iter_mut().find(|a| a.partition == data.partition_index), &data.records)
                else {
                    continue;
                };
                catching_up |= records.len() as u64 * 2 >= plan.partition_max_bytes as u64;
                if let Some(last) = Batches::new(records).map_while(Result::ok).last() {
                    assignment.offset = assignment.offset.max(last.last_offset() + 1);
                }
            }
        }
        if catching_up {
            if let Some(spec) = fetch_spec(&plan, &next) {
                in_flight = Some(connection.send_fetch(&spec).await?);
            }
        }
        let measuring = stats.measuring(now);
        // Records still wanted, with --messages: the last response may hold more.
        let mut budget = plan.messages.map(|limit| limit.saturating_sub(stats.consumed.msgs.get()));
        let mut msgs = 0u64;
        let mut payload_bytes = 0u64;
        for topic in &response.responses {
            for data in &topic.partitions {
                let partition = data.partition_index;
                if data.error_code != 0 {
                    bail!(
                        "Fetch from {}-{partition}: Kafka error {} ({})",
                        plan.topic,
                        data.error_code,
                        error_name(data.error_code)
                    );
                }
                let Some(assignment) = assignments.iter_mut().find(|a| a.partition == partition)
                else {
                    bail!("Fetch answered partition {partition}, which was not asked for");
                };
                let Some(records) = &data.records else { continue };
                let mut batches = Batches::new(records);
                let mut complete = 0;
                for batch in batches.by_ref() {
                    complete += 1;
                    let batch = batch.with_context(|| {
                        format!(
                            "a damaged batch in {}-{partition} after offset {}",
                            plan.topic, assignment.offset
                        )
                    })?;
                    let (count, bytes) = consume_batch(
                        &batch,
                        assignment,
                        now,
                        measuring,
                        &stats,
                        &mut decompressed,
                        &mut budget,
                    )?;
                    msgs += count;
                    payload_bytes += bytes;
                }
                if complete == 0 && batches.partial_tail() {
                    bail!(
                        "Fetch from {}-{partition} returned only part of the batch at offset {}: \
                         raise --fetch-max-bytes",
                        plan.topic,
                        assignment.offset
                    );
                }
            }
        }
        stats.consumed.add(now, measuring, msgs, payload_bytes, wire_bytes);
    }
}

/// The next Fetch for the partitions not yet read to their end, if any.
fn fetch_spec(plan: &ConsumerPlan, assignments: &[Assignment]) -> Option<FetchSpec> {
    let open: Vec<FetchPartitionSpec> = assignments
        .iter()
        .filter(|a| a.end.map_or(true, |end| a.offset < end))
        .map(|a| FetchPartitionSpec {
            partition: a.partition,
            offset: a.offset,
            max_bytes: plan.partition_max_bytes,
        })
        .collect();
    if open.is_empty() {
        return None;
    }
    Some(FetchSpec {
        max_wait_ms: plan.max_wait_ms,
        min_bytes: plan.min_bytes,
        max_bytes: plan.max_bytes,
        isolation_level: 0,
        topics: vec![FetchTopicSpec { name: plan.topic.clone(), partitions: open }],
    })
}

/// Counts the records of `batch` at or after the assignment's offset (and before its end),
/// at most `budget` of them when there is one, records their latencies, and moves the
/// offset past the batch. Returns the records and payload bytes counted.
fn consume_batch(
    batch: &Batch<'_>,
    assignment: &mut Assignment,
    now: u64,
    measuring: bool,
    stats: &Stats,
    decompressed: &mut Vec<u8>,
    budget: &mut Option<u64>,
) -> anyhow::Result<(u64, u64)> {
    let first = assignment.offset;
    let last = match assignment.end {
        Some(end) => batch.last_offset().min(end - 1),
        None => batch.last_offset(),
    };
    if last < first {
        // A batch before the fetch offset (the broker sends the whole batch holding it).
        return Ok((0, 0));
    }
    assignment.offset = batch.last_offset() + 1;
    if batch.is_control() {
        return Ok((0, 0));
    }
    let records = match batch.compression() {
        Compression::None => batch.records_bytes(),
        compression => {
            codec::decompress(compression, batch.records_bytes(), decompressed)?;
            decompressed.as_slice()
        }
    };
    let log_append_time =
        (batch.timestamp_type() == TimestampType::LogAppendTime).then(|| batch.max_timestamp());
    let base_offset = batch.base_offset();
    let mut count = 0u64;
    let mut payload = 0u64;
    let mut stamped = 0u64;
    let mut latency = stats.e2e_latency.recorder(measuring);
    for record in Records::new(records, batch.base_timestamp(), batch.record_count()) {
        let record = record
            .with_context(|| format!("a damaged record in the batch at offset {base_offset}"))?;
        let offset = base_offset + record.offset_delta;
        if offset < first || offset > last {
            continue;
        }
        match budget {
            Some(0) => break,
            Some(left) => *left -= 1,
            None => {}
        }
        count += 1;
        let value = record.value.unwrap_or_default();
        payload += (value.len() + record.key.map_or(0, <[u8]>::len)) as u64;
        let created_us = match value.get(..STAMP_BYTES) {
            Some(head) if head[..8] == STAMP_MAGIC => {
                stamped += 1;
                u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"))
            }
            _ => {
                let timestamp_ms = log_append_time.unwrap_or(record.timestamp);
                u64::try_from(timestamp_ms).unwrap_or(0).saturating_mul(1000)
            }
        };
        latency.record(now.saturating_sub(created_us).max(1));
    }
    stats.e2e_from_stamp.set(stats.e2e_from_stamp.get() + stamped);
    stats.e2e_from_timestamp.set(stats.e2e_from_timestamp.get() + count - stamped);
    Ok((count, payload))
}
