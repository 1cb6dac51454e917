//! Appending to a log: validating and placing batches, assigning offsets, indexing,
//! rolling to a new segment, and flushing segments and indexes to disk.

use std::rc::Rc;

use tracing::warn;

use crate::batch::{self, Batch};
use crate::io::{IndexFile, SegmentFile};

use super::{io_error, AppendInfo, Log, LogError};

impl Log {
    /// Appends one or more batches laid out back to back in `batches`: validates every
    /// batch (magic, CRC, size against `max.message.bytes`) before writing any, assigns
    /// offsets by rewriting base offsets in place, and writes the bytes as they are.
    pub async fn append(&self, batches: &mut [u8]) -> Result<AppendInfo, LogError> {
        self.append_then(batches, |_| {}).await
    }

    /// [`append`](Self::append), calling `on_appended` with the offsets assigned at the
    /// moment the batches become part of the log (the log end offset moves), before any
    /// `.await`: state kept beside the log (producer sequences, open transactions, which
    /// bound what read_committed fetches may see) then changes together with the log end.
    /// In direct mode the append is acknowledged later, once its write has landed, and
    /// reads and other appends run meanwhile.
    pub async fn append_then(
        &self,
        batches: &mut [u8],
        on_appended: impl FnOnce(&AppendInfo),
    ) -> Result<AppendInfo, LogError> {
        self.append_admitted(batches, || Ok(()), on_appended).await
    }

    /// [`append_then`](Self::append_then), asking `admit` once the append holds the log
    /// (after every earlier writer): an `Err(reason)` refuses it with
    /// [`LogError::Refused`] before anything is written. A partition's leadership is
    /// checked there, so an append that waited across a leader change is not written.
    pub async fn append_admitted(
        &self,
        batches: &mut [u8],
        admit: impl FnOnce() -> Result<(), String>,
        on_appended: impl FnOnce(&AppendInfo),
    ) -> Result<AppendInfo, LogError> {
        self.check_online()?;
        if batches.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        let max_message_bytes = self.options.borrow().max_message_bytes;
        for batch in batch::BatchIter::new(batches) {
            batch?.validate(max_message_bytes)?;
        }
        let permit = self.lock().await;
        self.check_online()?;
        admit().map_err(LogError::Refused)?;

        // Assign offsets: base offsets are outside the CRC, so this is a pure rewrite.
        let base_offset = self.log_end_offset();
        let mut next = base_offset;
        let mut at = 0usize;
        while at < batches.len() {
            let size = batch::batch_size(&batches[at..])?;
            let (one, _) = Batch::parse(&batches[at..])?;
            let delta = i64::from(one.last_offset_delta());
            batch::set_base_offset(&mut batches[at..at + size], next);
            next += delta + 1;
            at += size;
        }
        let last_offset = next - 1;
        let bytes_len = batches.len() as u64;

        if self.should_roll(bytes_len, last_offset) {
            self.roll(base_offset).await?;
        }
        let (file, position_expected) = {
            let state = self.state.borrow();
            (state.active().log.clone(), state.active().size)
        };
        let position = match file.append(batches).await {
            Ok(position) => position,
            Err(error) => {
                // Put the file back as it was; if even that fails the log cannot be trusted
                // until recovery runs, so it goes offline. (It fails when an earlier
                // direct-mode write failed: bytes of appends already acknowledged are lost.)
                if let Err(undo) = file.truncate(position_expected).await {
                    self.take_offline(format!("append failed ({error}) and undo failed ({undo})"));
                }
                return Err(io_error(file.path())(error));
            }
        };
        assert_eq!(position, position_expected);

        let interval = self.options.borrow().index_interval_bytes;
        let now_ms = self.clock.wall_ms();
        let mut records = 0u64;
        let mut max_timestamp = -1i64;
        let mut offset_of_max_timestamp = base_offset;
        {
            let mut state = self.state.borrow_mut();
            let segment = state.active_mut();
            let mut batch_position = position;
            for one in batch::BatchIter::new(batches) {
                let one = one.expect("validated above");
                segment.index_batch(&one, batch_position, interval);
                batch_position += one.size() as u64;
                records += u64::try_from(one.record_count()).unwrap_or(0);
                if one.max_timestamp() > max_timestamp {
                    max_timestamp = one.max_timestamp();
                    offset_of_max_timestamp = one.last_offset();
                }
            }
            segment.size = batch_position;
            segment.rolling_since_ms.get_or_insert(now_ms);
            assert_eq!(segment.next_offset, next);
            state.log_end_offset = next;
            state.unflushed_records += records;
            state.unflushed_since_ms.get_or_insert(self.clock.monotonic_ms());
        }
        let info = AppendInfo {
            base_offset,
            last_offset,
            max_timestamp,
            offset_of_max_timestamp,
            records,
            bytes: bytes_len,
        };
        on_appended(&info);
        let flush_messages = self.options.borrow().flush_messages;
        if self.state.borrow().unflushed_records >= flush_messages {
            self.flush_locked(false).await?;
        }
        // Direct mode: the write may still be in flight. Acknowledge only once it is on
        // the device (a process killed after the acknowledgement must not lose the
        // batch), but let the next append in meanwhile: its copy overlaps this write.
        drop(permit);
        if let Err(error) = file.wait_landed(position + bytes_len).await {
            // The log already counts these bytes: it cannot go on until recovery runs.
            self.take_offline(format!("a write to {} failed: {error}", file.path().display()));
            return Err(io_error(file.path())(error));
        }
        Ok(info)
    }

