//! The controller quorum: TiKV's raft-rs (`RawNode`) over durable storage in
//! `<data_dir>/__cluster_metadata/raft/`, sans-I/O. The caller owns the clock, the network
//! and the application: it ticks the node every 100 ms, hands it peers' messages, and
//! after each call polls it for messages to send and committed entries to apply
//! ([`QuorumNode::poll`]). The same node runs in the seeded simulation that checks the
//! quorum's safety under loss, reordering, partitions and crashes (`sim.rs`).
//!
//! Node ids are Kafka's `node.id` values ([`BrokerId`], may be 0). raft-rs reserves id 0,
//! so inside the quorum a node's raft id is its node id plus one; no raft id appears in
//! this module's API, only in the opaque [`Message`]s the transport carries.

pub mod storage;

pub use storage::{Durability, QuorumStorage, StorageError};

/// Bytes of data in one proposal (one Raft entry's data and context together).
pub const ENTRY_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of one snapshot's application data. A snapshot travels in one message.
pub const SNAPSHOT_DATA_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of entries the leader packs into one append message (raft-rs sends at least one
/// entry however large).
pub const APPEND_BYTES_MAX: u64 = 1024 * 1024;
/// Bytes of uncommitted entries a leader accepts before it drops proposals: bounds the
/// log a leader cut off from its followers grows.
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Bytes of one encoded message, the most [`decode_message`] accepts: a snapshot, or a
/// batch of entries, plus room for the message's own fields.
pub const MESSAGE_BYTES_MAX: usize = SNAPSHOT_DATA_BYTES_MAX + 1024 * 1024;

const _: () = assert!(ENTRY_BYTES_MAX as u64 <= APPEND_BYTES_MAX);
const _: () = assert!(2 * APPEND_BYTES_MAX as usize + 64 * 1024 <= MESSAGE_BYTES_MAX);
const _: () = assert!(UNCOMMITTED_BYTES_MAX >= ENTRY_BYTES_MAX as u64);
// Protobuf 2 computes message sizes in u32.
const _: () = assert!(MESSAGE_BYTES_MAX < u32::MAX as usize);
