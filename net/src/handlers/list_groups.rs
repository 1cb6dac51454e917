//! ListGroups (key 16): every group of every coordinator shard, optionally filtered by
//! state (v4+) and type (v5+; all our groups are "classic").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::group::{GroupAnswer, GroupCall};

pub async fn handle(ctx: &RequestContext, request: ListGroupsRequest) -> ListGroupsResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let mut response = ListGroupsResponse::default();
    let types: Vec<String> = request.types_filter.iter().map(|t| t.to_lowercase()).collect();
    if !types.is_empty() && !types.iter().any(|t| t == "classic") {
        return response;
    }
    let states = request.states_filter.iter().map(|s| s.to_string()).collect();
    let mut listings = Vec::new();
    for answer in shard
        .coordinate_all(GroupCall::List { states })
        .await
        .into_iter()
        .map(|answer| answer.map_err(NotServing::code))
    {
        match answer {
            Ok(GroupAnswer::List(found)) => listings.extend(found),
            Ok(_) => {}
            Err(error) => response.error_code = error,
        }
    }
    listings.sort_by(|a, b| a.group.cmp(&b.group));
    for listing in listings {
        let mut group = ListedGroup::default();
        group.group_id = GroupId(str_bytes(&listing.group));
        group.protocol_type = str_bytes(&listing.protocol_type);
        if version >= 4 {
            group.group_state = str_bytes(&listing.state);
        }
        if version >= 5 {
            group.group_type = str_bytes("Classic");
        }
        response.groups.push(group);
    }
    response
}
