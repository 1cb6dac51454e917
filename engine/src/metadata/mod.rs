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

/// The start of a snapshot of the metadata ([`MetadataImage::encode_snapshot`]).
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"SLMS";
/// Magic, format and next offset.
const SNAPSHOT_HEADER_BYTES: usize = 16;

/// Bytes of a frame header: payload length then payload CRC, both u32 big-endian.
pub const FRAME_HEADER_BYTES: usize = 8;
pub use crate::limits::{FRAME_PAYLOAD_BYTES_MAX, TOPIC_NAME_BYTES_MAX};

/// A change to the cluster metadata. On disk each variant has its own record type and
/// version ([`codec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A broker joins, or rejoins after a restart (Kafka's `RegisterBrokerRecord`). Its
    /// registration starts fenced; `epoch` (the broker epoch) is above every earlier
    /// registration's of the same id, so that a restarted broker is never taken for its
    /// former self. The controller uses the record's own offset, as Kafka does.
    RegisterBroker {
        id: i32,
        epoch: i64,
        /// Random per process start: tells a retried registration from a new one.
        incarnation_id: [u8; 16],
        endpoints: Vec<BrokerEndpoint>,
        rack: Option<String>,
    },
    /// A registered broker's state changes (Kafka's `BrokerRegistrationChangeRecord`):
    /// fenced (its session expired, or it has not caught up) or not, in controlled
    /// shutdown or not. `epoch` must be the registration's.
    ChangeBroker {
        id: i32,
        epoch: i64,
        fenced: bool,
        shutting_down: bool,
    },
    /// A broker leaves the cluster for good (Kafka's `UnregisterBrokerRecord`).
    UnregisterBroker {
        id: i32,
        epoch: i64,
    },
    /// A partition's replicas and leadership when it is created (Kafka's
    /// `PartitionRecord`), or in full in a snapshot.
    Partition(PartitionRecord),
    /// A change to a partition's leader, ISR or replicas (Kafka's `PartitionChangeRecord`):
    /// the leader epoch goes up by one when `leader` is set, the partition epoch with
    /// every change.
    PartitionChange(PartitionChangeRecord),
}

/// One listener of a broker, as clients are to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// The listener's name (`PLAINTEXT`, ...).
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// No leader: what Kafka writes as the leader of a partition none of whose in-sync
/// replicas can lead.
pub const NO_LEADER: i32 = -1;

/// See [`MetadataRecord::Partition`]. Broker ids are `node.id`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRecord {
    pub topic_id: [u8; 16],
    pub partition: i32,
    /// In preference order: the first is the preferred leader.
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// A member of the ISR, or [`NO_LEADER`].
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// Replicas a reassignment adds, and removes (both also in `replicas`).
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// See [`MetadataRecord::PartitionChange`]: the fields that are `Some` replace the
/// partition's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionChangeRecord {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub leader: Option<i32>,
    pub isr: Option<Vec<i32>>,
    pub replicas: Option<Vec<i32>>,
    pub adding: Option<Vec<i32>>,
    pub removing: Option<Vec<i32>>,
}

/// A registered broker, as the records so far describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistration {
    pub id: i32,
    pub epoch: i64,
    pub incarnation_id: [u8; 16],
    pub endpoints: Vec<BrokerEndpoint>,
    pub rack: Option<String>,
    pub fenced: bool,
    pub shutting_down: bool,
}

impl BrokerRegistration {
    /// The endpoint of the listener called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&BrokerEndpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The endpoint clients and other brokers connect to: the PLAINTEXT listener, else
    /// the first one registered.
    pub fn client_endpoint(&self) -> Option<&BrokerEndpoint> {
        self.endpoint("PLAINTEXT").or(self.endpoints.first())
    }
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
    /// Replicas and leadership per partition, for the partitions that have a
    /// [`MetadataRecord::Partition`]. A topic created before records had placements (a
    /// single-node broker's) has none until the broker places them at start-up.
    pub placements: BTreeMap<i32, PartitionRecord>,
}

