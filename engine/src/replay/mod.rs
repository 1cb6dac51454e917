//! Reading a partition's log back when it opens: whole batches, whatever their size and
//! position, within the range recovery left (log start offset to log end offset); and,
//! from that, the partition's producer state and aborted-transaction index (the newest
//! producer snapshot, then every producer batch after it).
//!
//! Every reader at open goes through [`for_each_chunk`]. A read of the log is a byte
//! range (`Log::read`, built for Fetch, which may end inside a batch as Kafka's fetches
//! do); this module trims each chunk to the whole batches in it and carries on from the
//! first batch it dropped, so a batch that crosses a chunk's end is read whole in the
//! next chunk, and a batch larger than a chunk is read whole on its own.

use std::path::Path;

use thiserror::Error;
use tracing::{error, warn};

use crate::batch::{self, BatchError, BatchIter};
use crate::log::{segment_file_name, Log, LogError};
use crate::producer::{LoggedBatch, ProducerStates};
use crate::txnindex::{self, AbortedTxn, TxnIndex};

pub use crate::limits::REPLAY_CHUNK_BYTES as CHUNK_BYTES;

/// What a visitor of [`for_each_chunk`] fails with: its own error, kept whole (a caller
/// may downcast it), or a message (`?` turns a `String` into one).
pub type VisitError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("batch at offset {offset}: {source}")]
    Batch { offset: i64, source: BatchError },
    #[error("no whole batch at offset {offset} below the log end offset {end}")]
    Missing { offset: i64, end: i64 },
    /// The visitor of [`for_each_chunk`] refused a chunk; `source` is its error.
    #[error("records from offset {offset}: {source}")]
    Decode { offset: i64, source: VisitError },
}

/// Reads `log` from `from` up to `end` (exclusive, a batch boundary: the log end offset
/// or high watermark) in chunks that each hold whole batches only, handing each chunk
/// and the offset it was read from to `visit`. The first batch of the first chunk may
/// start before `from` (the batch holding it); every later chunk starts where the
/// previous one's last batch ended.
pub async fn for_each_chunk(
    log: &Log,
    from: i64,
    end: i64,
    mut visit: impl FnMut(i64, &[u8]) -> Result<(), VisitError>,
) -> Result<(), ReplayError> {
    let mut offset = from;
    while offset < end {
        let slice = log.read(offset, CHUNK_BYTES, end, true).await?;
        let bytes = slice.read().await?;
        let (whole, next) = whole_batches(&bytes, offset)?;
        if whole == 0 || next <= offset {
            return Err(ReplayError::Missing { offset, end });
        }
        visit(offset, &bytes[..whole]).map_err(|source| ReplayError::Decode { offset, source })?;
        offset = next;
    }
    Ok(())
}

/// The length of the prefix of `bytes` that holds whole batches, and the offset after its
/// last batch (`offset` when it holds none). A batch cut off by the end of `bytes` ends
/// the prefix; damage inside the prefix (a batch that does not parse) is an error.
fn whole_batches(bytes: &[u8], offset: i64) -> Result<(usize, i64), ReplayError> {
    let mut at = 0usize;
    let mut next = offset;
    while bytes.len() - at >= batch::LOG_OVERHEAD {
        let size = batch::batch_size(&bytes[at..])
            .map_err(|source| ReplayError::Batch { offset: next, source })?;
        if bytes.len() - at < size {
            break;
        }
        let (one, _) = batch::Batch::parse(&bytes[at..at + size])
            .map_err(|source| ReplayError::Batch { offset: next, source })?;
        next = one.last_offset() + 1;
        at += size;
    }
    Ok((at, next))
}

/// A partition's producer state as rebuilt at open.
#[derive(Debug, Default)]
pub struct ProducerState {
    pub producers: ProducerStates,
    pub aborted: TxnIndex,
    /// Producer batches replayed (after the snapshot, if one was used).
    pub batches_replayed: usize,
    /// The offset of the snapshot the replay started from.
    pub snapshot_offset: Option<i64>,
}

