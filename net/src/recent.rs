//! Direct mode's read cache: the batches a partition appended most recently, kept as the
//! very bytes that were written (the produce request's copy, offsets already assigned),
//! so a consumer at the tail is served from memory with no copy and no disk read. O_DIRECT
//! writes bypass the page cache, so without this every tail fetch would be a DMA read.
//!
//! Each partition holds its chunks (one per produce: one or more whole batches); the
//! shard bounds the total with a FIFO over all its partitions (see `ReplicaManager::remember`).
//! A fetch whose first batch is not cached falls back to a DMA read.

use std::cell::RefCell;
use std::collections::BTreeMap;

use bytes::Bytes;
use sluice_engine::batch::BatchIter;

/// One produce's batches: offsets `[base, end)`.
#[derive(Debug)]
struct Chunk {
    end: i64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
pub struct RecentBatches {
    chunks: RefCell<BTreeMap<i64, Chunk>>,
}

impl RecentBatches {
    /// Remembers the batches of `[base, end)`; `bytes` are whole batches.
    pub fn insert(&self, base: i64, end: i64, bytes: Bytes) {
        self.chunks.borrow_mut().insert(base, Chunk { end, bytes });
    }

    /// Forgets the chunk starting at `base`; returns its size if it was there.
    pub fn evict(&self, base: i64) -> Option<u64> {
        self.chunks.borrow_mut().remove(&base).map(|chunk| chunk.bytes.len() as u64)
    }

    /// Forgets everything at or after `offset` (the log was truncated there).
    pub fn truncate(&self, offset: i64) {
        let mut chunks = self.chunks.borrow_mut();
        let mut cut = chunks.split_off(&offset);
        cut.clear();
        // A chunk starting before `offset` that reaches past it holds dropped offsets.
        if let Some((&base, chunk)) = chunks.iter().next_back() {
            if chunk.end > offset {
                chunks.remove(&base);
            }
        }
    }

    /// The cached batches for a fetch at `offset`: from the batch holding it, whole
    /// batches whose last offset is below `max_offset`, up to `max_bytes` (the first batch
    /// always, KIP-74), following contiguous chunks. `None` when the batch holding
    /// `offset` is not cached.
    pub fn read(&self, offset: i64, max_bytes: u64, max_offset: i64) -> Option<Vec<Bytes>> {
        let chunks = self.chunks.borrow();
        let (&first_base, first) = chunks.range(..=offset).next_back()?;
        if offset >= first.end {
            return None;
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut next = offset;
        // Later chunks are used while contiguous: a gap ends the walk (`base > next`).
        for chunk in chunks.range(first_base..).map(|(_, chunk)| chunk) {
            let mut at = 0usize;
            for batch in BatchIter::new(&chunk.bytes) {
                // Not whole batches: do not trust the chunk.
                let batch = batch.ok()?;
                let (base, last, size) = (batch.base_offset(), batch.last_offset(), batch.size());
                let start = at;
                at += size;
                if last < next {
                    continue; // Before the fetch offset.
                }
                if base > next || last >= max_offset {
                    return finish(out); // A gap, or past the high watermark.
                }
                if !out.is_empty() && total + size as u64 > max_bytes {
                    return finish(out);
                }
                out.push(chunk.bytes.slice(start..at));
                total += size as u64;
                next = last + 1;
            }
        }
        finish(out)
    }
}

fn finish(out: Vec<Bytes>) -> Option<Vec<Bytes>> {
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_engine::batch::{encode_batch, set_base_offset, EncodeOptions, Record};

    /// `count` batches of `per` records starting at `base`, as one chunk.
    fn chunk(base: i64, count: usize, per: usize) -> (i64, Bytes) {
        let mut bytes = Vec::new();
        let mut offset = base;
        for _ in 0..count {
            let records: Vec<Record> = (0..per)
                .map(|_| Record { key: None, value: Some(vec![7; 100]), timestamp: 1 })
                .collect();
            let mut batch = encode_batch(&records, EncodeOptions::default());
            set_base_offset(&mut batch, offset);
            bytes.extend_from_slice(&batch);
            offset += per as i64;
        }
        (offset, Bytes::from(bytes))
    }

    fn bases(batches: &[Bytes]) -> Vec<i64> {
        batches.iter().map(|b| i64::from_be_bytes(b[..8].try_into().unwrap())).collect()
    }

    #[test]
    fn reads_whole_batches_from_the_one_holding_the_offset() {
        let recent = RecentBatches::default();
        let (end, bytes) = chunk(0, 3, 10);
        recent.insert(0, end, bytes);
        let (end2, bytes) = chunk(end, 2, 10);
        recent.insert(end, end2, bytes);
        assert_eq!(bases(&recent.read(15, u64::MAX, 50).unwrap()), vec![10, 20, 30, 40]);
        // The high watermark stops the walk before a batch it cuts.
        assert_eq!(bases(&recent.read(0, u64::MAX, 35).unwrap()), vec![0, 10, 20]);
        // max_bytes: the first batch always, later ones only if they fit.
        let one = recent.read(0, 1, 50).unwrap();
        assert_eq!(bases(&one), vec![0]);
        assert_eq!(recent.read(50, u64::MAX, 60), None);
    }

    #[test]
    fn gaps_eviction_and_truncation_fall_back_to_the_log() {
        let recent = RecentBatches::default();
        let (end, bytes) = chunk(0, 2, 10);
        recent.insert(0, end, bytes.clone());
        let (end2, bytes2) = chunk(30, 1, 10);
        recent.insert(30, end2, bytes2);
        // 20..30 is not cached: the walk stops at the gap.
        assert_eq!(bases(&recent.read(0, u64::MAX, 100).unwrap()), vec![0, 10]);
        assert_eq!(recent.read(25, u64::MAX, 100), None);
        assert_eq!(recent.evict(0), Some(bytes.len() as u64));
        assert_eq!(recent.read(5, u64::MAX, 100), None);
        recent.insert(0, end, bytes);
        recent.truncate(15);
        assert_eq!(recent.read(0, u64::MAX, 100), None, "the chunk holding 15 is gone");
        assert_eq!(recent.read(30, u64::MAX, 100), None);
    }
}
