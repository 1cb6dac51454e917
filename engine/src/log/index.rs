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

/// The offset index of one segment.
#[derive(Debug, Default, Clone)]
pub struct OffsetIndex {
    entries: Vec<OffsetEntry>,
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
        Ok(OffsetIndex { entries, flushed })
    }

    pub fn entries(&self) -> &[OffsetEntry] {
        &self.entries
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
