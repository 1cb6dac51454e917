//! Sparse offset and time indexes of one segment, in Kafka's on-disk format.
//!
//! `.index` entries are 8 bytes: relative offset (u32, offset - segment base) and the
//! byte position of a batch in the `.log` file (u32). `.timeindex` entries are 12 bytes:
//! a timestamp (i64) and a relative offset (u32). Both big-endian, both strictly
//! increasing. Kafka mmaps these files; we keep the entries in memory (a lookup is a binary
//! search over a `Vec`, with no page fault that could stall a shard) and write the new
//! entries out when the log flushes. Entries not yet on disk are rebuilt by recovery, which
//! re-reads every batch after the recovery point anyway.

use thiserror::Error;

pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 12;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IndexError {
    #[error("index file length {len} is not a multiple of the entry size {entry}")]
    BadLength { len: usize, entry: usize },
    #[error("index entry {at} is not after its predecessor")]
    NotIncreasing { at: usize },
    #[error("index entry {at} points past the end of the log ({position} > {log_bytes})")]
    PastEnd { at: usize, position: u32, log_bytes: u64 },
}

/// One `.index` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One `.timeindex` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// What memory knows about the batch an entry names, beyond Kafka's file format: its base
/// offset and where it ends. Filled for entries made by appends and recovery scans;
/// unknown for entries loaded from a trusted index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchExtent {
    pub base_relative_offset: u32,
    pub end_position: u32,
}

/// Where the batch holding an offset starts, as far as the index can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// The batch starts at `position`, holds relative offsets from `base_relative_offset`,
    /// and is `size` bytes long: no read needed.
    Exact { position: u32, base_relative_offset: u32, size: u32 },
    /// Scan batch headers from `position`.
    ScanFrom(u32),
}

/// The offset index of one segment.
#[derive(Debug, Default, Clone)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
    /// Parallel to `entries`; `None` where unknown.
    extents: Vec<Option<BatchExtent>>,
    /// Entries `[..flushed]` are in the file.
    flushed: usize,
}

impl OffsetIndex {
    /// Parses and checks a `.index` file's bytes against the log's size.
    pub fn decode(bytes: &[u8], log_bytes: u64) -> Result<OffsetIndex, IndexError> {
        if bytes.len() % OFFSET_ENTRY_BYTES != 0 {
            return Err(IndexError::BadLength { len: bytes.len(), entry: OFFSET_ENTRY_BYTES });
        }
        let mut entries: Vec<OffsetEntry> = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
        for (at, raw) in bytes.chunks_exact(OFFSET_ENTRY_BYTES).enumerate() {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes(raw[0..4].try_into().expect("4 bytes")),
                position: u32::from_be_bytes(raw[4..8].try_into().expect("4 bytes")),
            };
            if let Some(last) = entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return Err(IndexError::NotIncreasing { at });
                }
            }
            if u64::from(entry.position) >= log_bytes {
                return Err(IndexError::PastEnd { at, position: entry.position, log_bytes });
            }
            entries.push(entry);
        }
        let flushed = entries.len();
        let extents = vec![None; entries.len()];
        Ok(OffsetIndex { entries, extents, flushed })
    }

    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
    }

    /// Appends an entry for a batch whose extent is known.
    pub fn append_batch(&mut self, entry: OffsetEntry, extent: BatchExtent) {
        assert!(extent.base_relative_offset <= entry.relative_offset);
        assert!(extent.end_position > entry.position);
        self.append(entry);
        *self.extents.last_mut().expect("just appended") = Some(extent);
    }

    /// Finds where the batch holding `relative_offset` starts. When the floor entry's
    /// batch is followed directly by the next entry's batch (every batch indexed, as with
    /// batches larger than `index.interval.bytes`), the answer is exact with no I/O.
    pub fn locate(&self, relative_offset: u32) -> Located {
        let after = self.entries.partition_point(|entry| entry.relative_offset < relative_offset);
        // `after` is the first entry whose batch ends at or past the target.
        if let Some(entry) = self.entries.get(after) {
            if let Some(extent) = self.extents[after] {
                if extent.base_relative_offset <= relative_offset {
                    return Located::Exact {
                        position: entry.position,
                        base_relative_offset: extent.base_relative_offset,
                        size: extent.end_position - entry.position,
                    };
                }
            }
        }
        // Otherwise scan from the end of the last batch wholly before the target.
        match after.checked_sub(1) {
            Some(floor) => match self.extents[floor] {
                Some(extent) => Located::ScanFrom(extent.end_position),
                None => Located::ScanFrom(self.entries[floor].position),
            },
            None => Located::ScanFrom(0),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn append(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset);
            assert!(entry.position > last.position);
        }
        self.entries.push(entry);
        self.extents.push(None);
    }

    /// The last entry with `relative_offset <= target`: where to start scanning for it.
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self.entries.partition_point(|entry| entry.relative_offset <= relative_offset);
        after.checked_sub(1).map(|at| self.entries[at])
    }

    /// Drops entries at or past `position` (truncation of the log file).
    pub fn truncate_to_position(&mut self, position: u64) {
        let keep = self.entries.partition_point(|entry| u64::from(entry.position) < position);
        self.entries.truncate(keep);
        self.extents.truncate(keep);
        self.flushed = self.flushed.min(keep);
    }

    /// The bytes of entries not yet written, and the file position they go to.
    pub fn unflushed(&self) -> (u64, Vec<u8>) {
        let mut out = Vec::with_capacity((self.entries.len() - self.flushed) * OFFSET_ENTRY_BYTES);
        for entry in &self.entries[self.flushed..] {
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
            out.extend_from_slice(&entry.position.to_be_bytes());
        }
        ((self.flushed * OFFSET_ENTRY_BYTES) as u64, out)
    }

    pub fn mark_flushed(&mut self) {
        self.flushed = self.entries.len();
    }

    /// Whether the file holds more entries than memory (after truncation): it must then
    /// be cut to `flushed` entries before appending.
    pub fn file_len(&self) -> u64 {
        (self.flushed * OFFSET_ENTRY_BYTES) as u64
    }
}

