//! Opening a log and recovering it: listing its segments, trusting the ones before the
//! recovery point (loading their indexes), re-validating the rest batch by batch and
//! cutting the log at the first torn or corrupt batch.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use tracing::{error, info, warn};

use crate::batch::{self, Batch, HEADER_BYTES};
use crate::clock::Clock;
use crate::io::{FileBytes, IoMode, SegmentFile};
use crate::limits::{INDEX_REBUILD_FREE, PADDING_QUIET_BYTES, RECOVERY_READ_BYTES};
use crate::sync::FifoLock;

use super::index::{OffsetIndex, TimeIndex};
use super::{
    index_out_of_space, io_error, list_dir, parse_segment_name, segment_file_name,
    validate_options, Log, LogError, LogOptions, OpenHints, Segment, State,
};

impl Log {
    /// Opens (creating if needed) the log in `dir` and recovers it: segments from the one
    /// holding `hints.recovery_point` on are re-validated batch by batch and their indexes
    /// rebuilt; the log is cut at the first torn or corrupt batch. Errors mean the
    /// partition cannot be served (the caller takes it offline), never a panic.
    pub async fn open(
        dir: &Path,
        options: LogOptions,
        hints: OpenHints,
        clock: Rc<dyn Clock>,
    ) -> Result<Log, LogError> {
        validate_options(&options)?;
        // Listing the directory is a blocking syscall, done only when a partition is
        // opened (start-up, topic creation), never on the append or fetch path. glommio's
        // blocking pool was used here first; a rare hang waiting on its completion in the
        // tests made the plain call the safer choice.
        let listing = list_dir(dir).map_err(io_error(dir))?;

        let mut bases = Vec::new();
        let mut leftovers = Vec::new();
        for name in &listing {
            match parse_segment_name(name) {
                Some((base, "log")) => bases.push(base),
                Some((_, "index" | "timeindex" | "txnindex")) => {}
                // Kafka's in-progress suffixes: a crash left them; they are not the log.
                Some((_, extension))
                    if extension.ends_with(".deleted")
                        || extension.ends_with(".cleaned")
                        || extension.ends_with(".swap")
                        || extension.ends_with(".tmp") =>
                {
                    leftovers.push(dir.join(name));
                }
                _ => {}
            }
        }
        for path in leftovers {
            warn!(path = %path.display(), "removing leftover file from an interrupted operation");
            crate::io::remove_file(&path).map_err(io_error(&path))?;
        }
        bases.sort_unstable();

        let log = Log {
            dir: dir.to_path_buf(),
            options: RefCell::new(options),
            state: RefCell::new(State {
                segments: BTreeMap::new(),
                log_start_offset: hints.log_start_offset.max(0),
                log_end_offset: 0,
                recovery_point: hints.recovery_point.max(0),
                unflushed_records: 0,
                unflushed_since_ms: None,
                flush_all_segments: false,
                offline: None,
            }),
            append_lock: FifoLock::new(),
            clock,
        };
        log.recover(&bases, hints).await?;
        Ok(log)
    }

