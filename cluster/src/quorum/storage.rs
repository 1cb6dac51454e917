//! Durable Raft storage for the controller quorum: raft-rs's [`Storage`] on plain blocking
//! `std::fs`, in one directory (`<data_dir>/__cluster_metadata/raft/`).
//!
//! ```text
//! raft-state    = [magic "SLRS"][format: u32 BE = 1][length: u32 BE][crc32c: u32 BE][state]
//!   state       = [term: u64 BE][vote: u64 BE][commit: u64 BE][conf state]
//! raft-snapshot = [magic "SLRP"][format: u32 BE = 1][length: u32 BE][crc32c: u32 BE][snapshot]
//!   snapshot    = [index: u64 BE][term: u64 BE][conf state][data length: u32 BE][data]
//! raft-log      = [magic "SLRL"][format: u32 BE = 1][previous index: u64 BE]
//!                 [previous term: u64 BE][crc32c of the 24 bytes before: u32 BE] frame*
//!   frame       = [length: u32 BE][crc32c of payload: u32 BE][payload]
//!   payload     = [term: u64 BE][index: u64 BE][entry type: u8]
//!                 [data length: u32 BE][data][context length: u32 BE][context]
//! conf state    = voters, learners, outgoing voters, next learners (each a list:
//!                 [count: u32 BE][raft id: u64 BE]*), then [auto leave: u8]
//! ```
//!
//! `raft-state` and `raft-snapshot` are small and replaced whole through
//! [`write_atomically`] (temp file, fsync, rename, fsync the directory), so a crash leaves
//! the old or the new file. The log is append-only; raft's "replace the suffix from index
//! i" truncates the file at that entry's frame (an in-memory index holds every frame's
//! position). The log's header names the entry just before its first frame (the snapshot
//! it follows), so the log is rewritten whole, atomically, when a snapshot drops entries.
//!
//! Writes go in this order: the snapshot file first, then the log rewritten to follow it,
//! then the state. Open therefore reconciles: entries up to the snapshot are ignored, and
//! the entries after it are kept only if the log agrees with the snapshot at its index
//! (same term there); otherwise they are from a history the snapshot replaced, and are
//! dropped. A torn or corrupt tail frame (short, bad CRC, undecodable, out of sequence)
//! is cut off with a warning, as the metadata log does.
//!
//! All entries since the snapshot are also held in memory: raft-rs reads them through
//! `&self` and treats a failed read as fatal, and compaction (see
//! [`super::QuorumNode::should_compact`]) keeps their number small.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use thiserror::Error;
use tracing::warn;

use super::{ENTRY_BYTES_MAX, SNAPSHOT_DATA_BYTES_MAX};

/// The hard state (term, vote, commit) and the conf state.
pub const STATE_FILE: &str = "raft-state";
/// The latest snapshot: its index, term, conf state and the application's bytes.
pub const SNAPSHOT_FILE: &str = "raft-snapshot";
/// The entries after the snapshot, one frame each.
pub const LOG_FILE: &str = "raft-log";

const STATE_MAGIC: [u8; 4] = *b"SLRS";
const SNAPSHOT_MAGIC: [u8; 4] = *b"SLRP";
const LOG_MAGIC: [u8; 4] = *b"SLRL";
const FORMAT: u32 = 1;
/// Magic, format, payload length, payload CRC.
const FILE_HEADER_BYTES: usize = 16;
/// Magic, format, previous index, previous term, CRC.
const LOG_HEADER_BYTES: usize = 28;
/// Payload length and payload CRC, both u32 big-endian.
const FRAME_HEADER_BYTES: usize = 8;
/// Term, index, entry type, data length, context length.
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4 + 4;
/// A frame holds one entry of at most [`ENTRY_BYTES_MAX`] bytes of data and context.
const FRAME_PAYLOAD_BYTES_MAX: usize = ENTRY_FIXED_BYTES + ENTRY_BYTES_MAX;
/// The conf state of a large quorum fits many times over.
const CONF_STATE_BYTES_MAX: usize = 64 * 1024;
const SNAPSHOT_PAYLOAD_BYTES_MAX: usize =
    8 + 8 + CONF_STATE_BYTES_MAX + 4 + SNAPSHOT_DATA_BYTES_MAX;

// Lengths are written as u32.
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SNAPSHOT_PAYLOAD_BYTES_MAX <= u32::MAX as usize);

/// Whether writes are made durable with fsync/fdatasync. The code path is the same
/// either way: `NoSync` only skips the sync calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync after every append, fsync of file and directory on every replacement:
    /// what a controller runs with.
    Sync,
    /// No syncs. Data written reaches the page cache, so it survives the process (a
    /// simulated crash) but not the machine: for tests and the simulation only.
    NoSync,
}

/// Why the Raft storage failed. Any error from a write leaves the storage refusing
/// further writes ([`StorageError::Poisoned`]); reopening recovers what is on disk.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("raft storage i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt raft storage file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("raft storage file {path} is in format {format}; this version reads format {FORMAT}")]
    UnknownFormat { path: PathBuf, format: u32 },
    #[error("raft storage in {dir} failed an earlier write; reopen it to recover")]
    Poisoned { dir: PathBuf },
    #[error("raft storage in {dir} is already initialised")]
    AlreadyInitialized { dir: PathBuf },
    #[error("append at index {index} would leave a gap after the last index {last_index}")]
    Gap { index: u64, last_index: u64 },
    #[error("append at index {index} would replace entries compacted into the snapshot at index {snapshot_index}")]
    Compacted { index: u64, snapshot_index: u64 },
    #[error("entry at index {index} holds {bytes} bytes, over the limit of {bytes_max}")]
    EntryTooLarge { index: u64, bytes: usize, bytes_max: usize },
    #[error("snapshot data of {bytes} bytes exceeds the limit of {bytes_max}")]
    SnapshotTooLarge { bytes: usize, bytes_max: usize },
    #[error(
        "cannot snapshot at index {index}: the log holds indexes {first_index} to {last_index}"
    )]
    SnapshotOutOfRange { index: u64, first_index: u64, last_index: u64 },
    #[error(
        "received snapshot at index {index} is not newer than the one held at {snapshot_index}"
    )]
    SnapshotOutOfDate { index: u64, snapshot_index: u64 },
}

