//! Tests of the file I/O seam: both modes' round trips, direct mode's write pipeline
//! (gathering, held blocks, allocation ahead), faults, and the descriptor cache.

use super::direct::wait_to_flush;
use super::*;
use crate::limits::{ALLOCATE_AHEAD_MIN, MAX_WRITES_IN_FLIGHT};
use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::test_support::run;

async fn round_trip(mode: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000.log");
    let file = SegmentFile::open(&path, mode, None).await.unwrap();
    let mut expected = Vec::new();
    // Sizes that cross block boundaries in every way: tiny, odd, exact, large.
    for (i, size) in [1usize, 100, 4095, 4096, 1, 8191, 70_000, 3, 4093].iter().enumerate() {
        let chunk: Vec<u8> = (0..*size).map(|j| (i * 31 + j) as u8).collect();
        let position = file.append(&chunk).await.unwrap();
        assert_eq!(position, expected.len() as u64);
        expected.extend_from_slice(&chunk);
    }
    assert_eq!(file.len(), expected.len() as u64);
    let read = file.read_at(0, expected.len() + 100).await.unwrap();
    assert_eq!(&read[..], &expected[..]);
    let middle = file.read_at(5000, 10_000).await.unwrap();
    assert_eq!(&middle[..], &expected[5000..15_000]);
    // Truncate into the middle of a block and keep appending.
    file.truncate(9_000).await.unwrap();
    expected.truncate(9_000);
    file.append(b"after-truncate").await.unwrap();
    expected.extend_from_slice(b"after-truncate");
    file.seal().await.unwrap();
    drop(file);
    // The sealed file on disk is exactly the logical bytes, no padding.
    assert_eq!(std::fs::read(&path).unwrap(), expected);
    // Reopen and append: the tail block is reloaded correctly.
    let file = SegmentFile::open(&path, mode, None).await.unwrap();
    assert_eq!(file.len(), expected.len() as u64);
    file.append(b"reopened").await.unwrap();
    expected.extend_from_slice(b"reopened");
    file.seal().await.unwrap();
    let read = file.read_at(0, usize::MAX).await.unwrap();
    assert_eq!(&read[..], &expected[..]);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
}

#[test]
fn buffered_round_trip() {
    run(round_trip(IoMode::Buffered));
}

#[test]
fn direct_round_trip() {
    run(round_trip(IoMode::Direct));
}

/// Buffered appends written inline (`pwrite`) and through io_uring, interleaved in one
/// file, read back in order, through the segment and from the file itself.
#[test]
fn buffered_appends_inline_and_through_io_uring_land_in_order() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let file = SegmentFile::open(&path, IoMode::Buffered, None).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let how = if i % 3 == 0 { BufferedWrite::Uring } else { BufferedWrite::Inline };
            file.set_buffered_write(how);
            let chunk = vec![i; 1000 + usize::from(i) * 97];
            let at = file.append(&chunk).await.unwrap();
            assert_eq!(at, expected.len() as u64);
            expected.extend_from_slice(&chunk);
        }
        assert_eq!(file.len(), expected.len() as u64);
        let read = file.read_at(0, usize::MAX).await.unwrap();
        assert_eq!(&read[..], &expected[..]);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!("io_uring".parse::<BufferedWrite>(), Ok(BufferedWrite::Uring));
        assert_eq!("inline".parse::<BufferedWrite>(), Ok(BufferedWrite::Inline));
        assert!("uring".parse::<BufferedWrite>().is_err());
    });
}

