//! Tests of the partition log: behaviour, a model test against a `BTreeMap` reference,
//! crash tests that damage files on disk, and byte compatibility with Kafka's format
//! checked by a parser written from the format description, not from our encoder.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use proptest::prelude::*;

use super::*;
use crate::batch::{encode_batch, BatchIter, EncodeOptions, Record};
use crate::clock::ManualClock;
use crate::test_support::run;

const T0: i64 = 1_700_000_000_000;

fn batch_bytes(records: usize, value_bytes: usize, timestamp: i64, seed: u8) -> Vec<u8> {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            key: Some(vec![seed, i as u8]),
            value: Some(vec![seed.wrapping_add(i as u8); value_bytes]),
            timestamp: timestamp + i as i64,
        })
        .collect();
    encode_batch(&records, EncodeOptions::default())
}

fn options(mode: IoMode) -> LogOptions {
    LogOptions { io_mode: mode, ..LogOptions::default() }
}

async fn open(dir: &Path, options: LogOptions, hints: OpenHints, clock: &ManualClock) -> Log {
    Log::open(dir, options, hints, Rc::new(clock.clone())).await.unwrap()
}

/// Reads the whole log through `Log::read`, one call per segment step, and returns every
/// batch with its base offset. Asserts the range structure on the way.
async fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let slice = log.read(offset, 1 << 30, end, true).await.unwrap();
        assert!(!slice.is_empty(), "no bytes at {offset} below the end {end}");
        let bytes = slice.read().await.unwrap();
        let mut last = offset - 1;
        for batch in BatchIter::new(&bytes) {
            let batch = batch.unwrap();
            batch.validate(usize::MAX).unwrap();
            out.push((batch.base_offset(), batch.bytes().to_vec()));
            last = batch.last_offset();
        }
        assert!(last >= offset, "read at {offset} made no progress");
        offset = last + 1;
    }
    out
}

fn assert_dense(batches: &[(i64, Vec<u8>)], start: i64, end: i64) {
    let mut next = start;
    for (base, bytes) in batches {
        let (batch, _) = Batch::parse(bytes).unwrap();
        assert_eq!(*base, next, "offsets are not dense");
        next = batch.last_offset() + 1;
    }
    assert_eq!(next, end);
}

async fn append_fresh(log: &Log, bytes: &[u8]) -> AppendInfo {
    let mut owned = bytes.to_vec();
    log.append(&mut owned).await.unwrap()
}

#[test]
fn append_assigns_dense_offsets_and_reads_back() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let log = open(dir.path(), options(mode), OpenHints::default(), &clock).await;
            assert_eq!(log.log_end_offset(), 0);
            let first = append_fresh(&log, &batch_bytes(3, 10, T0, 1)).await;
            assert_eq!((first.base_offset, first.last_offset, first.records), (0, 2, 3));
            // Two batches in one append.
            let mut two = batch_bytes(2, 5, T0 + 10, 2);
            two.extend(batch_bytes(4, 5, T0 + 20, 3));
            let info = log.append(&mut two).await.unwrap();
            assert_eq!((info.base_offset, info.last_offset), (3, 8));
            assert_eq!(info.max_timestamp, T0 + 23);
            assert_eq!(log.log_end_offset(), 9);
            let batches = read_all(&log).await;
            assert_eq!(batches.iter().map(|(b, _)| *b).collect::<Vec<_>>(), vec![0, 3, 5]);
            assert_dense(&batches, 0, 9);
            // Reading from inside a batch starts at that batch.
            let slice = log.read(4, 1 << 20, 9, true).await.unwrap();
            assert_eq!(slice.first_batch_offset, 3);
            // At the end: empty; past the end: out of range.
            assert!(log.read(9, 1 << 20, 9, true).await.unwrap().is_empty());
            assert!(matches!(
                log.read(10, 1 << 20, 10, true).await,
                Err(LogError::OffsetOutOfRange { offset: 10, .. })
            ));
            log.close().await.unwrap();
        });
    }
}

#[test]
fn invalid_batches_are_rejected_before_anything_is_written() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        opts.max_message_bytes = 500;
        let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
        let mut good_then_bad = batch_bytes(1, 10, T0, 1);
        let mut bad = batch_bytes(1, 10, T0, 2);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        good_then_bad.extend(bad);
        assert!(matches!(
            log.append(&mut good_then_bad).await,
            Err(LogError::Batch(BatchError::CorruptCrc { .. }))
        ));
        let mut big = batch_bytes(1, 600, T0, 3);
        assert!(matches!(
            log.append(&mut big).await,
            Err(LogError::Batch(BatchError::TooLarge { .. }))
        ));
        let mut torn = batch_bytes(1, 10, T0, 4);
        torn.truncate(40);
        assert!(log.append(&mut torn).await.is_err());
        assert!(matches!(log.append(&mut []).await, Err(LogError::EmptyAppend)));
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(log.size_bytes(), 0);
    });
}