impl TopicMetadata {
    /// The replicas and leadership of `partition`, if it has been placed.
    pub fn placement(&self, partition: i32) -> Option<&PartitionRecord> {
        self.placements.get(&partition)
    }
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
    /// Registered brokers by id.
    brokers: BTreeMap<i32, BrokerRegistration>,
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
    #[error("no topic has id {topic_id:02x?}")]
    UnknownTopicId { topic_id: [u8; 16] },
    #[error("topic {name}: partition {partition} {reason}")]
    InvalidPartition { name: String, partition: i32, reason: String },
    #[error("broker {id}: {reason}")]
    InvalidBroker { id: i32, reason: String },
    #[error("broker {id}: epoch {epoch} is not the registration's ({current:?})")]
    StaleBrokerEpoch { id: i32, epoch: i64, current: Option<i64> },
    #[error("a snapshot of the metadata {reason}")]
    Snapshot { reason: String },
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
            MetadataRecord::RegisterBroker { id, epoch, .. } => {
                if *id < 0 {
                    return Err(MetadataError::InvalidBroker {
                        id: *id,
                        reason: "a node.id is not negative".into(),
                    });
                }
                match self.brokers.get(id) {
                    Some(current) if current.epoch >= *epoch => Err(MetadataError::InvalidBroker {
                        id: *id,
                        reason: format!(
                            "a new registration's epoch {epoch} must be above {}",
                            current.epoch
                        ),
                    }),
                    _ => Ok(()),
                }
            }
            MetadataRecord::ChangeBroker { id, epoch, .. }
            | MetadataRecord::UnregisterBroker { id, epoch } => {
                let current = self.brokers.get(id).map(|b| b.epoch);
                if current != Some(*epoch) {
                    return Err(MetadataError::StaleBrokerEpoch {
                        id: *id,
                        epoch: *epoch,
                        current,
                    });
                }
                Ok(())
            }
            MetadataRecord::Partition(p) => {
                let topic = self.topic_of(&p.topic_id)?;
                let invalid = |reason: String| MetadataError::InvalidPartition {
                    name: topic.name.clone(),
                    partition: p.partition,
                    reason,
                };
                if p.partition < 0 || p.partition >= topic.partitions {
                    return Err(invalid(format!("is outside 0..{}", topic.partitions)));
                }
                if topic.placements.contains_key(&p.partition) {
                    return Err(invalid("is placed already".into()));
                }
                if p.leader_epoch < 0 || p.partition_epoch < 0 {
                    return Err(invalid("has a negative epoch".into()));
                }
                check_placement(&p.replicas, &p.isr, p.leader, &p.adding, &p.removing)
                    .map_err(invalid)
            }
            MetadataRecord::PartitionChange(c) => {
                let topic = self.topic_of(&c.topic_id)?;
                let Some(current) = topic.placements.get(&c.partition) else {
                    return Err(MetadataError::InvalidPartition {
                        name: topic.name.clone(),
                        partition: c.partition,
                        reason: "has no placement to change".into(),
                    });
                };
                let changed = current.changed(c);
                check_placement(
                    &changed.replicas,
                    &changed.isr,
                    changed.leader,
                    &changed.adding,
                    &changed.removing,
                )
                .map_err(|reason| MetadataError::InvalidPartition {
                    name: topic.name.clone(),
                    partition: c.partition,
                    reason,
                })
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
                    placements: BTreeMap::new(),
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
            MetadataRecord::RegisterBroker { id, epoch, incarnation_id, endpoints, rack } => {
                let registration = BrokerRegistration {
                    id: *id,
                    epoch: *epoch,
                    incarnation_id: *incarnation_id,
                    endpoints: endpoints.clone(),
                    rack: rack.clone(),
                    fenced: true,
                    shutting_down: false,
                };
                self.brokers.insert(*id, registration);
            }
            MetadataRecord::ChangeBroker { id, epoch: _, fenced, shutting_down } => {
                let broker = self.brokers.get_mut(id).expect("checked: the broker is registered");
                broker.fenced = *fenced;
                broker.shutting_down = *shutting_down;
            }
            MetadataRecord::UnregisterBroker { id, epoch: _ } => {
                self.brokers.remove(id);
            }
            MetadataRecord::Partition(p) => {
                let name = self.topic_names_by_id[&p.topic_id].clone();
                let topic = self.topics.get_mut(&name).expect("every topic id maps to a topic");
                topic.placements.insert(p.partition, p.clone());
            }
            MetadataRecord::PartitionChange(c) => {
                let name = self.topic_names_by_id[&c.topic_id].clone();
                let topic = self.topics.get_mut(&name).expect("every topic id maps to a topic");
                let placement = topic
                    .placements
                    .get_mut(&c.partition)
                    .expect("checked: the partition is placed");
                *placement = placement.changed(c);
            }
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

    /// Records that rebuild this image from an empty one (all but its offset): what a
    /// snapshot of the metadata holds, as Kafka's snapshots hold records.
    pub fn snapshot_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        if self.producer_ids_end > 0 {
            records.push(MetadataRecord::ProducerIds { end: self.producer_ids_end });
        }
        for broker in self.brokers.values() {
            records.push(MetadataRecord::RegisterBroker {
                id: broker.id,
                epoch: broker.epoch,
                incarnation_id: broker.incarnation_id,
                endpoints: broker.endpoints.clone(),
                rack: broker.rack.clone(),
            });
            if !broker.fenced || broker.shutting_down {
                records.push(MetadataRecord::ChangeBroker {
                    id: broker.id,
                    epoch: broker.epoch,
                    fenced: broker.fenced,
                    shutting_down: broker.shutting_down,
                });
            }
        }
        for topic in self.topics.values() {
            records.push(MetadataRecord::CreateTopic {
                name: topic.name.clone(),
                topic_id: topic.topic_id,
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                configs: topic.configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            });
            records.extend(topic.placements.values().cloned().map(MetadataRecord::Partition));
        }
        records
    }