    fn should_roll(&self, bytes_len: u64, last_offset: i64) -> bool {
        let options = self.options.borrow();
        let state = self.state.borrow();
        let active = state.active();
        if active.size == 0 {
            return false;
        }
        let too_big = active.size + bytes_len > options.segment_bytes;
        let too_old = active
            .rolling_since_ms
            .is_some_and(|since| self.clock.wall_ms().saturating_sub(since) >= options.segment_ms);
        let offsets_overflow = last_offset - active.base_offset > i64::from(i32::MAX);
        too_big || too_old || offsets_overflow
    }

    /// Rolls now if the active segment holds anything (Kafka's `log.roll()`, used by tools
    /// and tests). Returns the new active segment's base offset.
    pub async fn roll_active(&self) -> Result<i64, LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        let (empty, log_end_offset) = {
            let state = self.state.borrow();
            (state.active().size == 0, state.log_end_offset)
        };
        if !empty {
            self.roll(log_end_offset).await?;
        }
        Ok(log_end_offset)
    }

    /// Starts a new active segment at `base_offset` (the log end offset).
    async fn roll(&self, base_offset: i64) -> Result<(), LogError> {
        // The old segment's last direct-mode write may still be in flight: wait for it
        // here, where a failure can still take the log offline (the detached seal below
        // could only log it).
        let old_file = self.state.borrow().active().log.clone();
        if let Err(error) = old_file.writes_landed().await {
            self.take_offline(format!("a write to {} failed: {error}", old_file.path().display()));
            return Err(io_error(old_file.path())(error));
        }
        let segment = self.new_segment(base_offset).await?;
        segment.log.follow(&old_file);
        let mut state = self.state.borrow_mut();
        assert_eq!(state.log_end_offset, base_offset);
        let old = state.active_mut();
        old.close_time_index();
        state.segments.insert(base_offset, segment);
        drop(state);
        // Seal the old segment off the append path (Kafka flushes it asynchronously too;
        // KAFKA-9693 showed what a synchronous fsync on roll costs). Until the seal lands,
        // recovery treats direct-mode zero padding at its end as padding, not damage.
        glommio::spawn_local(async move {
            if let Err(error) = old_file.seal().await {
                warn!(path = %old_file.path().display(), %error, "sealing a rolled segment failed");
            }
        })
        .detach();
        Ok(())
    }

    /// fsyncs everything appended so far, writes pending index entries, and moves the
    /// recovery point to the log end offset. Acks that need durability wait for this.
    pub async fn flush(&self) -> Result<(), LogError> {
        self.check_online()?;
        let _permit = self.lock().await;
        self.flush_locked(false).await
    }

    /// Flushes when `flush.ms` has passed since the oldest unflushed append. The shard
    /// calls this periodically.
    pub async fn maybe_flush(&self) -> Result<bool, LogError> {
        let flush_ms = self.options.borrow().flush_ms;
        let due = self
            .state
            .borrow()
            .unflushed_since_ms
            .is_some_and(|since| self.clock.monotonic_ms().saturating_sub(since) >= flush_ms);
        if due {
            self.flush().await?;
        }
        Ok(due)
    }

    /// Flush with the append lock held (or during open, before anyone else has the log).
    pub(super) async fn flush_locked(&self, all_segments: bool) -> Result<(), LogError> {
        struct Pending {
            base: i64,
            active: bool,
            log: Rc<SegmentFile>,
            index: (Rc<IndexFile>, u64, Vec<u8>),
            time: (Rc<IndexFile>, u64, Vec<u8>),
        }
        let (target, pending, all_segments) = {
            let state = self.state.borrow();
            let all_segments = all_segments || state.flush_all_segments;
            let from = if all_segments {
                i64::MIN
            } else {
                state
                    .segments
                    .range(..=state.recovery_point)
                    .next_back()
                    .map_or(i64::MIN, |(base, _)| *base)
            };
            let active_base = state.active().base_offset;
            let pending: Vec<Pending> = state
                .segments
                .range(from..)
                .map(|(base, segment)| {
                    let (index_at, index_bytes) = segment.offset_index.unflushed();
                    let (time_at, time_bytes) = segment.time_index.unflushed();
                    Pending {
                        base: *base,
                        active: *base == active_base,
                        log: segment.log.clone(),
                        index: (segment.index_file.clone(), index_at, index_bytes),
                        time: (segment.time_file.clone(), time_at, time_bytes),
                    }
                })
                .collect();
            (state.log_end_offset, pending, all_segments)
        };
        let result: Result<(), LogError> = async {
            for one in &pending {
                // Open, write, sync, close: an index file holds no descriptor after.
                for (file, at, bytes) in [&one.index, &one.time] {
                    file.write_at(*at, bytes).await.map_err(io_error(file.path()))?;
                }
                // A rolled segment is sealed (direct-mode padding trimmed) before the
                // recovery point passes it: recovery trusts the size of such segments.
                let synced = if one.active { one.log.sync().await } else { one.log.seal().await };
                synced.map_err(io_error(one.log.path()))?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            // A failed fsync leaves the page cache in an unknown state (fsyncgate): the
            // recovery point stays where it was and the error goes to the caller.
            warn!(dir = %self.dir.display(), %error, "flush failed");
            // A failed direct-mode write lost bytes of acknowledged appends: the log
            // cannot go on from here until recovery has cut it.
            if let Some(one) = pending.iter().find(|one| one.log.write_failed()) {
                self.take_offline(format!("a write to {} failed", one.log.path().display()));
            }
            return Err(error);
        }
        let mut state = self.state.borrow_mut();
        for one in &pending {
            if let Some(segment) = state.segments.get_mut(&one.base) {
                segment.offset_index.mark_flushed();
                segment.time_index.mark_flushed();
            }
        }
        state.recovery_point = state.recovery_point.max(target);
        if all_segments {
            state.flush_all_segments = false;
        }
        if state.log_end_offset == target {
            state.unflushed_records = 0;
            state.unflushed_since_ms = None;
        }
        Ok(())
    }
}