/// With a page-cache window, a roll hands the old segment's cached tail to the new active
/// segment, which drops it as it grows past the window (the window is the log's, so a
/// log of segments no longer than the window still keeps only a window cached). A
/// truncation back into the old segment gives the tail back to it; retention deleting
/// the old segment makes the active one forget it (and close its descriptor).
#[test]
fn a_roll_hands_the_cached_tail_to_the_next_segment() {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::writeback::DROPPED_BEHIND_BYTES;
    let _alone =
        crate::writeback::DROP_BEHIND_TESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        let one = batch_bytes(4, 1000, T0, 1);
        let len = one.len() as u64;
        opts.segment_bytes = len * 20;
        opts.cache_window_bytes = len * 20;
        opts.writeback_bytes = len * 2;
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        let tails = |log: &Log| log.state.borrow().active().log.cached_predecessors();
        let cached = |log: &Log| tails(log).iter().map(|(from, end)| end - from).sum::<u64>();
        let dropped_before = DROPPED_BEHIND_BYTES.load(Relaxed);
        for _ in 0..20 {
            append_fresh(&log, &one).await;
        }
        assert_eq!(log.segment_count(), 1);
        assert_eq!(tails(&log), []);
        // The 21st batch rolls: nothing of the first segment was out of the window yet.
        append_fresh(&log, &one).await;
        assert_eq!(log.segment_count(), 2);
        assert_eq!(tails(&log), [(0, len * 20)]);
        // Truncating back into the first segment deletes the second: the first one is
        // active again and its pages are its own again (nothing was dropped yet).
        assert_eq!(log.truncate_to(76).await.unwrap(), 76);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(tails(&log), []);
        append_fresh(&log, &one).await;
        append_fresh(&log, &one).await; // rolls again
        assert_eq!(log.segment_count(), 2);
        assert_eq!(tails(&log), [(0, len * 20)]);
        let mut left = len * 20;
        for i in 1..20 {
            append_fresh(&log, &one).await;
            assert!(cached(&log) <= left, "batch {i}: the tail only shrinks");
            left = cached(&log);
            // What the window still covers of the old segment, plus a step and a page.
            assert!(left <= len * (20 - i - 1) + len * 2 + 4096, "batch {i}: {left} left");
        }
        assert_eq!(tails(&log), [], "a window later, all of it was handed over");
        // The helper drops the whole first segment, once (nothing of the second one is
        // out of the window yet).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while DROPPED_BEHIND_BYTES.load(Relaxed) < dropped_before + len * 20 {
            assert!(std::time::Instant::now() < deadline, "the helper never dropped them");
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(DROPPED_BEHIND_BYTES.load(Relaxed), dropped_before + len * 20);

        // Retention deletes the segment the active one keeps track of: forgotten.
        append_fresh(&log, &one).await; // rolls: the second segment's tail is tracked
        assert_eq!(tails(&log).len(), 1);
        log.set_options(LogOptions { retention_bytes: len as i64, ..opts }).unwrap();
        assert_eq!(log.apply_retention().await.unwrap().len(), 2);
        assert_eq!(tails(&log), []);
        log.close().await.unwrap();
    });
}

#[test]
fn rolls_by_size_and_time_with_kafka_file_names() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        let one = batch_bytes(1, 100, T0, 1);
        opts.segment_bytes = (one.len() * 3) as u64;
        opts.segment_ms = 60_000;
        let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
        for _ in 0..7 {
            append_fresh(&log, &one).await;
        }
        assert_eq!(log.segment_base_offsets(), vec![0, 3, 6]);
        clock.advance_ms(59_999);
        append_fresh(&log, &one).await;
        assert_eq!(log.segment_count(), 3);
        clock.advance_ms(1);
        append_fresh(&log, &one).await;
        assert_eq!(log.segment_base_offsets(), vec![0, 3, 6, 8]);
        log.close().await.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.contains(&"00000000000000000000.log".to_string()));
        assert!(names.contains(&"00000000000000000003.index".to_string()));
        assert!(names.contains(&"00000000000000000008.timeindex".to_string()));
    });
}

#[test]
fn read_respects_max_bytes_high_watermark_and_min_one_batch() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let log = open(dir.path(), options(IoMode::Buffered), OpenHints::default(), &clock).await;
        let one = batch_bytes(2, 200, T0, 1);
        let size = one.len() as u64;
        for _ in 0..10 {
            append_fresh(&log, &one).await;
        }
        // Up to a high watermark of 6: batches [0,2) [2,4) [4,6) only.
        let slice = log.read(0, 1 << 20, 6, true).await.unwrap();
        assert_eq!(slice.bytes, 3 * size);
        // max_bytes cuts inside a batch (clients drop the partial batch).
        let slice = log.read(0, size + 10, 20, true).await.unwrap();
        assert_eq!(slice.bytes, size + 10);
        // A first batch larger than max_bytes comes whole with min_one_batch (KIP-74).
        let slice = log.read(2, 5, 20, true).await.unwrap();
        assert_eq!((slice.bytes, slice.first_batch_offset), (size, 2));
        let slice = log.read(2, 5, 20, false).await.unwrap();
        assert_eq!(slice.bytes, 5);
        // At the high watermark: nothing.
        assert!(log.read(6, 1 << 20, 6, true).await.unwrap().is_empty());
    });
}

#[test]
fn reads_cross_segment_boundaries_and_lookup_uses_the_index() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let mut opts = options(mode);
            opts.segment_bytes = 64 << 10;
            opts.index_interval_bytes = 1024;
            let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
            let mut expected = BTreeMap::new();
            for i in 0..400 {
                let info = append_fresh(&log, &batch_bytes(1 + i % 3, 300, T0 + i as i64, 7)).await;
                expected.insert(info.base_offset, info.last_offset);
            }
            assert!(log.segment_count() > 3);
            for offset in 0..log.log_end_offset() {
                let slice = log.read(offset, 1, log.log_end_offset(), true).await.unwrap();
                let (base, last) = expected.range(..=offset).next_back().unwrap();
                assert_eq!(slice.first_batch_offset, *base, "offset {offset}");
                assert!(offset <= *last);
            }
            let batches = read_all(&log).await;
            assert_dense(&batches, 0, log.log_end_offset());
        });
    }
}