/// With a cache window, the helper is handed, page-aligned and exactly once, every
/// byte that fell more than the window behind the end: checked every
/// `log.writeback.bytes`, or every `CACHE_WINDOW_STEP` without writeback; across a
/// roll, the previous segment's cached tail too, as the next segment grows. The bytes
/// dropped from the page cache read back unchanged. Direct mode ignores the window.
#[test]
fn pages_behind_the_cache_window_are_handed_over_once_and_read_back() {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::writeback::{DROPPED_BEHIND_BYTES, DROP_BEHIND_TESTS};
    let _alone = DROP_BEHIND_TESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let direct =
            SegmentFile::open(&dir.path().join("d.log"), IoMode::Direct, None).await.unwrap();
        direct.set_cache_window(4096);
        assert_eq!(direct.cache_window.get(), 0, "direct mode has no page cache");

        let before = DROPPED_BEHIND_BYTES.load(Relaxed);
        let mut dropped = 0;
        for (writeback, name) in [(64u64 << 10, "w.log"), (0, "n.log")] {
            let file =
                SegmentFile::open(&dir.path().join(name), IoMode::Buffered, None).await.unwrap();
            file.set_writeback_bytes(writeback);
            file.set_cache_window(256 << 10);
            let mut expected = Vec::new();
            // 2 MiB in appends of 10 000 bytes: not page multiples.
            while expected.len() < 2 << 20 {
                let chunk = vec![(expected.len() / 10_000) as u8; 10_000];
                file.append(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
            }
            let end = expected.len() as u64;
            let step = if writeback > 0 { writeback } else { CACHE_WINDOW_STEP };
            // The last check came at the last append that completed a step.
            assert!(file.writeback_from.get() + step > end);
            let last_check = file.writeback_from.get();
            assert_eq!(file.dropped_to.get(), (last_check - (256 << 10)) & !4095);
            dropped += file.dropped_to.get();
            let read = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&read[..], &expected[..], "{name}");
        }

        // Rolls: the window is the log's, so the pages of the segments before that were
        // still in it go as the next one grows, all of them once it holds a window of
        // bytes. r1 is shorter than the window: r2 keeps track of r0's pages and r1's.
        // Every byte of r0 and r1 is dropped once.
        let (window, step) = (256u64 << 10, 64u64 << 10);
        let mut previous = None::<(SegmentFile, Vec<u8>)>;
        // (name, bytes, segments before it tracked after the roll, any left at the end)
        let files = [
            ("r0.log", 1u64 << 20, 0, false),
            ("r1.log", 100 << 10, 1, true),
            ("r2.log", 600 << 10, 2, false),
        ];
        for (name, size, tracked_at_start, tracked_at_end) in files {
            let file =
                SegmentFile::open(&dir.path().join(name), IoMode::Buffered, None).await.unwrap();
            file.set_writeback_bytes(step);
            file.set_cache_window(window);
            if let Some((prior, _)) = &previous {
                file.follow(prior);
                assert_eq!(prior.dropped_to.get(), prior.len.get(), "{name}: handed over");
                assert!(prior.predecessors.borrow().is_empty(), "{name}: passed on");
                dropped += prior.len.get();
            }
            let tracked = file.cached_predecessors().len();
            assert_eq!(tracked, tracked_at_start, "{name}");
            let mut expected = Vec::new();
            while (expected.len() as u64) < size {
                let chunk = vec![(expected.len() / 10_000) as u8; 10_000];
                file.append(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
                let end = expected.len() as u64;
                if file.writeback_from.get() == end {
                    // Just checked: what is left is what the window still covers, up
                    // to a page per segment.
                    let left: u64 =
                        file.cached_predecessors().iter().map(|(from, end)| end - from).sum();
                    let slack = 4096 * tracked as u64;
                    assert!(left <= window.saturating_sub(end) + slack, "{name} {end}");
                }
            }
            assert_eq!(!file.cached_predecessors().is_empty(), tracked_at_end, "{name}");
            let read = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&read[..], &expected[..], "{name}");
            if let Some((prior, prior_bytes)) = &previous {
                let read = prior.read_at(0, usize::MAX).await.unwrap();
                assert_eq!(&read[..], &prior_bytes[..], "the one before {name}");
            }
            previous = Some((file, expected));
        }
        let (last, _) = previous.unwrap();
        dropped += last.dropped_to.get();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while DROPPED_BEHIND_BYTES.load(Relaxed) < before + dropped {
            assert!(std::time::Instant::now() < deadline, "the helper never dropped them");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(DROPPED_BEHIND_BYTES.load(Relaxed), before + dropped, "each byte once");
    });
}

