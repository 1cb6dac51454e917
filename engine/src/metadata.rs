//! Cluster metadata for a single-node broker: topics, partition counts, topic ids and
//! per-topic config overrides, kept as an append-only log of [`MetadataRecord`]s in
//! `<data_dir>/__cluster_metadata/metadata.log` and replayed on start-up.
//!
//! The records are the source of truth and [`MetadataImage`] is a pure function of them,
//! so that a Raft quorum can later replicate the same records and every node arrives at
//! the same image.
//!
//! ```text
//! frame = [length: u32 BE][crc32c of payload: u32 BE][payload: rkyv bytes of MetadataRecord]
//! ```
//!
//! A writer checks a record against the image, appends it, then applies it
//! ([`MetadataLog::commit`] does the three steps). Replay applies every record again; a
//! torn, corrupt or inapplicable frame ends the log and is cut off with everything after
//! it, because a record that fails to apply means the log and the code no longer agree on
//! history, and going on from there would build an image no writer ever saw.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tracing::warn;

/// Directory under the data directory, named as Kafka's KRaft metadata log directory.
pub const METADATA_DIR: &str = "__cluster_metadata";
pub const METADATA_FILE: &str = "metadata.log";

/// Kafka's limit on a topic name (`Topic.MAX_NAME_LENGTH`).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Bytes of a frame header: payload length then payload CRC, both u32 big-endian.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Limit on one record's payload. Real records are a few hundred bytes; a length past this
/// on disk is corruption, not a record.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 1 << 20;

// The length field is a u32, and the limit must admit the largest legal topic name.
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX as usize > TOPIC_NAME_BYTES_MAX);

/// One durable change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum MetadataRecord {
    /// `configs` are the topic's overrides; a repeated key keeps its last value.
    CreateTopic {
        name: String,
        topic_id: [u8; 16],
        partitions: i32,
        replication_factor: i16,
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grow a topic to `partitions` in total.
    CreatePartitions {
        name: String,
        partitions: i32,
    },
    /// Replace the topic's whole set of config overrides (AlterConfigs semantics;
    /// IncrementalAlterConfigs computes the new full set before writing). A repeated key
    /// keeps its last value.
    SetTopicConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Producer ids below `end` may have been handed out (InitProducerId allocates them
    /// in blocks, so ids are never reused after a restart). New variants go last: the
    /// log stores the variant index.
    ProducerIds {
        end: i64,
    },
}

/// One topic as the records so far describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub topic_id: [u8; 16],
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic-level overrides only; broker defaults are not copied in.
    pub configs: BTreeMap<String, String>,
}

/// The state all records so far produce. The writer (the controller) owns the authoritative
/// copy; every shard may hold a read-only clone, replaced whole when metadata changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    topics: BTreeMap<String, TopicMetadata>,
    /// Topic id to topic name; holds exactly one entry per topic.
    topic_names_by_id: BTreeMap<[u8; 16], String>,
    /// The first producer id never handed out.
    producer_ids_end: i64,
    /// Records applied so far: the next record's offset in the metadata log. Every
    /// shard's copy reports it, so a copy that missed a record is detected instead of
    /// serving a history that never was.
    next_offset: i64,
}

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("metadata i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("producer id block end {end} is not past the current end {current}")]
    ProducerIdsBackwards { end: i64, current: i64 },
    #[error("corrupt metadata log {path} at byte {position}: {reason}")]
    Corrupt { path: PathBuf, position: u64, reason: String },
    #[error("metadata log {path} failed an earlier append; reopen it to recover")]
    Poisoned { path: PathBuf },
    #[error("metadata record of {bytes} bytes exceeds the limit of {bytes_max} bytes")]
    RecordTooLarge { bytes: usize, bytes_max: u32 },
    #[error("cannot encode metadata record: {source}")]
    Encode { source: rkyv::rancor::Error },
    #[error("topic {name} already exists")]
    TopicExists { name: String },
    #[error("unknown topic {name}")]
    UnknownTopic { name: String },
    #[error("topic {name}: {partitions} partitions, need at least {partitions_min}")]
    InvalidPartitions { name: String, partitions: i32, partitions_min: i32 },
    #[error("topic {name}: replication factor {replication_factor} is below 1")]
    InvalidReplicationFactor { name: String, replication_factor: i16 },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("topic {name}: the all-zero topic id is reserved")]
    InvalidTopicId { name: String },
    #[error("topic {name}: topic id {topic_id:02x?} already belongs to topic {existing}")]
    DuplicateTopicId { name: String, topic_id: [u8; 16], existing: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MetadataError + '_ {
    move |source| MetadataError::Io { path: path.to_path_buf(), source }
}

