//! Fuzz target: RecordBatch v2 bytes through every reader that looks at a batch the
//! broker stores: the produce path's walk and validation, the per-record walk of
//! ListOffsets by timestamp, the transaction marker reader of producer-state recovery,
//! and the client's batch and record walkers (the load generator's consumer). The first
//! input byte says whether to fix the CRCs and which codec the attributes claim (see
//! `prepare_batches`), so compressed-claiming batches reach every walker. Where both the
//! engine and the client read a batch's records, they must agree. A first byte of 0xff
//! instead encodes arbitrary records and checks that they read back.
#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use sluice_engine::batch::{encode_batch, Batch, BatchIter, Compression, EncodeOptions, Record};
use sluice_engine::producer::{marker_of, LoggedBatch};
use sluice_net::client::batch::{Batches, Records};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode == 0xff {
        round_trip(rest);
        return;
    }
    let mut bytes = rest.to_vec();
    sluice_fuzz::prepare_batches(mode, &mut bytes);
    for batch in BatchIter::new(&bytes) {
        let Ok(batch) = batch else { break };
        read_batch(&batch);
    }
    let mut batches = Batches::new(&bytes);
    for batch in &mut batches {
        let Ok(batch) = batch else { break };
        let _ = batch.compression();
    }
    let _ = batches.partial_tail();
});

fn read_batch(batch: &Batch<'_>) {
    let valid = batch.validate(1 << 20).is_ok();
    let _ = batch.validate_structure(1 << 20);
    let _ = (batch.last_offset(), batch.timestamp_type(), batch.compression());
    let _ = LoggedBatch::of(batch);
    let _ = marker_of(batch);
    let engine = batch.record_offsets_and_timestamps();
    let client: Result<Vec<_>, _> = Records::of(batch).collect();
    if valid && batch.compression() == Compression::None {
        if let Ok(client) = client {
            // The client walker reads more of each record (key, value), so where it reads
            // every record the engine must too, with the same offsets and timestamps.
            let expected: Vec<(i64, i64)> = client
                .iter()
                .map(|r| (batch.base_offset().wrapping_add(r.offset_delta), r.timestamp))
                .collect();
            assert_eq!(engine.as_deref(), Some(expected.as_slice()));
        }
    }
}

fn round_trip(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(fields) = Vec::<(Option<Vec<u8>>, Option<Vec<u8>>, i32)>::arbitrary(&mut input) else {
        return;
    };
    if fields.is_empty() {
        return;
    }
    let records: Vec<Record> = fields
        .into_iter()
        .map(|(key, value, timestamp)| Record { key, value, timestamp: i64::from(timestamp) })
        .collect();
    let bytes = encode_batch(&records, EncodeOptions::default());
    let (batch, rest) = Batch::parse(&bytes).expect("an encoded batch parses");
    assert!(rest.is_empty());
    batch.validate(usize::MAX).expect("an encoded batch is valid");
    assert_eq!(batch.record_count() as usize, records.len());
    let read: Vec<_> =
        Records::of(&batch).collect::<Result<_, _>>().expect("encoded records read back");
    assert_eq!(read.len(), records.len());
    for (at, (view, record)) in read.iter().zip(&records).enumerate() {
        assert_eq!(view.offset_delta, at as i64);
        assert_eq!(view.timestamp, record.timestamp);
        assert_eq!(view.key, record.key.as_deref());
        assert_eq!(view.value, record.value.as_deref());
    }
    let expected: Vec<(i64, i64)> =
        records.iter().enumerate().map(|(at, r)| (at as i64, r.timestamp)).collect();
    assert_eq!(batch.record_offsets_and_timestamps(), Some(expected));
}