/// The controller quorum's Raft log, hard state and snapshot in one directory. Lives on the
/// controller's quorum thread, inside its `RawNode`.
pub struct QuorumStorage {
    dir: PathBuf,
    durability: Durability,
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; index 0 (the default) when there is none.
    snapshot: Snapshot,
    /// The entries after the snapshot: `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    /// `positions[i]` is the byte position of `entries[i]`'s frame in the log file.
    positions: Vec<u64>,
    log: File,
    /// Bytes of the log file: where the next frame goes.
    log_bytes: u64,
    /// Set when a write failed: files may hold a partial write.
    poisoned: bool,
}

impl std::fmt::Debug for QuorumStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumStorage")
            .field("dir", &self.dir)
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("last_index", &self.last_index_())
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
}

impl QuorumStorage {
    /// Opens the storage in `dir`, creating the directory and an empty log if missing, and
    /// recovers what a crash left: a torn or corrupt tail frame of the log is cut off with
    /// a warning, entries the snapshot covers are dropped, and entries that disagree with
    /// the snapshot are dropped. A corrupt state or snapshot file is an error: those are
    /// replaced atomically, so damage there is not a crash's doing.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StorageError> {
        create_dir_durably(dir, durability)?;

        let state_path = dir.join(STATE_FILE);
        let (mut hard_state, conf_state) = match read_optional(&state_path)? {
            Some(bytes) => decode_state(&state_path, &bytes)?,
            None => (HardState::default(), ConfState::default()),
        };
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match read_optional(&snapshot_path)? {
            Some(bytes) => decode_snapshot(&snapshot_path, &bytes)?,
            None => Snapshot::default(),
        };
        let (snapshot_index, snapshot_term) =
            (snapshot.get_metadata().index, snapshot.get_metadata().term);

        let log_path = dir.join(LOG_FILE);
        let recovered = match read_optional(&log_path)? {
            Some(bytes) => recover_log(&log_path, &bytes)?,
            None => RecoveredLog::missing(snapshot_index, snapshot_term),
        };
        if recovered.previous.0 > snapshot_index {
            return Err(corrupt(
                &log_path,
                format!(
                    "the log follows index {} but the snapshot is at index {snapshot_index}",
                    recovered.previous.0
                ),
            ));
        }
        if let Some(cut) = &recovered.cut {
            warn!(
                path = %log_path.display(),
                position = cut.position,
                bytes_dropped = cut.bytes_dropped,
                entries_kept = recovered.entries.len(),
                "raft log ends in a torn or corrupt frame ({}); cutting it there",
                cut.reason
            );
        }
        // A rewrite both cuts a bad tail and finishes a compaction a crash interrupted.
        let mut rewrite = recovered.missing || recovered.cut.is_some();
        let term_at_snapshot = recovered.term(snapshot_index);
        let RecoveredLog { previous, mut entries, positions, bytes: log_bytes, .. } = recovered;
        if previous != (snapshot_index, snapshot_term) {
            rewrite = true;
            // Reconcile the log with the snapshot (see the module doc for why this is safe).
            if term_at_snapshot == Some(snapshot_term) {
                entries.retain(|e| e.index > snapshot_index);
            } else {
                if !entries.is_empty() {
                    warn!(
                        dir = %dir.display(),
                        snapshot_index,
                        snapshot_term,
                        entries_dropped = entries.len(),
                        "raft log disagrees with the snapshot at its index; dropping its entries"
                    );
                }
                entries.clear();
            }
        }

        // Checked before anything is written, so a refusal leaves the files as found.
        let last_index = snapshot_index + entries.len() as u64;
        if conf_state == ConfState::default() && (snapshot_index > 0 || last_index > 0) {
            return Err(corrupt(&state_path, "missing, but the log or a snapshot holds entries"));
        }
        // The snapshot is committed by definition; the state may predate it after a crash
        // between the snapshot's write and the state's.
        let repaired = hard_state.commit < snapshot_index || hard_state.term < snapshot_term;
        hard_state.commit = hard_state.commit.max(snapshot_index);
        hard_state.term = hard_state.term.max(snapshot_term);
        if hard_state.commit > last_index {
            return Err(corrupt(
                &log_path,
                format!(
                    "committed index {} is past the last entry {last_index}: committed entries are lost",
                    hard_state.commit
                ),
            ));
        }

