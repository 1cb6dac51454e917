//! Tests of the metadata image and log: each record's checks, replay after reopen,
//! torn and corrupt tails, and a model test of replay against the image.
#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

fn id(n: u8) -> [u8; 16] {
    let mut id = [0; 16];
    id[15] = n;
    id
}

fn create(name: &str, n: u8, partitions: i32) -> MetadataRecord {
    MetadataRecord::CreateTopic {
        name: name.to_string(),
        topic_id: id(n),
        partitions,
        replication_factor: 1,
        configs: vec![("cleanup.policy".to_string(), "delete".to_string())],
    }
}

fn delete(name: &str) -> MetadataRecord {
    MetadataRecord::DeleteTopic { name: name.to_string() }
}

fn grow(name: &str, partitions: i32) -> MetadataRecord {
    MetadataRecord::CreatePartitions { name: name.to_string(), partitions }
}

fn set_configs(name: &str, configs: &[(&str, &str)]) -> MetadataRecord {
    let configs = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    MetadataRecord::SetTopicConfigs { name: name.to_string(), configs }
}

fn frame_len(record: &MetadataRecord) -> u64 {
    encode_frame(record).unwrap().len() as u64
}

/// Bytes of the log's frames (the file less its header).
fn file_len(log: &MetadataLog) -> u64 {
    fs::metadata(log.path()).unwrap().len() - codec::FILE_HEADER_BYTES as u64
}

/// Applies a record that must fail, and checks that the image did not change.
fn apply_rejected(image: &mut MetadataImage, record: &MetadataRecord) -> MetadataError {
    let before = image.clone();
    let error = image.apply(record).unwrap_err();
    assert_eq!(*image, before);
    error
}

#[test]
fn create_and_duplicate_create() {
    let mut image = MetadataImage::default();
    assert!(image.is_empty());
    image.apply(&create("orders", 1, 3)).unwrap();
    let topic = image.topic("orders").unwrap();
    assert_eq!(topic.name, "orders");
    assert_eq!(topic.topic_id, id(1));
    assert_eq!(topic.partitions, 3);
    assert_eq!(topic.replication_factor, 1);
    assert_eq!(topic.configs.get("cleanup.policy").map(String::as_str), Some("delete"));
    assert_eq!(topic.configs.len(), 1);
    assert_eq!(image.len(), 1);

    let error = apply_rejected(&mut image, &create("orders", 2, 1));
    assert!(matches!(error, MetadataError::TopicExists { ref name } if name == "orders"));
    let error = apply_rejected(&mut image, &create("payments", 1, 1));
    assert!(matches!(
        error,
        MetadataError::DuplicateTopicId { ref name, topic_id, ref existing }
            if name == "payments" && topic_id == id(1) && existing == "orders"
    ));
    assert_eq!(image.len(), 1);
}

#[test]
fn create_rejects_bad_counts_and_zero_id() {
    let mut image = MetadataImage::default();
    let error = apply_rejected(&mut image, &create("t", 1, 0));
    assert!(matches!(
        error,
        MetadataError::InvalidPartitions { partitions: 0, partitions_min: 1, .. }
    ));
    let mut record = create("t", 1, 1);
    if let MetadataRecord::CreateTopic { replication_factor, .. } = &mut record {
        *replication_factor = 0;
    }
    let error = apply_rejected(&mut image, &record);
    assert!(matches!(error, MetadataError::InvalidReplicationFactor { replication_factor: 0, .. }));
    let error = apply_rejected(&mut image, &create("t", 0, 1));
    assert!(matches!(error, MetadataError::InvalidTopicId { ref name } if name == "t"));
    assert!(image.is_empty());
}

#[test]
fn delete_and_topic_by_id() {
    let mut image = MetadataImage::default();
    image.apply(&create("a", 1, 1)).unwrap();
    image.apply(&create("b", 2, 1)).unwrap();
    assert_eq!(image.topic_by_id(&id(1)).unwrap().name, "a");
    assert_eq!(image.topic_by_id(&id(2)).unwrap().name, "b");
    assert!(image.topic_by_id(&id(3)).is_none());

    image.apply(&delete("a")).unwrap();
    assert!(image.topic("a").is_none());
    assert!(image.topic_by_id(&id(1)).is_none());
    assert_eq!(image.topic_by_id(&id(2)).unwrap().name, "b");
    assert_eq!(image.len(), 1);

    let error = apply_rejected(&mut image, &delete("a"));
    assert!(matches!(error, MetadataError::UnknownTopic { ref name } if name == "a"));
    // The name and the id are free again.
    image.apply(&create("a", 1, 5)).unwrap();
    assert_eq!(image.topic_by_id(&id(1)).unwrap().partitions, 5);
}

