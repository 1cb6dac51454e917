//! Tests of reading a log back at open: the whole-batch reader, and crash images (the
//! last segment cut at every byte of its last batches, and at random places across a log
//! of batches from 100 bytes to 1 MiB) that must open, end at the last whole batch, and
//! give back the producer state of exactly that log.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::rc::Rc;

use super::*;
use crate::batch::{encode_batch, Batch, EncodeOptions, Record};
use crate::clock::ManualClock;
use crate::io::IoMode;
use crate::log::{LogOptions, OpenHints};
use crate::producer::{encode_marker, Marker, ProducerView};
use crate::test_support::run;

fn batch(base_offset: i64, records: usize, value_bytes: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(vec![7; value_bytes]),
            timestamp: 1_000,
        })
        .collect();
    encode_batch(&records, EncodeOptions { base_offset, ..EncodeOptions::default() })
}

#[test]
fn a_chunk_is_trimmed_to_its_whole_batches() {
    let mut bytes = batch(10, 2, 100);
    let first = bytes.len();
    bytes.extend(batch(12, 3, 100));
    let both = bytes.len();
    assert_eq!(whole_batches(&bytes, 10).unwrap(), (both, 15));
    for cut in 0..both {
        let (whole, next) = whole_batches(&bytes[..cut], 10).unwrap();
        if cut < first {
            assert_eq!((whole, next), (0, 10), "cut at {cut}");
        } else {
            assert_eq!((whole, next), (first, 12), "cut at {cut}");
        }
    }
}

#[test]
fn damage_inside_a_chunk_is_an_error() {
    let mut bytes = batch(0, 1, 10);
    bytes[batch::OFFSET_LENGTH..batch::OFFSET_LENGTH + 4].copy_from_slice(&[0, 0, 0, 1]);
    assert!(matches!(whole_batches(&bytes, 0), Err(ReplayError::Batch { offset: 0, .. })));
}

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Who writes the batches of a crash image: plain producers, three idempotent ones and a
/// transactional one whose transactions commit or abort.
struct Writers {
    sequences: [i32; 3],
    txn_open: bool,
    txn_sequence: i32,
}

const IDEMPOTENT: [i64; 3] = [1000, 1001, 1002];
const TRANSACTIONAL: i64 = 2000;

impl Writers {
    fn new() -> Self {
        Writers { sequences: [0; 3], txn_open: false, txn_sequence: 0 }
    }

    /// The next batch (offsets unassigned) with `value_bytes` spread over its records.
    fn next(&mut self, rng: &mut Rng, value_bytes: usize) -> Vec<u8> {
        let records_count = 1 + rng.below(4) as usize;
        let records: Vec<Record> = (0..records_count)
            .map(|i| Record {
                key: Some(format!("key-{}", rng.below(1000)).into_bytes()),
                value: Some(vec![
                    (i as u8).wrapping_add(rng.below(256) as u8);
                    value_bytes / records_count
                ]),
                timestamp: 1_700_000_000_000 + rng.below(1000) as i64,
            })
            .collect();
        let count = i32::try_from(records_count).unwrap();
        match rng.below(10) {
            0..=1 => encode_batch(&records, EncodeOptions::default()),
            2..=6 => {
                let which = rng.below(3) as usize;
                let options = EncodeOptions {
                    producer_id: IDEMPOTENT[which],
                    producer_epoch: 0,
                    base_sequence: self.sequences[which],
                    ..EncodeOptions::default()
                };
                self.sequences[which] += count;
                encode_batch(&records, options)
            }
            _ if self.txn_open && rng.below(3) == 0 => {
                self.txn_open = false;
                let marker = Marker { committed: rng.below(2) == 0, coordinator_epoch: 3 };
                encode_marker(TRANSACTIONAL, 1, marker, 1_700_000_000_000)
            }
            _ => {
                self.txn_open = true;
                let options = EncodeOptions {
                    producer_id: TRANSACTIONAL,
                    producer_epoch: 1,
                    base_sequence: self.txn_sequence,
                    transactional: true,
                    ..EncodeOptions::default()
                };
                self.txn_sequence += count;
                encode_batch(&records, options)
            }
        }
    }
}

/// The producer state a log of exactly `batches` (with their offsets) must give back:
/// producers, open transactions, aborted transactions.
type Expected = (Vec<ProducerView>, Vec<(i64, i64)>, Vec<(i64, i64)>);

fn expected_state(batches: &[(i64, Vec<u8>)]) -> Expected {
    let mut producers = ProducerStates::default();
    let mut aborted = Vec::new();
    for (_, bytes) in batches {
        let (batch, _) = Batch::parse(bytes).unwrap();
        let Some(logged) = LoggedBatch::of(&batch) else { continue };
        if let Some(done) = producers.replay(&logged) {
            if let (false, Some(first_offset)) = (done.committed, done.first_offset) {
                aborted.push((done.producer_id, first_offset));
            }
        }
    }
    aborted.sort_by_key(|&(_, first)| first);
    (producers.views(), producers.open_transactions().collect(), aborted)
}

