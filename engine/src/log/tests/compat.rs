//! Byte compatibility: an independent reader of Kafka's on-disk format.

use super::*;

/// A reader of Kafka's log, index and time-index files written from the format
/// description (Kafka's "Message Format" documentation and `OffsetIndex`/`TimeIndex`
/// javadoc), sharing no code with `crate::batch` or `super::index`.
mod kafka_format {
    /// (offset, timestamp, key, value) of one record.
    pub type RecordFields = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

    pub struct RecordBatchHeader {
        pub base_offset: i64,
        pub batch_length: i32,
        pub magic: i8,
        pub crc: u32,
        pub last_offset_delta: i32,
        pub max_timestamp: i64,
        pub records: Vec<RecordFields>,
    }

    fn be<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes[at..at + N]);
        out
    }

    fn varint(bytes: &[u8], at: &mut usize) -> i64 {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
            shift += 7;
        }
        ((value >> 1) as i64) ^ -((value & 1) as i64)
    }

    fn crc32c(bytes: &[u8]) -> u32 {
        // Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }

    pub fn parse_log(file: &[u8]) -> Vec<(usize, RecordBatchHeader)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < file.len() {
            let base_offset = i64::from_be_bytes(be(file, at));
            let batch_length = i32::from_be_bytes(be(file, at + 8));
            let magic = file[at + 16] as i8;
            let crc = u32::from_be_bytes(be(file, at + 17));
            let end = at + 12 + batch_length as usize;
            assert_eq!(crc, crc32c(&file[at + 21..end]), "crc of batch at {at}");
            let last_offset_delta = i32::from_be_bytes(be(file, at + 23));
            let first_timestamp = i64::from_be_bytes(be(file, at + 27));
            let max_timestamp = i64::from_be_bytes(be(file, at + 35));
            let count = i32::from_be_bytes(be(file, at + 57));
            let mut cursor = at + 61;
            let mut records = Vec::new();
            for _ in 0..count {
                let length = varint(file, &mut cursor);
                let record_end = cursor + length as usize;
                cursor += 1; // attributes
                let timestamp_delta = varint(file, &mut cursor);
                let offset_delta = varint(file, &mut cursor);
                let field = |cursor: &mut usize| {
                    let len = varint(file, cursor);
                    (len >= 0).then(|| {
                        let bytes = file[*cursor..*cursor + len as usize].to_vec();
                        *cursor += len as usize;
                        bytes
                    })
                };
                let key = field(&mut cursor);
                let value = field(&mut cursor);
                records.push((
                    base_offset + offset_delta,
                    first_timestamp + timestamp_delta,
                    key,
                    value,
                ));
                cursor = record_end;
            }
            assert_eq!(cursor, end);
            out.push((
                at,
                RecordBatchHeader {
                    base_offset,
                    batch_length,
                    magic,
                    crc,
                    last_offset_delta,
                    max_timestamp,
                    records,
                },
            ));
            at = end;
        }
        out
    }

    /// `.index`: 8-byte entries (relative offset i32, position i32).
    pub fn parse_index(file: &[u8]) -> Vec<(i32, i32)> {
        assert_eq!(file.len() % 8, 0);
        file.chunks(8)
            .map(|c| (i32::from_be_bytes(be(c, 0)), i32::from_be_bytes(be(c, 4))))
            .collect()
    }

    /// `.timeindex`: 12-byte entries (timestamp i64, relative offset i32).
    pub fn parse_time_index(file: &[u8]) -> Vec<(i64, i32)> {
        assert_eq!(file.len() % 12, 0);
        file.chunks(12)
            .map(|c| (i64::from_be_bytes(be(c, 0)), i32::from_be_bytes(be(c, 8))))
            .collect()
    }
}

#[test]
fn files_are_readable_by_an_independent_kafka_format_parser() {
    for mode in [IoMode::Buffered, IoMode::Direct] {
        run(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(T0);
            let mut opts = options(mode);
            opts.segment_bytes = 6 << 10;
            opts.index_interval_bytes = 1024;
            let log = open(dir.path(), opts, OpenHints::default(), &clock).await;
            let mut sent = Vec::new();
            for i in 0..80i64 {
                let value = format!("value-{i}").repeat(1 + (i as usize % 40));
                let records = vec![
                    Record {
                        key: Some(format!("key-{i}").into_bytes()),
                        value: Some(value.into_bytes()),
                        timestamp: T0 + i * 3,
                    },
                    Record { key: None, value: Some(vec![i as u8; 7]), timestamp: T0 + i * 3 + 1 },
                ];
                sent.push(records.clone());
                append_fresh(&log, &encode_batch(&records, EncodeOptions::default())).await;
            }
            log.close().await.unwrap();
            let bases = log.segment_base_offsets();
            assert!(bases.len() > 2);
            let mut seen = Vec::new();
            for (n, base) in bases.iter().enumerate() {
                let log_file =
                    std::fs::read(dir.path().join(segment_file_name(*base, "log"))).unwrap();
                let batches = kafka_format::parse_log(&log_file);
                let positions: BTreeMap<i64, usize> = batches
                    .iter()
                    .map(|(at, b)| (b.base_offset + i64::from(b.last_offset_delta), *at))
                    .collect();
                for (_, batch) in &batches {
                    assert_eq!(batch.magic, 2);
                    assert!(batch.batch_length > 49);
                    assert_ne!(batch.crc, 0);
                    assert_eq!(
                        batch.max_timestamp,
                        batch.records.iter().map(|r| r.1).max().unwrap()
                    );
                    seen.extend(batch.records.iter().cloned());
                }
                // Every index entry points at the batch whose last offset it names.
                let index = kafka_format::parse_index(
                    &std::fs::read(dir.path().join(segment_file_name(*base, "index"))).unwrap(),
                );
                for (relative, position) in &index {
                    assert_eq!(positions[&(base + i64::from(*relative))], *position as usize);
                }
                if log_file.len() > 2 * 1024 {
                    assert!(
                        !index.is_empty(),
                        "segment {base} of {} bytes has no index entry",
                        log_file.len()
                    );
                }
                let time_index = kafka_format::parse_time_index(
                    &std::fs::read(dir.path().join(segment_file_name(*base, "timeindex"))).unwrap(),
                );
                let max_in_segment = batches.iter().map(|(_, b)| b.max_timestamp).max().unwrap();
                if n + 1 < bases.len() {
                    assert_eq!(time_index.last().unwrap().0, max_in_segment, "closing entry");
                }
                for pair in time_index.windows(2) {
                    assert!(pair[0].0 < pair[1].0);
                }
            }
            let expected: Vec<_> = sent
                .iter()
                .flatten()
                .enumerate()
                .map(|(offset, r)| (offset as i64, r.timestamp, r.key.clone(), r.value.clone()))
                .collect();
            assert_eq!(seen, expected);
        });
    }
}
