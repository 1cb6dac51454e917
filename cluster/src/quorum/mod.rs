//! The controller quorum: TiKV's raft-rs (`RawNode`) over durable storage in
//! `<data_dir>/__cluster_metadata/raft/`, sans-I/O. The caller owns the clock, the network
//! and the application: it ticks the node every 100 ms, hands it peers' messages, and
//! after each call polls it for messages to send and committed entries to apply
//! ([`QuorumNode::poll`]). The same node runs in the seeded simulation that checks the
//! quorum's safety under loss, reordering, partitions and crashes (`sim.rs`).
//!
//! Driving a node, on the controller's quorum thread:
//! - every [`TICK_MS`], [`QuorumNode::tick`];
//! - for each message from a peer, [`decode_message`] then [`QuorumNode::step`];
//! - for each client request on the leader, [`QuorumNode::propose`];
//! - after any of those, [`QuorumNode::poll`]: send its messages ([`encode_message`];
//!   report each snapshot's delivery with [`QuorumNode::report_snapshot`]) and apply its
//!   [`Committed`] entries and snapshots in order;
//! - when [`QuorumNode::should_compact`], hand over the application's state with
//!   [`QuorumNode::compact`].
//!
//! Node ids are Kafka's `node.id` values ([`BrokerId`], may be 0). raft-rs reserves id 0,
//! so inside the quorum a node's raft id is its node id plus one; no raft id appears in
//! this module's API, only in the opaque [`Message`]s the transport carries.

use crate::BrokerId;

mod codec;
mod log;
mod node;
pub mod storage;

#[cfg(test)]
mod sim;

pub use codec::{decode_message, encode_message, CodecError};
pub use node::{
    Committed, Output, ProposeError, QuorumError, QuorumNode, QuorumOptions, QuorumStatus,
    StepError, VoterStatus,
};
pub use raft::eraftpb::Message;
pub use storage::{Durability, QuorumStorage, StorageError};

/// How often the caller ticks a node. Timeouts below are in ticks.
pub const TICK_MS: u64 = 100;
/// Ticks without a leader's message after which a follower campaigns (randomized between
/// this and twice this): 1 to 2 seconds.
pub const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats: every tick.
pub const HEARTBEAT_TICKS: usize = 1;
/// Entries by which the commit index on disk may trail the node's: a restarted node
/// re-applies up to the one on disk and learns the rest from the leader.
pub const COMMIT_PERSIST_LAG_MAX: u64 = 16;

const _: () = assert!(ELECTION_TICKS > HEARTBEAT_TICKS);

/// Bytes of data in one proposal (one Raft entry's data and context together).
pub const ENTRY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes of one snapshot's application data. A snapshot travels in one message.
pub const SNAPSHOT_DATA_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of entries the leader packs into one append message (raft-rs sends at least one
/// entry however large).
pub const APPEND_BYTES_MAX: u64 = 8 * 1024 * 1024;
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

/// The raft id of a node: its node id plus one, as raft-rs reserves 0. `None` for a
/// negative node id, which Kafka never assigns.
fn raft_id(node_id: BrokerId) -> Option<u64> {
    u64::try_from(node_id).ok().map(|id| id + 1)
}

/// The node id of a raft id; `None` for 0 (raft-rs's "nobody") and ids no node id maps to.
fn node_id(raft_id: u64) -> Option<BrokerId> {
    raft_id.checked_sub(1).and_then(|id| BrokerId::try_from(id).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_map_to_nonzero_raft_ids_and_back() {
        assert_eq!(raft_id(0), Some(1));
        assert_eq!(raft_id(BrokerId::MAX), Some(BrokerId::MAX as u64 + 1));
        assert_eq!(raft_id(-1), None);
        assert_eq!(node_id(0), None);
        assert_eq!(node_id(1), Some(0));
        assert_eq!(node_id(BrokerId::MAX as u64 + 1), Some(BrokerId::MAX));
        assert_eq!(node_id(BrokerId::MAX as u64 + 2), None);
        for id in [0, 1, 7, 1000, BrokerId::MAX] {
            assert_eq!(raft_id(id).and_then(node_id), Some(id));
        }
    }
}
