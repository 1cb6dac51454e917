//! Zero-copy fetch: in page-cache mode every fetched record byte goes from the segment
//! file to the socket with sendfile, including ranges that had left the page cache; in
//! direct mode the one copy is the DMA read. The broker's own counters (logged when each
//! shard stops) are checked against the bytes the client received.

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

use crate::harness::{produce_request, Broker, Raw};

const RECORDS_PER_BATCH: usize = 1024;
const VALUE_BYTES: usize = 1000;
const MARKER: &[u8; 8] = b"@@@@@@@@";

/// A batch of 1024 records of 1000 bytes whose first value starts with a marker, and the
/// marker's position: each produced copy carries its batch number there.
fn template() -> (Vec<u8>, usize) {
    let records: Vec<Record> = (0..RECORDS_PER_BATCH)
        .map(|i| {
            let mut value = vec![b'a' + (i % 26) as u8; VALUE_BYTES];
            if i == 0 {
                value[..8].copy_from_slice(MARKER);
            }
            Record { key: None, value: Some(value), timestamp: 1_000 }
        })
        .collect();
    let batch = encode_batch(&records, EncodeOptions::default());
    let at = batch.windows(8).position(|w| w == MARKER).unwrap();
    (batch, at)
}

/// The template with `number` at the marker and its CRC-32C recomputed.
fn numbered(template: &[u8], marker_at: usize, number: u64) -> Vec<u8> {
    let mut batch = template.to_vec();
    batch[marker_at..marker_at + 8].copy_from_slice(format!("{number:08}").as_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

fn fetch_request(topic: &str, offset: i64, max_bytes: i32) -> FetchRequest {
    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = offset;
    partition.partition_max_bytes = max_bytes;
    partition.current_leader_epoch = -1;
    partition.log_start_offset = -1;
    let mut fetch_topic = FetchTopic::default();
    fetch_topic.topic = TopicName(StrBytes::from_string(topic.to_string()));
    fetch_topic.partitions = vec![partition];
    let mut request = FetchRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.max_wait_ms = 100;
    request.min_bytes = 1;
    request.max_bytes = max_bytes;
    request.session_epoch = -1;
    request.topics = vec![fetch_topic];
    request
}

/// Produces `batches` numbered batches (acks=1); returns the high watermark.
fn produce(raw: &mut Raw, topic: &str, batches: u64) -> i64 {
    let (template, marker_at) = template();
    let mut end = 0;
    for number in 0..batches {
        let mut request = produce_request(topic, 0, numbered(&template, marker_at, number));
        request.acks = 1;
        let response = raw.send(&request, 9);
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, 0, "batch {number}");
        assert_eq!(answer.base_offset, number as i64 * RECORDS_PER_BATCH as i64);
        end = answer.base_offset + RECORDS_PER_BATCH as i64;
    }
    end
}

/// Fetches everything up to `end`, checking that batches come back dense, in order and
/// with their numbers; returns the record bytes received (partial batches included, as
/// they were sent).
fn fetch_all(raw: &mut Raw, topic: &str, end: i64, max_bytes: i32) -> u64 {
    let (_, marker_at) = template();
    let mut offset = 0i64;
    let mut received = 0u64;
    while offset < end {
        let response = raw.send(&fetch_request(topic, offset, max_bytes), 12);
        assert_eq!(response.error_code, 0);
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "fetch at {offset}");
        assert_eq!(partition.high_watermark, end);
        let records: Bytes = partition.records.clone().unwrap_or_default();
        received += records.len() as u64;
        let mut rest = &records[..];
        let mut whole = 0;
        while rest.len() >= 12 {
            let base = i64::from_be_bytes(rest[..8].try_into().unwrap());
            let size = 12 + i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            if size > rest.len() {
                break; // Cut by max_bytes: the client drops it and fetches it next time.
            }
            assert_eq!(base, offset, "batches are dense and in order");
            let last_delta = i32::from_be_bytes(rest[23..27].try_into().unwrap());
            assert_eq!(last_delta as usize, RECORDS_PER_BATCH - 1);
            let number = base as u64 / RECORDS_PER_BATCH as u64;
            assert_eq!(&rest[marker_at..marker_at + 8], format!("{number:08}").as_bytes());
            offset = base + i64::from(last_delta) + 1;
            rest = &rest[size..];
            whole += 1;
        }
        assert!(whole > 0, "a fetch at {offset} returned no whole batch");
    }
    assert_eq!(offset, end);
    received
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line}"));
    let value = &line[at + name.len() + 2..];
    value.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap()
}