    async fn recover(&self, bases: &[i64], hints: OpenHints) -> Result<(), LogError> {
        let recover_from = bases
            .iter()
            .rev()
            .find(|base| **base <= hints.recovery_point)
            .or(bases.first())
            .copied()
            .unwrap_or(0);
        let interval = self.options.borrow().index_interval_bytes;
        // Where writes may have been lost out of order (see `OpenHints`).
        let reordered_from =
            if hints.machine_restarted { hints.recovery_point.max(0) } else { i64::MAX };
        let mut segments: BTreeMap<i64, Segment> = BTreeMap::new();
        let mut cut = false;
        for (at, &base) in bases.iter().enumerate() {
            if cut {
                self.delete_segment_files(base).await?;
                continue;
            }
            let (log, index_file, time_file) = self.open_segment_files(base).await?;
            let mut segment = Segment {
                base_offset: base,
                size: log.len(),
                log,
                index_file,
                time_file,
                offset_index: OffsetIndex::default(),
                time_index: TimeIndex::default(),
                next_offset: base,
                max_timestamp: -1,
                offset_of_max_timestamp: base,
                bytes_since_last_index_entry: 0,
                rolling_since_ms: Some(self.clock.wall_ms()),
            };
            let next_base = bases.get(at + 1).copied();
            // A rolled segment whose seal had not run at the crash still ends in zeros
            // (direct-mode padding and space allocated ahead): its size on disk is not
            // its length, so it is scanned like the segments after the recovery point.
            let trusted =
                base < recover_from && next_base.is_some() && !ends_in_zeros(&segment.log).await?;
            if trusted && self.load_indexes(&mut segment, next_base).await? {
                segments.insert(base, segment);
                continue;
            }
            let expected_first = segments.values().next_back().map_or(base, |s| s.next_offset);
            let outcome = self
                .recover_segment(&mut segment, expected_first, interval, reordered_from)
                .await?;
            let path = self.dir.join(segment_file_name(base, "log"));
            let damaged = |position: u64, offset: i64, reason: String| {
                error!(
                    segment = %path.display(), position, offset, %reason,
                    "damaged log followed by valid batches: not a torn tail; the partition stays offline with its files as they are"
                );
                LogError::Corrupt { path: path.clone(), position, reason }
            };
            // Segments follow each other without a gap. One that ends short of where the
            // next begins lost batches; with valid batches after them (the next segment)
            // that is damage, not a torn tail, unless the machine restarted.
            let lost_before_next = next_base.filter(|next| *next != segment.next_offset);
            if let Some(next) = lost_before_next {
                if !matches!(outcome, Recovered::Damaged { .. })
                    && segment.next_offset < reordered_from
                    && self.starts_with_valid_batch(next).await?
                {
                    let (position, reason) = match &outcome {
                        Recovered::Cut { reason, position, .. } => (*position, reason.clone()),
                        _ => (segment.size, "the segment ends early".to_string()),
                    };
                    let offset = segment.next_offset;
                    return Err(damaged(
                        position,
                        offset,
                        format!(
                            "batches from offset {offset} are missing ({reason}) before segment {next}"
                        ),
                    ));
                }
            }
            let position = match outcome {
                Recovered::Damaged { reason, position, offset } => {
                    return Err(damaged(
                        position,
                        offset,
                        format!(
                            "the batch at offset {offset} is damaged ({reason}) and valid batches follow it"
                        ),
                    ));
                }
                Recovered::Cut { reason, position, bytes } => {
                    warn!(
                        segment = %path.display(), position, bytes_cut = bytes, %reason,
                        "torn tail: segment cut at its last whole batch during recovery"
                    );
                    position
                }
                Recovered::Padding { position } => position,
                Recovered::Clean => segment.size,
            };
            self.finish_scan(&mut segment, position).await?;
            if let Some(next) = lost_before_next {
                warn!(
                    dir = %self.dir.display(), segment = next, expected = segment.next_offset,
                    later_segments = bases.len() - at - 1,
                    "the log ends before the next segment begins; dropping it and the rest"
                );
                cut = true;
            }
            if segment.size == 0 {
                segment.rolling_since_ms = None;
            }
            segments.insert(base, segment);
        }
        let first_base = bases.first().copied().unwrap_or(hints.log_start_offset.max(0));
        // A log created now holds nothing to make durable: no flush (its fsyncs cost a
        // new topic seconds when the disk is busy, and a crash before the first append
        // only means an empty segment is created again).
        let created = segments.is_empty();
        if segments.is_empty() {
            let segment = self.new_segment(first_base).await?;
            segments.insert(first_base, segment);
        }
        {
            let mut state = self.state.borrow_mut();
            state.segments = segments;
            state.log_end_offset = state.active().next_offset;
            let log_end_offset = state.log_end_offset;
            let first = *state.segments.keys().next().expect("non-empty");
            state.log_start_offset = state.log_start_offset.clamp(first, log_end_offset);
            // The hint may point past what survived; the flush below moves it to the end.
            state.recovery_point = state.recovery_point.min(log_end_offset);
        }
        // Make the recovered state durable and indexed, then trust it. On a full disk
        // the rebuilt index files may not fit: the log is served as recovered (its
        // indexes are in memory), the recovery point stays where it was, so a crash
        // before a flush succeeds scans the same bytes again, and the next flush (the
        // scheduled one when `flush.ms` or `flush.messages` is set, else the one at
        // shutdown) writes every segment's indexes again.
        if created {
            let mut state = self.state.borrow_mut();
            state.recovery_point = state.log_end_offset;
        } else if let Err(error) = self.flush_locked(true).await {
            if !index_out_of_space(&error) || self.offline_reason().is_some() {
                return Err(error);
            }
            warn!(
                dir = %self.dir.display(), %error,
                "the recovered log's indexes could not be written: no space left; serving it as recovered, the next flush writes them"
            );
            let now = self.clock.monotonic_ms();
            let mut state = self.state.borrow_mut();
            state.unflushed_since_ms.get_or_insert(now);
            state.flush_all_segments = true;
        }
        info!(
            dir = %self.dir.display(),
            log_start_offset = self.log_start_offset(),
            log_end_offset = self.log_end_offset(),
            segments = self.segment_count(),
            "log opened"
        );
        Ok(())
    }

