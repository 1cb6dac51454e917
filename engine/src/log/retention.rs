//! Removing records: truncation to an offset (a follower following its leader),
//! advancing the log start offset, and time and size retention, which delete whole
//! segments while reads of them may still be in flight.

use std::rc::Rc;

use tracing::{info, warn};

use crate::io::SegmentFile;

use super::index::Located;
use super::{find_batch, io_error, Log, LogError, Segment};

impl Log {
    /// Removes every record at or after `offset` (a follower truncating to its leader).
    /// The batch holding `offset` goes whole, so the new log end offset is that batch's
    /// base offset (the same as `offset` whenever it is a batch boundary).
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        let (log_end_offset, first_base) = {
            let state = self.state.borrow();
            (state.log_end_offset, *state.segments.keys().next().expect("non-empty"))
        };
        if offset >= log_end_offset {
            return Ok(log_end_offset);
        }
        if offset <= first_base {
            return self.truncate_fully_locked(offset.max(0)).await;
        }
        // Whole segments at or above the target go; the one below holds the cut.
        let doomed: Vec<i64> =
            self.state.borrow().segments.range(offset..).map(|(base, _)| *base).collect();
        let old_active = self.state.borrow().active().log.clone();
        let mut deleted = Vec::new();
        for base in &doomed {
            deleted.extend(self.state.borrow_mut().segments.remove(base).map(|s| s.log));
            if let Some(file) = deleted.last() {
                keep_open_for_readers(file.clone()).await;
            }
            self.delete_segment_files(*base).await?;
        }
        if !doomed.is_empty() {
            // The segment holding the cut is active again: the cached pages the deleted
            // active one kept track of come back to it, but the deleted segments'.
            let active = self.state.borrow().active().log.clone();
            active.take_back(&old_active);
            for file in &deleted {
                active.forget(file);
            }
        }
        let (file, index_file, time_file, start, size) = {
            let state = self.state.borrow();
            let segment = state.active();
            let start = match segment.locate(offset) {
                Located::Exact { position, .. } | Located::ScanFrom(position) => position,
            };
            (
                segment.log.clone(),
                segment.index_file.clone(),
                segment.time_file.clone(),
                u64::from(start),
                segment.size,
            )
        };
        let cut = find_batch(&file, start, size, offset).await?;
        let (position, new_end) = match cut {
            Some((position, header)) => (position, header.base_offset),
            None => (size, self.state.borrow().active().next_offset),
        };
        file.truncate(position).await.map_err(io_error(file.path()))?;
        let (index_len, time_len) = {
            let mut state = self.state.borrow_mut();
            let segment = state.active_mut();
            segment.size = position;
            segment.next_offset = new_end;
            segment.offset_index.truncate_to_position(position);
            let relative_end = segment.relative(new_end);
            segment.time_index.truncate_to_offset(relative_end);
            match segment.time_index.last() {
                Some(last) => {
                    segment.max_timestamp = last.timestamp;
                    segment.offset_of_max_timestamp =
                        segment.base_offset + i64::from(last.relative_offset);
                }
                None => {
                    segment.max_timestamp = -1;
                    segment.offset_of_max_timestamp = segment.base_offset;
                }
            }
            segment.bytes_since_last_index_entry = 0;
            state.log_end_offset = new_end;
            state.recovery_point = state.recovery_point.min(new_end);
            state.log_start_offset = state.log_start_offset.min(new_end);
            let segment = state.active();
            (segment.offset_index.file_len(), segment.time_index.file_len())
        };
        // Cut stale index entries on disk now, so they never describe newer bytes.
        index_file.truncate(index_len).await.map_err(io_error(index_file.path()))?;
        time_file.truncate(time_len).await.map_err(io_error(time_file.path()))?;
        Ok(new_end)
    }

    /// Removes every segment and starts the log empty at `start` (a follower whose
    /// leader's log now starts past this log's end: Kafka's `truncateFullyAndStartAt`).
    pub async fn truncate_fully_and_start_at(&self, start: i64) -> Result<i64, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        self.truncate_fully_locked(start.max(0)).await
    }

    async fn truncate_fully_locked(&self, start: i64) -> Result<i64, LogError> {
        let bases: Vec<i64> = self.state.borrow().segments.keys().copied().collect();
        for base in &bases {
            let removed = self.state.borrow_mut().segments.remove(base);
            if let Some(segment) = removed {
                keep_open_for_readers(segment.log).await;
            }
            self.delete_segment_files(*base).await?;
        }
        let segment = self.new_segment(start).await?;
        let mut state = self.state.borrow_mut();
        state.segments.insert(start, segment);
        state.log_start_offset = start;
        state.log_end_offset = start;
        state.recovery_point = start;
        state.unflushed_records = 0;
        state.unflushed_since_ms = None;
        Ok(start)
    }

    /// Moves the log start offset forward (DeleteRecords); whole segments below it are
    /// deleted by the next [`Log::apply_retention`]. Returns the new log start offset.
    pub fn advance_log_start_offset(&self, offset: i64) -> Result<i64, LogError> {
        self.check_online()?;
        let mut state = self.state.borrow_mut();
        if offset > state.log_end_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: state.log_start_offset,
                log_end_offset: state.log_end_offset,
            });
        }
        state.log_start_offset = state.log_start_offset.max(offset);
        Ok(state.log_start_offset)
    }

    /// Deletes whole non-active segments, oldest first, while one of Kafka's rules holds:
    /// every record is below the log start offset; the newest record is older than
    /// `retention.ms`; or the log is larger than `retention.bytes` without the segment.
    /// Returns the base offsets of the deleted segments.
    pub async fn apply_retention(&self) -> Result<Vec<i64>, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        let now_ms = self.clock.wall_ms();
        let (retention_ms, retention_bytes) = {
            let options = self.options.borrow();
            (options.retention_ms, options.retention_bytes)
        };
        let doomed: Vec<i64> = {
            let state = self.state.borrow();
            let mut size = state.size_bytes();
            let mut doomed = Vec::new();
            let segments: Vec<&Segment> = state.segments.values().collect();
            for pair in segments.windows(2) {
                let (segment, next) = (pair[0], pair[1]);
                let below_start = next.base_offset <= state.log_start_offset;
                let expired = retention_ms >= 0
                    && segment.size > 0
                    && now_ms.saturating_sub(segment.max_timestamp) > retention_ms;
                let over_size = retention_bytes >= 0
                    && size.saturating_sub(segment.size) >= retention_bytes as u64
                    && size > retention_bytes as u64;
                if !(below_start || expired || over_size) {
                    break;
                }
                size -= segment.size;
                doomed.push(segment.base_offset);
            }
            doomed
        };
        for base in &doomed {
            let removed = {
                let mut state = self.state.borrow_mut();
                let removed = state.segments.remove(base).map(|segment| segment.log);
                if let Some(file) = &removed {
                    // Its pages go with the file; the active segment stops tracking them.
                    state.active().log.forget(file);
                }
                let first = *state.segments.keys().next().expect("the active segment stays");
                state.log_start_offset = state.log_start_offset.max(first);
                removed
            };
            if let Some(file) = removed {
                keep_open_for_readers(file).await;
            }
            self.delete_segment_files(*base).await?;
            info!(dir = %self.dir.display(), segment = base, "deleted segment by retention");
        }
        Ok(doomed)
    }
}

/// A segment file about to be deleted keeps its descriptor while reads still hold it
/// (reopened first if the descriptor cache had closed it), as its name is about to go.
/// A file nobody else holds just closes.
pub(super) async fn keep_open_for_readers(file: Rc<SegmentFile>) {
    if Rc::strong_count(&file) > 1 {
        if let Err(error) = file.keep_open().await {
            warn!(path = %file.path().display(), %error, "a read of a deleted segment may fail");
        }
    }
}
