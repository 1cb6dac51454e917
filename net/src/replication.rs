//! Replication on one shard: the replica fetcher (followers copy their leaders' logs) and
//! the leader's ISR changes (AlterPartition to the controller).
//!
//! The fetcher is Kafka's `ReplicaFetcherThread`, per shard: for every leader broker that
//! leads some partition this shard follows, one link (a task and one connection) sends
//! Kafka's Fetch with this broker's id as `replica_id`, every partition the pair
//! replicates in the one request, each from the follower's log end with its
//! `LastFetchedEpoch`. The answer's records are appended as they are (the leader's offsets
//! and epochs); a `DivergingEpoch` truncates the follower's log to where the two histories
//! part (KIP-320), so replicas never diverge whatever the sequence of leader changes; the
//! leader's high watermark comes back with every answer.
//!
//! The ISR task runs every `ISR_CHECK_INTERVAL` on every shard: for each partition it leads,
//! the ISR the leader's view of its followers calls for (see
//! `sluice_engine::partition::isr`); the changes go to the controller in one write, each
//! naming the leader epoch and partition epoch it was computed at, so a stale one is
//! refused rather than applied over a newer state.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest};
use sluice_cluster::controller::rpc::Intent;
use sluice_engine::batch::BatchIter;
use sluice_engine::checkpoint::TopicPartition;
use sluice_engine::clock::Clock;
use tracing::{debug, info, warn};

use crate::client::{Connection, ConnectionOptions};
use crate::error::{code, KafkaError};
use crate::replica::Partition;
use crate::shard::Shard;
use crate::throttle::LogThrottle;

/// How often a leader looks at its followers for ISR changes (Kafka checks every
/// `replica.lag.time.max.ms / 2`; this is finer so a follower that caught up joins soon).
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How often the shard looks for leaders it needs a link to.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the shard's replication until it stops: starts a link per leader broker, and
/// asks for the ISR changes its led partitions need.
pub async fn run(shard: Rc<Shard>) {
    let mut links: HashMap<i32, (glommio::Task<()>, Rc<Cell<bool>>)> = HashMap::new();
    let mut last_isr_check = std::time::Instant::now();
    let mut isr_sent: HashMap<TopicPartition, (i32, u64)> = HashMap::new();
    while !shard.stopping() {
        // A link ends by itself once nothing on this shard follows its leader (it is
        // never cancelled: it may be appending).
        links.retain(|_, (_, done)| !done.get());
        let mut leaders: Vec<i32> =
            shard.replicas.following().into_iter().map(|(_, leader)| leader).collect();
        leaders.sort_unstable();
        leaders.dedup();
        for leader in leaders {
            if leader != shard.config.node_id && !links.contains_key(&leader) {
                let done = Rc::new(Cell::new(false));
                let ended = done.clone();
                let shard = shard.clone();
                let task = glommio::spawn_local(async move {
                    link(shard, leader).await;
                    ended.set(true);
                });
                links.insert(leader, (task, done));
            }
        }
        if last_isr_check.elapsed() >= ISR_CHECK_INTERVAL {
            last_isr_check = std::time::Instant::now();
            isr_changes(&shard, &mut isr_sent).await;
        }
        glommio::timer::sleep(LINK_CHECK_INTERVAL).await;
    }
    for (_, (task, _)) in links {
        task.await;
    }
}

