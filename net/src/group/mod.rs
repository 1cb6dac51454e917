//! Consumer groups: the classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup) and committed offsets, coordinated per group on the shard that owns the
//! group's partition of `__consumer_offsets`, and stored as records in that partition.
//!
//! The connection's shard decodes a request and sends the coordinator shard a
//! [`GroupCall`] (plain data, so it crosses the shard mesh); the coordinator runs it
//! against its groups ([`coordinator::Coordinator`]) and answers a [`GroupAnswer`],
//! which the handler turns into the response of the request's version.

pub mod coordinator;
pub mod records;

use bytes::Bytes;
use sluice_engine::checkpoint::TopicPartition;

/// Kafka's internal topic of committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Java's `String.hashCode`, over UTF-16 code units: Kafka places a group by it, so a
/// group lands on the same partition number as in Kafka.
pub fn java_string_hash(text: &str) -> i32 {
    text.encode_utf16().fold(0i32, |hash, unit| hash.wrapping_mul(31).wrapping_add(i32::from(unit)))
}

/// The `__consumer_offsets` partition of `group`: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions` (where `abs(MIN_VALUE)` is 0).
pub fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let hash = java_string_hash(group);
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

/// Who sent a request: the header's client id and the peer's address as Kafka prints
/// it (`/127.0.0.1`).
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub id: String,
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct JoinArgs {
    pub group: String,
    /// Empty on a first join.
    pub member_id: String,
    /// `group.instance.id`: set for static members (KIP-345).
    pub instance_id: Option<String>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// Assignment strategies the member supports, in its order of preference, with the
    /// member's subscription for each.
    pub protocols: Vec<(String, Bytes)>,
    pub client: Client,
    /// JoinGroup v4+: a first join without a member id is answered MEMBER_ID_REQUIRED
    /// with the id to join with (KIP-394).
    pub require_known_member_id: bool,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata, for the leader only.
    pub members: Vec<JoinedMember>,
    /// JoinGroup v9: the leader already has the assignment (a static leader rejoined a
    /// stable group) and must not compute a new one.
    pub skip_assignment: bool,
}

impl JoinOutcome {
    pub fn failed(error: i16, member_id: &str) -> Self {
        JoinOutcome {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncArgs {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// v5+: checked against the group's when present.
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    /// From the leader: each member's assignment.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub fn failed(error: i16) -> Self {
        SyncOutcome { error, ..Default::default() }
    }
}

#[derive(Debug, Clone)]
pub struct HeartbeatArgs {
    pub group: String,
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
}

/// One member leaving: by member id, or (static members, LeaveGroup v3+) by instance id
/// with an empty member id.
#[derive(Debug, Clone)]
pub struct Leaving {
    pub member_id: String,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaveOutcome {
    pub error: i16,
    /// Per leaving member, in request order: (member id, instance id, error).
    pub members: Vec<(String, Option<String>, i16)>,
}

#[derive(Debug, Clone)]
pub struct CommitArgs {
    pub group: String,
    /// -1 for a commit outside group management (a standalone consumer, an admin tool).
    pub generation: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub partitions: Vec<CommitPart>,
    /// TxnOffsetCommit: the transaction's producer (id, epoch). The offsets are written
    /// as part of the transaction and take effect when its commit marker is written.
    pub txn: Option<(i64, i16)>,
}

#[derive(Debug, Clone)]
pub struct CommitPart {
    pub tp: TopicPartition,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// A committed offset. Offset -1 means nothing is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

impl Committed {
    pub const NONE: Committed = Committed {
        offset: -1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: -1,
    };
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// The member's subscription for the group's protocol (stable groups only).
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupDescription {
    pub error: i16,
    pub group: String,
    /// Kafka's state names: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group: String,
    pub protocol_type: String,
    pub state: String,
}

/// A partition's committed offset, or its error (UNSTABLE_OFFSET_COMMIT).
pub type CommittedOrError = Result<Committed, i16>;

/// A group operation sent to the group's coordinator shard.
#[derive(Debug, Clone)]
pub enum GroupCall {
    Join(JoinArgs),
    Sync(SyncArgs),
    Heartbeat(HeartbeatArgs),
    Leave {
        group: String,
        members: Vec<Leaving>,
    },
    Commit(CommitArgs),
    /// `partitions: None` asks for every committed offset of the group.
    FetchOffsets {
        group: String,
        partitions: Option<Vec<TopicPartition>>,
        /// OffsetFetch v7+ `require_stable`: a partition whose offset is pending in an
        /// open transaction answers UNSTABLE_OFFSET_COMMIT.
        require_stable: bool,
    },
    DeleteOffsets {
        group: String,
        partitions: Vec<TopicPartition>,
    },
    Describe(Vec<String>),
    /// Every group this shard coordinates, filtered by Kafka state names (lower case;
    /// empty: all).
    List {
        states: Vec<String>,
    },
    Delete(Vec<String>),
}

/// A group coordinator's answer. Errors here are Kafka codes, not the coordinator's
/// typed errors: the answer is what the handler writes on the wire, and it crosses the
/// shard mesh as plain data.
#[derive(Debug, Clone)]
pub enum GroupAnswer {
    Join(JoinOutcome),
    Sync(SyncOutcome),
    Heartbeat(i16),
    Leave(LeaveOutcome),
    /// Per partition, in request order.
    Commit(Vec<i16>),
    FetchOffsets(Result<Vec<(TopicPartition, CommittedOrError)>, i16>),
    DeleteOffsets(Result<Vec<i16>, i16>),
    Describe(Vec<GroupDescription>),
    List(Vec<GroupListing>),
    Delete(Vec<(String, i16)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_java() {
        // Values of "...".hashCode() in Java.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("my-group"), -1_906_497_762);
        assert_eq!(java_string_hash("grüße"), 98_768_023);
        assert_eq!(offsets_partition("my-group", 50), 1_906_497_762 % 50);
        // Overflowing, negative: "polygenelubricants".hashCode() == Integer.MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(offsets_partition("polygenelubricants", 50), 0);
        assert_eq!(offsets_partition("hello", 50), 99_162_322 % 50);
    }
}
