//! The leader-epoch cache of one partition: for each leader epoch that wrote to the log,
//! the offset of its first batch. Kafka's `LeaderEpochFileCache`, with its rules and its
//! `leader-epoch-checkpoint` file, so that a follower (or a consumer checking for log
//! truncation after a leader change) can ask "where did epoch E end?" and truncate its own
//! log to the answer instead of keeping records the new leader never had.
//!
//! Sans-I/O: the cache is a sorted list that changes by [`LeaderEpochCache::assign`] and
//! the two truncations, and renders itself as the file's text; the caller writes it when a
//! change returns `true` (see [`write`]).
//!
//! ```text
//! 0                 <- version
//! 2                 <- entry count
//! 0 0               <- epoch start_offset
//! 3 1200
//! ```

use std::io;
use std::path::Path;

use thiserror::Error;

/// The file's name in the partition's directory (Kafka's).
pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";

const VERSION: u32 = 0;

/// Kafka's "no epoch" and "no offset" answers (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

/// A leader epoch and the offset of the first batch it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug, Error)]
pub enum EpochFileError {
    #[error("leader epoch checkpoint i/o: {0}")]
    Io(#[from] io::Error),
    #[error("malformed leader epoch checkpoint line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
}

/// The epochs of one partition, oldest first. Invariant: epochs and start offsets both
/// strictly increase along the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// A cache holding `entries`, which must already be strictly increasing in epoch and
    /// start offset (as [`decode`] checks).
    pub fn from_entries(entries: Vec<EpochEntry>) -> Self {
        let cache = Self { entries };
        cache.check_invariants();
        cache
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.latest().map(|entry| entry.epoch)
    }

    /// Records that `epoch` wrote its first batch at `start_offset` (called for every
    /// appended batch and when a replica becomes leader; a no-op unless the epoch is new,
    /// or the same epoch is now known to start earlier). Entries that would break the
    /// order (an equal or later epoch, or one starting at or after `start_offset`) are
    /// dropped first: they belong to a history this replica's log no longer has. Returns
    /// whether the cache changed (and its file should be written).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        assert!(epoch >= 0, "leader epoch {epoch} is negative");
        assert!(start_offset >= 0, "epoch start offset {start_offset} is negative");
        let needed = match self.latest() {
            None => true,
            Some(latest) => epoch != latest.epoch || start_offset < latest.start_offset,
        };
        if !needed {
            return false;
        }
        while let Some(last) = self.entries.last() {
            if last.epoch >= epoch || last.start_offset >= start_offset {
                self.entries.pop();
            } else {
                break;
            }
        }
        self.entries.push(EpochEntry { epoch, start_offset });
        self.check_invariants();
        true
    }

    /// Where `requested` epoch ended on this replica, as OffsetForLeaderEpoch answers:
    /// `(epoch, end_offset)` where `epoch` is the largest known epoch not above the one
    /// asked for, and `end_offset` the start of the next known epoch (or the log end for
    /// the latest epoch). Undefined (-1, -1) when nothing is known about it.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if self.latest_epoch() == Some(requested) {
            // The leader's current epoch is still being written to: it ends at the log end.
            return (requested, log_end_offset);
        }
        let Some(higher) = self.entries.iter().find(|entry| entry.epoch > requested) else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        match self.entries.iter().rev().find(|entry| entry.epoch <= requested) {
            // Older than anything kept (its records were deleted): from where the log has
            // history again, as Kafka answers.
            None => (requested, higher.start_offset),
            Some(floor) => (floor.epoch, higher.start_offset),
        }
    }

    /// The log was truncated to `end_offset` (everything at and after it removed): drops
    /// the epochs that started there or later. Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < end_offset);
        self.entries.len() != before
    }

    /// The log start moved to `start_offset`: epochs that started before it are forgotten
    /// but the last of them, which now starts at `start_offset` (its later records are
    /// still in the log). Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let before_start = self.entries.iter().filter(|e| e.start_offset < start_offset).count();
        if before_start == 0 {
            return false;
        }
        let mut kept = self.entries.split_off(before_start - 1);
        kept[0].start_offset = start_offset;
        // An epoch that started exactly at `start_offset` supersedes the moved one.
        if kept.len() > 1 && kept[1].start_offset == start_offset {
            kept.remove(0);
        }
        self.entries = kept;
        self.check_invariants();
        true
    }

    fn check_invariants(&self) {
        for pair in self.entries.windows(2) {
            assert!(pair[0].epoch < pair[1].epoch, "leader epochs out of order: {pair:?}");
            assert!(
                pair[0].start_offset < pair[1].start_offset,
                "epoch start offsets out of order: {pair:?}"
            );
        }
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        let mut out = format!("{VERSION}\n{}\n", self.entries.len());
        for entry in &self.entries {
            out.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        out
    }

    /// Parses the file's text, refusing entries out of order (the file is then corrupt).
    pub fn decode(text: &str) -> Result<Self, EpochFileError> {
        let malformed = |line: usize, reason| EpochFileError::Malformed { line, reason };
        let mut lines = text.lines();
        let version: u32 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| malformed(1, "no version"))?;
        if version != VERSION {
            return Err(malformed(1, "unknown version"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| malformed(2, "no entry count"))?;
        let mut entries = Vec::with_capacity(count.min(1024));
        for (index, line) in lines.enumerate() {
            let number = index + 3;
            let mut fields = line.split_whitespace();
            let (Some(epoch), Some(start), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed(number, "expected: epoch start_offset"));
            };
            let epoch: i32 = epoch.parse().map_err(|_| malformed(number, "bad epoch"))?;
            let start_offset: i64 = start.parse().map_err(|_| malformed(number, "bad offset"))?;
            if epoch < 0 || start_offset < 0 {
                return Err(malformed(number, "negative epoch or offset"));
            }
            if let Some(last) = entries.last().copied() {
                let EpochEntry { epoch: last_epoch, start_offset: last_start } = last;
                if epoch <= last_epoch || start_offset <= last_start {
                    return Err(malformed(number, "entries out of order"));
                }
            }
            entries.push(EpochEntry { epoch, start_offset });
        }
        if entries.len() != count {
            return Err(malformed(2, "entry count does not match the entries"));
        }
        Ok(Self { entries })
    }
}

