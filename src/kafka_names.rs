//! Apache Kafka's broker property names, Kafka 3.0 to 4.1, which `sluice serve` accepts
//! in a config file or `--set` so that a Kafka `server.properties` starts Sluice as it is.
//!
//! Where the names come from: every name in Kafka's broker configuration reference
//! (`generated/kafka_config.html` of the 3.0 to 3.9 and 4.1 documentation, generated from
//! `KafkaConfig`: ServerConfigs, KRaftConfigs, ZkConfigs, SocketServerConfigs,
//! ReplicationConfigs, ServerLogConfigs, CleanerConfig, GroupCoordinatorConfig,
//! ShareGroupConfig, TransactionLogConfig, TransactionStateManagerConfig, QuorumConfig,
//! QuotaConfig, MetricConfigs, RemoteLogManagerConfig, BrokerSecurityConfigs with the SSL
//! and SASL names, DelegationTokenManagerConfigs, PasswordEncoderConfigs), the internal
//! names `ConfigDef.defineInternal` adds (known to Kafka, absent from the reference), and
//! the two names Kafka's standard authorizer reads (`super.users`,
//! `allow.everyone.if.no.acl.found`). Names Kafka removed before 3.0 (`port`,
//! `host.name`, `advertised.host.name`, `advertised.port`, `quota.*.default`) are not
//! here: Kafka 3.x ignores them too, and a file that still has them is older than this
//! list promises to read.
//!
//! Besides the listed names Kafka accepts some families by prefix, and so do we:
//! `listener.name.<listener>.<name>` and `listener.name.<listener>.<mechanism>.<name>`
//! (per-listener SSL, SASL and connection settings), `config.providers[.*]` (KIP-421),
//! and the names under the tiered-storage plugin prefixes (`rsm.config.`, `rlmm.config.`
//! unless `remote.log.*.impl.prefix` says otherwise).
//!
//! Most of these names mean nothing to Sluice and are ignored (one warning line at
//! start lists them). The names Sluice does use (`log.dirs`, `listeners`, `node.id`,
//! `log.segment.bytes`, ...) are mapped in `config.rs`. Ignoring is safe for a name when
//! Sluice without it still does what the operator meant, or fails closed; group by group:
//!
//! - threads, buffers, purgatories, quotas, metrics, timeouts of internal clients: tuning
//!   of a Kafka design Sluice does not share (shards replace thread pools). Ignored.
//! - replication, controller quorum, ZooKeeper, inter-broker: Sluice is one node with no
//!   peers; `*.replication.factor` for internal topics is 1 in effect. Ignored (a
//!   controller listener in `listeners` is ignored too, see `config.rs`).
//! - log cleaner, tiered storage, timestamp bounds, broker-side recompression
//!   (`compression.type`): features Sluice does not have yet; data is kept as sent and
//!   retention still applies. Ignored, and the warning names them.
//! - SSL and SASL settings (`ssl.*`, `sasl.*`, `listener.name.*`, `principal.builder.class`,
//!   `connections.max.reauth.ms`, `delegation.token.*`, `super.users`): they only take
//!   effect on an SSL or SASL listener, and a client listener of that kind is refused at
//!   start (Sluice has no TLS or SASL yet), so nothing is ever served less securely than
//!   configured. Ignored.
//! - enforcement plugins: a non-empty `authorizer.class.name` (ACLs),
//!   `create.topic.policy.class.name` or `alter.config.policy.class.name` would, if
//!   ignored, let every client do what the operator forbade. These stop the broker at
//!   start ([`refusal`]).

