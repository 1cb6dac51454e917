//! LeaveGroup (key 13): members leave at once instead of waiting for their session to
//! time out; v3+ leaves many (static members by instance id) in one request.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{GroupAnswer, GroupCall, LeaveOutcome, Leaving};

pub async fn handle(ctx: &RequestContext, request: LeaveGroupRequest) -> LeaveGroupResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let group = request.group_id.to_string();
    let members: Vec<Leaving> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| Leaving {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![Leaving { member_id: request.member_id.to_string(), instance_id: None }]
    };
    let outcome = match shard
        .coordinate(&group, GroupCall::Leave { group: group.clone(), members })
        .await
        .map_err(NotServing::code)
    {
        Ok(GroupAnswer::Leave(outcome)) => outcome,
        Ok(_) => LeaveOutcome { error: code::UNKNOWN_SERVER_ERROR, members: Vec::new() },
        Err(error) => LeaveOutcome { error, members: Vec::new() },
    };
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.error_code = outcome.error;
        response.members = outcome
            .members
            .into_iter()
            .map(|(member_id, instance_id, error)| {
                let mut member = MemberResponse::default();
                member.member_id = str_bytes(&member_id);
                member.group_instance_id = instance_id.map(|i| str_bytes(&i));
                member.error_code = error;
                member
            })
            .collect();
    } else {
        // One member: its error is the request's.
        response.error_code = match outcome.error {
            code::NONE => outcome.members.first().map_or(code::NONE, |(_, _, error)| *error),
            error => error,
        };
    }
    response
}