/// Buffered appends hand every `log.writeback.bytes` to the writeback helper, which
/// starts their device write (`sync_file_range` succeeds on each range); the bytes
/// read back unchanged. Direct mode ignores the setting.
#[test]
fn buffered_appends_start_writeback_every_so_many_bytes() {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::writeback::{DROPPED, STARTED};
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let direct =
            SegmentFile::open(&dir.path().join("d.log"), IoMode::Direct, None).await.unwrap();
        direct.set_writeback_bytes(4096);
        assert_eq!(direct.writeback_every.get(), 0, "direct mode writes to the device");

        let file =
            SegmentFile::open(&dir.path().join("b.log"), IoMode::Buffered, None).await.unwrap();
        file.append(&[7u8; 1000]).await.unwrap(); // before: not handed over
        file.set_writeback_bytes(64 << 10);
        let (started, dropped) = (STARTED.load(Relaxed), DROPPED.load(Relaxed));
        let mut expected = vec![7u8; 1000];
        for i in 0..64u8 {
            let chunk = vec![i; 16 << 10];
            file.append(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        // 1 MiB appended in 16 KiB pieces, 64 KiB per range: 16 ranges, from where
        // the setting was made to the end.
        assert_eq!(file.writeback_from.get(), expected.len() as u64);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while STARTED.load(Relaxed) < started + 16 {
            assert!(std::time::Instant::now() < deadline, "writeback never started");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(DROPPED.load(Relaxed), dropped, "no range dropped or failed");
        let read = file.read_at(0, usize::MAX).await.unwrap();
        assert_eq!(&read[..], &expected[..]);
    });
}

#[test]
fn direct_unsealed_file_has_zero_padding_after_logical_end() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
        file.append(&[7u8; 10]).await.unwrap();
        file.writes_landed().await.unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk.len() >= 512, "a whole block is written");
        assert_eq!(&on_disk[..10], &[7u8; 10]);
        assert!(on_disk[10..].iter().all(|b| *b == 0));
    });
}

/// Reads right after each append, while its write is (usually) still in flight: the
/// bytes come from the write's buffer and, before it, from disk.
#[test]
fn direct_reads_see_bytes_whose_write_is_in_flight() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.log");
        let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
        let mut expected = Vec::new();
        for (i, size) in [5000usize, 1, 300_000, 4096, 77, 12_345, 1 << 20].iter().enumerate() {
            let chunk: Vec<u8> = (0..*size).map(|j| (i * 7 + j * 13) as u8).collect();
            file.append(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
            let all = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&all[..], &expected[..]);
            let from = expected.len() - size - 100.min(expected.len() - size);
            let last = file.read_at(from as u64, usize::MAX).await.unwrap();
            assert_eq!(&last[..], &expected[from..]);
        }
        file.seal().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    });
}

/// Appends of every alignment back to back, with reads between them at every kind of
/// position: several writes are in flight at once, writes that share a block with
/// the previous one are split, and every read and the sealed file see exactly the
/// bytes appended.
#[test]
fn direct_pipelined_writes_keep_every_byte() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
        let Some(direct) = &file.direct else { unreachable!() };
        let mut expected = Vec::new();
        let (mut most_in_flight, mut split) = (0, false);
        let sizes = [700usize, 1 << 20, 33, 9000, 4096, 300_001, 1, 5000, 65_536, 123_457];
        for round in 0..6 {
            for (i, size) in sizes.iter().enumerate() {
                let chunk: Vec<u8> =
                    (0..*size).map(|j| (round * 101 + i * 7 + j * 13) as u8).collect();
                file.append(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
                {
                    let state = direct.state.borrow();
                    most_in_flight = most_in_flight.max(state.in_flight.len());
                    split |= state.in_flight.iter().any(|write| write.pieces.len() == 2);
                    // Plus the open write gathering appends, if there is one.
                    let open = usize::from(state.open.is_some());
                    assert!(state.in_flight.len() <= MAX_WRITES_IN_FLIGHT + open);
                }
                if i % 3 == 0 {
                    let from = expected.len() - (size + 5000).min(expected.len());
                    let read = file.read_at(from as u64, usize::MAX).await.unwrap();
                    assert_eq!(&read[..], &expected[from..]);
                }
            }
        }
        assert!(most_in_flight > 1, "writes were pipelined ({most_in_flight} at most)");
        assert!(split, "some write shared its first block with a write in flight");
        file.writes_landed().await.unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size >= expected.len() as u64 + ALLOCATE_AHEAD_MIN, "allocated ahead: {size}");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..expected.len()], &expected[..]);
        assert!(on_disk[expected.len()..].iter().all(|b| *b == 0), "padding is zeros");
        let all = file.read_at(0, usize::MAX).await.unwrap();
        assert_eq!(&all[..], &expected[..]);
        file.seal().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    });
}