/// The sum over shards of one of the broker's "fetch bytes sent" counters.
fn counter_sum(log: &str, name: &str) -> u64 {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("fetch bytes sent")).collect();
    assert!(!lines.is_empty(), "no fetch counters in the log:\n{log}");
    lines.iter().map(|line| field(line, name)).sum()
}

/// (zero-copy, copied, warmed) record bytes the broker sent, over all shards.
fn sent_counters(log: &str) -> (u64, u64, u64) {
    (
        counter_sum(log, "zero_copy_bytes"),
        counter_sum(log, "copied_bytes"),
        counter_sum(log, "warmed_bytes"),
    )
}

/// Drops a file's pages from the page cache (written back first, so they are clean).
fn evict(path: &std::path::Path) {
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// 1 GiB fetched in page-cache mode: every record byte the client received was sent by
/// sendfile (100% zero-copy), including a segment evicted from the page cache first,
/// which the warm-up thread read back in off the shard.
#[test]
fn fetching_a_gibibyte_is_all_zero_copy_in_page_cache_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = Broker::start(&data, &["--io", "buffered"]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("zc", 1, &[("segment.bytes", "268435456")]);
    let batches = 1030; // 1030 batches of 1024 x 1000-byte values: just over 1 GiB.
    let end = produce(&mut raw, "zc", batches);

    let first_segment = data.join("zc-0").join(format!("{:020}.log", 0));
    assert!(first_segment.exists(), "{}", first_segment.display());
    evict(&first_segment);

    let received = fetch_all(&mut raw, "zc", end, 8 << 20);
    assert!(received >= 1 << 30, "fetched {received} bytes");
    drop(raw);
    assert!(broker.stop().success());
    let (zero_copy, copied, warmed) = sent_counters(&broker.log());
    assert_eq!(copied, 0, "no record byte was copied");
    assert_eq!(zero_copy, received, "every record byte received was sent by sendfile");
    assert!(warmed > 0, "the evicted segment was read in by the warm-up thread");
}

/// Page-cache mode with a 16 MiB `log.page.cache.window.bytes`, appending through
/// io_uring (`log.buffered.write=io_uring`; every other test appends inline): the pages
/// further than the window behind the log's end are dropped from the page cache as the
/// log grows, and a fetch from the start reads them back from disk (off the shard, by the
/// warm-up thread), every record intact and still sent by sendfile.
#[test]
fn pages_behind_the_cache_window_are_dropped_and_fetched_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--io",
        "buffered",
        "--cores",
        "1",
        "--set",
        "log.buffered.write=io_uring",
        "--set",
        "log.writeback.bytes=1048576",
        "--set",
        "log.page.cache.window.bytes=16777216",
    ];
    let mut broker = Broker::start(&data, &args);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("window", 1, &[]);
    let batches = 64; // ~1 MiB each: the first ~47 MiB fall out of the window.
    let end = produce(&mut raw, "window", batches);
    let received = fetch_all(&mut raw, "window", end, 8 << 20);
    assert!(received >= batches * 1_000_000, "fetched {received} bytes");
    drop(raw);
    assert!(broker.stop().success());
    let log = broker.log();
    let line = log
        .lines()
        .find(|line| line.contains("page cache writeback"))
        .unwrap_or_else(|| panic!("no writeback counters in the log:\n{log}"));
    let dropped = field(line, "dropped_behind_bytes");
    // Dropped asynchronously: the last hints may still be with the helper at stop.
    assert!((40 << 20..=48 << 20).contains(&dropped), "dropped {dropped} bytes: {line}");
    // A hint per MiB or more appended: every other ~1 MB batch.
    assert!(field(line, "started") >= 30, "writeback started per MiB: {line}");
    let (zero_copy, copied, warmed) = sent_counters(&log);
    assert_eq!(copied, 0, "no record byte was copied");
    assert_eq!(zero_copy, received, "every record byte received was sent by sendfile");
    assert!(warmed > 0, "pages dropped behind the window were read back in off the shard");
}

