//! Fuzz target: record bytes through kafka-protocol's `RecordBatchDecoder`, which the
//! coordinators use to replay `__consumer_offsets` and `__transaction_state` at start-up
//! (`Shard::read_all_records`): the one broker path that looks inside a batch's records
//! with a codec. The first input byte fixes CRCs and picks the codec the attributes claim
//! (see `prepare_batches`); this crate enables kafka-protocol's gzip, snappy, lz4 and zstd
//! features, as a `--workspace` build of the broker has them (the load generator asks for
//! them), so compressed batches are decompressed here. Where both decoders read an
//! uncompressed batch's records, they must agree on offsets and timestamps.
#![no_main]

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use sluice_engine::batch::{Batch, BatchIter};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    sluice_fuzz::prepare_batches(mode, &mut bytes);
    let mut buffer = Bytes::from(bytes.clone());
    let Ok(sets) = RecordBatchDecoder::decode_all(&mut buffer) else { return };
    let batches: Vec<Batch<'_>> = BatchIter::new(&bytes).map_while(Result::ok).collect();
    assert_eq!(batches.len(), sets.len(), "both decoders see the same batches");
    for (set, batch) in sets.iter().zip(&batches) {
        if set.compression != Compression::None {
            continue;
        }
        // Where both read the records, they agree. (kafka-protocol is the more lenient
        // reader of an offset delta's varint: it stops after five bytes without an error,
        // where Kafka and the engine refuse a sixth.)
        if let Some(engine) = batch.record_offsets_and_timestamps() {
            let theirs: Vec<(i64, i64)> =
                set.records.iter().map(|r| (r.offset, r.timestamp)).collect();
            assert_eq!(engine, theirs);
        }
    }
});
