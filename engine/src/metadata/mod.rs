//! Cluster metadata for a single-node broker: topics, partition counts, topic ids and
//! per-topic config overrides, kept as an append-only log of [`MetadataRecord`]s in
//! `<data_dir>/__cluster_metadata/metadata.log` and replayed on start-up.
//!
//! The records are the source of truth and [`MetadataImage`] is a pure function of them,
//! so that a Raft quorum can later replicate the same records and every node arrives at
//! the same image.
//!
//! ```text
//! file    = [magic "SLMD"][format: u32 BE = 1] frame*
//! frame   = [length: u32 BE][crc32c of payload: u32 BE][payload]
//! payload = [record type: u16 BE][record version: u16 BE][body: rkyv bytes]   (see codec)
//! ```
//!
//! A record's offset is its position in the log (the first record is offset 0); an image
//! knows the offset of the last record it applied.
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
use tracing::{info, warn};

pub mod codec;

/// Directory under the data directory, named as Kafka's KRaft metadata log directory.
pub const METADATA_DIR: &str = "__cluster_metadata";
pub const METADATA_FILE: &str = "metadata.log";

/// Bytes of a frame header: payload length then payload CRC, both u32 big-endian.
pub const FRAME_HEADER_BYTES: usize = 8;
pub use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, TOPIC_NAME_BYTES_MAX};

/// One durable change to the cluster metadata.
/// A change to the cluster metadata. On disk each variant has its own record type and
/// version ([`codec`]). The rkyv derive is here only to read logs of format 0, which
/// stored this enum whole: its variants must keep their order.
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
    /// in blocks, so ids are never reused after a restart).
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
    #[error("metadata log {path} holds, at byte {position}, a record this version of Sluice does not know ({reason}): it was written by a newer version; refusing to start rather than cut it")]
    NewerFormat { path: PathBuf, position: u64, reason: String },
    #[error(
        "metadata log {path} is in format {format}; this version of Sluice reads formats 0 to {}",
        codec::FILE_FORMAT
    )]
    UnknownFormat { path: PathBuf, format: u32 },
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
    /// Records in the log: the offset the next one takes.
    next_offset: i64,
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
        // A header torn by a crash while the file was being created: no record was ever
        // written after it.
        if bytes.len() < codec::FILE_HEADER_BYTES && bytes.starts_with(&codec::FILE_MAGIC) {
            file.set_len(0).map_err(io_error(&path))?;
            bytes.clear();
        }
        let legacy = !bytes.is_empty() && !bytes.starts_with(&codec::FILE_MAGIC);
        let frames_at = if legacy { 0 } else { codec::FILE_HEADER_BYTES };
        if bytes.is_empty() {
            file.write_all(&codec::file_header())
                .and_then(|()| file.sync_data())
                .map_err(io_error(&path))?;
        } else if !legacy {
            let format = bytes
                .get(4..codec::FILE_HEADER_BYTES)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            if format != Some(codec::FILE_FORMAT) {
                return Err(MetadataError::UnknownFormat {
                    path,
                    format: format.unwrap_or(u32::MAX),
                });
            }
        }
        let frames = bytes.get(frames_at..).unwrap_or_default();
        let replay =
            if legacy { replay_with(frames, codec::decode_legacy) } else { replay(frames) };
        if let Some(reason) = &replay.cut {
            let position = (frames_at as u64) + replay.end;
            if replay.newer {
                return Err(MetadataError::NewerFormat { path, position, reason: reason.clone() });
            }
            let corrupt =
                MetadataError::Corrupt { path: path.clone(), position, reason: reason.clone() };
            let bytes_dropped = bytes.len() as u64 - position;
            warn!(records_kept = replay.records, bytes_dropped, "{corrupt}; cutting the log there");
            file.set_len(position).map_err(io_error(&path))?;
            file.sync_all().map_err(io_error(&path))?;
        }
        if legacy {
            // The old file is kept beside the new one: a broker of the previous format
            // cannot read the new one (it would take the header for a frame too long and
            // cut the log), so going back means putting this copy back first.
            let kept = path.with_extension("log.format0");
            fs::copy(&path, &kept).map_err(io_error(&kept))?;
            file = rewrite(&path, &replay.applied)?;
            info!(records = replay.records, path = %path.display(), "metadata log rewritten with typed, versioned records (format {})", codec::FILE_FORMAT);
        }
        let next_offset = replay.image.next_offset();
        Ok((MetadataLog { path, file, poisoned: false, next_offset }, replay.image))
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
        self.next_offset += 1;
        Ok(())
    }

    /// The offset the next appended record takes (the records in the log).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
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