/// Reads `dir`'s checkpoint; `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<LeaderEpochCache>, EpochFileError> {
    match std::fs::read_to_string(dir.join(LEADER_EPOCH_FILE)) {
        Ok(text) => LeaderEpochCache::decode(&text).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Writes `dir`'s checkpoint atomically (temp file, fsync, rename, fsync the directory),
/// like the offset checkpoints. Blocking; called only when the epochs change (a leader
/// change or a truncation), never per append.
pub fn write(dir: &Path, cache: &LeaderEpochCache) -> Result<(), EpochFileError> {
    let path = dir.join(LEADER_EPOCH_FILE);
    Ok(crate::checkpoint::write_atomically(&path, "tmp", cache.encode().as_bytes())?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        LeaderEpochCache::from_entries(
            entries
                .iter()
                .map(|&(epoch, start_offset)| EpochEntry { epoch, start_offset })
                .collect(),
        )
    }

    fn pairs(cache: &LeaderEpochCache) -> Vec<(i32, i64)> {
        cache.entries().iter().map(|e| (e.epoch, e.start_offset)).collect()
    }

    #[test]
    fn assign_adds_new_epochs_only() {
        let mut epochs = LeaderEpochCache::default();
        assert!(epochs.assign(0, 0));
        assert!(!epochs.assign(0, 5), "same epoch later: nothing new");
        assert!(epochs.assign(2, 10));
        assert!(!epochs.assign(2, 12));
        assert_eq!(pairs(&epochs), [(0, 0), (2, 10)]);
        // The same epoch known to start earlier replaces its entry.
        assert!(epochs.assign(2, 8));
        assert_eq!(pairs(&epochs), [(0, 0), (2, 8)]);
    }

    #[test]
    fn assign_drops_entries_that_would_break_the_order() {
        let mut epochs = cache(&[(0, 0), (2, 10), (4, 20)]);
        // A leader with epoch 3 from offset 15: epoch 4's entry is another history.
        assert!(epochs.assign(3, 15));
        assert_eq!(pairs(&epochs), [(0, 0), (2, 10), (3, 15)]);
        // A later epoch starting before the last entry's start removes that entry too.
        assert!(epochs.assign(5, 12));
        assert_eq!(pairs(&epochs), [(0, 0), (2, 10), (5, 12)]);
    }

    #[test]
    fn end_offset_for_answers_as_kafka() {
        let epochs = cache(&[(1, 0), (3, 100), (6, 250)]);
        let end = 300;
        assert_eq!(epochs.end_offset_for(6, end), (6, 300), "latest: the log end");
        assert_eq!(epochs.end_offset_for(3, end), (3, 250));
        assert_eq!(epochs.end_offset_for(4, end), (3, 250), "unknown epoch: the floor's end");
        assert_eq!(epochs.end_offset_for(1, end), (1, 100));
        assert_eq!(epochs.end_offset_for(0, end), (0, 0), "older than any: first start");
        assert_eq!(epochs.end_offset_for(7, end), (-1, -1), "from the future");
        assert_eq!(epochs.end_offset_for(-1, end), (-1, -1));
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, 0), (-1, -1));
    }

    #[test]
    fn truncations_from_either_end() {
        let mut epochs = cache(&[(1, 0), (3, 100), (6, 250)]);
        assert!(!epochs.truncate_from_end(300));
        assert!(epochs.truncate_from_end(250));
        assert_eq!(pairs(&epochs), [(1, 0), (3, 100)]);
        assert!(!epochs.truncate_from_start(0));
        assert!(epochs.truncate_from_start(120));
        assert_eq!(pairs(&epochs), [(3, 120)]);
        let mut epochs = cache(&[(1, 0), (3, 100)]);
        assert!(epochs.truncate_from_start(100));
        assert_eq!(pairs(&epochs), [(3, 100)]);
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused() {
        let epochs = cache(&[(0, 0), (3, 1200)]);
        assert_eq!(epochs.encode(), "0\n2\n0 0\n3 1200\n");
        assert_eq!(LeaderEpochCache::decode(&epochs.encode()).unwrap(), epochs);
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        write(dir.path(), &epochs).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap(), epochs);
        for text in
            ["", "1\n0\n", "0\n2\n0 0\n", "0\n1\n0 x\n", "0\n2\n3 10\n2 20\n", "0\n1\n-1 0\n"]
        {
            assert!(LeaderEpochCache::decode(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    #[should_panic(expected = "leader epochs out of order")]
    fn entries_out_of_order_are_a_bug() {
        cache(&[(3, 0), (2, 10)]);
    }

    /// What a log with these batches says about where `epoch` ended, worked out from the
    /// batches themselves: the oracle the cache is checked against.
    fn oracle(batches: &[(i32, i64, i64)], log_start: i64, requested: i32) -> (i32, i64) {
        let log_end = batches.last().map_or(log_start, |b| b.2);
        let first_offset = |b: &(i32, i64, i64)| b.1.max(log_start);
        let Some(latest) = batches.last().map(|b| b.0) else { return (-1, -1) };
        if requested < 0 {
            return (-1, -1);
        }
        if requested == latest {
            return (requested, log_end);
        }
        let Some(higher) = batches.iter().find(|b| b.0 > requested) else { return (-1, -1) };
        match batches.iter().rev().find(|b| b.0 <= requested) {
            None => (requested, first_offset(higher)),
            Some(floor) => (floor.0, first_offset(higher)),
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Append `count` offsets in one batch, at a new epoch when `bump` says so.
        Append { bump: u8, count: u8 },
        /// Truncate at the base of the batch `pick` chooses (above the log start).
        Truncate { pick: u8 },
        /// Move the log start to a point `pick` chooses below the log end.
        AdvanceStart { pick: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..4, 1u8..20).prop_map(|(bump, count)| Step::Append { bump, count }),
            1 => any::<u8>().prop_map(|pick| Step::Truncate { pick }),
            1 => any::<u8>().prop_map(|pick| Step::AdvanceStart { pick }),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        /// Appends at rising epochs, truncations and log start moves, in any order: the
        /// cache answers OffsetForLeaderEpoch exactly as the surviving batches say, for
        /// every epoch, and its file round-trips.
        #[test]
        fn the_cache_answers_what_the_log_holds(steps in prop::collection::vec(step(), 1..60)) {
            let mut cache = LeaderEpochCache::default();
            // (epoch, base offset, end offset) of each batch still in the log.
            let mut batches: Vec<(i32, i64, i64)> = Vec::new();
            let mut log_start = 0i64;
            let mut epoch = 0i32;
            for step in steps {
                let log_end = batches.last().map_or(log_start, |b| b.2);
                match step {
                    Step::Append { bump, count } => {
                        if bump == 0 {
                            epoch += 1 + i32::from(count % 3);
                        }
                        let end = log_end + i64::from(count);
                        cache.assign(epoch, log_end);
                        batches.push((epoch, log_end, end));
                    }
                    Step::Truncate { pick } => {
                        let cuts: Vec<i64> =
                            batches.iter().map(|b| b.1).filter(|&base| base > log_start).collect();
                        if let Some(&cut) = cuts.get(usize::from(pick) % cuts.len().max(1)) {
                            batches.retain(|b| b.1 < cut);
                            cache.truncate_from_end(cut);
                        }
                    }
                    Step::AdvanceStart { pick } => {
                        if log_end > log_start {
                            log_start += i64::from(pick) % (log_end - log_start);
                            batches.retain(|b| b.2 > log_start);
                            cache.truncate_from_start(log_start);
                        }
                    }
                }
                for requested in -1..=epoch + 1 {
                    let end = batches.last().map_or(log_start, |b| b.2);
                    prop_assert_eq!(
                        cache.end_offset_for(requested, end),
                        oracle(&batches, log_start, requested),
                        "epoch {} of {:?} from {}", requested, batches, log_start
                    );
                }
                prop_assert_eq!(LeaderEpochCache::decode(&cache.encode()).unwrap(), cache.clone());
            }
        }
    }
}