impl MetadataImage {
    pub fn topic(&self, name: &str) -> Option<&TopicMetadata> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&TopicMetadata> {
        let name = self.topic_names_by_id.get(id)?;
        let topic = self.topics.get(name).expect("every topic id maps to a live topic");
        Some(topic)
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicMetadata> {
        self.topics.values()
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Checks a record against the current state without changing it: the controller
    /// validates before it writes, so that replay never meets a record that fails.
    pub fn check(&self, record: &MetadataRecord) -> Result<(), MetadataError> {
        match record {
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                replication_factor,
                configs: _,
            } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists { name: name.clone() });
                }
                if *partitions < 1 {
                    return Err(MetadataError::InvalidPartitions {
                        name: name.clone(),
                        partitions: *partitions,
                        partitions_min: 1,
                    });
                }
                if *replication_factor < 1 {
                    return Err(MetadataError::InvalidReplicationFactor {
                        name: name.clone(),
                        replication_factor: *replication_factor,
                    });
                }
                // Kafka reserves the zero UUID to mean "no topic id".
                if *topic_id == [0; 16] {
                    return Err(MetadataError::InvalidTopicId { name: name.clone() });
                }
                if let Some(existing) = self.topic_names_by_id.get(topic_id) {
                    return Err(MetadataError::DuplicateTopicId {
                        name: name.clone(),
                        topic_id: *topic_id,
                        existing: existing.clone(),
                    });
                }
                Ok(())
            }
            MetadataRecord::DeleteTopic { name } => self.existing(name).map(|_| ()),
            MetadataRecord::CreatePartitions { name, partitions } => {
                let topic = self.existing(name)?;
                // Kafka cannot shrink a topic: keys would move between partitions.
                if *partitions <= topic.partitions {
                    return Err(MetadataError::InvalidPartitions {
                        name: name.clone(),
                        partitions: *partitions,
                        partitions_min: topic.partitions.saturating_add(1),
                    });
                }
                Ok(())
            }
            MetadataRecord::SetTopicConfigs { name, configs: _ } => self.existing(name).map(|_| ()),
            MetadataRecord::ProducerIds { end } => {
                if *end <= self.producer_ids_end {
                    return Err(MetadataError::ProducerIdsBackwards {
                        end: *end,
                        current: self.producer_ids_end,
                    });
                }
                Ok(())
            }
        }
    }

    /// Runs [`Self::check`], then changes the state. On error the state is unchanged.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), MetadataError> {
        self.check(record)?;
        match record {
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                partitions,
                replication_factor,
                configs,
            } => {
                let topic = TopicMetadata {
                    name: name.clone(),
                    topic_id: *topic_id,
                    partitions: *partitions,
                    replication_factor: *replication_factor,
                    configs: configs.iter().cloned().collect(),
                };
                let name_previous = self.topic_names_by_id.insert(*topic_id, name.clone());
                assert!(name_previous.is_none());
                let topic_previous = self.topics.insert(name.clone(), topic);
                assert!(topic_previous.is_none());
            }
            MetadataRecord::DeleteTopic { name } => {
                let topic = self.topics.remove(name).expect("checked: the topic exists");
                let name_removed = self.topic_names_by_id.remove(&topic.topic_id);
                assert_eq!(name_removed.as_deref(), Some(name.as_str()));
            }
            MetadataRecord::CreatePartitions { name, partitions } => {
                let topic = self.topics.get_mut(name).expect("checked: the topic exists");
                assert!(*partitions > topic.partitions);
                topic.partitions = *partitions;
            }
            MetadataRecord::SetTopicConfigs { name, configs } => {
                let topic = self.topics.get_mut(name).expect("checked: the topic exists");
                topic.configs = configs.iter().cloned().collect();
            }
            MetadataRecord::ProducerIds { end } => self.producer_ids_end = *end,
        }
        assert_eq!(self.topics.len(), self.topic_names_by_id.len());
        self.next_offset += 1;
        Ok(())
    }

    /// The offset of the last record applied (-1: none), in the metadata log's order.
    pub fn offset(&self) -> i64 {
        self.next_offset - 1
    }

    /// The offset the next record takes.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The first producer id never handed out.
    pub fn producer_ids_end(&self) -> i64 {
        self.producer_ids_end
    }

    fn existing(&self, name: &str) -> Result<&TopicMetadata, MetadataError> {
        self.topics.get(name).ok_or_else(|| MetadataError::UnknownTopic { name: name.to_string() })
    }
}

