//! The cluster's part of the broker configuration, under Kafka's property names.

use std::net::SocketAddr;

use crate::BrokerId;

/// One member of `controller.quorum.voters`: `ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: BrokerId,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.id, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.id, self.host, self.port)
        }
    }
}

/// Parses `controller.quorum.voters` as Kafka does: a comma-separated list of
/// `ID@HOST:PORT` (IPv6 hosts in brackets), ids distinct and not negative.
pub fn parse_voters(value: &str) -> Result<Vec<Voter>, String> {
    let mut voters: Vec<Voter> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || format!("controller.quorum.voters: cannot parse {entry:?} as ID@HOST:PORT");
        let (id, address) = entry.split_once('@').ok_or_else(bad)?;
        let id: BrokerId = id.trim().parse().map_err(|_| bad())?;
        if id < 0 {
            return Err(format!("controller.quorum.voters: node id {id} is negative"));
        }
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(format!("controller.quorum.voters: node id {id} is given twice"));
        }
        voters.push(Voter { id, host: host.to_string(), port });
    }
    Ok(voters)
}

/// What this node is and how it finds the controller quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `node.id`.
    pub node_id: BrokerId,
    /// `process.roles` has `broker`: this node serves clients.
    pub broker: bool,
    /// `process.roles` has `controller`: this node is a voter of the quorum.
    pub controller: bool,
    /// `controller.quorum.voters`. Empty: a one-node cluster whose controller runs in
    /// this process and talks to no one (what `sluice serve` without cluster properties
    /// is).
    pub voters: Vec<Voter>,
    /// Where this node's controller listens for the other voters and the brokers (the
    /// first of `controller.listener.names` in `listeners`); `None` without voters.
    pub controller_listen: Option<SocketAddr>,
    /// `broker.session.timeout.ms`: a broker whose heartbeats stop this long is fenced.
    pub session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `unclean.leader.election.enable`.
    pub unclean_leader_election: bool,
    /// `auto.leader.rebalance.enable`.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`, in ms.
    pub leader_imbalance_check_interval_ms: u64,
    /// `leader.imbalance.per.broker.percentage`.
    pub leader_imbalance_per_broker_percentage: u32,
    /// `offsets.topic.replication.factor` and `transaction.state.log.replication.factor`:
    /// `None` (not set) means min(3, live brokers).
    pub offsets_topic_replication_factor: Option<i16>,
    pub transaction_state_log_replication_factor: Option<i16>,
}

impl ClusterConfig {
    /// A one-node cluster with Kafka's defaults: broker and controller in one process.
    pub fn single_node(node_id: BrokerId) -> Self {
        ClusterConfig {
            node_id,
            broker: true,
            controller: true,
            voters: Vec::new(),
            controller_listen: None,
            session_timeout_ms: 9_000,
            heartbeat_interval_ms: 2_000,
            unclean_leader_election: false,
            auto_leader_rebalance: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
            offsets_topic_replication_factor: None,
            transaction_state_log_replication_factor: None,
        }
    }

    /// Whether the quorum is this process alone (no voters configured).
    pub fn is_single_node(&self) -> bool {
        self.voters.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_as_kafka_writes_them() {
        let voters = parse_voters("1@127.0.0.1:19093, 2@[::1]:29093,3@host-3:39093").unwrap();
        assert_eq!(
            voters,
            vec![
                Voter { id: 1, host: "127.0.0.1".into(), port: 19093 },
                Voter { id: 2, host: "::1".into(), port: 29093 },
                Voter { id: 3, host: "host-3".into(), port: 39093 },
            ]
        );
        assert_eq!(voters[1].to_string(), "2@[::1]:29093");
        assert_eq!(parse_voters("").unwrap(), vec![]);
        for bad in ["1@h", "x@h:1", "1@:9", "1@h:0", "-1@h:9", "1@h:9,1@g:9", "h:9"] {
            assert!(parse_voters(bad).is_err(), "{bad}");
        }
    }
}
