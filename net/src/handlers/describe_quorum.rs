//! DescribeQuorum (key 55), which `kafka-metadata-quorum.sh` sends: the controller
//! quorum's leader, its epoch (the Raft term), the high watermark, and each voter's log
//! end offset and last contact as the leader knows them. Answered by any broker, from
//! the active controller, for the one partition of `__cluster_metadata`.

use kafka_protocol::messages::describe_quorum_response::{PartitionData, ReplicaState, TopicData};
use kafka_protocol::messages::{BrokerId, DescribeQuorumRequest, DescribeQuorumResponse};
use sluice_cluster::controller::rpc::{ControllerRequest, ControllerResponse};
use sluice_engine::clock::Clock;

use super::{str_bytes, topic_name, RequestContext};
use crate::error::code;

const METADATA_TOPIC: &str = "__cluster_metadata";

pub async fn handle(
    ctx: &RequestContext,
    request: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let mut response = DescribeQuorumResponse::default();
    let asks_metadata = request.topics.iter().any(|t| {
        t.topic_name.0.as_str() == METADATA_TOPIC
            && t.partitions.iter().any(|p| p.partition_index == 0)
    });
    if !asks_metadata {
        response.error_code = code::INVALID_REQUEST;
        response.error_message = Some(str_bytes("only __cluster_metadata-0 has a quorum"));
        return response;
    }
    let mut partition = PartitionData::default();
    partition.partition_index = 0;
    match ctx.shard.controller_call(ControllerRequest::DescribeQuorum).await {
        Ok(ControllerResponse::Quorum { leader, leader_epoch, high_watermark, voters }) => {
            partition.leader_id = BrokerId(leader);
            partition.leader_epoch = i32::try_from(leader_epoch).unwrap_or(i32::MAX);
            partition.high_watermark = high_watermark;
            partition.current_voters = voters
                .into_iter()
                .map(|v| {
                    let mut state = ReplicaState::default();
                    state.replica_id = BrokerId(v.id);
                    state.log_end_offset = v.log_end_offset;
                    if ctx.version >= 1 {
                        let now = ctx.shard.clock.wall_ms();
                        let seen = if v.last_contact_ms < 0 { -1 } else { now - v.last_contact_ms };
                        state.last_fetch_timestamp = seen;
                        state.last_caught_up_timestamp = seen;
                    }
                    state
                })
                .collect();
        }
        Ok(ControllerResponse::NotController { .. }) => {
            partition.error_code = code::NOT_LEADER_OR_FOLLOWER;
        }
        Ok(other) => {
            partition.error_code = code::UNKNOWN_SERVER_ERROR;
            partition.error_message = Some(str_bytes(&format!("unexpected answer {other:?}")));
        }
        Err(error) => {
            partition.error_code = error.code;
            partition.error_message = Some(str_bytes(&error.message));
        }
    }
    let mut topic = TopicData::default();
    topic.topic_name = topic_name(METADATA_TOPIC);
    topic.partitions = vec![partition];
    response.topics = vec![topic];
    response
}