/// Every Kafka broker property name, sorted (binary search).
pub const BROKER_NAMES: &[&str] = &[
    "add.partitions.to.txn.retry.backoff.max.ms",
    "add.partitions.to.txn.retry.backoff.ms",
    "advertised.listeners",
    "allow.everyone.if.no.acl.found",
    "alter.config.policy.class.name",
    "alter.log.dirs.replication.quota.window.num",
    "alter.log.dirs.replication.quota.window.size.seconds",
    "authorizer.class.name",
    "auto.create.topics.enable",
    "auto.include.jmx.reporter",
    "auto.leader.rebalance.enable",
    "background.threads",
    "broker.heartbeat.interval.ms",
    "broker.id",
    "broker.id.generation.enable",
    "broker.rack",
    "broker.session.timeout.ms",
    "client.quota.callback.class",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "connection.failed.authentication.delay.ms",
    "connections.max.idle.ms",
    "connections.max.reauth.ms",
    "control.plane.listener.name",
    "controlled.shutdown.enable",
    "controlled.shutdown.max.retries",
    "controlled.shutdown.retry.backoff.ms",
    "controller.listener.names",
    "controller.quorum.append.linger.ms",
    "controller.quorum.bootstrap.servers",
    "controller.quorum.election.backoff.max.ms",
    "controller.quorum.election.timeout.ms",
    "controller.quorum.fetch.timeout.ms",
    "controller.quorum.request.timeout.ms",
    "controller.quorum.retry.backoff.ms",
    "controller.quorum.voters",
    "controller.quota.window.num",
    "controller.quota.window.size.seconds",
    "controller.socket.timeout.ms",
    "create.topic.policy.class.name",
    "default.replication.factor",
    "delegation.token.expiry.check.interval.ms",
    "delegation.token.expiry.time.ms",
    "delegation.token.master.key",
    "delegation.token.max.lifetime.ms",
    "delegation.token.secret.key",
    "delete.records.purgatory.purge.interval.requests",
    "delete.topic.enable",
    "early.start.listeners",
    "eligible.leader.replicas.enable",
    "fetch.max.bytes",
    "fetch.purgatory.purge.interval.requests",
    "group.consumer.assignors",
    "group.consumer.heartbeat.interval.ms",
    "group.consumer.max.heartbeat.interval.ms",
    "group.consumer.max.session.timeout.ms",
    "group.consumer.max.size",
    "group.consumer.migration.policy",
    "group.consumer.min.heartbeat.interval.ms",
    "group.consumer.min.session.timeout.ms",
    "group.consumer.session.timeout.ms",
    "group.coordinator.append.linger.ms",
    "group.coordinator.new.enable",
    "group.coordinator.rebalance.protocols",
    "group.coordinator.threads",
    "group.initial.rebalance.delay.ms",
    "group.max.session.timeout.ms",
    "group.max.size",
    "group.min.session.timeout.ms",
    "group.share.assignors",
    "group.share.delivery.count.limit",
    "group.share.enable",
    "group.share.heartbeat.interval.ms",
    "group.share.max.groups",
    "group.share.max.heartbeat.interval.ms",
    "group.share.max.record.lock.duration.ms",
    "group.share.max.session.timeout.ms",
    "group.share.max.share.sessions",
    "group.share.max.size",
    "group.share.min.heartbeat.interval.ms",
    "group.share.min.record.lock.duration.ms",
    "group.share.min.session.timeout.ms",
    "group.share.partition.max.record.locks",
    "group.share.record.lock.duration.ms",
    "group.share.session.timeout.ms",
    "group.streams.heartbeat.interval.ms",
    "group.streams.max.heartbeat.interval.ms",
    "group.streams.max.session.timeout.ms",
    "group.streams.max.size",
    "group.streams.max.standby.replicas",
    "group.streams.min.heartbeat.interval.ms",
    "group.streams.min.session.timeout.ms",
    "group.streams.num.standby.replicas",
    "group.streams.session.timeout.ms",
    "initial.broker.registration.timeout.ms",
    "inter.broker.listener.name",
    "inter.broker.protocol.version",
    "kafka.metrics.polling.interval.secs",
    "kafka.metrics.reporters",
    "leader.imbalance.check.interval.seconds",
    "leader.imbalance.per.broker.percentage",
    "listener.security.protocol.map",
    "listeners",
    "log.cleaner.backoff.ms",
    "log.cleaner.dedupe.buffer.size",
    "log.cleaner.delete.retention.ms",
    "log.cleaner.enable",
    "log.cleaner.io.buffer.load.factor",
    "log.cleaner.io.buffer.size",
    "log.cleaner.io.max.bytes.per.second",
    "log.cleaner.max.compaction.lag.ms",
    "log.cleaner.min.cleanable.ratio",
    "log.cleaner.min.compaction.lag.ms",
    "log.cleaner.threads",
    "log.cleanup.policy",
    "log.dir",
    "log.dir.failure.timeout.ms",
    "log.dirs",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.flush.offset.checkpoint.interval.ms",
    "log.flush.scheduler.interval.ms",
    "log.flush.start.offset.checkpoint.interval.ms",
    "log.index.interval.bytes",
    "log.index.size.max.bytes",
    "log.initial.task.delay.ms",
    "log.local.retention.bytes",
    "log.local.retention.ms",
    "log.message.downconversion.enable",
    "log.message.format.version",
    "log.message.timestamp.after.max.ms",
    "log.message.timestamp.before.max.ms",
    "log.message.timestamp.difference.max.ms",
    "log.message.timestamp.type",
    "log.preallocate",
    "log.retention.bytes",
    "log.retention.check.interval.ms",
    "log.retention.hours",
    "log.retention.minutes",
    "log.retention.ms",
    "log.roll.hours",
    "log.roll.jitter.hours",
    "log.roll.jitter.ms",
    "log.roll.ms",
    "log.segment.bytes",
    "log.segment.delete.delay.ms",
    "max.connection.creation.rate",
    "max.connections",
    "max.connections.per.ip",
    "max.connections.per.ip.overrides",
    "max.incremental.fetch.session.cache.slots",
    "max.request.partition.size.limit",
    "message.max.bytes",
    "metadata.log.dir",
    "metadata.log.max.record.bytes.between.snapshots",
    "metadata.log.max.snapshot.interval.ms",
    "metadata.log.segment.bytes",
    "metadata.log.segment.min.bytes",
    "metadata.log.segment.ms",
    "metadata.max.idle.interval.ms",
    "metadata.max.retention.bytes",
    "metadata.max.retention.ms",
    "metric.reporters",
    "metrics.num.samples",
    "metrics.recording.level",
    "metrics.sample.window.ms",
    "min.insync.replicas",
    "node.id",
    "num.io.threads",
    "num.network.threads",
    "num.partitions",
    "num.recovery.threads.per.data.dir",
    "num.replica.alter.log.dirs.threads",
    "num.replica.fetchers",
    "offset.metadata.max.bytes",
    "offsets.commit.required.acks",
    "offsets.commit.timeout.ms",
    "offsets.load.buffer.size",
    "offsets.retention.check.interval.ms",
    "offsets.retention.minutes",
    "offsets.topic.compression.codec",
    "offsets.topic.num.partitions",
    "offsets.topic.replication.factor",
    "offsets.topic.segment.bytes",
    "password.encoder.cipher.algorithm",
    "password.encoder.iterations",
    "password.encoder.key.length",
    "password.encoder.keyfactory.algorithm",
    "password.encoder.old.secret",
    "password.encoder.secret",
    "principal.builder.class",
    "process.roles",
    "producer.id.expiration.check.interval.ms",
    "producer.id.expiration.ms",
    "producer.purgatory.purge.interval.requests",
    "queued.max.request.bytes",
    "queued.max.requests",
    "quota.window.num",
    "quota.window.size.seconds",
    "remote.fetch.max.wait.ms",
    "remote.list.offsets.request.timeout.ms",
    "remote.log.index.file.cache.total.size.bytes",
    "remote.log.manager.copier.thread.pool.size",
    "remote.log.manager.copy.max.bytes.per.second",
    "remote.log.manager.copy.quota.window.num",
    "remote.log.manager.copy.quota.window.size.seconds",
    "remote.log.manager.expiration.thread.pool.size",
    "remote.log.manager.fetch.max.bytes.per.second",
    "remote.log.manager.fetch.quota.window.num",
    "remote.log.manager.fetch.quota.window.size.seconds",
    "remote.log.manager.task.interval.ms",
    "remote.log.manager.task.retry.backoff.max.ms",
    "remote.log.manager.task.retry.backoff.ms",
    "remote.log.manager.task.retry.jitter",
    "remote.log.manager.thread.pool.size",
    "remote.log.metadata.custom.metadata.max.bytes",
    "remote.log.metadata.manager.class.name",
    "remote.log.metadata.manager.class.path",
    "remote.log.metadata.manager.impl.prefix",
    "remote.log.metadata.manager.listener.name",
    "remote.log.reader.max.pending.tasks",
    "remote.log.reader.threads",
    "remote.log.storage.manager.class.name",
    "remote.log.storage.manager.class.path",
    "remote.log.storage.manager.impl.prefix",
    "remote.log.storage.system.enable",
    "replica.fetch.backoff.ms",
    "replica.fetch.max.bytes",
    "replica.fetch.min.bytes",
    "replica.fetch.response.max.bytes",
    "replica.fetch.wait.max.ms",
    "replica.high.watermark.checkpoint.interval.ms",
    "replica.lag.time.max.ms",
    "replica.selector.class",
    "replica.socket.receive.buffer.bytes",
    "replica.socket.timeout.ms",
    "replication.quota.window.num",
    "replication.quota.window.size.seconds",
    "request.timeout.ms",
    "reserved.broker.max.id",
    "sasl.client.callback.handler.class",
    "sasl.enabled.mechanisms",
    "sasl.jaas.config",
    "sasl.kerberos.kinit.cmd",
    "sasl.kerberos.min.time.before.relogin",
    "sasl.kerberos.principal.to.local.rules",
    "sasl.kerberos.service.name",
    "sasl.kerberos.ticket.renew.jitter",
    "sasl.kerberos.ticket.renew.window.factor",
    "sasl.login.callback.handler.class",
    "sasl.login.class",
    "sasl.login.connect.timeout.ms",
    "sasl.login.read.timeout.ms",
    "sasl.login.refresh.buffer.seconds",
    "sasl.login.refresh.min.period.seconds",
    "sasl.login.refresh.window.factor",
    "sasl.login.refresh.window.jitter",
    "sasl.login.retry.backoff.max.ms",
    "sasl.login.retry.backoff.ms",
    "sasl.mechanism.controller.protocol",
    "sasl.mechanism.inter.broker.protocol",
    "sasl.oauthbearer.assertion.algorithm",
    "sasl.oauthbearer.assertion.claim.aud",
    "sasl.oauthbearer.assertion.claim.exp.seconds",
    "sasl.oauthbearer.assertion.claim.iss",
    "sasl.oauthbearer.assertion.claim.jti.include",
    "sasl.oauthbearer.assertion.claim.nbf.seconds",
    "sasl.oauthbearer.assertion.claim.sub",
    "sasl.oauthbearer.assertion.file",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.template.file",
    "sasl.oauthbearer.client.credentials.client.id",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.clock.skew.seconds",
    "sasl.oauthbearer.expected.audience",
    "sasl.oauthbearer.expected.issuer",
    "sasl.oauthbearer.jwks.endpoint.refresh.ms",
    "sasl.oauthbearer.jwks.endpoint.retry.backoff.max.ms",
    "sasl.oauthbearer.jwks.endpoint.retry.backoff.ms",
    "sasl.oauthbearer.jwks.endpoint.url",
    "sasl.oauthbearer.jwt.retriever.class",
    "sasl.oauthbearer.jwt.validator.class",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.scope.claim.name",
    "sasl.oauthbearer.sub.claim.name",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.server.callback.handler.class",
    "sasl.server.max.receive.size",
    "security.inter.broker.protocol",
    "security.providers",
    "server.max.startup.time.ms",
    "share.coordinator.append.linger.ms",
    "share.coordinator.load.buffer.size",
    "share.coordinator.snapshot.update.records.per.snapshot",
    "share.coordinator.state.topic.compression.codec",
    "share.coordinator.state.topic.min.isr",
    "share.coordinator.state.topic.num.partitions",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.segment.bytes",
    "share.coordinator.threads",
    "share.coordinator.write.timeout.ms",
    "share.fetch.max.fetch.records",
    "share.fetch.purgatory.purge.interval.requests",
    "socket.connection.setup.timeout.max.ms",
    "socket.connection.setup.timeout.ms",
    "socket.listen.backlog.size",
    "socket.receive.buffer.bytes",
    "socket.request.max.bytes",
    "socket.send.buffer.bytes",
    "ssl.allow.dn.changes",
    "ssl.allow.san.changes",
    "ssl.cipher.suites",
    "ssl.client.auth",
    "ssl.enabled.protocols",
    "ssl.endpoint.identification.algorithm",
    "ssl.engine.factory.class",
    "ssl.key.password",
    "ssl.keymanager.algorithm",
    "ssl.keystore.certificate.chain",
    "ssl.keystore.key",
    "ssl.keystore.location",
    "ssl.keystore.password",
    "ssl.keystore.type",
    "ssl.principal.mapping.rules",
    "ssl.protocol",
    "ssl.provider",
    "ssl.secure.random.implementation",
    "ssl.trustmanager.algorithm",
    "ssl.truststore.certificates",
    "ssl.truststore.location",
    "ssl.truststore.password",
    "ssl.truststore.type",
    "super.users",
    "telemetry.max.bytes",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms",
    "transaction.max.timeout.ms",
    "transaction.partition.verification.enable",
    "transaction.remove.expired.transaction.cleanup.interval.ms",
    "transaction.state.log.load.buffer.size",
    "transaction.state.log.min.isr",
    "transaction.state.log.num.partitions",
    "transaction.state.log.replication.factor",
    "transaction.state.log.segment.bytes",
    "transaction.two.phase.commit.enable",
    "transactional.id.expiration.ms",
    "unclean.leader.election.enable",
    "unclean.leader.election.interval.ms",
    "unstable.api.versions.enable",
    "unstable.feature.versions.enable",
    "zookeeper.clientCnxnSocket",
    "zookeeper.connect",
    "zookeeper.connection.timeout.ms",
    "zookeeper.max.in.flight.requests",
    "zookeeper.metadata.migration.enable",
    "zookeeper.metadata.migration.min.batch.size",
    "zookeeper.session.timeout.ms",
    "zookeeper.set.acl",
    "zookeeper.ssl.cipher.suites",
    "zookeeper.ssl.client.enable",
    "zookeeper.ssl.crl.enable",
    "zookeeper.ssl.enabled.protocols",
    "zookeeper.ssl.endpoint.identification.algorithm",
    "zookeeper.ssl.keystore.location",
    "zookeeper.ssl.keystore.password",
    "zookeeper.ssl.keystore.type",
    "zookeeper.ssl.ocsp.enable",
    "zookeeper.ssl.protocol",
    "zookeeper.ssl.truststore.location",
    "zookeeper.ssl.truststore.password",
    "zookeeper.ssl.truststore.type",
    "zookeeper.sync.time.ms",
];