#[test]
fn offset_for_timestamp_finds_first_record_at_or_after_target() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        opts.segment_bytes = 8 << 10;
        opts.index_interval_bytes = 512;
        let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
        // Batch i holds 3 records with timestamps T0 + 10*i + {0,1,2}.
        for i in 0..100i64 {
            append_fresh(&log, &batch_bytes(3, 100, T0 + 10 * i, 1)).await;
        }
        assert!(log.segment_count() > 2);
        let at = |t| {
            let log = &log;
            async move { log.offset_for_timestamp(t).await.unwrap() }
        };
        assert_eq!(at(0).await, Some(TimestampOffset { timestamp: T0, offset: 0 }));
        assert_eq!(at(T0 + 1).await, Some(TimestampOffset { timestamp: T0 + 1, offset: 1 }));
        // T0 + 503 falls between batch 50 (..502) and batch 51 (510..): first of batch 51.
        assert_eq!(at(T0 + 503).await, Some(TimestampOffset { timestamp: T0 + 510, offset: 153 }));
        assert_eq!(at(T0 + 992).await, Some(TimestampOffset { timestamp: T0 + 992, offset: 299 }));
        assert_eq!(at(T0 + 993).await, None);
        assert_eq!(
            log.max_timestamp_and_offset(),
            Some(TimestampOffset { timestamp: T0 + 992, offset: 299 })
        );
    });
}

#[test]
fn truncate_to_removes_the_tail_and_appends_continue() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let mut opts = options(mode);
            opts.segment_bytes = 4096;
            opts.index_interval_bytes = 256;
            let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
            for i in 0..60 {
                append_fresh(&log, &batch_bytes(2, 100, T0 + i, 3)).await;
            }
            let segments_before = log.segment_count();
            assert_eq!(log.truncate_to(51).await.unwrap(), 50, "cut at the holding batch");
            assert_eq!(log.log_end_offset(), 50);
            assert!(log.segment_count() < segments_before);
            let info = append_fresh(&log, &batch_bytes(1, 10, T0 + 1000, 9)).await;
            assert_eq!(info.base_offset, 50);
            assert_dense(&read_all(&log).await, 0, 51);
            assert_eq!(log.truncate_to(0).await.unwrap(), 0);
            assert_eq!(log.segment_base_offsets(), vec![0]);
            append_fresh(&log, &batch_bytes(1, 10, T0, 1)).await;
            log.close().await.unwrap();
            drop(log);
            let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
            assert_eq!(log.log_end_offset(), 1);
        });
    }
}

#[test]
fn retention_by_time_size_and_log_start_offset() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        opts.segment_bytes = 4096;
        opts.retention_ms = -1;
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        for i in 0..40i64 {
            // Timestamps one minute apart.
            append_fresh(&log, &batch_bytes(1, 500, T0 + i * 60_000, 1)).await;
        }
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 5, "{bases:?}");
        assert!(log.apply_retention().await.unwrap().is_empty(), "nothing configured");

        // DeleteRecords: the log start moves at once, whole segments below go on retention.
        assert_eq!(log.advance_log_start_offset(bases[2] + 1).unwrap(), bases[2] + 1);
        assert!(matches!(
            log.read(bases[2], 100, 40, true).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.apply_retention().await.unwrap(), vec![bases[0], bases[1]]);
        assert_eq!(log.log_start_offset(), bases[2] + 1);
        for base in &bases[..2] {
            assert!(!dir.path().join(segment_file_name(*base, "log")).exists());
        }

        // retention.ms against each segment's newest record.
        clock.set_wall_ms(T0 + 39 * 60_000);
        let mut by_time = opts.clone();
        by_time.retention_ms = ((39 - bases[3]) * 60_000) as i64;
        log.set_options(by_time).unwrap();
        let deleted = log.apply_retention().await.unwrap();
        assert_eq!(deleted, vec![bases[2]], "only the segment wholly older than the limit");

        // retention.bytes: keep deleting while the rest stays at or above the limit.
        let mut by_size = opts;
        by_size.retention_bytes = 0;
        log.set_options(by_size).unwrap();
        log.apply_retention().await.unwrap();
        assert_eq!(log.segment_count(), 1, "the active segment always stays");
        assert_eq!(log.log_start_offset(), *bases.last().unwrap());
        let batches = read_all(&log).await;
        assert_dense(&batches, *bases.last().unwrap(), 40);
    });
}

#[test]
fn clean_reopen_and_crash_reopen_keep_every_batch() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let mut opts = options(mode);
            opts.segment_bytes = 16 << 10;
            let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
            for i in 0..50 {
                append_fresh(&log, &batch_bytes(1 + i % 4, 333, T0 + i as i64, i as u8)).await;
            }
            let before = read_all(&log).await;
            log.close().await.unwrap();
            assert_eq!(log.recovery_point(), log.log_end_offset());
            let hints = OpenHints {
                recovery_point: log.recovery_point(),
                log_start_offset: 0,
                machine_restarted: false,
            };
            drop(log);
            let log = open(dir.path(), opts.clone(), hints, &clock).await;
            assert_eq!(read_all(&log).await, before);
            // Crash: more appends, no flush, no close; reopen from the old recovery point.
            for i in 0..20 {
                append_fresh(&log, &batch_bytes(2, 1000, T0 + 100 + i, 42)).await;
            }
            let before = read_all(&log).await;
            drop(log);
            // A crash: writes the kernel accepted still land.
            crate::io::writes_landed().await;
            let log = open(dir.path(), opts, hints, &clock).await;
            assert_eq!(read_all(&log).await, before);
            assert_eq!(log.recovery_point(), log.log_end_offset());
        });
    }
}