/// A held last block taken over by the next write: the write that held it ends where
/// the block starts, so its append counts as landed only once the next write (which
/// carries its last bytes) has; a held piece that was taken over is never written,
/// and one that was not is flushed once everything before it has landed.
#[test]
fn direct_held_block_lands_with_the_write_that_took_it_over() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let file =
            SegmentFile::open(&dir.path().join("h.log"), IoMode::Direct, None).await.unwrap();
        let dma = file.dma().await.unwrap();
        let piece = |at: u64, state: PieceState| Piece {
            at,
            buffer: Rc::new(dma.alloc_dma_buffer(4096)),
            state,
        };
        let mut state = DirectState::default();
        assert!(!state.take_held(), "nothing to take over");
        state.in_flight.push_back(InFlight {
            id: 0,
            end: 6000,
            pieces: vec![piece(0, PieceState::Submitted), piece(4096, PieceState::Held)],
            pending: 2,
        });
        state.piece_done(0, Ok(()));
        assert_eq!(state.landed, 0, "the held block is not on the device");
        assert!(state.busy());
        assert!(state.take_held());
        assert!(!state.take_held(), "taken once");
        state.retire();
        assert_eq!(state.landed, 4096, "landed up to the block taken over, not to 6000");
        assert!(!state.busy());
        state.in_flight.push_back(InFlight {
            id: 1,
            end: 9000,
            pieces: vec![piece(4096, PieceState::Submitted), piece(8192, PieceState::Held)],
            pending: 2,
        });
        let shared = RefCell::new(state);
        // Not flushed while the write's other piece is in flight.
        let mut flush = std::pin::pin!(wait_to_flush(&shared, 1, 1));
        let first = std::future::poll_fn(|cx| {
            use std::future::Future as _;
            Poll::Ready(flush.as_mut().poll(cx))
        })
        .await;
        assert!(first.is_pending());
        shared.borrow_mut().piece_done(1, Ok(()));
        assert!(wait_to_flush(&shared, 1, 1).await, "flushed once alone");
        assert!(!shared.borrow_mut().take_held(), "a flushed block cannot be taken over");
        // A held piece taken over: its task finds it gone.
        shared.borrow_mut().in_flight.push_back(InFlight {
            id: 2,
            end: 13000,
            pieces: vec![piece(12288, PieceState::Held)],
            pending: 1,
        });
        assert!(shared.borrow_mut().take_held());
        assert!(!wait_to_flush(&shared, 2, 0).await);
    });
}

/// Appends pipelined two by two: once `wait_landed` returns for the first, its bytes
/// and every byte before them are on disk, although its last block was (usually)
/// held back and written by the second append's write.
#[test]
fn direct_landed_bytes_are_on_disk_when_blocks_are_held_back() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.log");
        let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
        let Some(direct) = &file.direct else { unreachable!() };
        let mut expected = Vec::new();
        let mut held = 0;
        for round in 0..200usize {
            let first = 1 + round * 7919 % 20_000;
            let second = 1 + round * 104_729 % 9000;
            for (size, salt) in [(first, 1usize), (second, 2)] {
                let chunk: Vec<u8> = (0..size).map(|j| (round * 31 + salt + j) as u8).collect();
                file.append(&chunk).await.unwrap();
                expected.extend_from_slice(&chunk);
                let state = direct.state.borrow();
                let last = state.in_flight.back().and_then(|write| write.pieces.last());
                held += usize::from(last.is_some_and(|p| p.state == PieceState::Held));
            }
            let landed_end = expected.len() - second;
            file.wait_landed(landed_end as u64).await.unwrap();
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(&on_disk[..landed_end], &expected[..landed_end], "round {round}");
        }
        assert!(held > 0, "some appends held their last block back");
        file.seal().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    });
}

/// Writes land out of order, but the landed end only moves over writes whose
/// predecessors have all landed, and a failure stops it for good.
#[test]
fn direct_landed_end_moves_in_append_order() {
    let write =
        |id: u64, end: u64, pending: usize| InFlight { id, end, pieces: Vec::new(), pending };
    let mut state = DirectState::default();
    state.in_flight.extend([write(0, 10, 1), write(1, 20, 2), write(2, 30, 1)]);
    state.piece_done(2, Ok(()));
    state.piece_done(1, Ok(()));
    assert_eq!((state.landed, state.in_flight.len()), (0, 3), "write 0 has not landed");
    state.piece_done(0, Ok(()));
    assert_eq!((state.landed, state.in_flight.len()), (10, 2), "write 1 has a piece left");
    state.piece_done(1, Ok(()));
    assert_eq!((state.landed, state.in_flight.len()), (30, 0));
    state.in_flight.extend([write(3, 40, 1), write(4, 50, 1)]);
    state.piece_done(3, Err(io::Error::other("device gone")));
    state.piece_done(4, Ok(()));
    assert!(state.in_flight.is_empty());
    assert_eq!(state.landed, 30, "nothing after a failed write counts as landed");
    assert!(state.failed.as_deref().unwrap().contains("device gone"));
}