fn rebuilt_state(state: &ProducerState) -> Expected {
    (
        state.producers.views(),
        state.producers.open_transactions().collect(),
        state.aborted.collect(0, i64::MAX),
    )
}

fn log_options(mode: IoMode, segment_bytes: u64) -> LogOptions {
    LogOptions {
        io_mode: mode,
        segment_bytes,
        max_message_bytes: 2 << 20,
        index_interval_bytes: 4096,
        ..LogOptions::default()
    }
}

/// Every batch of the log with its base offset, read through `for_each_chunk`.
async fn batches_of(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for_each_chunk(log, log.log_start_offset(), log.log_end_offset(), |_, chunk| {
        for batch in BatchIter::new(chunk) {
            let batch = batch.map_err(|e| e.to_string())?;
            batch.validate(usize::MAX).map_err(|e| e.to_string())?;
            out.push((batch.base_offset(), batch.bytes().to_vec()));
        }
        Ok(())
    })
    .await
    .unwrap();
    out
}

/// Writes `count` batches of `value_bytes(rng)` each, drops the log as a crash does, and
/// returns what it holds.
async fn write_log(
    dir: &Path,
    options: &LogOptions,
    clock: &ManualClock,
    seed: u64,
    count: usize,
    value_bytes: impl Fn(&mut Rng) -> usize,
) -> Vec<(i64, Vec<u8>)> {
    let log = Log::open(dir, options.clone(), OpenHints::default(), Rc::new(clock.clone()))
        .await
        .unwrap();
    let mut rng = Rng(seed);
    let mut writers = Writers::new();
    for _ in 0..count {
        let size = value_bytes(&mut rng);
        let mut bytes = writers.next(&mut rng, size);
        log.append(&mut bytes).await.unwrap();
    }
    let batches = batches_of(&log).await;
    assert_eq!(batches.len(), count);
    drop(log); // a crash: no flush, no close
    crate::io::writes_landed().await;
    batches
}

/// Opens the crash image in `dir` as after a crash of the process, and checks it holds
/// exactly `expected` and gives back their producer state.
async fn check_open(
    dir: &Path,
    options: &LogOptions,
    clock: &ManualClock,
    expected: &[(i64, Vec<u8>)],
    what: &str,
) {
    let log =
        match Log::open(dir, options.clone(), OpenHints::default(), Rc::new(clock.clone())).await {
            Ok(log) => log,
            Err(error) => panic!("{what}: open failed: {error}"),
        };
    let end =
        expected.last().map_or(0, |(_, bytes)| Batch::parse(bytes).unwrap().0.last_offset() + 1);
    assert_eq!(log.log_end_offset(), end, "{what}: the log ends at the last whole batch");
    let state = rebuild_producer_state(&log).await.unwrap();
    assert!(rebuilt_state(&state) == expected_state(expected), "{what}: producer state");
    let read = batches_of(&log).await;
    assert_eq!(read.len(), expected.len(), "{what}: batches");
    assert!(read == expected, "{what}: batch bytes");
}

/// The segment files of `dir`, by base offset.
fn segment_logs(dir: &Path) -> Vec<(i64, std::path::PathBuf)> {
    let mut out: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().parse().unwrap(), p))
        .collect();
    out.sort();
    out
}

/// Cuts `file` at `position`. In direct mode the bytes after the cut read as zeros up to
/// the old length (what an unsealed O_DIRECT segment shows where writes had not landed);
/// in buffered mode the file ends there (a write cut short).
fn cut_file(path: &Path, position: u64, mode: IoMode) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let length = file.metadata().unwrap().len();
    file.set_len(position).unwrap();
    if mode == IoMode::Direct {
        file.set_len(length.max(position)).unwrap();
    }
}

/// Whether batch `index`, cut `kept` bytes in, is whole all the same: in direct mode the
/// cut-off bytes read back as zeros, and the bytes a batch ends with often are zeros (a
/// record ends with its header count, 0 when it has none).
fn survives_as_zeros(batches: &[(i64, Vec<u8>)], index: usize, kept: u64, mode: IoMode) -> bool {
    let Some((_, bytes)) = batches.get(index) else { return false };
    mode == IoMode::Direct && bytes[usize::try_from(kept).unwrap()..].iter().all(|b| *b == 0)
}

/// The last segment cut at every byte of its last three batches, in both modes: open
/// succeeds, the log ends at the last whole batch, and the producer state is that log's.
#[test]
fn last_segment_cut_at_every_byte_of_its_last_three_batches_buffered() {
    last_segment_cut_at_every_byte_of_its_last_three_batches(IoMode::Buffered);
}