/// A crash before a rolled direct-mode segment was sealed leaves the space allocated
/// ahead of its writes behind its last batch: megabytes of zeros. Recovery takes them for
/// padding and trims them, keeps every segment after it, and does not trust the segment's
/// size even when the recovery point is past it. Opened in buffered mode, the same.
#[test]
fn unsealed_direct_segment_with_space_allocated_ahead_keeps_later_segments() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Direct);
        opts.segment_bytes = 16 << 10;
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        for i in 0..40 {
            append_fresh(&log, &batch_bytes(2, 1000, T0 + i, i as u8)).await;
        }
        let before = read_all(&log).await;
        let bases = log.segment_base_offsets();
        assert!(bases.len() > 3, "the log rolled: {bases:?}");
        log.close().await.unwrap();
        let end = log.log_end_offset();
        drop(log);
        let first = dir.path().join(segment_file_name(bases[0], "log"));
        let logical: u64 = before
            .iter()
            .filter(|(base, _)| *base < bases[1])
            .map(|(_, bytes)| bytes.len() as u64)
            .sum();
        assert_eq!(std::fs::metadata(&first).unwrap().len(), logical, "sealed on close");
        for (mode, recovery_point) in [
            (IoMode::Direct, 0),
            (IoMode::Direct, bases[2]),
            (IoMode::Direct, end),
            (IoMode::Buffered, 0),
        ] {
            // As if the crash came before the seal of the first segment.
            let file = std::fs::OpenOptions::new().write(true).open(&first).unwrap();
            file.set_len(logical + (3 << 20)).unwrap();
            drop(file);
            let mut opts = opts.clone();
            opts.io_mode = mode;
            let hints = OpenHints { recovery_point, log_start_offset: 0, machine_restarted: false };
            let log = open(dir.path(), opts, hints, &clock).await;
            assert_eq!(read_all(&log).await, before, "{mode:?} from {recovery_point}");
            assert_eq!(log.segment_base_offsets(), bases);
            assert_eq!(std::fs::metadata(&first).unwrap().len(), logical, "zeros trimmed");
            log.close().await.unwrap();
        }
    });
}

#[test]
fn lost_index_files_are_rebuilt() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        opts.segment_bytes = 32 << 10;
        opts.index_interval_bytes = 1024;
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        for i in 0..100 {
            append_fresh(&log, &batch_bytes(1, 700, T0 + i, 5)).await;
        }
        log.close().await.unwrap();
        let hints = OpenHints {
            recovery_point: log.log_end_offset(),
            log_start_offset: 0,
            machine_restarted: false,
        };
        let before = read_all(&log).await;
        let first_index = dir.path().join(segment_file_name(0, "index"));
        let good_index = std::fs::read(&first_index).unwrap();
        assert!(!good_index.is_empty());
        drop(log);
        // One index deleted, one garbled: both segments are before the recovery point.
        std::fs::remove_file(&first_index).unwrap();
        let second = log_second_base(dir.path());
        std::fs::write(dir.path().join(segment_file_name(second, "index")), [1u8; 13]).unwrap();
        let log = open(dir.path(), opts, hints, &clock).await;
        assert_eq!(read_all(&log).await, before);
        log.close().await.unwrap();
        assert_eq!(std::fs::read(&first_index).unwrap(), good_index, "rebuilt identically");
    });
}

fn log_second_base(dir: &Path) -> i64 {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log").map(|stem| stem.parse().unwrap())
        })
        .collect();
    bases.sort();
    bases[1]
}

#[test]
fn failed_fsync_keeps_the_recovery_point_and_torn_append_is_undone() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let faults = std::sync::Arc::new(crate::io::FaultPlan::default());
            let mut opts = options(mode);
            opts.faults = Some(faults.clone());
            let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
            append_fresh(&log, &batch_bytes(1, 10, T0, 1)).await;
            log.flush().await.unwrap();
            assert_eq!(log.recovery_point(), 1);
            append_fresh(&log, &batch_bytes(1, 10, T0, 2)).await;
            faults.fail_next_sync();
            assert!(log.flush().await.is_err());
            assert_eq!(log.recovery_point(), 1, "a failed fsync does not move the recovery point");
            log.flush().await.unwrap();
            assert_eq!(log.recovery_point(), 2);
            faults.tear_next_append_after(20);
            let mut torn = batch_bytes(3, 50, T0, 3);
            assert!(log.append(&mut torn).await.is_err());
            assert_eq!(log.log_end_offset(), 2);
            let info = append_fresh(&log, &batch_bytes(1, 10, T0, 4)).await;
            assert_eq!(info.base_offset, 2);
            assert_dense(&read_all(&log).await, 0, 3);
        });
    }
}

/// A direct-mode write that fails after the append queued it: the append is not
/// acknowledged, the log goes offline (it already counted the bytes), and recovery cuts
/// the log where the lost bytes begin.
#[test]
fn failed_direct_write_takes_the_log_offline() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let faults = std::sync::Arc::new(crate::io::FaultPlan::default());
        let mut opts = options(IoMode::Direct);
        opts.faults = Some(faults.clone());
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        append_fresh(&log, &batch_bytes(1, 10, T0, 1)).await;
        log.flush().await.unwrap();
        faults.fail_next_write();
        let mut lost = batch_bytes(2, 10, T0, 2);
        assert!(log.append(&mut lost).await.is_err());
        assert!(log.offline_reason().is_some());
        let mut next = batch_bytes(1, 10, T0, 3);
        assert!(log.append(&mut next).await.is_err());
        assert!(log.flush().await.is_err());
        assert_eq!(log.recovery_point(), 1);
        drop(log);
        crate::io::writes_landed().await;
        opts.faults = None;
        let hints = OpenHints { recovery_point: 1, log_start_offset: 0, machine_restarted: false };
        let log = open(dir.path(), opts, hints, &clock).await;
        assert_eq!(log.log_end_offset(), 1);
        assert_dense(&read_all(&log).await, 0, 1);
    });
}

/// Appends from several tasks: each is acknowledged only once its write landed, and the
/// next one is copied while the previous one is in flight.
#[test]
fn concurrent_direct_appends_are_acknowledged_once_on_disk() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let log = std::rc::Rc::new(
            open(dir.path(), options(IoMode::Direct), OpenHints::default(), &clock).await,
        );
        let mut tasks = Vec::new();
        for task in 0..4u8 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..20u8 {
                    let mut bytes = batch_bytes(3, 3000, T0, task * 20 + i);
                    log.append(&mut bytes).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        assert_eq!(log.log_end_offset(), 240);
        assert_dense(&read_all(&log).await, 0, 240);
        let size = log.size_bytes();
        // Acknowledged means on disk: a crash now loses nothing.
        let on_disk = std::fs::metadata(dir.path().join(segment_file_name(0, "log"))).unwrap();
        assert!(on_disk.len() >= size);
    });
}