        let (log, positions, log_bytes) = if rewrite {
            write_log(&log_path, (snapshot_index, snapshot_term), &entries, durability)?
        } else {
            let log = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&log_path)
                .map_err(io_error(&log_path))?;
            (log, positions, log_bytes)
        };

        let mut storage = QuorumStorage {
            dir: dir.to_path_buf(),
            durability,
            hard_state,
            conf_state,
            snapshot,
            entries,
            positions,
            log,
            log_bytes,
            poisoned: false,
        };
        if repaired {
            storage.write_state()?;
        }
        Ok(storage)
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a conf state was ever stored (by [`Self::initialize`] or a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.conf_state != ConfState::default()
    }

    /// The stored hard state: term, vote, commit.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The stored conf state: the voters, as raft ids.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot, with the application's data; index 0 when there is none.
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The index the latest snapshot covers; 0 when there is none.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn snapshot_term(&self) -> u64 {
        self.snapshot.get_metadata().term
    }

    fn first_index_(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last_index_(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    /// The term of the entry at `index`, if the log or the snapshot knows it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index() {
            return Some(self.snapshot_term());
        }
        let offset = index.checked_sub(self.first_index_())?;
        self.entries.get(usize::try_from(offset).ok()?).map(|e| e.term)
    }

    /// Entries held since the snapshot.
    pub fn entries_since_snapshot(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Stores the first conf state of a new quorum. Only on empty storage.
    pub fn initialize(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        if self.is_initialized()
            || self.last_index_() > 0
            || self.hard_state != HardState::default()
        {
            return Err(StorageError::AlreadyInitialized { dir: self.dir.clone() });
        }
        self.check_writable()?;
        self.conf_state = conf_state;
        self.write_state()
    }

    /// Replaces the hard state, durably.
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.check_writable()?;
        self.hard_state = hard_state;
        self.write_state()
    }

    /// Appends `entries` durably. If the first one's index is already held, the log from
    /// that index on is replaced (raft's conflict resolution): the file is truncated at
    /// that entry's frame first.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.check_writable()?;
        if first.index < self.first_index_() {
            return Err(StorageError::Compacted {
                index: first.index,
                snapshot_index: self.snapshot_index(),
            });
        }
        if first.index > self.last_index_() + 1 {
            return Err(StorageError::Gap { index: first.index, last_index: self.last_index_() });
        }
        for (at, entry) in entries.iter().enumerate() {
            if entry.index != first.index + at as u64 {
                return Err(StorageError::Gap {
                    index: entry.index,
                    last_index: first.index + at as u64 - 1,
                });
            }
        }
        let mut frames = Vec::new();
        let mut frame_positions = Vec::with_capacity(entries.len());
        let keep = usize::try_from(first.index - self.first_index_())
            .expect("below last_index + 1, so an in-memory index");
        let start = self.positions.get(keep).copied().unwrap_or(self.log_bytes);
        for entry in entries {
            frame_positions.push(start + frames.len() as u64);
            encode_frame(entry, &mut frames)?;
        }

        let path = self.dir.join(LOG_FILE);
        let written = (|| {
            if start < self.log_bytes {
                self.log.set_len(start)?;
            }
            self.log.write_all_at(&frames, start)?;
            if self.durability == Durability::Sync {
                self.log.sync_data()?;
            }
            Ok(())
        })();
        if let Err(source) = written {
            self.poisoned = true;
            return Err(StorageError::Io { path, source });
        }
        self.entries.truncate(keep);
        self.positions.truncate(keep);
        self.entries.extend_from_slice(entries);
        self.positions.extend(frame_positions);
        self.log_bytes = start + frames.len() as u64;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the snapshot file is written, every
    /// entry is dropped (the log now follows the snapshot), and the hard state's commit and
    /// term move up to the snapshot's if they were behind.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_writable()?;
        let metadata = snapshot.get_metadata();
        if metadata.index <= self.snapshot_index() {
            return Err(StorageError::SnapshotOutOfDate {
                index: metadata.index,
                snapshot_index: self.snapshot_index(),
            });
        }
        self.write_snapshot(snapshot.clone())?;
        self.rewrite_log(Vec::new())?;
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.write_state()
    }

    /// Takes a snapshot of the application's state at `index` (which the application has
    /// applied, so it is committed): the snapshot file is written, then the log is
    /// rewritten without the entries up to `index`.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), StorageError> {
        self.check_writable()?;
        if index < self.first_index_() || index > self.last_index_() {
            return Err(StorageError::SnapshotOutOfRange {
                index,
                first_index: self.first_index_(),
                last_index: self.last_index_(),
            });
        }
        let term = self.term_at(index).expect("index checked to be in the log");
        let dropped =
            usize::try_from(index - self.snapshot_index()).expect("at most the entries held");
        let kept = self.entries[dropped..].to_vec();
        let snapshot = new_snapshot(index, term, self.conf_state.clone(), data);
        self.write_snapshot(snapshot)?;
        self.rewrite_log(kept)
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned { dir: self.dir.clone() });
        }
        Ok(())
    }

    fn write_state(&mut self) -> Result<(), StorageError> {
        let mut payload = Vec::with_capacity(64);
        payload.extend_from_slice(&self.hard_state.term.to_be_bytes());
        payload.extend_from_slice(&self.hard_state.vote.to_be_bytes());
        payload.extend_from_slice(&self.hard_state.commit.to_be_bytes());
        encode_conf_state(&self.conf_state, &mut payload);
        let path = self.dir.join(STATE_FILE);
        let bytes = encode_file(STATE_MAGIC, &payload);
        self.write_file(&path, &bytes)
    }

    fn write_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let data = &snapshot.data;
        if data.len() > SNAPSHOT_DATA_BYTES_MAX {
            return Err(StorageError::SnapshotTooLarge {
                bytes: data.len(),
                bytes_max: SNAPSHOT_DATA_BYTES_MAX,
            });
        }
        let metadata = snapshot.get_metadata();
        let mut payload = Vec::with_capacity(64 + data.len());
        payload.extend_from_slice(&metadata.index.to_be_bytes());
        payload.extend_from_slice(&metadata.term.to_be_bytes());
        encode_conf_state(metadata.get_conf_state(), &mut payload);
        payload.extend_from_slice(&(data.len() as u32).to_be_bytes());
        payload.extend_from_slice(data);
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = encode_file(SNAPSHOT_MAGIC, &payload);
        self.write_file(&path, &bytes)?;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Replaces the log file with a header naming the snapshot and `entries`, which must
    /// follow the snapshot's index.
    fn rewrite_log(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let path = self.dir.join(LOG_FILE);
        let previous = (self.snapshot_index(), self.snapshot_term());
        match write_log(&path, previous, &entries, self.durability) {
            Ok((log, positions, log_bytes)) => {
                self.log = log;
                self.entries = entries;
                self.positions = positions;
                self.log_bytes = log_bytes;
                Ok(())
            }
            Err(error) => {
                self.poisoned = true;
                Err(error)
            }
        }
    }

    fn write_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        if let Err(source) = write_atomically(path, bytes, self.durability) {
            self.poisoned = true;
            return Err(StorageError::Io { path: path.to_path_buf(), source });
        }
        Ok(())
    }
}

