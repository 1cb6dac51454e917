//! Broker registrations and heartbeats: which brokers are registered, which are fenced,
//! which are shutting down, as the active controller's `ClusterControlManager` and
//! `BrokerHeartbeatManager` track them in KRaft. A state machine with time as an input
//! (milliseconds on a monotonic clock, passed in; nothing here reads a clock), so tests
//! drive sessions to expiry without sleeping.
//!
//! The life of a broker, as Kafka runs it:
//! - BrokerRegistration: the broker registers with its id and an incarnation id (a random
//!   UUID per process start) and gets a broker epoch (Kafka uses the offset of its
//!   RegisterBrokerRecord; the caller passes it in). A new registration is fenced.
//! - BrokerHeartbeat, every `broker.heartbeat.interval.ms`: a fenced broker that has caught
//!   up with the metadata log up to its registration is unfenced, and may then lead and be
//!   in ISRs. A heartbeat must carry the current broker epoch (`STALE_BROKER_EPOCH`).
//! - A broker whose last heartbeat is older than `broker.session.timeout.ms` (default
//!   [`BROKER_SESSION_TIMEOUT_MS_DEFAULT`]) is listed by [`Liveness::expired`]; the controller
//!   fences it (and [`crate::election::handle_broker_fenced`] takes it out of ISRs).
//! - A broker that wants to shut down says so in its heartbeat: if it leads partitions it
//!   enters controlled shutdown (no longer usable, so its leadership moves away,
//!   [`crate::election::handle_broker_controlled_shutdown`]); once it leads nothing, it is
//!   told it may stop, and is fenced.
//!
//! Only the active controller holds this state in Kafka; heartbeats are not written to the
//! metadata log, so after a failover the new controller starts every session afresh.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::BrokerId;

/// Kafka's default `broker.session.timeout.ms`.
pub const BROKER_SESSION_TIMEOUT_MS_DEFAULT: u64 = 9_000;

/// A broker process's random id, new at every start (Kafka's `incarnationId` UUID).
pub type IncarnationId = [u8; 16];

/// Where a registered broker is in its life (Kafka's `BrokerControlState`, without the
/// transient SHUTDOWN_NOW, after which a broker is fenced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Registered but not allowed to lead or be in an ISR: new, timed out, or stopped.
    Fenced,
    /// Usable: may lead partitions and be in their ISRs.
    Unfenced,
    /// Asked to shut down while leading partitions: unfenced, but no longer usable, so
    /// leadership moves away before it is told it may stop.
    ControlledShutdown,
}

/// One broker's registration and heartbeat state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The broker's `node.id`.
    pub broker: BrokerId,
    /// The process that registered; a restart brings a new one.
    pub incarnation_id: IncarnationId,
    /// Heartbeats and broker-to-controller requests must carry this epoch.
    pub broker_epoch: i64,
    /// Fenced, unfenced or in controlled shutdown.
    pub state: BrokerState,
    /// When the controller last heard from the broker (registration or heartbeat).
    pub heartbeat_last_ms: u64,
}

/// What a BrokerRegistration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// No registration of this broker id existed.
    New { broker_epoch: i64 },
    /// A new incarnation (a restarted broker) replaced the previous one, whose session had
    /// ended. If `previous_state` was not fenced, the controller fences the old incarnation's
    /// replicas out of ISRs, as for a timed-out broker.
    Replaced { broker_epoch: i64, broker_epoch_previous: i64, previous_state: BrokerState },
    /// The same incarnation registered again (a retry after a lost answer): the registration
    /// and its epoch stand. Kafka writes a new RegisterBrokerRecord with a new epoch even
    /// then; keeping the epoch makes the retry idempotent, and the broker gets the same
    /// answer it missed.
    Retry { broker_epoch: i64 },
}

/// A BrokerHeartbeat request, with what the controller knows that the request implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The broker sending it.
    pub broker: BrokerId,
    /// The epoch its registration got; a stale one is refused.
    pub broker_epoch: i64,
    /// When the controller received it, on the monotonic clock sessions are timed with.
    pub now_ms: u64,
    /// The broker asks to be fenced (Kafka's `wantFence`, set while it is not ready).
    pub wants_fence: bool,
    /// The broker asks to shut down (Kafka's `wantShutDown`).
    pub wants_shutdown: bool,
    /// The broker's metadata offset has reached its registration record (Kafka compares
    /// `currentMetadataOffset` with the RegisterBrokerRecord offset): unfencing waits for it.
    pub caught_up: bool,
}