#[test]
fn create_partitions_only_grows() {
    let mut image = MetadataImage::default();
    image.apply(&create("t", 1, 3)).unwrap();
    image.apply(&grow("t", 5)).unwrap();
    assert_eq!(image.topic("t").unwrap().partitions, 5);
    for partitions in [5, 4, 0, -1] {
        let error = apply_rejected(&mut image, &grow("t", partitions));
        assert!(matches!(
            error,
            MetadataError::InvalidPartitions { partitions: p, partitions_min: 6, .. }
                if p == partitions
        ));
    }
    let error = apply_rejected(&mut image, &grow("u", 9));
    assert!(matches!(error, MetadataError::UnknownTopic { ref name } if name == "u"));
    assert_eq!(image.topic("t").unwrap().partitions, 5);
}

#[test]
fn set_topic_configs_replaces_the_whole_set() {
    let mut image = MetadataImage::default();
    image.apply(&create("t", 1, 1)).unwrap();
    image.apply(&set_configs("t", &[("retention.ms", "1000"), ("segment.ms", "5")])).unwrap();
    let configs = &image.topic("t").unwrap().configs;
    let expected: BTreeMap<String, String> = [("retention.ms", "1000"), ("segment.ms", "5")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(*configs, expected);

    // A repeated key keeps its last value.
    image.apply(&set_configs("t", &[("retention.ms", "1"), ("retention.ms", "2")])).unwrap();
    let configs = &image.topic("t").unwrap().configs;
    assert_eq!(configs.len(), 1);
    assert_eq!(configs["retention.ms"], "2");

    image.apply(&set_configs("t", &[])).unwrap();
    assert!(image.topic("t").unwrap().configs.is_empty());
    let error = apply_rejected(&mut image, &set_configs("u", &[]));
    assert!(matches!(error, MetadataError::UnknownTopic { .. }));
}

#[test]
fn topics_iterate_sorted_by_name() {
    let mut image = MetadataImage::default();
    for (n, name) in ["c", "a", "b"].iter().enumerate() {
        image.apply(&create(name, n as u8 + 1, 1)).unwrap();
    }
    let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn topic_names() {
    let long = "x".repeat(250);
    for name in ["", ".", "..", long.as_str(), "a/b", "a b", "é", "a\0"] {
        let error = validate_topic_name(name).unwrap_err();
        assert!(matches!(error, MetadataError::InvalidTopicName { name: ref n, .. } if n == name));
        let mut image = MetadataImage::default();
        let error = apply_rejected(&mut image, &create(name, 1, 1));
        assert!(matches!(error, MetadataError::InvalidTopicName { .. }));
    }
    let longest = "x".repeat(249);
    for name in ["orders-1.v2_x", "...", "_", "-", longest.as_str()] {
        validate_topic_name(name).unwrap();
    }
}

#[test]
fn new_topic_ids_are_version_4_and_distinct() {
    let ids: Vec<[u8; 16]> = (0..1000).map(|_| new_topic_id()).collect();
    for id in &ids {
        assert_ne!(*id, [0; 16]);
        assert_eq!(id[6] >> 4, 4);
        assert_eq!(id[8] >> 6, 0b10);
        assert_ne!(id[0] >> 2, 0b11_1110);
    }
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
}

#[test]
fn open_creates_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, image) = MetadataLog::open(dir.path()).unwrap();
    assert!(image.is_empty());
    assert_eq!((image.offset(), image.next_offset()), (-1, 0));
    assert_eq!(log.path(), dir.path().join("__cluster_metadata").join("metadata.log"));
    assert_eq!(file_len(&log), 0);
}