    /// The image as a snapshot's bytes:
    /// `[magic "SLMS"][format: u32 BE = 1][next offset: i64 BE] frame*`, the frames those
    /// of the metadata log holding [`Self::snapshot_records`].
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, MetadataError> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&codec::FILE_FORMAT.to_be_bytes());
        bytes.extend_from_slice(&self.next_offset.to_be_bytes());
        for record in self.snapshot_records() {
            bytes.extend(encode_frame(&record)?);
        }
        Ok(bytes)
    }

    /// The image a snapshot's bytes hold (see [`Self::encode_snapshot`]). Unlike the log,
    /// a snapshot is all or nothing: any damage is an error.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<MetadataImage, MetadataError> {
        let fail = |reason: String| MetadataError::Snapshot { reason };
        let Some((header, frames)) = bytes.split_first_chunk::<SNAPSHOT_HEADER_BYTES>() else {
            return Err(fail(format!("of {} bytes has no header", bytes.len())));
        };
        if header[..4] != SNAPSHOT_MAGIC {
            return Err(fail("does not start with its magic".into()));
        }
        let format = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if format != codec::FILE_FORMAT {
            return Err(fail(format!("is in format {format}, not {}", codec::FILE_FORMAT)));
        }
        let next_offset = i64::from_be_bytes(header[8..16].try_into().expect("8 of 16 bytes"));
        let replayed = replay(frames);
        if let Some(cut) = replayed.cut {
            return Err(fail(format!("is damaged after {} records: {cut}", replayed.records)));
        }
        let mut image = replayed.image;
        if next_offset < image.next_offset {
            return Err(fail(format!(
                "claims offset {next_offset} but holds {} records",
                image.next_offset
            )));
        }
        image.next_offset = next_offset;
        Ok(image)
    }

    /// Registered brokers, by id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values()
    }

    pub fn broker(&self, id: i32) -> Option<&BrokerRegistration> {
        self.brokers.get(&id)
    }

    fn topic_of(&self, topic_id: &[u8; 16]) -> Result<&TopicMetadata, MetadataError> {
        self.topic_by_id(topic_id).ok_or(MetadataError::UnknownTopicId { topic_id: *topic_id })
    }

    fn existing(&self, name: &str) -> Result<&TopicMetadata, MetadataError> {
        self.topics.get(name).ok_or_else(|| MetadataError::UnknownTopic { name: name.to_string() })
    }
}

impl PartitionRecord {
    /// A new partition on `replicas`, all of them in sync, led by the first at epoch 0.
    pub fn new(topic_id: [u8; 16], partition: i32, replicas: Vec<i32>) -> Self {
        PartitionRecord {
            topic_id,
            partition,
            leader: replicas.first().copied().unwrap_or(NO_LEADER),
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    /// This placement with `change` applied: the leader epoch goes up when the change
    /// names a leader, the partition epoch always.
    pub fn changed(&self, change: &PartitionChangeRecord) -> PartitionRecord {
        let mut next = self.clone();
        if let Some(leader) = change.leader {
            next.leader = leader;
            next.leader_epoch = self.leader_epoch.saturating_add(1);
        }
        if let Some(isr) = &change.isr {
            next.isr = isr.clone();
        }
        if let Some(replicas) = &change.replicas {
            next.replicas = replicas.clone();
        }
        if let Some(adding) = &change.adding {
            next.adding = adding.clone();
        }
        if let Some(removing) = &change.removing {
            next.removing = removing.clone();
        }
        next.partition_epoch = self.partition_epoch.saturating_add(1);
        next
    }
}

/// What every stored placement satisfies: replicas are distinct broker ids and at least
/// one; the ISR, the replicas being added and those being removed are distinct members
/// of the replicas; the leader leads from the ISR or there is none; the ISR is empty
/// only without a leader.
fn check_placement(
    replicas: &[i32],
    isr: &[i32],
    leader: i32,
    adding: &[i32],
    removing: &[i32],
) -> Result<(), String> {
    fn distinct(ids: &[i32]) -> bool {
        ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id))
    }
    if replicas.is_empty() {
        return Err("has no replicas".into());
    }
    if !distinct(replicas) || replicas.iter().any(|&id| id < 0) {
        return Err(format!("replicas {replicas:?} are not distinct broker ids"));
    }
    for (what, ids) in [("ISR", isr), ("adding replicas", adding), ("removing replicas", removing)]
    {
        if !distinct(ids) || !ids.iter().all(|id| replicas.contains(id)) {
            return Err(format!("{what} {ids:?} are not distinct members of {replicas:?}"));
        }
    }
    if leader != NO_LEADER && !isr.contains(&leader) {
        return Err(format!("leader {leader} is not in the ISR {isr:?}"));
    }
    Ok(())
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

/// A batch of records as one Raft entry of the controller quorum holds them (and as
/// controllers send them to brokers): the frames of the metadata log, back to back.
pub fn encode_batch(records: &[MetadataRecord]) -> Result<Vec<u8>, MetadataError> {
    let mut bytes = Vec::new();
    for record in records {
        bytes.extend(encode_frame(record)?);
    }
    Ok(bytes)
}

/// The records of a batch ([`encode_batch`]); all or nothing.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<MetadataRecord>, FrameError> {
    let mut records = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let (record, length) = decode_frame(&bytes[position..])?;
        records.push(record);
        position += length;
    }
    Ok(records)
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