/// Direct mode serves tail fetches from its cache of recent batches (64 MiB per shard)
/// and older ones with a DMA read, which is their one copy; nothing is zero-copy. The
/// content is the same either way.
#[test]
fn direct_mode_fetch_serves_the_tail_from_memory_and_the_rest_by_dma() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("data"), &["--io", "direct"]);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("dm", 1, &[]);
    let end = produce(&mut raw, "dm", 80); // 84 MB: the oldest batches leave the cache.
    let received = fetch_all(&mut raw, "dm", end, 3 << 20);
    drop(raw);
    assert!(broker.stop().success());
    let log = broker.log();
    let (zero_copy, copied, _) = sent_counters(&log);
    let cached = counter_sum(&log, "cached_bytes");
    assert_eq!(zero_copy, 0);
    assert!(copied > 0, "the evicted head was read by DMA");
    assert!(cached > 0, "the tail came from the cache");
    assert_eq!(copied + cached, received);
}

/// The broker's request latency report (logged when a shard stops): one line per API,
/// counting the requests it served. Each request's total time covers its local time, so
/// every quantile of the totals is at least the same quantile of the local times. Run in
/// page-cache mode with early writeback every 64 KiB, so that path runs under a real
/// produce load; the records still read back intact.
#[test]
fn request_latency_is_reported_per_api() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--io", "buffered", "--cores", "1", "--set", "log.writeback.bytes=65536"];
    let mut broker = Broker::start(&dir.path().join("data"), &args);
    let mut raw = Raw::connect(&broker.address());
    raw.create_topic("rl", 1, &[]);
    let batches = 20;
    let end = produce(&mut raw, "rl", batches);
    let received = fetch_all(&mut raw, "rl", end, 3 << 20);
    assert!(received >= batches * (RECORDS_PER_BATCH * VALUE_BYTES) as u64);
    drop(raw);
    assert!(broker.stop().success());
    let log = broker.log();
    let line = |api: &str| -> String {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("request latency") && l.contains(&format!(" api={api} ")))
            .collect();
        assert_eq!(lines.len(), 1, "one {api} report (one shard, one window):\n{log}");
        lines[0].to_string()
    };
    let produce_line = line("Produce");
    assert_eq!(field(&produce_line, "requests"), batches, "{produce_line}");
    let fetches = line("Fetch");
    assert!(field(&fetches, "requests") >= 1, "{fetches}");
    for report in [&produce_line, &fetches] {
        let total = field(report, "total_p99_us");
        let local = field(report, "local_p99_us");
        assert!(total * 101 >= local * 100, "total p99 {total} < local p99 {local}: {report}");
        assert!(field(report, "total_max_us") >= field(report, "total_p50_us"), "{report}");
        // The slowest request's phases add up to the window's longest total (the
        // histogram's max is within 1%; each phase is rounded down to the microsecond).
        let at = report.find(" slowest_phases_us=").expect("slowest_phases_us");
        let phases: Vec<u64> = report[at + " slowest_phases_us=".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .split('/')
            .map(|us| us.parse().unwrap())
            .collect();
        assert_eq!(phases.len(), 5, "{report}");
        let (sum, max) = (phases.iter().sum::<u64>(), field(report, "total_max_us"));
        assert!(sum.abs_diff(max) <= max / 50 + 6, "phases {phases:?} vs max {max}: {report}");
        let window_ms = field(report, "window_ms");
        assert!(field(report, "slowest_at_ms") <= window_ms, "{report}");
    }
}