/// Kafka's topic name rule: 1..=249 characters of `[a-zA-Z0-9._-]`, and not `.` or `..`
/// (those would name the partition directories' parent).
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let invalid = |reason| Err(MetadataError::InvalidTopicName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("empty");
    }
    if name == "." || name == ".." {
        return invalid("\".\" and \"..\" are reserved");
    }
    // All legal characters are ASCII, so bytes and characters agree once they pass.
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return invalid("longer than 249 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return invalid("characters other than ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// A fresh random topic id in the version-4 UUID layout, so never all zeros.
///
/// No I/O and no new dependency: std's `RandomState` is seeded from the operating system's
/// random source once per thread and differs on every `new()`, and SipHash over its keys,
/// the clock, a counter and the process id gives ids that are unique and unguessable
/// enough for naming topics (they are not secrets).
pub fn new_topic_id() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        // A clock before 1970 only weakens one of four inputs.
        let time_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let state = RandomState::new();
        let mut id = [0u8; 16];
        for (half, chunk) in id.chunks_exact_mut(8).enumerate() {
            let hash = state.hash_one((half, count, time_ns, std::process::id()));
            chunk.copy_from_slice(&hash.to_be_bytes());
        }
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        // Like Kafka's Uuid.randomUuid: no id whose base64 form starts with '-', which
        // command-line tools would take for a flag.
        if id[0] >> 2 != 0b11_1110 {
            return id;
        }
    }
}

/// The append-only file `<data_dir>/__cluster_metadata/metadata.log`. Owned by the
/// writer of metadata (the controller); shards see only clones of the image.
///
/// Plain blocking `std::fs`, not the io_uring seam: opening runs at start-up before the
/// shards serve, and appends are rare admin operations (create, delete, alter), where a
/// blocking write and fdatasync of a few hundred bytes costs less than the plumbing.
pub struct MetadataLog {
    path: PathBuf,
    file: File,
    /// Set when an append failed: the file may end in a partial frame, or (after a failed
    /// fdatasync) hold a frame of unknown durability, so further appends could land
    /// behind garbage. Reopening cuts the tail and says what survived.
    poisoned: bool,
}

impl MetadataLog {
    /// Creates the directory and file if missing, replays every record into a fresh image
    /// and returns both. A torn or corrupt tail (short frame, bad CRC, undecodable record,
    /// record that fails to apply) is cut off: the file is truncated to the end of the last
    /// good record, with a warning saying how many bytes were dropped and why.
    pub fn open(data_dir: &Path) -> Result<(MetadataLog, MetadataImage), MetadataError> {
        let dir = data_dir.join(METADATA_DIR);
        let path = dir.join(METADATA_FILE);
        let dir_existed = dir.try_exists().map_err(io_error(&dir))?;
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let file_existed = path.try_exists().map_err(io_error(&path))?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_error(&path))?;
        // A new directory entry is durable only once its parent directory is synced.
        if !file_existed {
            sync_dir(&dir)?;
        }
        if !dir_existed {
            sync_dir(data_dir)?;
        }