impl Storage for QuorumStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index_() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let from =
            usize::try_from(low - self.first_index_()).expect("within the in-memory entries");
        let to = usize::try_from(high - self.first_index_()).expect("within the in-memory entries");
        let mut entries = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.snapshot_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.term_at(index).ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_())
    }

    /// The latest snapshot the application handed over. When the leader needs a newer one
    /// than it holds, the answer is "temporarily unavailable": raft-rs retries later, after
    /// the application has compacted again.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index {
            return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old file or the new
/// one, whole: written beside it with the extension `tmp`, synced, renamed over `path`,
/// then the directory synced. The engine's `checkpoint::write_atomically`, with the syncs
/// skipped under [`Durability::NoSync`].
pub fn write_atomically(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        if durability == Durability::Sync {
            file.sync_all()?;
        }
    }
    fs::rename(&temp, path)?;
    if durability == Durability::Sync {
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Writes a whole log file atomically (header naming `previous`, then one frame per
/// entry) and opens it for appending. Returns the handle, each frame's position and the
/// file's length.
fn write_log(
    path: &Path,
    previous: (u64, u64),
    entries: &[Entry],
    durability: Durability,
) -> Result<(File, Vec<u64>, u64), StorageError> {
    let mut bytes = log_header(previous.0, previous.1).to_vec();
    let mut positions = Vec::with_capacity(entries.len());
    for entry in entries {
        positions.push(bytes.len() as u64);
        encode_frame(entry, &mut bytes)?;
    }
    write_atomically(path, &bytes, durability).map_err(io_error(path))?;
    let log = OpenOptions::new().read(true).write(true).open(path).map_err(io_error(path))?;
    Ok((log, positions, bytes.len() as u64))
}

/// Creates `dir` and any missing parents; under [`Durability::Sync`] each new directory
/// entry is made durable by syncing the directory that holds it.
fn create_dir_durably(dir: &Path, durability: Durability) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || ancestor.try_exists().map_err(io_error(ancestor))? {
            break;
        }
        missing.push(ancestor);
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    if durability == Durability::Sync {
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent).and_then(|d| d.sync_all()).map_err(io_error(parent))?;
            }
        }
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StorageError::Io { path: path.to_path_buf(), source }),
    }
}

fn encode_file(magic: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FILE_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&FORMAT.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Checks a whole-file header and CRC and returns the payload.
fn decode_file<'a>(path: &Path, magic: [u8; 4], bytes: &'a [u8]) -> Result<&'a [u8], StorageError> {
    let mut reader = Reader::new(bytes);
    let short = || corrupt(path, "shorter than its header");
    if reader.bytes(4).ok_or_else(short)? != magic {
        return Err(corrupt(path, "bad magic"));
    }
    let format = reader.u32().ok_or_else(short)?;
    if format != FORMAT {
        return Err(StorageError::UnknownFormat { path: path.to_path_buf(), format });
    }
    let length = reader.u32().ok_or_else(short)? as usize;
    let crc = reader.u32().ok_or_else(short)?;
    let payload =
        reader.bytes(length).ok_or_else(|| corrupt(path, "shorter than its length says"))?;
    if !reader.is_empty() {
        return Err(corrupt(path, "bytes after the payload"));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt(path, "CRC mismatch"));
    }
    Ok(payload)
}

fn decode_state(path: &Path, bytes: &[u8]) -> Result<(HardState, ConfState), StorageError> {
    let payload = decode_file(path, STATE_MAGIC, bytes)?;
    let mut reader = Reader::new(payload);
    let malformed = || corrupt(path, "malformed state");
    let hard_state = HardState {
        term: reader.u64().ok_or_else(malformed)?,
        vote: reader.u64().ok_or_else(malformed)?,
        commit: reader.u64().ok_or_else(malformed)?,
        ..HardState::default()
    };
    let conf_state = decode_conf_state(&mut reader).ok_or_else(malformed)?;
    if !reader.is_empty() {
        return Err(malformed());
    }
    Ok((hard_state, conf_state))
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    let payload = decode_file(path, SNAPSHOT_MAGIC, bytes)?;
    let mut reader = Reader::new(payload);
    let malformed = || corrupt(path, "malformed snapshot");
    let index = reader.u64().ok_or_else(malformed)?;
    let term = reader.u64().ok_or_else(malformed)?;
    let conf_state = decode_conf_state(&mut reader).ok_or_else(malformed)?;
    let length = reader.u32().ok_or_else(malformed)? as usize;
    let data = reader.bytes(length).ok_or_else(malformed)?.to_vec();
    let snapshot = new_snapshot(index, term, conf_state, data);
    if !reader.is_empty() {
        return Err(malformed());
    }
    Ok(snapshot)
}

