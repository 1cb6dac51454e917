//! DescribeGroups (key 15): state, protocol, members and their assignments. An unknown
//! group is "Dead" with no error before v6, GROUP_ID_NOT_FOUND from v6 (KIP-1043).

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, GroupId};

use super::str_bytes;
use super::RequestContext;
use crate::coordinator_host::NotServing;
use crate::error::code;
use crate::group::{GroupAnswer, GroupCall, GroupDescription};

/// Kafka's answer for "not asked" in `authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// Without an authorizer, every operation a group supports: READ 3, DELETE 6, DESCRIBE 8.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub async fn handle(
    ctx: &RequestContext,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let shard = &ctx.shard;
    let version = ctx.version;
    let mut response = DescribeGroupsResponse::default();
    for group_id in &request.groups {
        let group = group_id.0.to_string();
        let call = GroupCall::Describe(vec![group.clone()]);
        let description = match shard.coordinate(&group, call).await.map_err(NotServing::code) {
            Ok(GroupAnswer::Describe(mut found)) if found.len() == 1 => found.remove(0),
            Ok(_) => GroupDescription { error: code::UNKNOWN_SERVER_ERROR, ..Default::default() },
            Err(error) => GroupDescription { error, ..Default::default() },
        };
        let mut answer = DescribedGroup::default();
        answer.group_id = GroupId(str_bytes(&group));
        answer.error_code = description.error;
        answer.group_state = str_bytes(&description.state);
        if version >= 6 && description.error == code::NONE && description.state == "Dead" {
            answer.error_code = code::GROUP_ID_NOT_FOUND;
            answer.error_message = Some(str_bytes(&format!("group {group} not found")));
        }
        answer.protocol_type = str_bytes(&description.protocol_type);
        answer.protocol_data = str_bytes(&description.protocol);
        answer.members = description
            .members
            .into_iter()
            .map(|m| {
                let mut member = DescribedGroupMember::default();
                member.member_id = str_bytes(&m.member_id);
                if version >= 4 {
                    member.group_instance_id = m.instance_id.map(|i| str_bytes(&i));
                }
                member.client_id = str_bytes(&m.client_id);
                member.client_host = str_bytes(&m.client_host);
                member.member_metadata = m.metadata;
                member.member_assignment = m.assignment;
                member
            })
            .collect();
        if version >= 3 {
            answer.authorized_operations = if request.include_authorized_operations {
                GROUP_OPERATIONS
            } else {
                AUTHORIZED_OPERATIONS_OMITTED
            };
        }
        response.groups.push(answer);
    }
    response
}