        // The whole file is read at once: records are small and rare. Snapshots will bound
        // its size when the Raft quorum arrives.
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(&path))?;
        let replay = replay(&bytes);
        if let Some(reason) = replay.cut {
            let corrupt =
                MetadataError::Corrupt { path: path.clone(), position: replay.end, reason };
            let bytes_dropped = bytes.len() as u64 - replay.end;
            warn!(records_kept = replay.records, bytes_dropped, "{corrupt}; cutting the log there");
            file.set_len(replay.end).map_err(io_error(&path))?;
            file.sync_all().map_err(io_error(&path))?;
        }
        Ok((MetadataLog { path, file, poisoned: false }, replay.image))
    }

    /// Appends one record durably: the frame is written and fdatasync'd before this
    /// returns. Does not check the record; a record that would fail to apply ends the log
    /// at the next replay, so write through [`Self::commit`] or check first.
    pub fn append(&mut self, record: &MetadataRecord) -> Result<(), MetadataError> {
        if self.poisoned {
            return Err(MetadataError::Poisoned { path: self.path.clone() });
        }
        let frame = encode_frame(record)?;
        let written = self.file.write_all(&frame).and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            self.poisoned = true;
            return Err(MetadataError::Io { path: self.path.clone(), source });
        }
        Ok(())
    }

    /// Checks the record against `image`, appends it, then applies it: the one order in
    /// which the image never runs ahead of the log and the log never holds a record that
    /// fails on replay.
    pub fn commit(
        &mut self,
        image: &mut MetadataImage,
        record: &MetadataRecord,
    ) -> Result<(), MetadataError> {
        image.check(record)?;
        self.append(record)?;
        image.apply(record).expect("checked before the append, and nothing changed since");
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn sync_dir(dir: &Path) -> Result<(), MetadataError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// What replaying a log's bytes produced.
#[derive(Debug)]
pub(crate) struct Replay {
    pub(crate) image: MetadataImage,
    pub(crate) records: usize,
    /// End of the last good frame: the whole input unless `cut` is set.
    pub(crate) end: u64,
    /// Why replay stopped before the end of the input.
    pub(crate) cut: Option<String>,
}

/// Replays frames from the start of `bytes` until the end or the first bad frame. Pure, so
/// that tests and the fuzz target (through [`crate::fuzzing`]) drive it without files.
pub(crate) fn replay(bytes: &[u8]) -> Replay {
    let mut image = MetadataImage::default();
    let mut records = 0;
    let mut position = 0;
    while position < bytes.len() {
        let stop =
            |image, reason| Replay { image, records, end: position as u64, cut: Some(reason) };
        let (record, frame_bytes) = match decode_frame(&bytes[position..]) {
            Ok(decoded) => decoded,
            Err(reason) => return stop(image, reason.to_string()),
        };
        if let Err(error) = image.apply(&record) {
            return stop(image, format!("record does not apply: {error}"));
        }
        records += 1;
        position += frame_bytes;
    }
    assert_eq!(position, bytes.len());
    Replay { image, records, end: position as u64, cut: None }
}

/// Encodes one frame, and decodes it again before it can be written: a record the reader
/// would reject must not become durable.
pub(crate) fn encode_frame(record: &MetadataRecord) -> Result<Vec<u8>, MetadataError> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(record)
        .map_err(|source| MetadataError::Encode { source })?;
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&length| length <= FRAME_PAYLOAD_BYTES_MAX)
        .ok_or(MetadataError::RecordTooLarge {
            bytes: payload.len(),
            bytes_max: FRAME_PAYLOAD_BYTES_MAX,
        })?;
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    assert_eq!(decode_frame(&frame).as_ref(), Ok(&(record.clone(), frame.len())));
    Ok(frame)
}

/// Why the bytes at a position of the metadata log hold no valid frame. A torn frame is
/// what a crash during an append leaves at the end of the log; the other kinds are
/// damage.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("torn frame header: {got} of {} bytes", FRAME_HEADER_BYTES)]
    TornHeader { got: usize },
    #[error("frame length {length} exceeds {}", FRAME_PAYLOAD_BYTES_MAX)]
    TooLong { length: u32 },
    #[error("torn frame: {got} of {length} payload bytes")]
    TornPayload { got: usize, length: usize },
    #[error("crc32c {computed:#010x} does not match stored {stored:#010x}")]
    Crc { computed: u32, stored: u32 },
    /// rkyv's error, as text (its type is neither `Clone` nor `Eq`).
    #[error("undecodable record: {0}")]
    Undecodable(String),
}