#[test]
fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        create("a", 1, 1),
        create("b", 2, 2),
        grow("a", 4),
        set_configs("b", &[("retention.ms", "60000")]),
        delete("b"),
        create("b", 3, 7),
    ];
    let mut expected = MetadataImage::default();
    {
        let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
        for record in &records {
            log.commit(&mut image, record).unwrap();
            expected.apply(record).unwrap();
        }
        assert_eq!(image, expected);
        assert_eq!(log.next_offset(), records.len() as i64);
        assert_eq!(file_len(&log), records.iter().map(frame_len).sum::<u64>());
    }
    let (_, image) = MetadataLog::open(dir.path()).unwrap();
    assert_eq!(image, expected);
    assert_eq!(image.offset(), records.len() as i64 - 1, "the offset of the last record");
    assert_eq!(image.topic("a").unwrap().partitions, 4);
    assert_eq!(image.topic("b").unwrap().topic_id, id(3));
    // The re-created topic starts from its own overrides, not the deleted one's.
    let configs = &image.topic("b").unwrap().configs;
    assert_eq!(configs.keys().collect::<Vec<_>>(), ["cleanup.policy"]);
}

#[test]
fn commit_rejects_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
    log.commit(&mut image, &create("a", 1, 1)).unwrap();
    let error = log.commit(&mut image, &create("a", 2, 1)).unwrap_err();
    assert!(matches!(error, MetadataError::TopicExists { .. }));
    assert_eq!(file_len(&log), frame_len(&create("a", 1, 1)));
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let records = [create("a", 1, 1), create("b", 2, 1), create("c", 3, 1)];
    let end_of_two = frame_len(&records[0]) + frame_len(&records[1]);
    {
        let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
        for record in &records {
            log.append(record).unwrap();
        }
        let len = file_len(&log);
        assert_eq!(len, end_of_two + frame_len(&records[2]));
        let torn = codec::FILE_HEADER_BYTES as u64 + len - 3;
        File::options().write(true).open(log.path()).unwrap().set_len(torn).unwrap();
    }
    let (mut log, image) = MetadataLog::open(dir.path()).unwrap();
    let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(file_len(&log), end_of_two);

    log.append(&records[2]).unwrap();
    drop(log);
    let (log, image) = MetadataLog::open(dir.path()).unwrap();
    let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(file_len(&log), end_of_two + frame_len(&records[2]));
}

#[test]
fn bad_crc_in_the_middle_cuts_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let records = [create("a", 1, 1), create("b", 2, 1), create("c", 3, 1)];
    let end_of_one = frame_len(&records[0]);
    {
        let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
        for record in &records {
            log.append(record).unwrap();
        }
        // Flip one payload byte of the second record.
        let mut bytes = fs::read(log.path()).unwrap();
        let at = codec::FILE_HEADER_BYTES + end_of_one as usize + FRAME_HEADER_BYTES + 2;
        bytes[at] ^= 0xff;
        fs::write(log.path(), &bytes).unwrap();
    }
    let (log, image) = MetadataLog::open(dir.path()).unwrap();
    let names: Vec<&str> = image.topics().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(file_len(&log), end_of_one);
}

#[test]
fn record_that_fails_apply_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let records = [create("a", 1, 1), delete("nope"), create("c", 3, 1)];
    {
        let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
        // append does not check, so it can write what replay must refuse.
        for record in &records {
            log.append(record).unwrap();
        }
    }
    let (log, image) = MetadataLog::open(dir.path()).unwrap();
    assert_eq!(image.len(), 1);
    assert!(image.topic("a").is_some());
    assert_eq!(file_len(&log), frame_len(&records[0]));
}

#[test]
fn zero_filled_and_oversized_tails_are_cut() {
    let record = create("a", 1, 1);
    let mut frame = encode_frame(&record).unwrap();
    let good = frame.len() as u64;

    // A crash can leave a zero-filled tail; a zero header passes its CRC (crc32c of
    // nothing is 0) but holds no record.
    let mut zeros = frame.clone();
    zeros.resize(frame.len() + 4096, 0);
    let replay_zeros = replay(&zeros);
    assert_eq!(replay_zeros.records, 1);
    assert_eq!(replay_zeros.end, good);
    assert!(replay_zeros.cut.unwrap().starts_with("undecodable record"));

    frame.extend_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    let replay_large = replay(&frame);
    assert_eq!(replay_large.records, 1);
    assert_eq!(replay_large.end, good);
    assert!(replay_large.cut.unwrap().contains("exceeds"));
}