/// Prefix of Kafka's per-listener overrides.
const LISTENER_PREFIX: &str = "listener.name.";
/// KIP-421 config providers: `config.providers` and `config.providers.<name>.class|param.*`.
const CONFIG_PROVIDERS: &str = "config.providers";
/// Kafka's defaults for `remote.log.storage.manager.impl.prefix` and
/// `remote.log.metadata.manager.impl.prefix`: names under them go to the plugins.
pub const DEFAULT_PLUGIN_PREFIXES: &[&str] = &["rsm.config.", "rlmm.config."];

fn is_listed(name: &str) -> bool {
    BROKER_NAMES.binary_search(&name).is_ok()
}

/// True for a name Kafka's broker accepts: a listed name, a per-listener override of one
/// (optionally per SASL mechanism), a config provider setting, or a name under one of
/// `plugin_prefixes` (the tiered-storage plugin prefixes in force).
pub fn is_kafka_name(name: &str, plugin_prefixes: &[&str]) -> bool {
    if is_listed(name) {
        return true;
    }
    if let Some(rest) = name.strip_prefix(LISTENER_PREFIX) {
        let Some((_listener, rest)) = rest.split_once('.') else { return false };
        return is_listed(rest)
            || rest.split_once('.').is_some_and(|(_mechanism, rest)| is_listed(rest));
    }
    if name == CONFIG_PROVIDERS || name.starts_with("config.providers.") {
        return true;
    }
    plugin_prefixes.iter().any(|prefix| !prefix.is_empty() && name.starts_with(prefix))
}

