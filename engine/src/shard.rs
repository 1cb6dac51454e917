//! Which shard owns a partition. A pure, stable function of the topic name, the
//! partition and the shard count: every shard computes the same answer with no shared
//! state, and the answer only changes when the shard count does.

/// Index of a shard (a core running one executor).
pub type ShardId = usize;

/// FNV-1a over the topic name: stable across processes, releases and platforms (unlike
/// `std`'s randomly seeded hasher), and cheap for short names.
fn topic_hash(topic: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The shard that owns `topic`/`partition` among `shards` shards. Partitions of one topic
/// are spread round-robin from a per-topic starting shard, so a topic with as many
/// partitions as shards uses every core.
pub fn shard_of(topic: &str, partition: i32, shards: usize) -> ShardId {
    assert!(shards > 0);
    assert!(partition >= 0);
    let start = topic_hash(topic) % shards as u64;
    ((start + partition as u64) % shards as u64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        // Pinned values: changing the function moves partitions between shards on upgrade.
        assert_eq!(topic_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(topic_hash("a"), 0xaf63_dc4c_8601_ec8c);
        for shards in 1..8 {
            let owners: Vec<ShardId> =
                (0..shards as i32).map(|p| shard_of("orders", p, shards)).collect();
            let mut sorted = owners.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), shards, "one partition per shard for {shards} shards");
            assert!(owners.iter().all(|s| *s < shards));
        }
        assert_eq!(shard_of("orders", 3, 4), shard_of("orders", 3, 4));
    }
}