#[test]
fn oversized_record_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
    log.commit(&mut image, &create("a", 1, 1)).unwrap();
    let value = "x".repeat(FRAME_PAYLOAD_BYTES_MAX as usize);
    let record = set_configs("a", &[("k", value.as_str())]);
    let error = log.commit(&mut image, &record).unwrap_err();
    assert!(matches!(
        error,
        MetadataError::RecordTooLarge { bytes_max: FRAME_PAYLOAD_BYTES_MAX, .. }
    ));
    assert_eq!(file_len(&log), frame_len(&create("a", 1, 1)));
    assert_eq!(image.topic("a").unwrap().configs.len(), 1);
}

/// Topic name to (topic id, partitions, configs): the simple model the image must match.
type Reference = BTreeMap<String, ([u8; 16], i32, BTreeMap<String, String>)>;

/// Records over a small pool of names and ids, so that conflicts are common.
fn record_strategy() -> impl Strategy<Value = MetadataRecord> {
    let name = prop::sample::select(vec!["a", "b", "c", "", "x/y"]).prop_map(String::from);
    let configs = prop::collection::vec(
        (
            prop::sample::select(vec!["retention.ms", "segment.bytes"]).prop_map(String::from),
            "[0-9]{0,4}",
        ),
        0..3,
    );
    prop_oneof![
        (name.clone(), 0u8..4, -1i32..5, -1i16..3, configs.clone()).prop_map(
            |(name, n, partitions, replication_factor, configs)| {
                MetadataRecord::CreateTopic {
                    name,
                    topic_id: id(n),
                    partitions,
                    replication_factor,
                    configs,
                }
            }
        ),
        name.clone().prop_map(|name| MetadataRecord::DeleteTopic { name }),
        (name.clone(), -1i32..8).prop_map(|(name, partitions)| {
            MetadataRecord::CreatePartitions { name, partitions }
        }),
        (name, configs)
            .prop_map(|(name, configs)| MetadataRecord::SetTopicConfigs { name, configs }),
        (0i32..3, 0i64..4, 0u8..2).prop_map(|(id, epoch, incarnation)| {
            MetadataRecord::RegisterBroker {
                id,
                epoch,
                incarnation_id: [incarnation; 16],
                endpoints: vec![BrokerEndpoint {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: 9092 + id as u16,
                }],
                rack: None,
            }
        }),
        (0i32..3, 0i64..4, any::<bool>(), any::<bool>()).prop_map(
            |(id, epoch, fenced, shutting_down)| MetadataRecord::ChangeBroker {
                id,
                epoch,
                fenced,
                shutting_down,
            }
        ),
        (0u8..4, -1i32..3, prop::collection::vec(0i32..4, 0..4), 0usize..4, -1i32..4).prop_map(
            |(n, partition, replicas, isr_len, leader)| {
                let isr: Vec<i32> = replicas.iter().copied().take(isr_len).collect();
                MetadataRecord::Partition(PartitionRecord {
                    topic_id: id(n),
                    partition,
                    replicas,
                    isr,
                    leader,
                    leader_epoch: 0,
                    partition_epoch: 0,
                    adding: vec![],
                    removing: vec![],
                })
            }
        ),
        (
            0u8..4,
            0i32..3,
            prop::option::of(-1i32..4),
            prop::option::of(prop::collection::vec(0i32..4, 0..3))
        )
            .prop_map(|(n, partition, leader, isr)| {
                MetadataRecord::PartitionChange(PartitionChangeRecord {
                    topic_id: id(n),
                    partition,
                    leader,
                    isr,
                    ..Default::default()
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The image built in memory equals the image replayed from disk, and matches a
    /// plain map of (id, partitions, configs) kept alongside as a reference.
    #[test]
    fn image_equals_replay(records in prop::collection::vec(record_strategy(), 0..40)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut image) = MetadataLog::open(dir.path()).unwrap();
        let mut reference: Reference =
            BTreeMap::new();
        let mut committed = 0;
        for record in &records {
            let before = image.clone();
            if log.commit(&mut image, record).is_err() {
                prop_assert_eq!(&image, &before);
                continue;
            }
            committed += 1;
            match record.clone() {
                MetadataRecord::CreateTopic { name, topic_id, partitions, configs, .. } => {
                    reference.insert(name, (topic_id, partitions, configs.into_iter().collect()));
                }
                MetadataRecord::DeleteTopic { name } => {
                    reference.remove(&name);
                }
                MetadataRecord::CreatePartitions { name, partitions } => {
                    reference.get_mut(&name).unwrap().1 = partitions;
                }
                MetadataRecord::SetTopicConfigs { name, configs } => {
                    reference.get_mut(&name).unwrap().2 = configs.into_iter().collect();
                }
                MetadataRecord::ProducerIds { .. }
                | MetadataRecord::RegisterBroker { .. }
                | MetadataRecord::ChangeBroker { .. }
                | MetadataRecord::UnregisterBroker { .. }
                | MetadataRecord::Partition(_)
                | MetadataRecord::PartitionChange(_) => {}
            }
            let snapshot = image.encode_snapshot().unwrap();
            prop_assert_eq!(&MetadataImage::decode_snapshot(&snapshot).unwrap(), &image);
        }
        let flattened: Reference = image
            .topics()
            .map(|t| (t.name.clone(), (t.topic_id, t.partitions, t.configs.clone())))
            .collect();
        prop_assert_eq!(&flattened, &reference);
        for topic in image.topics() {
            prop_assert_eq!(image.topic_by_id(&topic.topic_id), Some(topic));
        }
        drop(log);

        let bytes = fs::read(dir.path().join(METADATA_DIR).join(METADATA_FILE)).unwrap();
        let replayed = replay(&bytes[codec::FILE_HEADER_BYTES..]);
        prop_assert_eq!(replayed.records, committed);
        prop_assert!(replayed.cut.is_none());
        let (_, reopened) = MetadataLog::open(dir.path()).unwrap();
        prop_assert_eq!(&reopened, &image);
    }

    /// Cutting a valid log at any byte keeps exactly the records whose frames end at or
    /// before the cut.
    #[test]
    fn any_truncation_keeps_the_whole_frames(cut_at in 0usize..1000) {
        let records = [
            create("a", 1, 1),
            create("b", 2, 2),
            grow("a", 3),
            set_configs("b", &[("retention.ms", "5")]),
            delete("a"),
        ];
        let mut bytes = Vec::new();
        let mut ends = vec![0u64];
        let mut images = vec![MetadataImage::default()];
        for record in &records {
            bytes.extend_from_slice(&encode_frame(record).unwrap());
            ends.push(bytes.len() as u64);
            let mut image = images.last().unwrap().clone();
            image.apply(record).unwrap();
            images.push(image);
        }
        let cut_at = cut_at.min(bytes.len());
        let kept = ends.iter().rposition(|&end| end <= cut_at as u64).unwrap();
        let replayed = replay(&bytes[..cut_at]);
        prop_assert_eq!(replayed.records, kept);
        prop_assert_eq!(replayed.end, ends[kept]);
        prop_assert_eq!(replayed.cut.is_some(), ends[kept] != cut_at as u64);
        prop_assert_eq!(&replayed.image, &images[kept]);
    }
}

/// A frame of a format-0 log: the payload is the rkyv archive of the whole enum.
fn legacy_frame(record: &MetadataRecord) -> Vec<u8> {
    let payload = codec::encode_legacy(record);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn a_log_of_untyped_records_is_read_and_rewritten_with_typed_records() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        create("a", 1, 2),
        set_configs("a", &[("retention.ms", "60000")]),
        MetadataRecord::ProducerIds { end: 1000 },
        create("b", 2, 1),
        delete("b"),
    ];
    let mut expected = MetadataImage::default();
    let mut bytes = Vec::new();
    for record in &records {
        bytes.extend(legacy_frame(record));
        expected.apply(record).unwrap();
    }
    // A torn tail, as a crash during an append leaves it: cut, as in any format.
    bytes.extend_from_slice(&legacy_frame(&create("c", 3, 1))[..10]);
    let path = dir.path().join(METADATA_DIR).join(METADATA_FILE);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &bytes).unwrap();

    let (mut log, image) = MetadataLog::open(dir.path()).unwrap();
    assert_eq!(image, expected);
    assert_eq!(image.offset(), 4);
    let kept = fs::read(path.with_extension("log.format0")).unwrap();
    assert_eq!(kept.len(), bytes.len() - 10, "the old log is kept, without its torn tail");
    let on_disk = fs::read(&path).unwrap();
    assert_eq!(on_disk[..codec::FILE_HEADER_BYTES], codec::file_header());
    assert_eq!(file_len(&log), records.iter().map(frame_len).sum::<u64>());
    log.append(&create("c", 3, 1)).unwrap();
    drop(log);
    let (_, image) = MetadataLog::open(dir.path()).unwrap();
    assert_eq!(image.offset(), 5);
    assert_eq!(image.topic("a").unwrap().configs.get("retention.ms").unwrap(), "60000");
    assert!(image.topic("c").is_some());
}

#[test]
fn a_record_type_from_a_newer_version_stops_the_open_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = MetadataLog::open(dir.path()).unwrap();
        log.append(&create("a", 1, 1)).unwrap();
    }
    let path = dir.path().join(METADATA_DIR).join(METADATA_FILE);
    // A whole frame, CRC right, of record type 99.
    let payload = [0u8, 99, 0, 0, 1, 2, 3];
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame);
    fs::write(&path, &bytes).unwrap();
    let Err(error) = MetadataLog::open(dir.path()) else { panic!("opened") };
    assert!(matches!(error, MetadataError::NewerFormat { .. }), "{error}");
    assert!(error.to_string().contains("record type 99 version 0 is unknown"), "{error}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is cut");
    // So is a file of a later format.
    let mut later = codec::file_header();
    later[7] = 2;
    fs::write(&path, later).unwrap();
    let Err(error) = MetadataLog::open(dir.path()) else { panic!("opened") };
    assert!(matches!(error, MetadataError::UnknownFormat { format: 2, .. }), "{error}");
    // A header torn at creation: an empty log.
    fs::write(&path, &codec::FILE_MAGIC[..]).unwrap();
    let (log, image) = MetadataLog::open(dir.path()).unwrap();
    assert!(image.is_empty());
    assert_eq!(file_len(&log), 0);
    assert_eq!(fs::read(&path).unwrap(), codec::file_header());
}