/// Why a Kafka name with this value cannot be ignored: it turns on an enforcement Sluice
/// does not have, and ignoring it would let clients do what the operator forbade.
pub fn refusal(name: &str, value: &str) -> Option<&'static str> {
    if value.trim().is_empty() {
        return None;
    }
    match name {
        "authorizer.class.name" => Some(
            "Sluice has no authorizer yet: ACLs would not be enforced and every client could \
             do everything",
        ),
        "create.topic.policy.class.name" | "alter.config.policy.class.name" => {
            Some("Sluice cannot run Kafka policy plugins: the policy would not be enforced")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_and_has_no_duplicates() {
        assert!(BROKER_NAMES.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(BROKER_NAMES.len() > 350, "{}", BROKER_NAMES.len());
    }

    #[test]
    fn names_from_every_family() {
        for name in [
            // A 3.x KRaft server.properties.
            "process.roles",
            "controller.quorum.voters",
            "num.network.threads",
            "socket.send.buffer.bytes",
            "num.recovery.threads.per.data.dir",
            "transaction.state.log.min.isr",
            // ZooKeeper era (3.x only) and 4.x additions.
            "zookeeper.connect",
            "inter.broker.protocol.version",
            "controller.quorum.bootstrap.servers",
            "group.share.record.lock.duration.ms",
            "share.coordinator.state.topic.replication.factor",
            // Security.
            "ssl.keystore.location",
            "sasl.enabled.mechanisms",
            "authorizer.class.name",
            "super.users",
            // Internal (defineInternal).
            "unstable.api.versions.enable",
        ] {
            assert!(is_kafka_name(name, DEFAULT_PLUGIN_PREFIXES), "{name}");
        }
        assert!(is_kafka_name("listener.name.sasl_ssl.ssl.keystore.location", &[]));
        assert!(is_kafka_name("listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config", &[]));
        assert!(is_kafka_name("listener.name.internal.max.connections", &[]));
        assert!(is_kafka_name("config.providers.file.class", &[]));
        assert!(is_kafka_name("rsm.config.bucket", DEFAULT_PLUGIN_PREFIXES));
        assert!(!is_kafka_name("rsm.config.bucket", &["s3."]));
        for typo in [
            "num.network.thread",
            "listener.name.x.no.such.thing",
            "listener.name",
            "retention.ms",
            "port",
        ] {
            assert!(!is_kafka_name(typo, DEFAULT_PLUGIN_PREFIXES), "{typo}");
        }
    }

    #[test]
    fn enforcement_plugins_are_refused_only_when_set() {
        assert!(refusal(
            "authorizer.class.name",
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        )
        .is_some());
        assert!(refusal("authorizer.class.name", "").is_none());
        assert!(refusal("create.topic.policy.class.name", "com.example.Policy").is_some());
        assert!(refusal("ssl.client.auth", "required").is_none());
    }
}
