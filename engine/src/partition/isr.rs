//! What a partition's leader knows of its followers (Kafka's `Replica` objects on the
//! leader, and the ISR it acts on): each follower's log end offset, learnt from the offset
//! it fetches from, and when it was last caught up. From these come the high watermark
//! (the lowest log end offset in the ISR, the leader's own included) and the ISR changes
//! the leader asks the controller for (AlterPartition):
//!
//! - a member that has not been caught up for `replica.lag.time.max.ms` leaves;
//! - a follower joins once its log end offset has reached the high watermark and the
//!   start of the leader's current epoch (Kafka's `isFollowerInSync`), so a replica with a
//!   diverging tail never counts.
//!
//! "Caught up" is Kafka's rule: a fetch from the leader's log end, or a fetch from at least
//! where the leader's log ended at the follower's previous fetch (then the follower was
//! caught up at that previous fetch's time). A follower fetching steadily behind a
//! producer therefore stays in sync; one that stops fetching or falls ever further behind
//! does not. Sans-I/O: the caller gives the time.

use std::collections::BTreeMap;

/// One follower as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// Its log end offset (the offset of its latest fetch); -1 until it fetched.
    pub log_end_offset: i64,
    /// When it was last caught up with the leader (milliseconds of the caller's clock).
    pub last_caught_up_ms: u64,
    last_fetch_ms: u64,
    /// The leader's log end offset at its latest fetch.
    leader_end_at_last_fetch: i64,
}

/// The leader's view of its replica set. Empty (no followers, ISR unknown) for a replica
/// that is its partition's only replica, or a follower.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaSet {
    /// The ISR as the controller last stored it (the leader included); empty: unknown,
    /// taken as the leader alone.
    isr: Vec<i32>,
    /// Every replica but the leader, by broker id.
    followers: BTreeMap<i32, FollowerProgress>,
}

impl ReplicaSet {
    /// The placement changed (or this replica became leader): `replicas` and `isr` as
    /// stored, `local` this broker. Followers kept keep what is known of them; a new one
    /// starts unknown, caught up now if it is in the ISR (Kafka's `resetReplicaState`), so
    /// a member is not dropped before it could fetch.
    pub fn update(&mut self, local: i32, replicas: &[i32], isr: &[i32], now_ms: u64) {
        let mut followers = BTreeMap::new();
        for &replica in replicas.iter().filter(|&&r| r != local) {
            let progress = self.followers.get(&replica).copied().unwrap_or(FollowerProgress {
                log_end_offset: -1,
                last_caught_up_ms: if isr.contains(&replica) { now_ms } else { 0 },
                last_fetch_ms: 0,
                leader_end_at_last_fetch: -1,
            });
            followers.insert(replica, progress);
        }
        self.followers = followers;
        self.isr = isr.to_vec();
    }

    /// Forgets the followers (this replica follows now).
    pub fn clear(&mut self) {
        *self = ReplicaSet::default();
    }

    pub fn isr(&self) -> &[i32] {
        &self.isr
    }

    /// How many replicas are in sync (at least the leader itself).
    pub fn isr_len(&self) -> usize {
        self.isr.len().max(1)
    }

    pub fn follower(&self, broker: i32) -> Option<&FollowerProgress> {
        self.followers.get(&broker)
    }

    /// A follower fetched from `fetch_offset` while the leader's log ended at
    /// `leader_end`. Returns false for a broker that is not a follower of this partition.
    pub fn fetched(
        &mut self,
        broker: i32,
        fetch_offset: i64,
        leader_end: i64,
        now_ms: u64,
    ) -> bool {
        let Some(progress) = self.followers.get_mut(&broker) else { return false };
        if fetch_offset >= leader_end {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(now_ms);
        } else if fetch_offset >= progress.leader_end_at_last_fetch {
            progress.last_caught_up_ms = progress.last_caught_up_ms.max(progress.last_fetch_ms);
        }
        progress.log_end_offset = fetch_offset;
        progress.last_fetch_ms = now_ms;
        progress.leader_end_at_last_fetch = leader_end;
        true
    }

    /// The lowest log end offset in the ISR, with `leader_end` for the leader: what the
    /// high watermark may rise to. A member that has not fetched yet holds it at -1.
    pub fn min_isr_end(&self, leader_end: i64) -> i64 {
        self.isr
            .iter()
            .filter_map(|member| self.followers.get(member))
            .map(|progress| progress.log_end_offset)
            .fold(leader_end, i64::min)
    }