/// A change in a broker's state that the controller acts on: it writes the matching
/// registration change and runs the election handler for the broker's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Fence: [`crate::election::handle_broker_fenced`].
    Fence,
    /// Unfence: [`crate::election::handle_broker_unfenced`].
    Unfence,
    /// Enter controlled shutdown: [`crate::election::handle_broker_controlled_shutdown`].
    EnterControlledShutdown,
    /// Shut down now: the broker is fenced ([`crate::election::handle_broker_fenced`]) and
    /// told it may stop.
    ShutdownNow,
}

/// The BrokerHeartbeat answer, and the transition the controller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The state change the controller must act on, if any.
    pub transition: Option<Transition>,
    /// The broker's metadata has reached its registration (Kafka's `isCaughtUp`).
    pub is_caught_up: bool,
    /// The broker is fenced after this heartbeat (Kafka's `isFenced`).
    pub is_fenced: bool,
    /// The broker is in controlled shutdown (Kafka's `inControlledShutdown`).
    pub in_controlled_shutdown: bool,
    /// The broker may stop now (Kafka's `shouldShutDown`).
    pub should_shut_down: bool,
}

/// Why a registration, heartbeat or unregistration was refused, with the Kafka error code
/// it is answered with and Kafka's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LivenessError {
    /// Kafka's `STALE_BROKER_EPOCH` (77): Kafka's `checkBrokerEpoch` answers an unknown
    /// broker with the same code as a wrong epoch.
    #[error("No broker registration found for broker id {broker}")]
    UnknownBroker { broker: BrokerId },
    /// Kafka's `STALE_BROKER_EPOCH` (77): the request comes from an older incarnation or
    /// registration.
    #[error("Expected broker epoch {expected}, but got broker epoch {got}")]
    StaleBrokerEpoch { broker: BrokerId, expected: i64, got: i64 },
    /// Kafka's `DUPLICATE_BROKER_REGISTRATION` (101): another incarnation holds the id
    /// and its session has not ended.
    #[error("Another broker is registered with that broker id.")]
    DuplicateBrokerRegistration { broker: BrokerId },
    /// Kafka's `BROKER_ID_NOT_REGISTERED` (102): UnregisterBroker of an unknown id.
    #[error("Broker ID {broker} is not currently registered")]
    BrokerIdNotRegistered { broker: BrokerId },
}

/// The registered brokers and their sessions (the active controller's view).
#[derive(Debug, Clone)]
pub struct Liveness {
    session_timeout_ms: u64,
    registrations: BTreeMap<BrokerId, Registration>,
}

impl Liveness {
    /// No broker registered; sessions end `session_timeout_ms` after the last heartbeat.
    pub fn new(session_timeout_ms: u64) -> Self {
        Self { session_timeout_ms, registrations: BTreeMap::new() }
    }

    /// Takes over a registration the metadata holds, as a newly active controller does:
    /// its session starts at `now_ms`, so no broker is fenced for heartbeats another
    /// controller received.
    pub fn restore(
        &mut self,
        broker: BrokerId,
        incarnation_id: IncarnationId,
        broker_epoch: i64,
        fenced: bool,
        shutting_down: bool,
        now_ms: u64,
    ) {
        let state = match (fenced, shutting_down) {
            (true, _) => BrokerState::Fenced,
            (false, true) => BrokerState::ControlledShutdown,
            (false, false) => BrokerState::Unfenced,
        };
        self.registrations.insert(
            broker,
            Registration { broker, incarnation_id, broker_epoch, state, heartbeat_last_ms: now_ms },
        );
    }