/// A format-0 log as the version before typed records wrote it (six records: create "a"
/// with 2 partitions, its configs, a producer id block, grow "a" to 3, create and delete
/// "b"). Frozen bytes, so that a change to [`MetadataRecord`] cannot silently change how
/// old logs read.
#[test]
fn a_format_0_log_written_by_the_previous_version_still_reads() {
    let bytes = include_bytes!("testdata/format0.log");
    let replayed = replay_legacy(bytes);
    assert_eq!(replayed.cut, None);
    assert_eq!(replayed.records, 6);
    let records = [
        create("a", 1, 2),
        set_configs("a", &[("retention.ms", "60000")]),
        MetadataRecord::ProducerIds { end: 1000 },
        grow("a", 3),
        create("b", 2, 1),
        delete("b"),
    ];
    assert_eq!(replayed.applied, records);
    let a = replayed.image.topic("a").unwrap();
    assert_eq!(a.partitions, 3);
    assert_eq!(a.configs.get("retention.ms").unwrap(), "60000");
    assert!(replayed.image.topic("b").is_none());
    assert_eq!(replayed.image.producer_ids_end(), 1000);
}

fn placement(n: u8, partition: i32, replicas: &[i32], leader: i32) -> MetadataRecord {
    MetadataRecord::Partition(PartitionRecord {
        leader,
        ..PartitionRecord::new(id(n), partition, replicas.to_vec())
    })
}

