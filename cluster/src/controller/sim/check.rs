//! The simulation's reference: the one global sequence of committed metadata records, as
//! the controllers apply them, with the image at every committed entry's end, and the
//! checks that walk it: every record applies, partition leadership is safe, broker epochs
//! only grow, a fenced broker leads nothing. Controllers' and brokers' views are checked
//! against it by the driver (`mod.rs`).

use std::collections::BTreeMap;

use sluice_engine::metadata::{MetadataImage, MetadataRecord, PartitionRecord, NO_LEADER};

use crate::BrokerId;

/// A partition across topic re-creation: topic id, the topic id's creation count (a
/// duplicated CreateTopic may bring an id back after a delete), partition.
type PartitionKey = ([u8; 16], u32, i32);

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Reference {
    /// Every committed record, by offset.
    pub records: Vec<MetadataRecord>,
    /// The image after each committed entry, by its next offset (0: the empty image).
    pub boundaries: BTreeMap<i64, MetadataImage>,
    /// Whether unclean leader election is on for topics that do not say.
    unclean_default: bool,
    generations: BTreeMap<[u8; 16], u32>,
    /// Every leader any committed state names, by partition and leader epoch.
    leaders: BTreeMap<(PartitionKey, i32), BrokerId>,
    /// The last committed state of every partition.
    last: BTreeMap<PartitionKey, PartitionRecord>,
    /// Whether a broker's registration is fenced because it registered (a new
    /// incarnation), as opposed to fenced by a change (session expired, shut down).
    fenced_by_registration: BTreeMap<BrokerId, bool>,
    /// UNCLEAN ElectLeaders a controller received, by topic name and partition, not yet
    /// matched by an election from outside the ISR.
    unclean_requests: BTreeMap<(String, i32), u32>,
    pub stats: ReferenceStats,
}

/// What the committed log shows a run exercised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ReferenceStats {
    pub entries: u64,
    pub records: u64,
    pub registrations: u64,
    pub fencings: u64,
    pub leader_changes: u64,
    pub unclean_elections: u64,
    pub topics_created: u64,
    pub topics_deleted: u64,
}

type Check = Result<(), String>;

impl Reference {
    pub fn new(unclean_default: bool) -> Self {
        Reference {
            records: Vec::new(),
            boundaries: BTreeMap::from([(0, MetadataImage::default())]),
            unclean_default,
            generations: BTreeMap::new(),
            leaders: BTreeMap::new(),
            last: BTreeMap::new(),
            fenced_by_registration: BTreeMap::new(),
            unclean_requests: BTreeMap::new(),
            stats: ReferenceStats::default(),
        }
    }

    /// The offset the next committed record takes.
    pub fn next_offset(&self) -> i64 {
        self.records.len() as i64
    }

    pub fn latest(&self) -> &MetadataImage {
        self.boundaries.values().next_back().expect("the empty image is always there")
    }

    /// A controller received an UNCLEAN ElectLeaders for this partition.
    pub fn unclean_requested(&mut self, topic: &str, partition: i32) {
        *self.unclean_requests.entry((topic.to_string(), partition)).or_default() += 1;
    }

    /// The image as of `next_offset` (after the record before it), built from the entry
    /// boundary below it when it is not one.
    pub fn image_at(&self, next_offset: i64) -> Result<MetadataImage, String> {
        if next_offset > self.next_offset() {
            return Err(format!(
                "offset {next_offset} is past the committed log's end {}",
                self.next_offset()
            ));
        }
        let (&start, image) =
            self.boundaries.range(..=next_offset).next_back().expect("0 is a boundary");
        let mut image = image.clone();
        for record in &self.records[start as usize..next_offset as usize] {
            image.apply(record).map_err(|e| format!("committed record does not apply: {e}"))?;
        }
        Ok(image)
    }

    /// A node applied a committed entry: the same records as every other node at these
    /// offsets, or the next entry of the log, which is then checked.
    pub fn observe_entry(
        &mut self,
        who: &str,
        first_offset: i64,
        records: &[MetadataRecord],
    ) -> Check {
        let end = self.next_offset();
        if first_offset > end {
            return Err(format!(
                "{who} applied an entry at offset {first_offset}, past the committed log's end {end}"
            ));
        }
        if first_offset < end {
            let last = first_offset + records.len() as i64;
            if !self.boundaries.contains_key(&first_offset) || !self.boundaries.contains_key(&last)
            {
                return Err(format!(
                    "{who} applied an entry {first_offset}..{last} whose bounds are not another node's"
                ));
            }
            let known = &self.records[first_offset as usize..last as usize];
            if known != records {
                return Err(format!(
                    "{who} applied at offset {first_offset} {records:?} where {known:?} was committed"
                ));
            }
            return Ok(());
        }
        self.append(records)
    }