    /// BrokerRegistration (Kafka's `ClusterControlManager.registerBroker`). A different
    /// incarnation replaces the current one only once its session has ended (fenced, or no
    /// heartbeat for the session timeout); `broker_epoch` must be above the previous one.
    pub fn register(
        &mut self,
        broker: BrokerId,
        incarnation_id: IncarnationId,
        broker_epoch: i64,
        now_ms: u64,
    ) -> Result<Registered, LivenessError> {
        let session_timeout_ms = self.session_timeout_ms;
        let fresh = Registration {
            broker,
            incarnation_id,
            broker_epoch,
            state: BrokerState::Fenced,
            heartbeat_last_ms: now_ms,
        };
        let Some(existing) = self.registrations.get_mut(&broker) else {
            self.registrations.insert(broker, fresh);
            return Ok(Registered::New { broker_epoch });
        };
        if existing.incarnation_id == incarnation_id {
            existing.heartbeat_last_ms = existing.heartbeat_last_ms.max(now_ms);
            return Ok(Registered::Retry { broker_epoch: existing.broker_epoch });
        }
        if has_valid_session(existing, now_ms, session_timeout_ms) {
            return Err(LivenessError::DuplicateBrokerRegistration { broker });
        }
        assert!(broker_epoch > existing.broker_epoch, "broker epochs only grow");
        let replaced = Registered::Replaced {
            broker_epoch,
            broker_epoch_previous: existing.broker_epoch,
            previous_state: existing.state,
        };
        *existing = fresh;
        Ok(replaced)
    }

    /// BrokerHeartbeat (Kafka's `processBrokerHeartbeat` with
    /// `BrokerHeartbeatManager.calculateNextBrokerState`). `leads_partitions` says whether
    /// the broker still leads any partition, which decides whether a shutdown is controlled
    /// and when it ends. The state changes at once; the reply's transition says what the
    /// controller must write and elect.
    pub fn heartbeat(
        &mut self,
        heartbeat: Heartbeat,
        leads_partitions: bool,
    ) -> Result<HeartbeatReply, LivenessError> {
        let registration = self.registration_checked(heartbeat.broker, heartbeat.broker_epoch)?;
        registration.heartbeat_last_ms = registration.heartbeat_last_ms.max(heartbeat.now_ms);
        let (state_next, transition) = next_state(registration.state, heartbeat, leads_partitions);
        registration.state = state_next;
        Ok(HeartbeatReply {
            transition,
            is_caught_up: heartbeat.caught_up,
            is_fenced: state_next == BrokerState::Fenced,
            in_controlled_shutdown: state_next == BrokerState::ControlledShutdown,
            should_shut_down: transition == Some(Transition::ShutdownNow),
        })
    }

    /// Brokers not yet fenced whose last heartbeat is more than the session timeout before
    /// `now_ms` (Kafka's `isExpired`: `last + timeout < now`), by id. The controller fences
    /// each ([`Liveness::fence`]); Kafka fences one per pass so that each fencing's
    /// leadership changes are visible before the next.
    pub fn expired(&self, now_ms: u64) -> Vec<BrokerId> {
        self.registrations
            .values()
            .filter(|registration| registration.state != BrokerState::Fenced)
            .filter(|registration| is_expired(registration, now_ms, self.session_timeout_ms))
            .map(|registration| registration.broker)
            .collect()
    }

    /// Marks a broker fenced (after the controller wrote its fencing); a broker in
    /// controlled shutdown leaves it. Whether the broker was registered and not fenced.
    pub fn fence(&mut self, broker: BrokerId) -> bool {
        match self.registrations.get_mut(&broker) {
            Some(registration) if registration.state != BrokerState::Fenced => {
                registration.state = BrokerState::Fenced;
                true
            }
            _ => false,
        }
    }

    /// UnregisterBroker: forgets the broker (the controller first takes it out of ISRs).
    pub fn unregister(&mut self, broker: BrokerId) -> Result<Registration, LivenessError> {
        self.registrations.remove(&broker).ok_or(LivenessError::BrokerIdNotRegistered { broker })
    }

    /// The broker's registration, if any.
    pub fn registration(&self, broker: BrokerId) -> Option<&Registration> {
        self.registrations.get(&broker)
    }

    /// Whether the broker may lead and be in ISRs: registered, unfenced and not in
    /// controlled shutdown (Kafka's `isActive`). The predicate [`crate::election`] takes.
    pub fn is_usable(&self, broker: BrokerId) -> bool {
        self.registrations
            .get(&broker)
            .is_some_and(|registration| registration.state == BrokerState::Unfenced)
    }

