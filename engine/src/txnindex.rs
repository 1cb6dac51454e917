//! The aborted-transaction index of a partition: Kafka's `.txnindex` files, one per
//! segment, each a sequence of 34-byte entries (version i16 = 0, producer id i64, first
//! offset i64, last offset i64, last stable offset i64). An entry is written to the
//! segment that holds the abort marker (`last_offset`). A read_committed fetch gets the
//! entries that overlap what it reads, so the client can drop the aborted records.
//!
//! Sans-I/O except for [`append_entry`] and [`load`], which use plain file calls: an entry
//! is written once per aborted transaction and partition, never on the produce or fetch
//! path of data batches. Entries are not fsynced when written; after a crash the log-tail
//! replay that rebuilds the producer state re-adds the entries of markers after the
//! producer snapshot (`TxnIndex::add` ignores an entry it already has).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::log::segment_file_name;

pub const ENTRY_BYTES: usize = 34;
const VERSION: i16 = 0;

/// A `.txnindex` entry of a version this broker does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("entry version {version}")]
pub struct UnknownVersion {
    pub version: i16,
}

/// Why the `.txnindex` files of a partition could not be loaded: a file that could not be
/// read, or one that holds an entry this broker does not read. Either way the caller
/// rebuilds the index from the log.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Decode { path: PathBuf, source: UnknownVersion },
}

/// One aborted transaction on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// The offset of the transaction's first batch on the partition.
    pub first_offset: i64,
    /// The offset of the abort marker.
    pub last_offset: i64,
    /// The last stable offset once the transaction ended.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[0..2].copy_from_slice(&VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        out[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        out
    }

    /// Decodes a whole file's entries. A torn last entry (a crash mid-write) is dropped;
    /// an entry of another version is an error.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<AbortedTxn>, UnknownVersion> {
        let mut out = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
        for entry in bytes.chunks_exact(ENTRY_BYTES) {
            let version = i16::from_be_bytes([entry[0], entry[1]]);
            if version != VERSION {
                return Err(UnknownVersion { version });
            }
            let i64_at = |at: usize| i64::from_be_bytes(entry[at..at + 8].try_into().expect("8"));
            out.push(AbortedTxn {
                producer_id: i64_at(2),
                first_offset: i64_at(10),
                last_offset: i64_at(18),
                last_stable_offset: i64_at(26),
            });
        }
        Ok(out)
    }
}

/// The aborted transactions of a partition, by the base offset of the segment whose
/// `.txnindex` holds them.
#[derive(Debug, Clone, Default)]
pub struct TxnIndex {
    segments: BTreeMap<i64, Vec<AbortedTxn>>,
}

impl TxnIndex {
    /// Adds an entry to segment `base`'s list; `false` when an entry with the same marker
    /// offset is there already (a replay of a marker whose entry was written).
    pub fn add(&mut self, base: i64, entry: AbortedTxn) -> bool {
        let known = self.segments.values().flatten().any(|e| e.last_offset == entry.last_offset);
        if known {
            return false;
        }
        self.segments.entry(base).or_default().push(entry);
        true
    }

    /// Replaces segment `base`'s entries (loaded from its file).
    pub fn set_segment(&mut self, base: i64, entries: Vec<AbortedTxn>) {
        if entries.is_empty() {
            self.segments.remove(&base);
        } else {
            self.segments.insert(base, entries);
        }
    }

