//! Offset checkpoint files in Kafka's text format: `recovery-point-offset-checkpoint`,
//! `log-start-offset-checkpoint` and `replication-offset-checkpoint` (high watermarks).
//!
//! ```text
//! 0                 <- version
//! 2                 <- entry count
//! orders 0 1234     <- topic partition offset
//! orders 1 98
//! ```
//!
//! Written to a temporary file, synced, then renamed over the old one, so a crash leaves
//! either the old or the new checkpoint, never half of one.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use thiserror::Error;

pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset-checkpoint";
pub const HIGH_WATERMARK_FILE: &str = "replication-offset-checkpoint";

const VERSION: u32 = 0;

/// A topic and partition, the key of every checkpoint entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }

    /// Kafka's directory name for the partition: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o: {0}")]
    Io(#[from] io::Error),
    #[error("malformed checkpoint line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
}

/// Renders entries in Kafka's format.
pub fn encode(entries: &BTreeMap<TopicPartition, i64>) -> String {
    let mut out = format!("{VERSION}\n{}\n", entries.len());
    for (tp, offset) in entries {
        out.push_str(&format!("{} {} {}\n", tp.topic, tp.partition, offset));
    }
    out
}

/// Parses Kafka's format. Topic names cannot hold spaces (Kafka's legal characters are
/// `[a-zA-Z0-9._-]`), so splitting on whitespace is exact.
pub fn decode(text: &str) -> Result<BTreeMap<TopicPartition, i64>, CheckpointError> {
    let mut lines = text.lines();
    let malformed = |line, reason| CheckpointError::Malformed { line, reason };
    let version: u32 = lines
        .next()
        .ok_or(malformed(1, "missing version"))?
        .trim()
        .parse()
        .map_err(|_| malformed(1, "bad version"))?;
    if version != VERSION {
        return Err(malformed(1, "unsupported version"));
    }
    let count: usize = lines
        .next()
        .ok_or(malformed(2, "missing count"))?
        .trim()
        .parse()
        .map_err(|_| malformed(2, "bad count"))?;
    let mut entries = BTreeMap::new();
    for at in 0..count {
        let line_number = at + 3;
        let line = lines.next().ok_or(malformed(line_number, "fewer entries than the count"))?;
        let mut fields = line.split_whitespace();
        let (Some(topic), Some(partition), Some(offset), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed(line_number, "expected: topic partition offset"));
        };
        let partition = partition.parse().map_err(|_| malformed(line_number, "bad partition"))?;
        let offset = offset.parse().map_err(|_| malformed(line_number, "bad offset"))?;
        entries.insert(TopicPartition::new(topic, partition), offset);
    }
    Ok(entries)
}

/// Reads a checkpoint file; a missing file is an empty checkpoint.
pub fn read(path: &Path) -> Result<BTreeMap<TopicPartition, i64>, CheckpointError> {
    match std::fs::read_to_string(path) {
        Ok(text) => decode(&text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(error.into()),
    }
}

/// Writes a checkpoint file atomically (temp file, fsync, rename, fsync the directory).
/// Blocking: the broker calls it off the shards' hot path (shutdown, or the blocking
/// pool), as Kafka does from its scheduler thread.
pub fn write(path: &Path, entries: &BTreeMap<TopicPartition, i64>) -> Result<(), CheckpointError> {
    Ok(write_atomically(path, "tmp", encode(entries).as_bytes())?)
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old file or the
/// new one, whole: written to `path` with `temp_extension`, synced, renamed over `path`,
/// then the directory synced. Blocking. Every file the broker rewrites whole (offset and
/// leader-epoch checkpoints, a migrated metadata log) goes through here.
pub fn write_atomically(path: &Path, temp_extension: &str, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension(temp_extension);
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kafka_text_format_round_trips() {
        let mut entries = BTreeMap::new();
        entries.insert(TopicPartition::new("orders", 0), 1234);
        entries.insert(TopicPartition::new("orders", 1), 98);
        entries.insert(TopicPartition::new("__consumer_offsets", 49), 0);
        let text = encode(&entries);
        assert_eq!(text, "0\n3\n__consumer_offsets 49 0\norders 0 1234\norders 1 98\n");
        assert_eq!(decode(&text).unwrap(), entries);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECOVERY_POINT_FILE);
        assert!(read(&path).unwrap().is_empty());
        write(&path, &entries).unwrap();
        assert_eq!(read(&path).unwrap(), entries);
    }

    #[test]
    fn malformed_files_are_errors() {
        for text in ["", "1\n0\n", "0\n2\norders 0 1\n", "0\n1\norders x 1\n", "0\n1\na 0 1 2\n"] {
            assert!(decode(text).is_err(), "{text:?} accepted");
        }
    }
}