    /// Every registered broker, by id: the brokers a manual assignment may name.
    pub fn brokers_registered(&self) -> Vec<BrokerId> {
        self.registrations.keys().copied().collect()
    }

    /// Usable brokers, by id: the brokers replica placement stripes over.
    pub fn brokers_usable(&self) -> Vec<BrokerId> {
        self.registrations
            .values()
            .filter(|registration| registration.state == BrokerState::Unfenced)
            .map(|registration| registration.broker)
            .collect()
    }

    fn registration_checked(
        &mut self,
        broker: BrokerId,
        broker_epoch: i64,
    ) -> Result<&mut Registration, LivenessError> {
        let registration =
            self.registrations.get_mut(&broker).ok_or(LivenessError::UnknownBroker { broker })?;
        if registration.broker_epoch != broker_epoch {
            return Err(LivenessError::StaleBrokerEpoch {
                broker,
                expected: registration.broker_epoch,
                got: broker_epoch,
            });
        }
        Ok(registration)
    }
}

/// Kafka's `calculateNextBrokerState`, in its order of checks.
fn next_state(
    current: BrokerState,
    heartbeat: Heartbeat,
    leads_partitions: bool,
) -> (BrokerState, Option<Transition>) {
    use BrokerState::{ControlledShutdown, Fenced, Unfenced};
    let shutdown_now = (Fenced, Some(Transition::ShutdownNow));
    match current {
        Fenced if heartbeat.wants_shutdown => shutdown_now,
        Fenced if !heartbeat.wants_fence && heartbeat.caught_up => {
            (Unfenced, Some(Transition::Unfence))
        }
        Fenced => (Fenced, None),
        Unfenced if heartbeat.wants_fence && heartbeat.wants_shutdown => shutdown_now,
        Unfenced if heartbeat.wants_fence => (Fenced, Some(Transition::Fence)),
        Unfenced if heartbeat.wants_shutdown && leads_partitions => {
            (ControlledShutdown, Some(Transition::EnterControlledShutdown))
        }
        Unfenced if heartbeat.wants_shutdown => shutdown_now,
        Unfenced => (Unfenced, None),
        // Kafka also waits until every active broker's metadata has reached the offset at
        // which the shutdown began; here, until the broker leads nothing.
        ControlledShutdown if leads_partitions => (ControlledShutdown, None),
        ControlledShutdown => shutdown_now,
    }
}

fn is_expired(registration: &Registration, now_ms: u64, session_timeout_ms: u64) -> bool {
    registration.heartbeat_last_ms.saturating_add(session_timeout_ms) < now_ms
}