/// The time index of one segment.
#[derive(Debug, Default, Clone)]
pub struct TimeIndex {
    entries: Vec<TimeEntry>,
    flushed: usize,
}

impl TimeIndex {
    pub fn decode(bytes: &[u8]) -> Result<TimeIndex, IndexError> {
        if bytes.len() % TIME_ENTRY_BYTES != 0 {
            return Err(IndexError::BadLength { len: bytes.len(), entry: TIME_ENTRY_BYTES });
        }
        let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
        for (at, raw) in bytes.chunks_exact(TIME_ENTRY_BYTES).enumerate() {
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(raw[0..8].try_into().expect("8 bytes")),
                relative_offset: u32::from_be_bytes(raw[8..12].try_into().expect("4 bytes")),
            };
            if let Some(last) = entries.last() {
                // Kafka appends only a strictly larger timestamp, at a later-or-equal
                // offset (the closing entry of a segment may repeat the offset).
                if entry.timestamp <= last.timestamp || entry.relative_offset < last.relative_offset
                {
                    return Err(IndexError::NotIncreasing { at });
                }
            }
            entries.push(entry);
        }
        let flushed = entries.len();
        Ok(TimeIndex { entries, flushed })
    }

    pub fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Appends when the timestamp is larger than the last entry's (Kafka's
    /// `maybeAppend`); returns whether it did.
    pub fn maybe_append(&mut self, entry: TimeEntry) -> bool {
        if let Some(last) = self.entries.last() {
            if entry.timestamp <= last.timestamp {
                return false;
            }
            assert!(entry.relative_offset >= last.relative_offset);
        }
        self.entries.push(entry);
        true
    }

    /// The last entry with `timestamp <= target`.
    pub fn lookup(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self.entries.partition_point(|entry| entry.timestamp <= timestamp);
        after.checked_sub(1).map(|at| self.entries[at])
    }

    /// Drops entries at or past `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = self.entries.partition_point(|entry| entry.relative_offset < relative_offset);
        self.entries.truncate(keep);
        self.flushed = self.flushed.min(keep);
    }

    pub fn unflushed(&self) -> (u64, Vec<u8>) {
        let mut out = Vec::with_capacity((self.entries.len() - self.flushed) * TIME_ENTRY_BYTES);
        for entry in &self.entries[self.flushed..] {
            out.extend_from_slice(&entry.timestamp.to_be_bytes());
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        ((self.flushed * TIME_ENTRY_BYTES) as u64, out)
    }

    pub fn mark_flushed(&mut self) {
        self.flushed = self.entries.len();
    }

    pub fn file_len(&self) -> u64 {
        (self.flushed * TIME_ENTRY_BYTES) as u64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let mut index = OffsetIndex::default();
        for i in 1..=100u32 {
            index.append(OffsetEntry { relative_offset: i * 10, position: i * 4096 });
        }
        assert_eq!(index.lookup(5), None);
        assert_eq!(index.lookup(10).unwrap().position, 4096);
        assert_eq!(index.lookup(19).unwrap().position, 4096);
        assert_eq!(index.lookup(20).unwrap().position, 8192);
        assert_eq!(index.lookup(u32::MAX).unwrap().relative_offset, 1000);
    }

    #[test]
    fn locate_is_exact_for_consecutive_indexed_batches() {
        let mut index = OffsetIndex::default();
        // Batches [0..=9] at 0..5000 (not indexed), [10..=19] at 5000..9000,
        // [20..=29] at 9000..13000, then [30..=39] at 13000..17000 (not indexed),
        // [40..=49] at 17000..21000.
        let extent = |base, end| BatchExtent { base_relative_offset: base, end_position: end };
        index.append_batch(OffsetEntry { relative_offset: 19, position: 5000 }, extent(10, 9000));
        index.append_batch(OffsetEntry { relative_offset: 29, position: 9000 }, extent(20, 13000));
        index.append_batch(OffsetEntry { relative_offset: 49, position: 17000 }, extent(40, 21000));
        assert_eq!(index.locate(3), Located::ScanFrom(0));
        let exact =
            |position, base, size| Located::Exact { position, base_relative_offset: base, size };
        assert_eq!(index.locate(10), exact(5000, 10, 4000));
        assert_eq!(index.locate(19), exact(5000, 10, 4000));
        assert_eq!(index.locate(25), exact(9000, 20, 4000));
        assert_eq!(index.locate(35), Located::ScanFrom(13000));
        assert_eq!(index.locate(45), exact(17000, 40, 4000));
        assert_eq!(index.locate(60), Located::ScanFrom(21000));
        // Entries loaded from a file know no extents: scans from the floor entry.
        let (_, bytes) = index.unflushed();
        let loaded = OffsetIndex::decode(&bytes, 30_000).unwrap();
        assert_eq!(loaded.locate(25), Located::ScanFrom(5000));
    }

    #[test]
    fn offset_index_file_round_trip_and_checks() {
        let mut index = OffsetIndex::default();
        index.append(OffsetEntry { relative_offset: 3, position: 5000 });
        index.append(OffsetEntry { relative_offset: 9, position: 9000 });
        let (at, bytes) = index.unflushed();
        assert_eq!(at, 0);
        assert_eq!(bytes, [0, 0, 0, 3, 0, 0, 0x13, 0x88, 0, 0, 0, 9, 0, 0, 0x23, 0x28]);
        let decoded = OffsetIndex::decode(&bytes, 10_000).unwrap();
        assert_eq!(decoded.entries(), index.entries());
        assert!(matches!(
            OffsetIndex::decode(&bytes[..7], 10_000),
            Err(IndexError::BadLength { .. })
        ));
        assert!(matches!(OffsetIndex::decode(&bytes, 9000), Err(IndexError::PastEnd { .. })));
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(matches!(
            OffsetIndex::decode(&swapped, 10_000),
            Err(IndexError::NotIncreasing { at: 1 })
        ));
        index.mark_flushed();
        index.truncate_to_position(9000);
        assert_eq!(index.len(), 1);
        assert_eq!(index.file_len(), 8);
    }

    #[test]
    fn time_index_keeps_only_increasing_timestamps() {
        let mut index = TimeIndex::default();
        assert!(index.maybe_append(TimeEntry { timestamp: 100, relative_offset: 0 }));
        assert!(!index.maybe_append(TimeEntry { timestamp: 100, relative_offset: 5 }));
        assert!(!index.maybe_append(TimeEntry { timestamp: 50, relative_offset: 6 }));
        assert!(index.maybe_append(TimeEntry { timestamp: 200, relative_offset: 7 }));
        assert_eq!(index.lookup(99), None);
        assert_eq!(index.lookup(150).unwrap().relative_offset, 0);
        assert_eq!(index.lookup(200).unwrap().relative_offset, 7);
        let (_, bytes) = index.unflushed();
        assert_eq!(TimeIndex::decode(&bytes).unwrap().entries(), index.entries());
        index.truncate_to_offset(7);
        assert_eq!(index.entries().len(), 1);
    }
}