#[test]
fn last_segment_cut_at_every_byte_of_its_last_three_batches_direct() {
    last_segment_cut_at_every_byte_of_its_last_three_batches(IoMode::Direct);
}

fn last_segment_cut_at_every_byte_of_its_last_three_batches(mode: IoMode) {
    run(async move {
        let image = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let options = log_options(mode, 6 << 10);
        let batches =
            write_log(image.path(), &options, &clock, 7, 60, |rng| 40 + rng.below(300) as usize)
                .await;
        let segments = segment_logs(image.path());
        assert!(segments.len() >= 3, "the log rolled: {segments:?}");
        let (last_base, _) = segments.last().unwrap().clone();
        let in_last: Vec<usize> =
            (0..batches.len()).filter(|&i| batches[i].0 >= last_base).collect();
        assert!(in_last.len() >= 3, "the last segment holds three batches");
        let pristine: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(image.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
            .collect();
        // Positions in the last segment: where each of its batches starts.
        let first_of_three = in_last[in_last.len() - 3];
        let start: u64 =
            batches[in_last[0]..first_of_three].iter().map(|(_, bytes)| bytes.len() as u64).sum();
        let end: u64 = start
            + batches[first_of_three..].iter().map(|(_, bytes)| bytes.len() as u64).sum::<u64>();
        let work = tempfile::tempdir().unwrap();
        for position in start..=end {
            for entry in std::fs::read_dir(work.path()).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
            for (name, bytes) in &pristine {
                std::fs::write(work.path().join(name), bytes).unwrap();
            }
            let path = work.path().join(segment_file_name(last_base, "log"));
            cut_file(&path, position, mode);
            // Whole batches before the cut survive.
            let mut at = start;
            let mut keep = first_of_three;
            while keep < batches.len() && at + batches[keep].1.len() as u64 <= position {
                at += batches[keep].1.len() as u64;
                keep += 1;
            }
            if survives_as_zeros(&batches, keep, position - at, mode) {
                keep += 1;
            }
            let what = format!("{mode:?}, cut at byte {position} of segment {last_base}");
            check_open(work.path(), &options, &clock, &batches[..keep], &what).await;
        }
    });
}

/// A log of batches from 100 bytes to 1 MiB over several segments, cut at 1000 random
/// places (the segment holding the place cut there, every later one gone), in both
/// modes. Cuts go from the end down, each on what the previous open left: a cut below
/// the last one sees the same bytes a cut of the original would.
#[test]
fn log_cut_at_a_thousand_random_places_buffered() {
    log_cut_at_a_thousand_random_places(IoMode::Buffered);
}

#[test]
fn log_cut_at_a_thousand_random_places_direct() {
    log_cut_at_a_thousand_random_places(IoMode::Direct);
}

fn log_cut_at_a_thousand_random_places(mode: IoMode) {
    run(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_700_000_000_000);
        let options = log_options(mode, 2 << 20);
        // Sizes spread evenly on a log scale from 100 bytes to 1 MiB.
        let batches = write_log(dir.path(), &options, &clock, 11, 90, |rng| {
            let exponent = 2.0 + (rng.below(10_000) as f64 / 10_000.0) * 4.0;
            (10f64.powf(exponent) as usize).min(1 << 20)
        })
        .await;
        // Where every batch starts and ends, counting the segments end to end.
        let segments = segment_logs(dir.path());
        assert!(segments.len() >= 3, "the log rolled: {segments:?}");
        let mut spans = Vec::new(); // (segment base, start in segment, end in segment)
        for (base, bytes) in &batches {
            let segment = segments.iter().rev().find(|(s, _)| s <= base).unwrap().0;
            let start = match spans.last() {
                Some(&(previous, _, end)) if previous == segment => end,
                _ => 0,
            };
            spans.push((segment, start, start + bytes.len() as u64));
        }
        let total: u64 = batches.iter().map(|(_, bytes)| bytes.len() as u64).sum();
        let mut rng = Rng(0x5eed);
        let mut cuts: Vec<u64> = (0..1000).map(|_| rng.below(total)).collect();
        cuts.sort_unstable_by(|a, b| b.cmp(a));
        for global in cuts {
            // The batch holding the cut, and the segment position.
            let mut before = 0u64;
            let mut index = 0usize;
            while before + batches[index].1.len() as u64 <= global {
                before += batches[index].1.len() as u64;
                index += 1;
            }
            let (segment, start, _) = spans[index];
            let position = start + (global - before);
            let keep =
                index + usize::from(survives_as_zeros(&batches, index, global - before, mode));
            for (base, path) in segment_logs(dir.path()) {
                if base > segment {
                    std::fs::remove_file(path).unwrap();
                }
            }
            cut_file(&dir.path().join(segment_file_name(segment, "log")), position, mode);
            let what = format!("{mode:?}, cut at byte {position} of segment {segment}");
            check_open(dir.path(), &options, &clock, &batches[..keep], &what).await;
        }
    });
}