    fn append(&mut self, records: &[MetadataRecord]) -> Check {
        if records.is_empty() {
            return Err("a committed entry holds no record".into());
        }
        let mut image = self.latest().clone();
        for record in records {
            let offset = image.next_offset();
            let before = image.clone();
            image
                .apply(record)
                .map_err(|e| format!("committed record at {offset} does not apply: {e}"))?;
            self.check_record(offset, record, &before, &image)?;
            self.records.push(record.clone());
            self.stats.records += 1;
        }
        self.check_boundary(&image)?;
        self.stats.entries += 1;
        self.boundaries.insert(image.next_offset(), image);
        Ok(())
    }

    fn check_record(
        &mut self,
        offset: i64,
        record: &MetadataRecord,
        before: &MetadataImage,
        after: &MetadataImage,
    ) -> Check {
        match record {
            MetadataRecord::CreateTopic { topic_id, .. } => {
                *self.generations.entry(*topic_id).or_default() += 1;
                self.stats.topics_created += 1;
            }
            MetadataRecord::DeleteTopic { .. } => self.stats.topics_deleted += 1,
            MetadataRecord::RegisterBroker { id, epoch, .. } => {
                // Kafka's rule, which the controller follows: the epoch is the offset of
                // the registration's record, so it only grows.
                if *epoch != offset {
                    return Err(format!(
                        "broker {id} registered with epoch {epoch} in the record at offset {offset}"
                    ));
                }
                if let Some(previous) = before.broker(*id) {
                    if previous.epoch >= *epoch {
                        return Err(format!(
                            "broker {id}'s epoch went from {} to {epoch}",
                            previous.epoch
                        ));
                    }
                }
                self.fenced_by_registration.insert(*id, true);
                self.stats.registrations += 1;
            }
            MetadataRecord::ChangeBroker { id, fenced, .. } => {
                self.fenced_by_registration.insert(*id, false);
                if *fenced && before.broker(*id).is_some_and(|b| !b.fenced) {
                    self.stats.fencings += 1;
                }
            }
            MetadataRecord::UnregisterBroker { id, .. } => {
                self.fenced_by_registration.remove(id);
            }
            MetadataRecord::Partition(p) => {
                let topic = after.topic_by_id(&p.topic_id).ok_or("a placed topic vanished")?;
                let placement = topic.placement(p.partition).ok_or("a placement vanished")?;
                let key = self.key(p.topic_id, p.partition);
                if self.last.contains_key(&key) {
                    return Err(format!("partition {key:?} created twice at offset {offset}"));
                }
                self.partition_state(offset, key, None, placement.clone(), &topic.name, before)?;
            }
            MetadataRecord::PartitionChange(c) => {
                let topic = after.topic_by_id(&c.topic_id).ok_or("a changed topic vanished")?;
                let placement = topic.placement(c.partition).ok_or("a placement vanished")?;
                let key = self.key(c.topic_id, c.partition);
                let previous = self.last.get(&key).cloned();
                if previous.is_none() {
                    return Err(format!("partition {key:?} changed before it was created"));
                }
                self.partition_state(
                    offset,
                    key,
                    previous,
                    placement.clone(),
                    &topic.name,
                    before,
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    fn key(&self, topic_id: [u8; 16], partition: i32) -> PartitionKey {
        (topic_id, self.generations.get(&topic_id).copied().unwrap_or(0), partition)
    }

    /// A partition's new committed state, against its previous one.
    fn partition_state(
        &mut self,
        offset: i64,
        key: PartitionKey,
        previous: Option<PartitionRecord>,
        state: PartitionRecord,
        topic: &str,
        before: &MetadataImage,
    ) -> Check {
        let at = || format!("partition {topic}-{} at offset {offset}", key.2);
        // Shape: what every committed state satisfies.
        if state.isr.is_empty() {
            return Err(format!("{}: empty ISR", at()));
        }
        if let Some(stray) = state.isr.iter().find(|b| !state.replicas.contains(b)) {
            return Err(format!(
                "{}: ISR member {stray} is not a replica {:?}",
                at(),
                state.replicas
            ));
        }
        if state.leader != NO_LEADER && !state.isr.contains(&state.leader) {
            return Err(format!(
                "{}: leader {} outside the ISR {:?}",
                at(),
                state.leader,
                state.isr
            ));
        }
        // One leader per leader epoch, over the whole run.
        if state.leader != NO_LEADER {
            let slot = self.leaders.entry((key, state.leader_epoch)).or_insert(state.leader);
            if *slot != state.leader {
                return Err(format!(
                    "{}: brokers {} and {} both lead in leader epoch {}",
                    at(),
                    *slot,
                    state.leader,
                    state.leader_epoch
                ));
            }
        }
        if let Some(previous) = &previous {
            if state.leader_epoch < previous.leader_epoch {
                return Err(format!(
                    "{}: leader epoch went back from {} to {}",
                    at(),
                    previous.leader_epoch,
                    state.leader_epoch
                ));
            }
            if state.partition_epoch <= previous.partition_epoch {
                return Err(format!(
                    "{}: partition epoch did not grow ({} to {})",
                    at(),
                    previous.partition_epoch,
                    state.partition_epoch
                ));
            }
            if state.leader != previous.leader {
                self.stats.leader_changes += 1;
                if state.leader_epoch <= previous.leader_epoch {
                    return Err(format!(
                        "{}: leader {} became {} within leader epoch {}",
                        at(),
                        previous.leader,
                        state.leader,
                        state.leader_epoch
                    ));
                }
            }
            let clean = state.leader == NO_LEADER
                || state.leader == previous.leader
                || previous.isr.contains(&state.leader);
            if !clean {
                let configured = before
                    .topic(topic)
                    .and_then(|t| t.configs.get("unclean.leader.election.enable"))
                    .map(String::as_str);
                let allowed = match configured {
                    Some("true") => true,
                    Some("false") => false,
                    _ => self.unclean_default,
                };
                let requested = previous.leader == NO_LEADER
                    && self
                        .unclean_requests
                        .get_mut(&(topic.to_string(), key.2))
                        .filter(|count| **count > 0)
                        .map(|count| *count -= 1)
                        .is_some();
                if !allowed && !requested {
                    return Err(format!(
                        "{}: leader {} elected from outside the previous ISR {:?} with unclean election off",
                        at(),
                        state.leader,
                        previous.isr
                    ));
                }
                self.stats.unclean_elections += 1;
                if state.isr != [state.leader] {
                    return Err(format!(
                        "{}: an unclean leader {} with ISR {:?}, not just itself",
                        at(),
                        state.leader,
                        state.isr
                    ));
                }
            }
        } else if state.leader_epoch != 0 || state.partition_epoch != 0 {
            return Err(format!("{}: created with non-zero epochs", at()));
        }
        self.last.insert(key, state);
        Ok(())
    }

    /// What holds after every committed entry (a decision's batch is one entry, so within
    /// one the state may pass through steps no decision meant to leave).
    fn check_boundary(&self, image: &MetadataImage) -> Check {
        for topic in image.topics() {
            for (partition, state) in &topic.placements {
                // A fenced broker leads nothing, with one exception the controller makes
                // on purpose: a restarted broker that was the last in-sync replica of a
                // partition stays its leader (no one else has its records), fenced until
                // it has caught up.
                if state.leader != NO_LEADER {
                    let Some(broker) = image.broker(state.leader) else {
                        return Err(format!(
                            "{}-{partition}: leader {} is not registered",
                            topic.name, state.leader
                        ));
                    };
                    let restarted = self.fenced_by_registration.get(&broker.id) == Some(&true);
                    if broker.fenced && !(restarted && state.isr == [broker.id]) {
                        return Err(format!(
                            "{}-{partition}: fenced broker {} leads (ISR {:?}, fenced by {})",
                            topic.name,
                            broker.id,
                            state.isr,
                            if restarted { "its registration" } else { "a change" }
                        ));
                    }
                    if broker.shutting_down {
                        return Err(format!(
                            "{}-{partition}: broker {} leads in controlled shutdown",
                            topic.name, broker.id
                        ));
                    }
                }
                // A fenced broker stays in an ISR only as its last member.
                for member in &state.isr {
                    let fenced = image.broker(*member).map_or(true, |b| b.fenced);
                    if fenced && state.isr.len() > 1 {
                        return Err(format!(
                            "{}-{partition}: fenced broker {member} in the ISR {:?}",
                            topic.name, state.isr
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