    /// Loads a trusted segment's indexes; returns false when they are missing or corrupt
    /// (the caller then rebuilds them by scanning the segment).
    async fn load_indexes(
        &self,
        segment: &mut Segment,
        next_base: Option<i64>,
    ) -> Result<bool, LogError> {
        let index_file = &segment.index_file;
        let index_bytes = index_file.read_all().await.map_err(io_error(index_file.path()))?;
        let time_file = &segment.time_file;
        let time_bytes = time_file.read_all().await.map_err(io_error(time_file.path()))?;
        let Ok(offset_index) = OffsetIndex::decode(&index_bytes, segment.size) else {
            warn!(segment = %segment.log.path().display(), "offset index corrupt, rebuilding");
            return Ok(false);
        };
        let Ok(time_index) = TimeIndex::decode(&time_bytes) else {
            warn!(segment = %segment.log.path().display(), "time index corrupt, rebuilding");
            return Ok(false);
        };
        if segment.size > 0 && offset_index.is_empty() && segment.size > INDEX_REBUILD_FREE {
            // Kafka writes the first entry after one interval; a big segment with none is
            // an index that was lost.
            return Ok(false);
        }
        segment.offset_index = offset_index;
        segment.time_index = time_index;
        segment.next_offset = next_base.unwrap_or(segment.base_offset);
        if let Some(last) = segment.time_index.last() {
            segment.max_timestamp = last.timestamp;
            segment.offset_of_max_timestamp = segment.base_offset + i64::from(last.relative_offset);
        }
        Ok(true)
    }