/// Rebuilds a partition's producer state and aborted-transaction index when it opens:
/// from the newest producer snapshot at or below the log end (written at clean
/// shutdown), then every producer batch after it (the whole log without one). Aborted
/// transactions the replay finds are added to the `.txnindex` files. A corrupt
/// `.txnindex` is rebuilt like the other indexes: its files go, and the whole log is
/// replayed (which writes the entries again).
pub async fn rebuild_producer_state(log: &Log) -> Result<ProducerState, ReplayError> {
    let dir = log.dir();
    let end = log.log_end_offset();
    let start = log.log_start_offset();
    let bases = log.segment_base_offsets();
    let (mut aborted, snapshot) = match txnindex::load(dir, &bases) {
        Ok(aborted) => (aborted, newest_snapshot(dir, end)),
        Err(reason) => {
            warn!(dir = %dir.display(), %reason, "aborted-transaction index unreadable; rebuilding it from the log");
            for &base in &bases {
                let _ = std::fs::remove_file(dir.join(segment_file_name(base, "txnindex")));
            }
            (TxnIndex::default(), None)
        }
    };
    aborted.truncate(end);
    let snapshot_offset = snapshot.as_ref().map(|(offset, _)| *offset);
    let (mut producers, from) = match snapshot {
        Some((offset, states)) => (states, offset),
        None => (ProducerStates::default(), start),
    };
    let mut batches_replayed = 0usize;
    let mut fresh_aborts = Vec::new();
    for_each_chunk(log, from.max(start), end, |_, chunk| {
        for batch in BatchIter::new(chunk) {
            let batch = batch?;
            let next = batch.last_offset() + 1;
            let Some(logged) = LoggedBatch::of(&batch) else { continue };
            batches_replayed += 1;
            let Some(done) = producers.replay(&logged) else { continue };
            if let (false, Some(first_offset)) = (done.committed, done.first_offset) {
                let lso = producers.first_unstable_offset().map_or(next, |f| f.min(next));
                fresh_aborts.push(AbortedTxn {
                    producer_id: done.producer_id,
                    first_offset,
                    last_offset: done.last_offset,
                    last_stable_offset: lso,
                });
            }
        }
        Ok(())
    })
    .await?;
    for entry in fresh_aborts {
        record_abort(dir, &bases, &mut aborted, entry);
    }
    Ok(ProducerState { producers, aborted, batches_replayed, snapshot_offset })
}

/// Adds an aborted transaction to `index` under the segment (of `bases`) that holds its
/// marker, and appends it to that segment's `.txnindex` file unless the index had it.
/// One small write per aborted transaction and partition (see [`crate::txnindex`]).
pub fn record_abort(dir: &Path, bases: &[i64], index: &mut TxnIndex, entry: AbortedTxn) {
    let at = bases.partition_point(|&base| base <= entry.last_offset);
    let base = bases.get(at.saturating_sub(1)).copied().unwrap_or(0);
    if !index.add(base, entry) {
        return;
    }
    if let Err(error) = txnindex::append_entry(dir, base, &entry) {
        error!(dir = %dir.display(), %error, "writing the aborted-transaction index failed");
    }
}

/// The producer snapshots in `dir` (`<offset>.snapshot`), by offset.
pub fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut offsets: Vec<i64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".snapshot").and_then(|stem| stem.parse().ok())
        })
        .collect();
    offsets.sort_unstable();
    offsets
}

/// The newest readable producer snapshot at or below `end`, and its offset. Snapshots
/// past the end (the log was cut) and unreadable ones are skipped with a log line.
pub fn newest_snapshot(dir: &Path, end: i64) -> Option<(i64, ProducerStates)> {
    for offset in snapshot_offsets(dir).into_iter().rev().filter(|&o| o <= end) {
        let path = dir.join(segment_file_name(offset, "snapshot"));
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| ProducerStates::decode_snapshot(&bytes).map_err(|e| e.to_string()))
        {
            Ok(states) => return Some((offset, states)),
            Err(error) => warn!(path = %path.display(), %error, "producer snapshot skipped"),
        }
    }
    None
}

/// Writes `producers` as the snapshot of a log ending at `end`: `<end>.snapshot` (temp
/// file, rename), and removes older snapshots. Called at shutdown only, after every
/// request finished, so the state is exactly that of the log end. Not fsynced: a snapshot
/// lost or torn by a crash fails its CRC or is missing, and the next start replays the
/// log instead (slower, not wrong).
pub fn write_snapshot(dir: &Path, end: i64, producers: &ProducerStates) -> std::io::Result<()> {
    let bytes = producers.encode_snapshot();
    let path = dir.join(segment_file_name(end, "snapshot"));
    let temp = path.with_extension("snapshot.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
    }
    std::fs::rename(&temp, &path)?;
    for offset in snapshot_offsets(dir).into_iter().filter(|&o| o != end) {
        let _ = std::fs::remove_file(dir.join(segment_file_name(offset, "snapshot")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
