//! Tests of the partition log: behaviour (here), crash tests that damage files on disk
//! (`crash`), a model test against a `BTreeMap` reference (`model`), and byte
//! compatibility with Kafka's format checked by a parser written from the format
//! description, not from our encoder (`compat`).
#![allow(clippy::unwrap_used)]

mod compat;
mod crash;
mod model;

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