/// Asks the controller for the ISR changes the partitions this shard leads need. One
/// change per partition and partition epoch is in flight at a time (the next comes once
/// the metadata moved on, or after a second).
async fn isr_changes(shard: &Rc<Shard>, sent: &mut HashMap<TopicPartition, (i32, u64)>) {
    let node = shard.config.node_id;
    let now_ms = shard.clock.monotonic_ms();
    let lag_max_ms = shard.config.replication.lag_time_max_ms;
    let mut intents = Vec::new();
    let mut keys = Vec::new();
    for partition in shard.replicas.led() {
        let tp = partition.tp().clone();
        let Some(isr) = partition.replica.proposed_isr(node, now_ms, lag_max_ms) else {
            sent.remove(&tp);
            continue;
        };
        let (placement, isr) = {
            let image = shard.metadata();
            let placement = image.topic(&tp.topic).and_then(|t| t.placement(tp.partition).cloned());
            // Only brokers that are neither fenced nor shutting down may join (KIP-841), so a
            // follower that just died is not proposed again and again.
            let eligible =
                |broker: i32| image.broker(broker).is_some_and(|b| !b.fenced && !b.shutting_down);
            let current = placement.as_ref().map(|p| p.isr.clone()).unwrap_or_default();
            let isr: Vec<i32> =
                isr.into_iter().filter(|b| current.contains(b) || eligible(*b)).collect();
            (placement, isr)
        };
        let Some(placement) = placement else { continue };
        let mut sorted = isr.clone();
        sorted.sort_unstable();
        let mut current = placement.isr.clone();
        current.sort_unstable();
        if sorted == current {
            sent.remove(&tp);
            continue;
        }
        if placement.leader != node || placement.leader_epoch != partition.replica.leader_epoch() {
            continue;
        }
        if let Some(&(epoch, at_ms)) = sent.get(&tp) {
            if epoch == placement.partition_epoch && now_ms.saturating_sub(at_ms) < 1_000 {
                continue;
            }
        }
        sent.insert(tp.clone(), (placement.partition_epoch, now_ms));
        info!(partition = %tp, from = ?placement.isr, to = ?isr, "asking the controller to change the ISR");
        intents.push(Intent::AlterPartition {
            topic: tp.topic.clone(),
            partition: tp.partition,
            leader: node,
            leader_epoch: placement.leader_epoch,
            partition_epoch: placement.partition_epoch,
            isr,
        });
        keys.push(tp);
    }
    if intents.is_empty() {
        return;
    }
    // Not awaited here: the controller's answer must not hold up the shard's links.
    let shard = shard.clone();
    glommio::spawn_local(async move {
        match shard.controller_write(intents, false).await {
            Ok((outcomes, _)) => {
                for (tp, outcome) in keys.iter().zip(outcomes) {
                    if !outcome.is_ok() {
                        debug!(partition = %tp, code = outcome.code, message = %outcome.message, "ISR change refused");
                    }
                }
            }
            Err(error) => warn!(code = error.code, message = %error.message, "ISR changes not sent to the controller"),
        }
    })
    .detach();
}

/// What a link knows of one partition it fetches, at the time it asked.
struct Asked {
    partition: Rc<Partition>,
    epoch: i32,
    offset: i64,
}