fn register(id: i32, epoch: i64) -> MetadataRecord {
    MetadataRecord::RegisterBroker {
        id,
        epoch,
        incarnation_id: [epoch as u8; 16],
        endpoints: vec![BrokerEndpoint { name: "PLAINTEXT".into(), host: "h".into(), port: 1 }],
        rack: None,
    }
}

#[test]
fn brokers_register_fenced_and_change_only_with_their_epoch() {
    let mut image = MetadataImage::default();
    image.apply(&register(1, 0)).unwrap();
    let broker = image.broker(1).unwrap();
    assert!(broker.fenced && !broker.shutting_down);
    assert_eq!(broker.endpoint("PLAINTEXT").unwrap().host, "h");
    let unfence =
        MetadataRecord::ChangeBroker { id: 1, epoch: 0, fenced: false, shutting_down: false };
    image.apply(&unfence).unwrap();
    assert!(!image.broker(1).unwrap().fenced);
    // A restart registers again with a higher epoch, fenced; the old epoch is stale.
    assert!(matches!(
        apply_rejected(&mut image, &register(1, 0)),
        MetadataError::InvalidBroker { id: 1, .. }
    ));
    image.apply(&register(1, 5)).unwrap();
    assert!(image.broker(1).unwrap().fenced);
    assert!(matches!(
        apply_rejected(&mut image, &unfence),
        MetadataError::StaleBrokerEpoch { id: 1, epoch: 0, current: Some(5) }
    ));
    image.apply(&MetadataRecord::UnregisterBroker { id: 1, epoch: 5 }).unwrap();
    assert_eq!(image.brokers().count(), 0);
    assert!(matches!(
        apply_rejected(&mut image, &register(-1, 9)),
        MetadataError::InvalidBroker { id: -1, .. }
    ));
}