#[test]
fn flush_messages_and_flush_ms_policies() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(IoMode::Buffered);
        opts.flush_messages = 5;
        opts.flush_ms = 1000;
        let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
        append_fresh(&log, &batch_bytes(3, 10, T0, 1)).await;
        assert_eq!(log.recovery_point(), 0);
        append_fresh(&log, &batch_bytes(2, 10, T0, 1)).await;
        assert_eq!(log.recovery_point(), 5, "flush.messages reached");
        append_fresh(&log, &batch_bytes(1, 10, T0, 1)).await;
        assert!(!log.maybe_flush().await.unwrap());
        clock.advance_ms(999);
        assert!(!log.maybe_flush().await.unwrap());
        clock.advance_ms(1);
        assert!(log.maybe_flush().await.unwrap());
        assert_eq!(log.recovery_point(), 6);
    });
}

/// Many partitions' logs on one shard with a small descriptor budget: appends (with
/// rolls) and reads across all of them in turns, a close, a reopen and more of the same.
/// Every batch reads back, and the process never holds more descriptors into the data
/// dir than the budget (index files hold none; idle segment files are closed and
/// reopened on demand).
fn many_logs_share_a_small_descriptor_budget(mode: IoMode) {
    const LOGS: usize = 120;
    const BUDGET: usize = 24;
    run(async move {
        crate::fdcache::set_budget(BUDGET);
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(mode);
        opts.segment_bytes = 8 << 10;
        let dirs: Vec<_> = (0..LOGS).map(|i| dir.path().join(format!("topic-{i}"))).collect();
        let mut logs = Vec::new();
        for path in &dirs {
            logs.push(open(path, opts.clone(), OpenHints::default(), &clock).await);
        }
        let fds = crate::io::tests::open_fds_under(dir.path()).await;
        assert!(fds <= BUDGET, "{fds} descriptors open after opening {LOGS} logs");
        for round in 0..6u8 {
            for (i, log) in logs.iter().enumerate() {
                append_fresh(log, &batch_bytes(1 + i % 3, 1500, T0, round ^ i as u8)).await;
            }
            // Reads across all of them, in another order than the appends.
            for log in logs.iter().rev().step_by(3) {
                let end = log.log_end_offset();
                assert_dense(&read_all(log).await, 0, end);
            }
            let fds = crate::io::tests::open_fds_under(dir.path()).await;
            assert!(fds <= BUDGET, "{fds} descriptors open in round {round}");
        }
        assert!(logs.iter().all(|log| log.segment_count() > 1), "segments rolled");
        let mut hints = Vec::new();
        let mut before = Vec::new();
        for log in &logs {
            before.push(read_all(log).await);
            log.close().await.unwrap();
            hints.push(OpenHints {
                recovery_point: log.recovery_point(),
                log_start_offset: 0,
                machine_restarted: false,
            });
        }
        drop(logs);
        assert_eq!(crate::io::tests::open_fds_under(dir.path()).await, 0);
        let mut logs = Vec::new();
        for (path, hints) in dirs.iter().zip(&hints) {
            logs.push(open(path, opts.clone(), *hints, &clock).await);
        }
        for (i, log) in logs.iter().enumerate() {
            assert_eq!(read_all(log).await, before[i], "log {i} after the reopen");
            append_fresh(log, &batch_bytes(2, 100, T0, 7)).await;
        }
        let fds = crate::io::tests::open_fds_under(dir.path()).await;
        assert!(fds <= BUDGET, "{fds} descriptors open after the reopen");
        let stats = crate::fdcache::stats();
        assert!(stats.evictions > LOGS as u64, "{stats:?}");
        // Over only while files were in use (a rolled segment's seal runs detached).
        assert!(stats.peak <= BUDGET + 4, "{stats:?}");
    });
}

#[test]
fn many_buffered_logs_share_a_small_descriptor_budget() {
    many_logs_share_a_small_descriptor_budget(IoMode::Buffered);
}

#[test]
fn many_direct_logs_share_a_small_descriptor_budget() {
    many_logs_share_a_small_descriptor_budget(IoMode::Direct);
}

// ---------------------------------------------------------------------------------------
// Crash tests: damage the files on disk, reopen, and check what recovery kept.
// ---------------------------------------------------------------------------------------