/// Writes `records` as a log of the current format to a temporary file, syncs it and
/// renames it over `path` (so a crash leaves the old log or the new one, whole), and
/// returns the new file open for appends.
fn rewrite(path: &Path, records: &[MetadataRecord]) -> Result<File, MetadataError> {
    let mut bytes = codec::file_header().to_vec();
    for record in records {
        bytes.extend(encode_frame(record)?);
    }
    crate::checkpoint::write_atomically(path, "log.rewrite", &bytes).map_err(io_error(path))?;
    OpenOptions::new().read(true).append(true).open(path).map_err(io_error(path))
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
    /// Replay stopped at a whole frame of a record type this build does not know (a newer
    /// writer's), not at damage.
    pub(crate) newer: bool,
    /// The records applied, in order.
    pub(crate) applied: Vec<MetadataRecord>,
}

/// Replays frames from the start of `bytes` until the end or the first bad frame. Pure, so
/// that tests and the fuzz target (through [`crate::fuzzing`]) drive it without files.
pub(crate) fn replay(bytes: &[u8]) -> Replay {
    replay_with(bytes, codec::decode)
}

/// [`replay`] of a format-0 log (untyped records).
pub(crate) fn replay_legacy(bytes: &[u8]) -> Replay {
    replay_with(bytes, codec::decode_legacy)
}

/// [`replay`] with the payload decoder of a log format.
fn replay_with(bytes: &[u8], decode: fn(&[u8]) -> Result<MetadataRecord, FrameError>) -> Replay {
    let mut image = MetadataImage::default();
    let mut applied = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let stop = |image, applied: Vec<MetadataRecord>, reason, newer| Replay {
            image,
            records: applied.len(),
            end: position as u64,
            cut: Some(reason),
            newer,
            applied,
        };
        let (record, frame_bytes) = match decode_frame_with(&bytes[position..], decode) {
            Ok(decoded) => decoded,
            Err(error) => {
                let newer = matches!(error, FrameError::Unknown { .. });
                return stop(image, applied, error.to_string(), newer);
            }
        };
        if let Err(error) = image.apply(&record) {
            return stop(image, applied, format!("record does not apply: {error}"), false);
        }
        applied.push(record);
        position += frame_bytes;
    }
    assert_eq!(position, bytes.len());
    Replay { image, records: applied.len(), end: position as u64, cut: None, newer: false, applied }
}

/// Encodes one frame, and decodes it again before it can be written: a record the reader
/// would reject must not become durable.
pub(crate) fn encode_frame(record: &MetadataRecord) -> Result<Vec<u8>, MetadataError> {
    let payload = codec::encode(record).map_err(|source| MetadataError::Encode { source })?;
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
    /// A whole frame of a record type or version this build does not know.
    #[error("record type {record_type} version {version} is unknown")]
    Unknown { record_type: u16, version: u16 },
}

/// Decodes the frame at the start of `bytes`: the record and the frame's length, or why
/// the bytes hold no valid frame.
pub(crate) fn decode_frame(bytes: &[u8]) -> Result<(MetadataRecord, usize), FrameError> {
    decode_frame_with(bytes, codec::decode)
}

/// [`decode_frame`] with the payload decoder of a log format.
fn decode_frame_with(
    bytes: &[u8],
    decode: fn(&[u8]) -> Result<MetadataRecord, FrameError>,
) -> Result<(MetadataRecord, usize), FrameError> {
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
    Ok((decode(payload)?, FRAME_HEADER_BYTES + length))
}

#[cfg(test)]
mod tests;
