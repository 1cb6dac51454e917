//! The cluster's control plane: which broker holds which replica, who leads each partition,
//! which brokers are alive, and the Raft quorum of controllers that decides all of it.
//!
//! The decisions are pure functions or state machines with time as an input
//! ([`placement`], [`election`], [`reassignment`], [`liveness`]); the quorum
//! ([`quorum`]) wraps TiKV's raft-rs, itself a sans-I/O state machine, so one seeded
//! simulation drives controllers, network and disks deterministically.

/// A broker's `node.id`, as Kafka numbers brokers and controllers.
pub type BrokerId = i32;

pub mod agent;
pub mod config;
pub mod controller;
pub mod election;
pub mod liveness;
pub mod placement;
pub mod quorum;
pub mod reassignment;
mod rng;
pub mod transport;