/// Writes a log of several segments, damages it at `damage_at` (a fraction of the total
/// bytes: a cut of the file there, or a flipped byte), reopens with recovery from the
/// start, and checks what recovery kept.
///
/// After a restart of the machine (`machine_restarted`) anything unflushed may be lost in
/// any order, so every batch wholly before the damage is kept and nothing from the damaged
/// batch on. After a crash of the process alone, only a torn tail is cut: damage with valid
/// batches after it (a later segment, or the batch right after a damaged batch whose length
/// field survived) takes the log offline and leaves its files as they are.
fn crash_case(mode: IoMode, damage_at: f64, flip: Option<u8>, machine_restarted: bool) {
    run(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(mode);
        opts.segment_bytes = 12 << 10;
        opts.index_interval_bytes = 700;
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        for i in 0..60u64 {
            let records = 1 + (i % 5) as usize;
            append_fresh(&log, &batch_bytes(records, 50 + (i as usize * 37) % 900, T0, i as u8))
                .await;
        }
        let before = read_all(&log).await;
        let segments: Vec<i64> = log.segment_base_offsets();
        drop(log); // a crash: no flush, no close
        crate::io::writes_landed().await; // writes the kernel accepted still land

        // Lay the segments end to end and find the damaged file and position.
        let mut files = Vec::new();
        for base in &segments {
            let path = dir.path().join(segment_file_name(*base, "log"));
            // Direct mode leaves zero padding after the logical end of unsealed files.
            let logical: u64 = before
                .iter()
                .filter(|(b, _)| {
                    *b >= *base && segments.iter().find(|s| **s > *base).is_none_or(|n| *b < *n)
                })
                .map(|(_, bytes)| bytes.len() as u64)
                .sum();
            files.push((*base, path, logical));
        }
        let total: u64 = files.iter().map(|(_, _, len)| len).sum();
        let mut target = ((total as f64) * damage_at) as u64;
        let mut damaged = None;
        for (base, path, len) in &files {
            if target < *len {
                damaged = Some((*base, path.clone(), target));
                break;
            }
            target -= len;
        }
        let (damaged_base, path, position) = damaged.unwrap();
        let mut content = std::fs::read(&path).unwrap();
        match flip {
            Some(mask) => content[position as usize] ^= mask.max(1),
            None => content.truncate(position as usize),
        }
        std::fs::write(&path, &content).unwrap();
        let last_segment = damaged_base == *segments.last().unwrap();

        // What must survive a cut: batches wholly before the damage. A flip inside a
        // batch's leader epoch (outside the CRC, by Kafka's design) is undetectable: that
        // batch survives changed, and so does everything after it.
        let mut expected = Vec::new();
        let mut epoch_flipped = false;
        // Whether valid batches follow the damaged one where recovery looks for them.
        let mut followed = false;
        let mut at = 0u64;
        for (index, (base, bytes)) in before.iter().enumerate() {
            let segment = *segments.iter().rev().find(|s| **s <= *base).unwrap();
            if segment != damaged_base || epoch_flipped {
                if segment < damaged_base || epoch_flipped {
                    expected.push((*base, bytes.clone()));
                    continue;
                }
                break;
            }
            let end = at + bytes.len() as u64;
            if end <= position {
                expected.push((*base, bytes.clone()));
            } else if flip.is_some() && (12..16).contains(&(position - at)) {
                let mut changed = bytes.clone();
                changed[(position - at) as usize] ^= flip.unwrap().max(1);
                expected.push((*base, changed));
                epoch_flipped = true;
            } else {
                let length_field = (8..12).contains(&(position - at));
                followed =
                    !last_segment || (flip.is_some() && !length_field && index + 1 < before.len());
                break;
            }
            at = end;
        }
        let hints = OpenHints { machine_restarted, ..OpenHints::default() };
        if followed && !machine_restarted {
            let opened = Log::open(dir.path(), opts, hints, Rc::new(clock.clone())).await;
            let Err(error) = opened else { panic!("damage followed by valid batches is cut") };
            assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
            let on_disk = std::fs::read(&path).unwrap();
            assert!(
                on_disk == content,
                "the damaged file is left as it is: {} bytes on disk, {} written",
                on_disk.len(),
                content.len()
            );
            for (base, path, _) in &files {
                assert!(path.exists() || *base < damaged_base, "segment {base} is kept");
            }
            return;
        }
        let log = open(dir.path(), opts, hints, &clock).await;
        let after = read_all(&log).await;
        assert_eq!(after.len(), expected.len(), "damage at {position} of {damaged_base}");
        assert_eq!(after, expected);
        let end = expected
            .last()
            .map_or(0, |(_, bytes)| Batch::parse(bytes).unwrap().0.last_offset() + 1);
        assert_eq!(log.log_end_offset(), end);
        assert_dense(&after, 0, end);
        // The log takes appends again right after the damage point.
        let info = append_fresh(&log, &batch_bytes(1, 10, T0, 99)).await;
        assert_eq!(info.base_offset, end);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn crash_cut_at_random_position(
        at in 0.0f64..1.0,
        direct in any::<bool>(),
        restarted in any::<bool>(),
    ) {
        crash_case(if direct { IoMode::Direct } else { IoMode::Buffered }, at, None, restarted);
    }

    #[test]
    fn crash_flip_random_byte(
        at in 0.0f64..1.0,
        mask in any::<u8>(),
        direct in any::<bool>(),
        restarted in any::<bool>(),
    ) {
        let mode = if direct { IoMode::Direct } else { IoMode::Buffered };
        crash_case(mode, at, Some(mask), restarted);
    }
}

// ---------------------------------------------------------------------------------------
// Model test: random operations against a BTreeMap<offset, batch> reference.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Append { batches: Vec<(usize, usize)> },
    Read { at: f64, max_bytes: u64 },
    Roll,
    Truncate { at: f64 },
    DeleteRecords { at: f64 },
    RetentionBytes { keep: u64 },
    Flush,
    CleanReopen,
    CrashReopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((1usize..6, 0usize..1500), 1..4)
            .prop_map(|batches| Op::Append { batches }),
        4 => (0.0f64..1.0, 1u64..20_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Roll),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => (0.0f64..1.0).prop_map(|at| Op::DeleteRecords { at }),
        1 => (0u64..40_000).prop_map(|keep| Op::RetentionBytes { keep }),
        1 => Just(Op::Flush),
        1 => Just(Op::CleanReopen),
        1 => Just(Op::CrashReopen),
    ]
}

struct Model {
    /// base offset -> batch bytes (with the assigned offset).
    batches: BTreeMap<i64, Vec<u8>>,
    log_start_offset: i64,
    log_end_offset: i64,
}

impl Model {
    fn pick(&self, at: f64) -> i64 {
        let span = (self.log_end_offset - self.log_start_offset) as f64;
        self.log_start_offset + (span * at) as i64
    }
}

async fn check_against_model(log: &Log, model: &Model) {
    assert_eq!(log.log_end_offset(), model.log_end_offset);
    assert_eq!(log.log_start_offset(), model.log_start_offset);
    let all = read_all(log).await;
    // The first segment may begin before the log start offset (DeleteRecords inside it).
    let expected: Vec<(i64, Vec<u8>)> = model
        .batches
        .iter()
        .filter(|(base, bytes)| {
            **base >= model.log_start_offset
                || Batch::parse(bytes).unwrap().0.last_offset() >= model.log_start_offset
        })
        .map(|(base, bytes)| (*base, bytes.clone()))
        .collect();
    assert_eq!(all, expected);
}

