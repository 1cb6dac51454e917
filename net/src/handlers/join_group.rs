//! JoinGroup (key 11): a member joins (or rejoins) a group and waits for the rebalance
//! to complete; the leader's answer carries every member's subscription.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::group::{Client, GroupAnswer, GroupCall, JoinArgs, JoinOutcome};

pub async fn handle(ctx: &RequestContext, request: JoinGroupRequest) -> JoinGroupResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let client = Client { id: ctx.client_id().to_string(), host: ctx.client_host() };
    let group = request.group_id.to_string();
    let args = JoinArgs {
        group: group.clone(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves as both.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        client,
        require_known_member_id: version >= 4,
    };
    let member_id = args.member_id.clone();
    let outcome =
        match shard.coordinate(&group, GroupCall::Join(args)).await.map_err(NotServing::code) {
            Ok(GroupAnswer::Join(outcome)) => outcome,
            Ok(_) => JoinOutcome::failed(crate::error::code::UNKNOWN_SERVER_ERROR, &member_id),
            Err(error) => JoinOutcome::failed(error, &member_id),
        };
    let mut response = JoinGroupResponse::default();
    response.error_code = outcome.error;
    response.generation_id = outcome.generation;
    // Before v7 the protocol name is not nullable.
    response.protocol_name = match (outcome.protocol, version >= 7) {
        (Some(name), _) => Some(str_bytes(&name)),
        (None, true) => None,
        (None, false) => Some(str_bytes("")),
    };
    if version >= 7 {
        response.protocol_type = outcome.protocol_type.map(|t| str_bytes(&t));
    }
    response.leader = str_bytes(&outcome.leader);
    response.member_id = str_bytes(&outcome.member_id);
    if version >= 9 {
        response.skip_assignment = outcome.skip_assignment;
    }
    response.members = outcome
        .members
        .into_iter()
        .map(|m| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = str_bytes(&m.member_id);
            if version >= 5 {
                member.group_instance_id = m.instance_id.map(|i| str_bytes(&i));
            }
            member.metadata = m.metadata;
            member
        })
        .collect();
    response
}
