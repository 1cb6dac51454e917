//! Reading a log: finding the file range of the batch holding an offset (segment map,
//! sparse index, a short scan of batch headers), and looking offsets up by timestamp.

use std::path::Path;

use crate::batch::{self, Batch, HEADER_BYTES};
use crate::io::{FileBytes, SegmentFile};

use super::index::Located;
use super::{io_error, Log, LogError, ReadSlice, TimestampOffset};
use crate::limits::SCAN_READ_BYTES;

impl Log {
    /// Finds the bytes to send for a fetch at `offset`: from the start of the batch holding
    /// `offset`, up to `max_bytes`, never past `max_offset` (exclusive: the high watermark
    /// or the log end offset), within one segment like Kafka. With `min_one_batch` the
    /// first batch is returned whole even when larger than `max_bytes` (KIP-74). The range
    /// may end inside a batch when `max_bytes` cuts it; clients drop the partial batch.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: u64,
        max_offset: i64,
        min_one_batch: bool,
    ) -> Result<ReadSlice, LogError> {
        self.check_online()?;
        let (file, segment_base, start, segment_end, limit) = {
            let state = self.state.borrow();
            if offset < state.log_start_offset || offset > state.log_end_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.log_end_offset,
                });
            }
            let max_offset = max_offset.min(state.log_end_offset);
            if offset >= max_offset {
                return Ok(ReadSlice::empty(offset));
            }
            // The segment holding `offset`: the last with base <= offset whose range
            // reaches it (an offset at a segment's end lives in the next one).
            let Some(segment) = state
                .segments
                .range(..=offset)
                .rev()
                .find(|(_, segment)| offset < segment.next_offset)
                .map(|(_, segment)| segment)
                .or_else(|| state.segments.range(offset + 1..).next().map(|(_, s)| s))
            else {
                return Ok(ReadSlice::empty(offset));
            };
            let start = segment.locate(offset);
            let limit = (max_offset < segment.next_offset)
                .then(|| (max_offset, segment.locate(max_offset)));
            (segment.log.clone(), segment.base_offset, start, segment.size, limit)
        };
        // Most lookups end here, from memory; a scan reads batch headers otherwise.
        let (position, first_base_offset, first_size) = match start {
            Located::Exact { position, base_relative_offset, size } => (
                u64::from(position),
                segment_base + i64::from(base_relative_offset),
                u64::from(size),
            ),
            Located::ScanFrom(from) => {
                match find_batch(&file, u64::from(from), segment_end, offset).await? {
                    Some((position, header)) => (position, header.base_offset, header.size),
                    None => return Ok(ReadSlice::empty(offset)),
                }
            }
        };
        let end = match limit {
            None => segment_end,
            Some((_, Located::Exact { position, .. })) => u64::from(position),
            Some((limit, Located::ScanFrom(from))) => {
                find_batch(&file, u64::from(from).max(position), segment_end, limit)
                    .await?
                    .map_or(segment_end, |(at, _)| at)
            }
        };
        if end <= position {
            return Ok(ReadSlice::empty(offset));
        }
        let mut bytes = (end - position).min(max_bytes);
        if min_one_batch && bytes < first_size {
            bytes = first_size.min(end - position);
        }
        if bytes == 0 {
            return Ok(ReadSlice::empty(offset));
        }
        Ok(ReadSlice { file: Some(file), position, bytes, first_batch_offset: first_base_offset })
    }

    /// The first offset with a record timestamp >= `timestamp` (ListOffsets by time), or
    /// `None` when every record is older. Follows Kafka: the first segment whose max
    /// timestamp reaches the target, the time index, the offset index, then a scan.
    /// Compressed batches are resolved to their base offset (the record-level answer needs
    /// a codec; the broker refines it).
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, LogError> {
        self.check_online()?;
        let (file, start, end, log_start_offset) = {
            let state = self.state.borrow();
            let Some(segment) =
                state.segments.values().find(|segment| segment.max_timestamp >= timestamp)
            else {
                return Ok(None);
            };
            let from_offset =
                segment.time_index.lookup(timestamp).map_or(segment.base_offset, |e| {
                    segment.base_offset + i64::from(e.relative_offset)
                });
            let start = segment
                .offset_index
                .lookup(segment.relative(from_offset))
                .map_or(0, |entry| u64::from(entry.position));
            (segment.log.clone(), start, segment.size, state.log_start_offset)
        };
        let mut position = start;
        while position < end {
            let header = read_header(&file, position).await?;
            if header.max_timestamp >= timestamp {
                let size = usize::try_from(header.size).expect("batch < 2 GiB");
                let bytes = file.read_at(position, size).await.map_err(io_error(file.path()))?;
                let (one, _) = Batch::parse(&bytes).map_err(|error| LogError::Corrupt {
                    path: file.path().to_path_buf(),
                    position,
                    reason: error.to_string(),
                })?;
                let found = match one.timestamp_type() {
                    batch::TimestampType::LogAppendTime => {
                        Some((one.base_offset(), one.max_timestamp()))
                    }
                    batch::TimestampType::CreateTime => match one.record_offsets_and_timestamps() {
                        Some(records) => records.into_iter().find(|(_, ts)| *ts >= timestamp),
                        None => Some((one.base_offset(), one.max_timestamp())),
                    },
                };
                if let Some((offset, found_timestamp)) = found {
                    let offset = offset.max(log_start_offset);
                    return Ok(Some(TimestampOffset { timestamp: found_timestamp, offset }));
                }
            }
            position += header.size;
        }
        Ok(None)
    }

    /// The largest record timestamp and its offset (ListOffsets MAX_TIMESTAMP, KIP-734).
    pub fn max_timestamp_and_offset(&self) -> Option<TimestampOffset> {
        let state = self.state.borrow();
        state
            .segments
            .values()
            .filter(|segment| segment.max_timestamp >= 0)
            .max_by_key(|segment| segment.max_timestamp)
            .map(|segment| TimestampOffset {
                timestamp: segment.max_timestamp,
                offset: segment.offset_of_max_timestamp,
            })
    }
}