/// A write that fails while later ones are in flight: the later appends fail or are
/// lost with it, and every operation after reports the failure.
#[test]
fn direct_failed_write_among_pipelined_writes_fails_the_file() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultPlan::default());
        let path = dir.path().join("q.log");
        let file = SegmentFile::open(&path, IoMode::Direct, Some(faults.clone())).await.unwrap();
        file.append(&[1u8; 5000]).await.unwrap();
        faults.fail_next_write();
        file.append(&[2u8; 70_000]).await.unwrap();
        // Queued behind the failing write, or refused once it has failed.
        let _ = file.append(&[3u8; 70_000]).await;
        assert!(file.wait_landed(5000 + 70_000).await.is_err());
        assert!(file.write_failed());
        assert!(file.append(b"more").await.is_err());
        assert!(file.read_at(0, 10).await.is_err());
        assert!(file.sync().await.is_err());
        writes_landed().await;
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..5000], &[1u8; 5000][..], "the write before the failure landed");
    });
}

/// Group commit: once `MAX_WRITES_IN_FLIGHT` writes are in flight, appends gather
/// into one open write instead of one write each. Far fewer writes than appends
/// reach the device; reads between appends see the gathered bytes; an append that
/// joined counts as landed only once its bytes are on disk; the file ends up exactly
/// the bytes appended.
#[test]
fn direct_appends_gather_into_one_write_while_writes_are_in_flight() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.log");
        let file = SegmentFile::open(&path, IoMode::Direct, None).await.unwrap();
        let Some(direct) = &file.direct else { unreachable!() };
        let mut expected = Vec::new();
        let (mut appends, mut joined) = (0u64, 0u64);
        // Unaligned sizes, so that appends share blocks; 400 appends back to back
        // without awaiting the device.
        for i in 0..400usize {
            let size = [1000, 4096, 70_000, 1, 12_345][i % 5];
            let chunk: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
            let open_before = direct.state.borrow().open.as_ref().map(|open| open.id);
            file.append(&chunk).await.unwrap();
            appends += 1;
            expected.extend_from_slice(&chunk);
            let open_after = direct.state.borrow().open.as_ref().map(|open| open.id);
            joined += u64::from(open_before.is_some() && open_before == open_after);
            if i % 7 == 0 {
                let from = expected.len() - (size + 3000).min(expected.len());
                let read = file.read_at(from as u64, usize::MAX).await.unwrap();
                assert_eq!(&read[..], &expected[from..], "read after append {i}");
            }
            if i % 50 == 49 {
                // Landed means on disk, for the bytes of a joined append too.
                file.wait_landed(expected.len() as u64).await.unwrap();
                let on_disk = std::fs::read(&path).unwrap();
                assert_eq!(&on_disk[..expected.len()], &expected[..], "landed at {i}");
            }
        }
        let writes = direct.state.borrow().next_id;
        assert!(joined > 0, "some appends joined an open write");
        assert!(writes < appends, "{writes} writes for {appends} appends");
        file.writes_landed().await.unwrap();
        assert!(direct.state.borrow().open.is_none(), "the open write was closed");
        let all = file.read_at(0, usize::MAX).await.unwrap();
        assert_eq!(&all[..], &expected[..]);
        file.seal().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    });
}

/// A write that fails behind an open write (an injected fault fails its write as
/// soon as it is submitted, so it goes right behind the open one): nothing from the
/// failure on counts as landed, later appends are refused, and what is on disk
/// before the failure is intact.
#[test]
fn direct_failed_write_behind_an_open_write_fails_the_file() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultPlan::default());
        let path = dir.path().join("h.log");
        let file = SegmentFile::open(&path, IoMode::Direct, Some(faults.clone())).await.unwrap();
        let Some(direct) = &file.direct else { unreachable!() };
        file.append(&[1u8; 5000]).await.unwrap();
        file.wait_landed(5000).await.unwrap();
        let mut len = 5000u64;
        while direct.state.borrow().open.is_none() {
            file.append(&[2u8; 9000]).await.unwrap();
            len += 9000;
            assert!(len < 64 << 20, "no write gathered appends");
        }
        file.append(&[3u8; 9000]).await.unwrap(); // joins the open write
        len += 9000;
        faults.fail_next_write();
        // Waits for the open write to close, then its own write fails.
        let _ = file.append(&[4u8; 9000]).await;
        assert!(file.wait_landed(len + 9000).await.is_err());
        assert!(file.write_failed());
        assert!(file.append(b"more").await.is_err());
        writes_landed().await;
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..5000], &[1u8; 5000][..], "the write before the failure landed");
    });
}