/// Decodes the frame at the start of `bytes`: the record and the frame's length, or why
/// the bytes hold no valid frame.
pub(crate) fn decode_frame(bytes: &[u8]) -> Result<(MetadataRecord, usize), FrameError> {
    let Some((header, rest)) = bytes.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::TornHeader { got: bytes.len() });
    };
    let (length, crc) = header.split_at(4);
    let length = u32::from_be_bytes(length.try_into().expect("header split at 4 of 8 bytes"));
    let crc = u32::from_be_bytes(crc.try_into().expect("header split at 4 of 8 bytes"));
    if length > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError::TooLong { length });
    }
    let length = length as usize;
    let Some(payload) = rest.get(..length) else {
        return Err(FrameError::TornPayload { got: rest.len(), length });
    };
    let crc_computed = crc32c::crc32c(payload);
    if crc_computed != crc {
        return Err(FrameError::Crc { computed: crc_computed, stored: crc });
    }
    // rkyv reads archived values in place, so the payload needs its alignment.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(length);
    aligned.extend_from_slice(payload);
    let record = rkyv::from_bytes::<MetadataRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|error| FrameError::Undecodable(error.to_string()))?;
    Ok((record, FRAME_HEADER_BYTES + length))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> [u8; 16] {
        let mut id = [0; 16];
        id[15] = n;
        id
    }

    fn create(name: &str, n: u8, partitions: i32) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: name.to_string(),
            topic_id: id(n),
            partitions,
            replication_factor: 1,
            configs: vec![("cleanup.policy".to_string(), "delete".to_string())],
        }
    }

    fn delete(name: &str) -> MetadataRecord {
        MetadataRecord::DeleteTopic { name: name.to_string() }
    }

    fn grow(name: &str, partitions: i32) -> MetadataRecord {
        MetadataRecord::CreatePartitions { name: name.to_string(), partitions }
    }

    fn set_configs(name: &str, configs: &[(&str, &str)]) -> MetadataRecord {
        let configs = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        MetadataRecord::SetTopicConfigs { name: name.to_string(), configs }
    }

    fn frame_len(record: &MetadataRecord) -> u64 {
        encode_frame(record).unwrap().len() as u64
    }

    fn file_len(log: &MetadataLog) -> u64 {
        fs::metadata(log.path()).unwrap().len()
    }

    /// Applies a record that must fail, and checks that the image did not change.
    fn apply_rejected(image: &mut MetadataImage, record: &MetadataRecord) -> MetadataError {
        let before = image.clone();
        let error = image.apply(record).unwrap_err();
        assert_eq!(*image, before);
        error
    }

    #[test]
    fn create_and_duplicate_create() {
        let mut image = MetadataImage::default();
        assert!(image.is_empty());
        image.apply(&create("orders", 1, 3)).unwrap();
        let topic = image.topic("orders").unwrap();
        assert_eq!(topic.name, "orders");
        assert_eq!(topic.topic_id, id(1));
        assert_eq!(topic.partitions, 3);
        assert_eq!(topic.replication_factor, 1);
        assert_eq!(topic.configs.get("cleanup.policy").map(String::as_str), Some("delete"));
        assert_eq!(topic.configs.len(), 1);
        assert_eq!(image.len(), 1);

        let error = apply_rejected(&mut image, &create("orders", 2, 1));
        assert!(matches!(error, MetadataError::TopicExists { ref name } if name == "orders"));
        let error = apply_rejected(&mut image, &create("payments", 1, 1));
        assert!(matches!(
            error,
            MetadataError::DuplicateTopicId { ref name, topic_id, ref existing }
                if name == "payments" && topic_id == id(1) && existing == "orders"
        ));
        assert_eq!(image.len(), 1);
    }

    #[test]
    fn create_rejects_bad_counts_and_zero_id() {
        let mut image = MetadataImage::default();
        let error = apply_rejected(&mut image, &create("t", 1, 0));
        assert!(matches!(
            error,
            MetadataError::InvalidPartitions { partitions: 0, partitions_min: 1, .. }
        ));
        let mut record = create("t", 1, 1);
        if let MetadataRecord::CreateTopic { replication_factor, .. } = &mut record {
            *replication_factor = 0;
        }
        let error = apply_rejected(&mut image, &record);
        assert!(matches!(
            error,
            MetadataError::InvalidReplicationFactor { replication_factor: 0, .. }
        ));
        let error = apply_rejected(&mut image, &create("t", 0, 1));
        assert!(matches!(error, MetadataError::InvalidTopicId { ref name } if name == "t"));
        assert!(image.is_empty());
    }

    #[test]
    fn delete_and_topic_by_id() {
        let mut image = MetadataImage::default();
        image.apply(&create("a", 1, 1)).unwrap();
        image.apply(&create("b", 2, 1)).unwrap();
        assert_eq!(image.topic_by_id(&id(1)).unwrap().name, "a");
        assert_eq!(image.topic_by_id(&id(2)).unwrap().name, "b");
        assert!(image.topic_by_id(&id(3)).is_none());

        image.apply(&delete("a")).unwrap();
        assert!(image.topic("a").is_none());
        assert!(image.topic_by_id(&id(1)).is_none());
        assert_eq!(image.topic_by_id(&id(2)).unwrap().name, "b");
        assert_eq!(image.len(), 1);

        let error = apply_rejected(&mut image, &delete("a"));
        assert!(matches!(error, MetadataError::UnknownTopic { ref name } if name == "a"));
        // The name and the id are free again.
        image.apply(&create("a", 1, 5)).unwrap();
        assert_eq!(image.topic_by_id(&id(1)).unwrap().partitions, 5);
    }

    #[test]
    fn create_partitions_only_grows() {
        let mut image = MetadataImage::default();
        image.apply(&create("t", 1, 3)).unwrap();
        image.apply(&grow("t", 5)).unwrap();
        assert_eq!(image.topic("t").unwrap().partitions, 5);
        for partitions in [5, 4, 0, -1] {
            let error = apply_rejected(&mut image, &grow("t", partitions));
            assert!(matches!(
                error,
                MetadataError::InvalidPartitions { partitions: p, partitions_min: 6, .. }
                    if p == partitions
            ));
        }
        let error = apply_rejected(&mut image, &grow("u", 9));
        assert!(matches!(error, MetadataError::UnknownTopic { ref name } if name == "u"));
        assert_eq!(image.topic("t").unwrap().partitions, 5);
    }

    #[test]
    fn set_topic_configs_replaces_the_whole_set() {
        let mut image = MetadataImage::default();
        image.apply(&create("t", 1, 1)).unwrap();
        image.apply(&set_configs("t", &[("retention.ms", "1000"), ("segment.ms", "5")])).unwrap();
        let configs = &image.topic("t").unwrap().configs;
        let expected: BTreeMap<String, String> = [("retention.ms", "1000"), ("segment.ms", "5")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(*configs, expected);

        // A repeated key keeps its last value.
        image.apply(&set_configs("t", &[("retention.ms", "1"), ("retention.ms", "2")])).unwrap();
        let configs = &image.topic("t").unwrap().configs;
        assert_eq!(configs.len(), 1);
        assert_eq!(configs["retention.ms"], "2");

        image.apply(&set_configs("t", &[])).unwrap();
        assert!(image.topic("t").unwrap().configs.is_empty());
        let error = apply_rejected(&mut image, &set_configs("u", &[]));
        assert!(matches!(error, MetadataError::UnknownTopic { .. }));
    }

    #[test]
    fn topics_iterate_sorted_by_name() {
        let mut image = MetadataImage::default();
        for (n, name) in ["c", "a", "b"].iter().enumerate() {
            image.apply(&create(name, n as u8 + 1, 1)).unwrap();
        }
        let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn topic_names() {
        let long = "x".repeat(250);
        for name in ["", ".", "..", long.as_str(), "a/b", "a b", "é", "a\0"] {
            let error = validate_topic_name(name).unwrap_err();
            assert!(
                matches!(error, MetadataError::InvalidTopicName { name: ref n, .. } if n == name)
            );
            let mut image = MetadataImage::default();
            let error = apply_rejected(&mut image, &create(name, 1, 1));
            assert!(matches!(error, MetadataError::InvalidTopicName { .. }));
        }
        let longest = "x".repeat(249);
        for name in ["orders-1.v2_x", "...", "_", "-", longest.as_str()] {
            validate_topic_name(name).unwrap();
        }
    }

    #[test]
    fn new_topic_ids_are_version_4_and_distinct() {
        let ids: Vec<[u8; 16]> = (0..1000).map(|_| new_topic_id()).collect();
        for id in &ids {
            assert_ne!(*id, [0; 16]);
            assert_eq!(id[6] >> 4, 4);
            assert_eq!(id[8] >> 6, 0b10);
            assert_ne!(id[0] >> 2, 0b11_1110);
        }
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn open_creates_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let (log, image) = MetadataLog::open(dir.path()).unwrap();
        assert!(image.is_empty());
        assert_eq!((image.offset(), image.next_offset()), (-1, 0));
        assert_eq!(log.path(), dir.path().join("__cluster_metadata").join("metadata.log"));
        assert_eq!(file_len(&log), 0);
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let records = [
            create("a", 1, 1),
            create("b", 2, 2),
            grow("a", 4),
            set_configs("b", &[("retention.ms", "60000")]),
            delete("b"),
            create("b", 3, 7),
        ];
        let mut expected = MetadataImage::default();
        {
            let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
            for record in &records {
                log.commit(&mut image, record).unwrap();
                expected.apply(record).unwrap();
            }
            assert_eq!(image, expected);
            assert_eq!(file_len(&log), records.iter().map(frame_len).sum::<u64>());
        }
        let (_, image) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(image, expected);
        assert_eq!(image.offset(), records.len() as i64 - 1, "the offset of the last record");
        assert_eq!(image.topic("a").unwrap().partitions, 4);
        assert_eq!(image.topic("b").unwrap().topic_id, id(3));
        // The re-created topic starts from its own overrides, not the deleted one's.
        let configs = &image.topic("b").unwrap().configs;
        assert_eq!(configs.keys().collect::<Vec<_>>(), ["cleanup.policy"]);
    }

    #[test]
    fn commit_rejects_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
        log.commit(&mut image, &create("a", 1, 1)).unwrap();
        let error = log.commit(&mut image, &create("a", 2, 1)).unwrap_err();
        assert!(matches!(error, MetadataError::TopicExists { .. }));
        assert_eq!(file_len(&log), frame_len(&create("a", 1, 1)));
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let records = [create("a", 1, 1), create("b", 2, 1), create("c", 3, 1)];
        let end_of_two = frame_len(&records[0]) + frame_len(&records[1]);
        {
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            for record in &records {
                log.append(record).unwrap();
            }
            let len = file_len(&log);
            assert_eq!(len, end_of_two + frame_len(&records[2]));
            File::options().write(true).open(log.path()).unwrap().set_len(len - 3).unwrap();
        }
        let (mut log, image) = MetadataLog::open(dir.path()).unwrap();
        let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(file_len(&log), end_of_two);

        log.append(&records[2]).unwrap();
        drop(log);
        let (log, image) = MetadataLog::open(dir.path()).unwrap();
        let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(file_len(&log), end_of_two + frame_len(&records[2]));
    }

    #[test]
    fn bad_crc_in_the_middle_cuts_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let records = [create("a", 1, 1), create("b", 2, 1), create("c", 3, 1)];
        let end_of_one = frame_len(&records[0]);
        {
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            for record in &records {
                log.append(record).unwrap();
            }
            // Flip one payload byte of the second record.
            let mut bytes = fs::read(log.path()).unwrap();
            let at = end_of_one as usize + FRAME_HEADER_BYTES + 2;
            bytes[at] ^= 0xff;
            fs::write(log.path(), &bytes).unwrap();
        }
        let (log, image) = MetadataLog::open(dir.path()).unwrap();
        let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(file_len(&log), end_of_one);
    }

    #[test]
    fn record_that_fails_apply_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let records = [create("a", 1, 1), delete("nope"), create("c", 3, 1)];
        {
            let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
            // append does not check, so it can write what replay must refuse.
            for record in &records {
                log.append(record).unwrap();
            }
        }
        let (log, image) = MetadataLog::open(dir.path()).unwrap();
        assert_eq!(image.len(), 1);
        assert!(image.topic("a").is_some());
        assert_eq!(file_len(&log), frame_len(&records[0]));
    }

    #[test]
    fn zero_filled_and_oversized_tails_are_cut() {
        let record = create("a", 1, 1);
        let mut frame = encode_frame(&record).unwrap();
        let good = frame.len() as u64;

        // A crash can leave a zero-filled tail; a zero header passes its CRC (crc32c of
        // nothing is 0) but holds no record.
        let mut zeros = frame.clone();
        zeros.resize(frame.len() + 4096, 0);
        let replay_zeros = replay(&zeros);
        assert_eq!(replay_zeros.records, 1);
        assert_eq!(replay_zeros.end, good);
        assert!(replay_zeros.cut.unwrap().starts_with("undecodable record"));

        frame.extend_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        let replay_large = replay(&frame);
        assert_eq!(replay_large.records, 1);
        assert_eq!(replay_large.end, good);
        assert!(replay_large.cut.unwrap().contains("exceeds"));
    }

    #[test]
    fn oversized_record_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
        log.commit(&mut image, &create("a", 1, 1)).unwrap();
        let value = "x".repeat(FRAME_PAYLOAD_BYTES_MAX as usize);
        let record = set_configs("a", &[("k", value.as_str())]);
        let error = log.commit(&mut image, &record).unwrap_err();
        assert!(matches!(
            error,
            MetadataError::RecordTooLarge { bytes_max: FRAME_PAYLOAD_BYTES_MAX, .. }
        ));
        assert_eq!(file_len(&log), frame_len(&create("a", 1, 1)));
        assert_eq!(image.topic("a").unwrap().configs.len(), 1);
    }

    /// Topic name to (topic id, partitions, configs): the simple model the image must match.
    type Reference = BTreeMap<String, ([u8; 16], i32, BTreeMap<String, String>)>;

    /// Records over a small pool of names and ids, so that conflicts are common.
    fn record_strategy() -> impl Strategy<Value = MetadataRecord> {
        let name = prop::sample::select(vec!["a", "b", "c", "", "x/y"]).prop_map(String::from);
        let configs = prop::collection::vec(
            (
                prop::sample::select(vec!["retention.ms", "segment.bytes"]).prop_map(String::from),
                "[0-9]{0,4}",
            ),
            0..3,
        );
        prop_oneof![
            (name.clone(), 0u8..4, -1i32..5, -1i16..3, configs.clone()).prop_map(
                |(name, n, partitions, replication_factor, configs)| {
                    MetadataRecord::CreateTopic {
                        name,
                        topic_id: id(n),
                        partitions,
                        replication_factor,
                        configs,
                    }
                }
            ),
            name.clone().prop_map(|name| MetadataRecord::DeleteTopic { name }),
            (name.clone(), -1i32..8).prop_map(|(name, partitions)| {
                MetadataRecord::CreatePartitions { name, partitions }
            }),
            (name, configs)
                .prop_map(|(name, configs)| MetadataRecord::SetTopicConfigs { name, configs }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The image built in memory equals the image replayed from disk, and matches a
        /// plain map of (id, partitions, configs) kept alongside as a reference.
        #[test]
        fn image_equals_replay(records in prop::collection::vec(record_strategy(), 0..40)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
            let mut reference: Reference =
                BTreeMap::new();
            let mut committed = 0;
            for record in &records {
                let before = image.clone();
                if log.commit(&mut image, record).is_err() {
                    prop_assert_eq!(&image, &before);
                    continue;
                }
                committed += 1;
                match record.clone() {
                    MetadataRecord::CreateTopic { name, topic_id, partitions, configs, .. } => {
                        reference.insert(name, (topic_id, partitions, configs.into_iter().collect()));
                    }
                    MetadataRecord::DeleteTopic { name } => {
                        reference.remove(&name);
                    }
                    MetadataRecord::CreatePartitions { name, partitions } => {
                        reference.get_mut(&name).unwrap().1 = partitions;
                    }
                    MetadataRecord::SetTopicConfigs { name, configs } => {
                        reference.get_mut(&name).unwrap().2 = configs.into_iter().collect();
                    }
                    MetadataRecord::ProducerIds { .. } => {}
                }
            }
            let flattened: Reference = image
                .topics()
                .map(|t| (t.name.clone(), (t.topic_id, t.partitions, t.configs.clone())))
                .collect();
            prop_assert_eq!(&flattened, &reference);
            for topic in image.topics() {
                prop_assert_eq!(image.topic_by_id(&topic.topic_id), Some(topic));
            }
            drop(log);

            let bytes = fs::read(dir.path().join(METADATA_DIR).join(METADATA_FILE)).unwrap();
            let replayed = replay(&bytes);
            prop_assert_eq!(replayed.records, committed);
            prop_assert!(replayed.cut.is_none());
            let (_, reopened) = MetadataLog::open(dir.path()).unwrap();
            prop_assert_eq!(&reopened, &image);
        }

        /// Cutting a valid log at any byte keeps exactly the records whose frames end at or
        /// before the cut.
        #[test]
        fn any_truncation_keeps_the_whole_frames(cut_at in 0usize..1000) {
            let records = [
                create("a", 1, 1),
                create("b", 2, 2),
                grow("a", 3),
                set_configs("b", &[("retention.ms", "5")]),
                delete("a"),
            ];
            let mut bytes = Vec::new();
            let mut ends = vec![0u64];
            let mut images = vec![MetadataImage::default()];
            for record in &records {
                bytes.extend_from_slice(&encode_frame(record).unwrap());
                ends.push(bytes.len() as u64);
                let mut image = images.last().unwrap().clone();
                image.apply(record).unwrap();
                images.push(image);
            }
            let cut_at = cut_at.min(bytes.len());
            let kept = ends.iter().rposition(|&end| end <= cut_at as u64).unwrap();
            let replayed = replay(&bytes[..cut_at]);
            prop_assert_eq!(replayed.records, kept);
            prop_assert_eq!(replayed.end, ends[kept]);
            prop_assert_eq!(replayed.cut.is_some(), ends[kept] != cut_at as u64);
            prop_assert_eq!(&replayed.image, &images[kept]);
        }
    }
}