fn new_snapshot(index: u64, term: u64, conf_state: ConfState, data: Vec<u8>) -> Snapshot {
    let metadata =
        SnapshotMetadata { conf_state: Some(conf_state).into(), index, term, ..Default::default() };
    Snapshot { data: data.into(), metadata: Some(metadata).into(), ..Default::default() }
}

fn encode_conf_state(conf_state: &ConfState, out: &mut Vec<u8>) {
    for ids in [
        &conf_state.voters,
        &conf_state.learners,
        &conf_state.voters_outgoing,
        &conf_state.learners_next,
    ] {
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    out.push(u8::from(conf_state.auto_leave));
}

fn decode_conf_state(reader: &mut Reader<'_>) -> Option<ConfState> {
    let mut lists: [Vec<u64>; 4] = Default::default();
    for list in &mut lists {
        let count = reader.u32()? as usize;
        // Bounded by the bytes present, so a corrupt count cannot allocate much.
        if count > reader.remaining() / 8 {
            return None;
        }
        for _ in 0..count {
            list.push(reader.u64()?);
        }
    }
    let auto_leave = match reader.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let [voters, learners, voters_outgoing, learners_next] = lists;
    let conf_state = ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave,
        ..ConfState::default()
    };
    Some(conf_state)
}

fn log_header(previous_index: u64, previous_term: u64) -> [u8; LOG_HEADER_BYTES] {
    let mut header = [0u8; LOG_HEADER_BYTES];
    header[0..4].copy_from_slice(&LOG_MAGIC);
    header[4..8].copy_from_slice(&FORMAT.to_be_bytes());
    header[8..16].copy_from_slice(&previous_index.to_be_bytes());
    header[16..24].copy_from_slice(&previous_term.to_be_bytes());
    let crc = crc32c::crc32c(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_be_bytes());
    header
}

