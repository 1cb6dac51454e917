//! ElectLeaders (key 43): PREFERRED (0) or UNCLEAN (1) leader election, forwarded to the
//! active controller, which elects from the ISR (or, for UNCLEAN, any live replica of a
//! partition without a leader) and answers per partition: ELECTION_NOT_NEEDED,
//! PREFERRED_LEADER_NOT_AVAILABLE, ELIGIBLE_LEADERS_NOT_AVAILABLE or
//! UNKNOWN_TOPIC_OR_PARTITION as Kafka does. A null list means every partition; Kafka
//! then leaves out the partitions that needed no election.

use std::collections::BTreeMap;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
use sluice_cluster::controller::rpc::Intent;

use super::{str_bytes, topic_name, RequestContext};
use crate::error::code;

/// Kafka's `ElectionType`.
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

pub async fn handle(ctx: &RequestContext, request: ElectLeadersRequest) -> ElectLeadersResponse {
    let mut response = ElectLeadersResponse::default();
    // v0 has no election type: preferred.
    let unclean = match request.election_type {
        PREFERRED => false,
        UNCLEAN if ctx.version >= 1 => true,
        other => {
            response.error_code = code::INVALID_REQUEST;
            tracing::info!(election_type = other, "ElectLeaders with an unknown election type");
            return response;
        }
    };
    let all = request.topic_partitions.is_none();
    let partitions: Vec<(String, i32)> = request
        .topic_partitions
        .unwrap_or_default()
        .into_iter()
        .flat_map(|t| {
            let topic = t.topic.0.to_string();
            t.partitions.into_iter().map(move |p| (topic.clone(), p))
        })
        .collect();
    if !all && partitions.is_empty() {
        return response;
    }
    let intent = Intent::ElectLeaders { unclean, partitions };
    let outcome = match ctx.shard.controller_write(vec![intent], false).await {
        Ok((mut outcomes, _)) => outcomes.pop(),
        Err(error) => {
            response.error_code = error.code;
            return response;
        }
    };
    let Some(outcome) = outcome else { return response };
    if !outcome.is_ok() {
        response.error_code = outcome.code;
        return response;
    }
    let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
    for (topic, partition, error_code, message) in outcome.partitions {
        if all && error_code == code::ELECTION_NOT_NEEDED {
            continue;
        }
        let mut result = PartitionResult::default();
        result.partition_id = partition;
        result.error_code = error_code;
        result.error_message = (error_code != code::NONE).then(|| str_bytes(&message));
        by_topic.entry(topic).or_default().push(result);
    }
    response.replica_election_results = by_topic
        .into_iter()
        .map(|(topic, partition_result)| {
            let mut result = ReplicaElectionResult::default();
            result.topic = topic_name(&topic);
            result.partition_result = partition_result;
            result
        })
        .collect();
    response
}
