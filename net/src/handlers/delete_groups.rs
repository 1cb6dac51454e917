//! DeleteGroups (key 42): deletes empty groups and their committed offsets (tombstones in
//! `__consumer_offsets`); a group with members is NON_EMPTY_GROUP.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, GroupId};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{GroupAnswer, GroupCall};

pub async fn handle(ctx: &RequestContext, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let shard = &ctx.shard;
    let mut response = DeleteGroupsResponse::default();
    for group_id in &request.groups_names {
        let group = group_id.0.to_string();
        let error = match shard
            .coordinate(&group, GroupCall::Delete(vec![group.clone()]))
            .await
            .map_err(NotServing::code)
        {
            Ok(GroupAnswer::Delete(results)) => {
                results.first().map_or(code::UNKNOWN_SERVER_ERROR, |(_, error)| *error)
            }
            Ok(_) => code::UNKNOWN_SERVER_ERROR,
            Err(error) => error,
        };
        let mut result = DeletableGroupResult::default();
        result.group_id = GroupId(str_bytes(&group));
        result.error_code = error;
        response.results.push(result);
    }
    response
}