    /// Walks every batch of a segment: validates it and rebuilds the indexes, up to the
    /// first invalid batch. Zeros from there to the end are padding (direct mode writes
    /// whole blocks and allocates ahead; not a sign of damage); anything else there is a
    /// torn tail, the bytes a crash left half-written (a partial batch at the end of a
    /// file, zeros where a direct-mode write had not landed, a batch whose header reached
    /// the disk and whose body did not). Nothing is cut here: the caller cuts
    /// (`finish_scan`) once it has checked that no valid batches follow in the next
    /// segment.
    ///
    /// When a valid batch follows the invalid one right after it, the damage is not what
    /// a crash leaves, and the segment is reported `Damaged` so the log stays offline with
    /// its bytes intact; except from offset `reordered_from` on, where the machine may
    /// have lost writes in any order (see `OpenHints::machine_restarted`). Direct mode
    /// acknowledges an append only once every earlier write of the file has landed, and
    /// rolls only once the old segment's writes have, so a hole followed by landed data
    /// holds only unacknowledged appends; such a hole reads as zeros, whose batch length
    /// is not a length, so it is a tail, not damage.
    async fn recover_segment(
        &self,
        segment: &mut Segment,
        expected_first: i64,
        interval: u64,
        reordered_from: i64,
    ) -> Result<Recovered, LogError> {
        let file = segment.log.clone();
        let file_len = file.len();
        let mut position = 0u64;
        let mut expected = expected_first.max(segment.base_offset);
        let mut buffer: Option<(u64, FileBytes)> = None;
        segment.offset_index = OffsetIndex::default();
        segment.time_index = TimeIndex::default();
        let outcome = loop {
            if position >= file_len {
                break Recovered::Clean;
            }
            // Make sure the buffer holds the header, then the whole batch.
            let mut need = HEADER_BYTES as u64;
            // The batch's size, once its length field is read and the batch fits the file.
            let mut intact_size: Option<u64> = None;
            let checked = loop {
                let have = buffer.as_ref().map_or(0, |(start, bytes)| {
                    if *start <= position && position < *start + bytes.len() as u64 {
                        *start + bytes.len() as u64 - position
                    } else {
                        0
                    }
                });
                if have >= need.min(file_len - position) {
                    let (start, bytes) = buffer.as_ref().expect("have > 0");
                    let from = usize::try_from(position - start).expect("in buffer");
                    let window = &bytes[from..];
                    if need == HEADER_BYTES as u64 {
                        match batch::batch_size(window) {
                            Ok(size) if window.len() >= HEADER_BYTES => {
                                need = size as u64;
                                if need > file_len - position {
                                    break Err(format!(
                                        "batch of {size} bytes runs past the end of the file"
                                    ));
                                }
                                intact_size = Some(need);
                                continue;
                            }
                            Ok(_) => break Err("truncated batch header".to_string()),
                            Err(error) => break Err(error.to_string()),
                        }
                    }
                    let size = usize::try_from(need).expect("batch < 2 GiB");
                    let (one, _) = match Batch::parse(&window[..size]) {
                        Ok(parsed) => parsed,
                        Err(error) => break Err(error.to_string()),
                    };
                    if let Err(error) = one.validate(usize::MAX) {
                        break Err(error.to_string());
                    }
                    // Offsets are dense: a base offset flipped on disk (it is outside the
                    // CRC) shows up here. Compaction will relax this for compacted topics.
                    if one.base_offset() != expected {
                        break Err(format!(
                            "batch base offset {} where {expected} was expected",
                            one.base_offset()
                        ));
                    }
                    if one.last_offset() - segment.base_offset > i64::from(i32::MAX) {
                        break Err("offset too far from the segment base".to_string());
                    }
                    segment.index_batch(&one, position, interval);
                    expected = one.last_offset() + 1;
                    break Ok(need);
                }
                let want = need.max(RECOVERY_READ_BYTES as u64).min(file_len - position);
                let want = usize::try_from(want).expect("read < 2 GiB");
                let bytes = file.read_at(position, want).await.map_err(io_error(file.path()))?;
                buffer = Some((position, bytes));
            };
            match checked {
                Ok(size) => position += size,
                Err(reason) => {
                    // Zeros to the end are what a direct-mode file has after its last
                    // batch until it is sealed, whichever mode opens it now. (Batches
                    // lost from the end of a segment with segments after it leave a
                    // gap in the offsets, which the caller checks.)
                    let padding = zeros_to_end(&file, position).await?;
                    if !padding && expected < reordered_from {
                        let followed = match intact_size {
                            Some(size) => valid_batch_at(&file, position + size).await?,
                            None => false,
                        };
                        if followed {
                            return Ok(Recovered::Damaged { reason, position, offset: expected });
                        }
                    }
                    if padding {
                        if file_len - position > PADDING_QUIET_BYTES {
                            info!(
                                segment = %file.path().display(), position,
                                zeros = file_len - position,
                                "trimming zeros after the last batch (unsealed segment)"
                            );
                        }
                        break Recovered::Padding { position };
                    }
                    break Recovered::Cut { reason, position, bytes: file_len - position };
                }
            }
        };
        segment.size = position;
        Ok(outcome)
    }

