//! SyncGroup (key 14): the leader hands in the assignment; every member gets its part
//! once it is stored.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{GroupAnswer, GroupCall, SyncArgs, SyncOutcome};

pub async fn handle(ctx: &RequestContext, request: SyncGroupRequest) -> SyncGroupResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let group = request.group_id.to_string();
    let args = SyncArgs {
        group: group.clone(),
        generation: request.generation_id,
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: request.protocol_type.as_ref().map(|s| s.to_string()),
        protocol: request.protocol_name.as_ref().map(|s| s.to_string()),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let outcome =
        match shard.coordinate(&group, GroupCall::Sync(args)).await.map_err(NotServing::code) {
            Ok(GroupAnswer::Sync(outcome)) => outcome,
            Ok(_) => SyncOutcome::failed(code::UNKNOWN_SERVER_ERROR),
            Err(error) => SyncOutcome::failed(error),
        };
    let mut response = SyncGroupResponse::default();
    response.error_code = outcome.error;
    response.assignment = outcome.assignment;
    if version >= 5 {
        response.protocol_type = outcome.protocol_type.map(|t| str_bytes(&t));
        response.protocol_name = outcome.protocol.map(|p| str_bytes(&p));
    }
    response
}