/// The batch header fields the read path needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    pub(super) base_offset: i64,
    pub(super) last_offset: i64,
    pub(super) max_timestamp: i64,
    pub(super) size: u64,
}

pub(super) fn decode_header(bytes: &[u8], path: &Path, position: u64) -> Result<Header, LogError> {
    let corrupt = |reason: String| LogError::Corrupt { path: path.to_path_buf(), position, reason };
    let size = batch::batch_size(bytes).map_err(|e| corrupt(e.to_string()))?;
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt("truncated batch header".into()));
    }
    let base_offset = batch::base_offset_of(bytes).expect("length checked");
    let delta = i32::from_be_bytes(bytes[23..27].try_into().expect("length checked"));
    let max_timestamp = i64::from_be_bytes(bytes[35..43].try_into().expect("length checked"));
    Ok(Header {
        base_offset,
        last_offset: base_offset + i64::from(delta),
        max_timestamp,
        size: size as u64,
    })
}

pub(super) async fn read_header(file: &SegmentFile, position: u64) -> Result<Header, LogError> {
    let bytes = file.read_at(position, HEADER_BYTES).await.map_err(io_error(file.path()))?;
    decode_header(&bytes, file.path(), position)
}

/// From `position` (a batch boundary, from the index), finds the first batch below `end`
/// whose last offset is >= `target`. Reads headers in windows of `SCAN_READ_BYTES`.
pub(super) async fn find_batch(
    file: &SegmentFile,
    mut position: u64,
    end: u64,
    target: i64,
) -> Result<Option<(u64, Header)>, LogError> {
    let mut window: Option<(u64, FileBytes)> = None;
    while position < end {
        let in_window = window.as_ref().and_then(|(start, bytes)| {
            let from = usize::try_from(position.checked_sub(*start)?).ok()?;
            (from + HEADER_BYTES <= bytes.len()).then_some(from)
        });
        let header = match in_window {
            Some(from) => {
                let (_, bytes) = window.as_ref().expect("checked");
                decode_header(&bytes[from..], file.path(), position)?
            }
            None => {
                let want =
                    usize::try_from((end - position).min(SCAN_READ_BYTES as u64)).expect("small");
                let bytes = file.read_at(position, want).await.map_err(io_error(file.path()))?;
                let header = decode_header(&bytes, file.path(), position)?;
                window = Some((position, bytes));
                header
            }
        };
        if header.last_offset >= target {
            return Ok(Some((position, header)));
        }
        position += header.size;
    }
    Ok(None)
}