    /// Ends the recovery of a scanned segment: cuts the file at `position` (a torn tail or
    /// padding) and empties its index files (the flush at the end of recovery rewrites
    /// them from memory).
    async fn finish_scan(&self, segment: &mut Segment, position: u64) -> Result<(), LogError> {
        let file = segment.log.clone();
        if position < file.len() {
            file.truncate(position).await.map_err(io_error(file.path()))?;
        }
        segment.size = position;
        for index_file in [&segment.index_file, &segment.time_file] {
            index_file.truncate(0).await.map_err(io_error(index_file.path()))?;
        }
        Ok(())
    }

    /// True when the segment `base` starts with a whole, valid batch.
    async fn starts_with_valid_batch(&self, base: i64) -> Result<bool, LogError> {
        let path = self.dir.join(segment_file_name(base, "log"));
        let file =
            SegmentFile::open(&path, IoMode::Buffered, None).await.map_err(io_error(&path))?;
        valid_batch_at(&file, 0).await
    }
}

/// True when the last block of `file` is all zeros: an unsealed direct-mode segment.
pub(super) async fn ends_in_zeros(file: &SegmentFile) -> Result<bool, LogError> {
    let len = file.len();
    Ok(len > 0 && zeros_to_end(file, len.saturating_sub(4096)).await?)
}

/// True when the file holds only zeros from `position` to its end: what a direct-mode
/// segment has after its last batch until it is sealed (the padding of the last block,
/// and the space allocated ahead of the writes), not a sign of damage.
pub(super) async fn zeros_to_end(file: &SegmentFile, mut position: u64) -> Result<bool, LogError> {
    while position < file.len() {
        let bytes =
            file.read_at(position, RECOVERY_READ_BYTES).await.map_err(io_error(file.path()))?;
        if bytes.is_empty() {
            break;
        }
        if bytes.iter().any(|byte| *byte != 0) {
            return Ok(false);
        }
        position += bytes.len() as u64;
    }
    Ok(true)
}

pub(super) enum Recovered {
    /// Every byte is a valid batch.
    Clean,
    /// Valid batches up to `position`, zeros after it.
    Padding { position: u64 },
    /// A torn tail, cut at `position`: `bytes` were dropped from this segment.
    Cut { reason: String, position: u64, bytes: u64 },
    /// An invalid batch at `position` (offset `offset` expected there) with a valid batch
    /// after it: left as it is.
    Damaged { reason: String, position: u64, offset: i64 },
}

/// True when a whole batch with a valid CRC starts at `position` of `file`.
pub(super) async fn valid_batch_at(file: &SegmentFile, position: u64) -> Result<bool, LogError> {
    let file_len = file.len();
    if file_len.saturating_sub(position) < HEADER_BYTES as u64 {
        return Ok(false);
    }
    let header = file.read_at(position, HEADER_BYTES).await.map_err(io_error(file.path()))?;
    let Ok(size) = batch::batch_size(&header) else { return Ok(false) };
    if size as u64 > file_len - position {
        return Ok(false);
    }
    let bytes = file.read_at(position, size).await.map_err(io_error(file.path()))?;
    Ok(Batch::parse(&bytes).is_ok_and(|(one, _)| one.validate(usize::MAX).is_ok()))
}