/// One leader broker's link: fetches every partition this shard follows from it until
/// there are none (or the shard stops).
async fn link(shard: Rc<Shard>, leader: i32) {
    let settings = shard.config.replication.clone();
    let backoff = Duration::from_millis(settings.fetch_backoff_ms);
    let failures = LogThrottle::new(Duration::from_secs(10));
    let mut connection: Option<Connection> = None;
    info!(leader, "replica fetcher link started");
    loop {
        if shard.stopping() {
            break;
        }
        let asked: BTreeMap<TopicPartition, Asked> = shard
            .replicas
            .following()
            .into_iter()
            .filter(|&(_, l)| l == leader)
            .filter_map(|(tp, _)| {
                let partition = shard.replicas.partition(&tp)?;
                let asked = Asked {
                    epoch: partition.replica.leader_epoch(),
                    offset: partition.replica.log_end_offset(),
                    partition,
                };
                Some((tp, asked))
            })
            .collect();
        if asked.is_empty() {
            break;
        }
        if connection.is_none() {
            let address = leader_address(&shard, leader);
            let Some(address) = address else {
                glommio::timer::sleep(backoff).await;
                continue;
            };
            let options = ConnectionOptions {
                client_id: format!("sluice-replica-{}", shard.config.node_id),
                in_flight_max: 1,
                request_timeout: Duration::from_secs(10),
                ..ConnectionOptions::default()
            };
            match Connection::connect(&address, options).await {
                Ok(opened) => connection = Some(opened),
                Err(error) => {
                    if let Some(held_back) = failures.admit(std::time::Instant::now()) {
                        warn!(leader, %error, not_logged = held_back, "replica fetcher cannot connect to its leader");
                    }
                    glommio::timer::sleep(backoff).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else { continue };
        let request = fetch_request(shard.config.node_id, &settings, &asked);
        let answer = async {
            let version = open.version::<FetchRequest>()?;
            let future = open.send(version, &request).await?;
            future.await
        };
        // The leader holds the fetch up to its wait; a much longer silence is a dead link.
        let wait = Duration::from_millis(u64::try_from(settings.fetch_wait_max_ms).unwrap_or(0));
        let timed = futures_lite::future::or(async { Some(answer.await) }, async {
            glommio::timer::sleep(wait + Duration::from_secs(10)).await;
            None
        });
        let response = match timed.await {
            Some(Ok(response)) => response,
            Some(Err(error)) => {
                if let Some(held_back) = failures.admit(std::time::Instant::now()) {
                    warn!(leader, %error, not_logged = held_back, "replica fetch failed");
                }
                connection = None;
                glommio::timer::sleep(backoff).await;
                continue;
            }
            None => {
                warn!(leader, "replica fetch unanswered: reconnecting");
                connection = None;
                continue;
            }
        };
        let mut failed = false;
        for topic in response.responses {
            let name = topic.topic.0.to_string();
            for data in topic.partitions {
                let tp = TopicPartition::new(name.clone(), data.partition_index);
                let Some(asked) = asked.get(&tp) else { continue };
                if let Err(reason) = apply(&shard, &tp, asked, data).await {
                    failed = true;
                    if let Some(held_back) = failures.admit(std::time::Instant::now()) {
                        warn!(partition = %tp, leader, %reason, not_logged = held_back, "replica fetch of a partition failed");
                    }
                }
            }
        }
        if failed {
            glommio::timer::sleep(backoff.min(Duration::from_millis(200))).await;
        }
    }
    info!(leader, "replica fetcher link stopped");
}

fn fetch_request(
    node: i32,
    settings: &crate::config::ReplicationConfig,
    asked: &BTreeMap<TopicPartition, Asked>,
) -> FetchRequest {
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(node);
    request.max_wait_ms = settings.fetch_wait_max_ms;
    request.min_bytes = 1;
    request.max_bytes = settings.fetch_response_max_bytes;
    request.isolation_level = 0;
    request.session_id = 0;
    request.session_epoch = -1;
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (tp, asked) in asked {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_current_leader_epoch(asked.epoch)
            .with_fetch_offset(asked.offset)
            .with_last_fetched_epoch(asked.partition.replica.latest_log_epoch())
            .with_log_start_offset(asked.partition.replica.log_start_offset())
            .with_partition_max_bytes(settings.fetch_max_bytes);
        match topics.last_mut() {
            Some(topic) if topic.topic.0.as_str() == tp.topic => topic.partitions.push(partition),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic(topic_name(&tp.topic))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    request.topics = topics;
    request
}

/// Applies one partition's part of a fetch answer, if the partition is still followed at
/// the epoch and offset it was asked at.
async fn apply(
    shard: &Rc<Shard>,
    tp: &TopicPartition,
    asked: &Asked,
    data: kafka_protocol::messages::fetch_response::PartitionData,
) -> Result<(), String> {
    let partition = &asked.partition;
    let replica = &partition.replica;
    let _held = partition.replication.lock().await;
    if replica.is_leader()
        || replica.leader_epoch() != asked.epoch
        || replica.log_end_offset() != asked.offset
        || shard.replicas.partition(tp).is_none()
    {
        // Its role, epoch or log changed while the fetch was out: the next one asks anew.
        return Ok(());
    }
    match data.error_code {
        code::NONE => {}
        code::NOT_LEADER_OR_FOLLOWER
        | code::FENCED_LEADER_EPOCH
        | code::UNKNOWN_LEADER_EPOCH
        | code::UNKNOWN_TOPIC_OR_PARTITION => {
            // The metadata will say where the leader went.
            return Err(format!("leader answered error {}", data.error_code));
        }
        code::OFFSET_OUT_OF_RANGE if asked.offset > data.high_watermark.max(0) => {
            // Ahead of the leader without epochs to compare: keep what the leader has
            // acknowledged, fetch the rest again.
            let end =
                replica.truncate_to(data.high_watermark.max(0)).await.map_err(|e| e.to_string())?;
            info!(partition = %tp, end, "follower ahead of its leader: truncated to the high watermark");
            return Ok(());
        }
        code::OFFSET_OUT_OF_RANGE if asked.offset < data.log_start_offset => {
            // The leader's retention deleted what this replica still lacks: start over
            // at the leader's log start.
            let start = replica
                .truncate_fully_and_start_at(data.log_start_offset)
                .await
                .map_err(|e| e.to_string())?;
            warn!(partition = %tp, start, behind = asked.offset, "follower behind its leader's log start: started over empty");
            return Ok(());
        }
        other => return Err(format!("leader answered error {other}")),
    }
    if data.diverging_epoch.epoch >= 0 {
        let (epoch, end_offset) = (data.diverging_epoch.epoch, data.diverging_epoch.end_offset);
        // Where the histories part: the leader's end of that epoch, or this replica's, if
        // its own end of that epoch comes first.
        let (_, own_end) = replica.end_offset_for(epoch);
        let cut = end_offset.min(own_end).min(replica.log_end_offset());
        let end = replica.truncate_to(cut).await.map_err(|e| e.to_string())?;
        info!(partition = %tp, leader_epoch = epoch, leader_end_offset = end_offset, end, "follower log diverged from its leader's: truncated");
        return Ok(());
    }
    if let Some(records) = data.records.filter(|r| !r.is_empty()) {
        // Whole batches only (a fetch may end inside one).
        let mut whole = 0usize;
        for batch in BatchIter::new(&records) {
            match batch {
                Ok(batch) => whole += batch.size(),
                Err(_) => break,
            }
        }
        if whole > 0 {
            let mut bytes = records[..whole].to_vec();
            replica.append_as_follower(&mut bytes).await.map_err(|e| e.to_string())?;
        }
    }
    replica.follow_high_watermark(data.high_watermark);
    Ok(())
}

/// Sends a transaction's markers for `partitions` to their leader broker `leader`
/// (WriteTxnMarkers, on a connection of its own: markers are written once per
/// transaction and partition leader). Any partition's error fails the call.
pub async fn send_markers(
    shard: &Rc<Shard>,
    leader: i32,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    partitions: &[TopicPartition],
) -> Result<(), KafkaError> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{ProducerId, WriteTxnMarkersRequest};
    let unavailable = |message: String| KafkaError::new(code::NOT_LEADER_OR_FOLLOWER, message);
    let address = leader_address(shard, leader)
        .ok_or_else(|| unavailable(format!("broker {leader} has no known address")))?;
    let options = ConnectionOptions {
        client_id: format!("sluice-txn-markers-{}", shard.config.node_id),
        request_timeout: Duration::from_secs(10),
        ..ConnectionOptions::default()
    };
    let mut connection = Connection::connect(&address, options)
        .await
        .map_err(|error| unavailable(error.to_string()))?;
    let mut marker = WritableTxnMarker::default();
    marker.producer_id = ProducerId(producer_id);
    marker.producer_epoch = epoch;
    marker.transaction_result = commit;
    for tp in partitions {
        match marker.topics.last_mut() {
            Some(topic) if topic.name.0.as_str() == tp.topic => {
                topic.partition_indexes.push(tp.partition)
            }
            _ => marker.topics.push(
                WritableTxnMarkerTopic::default()
                    .with_name(topic_name(&tp.topic))
                    .with_partition_indexes(vec![tp.partition]),
            ),
        }
    }
    let mut request = WriteTxnMarkersRequest::default();
    request.markers = vec![marker];
    let response =
        connection.request(&request).await.map_err(|error| unavailable(error.to_string()))?;
    for result in &response.markers {
        for topic in &result.topics {
            for partition in &topic.partitions {
                if partition.error_code != code::NONE {
                    return Err(KafkaError::new(
                        partition.error_code,
                        format!(
                            "marker on {}-{} at broker {leader}",
                            topic.name.0.as_str(),
                            partition.partition_index
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A topic name for a request (the handlers have their own: the shard must not reach
/// them).
fn topic_name(name: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(kafka_protocol::protocol::StrBytes::from_string(
        name.to_string(),
    ))
}

/// The address of broker `id`'s client listener, from the metadata.
fn leader_address(shard: &Shard, id: i32) -> Option<String> {
    let image = shard.metadata();
    image.broker(id).and_then(|b| {
        let endpoint = b.client_endpoint()?;
        Some(format!("{}:{}", endpoint.host, endpoint.port))
    })
}