/// Kafka's `hasValidSession`: not fenced, and heard from within the session timeout.
fn has_valid_session(registration: &Registration, now_ms: u64, session_timeout_ms: u64) -> bool {
    registration.state != BrokerState::Fenced
        && !is_expired(registration, now_ms, session_timeout_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::election::{handle_broker_fenced, handle_broker_unfenced, PartitionState};

    const TIMEOUT_MS: u64 = BROKER_SESSION_TIMEOUT_MS_DEFAULT;
    const FIRST: IncarnationId = [1; 16];
    const SECOND: IncarnationId = [2; 16];

    fn beat(broker: BrokerId, broker_epoch: i64, now_ms: u64) -> Heartbeat {
        Heartbeat {
            broker,
            broker_epoch,
            now_ms,
            wants_fence: false,
            wants_shutdown: false,
            caught_up: true,
        }
    }

    fn unfenced(liveness: &mut Liveness, broker: BrokerId, broker_epoch: i64, now_ms: u64) {
        liveness.register(broker, [broker as u8; 16], broker_epoch, now_ms).unwrap();
        let reply = liveness.heartbeat(beat(broker, broker_epoch, now_ms), false).unwrap();
        assert_eq!(reply.transition, Some(Transition::Unfence));
    }

    #[test]
    fn a_new_broker_is_fenced_until_it_has_caught_up() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        assert_eq!(liveness.register(1, FIRST, 100, 0), Ok(Registered::New { broker_epoch: 100 }));
        assert_eq!(liveness.registration(1).unwrap().state, BrokerState::Fenced);
        assert!(!liveness.is_usable(1));

        let behind = Heartbeat { caught_up: false, ..beat(1, 100, 10) };
        let reply = liveness.heartbeat(behind, false).unwrap();
        assert_eq!(reply.transition, None);
        assert!(reply.is_fenced);
        assert!(!reply.is_caught_up);

        // Caught up, but still asking to stay fenced.
        let not_ready = Heartbeat { wants_fence: true, ..beat(1, 100, 20) };
        assert_eq!(liveness.heartbeat(not_ready, false).unwrap().transition, None);

        let reply = liveness.heartbeat(beat(1, 100, 30), false).unwrap();
        assert_eq!(reply.transition, Some(Transition::Unfence));
        assert!(!reply.is_fenced);
        assert!(liveness.is_usable(1));
        assert_eq!(liveness.brokers_usable(), vec![1]);
        assert_eq!(liveness.heartbeat(beat(1, 100, 40), false).unwrap().transition, None);
    }

    #[test]
    fn a_retry_keeps_the_epoch_and_a_restart_gets_a_new_one() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        let incarnation = liveness.registration(1).unwrap().incarnation_id;
        assert_eq!(
            liveness.register(1, incarnation, 105, 10),
            Ok(Registered::Retry { broker_epoch: 100 })
        );
        assert_eq!(liveness.registration(1).unwrap().state, BrokerState::Unfenced);

        // Another incarnation while the session is alive: refused.
        assert_eq!(
            liveness.register(1, SECOND, 110, 10),
            Err(LivenessError::DuplicateBrokerRegistration { broker: 1 })
        );
        // After the session timed out: the restarted broker replaces it, fenced.
        let after_timeout = 10 + TIMEOUT_MS + 1;
        assert_eq!(
            liveness.register(1, SECOND, 110, after_timeout),
            Ok(Registered::Replaced {
                broker_epoch: 110,
                broker_epoch_previous: 100,
                previous_state: BrokerState::Unfenced,
            })
        );
        assert_eq!(liveness.registration(1).unwrap().state, BrokerState::Fenced);
        // The old incarnation's heartbeats are stale now.
        assert_eq!(
            liveness.heartbeat(beat(1, 100, after_timeout), false),
            Err(LivenessError::StaleBrokerEpoch { broker: 1, expected: 110, got: 100 })
        );
        assert_eq!(
            LivenessError::StaleBrokerEpoch { broker: 1, expected: 110, got: 100 }.to_string(),
            "Expected broker epoch 110, but got broker epoch 100"
        );
    }

    #[test]
    fn a_stopped_broker_may_restart_at_once() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        let stop = Heartbeat { wants_shutdown: true, ..beat(1, 100, 10) };
        assert!(liveness.heartbeat(stop, false).unwrap().should_shut_down);
        let restarted = liveness.register(1, SECOND, 120, 20).unwrap();
        assert_eq!(
            restarted,
            Registered::Replaced {
                broker_epoch: 120,
                broker_epoch_previous: 100,
                previous_state: BrokerState::Fenced,
            }
        );
    }

    #[test]
    fn heartbeats_from_unknown_brokers_are_refused() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        assert_eq!(
            liveness.heartbeat(beat(7, 1, 0), false),
            Err(LivenessError::UnknownBroker { broker: 7 })
        );
    }

    #[test]
    fn sessions_expire_after_the_timeout_and_heartbeats_renew_them() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        unfenced(&mut liveness, 2, 101, 0);
        liveness.heartbeat(beat(2, 101, 5_000), false).unwrap();
        assert_eq!(liveness.expired(TIMEOUT_MS), Vec::<BrokerId>::new(), "not past it yet");
        assert_eq!(liveness.expired(TIMEOUT_MS + 1), vec![1]);
        assert_eq!(liveness.expired(5_000 + TIMEOUT_MS + 1), vec![1, 2]);

        assert!(liveness.fence(1));
        assert!(!liveness.fence(1), "already fenced");
        assert!(!liveness.is_usable(1));
        assert_eq!(liveness.expired(5_000 + TIMEOUT_MS + 1), vec![2], "fenced ones are done");

        // The fenced broker comes back: unfenced once caught up.
        let reply = liveness.heartbeat(beat(1, 100, 20_000), false).unwrap();
        assert_eq!(reply.transition, Some(Transition::Unfence));
        assert_eq!(liveness.expired(20_000 + TIMEOUT_MS), vec![2], "broker 1's session renewed");
    }

    #[test]
    fn controlled_shutdown_waits_until_leadership_has_moved() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        let stop = Heartbeat { wants_shutdown: true, ..beat(1, 100, 10) };
        let reply = liveness.heartbeat(stop, true).unwrap();
        assert_eq!(reply.transition, Some(Transition::EnterControlledShutdown));
        assert!(reply.in_controlled_shutdown);
        assert!(!reply.should_shut_down);
        assert!(!liveness.is_usable(1), "no longer a leader candidate");
        assert_eq!(liveness.registration(1).unwrap().state, BrokerState::ControlledShutdown);

        // Still leading something: keep waiting.
        let reply = liveness.heartbeat(Heartbeat { now_ms: 20, ..stop }, true).unwrap();
        assert_eq!((reply.transition, reply.in_controlled_shutdown), (None, true));
        // A broker in controlled shutdown still has a session that can expire.
        assert_eq!(liveness.expired(20 + TIMEOUT_MS + 1), vec![1]);

        let reply = liveness.heartbeat(Heartbeat { now_ms: 30, ..stop }, false).unwrap();
        assert_eq!(reply.transition, Some(Transition::ShutdownNow));
        assert!(reply.should_shut_down);
        assert!(reply.is_fenced);
        assert_eq!(liveness.registration(1).unwrap().state, BrokerState::Fenced);
    }

    #[test]
    fn shutdown_without_leadership_or_while_fenced_is_immediate() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        let stop = Heartbeat { wants_shutdown: true, ..beat(1, 100, 10) };
        let reply = liveness.heartbeat(stop, false).unwrap();
        assert_eq!(reply.transition, Some(Transition::ShutdownNow));

        liveness.register(2, SECOND, 101, 0).unwrap();
        let reply = liveness.heartbeat(Heartbeat { broker: 2, broker_epoch: 101, ..stop }, true);
        assert_eq!(reply.unwrap().transition, Some(Transition::ShutdownNow));
    }

    #[test]
    fn wants_fence_fences_an_unfenced_broker() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        let fence = Heartbeat { wants_fence: true, ..beat(1, 100, 10) };
        assert_eq!(liveness.heartbeat(fence, true).unwrap().transition, Some(Transition::Fence));
        assert!(!liveness.is_usable(1));
    }

    #[test]
    fn unregister_forgets_the_broker() {
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        assert_eq!(liveness.unregister(1).unwrap().broker_epoch, 100);
        assert_eq!(liveness.unregister(1), Err(LivenessError::BrokerIdNotRegistered { broker: 1 }));
        assert!(liveness.brokers_registered().is_empty());
    }

    #[test]
    fn a_timed_out_leader_loses_leadership_and_regains_it_when_back() {
        // Liveness and election together, as the controller drives them.
        let mut liveness = Liveness::new(TIMEOUT_MS);
        unfenced(&mut liveness, 1, 100, 0);
        unfenced(&mut liveness, 2, 101, 0);
        let mut partition = PartitionState::new(vec![1, 2], |b| liveness.is_usable(b)).unwrap();
        assert_eq!(partition.leader, 1);

        liveness.heartbeat(beat(2, 101, 8_000), false).unwrap();
        for broker in liveness.expired(TIMEOUT_MS + 1) {
            let change =
                handle_broker_fenced(&partition, broker, |b| liveness.is_usable(b), false).unwrap();
            liveness.fence(broker);
            partition = change.state;
        }
        assert_eq!((partition.leader, partition.isr.clone()), (2, vec![2]));

        let reply = liveness.heartbeat(beat(1, 100, 12_000), false).unwrap();
        assert_eq!(reply.transition, Some(Transition::Unfence));
        // Broker 1 is back, but the partition has a leader: nothing to elect. Broker 1
        // follows and rejoins the ISR through the leader's AlterPartition.
        assert_eq!(handle_broker_unfenced(&partition, 1, |b| liveness.is_usable(b), false), None);
    }
}