fn entry_type_code(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_of(code: u8) -> Option<EntryType> {
    match code {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

fn encode_frame(entry: &Entry, out: &mut Vec<u8>) -> Result<(), StorageError> {
    let bytes = entry.data.len() + entry.context.len();
    if bytes > ENTRY_BYTES_MAX {
        return Err(StorageError::EntryTooLarge {
            index: entry.index,
            bytes,
            bytes_max: ENTRY_BYTES_MAX,
        });
    }
    let payload_bytes = ENTRY_FIXED_BYTES + bytes;
    out.reserve(FRAME_HEADER_BYTES + payload_bytes);
    out.extend_from_slice(&(payload_bytes as u32).to_be_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let payload_at = out.len();
    out.extend_from_slice(&entry.term.to_be_bytes());
    out.extend_from_slice(&entry.index.to_be_bytes());
    out.push(entry_type_code(entry.get_entry_type()));
    out.extend_from_slice(&(entry.data.len() as u32).to_be_bytes());
    out.extend_from_slice(&entry.data);
    out.extend_from_slice(&(entry.context.len() as u32).to_be_bytes());
    out.extend_from_slice(&entry.context);
    let crc = crc32c::crc32c(&out[payload_at..]);
    out[crc_at..payload_at].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn decode_entry(payload: &[u8]) -> Option<Entry> {
    let mut reader = Reader::new(payload);
    let term = reader.u64()?;
    let index = reader.u64()?;
    let entry_type = entry_type_of(reader.u8()?)?;
    let length = reader.u32()? as usize;
    let data = reader.bytes(length)?.to_vec().into();
    let length = reader.u32()? as usize;
    let context = reader.bytes(length)?.to_vec().into();
    let entry = Entry { entry_type, term, index, data, context, ..Entry::default() };
    if !reader.is_empty() {
        return None;
    }
    Some(entry)
}

/// What [`recover_log`] found in a log file.
struct RecoveredLog {
    /// Index and term of the entry before the first frame, from the header.
    previous: (u64, u64),
    entries: Vec<Entry>,
    positions: Vec<u64>,
    /// Bytes of the file up to the end of the last good frame.
    bytes: u64,
    /// The file was missing: it is to be created.
    missing: bool,
    /// The torn or corrupt frame the good ones end at, if any.
    cut: Option<Cut>,
}

/// Where and why a log's good frames end before its end.
struct Cut {
    position: u64,
    bytes_dropped: u64,
    reason: String,
}

impl RecoveredLog {
    fn missing(previous_index: u64, previous_term: u64) -> Self {
        RecoveredLog {
            previous: (previous_index, previous_term),
            entries: Vec::new(),
            positions: Vec::new(),
            bytes: LOG_HEADER_BYTES as u64,
            missing: true,
            cut: None,
        }
    }

    /// The term of the entry at `index`, if the header or a frame names it.
    fn term(&self, index: u64) -> Option<u64> {
        if index == self.previous.0 {
            return Some(self.previous.1);
        }
        let offset = index.checked_sub(self.previous.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?).map(|e| e.term)
    }
}

/// Reads a log file: the header must be whole and valid (the file is only ever created
/// whole, by an atomic write), the frames are read until the first torn or corrupt one.
fn recover_log(path: &Path, bytes: &[u8]) -> Result<RecoveredLog, StorageError> {
    let header =
        bytes.get(..LOG_HEADER_BYTES).ok_or_else(|| corrupt(path, "shorter than its header"))?;
    if header[0..4] != LOG_MAGIC {
        return Err(corrupt(path, "bad magic"));
    }
    let mut reader = Reader::new(&header[4..]);
    let format = reader.u32().unwrap_or(u32::MAX);
    if format != FORMAT {
        return Err(StorageError::UnknownFormat { path: path.to_path_buf(), format });
    }
    let previous_index = reader.u64().unwrap_or_default();
    let previous_term = reader.u64().unwrap_or_default();
    let crc = reader.u32().unwrap_or_default();
    if crc32c::crc32c(&header[0..24]) != crc {
        return Err(corrupt(path, "header CRC mismatch"));
    }

    let mut log = RecoveredLog::missing(previous_index, previous_term);
    log.missing = false;
    let mut position = LOG_HEADER_BYTES;
    let mut last_term = previous_term;
    let cut = loop {
        let rest = &bytes[position..];
        if rest.is_empty() {
            break None;
        }
        let mut reader = Reader::new(rest);
        let (Some(length), Some(crc)) = (reader.u32(), reader.u32()) else {
            break Some("torn frame header".to_string());
        };
        let length = length as usize;
        if length > FRAME_PAYLOAD_BYTES_MAX {
            break Some(format!("frame length {length} over the limit {FRAME_PAYLOAD_BYTES_MAX}"));
        }
        let Some(payload) = reader.bytes(length) else {
            break Some("torn frame".to_string());
        };
        if crc32c::crc32c(payload) != crc {
            break Some("frame CRC mismatch".to_string());
        }
        let Some(entry) = decode_entry(payload) else {
            break Some("undecodable entry".to_string());
        };
        let index_expected = previous_index + 1 + log.entries.len() as u64;
        if entry.index != index_expected {
            break Some(format!("entry index {} where {index_expected} was expected", entry.index));
        }
        if entry.term < last_term {
            break Some(format!("entry term {} below the previous term {last_term}", entry.term));
        }
        last_term = entry.term;
        log.positions.push(position as u64);
        log.entries.push(entry);
        position += FRAME_HEADER_BYTES + length;
    };
    log.bytes = position as u64;
    log.cut = cut.map(|reason| Cut {
        position: position as u64,
        bytes_dropped: (bytes.len() - position) as u64,
        reason,
    });
    Ok(log)
}

/// Big-endian reads from a byte slice; `None` when the bytes run out.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn bytes(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)?.try_into().ok().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.bytes(8)?.try_into().ok().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Entry::default() }
    }

    fn voters() -> ConfState {
        ConfState { voters: vec![1, 2, 3], ..ConfState::default() }
    }

    fn open(dir: &Path) -> QuorumStorage {
        QuorumStorage::open(dir, Durability::NoSync).unwrap()
    }

    fn terms(storage: &QuorumStorage) -> Vec<(u64, u64)> {
        let low = storage.first_index().unwrap();
        let high = storage.last_index().unwrap() + 1;
        storage
            .entries(low, high, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn append_overwrite_and_reopen_keep_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        let first: Vec<Entry> = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
            .iter()
            .map(|&(i, t)| entry(i, t, b"a"))
            .collect();
        storage.append(&first).unwrap();
        // A new leader's log replaces the suffix from index 4, and is shorter.
        storage.append(&[entry(4, 3, b"b")]).unwrap();
        assert_eq!(terms(&storage), vec![(1, 1), (2, 1), (3, 2), (4, 3)]);
        storage.append(&[entry(5, 3, b"c"), entry(6, 3, b"d")]).unwrap();
        let hard_state = HardState { term: 3, vote: 2, commit: 4, ..HardState::default() };
        storage.set_hard_state(hard_state.clone()).unwrap();
        drop(storage);

        let mut storage = open(dir.path());
        assert_eq!(terms(&storage), vec![(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 3)]);
        assert_eq!(storage.hard_state(), &hard_state);
        assert_eq!(storage.conf_state(), &voters());
        let six = storage.entries(6, 7, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(&six[0].data[..], b"d");
        // Overwrite after reopen: positions recovered from the file are right.
        storage.append(&[entry(5, 4, b"e")]).unwrap();
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(terms(&storage), vec![(1, 1), (2, 1), (3, 2), (4, 3), (5, 4)]);
        let five = storage.entries(5, 6, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(&five[0].data[..], b"e");
    }

    #[test]
    fn appends_that_would_leave_a_gap_or_replace_compacted_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]).unwrap();
        let gap = storage.append(&[entry(5, 1, b"x")]).unwrap_err();
        assert!(matches!(gap, StorageError::Gap { index: 5, last_index: 3 }), "{gap}");
        let holes = storage.append(&[entry(4, 1, b"x"), entry(6, 1, b"y")]).unwrap_err();
        assert!(matches!(holes, StorageError::Gap { index: 6, .. }), "{holes}");
        storage.compact(2, b"state".to_vec()).unwrap();
        let compacted = storage.append(&[entry(2, 2, b"x")]).unwrap_err();
        assert!(matches!(compacted, StorageError::Compacted { index: 2, snapshot_index: 2 }));
        assert_eq!(terms(&storage), vec![(3, 1)]);
    }

    #[test]
    fn a_torn_tail_frame_is_cut_and_appends_go_on_after_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"three")]).unwrap();
        drop(storage);
        let path = dir.path().join(LOG_FILE);
        let bytes = fs::read(&path).unwrap();
        // The crash tore the last frame: three bytes of its payload never reached disk.
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();

        let mut storage = open(dir.path());
        assert_eq!(terms(&storage), vec![(1, 1), (2, 1)]);
        let cut_bytes = fs::metadata(&path).unwrap().len();
        assert!(cut_bytes < bytes.len() as u64 - 3, "the torn frame is gone from the file");
        storage.append(&[entry(3, 2, b"again")]).unwrap();
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(terms(&storage), vec![(1, 1), (2, 1), (3, 2)]);
    }

    #[test]
    fn a_corrupt_frame_ends_the_log_with_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"three")]).unwrap();
        let second = storage.positions[1] as usize;
        drop(storage);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        // Flip a bit in the second entry's data.
        let at = second + FRAME_HEADER_BYTES + ENTRY_FIXED_BYTES - 4;
        bytes[at] ^= 0x40;
        fs::write(&path, &bytes).unwrap();

        let storage = open(dir.path());
        assert_eq!(terms(&storage), vec![(1, 1)]);
    }

    #[test]
    fn a_frame_out_of_sequence_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"one"), entry(2, 1, b"two")]).unwrap();
        drop(storage);
        // A stale frame behind the good ones, with a valid CRC: what a lost truncation
        // could leave.
        let mut frames = Vec::new();
        encode_frame(&entry(7, 1, b"stale"), &mut frames).unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, &frames).unwrap();
        drop(file);

        let storage = open(dir.path());
        assert_eq!(terms(&storage), vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn compaction_drops_entries_up_to_the_snapshot_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 4, b"x")).collect();
        storage.append(&entries).unwrap();
        storage
            .set_hard_state(HardState { term: 3, vote: 1, commit: 8, ..HardState::default() })
            .unwrap();
        storage.compact(6, b"state at 6".to_vec()).unwrap();

        let check = |storage: &QuorumStorage| {
            assert_eq!(storage.first_index().unwrap(), 7);
            assert_eq!(storage.last_index().unwrap(), 10);
            assert_eq!(storage.term(6).unwrap(), 2);
            assert_eq!(
                storage.term(5).unwrap_err(),
                raft::Error::Store(raft::StorageError::Compacted)
            );
            assert_eq!(
                storage.entries(5, 8, None, GetEntriesContext::empty(false)).unwrap_err(),
                raft::Error::Store(raft::StorageError::Compacted)
            );
            assert_eq!(terms(storage), vec![(7, 2), (8, 3), (9, 3), (10, 3)]);
            let snapshot = storage.snapshot(0, 2).unwrap();
            assert_eq!(snapshot.get_metadata().index, 6);
            assert_eq!(snapshot.get_metadata().term, 2);
            assert_eq!(snapshot.get_metadata().get_conf_state(), &voters());
            assert_eq!(&snapshot.data[..], b"state at 6");
            assert_eq!(storage.hard_state().commit, 8);
        };
        check(&storage);
        assert_eq!(
            storage.snapshot(7, 2).unwrap_err(),
            raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)
        );
        drop(storage);
        let mut storage = open(dir.path());
        check(&storage);
        // Compacting again, up to the last entry, leaves an empty log after the snapshot.
        storage.compact(10, b"state at 10".to_vec()).unwrap();
        drop(storage);
        let mut storage = open(dir.path());
        assert_eq!(storage.first_index().unwrap(), 11);
        assert_eq!(storage.last_index().unwrap(), 10);
        assert_eq!(storage.term(10).unwrap(), 3);
        storage.append(&[entry(11, 4, b"y")]).unwrap();
        drop(storage);
        assert_eq!(terms(&open(dir.path())), vec![(11, 4)]);
    }

    #[test]
    fn compaction_is_refused_outside_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        assert!(matches!(
            storage.compact(3, Vec::new()).unwrap_err(),
            StorageError::SnapshotOutOfRange { index: 3, first_index: 1, last_index: 2 }
        ));
        storage.compact(1, Vec::new()).unwrap();
        assert!(matches!(
            storage.compact(1, Vec::new()).unwrap_err(),
            StorageError::SnapshotOutOfRange { index: 1, first_index: 2, last_index: 2 }
        ));
    }

    #[test]
    fn a_received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")]).unwrap();
        storage
            .set_hard_state(HardState { term: 2, vote: 3, commit: 1, ..HardState::default() })
            .unwrap();
        let snapshot = new_snapshot(20, 5, voters(), b"leader state".to_vec());
        storage.apply_snapshot(&snapshot).unwrap();
        let check = |storage: &QuorumStorage| {
            assert_eq!(storage.first_index().unwrap(), 21);
            assert_eq!(storage.last_index().unwrap(), 20);
            assert_eq!(storage.term(20).unwrap(), 5);
            assert_eq!(storage.hard_state().commit, 20);
            assert_eq!(storage.hard_state().term, 5);
            assert_eq!(storage.hard_state().vote, 3);
            assert_eq!(&storage.snapshot_ref().data[..], b"leader state");
        };
        check(&storage);
        assert!(matches!(
            storage.apply_snapshot(&snapshot).unwrap_err(),
            StorageError::SnapshotOutOfDate { index: 20, snapshot_index: 20 }
        ));
        drop(storage);
        check(&open(dir.path()));
    }

    #[test]
    fn a_compaction_cut_short_by_a_crash_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, b"x")).collect();
        storage.append(&entries).unwrap();
        storage
            .set_hard_state(HardState { term: 1, vote: 1, commit: 5, ..HardState::default() })
            .unwrap();
        // The crash came after the snapshot file, before the log's rewrite.
        storage.write_snapshot(new_snapshot(4, 1, voters(), b"s".to_vec())).unwrap();
        drop(storage);

        let storage = open(dir.path());
        assert_eq!(storage.snapshot_index(), 4);
        assert_eq!(terms(&storage), vec![(5, 1), (6, 1)]);
        let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let recovered = recover_log(&dir.path().join(LOG_FILE), &bytes).unwrap();
        assert_eq!(recovered.previous, (4, 1), "the log was rewritten to follow the snapshot");
    }

    #[test]
    fn a_received_snapshot_cut_short_by_a_crash_drops_the_diverging_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        // This follower's entries 3..=5 are from term 2; the leader's snapshot holds
        // index 4 from term 3, so they are another history.
        let entries: Vec<Entry> = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
            .iter()
            .map(|&(i, t)| entry(i, t, b"x"))
            .collect();
        storage.append(&entries).unwrap();
        storage
            .set_hard_state(HardState { term: 2, vote: 1, commit: 2, ..HardState::default() })
            .unwrap();
        storage.write_snapshot(new_snapshot(4, 3, voters(), b"s".to_vec())).unwrap();
        drop(storage);

        let storage = open(dir.path());
        assert_eq!(storage.snapshot_index(), 4);
        assert_eq!(storage.last_index().unwrap(), 4);
        assert_eq!(storage.hard_state().commit, 4, "the snapshot is committed");
        assert_eq!(storage.hard_state().term, 3);
        assert_eq!(storage.hard_state().vote, 1);
    }

    #[test]
    fn lost_committed_entries_are_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]).unwrap();
        storage
            .set_hard_state(HardState { term: 1, vote: 1, commit: 3, ..HardState::default() })
            .unwrap();
        drop(storage);
        let path = dir.path().join(LOG_FILE);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let error = QuorumStorage::open(dir.path(), Durability::NoSync).unwrap_err();
        assert!(
            matches!(&error, StorageError::Corrupt { reason, .. } if reason.contains("committed index 3")),
            "{error}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            &bytes[..bytes.len() - 1],
            "the refusal left the log as found"
        );
    }

    #[test]
    fn corrupt_state_and_snapshot_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        storage.compact(1, b"s".to_vec()).unwrap();
        drop(storage);
        for file in [STATE_FILE, SNAPSHOT_FILE] {
            let path = dir.path().join(file);
            let good = fs::read(&path).unwrap();
            let mut bad = good.clone();
            *bad.last_mut().unwrap() ^= 1;
            fs::write(&path, &bad).unwrap();
            let error = QuorumStorage::open(dir.path(), Durability::NoSync).unwrap_err();
            assert!(
                matches!(&error, StorageError::Corrupt { reason, .. } if reason == "CRC mismatch"),
                "{error}"
            );
            fs::write(&path, &good[..good.len() - 1]).unwrap();
            let error = QuorumStorage::open(dir.path(), Durability::NoSync).unwrap_err();
            assert!(matches!(&error, StorageError::Corrupt { .. }), "{error}");
            fs::write(&path, &good).unwrap();
        }
        assert_eq!(terms(&open(dir.path())), vec![(2, 1)]);
    }

    #[test]
    fn sync_durability_runs_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = QuorumStorage::open(&dir.path().join("raft"), Durability::Sync).unwrap();
        storage.initialize(voters()).unwrap();
        storage.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        storage
            .set_hard_state(HardState { term: 1, vote: 2, commit: 2, ..HardState::default() })
            .unwrap();
        storage.compact(1, b"s".to_vec()).unwrap();
        drop(storage);
        let storage = QuorumStorage::open(&dir.path().join("raft"), Durability::Sync).unwrap();
        assert_eq!(terms(&storage), vec![(2, 1)]);
        assert_eq!(storage.hard_state().vote, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Append `count` entries of `term` from `back` entries before the end.
        Append {
            back: u8,
            count: u8,
            term_step: u8,
        },
        /// Compact at `back` entries before the end.
        Compact {
            back: u8,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 1u8..5, 0u8..2).prop_map(|(back, count, term_step)| Op::Append { back, count, term_step }),
            1 => (0u8..6).prop_map(|back| Op::Compact { back }),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The storage against a model: a list of (index, term, data) after a snapshot
        /// index, under appends that overwrite, compactions and reopens.
        #[test]
        fn storage_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut storage = open(dir.path());
            storage.initialize(voters()).unwrap();
            let mut model: Vec<(u64, u64, Vec<u8>)> = Vec::new();
            let mut model_snapshot = (0u64, 0u64);
            let mut serial = 0u32;
            for op in ops {
                match op {
                    Op::Append { back, count, term_step } => {
                        let last = model_snapshot.0 + model.len() as u64;
                        let from = (last + 1).saturating_sub(u64::from(back)).max(model_snapshot.0 + 1);
                        let keep = (from - model_snapshot.0 - 1) as usize;
                        model.truncate(keep);
                        let term = model.last().map_or(model_snapshot.1, |e| e.1) + u64::from(term_step);
                        let mut batch = Vec::new();
                        for at in 0..u64::from(count) {
                            serial += 1;
                            let data = serial.to_be_bytes().to_vec();
                            batch.push(entry(from + at, term, &data));
                            model.push((from + at, term, data));
                        }
                        storage.append(&batch).unwrap();
                    }
                    Op::Compact { back } => {
                        let last = model_snapshot.0 + model.len() as u64;
                        let index = last.saturating_sub(u64::from(back));
                        if index > model_snapshot.0 {
                            storage.compact(index, index.to_be_bytes().to_vec()).unwrap();
                            let dropped = (index - model_snapshot.0) as usize;
                            model_snapshot = (index, model[dropped - 1].1);
                            model.drain(..dropped);
                        }
                    }
                    Op::Reopen => {
                        drop(storage);
                        storage = open(dir.path());
                    }
                }
                prop_assert_eq!(storage.snapshot_index(), model_snapshot.0);
                prop_assert_eq!(storage.term(model_snapshot.0).unwrap(), model_snapshot.1);
                let low = storage.first_index().unwrap();
                let high = storage.last_index().unwrap() + 1;
                let held: Vec<(u64, u64, Vec<u8>)> = storage
                    .entries(low, high, None, GetEntriesContext::empty(false))
                    .unwrap()
                    .iter()
                    .map(|e| (e.index, e.term, e.data.to_vec()))
                    .collect();
                prop_assert_eq!(&held, &model);
            }
        }
    }
}