fn run_model(mode: IoMode, ops: Vec<Op>) {
    run(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(mode);
        opts.segment_bytes = 6 << 10;
        opts.index_interval_bytes = 1000;
        opts.retention_ms = -1;
        let mut log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        let mut model = Model { batches: BTreeMap::new(), log_start_offset: 0, log_end_offset: 0 };
        let mut seed = 0u8;
        for op in ops {
            match op {
                Op::Append { batches } => {
                    let mut bytes = Vec::new();
                    let mut parts = Vec::new();
                    for (records, value_bytes) in batches {
                        seed = seed.wrapping_add(1);
                        let one = batch_bytes(records, value_bytes, T0 + i64::from(seed), seed);
                        parts.push(one.clone());
                        bytes.extend(one);
                    }
                    let info = log.append(&mut bytes).await.unwrap();
                    assert_eq!(info.base_offset, model.log_end_offset);
                    let mut next = model.log_end_offset;
                    for mut part in parts {
                        crate::batch::set_base_offset(&mut part, next);
                        let last = Batch::parse(&part).unwrap().0.last_offset();
                        model.batches.insert(next, part);
                        next = last + 1;
                    }
                    assert_eq!(info.last_offset, next - 1);
                    model.log_end_offset = next;
                }
                Op::Read { at, max_bytes } => {
                    let offset = model.pick(at);
                    let slice =
                        log.read(offset, max_bytes, model.log_end_offset, true).await.unwrap();
                    if offset == model.log_end_offset {
                        assert!(slice.is_empty());
                        continue;
                    }
                    let (base, first) = model.batches.range(..=offset).next_back().unwrap();
                    assert_eq!(slice.first_batch_offset, *base);
                    let bytes = slice.read().await.unwrap();
                    assert!(bytes.len() as u64 >= (first.len() as u64).min(bytes.len() as u64));
                    // Whole batches match the model; a trailing partial one is a prefix.
                    let mut rest: &[u8] = &bytes;
                    for (_, expected) in model.batches.range(*base..) {
                        if rest.is_empty() {
                            break;
                        }
                        let n = expected.len().min(rest.len());
                        assert_eq!(&rest[..n], &expected[..n]);
                        rest = &rest[n..];
                    }
                    assert!(rest.is_empty());
                    assert!(bytes.len() as u64 <= max_bytes.max(first.len() as u64));
                }
                Op::Roll => {
                    log.roll_active().await.unwrap();
                }
                Op::Truncate { at } => {
                    let offset = model.pick(at);
                    if offset <= model.log_start_offset {
                        continue; // replication never truncates below the log start
                    }
                    let new_end = log.truncate_to(offset).await.unwrap();
                    let (base, _) = model.batches.range(..offset).next_back().unwrap();
                    let last = Batch::parse(&model.batches[base]).unwrap().0.last_offset();
                    let expected_end = if last >= offset { *base } else { offset };
                    assert_eq!(new_end, expected_end);
                    model.batches.split_off(&expected_end);
                    model.log_end_offset = expected_end;
                    // Cutting the batch that holds the log start pulls the start back to
                    // the new end (the log start never passes the log end).
                    model.log_start_offset = model.log_start_offset.min(expected_end);
                }
                Op::DeleteRecords { at } => {
                    let offset = model.pick(at);
                    log.advance_log_start_offset(offset).unwrap();
                    model.log_start_offset = model.log_start_offset.max(offset);
                    log.apply_retention().await.unwrap();
                }
                Op::RetentionBytes { keep } => {
                    let mut opts_now = log.options();
                    opts_now.retention_bytes = keep as i64;
                    log.set_options(opts_now).unwrap();
                    let size_before = log.size_bytes();
                    log.apply_retention().await.unwrap();
                    let mut opts_now = log.options();
                    opts_now.retention_bytes = -1;
                    log.set_options(opts_now).unwrap();
                    assert!(log.size_bytes() <= size_before);
                    model.log_start_offset = log.log_start_offset();
                    let first_segment = log.segment_base_offsets()[0];
                    model.batches = model.batches.split_off(&first_segment);
                }
                Op::Flush => {
                    log.flush().await.unwrap();
                    assert_eq!(log.recovery_point(), model.log_end_offset);
                }
                Op::CleanReopen | Op::CrashReopen => {
                    if matches!(op, Op::CleanReopen) {
                        log.close().await.unwrap();
                    }
                    let hints = OpenHints {
                        recovery_point: log.recovery_point(),
                        log_start_offset: log.log_start_offset(),
                        machine_restarted: false,
                    };
                    drop(log);
                    // A crash: writes the kernel accepted still land.
                    crate::io::writes_landed().await;
                    log = open(dir.path(), opts.clone(), hints, &clock).await;
                }
            }
            check_against_model(&log, &model).await;
        }
        log.close().await.unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn model_buffered(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_model(IoMode::Buffered, ops);
    }

    #[test]
    fn model_direct(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_model(IoMode::Direct, ops);
    }
}

// ---------------------------------------------------------------------------------------
// Byte compatibility: an independent reader of Kafka's on-disk format.
// ---------------------------------------------------------------------------------------

/// A reader of Kafka's log, index and time-index files written from the format
/// description (Kafka's "Message Format" documentation and `OffsetIndex`/`TimeIndex`
/// javadoc), sharing no code with `crate::batch` or `super::index`.
mod kafka_format {
    /// (offset, timestamp, key, value) of one record.
    pub type RecordFields = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

    pub struct RecordBatchHeader {
        pub base_offset: i64,
        pub batch_length: i32,
        pub magic: i8,
        pub crc: u32,
        pub last_offset_delta: i32,
        pub max_timestamp: i64,
        pub records: Vec<RecordFields>,
    }

    fn be<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes[at..at + N]);
        out
    }

    fn varint(bytes: &[u8], at: &mut usize) -> i64 {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
            shift += 7;
        }
        ((value >> 1) as i64) ^ -((value & 1) as i64)
    }

    fn crc32c(bytes: &[u8]) -> u32 {
        // Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }

    pub fn parse_log(file: &[u8]) -> Vec<(usize, RecordBatchHeader)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < file.len() {
            let base_offset = i64::from_be_bytes(be(file, at));
            let batch_length = i32::from_be_bytes(be(file, at + 8));
            let magic = file[at + 16] as i8;
            let crc = u32::from_be_bytes(be(file, at + 17));
            let end = at + 12 + batch_length as usize;
            assert_eq!(crc, crc32c(&file[at + 21..end]), "crc of batch at {at}");
            let last_offset_delta = i32::from_be_bytes(be(file, at + 23));
            let first_timestamp = i64::from_be_bytes(be(file, at + 27));
            let max_timestamp = i64::from_be_bytes(be(file, at + 35));
            let count = i32::from_be_bytes(be(file, at + 57));
            let mut cursor = at + 61;
            let mut records = Vec::new();
            for _ in 0..count {
                let length = varint(file, &mut cursor);
                let record_end = cursor + length as usize;
                cursor += 1; // attributes
                let timestamp_delta = varint(file, &mut cursor);
                let offset_delta = varint(file, &mut cursor);
                let field = |cursor: &mut usize| {
                    let len = varint(file, cursor);
                    (len >= 0).then(|| {
                        let bytes = file[*cursor..*cursor + len as usize].to_vec();
                        *cursor += len as usize;
                        bytes
                    })
                };
                let key = field(&mut cursor);
                let value = field(&mut cursor);
                records.push((
                    base_offset + offset_delta,
                    first_timestamp + timestamp_delta,
                    key,
                    value,
                ));
                cursor = record_end;
            }
            assert_eq!(cursor, end);
            out.push((
                at,
                RecordBatchHeader {
                    base_offset,
                    batch_length,
                    magic,
                    crc,
                    last_offset_delta,
                    max_timestamp,
                    records,
                },
            ));
            at = end;
        }
        out
    }

    /// `.index`: 8-byte entries (relative offset i32, position i32).
    pub fn parse_index(file: &[u8]) -> Vec<(i32, i32)> {
        assert_eq!(file.len() % 8, 0);
        file.chunks(8)
            .map(|c| (i32::from_be_bytes(be(c, 0)), i32::from_be_bytes(be(c, 4))))
            .collect()
    }

    /// `.timeindex`: 12-byte entries (timestamp i64, relative offset i32).
    pub fn parse_time_index(file: &[u8]) -> Vec<(i64, i32)> {
        assert_eq!(file.len() % 12, 0);
        file.chunks(12)
            .map(|c| (i64::from_be_bytes(be(c, 0)), i32::from_be_bytes(be(c, 8))))
            .collect()
    }
}

