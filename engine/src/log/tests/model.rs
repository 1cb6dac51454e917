//! Model test: random operations against a `BTreeMap<offset, batch>` reference.

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Append { batches: Vec<(usize, usize)> },
    Read { at: f64, max_bytes: u64 },
    Roll,
    Truncate { at: f64 },
    DeleteRecords { at: f64 },
    RetentionBytes { keep: u64 },
    Flush,
    CleanReopen,
    CrashReopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((1usize..6, 0usize..1500), 1..4)
            .prop_map(|batches| Op::Append { batches }),
        4 => (0.0f64..1.0, 1u64..20_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Roll),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => (0.0f64..1.0).prop_map(|at| Op::DeleteRecords { at }),
        1 => (0u64..40_000).prop_map(|keep| Op::RetentionBytes { keep }),
        1 => Just(Op::Flush),
        1 => Just(Op::CleanReopen),
        1 => Just(Op::CrashReopen),
    ]
}

struct Model {
    /// base offset -> batch bytes (with the assigned offset).
    batches: BTreeMap<i64, Vec<u8>>,
    log_start_offset: i64,
    log_end_offset: i64,
}

impl Model {
    fn pick(&self, at: f64) -> i64 {
        let span = (self.log_end_offset - self.log_start_offset) as f64;
        self.log_start_offset + (span * at) as i64
    }
}

async fn check_against_model(log: &Log, model: &Model) {
    assert_eq!(log.log_end_offset(), model.log_end_offset);
    assert_eq!(log.log_start_offset(), model.log_start_offset);
    let all = read_all(log).await;
    // The first segment may begin before the log start offset (DeleteRecords inside it).
    let expected: Vec<(i64, Vec<u8>)> = model
        .batches
        .iter()
        .filter(|(base, bytes)| {
            **base >= model.log_start_offset
                || Batch::parse(bytes).unwrap().0.last_offset() >= model.log_start_offset
        })
        .map(|(base, bytes)| (*base, bytes.clone()))
        .collect();
    assert_eq!(all, expected);
}

fn run_model(mode: IoMode, ops: Vec<Op>) {
    run(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(mode);
        opts.segment_bytes = 6 << 10;
        opts.index_interval_bytes = 1000;
        opts.retention_ms = -1;
        let mut log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        let mut model = Model { batches: BTreeMap::new(), log_start_offset: 0, log_end_offset: 0 };
        let mut seed = 0u8;
        for op in ops {
            match op {
                Op::Append { batches } => {
                    let mut bytes = Vec::new();
                    let mut parts = Vec::new();
                    for (records, value_bytes) in batches {
                        seed = seed.wrapping_add(1);
                        let one = batch_bytes(records, value_bytes, T0 + i64::from(seed), seed);
                        parts.push(one.clone());
                        bytes.extend(one);
                    }
                    let info = log.append(&mut bytes).await.unwrap();
                    assert_eq!(info.base_offset, model.log_end_offset);
                    let mut next = model.log_end_offset;
                    for mut part in parts {
                        crate::batch::set_base_offset(&mut part, next);
                        let last = Batch::parse(&part).unwrap().0.last_offset();
                        model.batches.insert(next, part);
                        next = last + 1;
                    }
                    assert_eq!(info.last_offset, next - 1);
                    model.log_end_offset = next;
                }
                Op::Read { at, max_bytes } => {
                    let offset = model.pick(at);
                    let slice =
                        log.read(offset, max_bytes, model.log_end_offset, true).await.unwrap();
                    if offset == model.log_end_offset {
                        assert!(slice.is_empty());
                        continue;
                    }
                    let (base, first) = model.batches.range(..=offset).next_back().unwrap();
                    assert_eq!(slice.first_batch_offset, *base);
                    let bytes = slice.read().await.unwrap();
                    assert!(bytes.len() as u64 >= (first.len() as u64).min(bytes.len() as u64));
                    // Whole batches match the model; a trailing partial one is a prefix.
                    let mut rest: &[u8] = &bytes;
                    for (_, expected) in model.batches.range(*base..) {
                        if rest.is_empty() {
                            break;
                        }
                        let n = expected.len().min(rest.len());
                        assert_eq!(&rest[..n], &expected[..n]);
                        rest = &rest[n..];
                    }
                    assert!(rest.is_empty());
                    assert!(bytes.len() as u64 <= max_bytes.max(first.len() as u64));
                }
                Op::Roll => {
                    log.roll_active().await.unwrap();
                }
                Op::Truncate { at } => {
                    let offset = model.pick(at);
                    if offset <= model.log_start_offset {
                        continue; // replication never truncates below the log start
                    }
                    let new_end = log.truncate_to(offset).await.unwrap();
                    let (base, _) = model.batches.range(..offset).next_back().unwrap();
                    let last = Batch::parse(&model.batches[base]).unwrap().0.last_offset();
                    let expected_end = if last >= offset { *base } else { offset };
                    assert_eq!(new_end, expected_end);
                    model.batches.split_off(&expected_end);
                    model.log_end_offset = expected_end;
                    // Cutting the batch that holds the log start pulls the start back to
                    // the new end (the log start never passes the log end).
                    model.log_start_offset = model.log_start_offset.min(expected_end);
                }
                Op::DeleteRecords { at } => {
                    let offset = model.pick(at);
                    log.advance_log_start_offset(offset).unwrap();
                    model.log_start_offset = model.log_start_offset.max(offset);
                    log.apply_retention().await.unwrap();
                }
                Op::RetentionBytes { keep } => {
                    let mut opts_now = log.options();
                    opts_now.retention_bytes = keep as i64;
                    log.set_options(opts_now).unwrap();
                    let size_before = log.size_bytes();
                    log.apply_retention().await.unwrap();
                    let mut opts_now = log.options();
                    opts_now.retention_bytes = -1;
                    log.set_options(opts_now).unwrap();
                    assert!(log.size_bytes() <= size_before);
                    model.log_start_offset = log.log_start_offset();
                    let first_segment = log.segment_base_offsets()[0];
                    model.batches = model.batches.split_off(&first_segment);
                }
                Op::Flush => {
                    log.flush().await.unwrap();
                    assert_eq!(log.recovery_point(), model.log_end_offset);
                }
                Op::CleanReopen | Op::CrashReopen => {
                    if matches!(op, Op::CleanReopen) {
                        log.close().await.unwrap();
                    }
                    let hints = OpenHints {
                        recovery_point: log.recovery_point(),
                        log_start_offset: log.log_start_offset(),
                        machine_restarted: false,
                    };
                    drop(log);
                    // A crash: writes the kernel accepted still land.
                    crate::io::writes_landed().await;
                    log = open(dir.path(), opts.clone(), hints, &clock).await;
                }
            }
            check_against_model(&log, &model).await;
        }
        log.close().await.unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn model_buffered(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_model(IoMode::Buffered, ops);
    }

    #[test]
    fn model_direct(ops in prop::collection::vec(op_strategy(), 1..40)) {
        run_model(IoMode::Direct, ops);
    }
}
