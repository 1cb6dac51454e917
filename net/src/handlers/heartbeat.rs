//! Heartbeat (key 12): keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to
//! rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{GroupAnswer, GroupCall, HeartbeatArgs};

pub async fn handle(ctx: &RequestContext, request: HeartbeatRequest) -> HeartbeatResponse {
    let shard = &ctx.shard;
    let group = request.group_id.to_string();
    let args = HeartbeatArgs {
        group: group.clone(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
    };
    let mut response = HeartbeatResponse::default();
    response.error_code = match shard
        .coordinate(&group, GroupCall::Heartbeat(args))
        .await
        .map_err(NotServing::code)
    {
        Ok(GroupAnswer::Heartbeat(error)) => error,
        Ok(_) => code::UNKNOWN_SERVER_ERROR,
        Err(error) => error,
    };
    response
}