    /// The ISR the leader should ask for, if it differs from the stored one: members lagging
    /// for more than `lag_max_ms` out, followers in sync (log end at least
    /// `high_watermark` and `epoch_start`) in, in replica (broker id) order after the
    /// leader's place is kept.
    pub fn proposed_isr(
        &self,
        local: i32,
        high_watermark: i64,
        epoch_start: i64,
        now_ms: u64,
        lag_max_ms: u64,
    ) -> Option<Vec<i32>> {
        if self.followers.is_empty() {
            return None;
        }
        let mut isr: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|&member| match self.followers.get(&member) {
                Some(progress) => now_ms.saturating_sub(progress.last_caught_up_ms) <= lag_max_ms,
                None => member == local,
            })
            .collect();
        if !isr.contains(&local) {
            isr.insert(0, local);
        }
        for (&broker, progress) in &self.followers {
            let in_sync =
                progress.log_end_offset >= high_watermark && progress.log_end_offset >= epoch_start;
            let fresh = now_ms.saturating_sub(progress.last_caught_up_ms) <= lag_max_ms;
            if !isr.contains(&broker) && in_sync && fresh {
                isr.push(broker);
            }
        }
        let mut current = self.isr.clone();
        current.sort_unstable();
        let mut proposed = isr.clone();
        proposed.sort_unstable();
        (proposed != current).then_some(isr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LAG_MS: u64 = 30_000;

    fn three() -> ReplicaSet {
        let mut set = ReplicaSet::default();
        set.update(1, &[1, 2, 3], &[1, 2, 3], 0);
        set
    }

    #[test]
    fn the_high_watermark_is_the_lowest_end_in_the_isr() {
        let mut set = three();
        assert_eq!(set.min_isr_end(10), -1, "members that never fetched hold it");
        set.fetched(2, 10, 10, 5);
        assert_eq!(set.min_isr_end(10), -1);
        set.fetched(3, 7, 10, 5);
        assert_eq!(set.min_isr_end(10), 7);
        set.fetched(3, 10, 12, 6);
        assert_eq!(set.min_isr_end(12), 10);
        // A replica out of the ISR does not hold it back.
        set.update(1, &[1, 2, 3], &[1, 2], 7);
        set.fetched(2, 12, 12, 8);
        assert_eq!(set.min_isr_end(12), 12);
        assert_eq!(set.follower(3).unwrap().log_end_offset, 10, "progress kept");
        assert!(!set.fetched(9, 1, 12, 9), "not a replica");
    }

    #[test]
    fn a_follower_behind_a_steady_producer_stays_caught_up() {
        let mut set = three();
        // Each fetch reaches where the leader ended at the previous one.
        set.fetched(2, 0, 100, 1_000);
        for round in 1..100u64 {
            let offset = 100 * round as i64;
            set.fetched(2, offset, offset + 100, 1_000 + round * 1_000);
        }
        let progress = set.follower(2).unwrap();
        assert_eq!(progress.last_caught_up_ms, 1_000 + 98 * 1_000);
    }

    #[test]
    fn a_silent_member_leaves_after_the_lag_time_and_returns_in_sync() {
        let mut set = three();
        set.fetched(2, 50, 50, 10_000);
        set.fetched(3, 50, 50, 10_000);
        assert_eq!(set.proposed_isr(1, 50, 0, 20_000, LAG_MS), None);
        // Broker 3 stops fetching; broker 2 goes on.
        set.fetched(2, 80, 80, 39_000);
        assert_eq!(set.proposed_isr(1, 50, 0, 40_000, LAG_MS), None, "not yet past the lag");
        set.fetched(2, 90, 90, 40_001);
        assert_eq!(set.proposed_isr(1, 80, 0, 40_001, LAG_MS), Some(vec![1, 2]));
        set.update(1, &[1, 2, 3], &[1, 2], 40_002);
        // Broker 3 comes back behind: not in sync until it reaches the high watermark.
        set.fetched(3, 60, 95, 41_000);
        assert_eq!(set.proposed_isr(1, 90, 0, 41_000, LAG_MS), None);
        set.fetched(3, 95, 95, 42_000);
        assert_eq!(set.proposed_isr(1, 95, 0, 42_000, LAG_MS), Some(vec![1, 2, 3]));
        // Not before it reached the start of the leader's epoch either.
        assert_eq!(set.proposed_isr(1, 95, 96, 42_000, LAG_MS), None);
    }

    #[test]
    fn a_single_replica_proposes_nothing() {
        let mut set = ReplicaSet::default();
        set.update(1, &[1], &[1], 0);
        assert_eq!(set.proposed_isr(1, 0, 0, 1_000_000, LAG_MS), None);
        assert_eq!(set.min_isr_end(42), 42);
        assert_eq!(set.isr_len(), 1);
    }
}