#[test]
fn files_are_readable_by_an_independent_kafka_format_parser() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let mut opts = options(mode);
            opts.segment_bytes = 6 << 10;
            opts.index_interval_bytes = 1024;
            let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
            let mut sent = Vec::new();
            for i in 0..80i64 {
                let value = format!("value-{i}").repeat(1 + (i as usize % 40));
                let records = vec![
                    Record {
                        key: Some(format!("key-{i}").into_bytes()),
                        value: Some(value.into_bytes()),
                        timestamp: T0 + i * 3,
                    },
                    Record { key: None, value: Some(vec![i as u8; 7]), timestamp: T0 + i * 3 + 1 },
                ];
                sent.push(records.clone());
                append_fresh(&log, &encode_batch(&records, EncodeOptions::default())).await;
            }
            log.close().await.unwrap();
            let bases = log.segment_base_offsets();
            assert!(bases.len() > 2);
            let mut seen = Vec::new();
            for (n, base) in bases.iter().enumerate() {
                let log_file =
                    std::fs::read(dir.path().join(segment_file_name(*base, "log"))).unwrap();
                let batches = kafka_format::parse_log(&log_file);
                let positions: BTreeMap<i64, usize> = batches
                    .iter()
                    .map(|(at, b)| (b.base_offset + i64::from(b.last_offset_delta), *at))
                    .collect();
                for (_, batch) in &batches {
                    assert_eq!(batch.magic, 2);
                    assert!(batch.batch_length > 49);
                    assert_ne!(batch.crc, 0);
                    assert_eq!(
                        batch.max_timestamp,
                        batch.records.iter().map(|r| r.1).max().unwrap()
                    );
                    seen.extend(batch.records.iter().cloned());
                }
                // Every index entry points at the batch whose last offset it names.
                let index = kafka_format::parse_index(
                    &std::fs::read(dir.path().join(segment_file_name(*base, "index"))).unwrap(),
                );
                for (relative, position) in &index {
                    assert_eq!(positions[&(base + i64::from(*relative))], *position as usize);
                }
                if log_file.len() > 2 * 1024 {
                    assert!(
                        !index.is_empty(),
                        "segment {base} of {} bytes has no index entry",
                        log_file.len()
                    );
                }
                let time_index = kafka_format::parse_time_index(
                    &std::fs::read(dir.path().join(segment_file_name(*base, "timeindex"))).unwrap(),
                );
                let max_in_segment = batches.iter().map(|(_, b)| b.max_timestamp).max().unwrap();
                if n + 1 < bases.len() {
                    assert_eq!(time_index.last().unwrap().0, max_in_segment, "closing entry");
                }
                for pair in time_index.windows(2) {
                    assert!(pair[0].0 < pair[1].0);
                }
            }
            let expected: Vec<_> = sent
                .iter()
                .flatten()
                .enumerate()
                .map(|(offset, r)| (offset as i64, r.timestamp, r.key.clone(), r.value.clone()))
                .collect();
            assert_eq!(seen, expected);
        });
    }
}