#[test]
fn placements_are_checked_and_changes_bump_the_epochs() {
    let mut image = MetadataImage::default();
    image.apply(&create("a", 1, 2)).unwrap();
    let bad = [
        placement(2, 0, &[1], 1),        // unknown topic id
        placement(1, 2, &[1], 1),        // outside the partition count
        placement(1, 0, &[], NO_LEADER), // no replicas
        placement(1, 0, &[1, 1], 1),     // a replica twice
        placement(1, 0, &[1, 2], 3),     // leader outside the ISR
    ];
    for record in &bad {
        apply_rejected(&mut image, record);
    }
    image.apply(&placement(1, 0, &[1, 2, 3], 1)).unwrap();
    apply_rejected(&mut image, &placement(1, 0, &[1], 1)); // placed already
    let change = |leader: Option<i32>, isr: Option<Vec<i32>>| {
        MetadataRecord::PartitionChange(PartitionChangeRecord {
            topic_id: id(1),
            partition: 0,
            leader,
            isr,
            ..Default::default()
        })
    };
    image.apply(&change(None, Some(vec![1, 3]))).unwrap();
    let p = image.topic("a").unwrap().placement(0).unwrap().clone();
    assert_eq!(
        (p.isr.as_slice(), p.leader, p.leader_epoch, p.partition_epoch),
        (&[1, 3][..], 1, 0, 1)
    );
    image.apply(&change(Some(3), Some(vec![3]))).unwrap();
    let p = image.topic("a").unwrap().placement(0).unwrap().clone();
    assert_eq!(
        (p.isr.as_slice(), p.leader, p.leader_epoch, p.partition_epoch),
        (&[3][..], 3, 1, 2)
    );
    apply_rejected(&mut image, &change(Some(2), None)); // 2 is not in the ISR
    apply_rejected(&mut image, &change(None, Some(vec![4]))); // 4 is not a replica
    image.apply(&change(Some(NO_LEADER), None)).unwrap();
    assert_eq!(image.topic("a").unwrap().placement(0).unwrap().leader_epoch, 2);
    // A deleted topic takes its placements with it; a new one with its name starts bare.
    image.apply(&delete("a")).unwrap();
    image.apply(&create("a", 3, 1)).unwrap();
    assert!(image.topic("a").unwrap().placements.is_empty());
}

#[test]
fn a_snapshot_rebuilds_the_image_and_damage_is_refused() {
    let mut image = MetadataImage::default();
    for record in [
        register(2, 0),
        MetadataRecord::ChangeBroker { id: 2, epoch: 0, fenced: false, shutting_down: true },
        create("a", 1, 2),
        placement(1, 1, &[2], 2),
        set_configs("a", &[("retention.ms", "5")]),
        MetadataRecord::ProducerIds { end: 3000 },
        register(3, 6),
    ] {
        image.apply(&record).unwrap();
    }
    let bytes = image.encode_snapshot().unwrap();
    let decoded = MetadataImage::decode_snapshot(&bytes).unwrap();
    assert_eq!(decoded, image);
    assert_eq!(decoded.next_offset(), 7);
    for cut in [0, 10, bytes.len() - 1] {
        assert!(MetadataImage::decode_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    assert!(MetadataImage::decode_snapshot(&flipped).is_err());
}