    /// The aborted transactions a fetch from `fetch_offset` up to `upper` (exclusive)
    /// must know of, as (producer id, first offset), by first offset: every entry whose
    /// marker is at or after the fetch offset and whose first batch is before the bound.
    pub fn collect(&self, fetch_offset: i64, upper: i64) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .segments
            .values()
            .flatten()
            .filter(|e| e.last_offset >= fetch_offset && e.first_offset < upper)
            .map(|e| (e.producer_id, e.first_offset))
            .collect();
        out.sort_by_key(|&(pid, first)| (first, pid));
        out
    }

    /// Forgets the entries of segments that are gone (retention), returning how many
    /// segments were dropped.
    pub fn retain_segments(&mut self, live: &[i64]) -> usize {
        let before = self.segments.len();
        self.segments.retain(|base, _| live.binary_search(base).is_ok());
        before - self.segments.len()
    }

    /// Forgets entries whose marker is at or past `end` (the log was cut there).
    pub fn truncate(&mut self, end: i64) {
        for entries in self.segments.values_mut() {
            entries.retain(|e| e.last_offset < end);
        }
        self.segments.retain(|_, entries| !entries.is_empty());
    }

    pub fn len(&self) -> usize {
        self.segments.values().map(Vec::len).sum()
    }

    /// The entries of segment `base`, in the order they were added.
    pub fn segment(&self, base: i64) -> &[AbortedTxn] {
        self.segments.get(&base).map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// Replaces segment `base`'s `.txnindex` file in `dir` with `entries` (a temporary file
/// renamed over it, so a crash leaves the old entries or the new ones); with no entries
/// the file goes. Used when the log is cut inside the segment.
pub fn rewrite(dir: &Path, base: i64, entries: &[AbortedTxn]) -> std::io::Result<()> {
    let path = dir.join(segment_file_name(base, "txnindex"));
    if entries.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    let temp = path.with_extension("txnindex.tmp");
    let bytes: Vec<u8> = entries.iter().flat_map(AbortedTxn::encode).collect();
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, &path)
}

/// Appends one entry to segment `base`'s `.txnindex` file in `dir`.
pub fn append_entry(dir: &Path, base: i64, entry: &AbortedTxn) -> std::io::Result<()> {
    let path = dir.join(segment_file_name(base, "txnindex"));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&entry.encode())
}

/// Loads the `.txnindex` files of the segments `bases` in `dir` (a missing file: no
/// aborted transaction in that segment).
pub fn load(dir: &Path, bases: &[i64]) -> Result<TxnIndex, LoadError> {
    let mut index = TxnIndex::default();
    for &base in bases {
        let path = dir.join(segment_file_name(base, "txnindex"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entries = AbortedTxn::decode_all(&bytes)
                    .map_err(|source| LoadError::Decode { path: path.clone(), source })?;
                index.set_segment(base, entries);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoadError::Read { path, source }),
        }
    }
    Ok(index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(pid: i64, first: i64, last: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: 0,
        }
    }

    #[test]
    fn entries_are_kafkas_34_bytes() {
        let e = AbortedTxn {
            producer_id: 0x0102,
            first_offset: 3,
            last_offset: 4,
            last_stable_offset: 5,
        };
        let bytes = e.encode();
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(&bytes[2..10], &0x0102i64.to_be_bytes());
        assert_eq!(&bytes[26..], &5i64.to_be_bytes());
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes);
        two.extend_from_slice(&bytes[..10]); // torn
        assert_eq!(AbortedTxn::decode_all(&two).unwrap(), vec![e, e]);
        two[ENTRY_BYTES + 1] = 9;
        assert!(AbortedTxn::decode_all(&two).is_err());
    }

    #[test]
    fn collect_finds_what_overlaps_a_fetch() {
        let mut index = TxnIndex::default();
        assert!(index.add(0, entry(1, 0, 10)));
        assert!(!index.add(0, entry(1, 0, 10)));
        index.add(100, entry(2, 90, 120));
        index.add(100, entry(3, 130, 140));
        assert_eq!(index.collect(0, 1000), vec![(1, 0), (2, 90), (3, 130)]);
        assert_eq!(index.collect(11, 1000), vec![(2, 90), (3, 130)]);
        assert_eq!(index.collect(11, 130), vec![(2, 90)]);
        assert_eq!(index.collect(141, 1000), vec![]);
        index.truncate(130);
        assert_eq!(index.len(), 2);
        assert_eq!(index.retain_segments(&[100]), 1);
        assert_eq!(index.collect(0, 1000), vec![(2, 90)]);
    }

    #[test]
    fn files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        append_entry(dir.path(), 0, &entry(1, 0, 10)).unwrap();
        append_entry(dir.path(), 0, &entry(2, 5, 12)).unwrap();
        append_entry(dir.path(), 50, &entry(3, 60, 70)).unwrap();
        let index = load(dir.path(), &[0, 50, 100]).unwrap();
        assert_eq!(index.len(), 3);
        assert_eq!(index.collect(11, 100), vec![(2, 5), (3, 60)]);
    }
}