/// A direct-mode write that fails after its append returned is reported by every
/// later operation: nothing goes on as if the appended bytes were there.
#[test]
fn direct_failed_write_fails_every_later_operation() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultPlan::default());
        let path = dir.path().join("w.log");
        let file = SegmentFile::open(&path, IoMode::Direct, Some(faults.clone())).await.unwrap();
        file.append(b"landed").await.unwrap();
        faults.fail_next_write();
        file.append(b"lost").await.unwrap();
        assert_eq!(file.len(), 10);
        assert!(file.writes_landed().await.is_err());
        assert!(file.write_failed());
        assert!(file.append(b"more").await.is_err());
        assert!(file.sync().await.is_err());
        assert!(file.read_at(0, 6).await.is_err());
        assert!(file.truncate(6).await.is_err(), "the bytes before 6 are not trusted");
        assert!(file.seal().await.is_err());
        drop(file);
        // On disk: what landed before the failure, padded; the lost bytes never came.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..6], b"landed");
        assert!(on_disk[6..].iter().all(|b| *b == 0));
    });
}

#[test]
fn buffered_failed_write_fails_the_append() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultPlan::default());
        let path = dir.path().join("b.log");
        let file = SegmentFile::open(&path, IoMode::Buffered, Some(faults.clone())).await.unwrap();
        faults.fail_next_write();
        assert!(file.append(b"lost").await.is_err());
        assert_eq!(file.len(), 0);
        file.append(b"kept").await.unwrap();
        assert_eq!(&file.read_at(0, 4).await.unwrap()[..], b"kept");
    });
}

#[test]
fn faults_are_injected_once() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultPlan::default());
        let path = dir.path().join("f.log");
        let file = SegmentFile::open(&path, IoMode::Buffered, Some(faults.clone())).await.unwrap();
        file.append(b"0123456789").await.unwrap();
        faults.tear_next_append_after(3);
        assert!(file.append(b"abcdef").await.is_err());
        assert_eq!(file.len(), 10, "a failed append does not move the logical end");
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789abc");
        faults.fail_next_sync();
        assert!(file.sync().await.is_err());
        file.sync().await.unwrap();
        faults.fail_next_read();
        assert!(file.read_at(0, 4).await.is_err());
        assert_eq!(&file.read_at(0, 4).await.unwrap()[..], b"0123");
    });
}

/// Descriptors of this process that point into `dir`, once glommio has closed the
/// files dropped before (it closes them from its ring, at the next poll).
pub(crate) async fn open_fds_under(dir: &Path) -> usize {
    glommio::timer::sleep(Duration::from_millis(20)).await;
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|entry| std::fs::read_link(entry.path()).is_ok_and(|to| to.starts_with(&dir)))
        .count()
}

/// With a budget of two descriptors, files beyond it are closed while idle and
/// reopened on their next use: reads return the same bytes, appends go on where the
/// file ends (direct mode: from the tail block kept in memory, into the space
/// allocated ahead), and the process never holds more than the budget.
async fn evicted_files_reopen_with_the_same_bytes(mode: IoMode) {
    crate::fdcache::set_budget(2);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for i in 0..6u8 {
        let file =
            SegmentFile::open(&dir.path().join(format!("{i}.log")), mode, None).await.unwrap();
        // Not block-aligned, so direct mode keeps a partial tail block.
        let data: Vec<u8> = (0..5000 + usize::from(i) * 777).map(|b| b as u8 ^ i).collect();
        file.append(&data).await.unwrap();
        file.writes_landed().await.unwrap();
        files.push(file);
        expected.push(data);
    }
    assert!(crate::fdcache::stats().held <= 2);
    assert!(!files[0].is_open(), "the oldest file was closed");
    assert!(open_fds_under(dir.path()).await <= 2);
    for round in 0..2u8 {
        for (i, file) in files.iter().enumerate() {
            let read = file.read_at(0, usize::MAX).await.unwrap();
            assert_eq!(&read[..], &expected[i][..], "file {i} reads back");
            // Append to a file that was closed: the next bytes follow the old ones.
            let more: Vec<u8> = (0..3000).map(|b| (b as u8).wrapping_mul(round + 3)).collect();
            file.append(&more).await.unwrap();
            file.writes_landed().await.unwrap();
            expected[i].extend_from_slice(&more);
            assert!(crate::fdcache::stats().held <= 2);
        }
    }
    assert!(open_fds_under(dir.path()).await <= 2);
    for (i, file) in files.iter().enumerate() {
        file.seal().await.unwrap();
        let on_disk = std::fs::read(file.path()).unwrap();
        assert_eq!(on_disk, expected[i], "file {i} on disk after the seal");
    }
    let stats = crate::fdcache::stats();
    assert!(stats.evictions >= 20, "files were closed and reopened: {stats:?}");
    assert_eq!(stats.over_budget, 0, "{stats:?}");
    drop(files);
    assert_eq!(crate::fdcache::stats().held, 0);
    assert_eq!(open_fds_under(dir.path()).await, 0);
}

#[test]
fn buffered_evicted_files_reopen_with_the_same_bytes() {
    run(evicted_files_reopen_with_the_same_bytes(IoMode::Buffered));
}

#[test]
fn direct_evicted_files_reopen_with_the_same_bytes() {
    run(evicted_files_reopen_with_the_same_bytes(IoMode::Direct));
}

/// A file whose descriptor an operation holds is not closed, however far over the
/// budget the shard goes; it is closed once idle, by the next file that opens.
#[test]
fn a_file_in_use_is_not_closed() {
    run(async {
        crate::fdcache::set_budget(1);
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let open =
            |path: PathBuf| async move { SegmentFile::open(&path, IoMode::Buffered, None).await };
        let a = open(path("a.log")).await.unwrap();
        a.append(b"held by a read").await.unwrap();
        let in_use = a.handle().await.unwrap();
        let b = open(path("b.log")).await.unwrap();
        assert!(a.is_open(), "a read holds a: it stays open");
        assert_eq!(crate::fdcache::stats().over_budget, 1);
        assert_eq!(open_fds_under(dir.path()).await, 2);
        drop(in_use);
        let c = open(path("c.log")).await.unwrap();
        assert!(!a.is_open() && !b.is_open() && c.is_open());
        assert_eq!(open_fds_under(dir.path()).await, 1);
        assert_eq!(&a.read_at(0, 100).await.unwrap()[..], b"held by a read");
    });
}

/// A descriptor handed out for sendfile stays valid when the cache closes the file,
/// and one of a file that was deleted stays readable while kept open.
#[test]
fn shared_descriptors_outlive_the_close_and_deleted_files_stay_readable() {
    run(async {
        crate::fdcache::set_budget(2);
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let open =
            |path: PathBuf| async move { SegmentFile::open(&path, IoMode::Buffered, None).await };
        let a = open(path("a.log")).await.unwrap();
        a.append(b"sent with sendfile").await.unwrap();
        let shared = a.shared_fd().unwrap().unwrap();
        assert_eq!(crate::fdcache::stats().held, 2, "the file and its duplicate");
        let b = open(path("b.log")).await.unwrap();
        b.append(b"deleted under a read").await.unwrap();
        assert!(!a.is_open(), "a closed for b");
        let mut bytes = [0u8; 18];
        nix::sys::uio::pread(&*shared, &mut bytes, 0).unwrap();
        assert_eq!(&bytes, b"sent with sendfile");
        drop(shared);
        // b is deleted while a read still holds it: it stays open, whatever the budget.
        b.keep_open().await.unwrap();
        remove_file(b.path()).unwrap();
        let mut others = Vec::new();
        for name in ["c.log", "d.log", "e.log"] {
            others.push(open(path(name)).await.unwrap());
        }
        assert!(!others[0].is_open(), "the budget holds for the others");
        assert!(b.is_open());
        assert_eq!(&b.read_at(0, 100).await.unwrap()[..], b"deleted under a read");
        // A closed file whose name is gone cannot come back: an error, never an empty
        // file of that name.
        assert!(!a.is_open());
        remove_file(a.path()).unwrap();
        assert!(a.read_at(0, 1).await.is_err());
        assert!(!a.path().exists());
    });
}
