//! RecordBatch v2 on the client side: [`BatchBuilder`] encodes records as a producer
//! sends them, into one reused buffer; [`Batches`] and [`Records`] walk fetched record
//! bytes in place, so a consumer counts records from batch headers and reads per-record
//! timestamps from a few varints without decoding (or allocating) anything else.
//!
//! The batch layout is the engine's (`sluice_engine::batch`, which documents the header
//! offsets); a record is Kafka's `DefaultRecord`:
//!
//! ```text
//! length varint, attributes i8, timestampDelta varlong, offsetDelta varint,
//! keyLength varint, key, valueLength varint, value, headerCount varint, headers
//! ```

use sluice_engine::batch::{
    read_varint32, write_varint as put_varint, Batch, BatchError, Compression, HEADER_BYTES,
    LOG_OVERHEAD, MAGIC_V2, OFFSET_ATTRIBUTES, OFFSET_BASE_SEQUENCE, OFFSET_BASE_TIMESTAMP,
    OFFSET_CRC, OFFSET_LAST_OFFSET_DELTA, OFFSET_LEADER_EPOCH, OFFSET_LENGTH, OFFSET_MAGIC,
    OFFSET_MAX_TIMESTAMP, OFFSET_PRODUCER_EPOCH, OFFSET_PRODUCER_ID, OFFSET_RECORD_COUNT,
};
use thiserror::Error;

/// Most bytes a record adds beyond its key and value: the length varint (5), attributes
/// (1), timestamp delta varlong (10), offset delta varint (5), key and value length
/// varints (5 each) and the header count (1).
pub const RECORD_OVERHEAD_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 5 + 5 + 1;

/// Kafka's codec id in attribute bits 0..2.
pub fn codec_id(compression: Compression) -> i16 {
    match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
        Compression::Unknown(id) => i16::from(id & 0x07),
    }
}

/// Producer fields of a batch header; the default is a non-idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { producer_id: -1, producer_epoch: -1, base_sequence: -1 }
    }
}

/// Builds one RecordBatch v2 at a time in a buffer that is kept between batches: `push`
/// records, `finish` (or `finish_compressed`), send the bytes, `clear`, repeat.
#[derive(Debug)]
pub struct BatchBuilder {
    /// The 61-byte header (written by `finish`) followed by the records.
    buf: Vec<u8>,
    /// Header + compressed records, for `finish_compressed`.
    compressed: Vec<u8>,
    record_count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    /// Where the last `finish` left the batch, until the next `push` or `clear`.
    finished: Option<Finished>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Plain,
    Compressed,
}

impl BatchBuilder {
    /// A builder whose buffer starts with room for `bytes` (it grows if a batch needs more).
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_BYTES));
        buf.resize(HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            compressed: Vec::new(),
            record_count: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            finished: None,
        }
    }

    /// Empties the builder for the next batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.buf.truncate(HEADER_BYTES);
        self.record_count = 0;
        self.finished = None;
    }

    /// The batch as the last `finish` or `finish_compressed` left it, unless records were
    /// pushed or the builder cleared since.
    pub fn finished_bytes(&self) -> Option<&[u8]> {
        match self.finished? {
            Finished::Plain => Some(&self.buf),
            Finished::Compressed => Some(&self.compressed),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    /// Bytes of the uncompressed batch so far, header included.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// An upper bound of `size()` after pushing a record with these key and value lengths.
    pub fn size_after(&self, key_bytes: usize, value_bytes: usize) -> usize {
        self.buf.len() + RECORD_OVERHEAD_BYTES_MAX + key_bytes + value_bytes
    }

    /// Appends a record with a null key when `key` is `None`.
    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: &[u8]) {
        self.push_with(timestamp, key, value.len(), |out| out.extend_from_slice(value));
    }

    /// Appends a record whose value (`value_bytes` long) `fill` appends to the buffer, so a
    /// caller composes the value in place (a timestamp, then filler) without a copy.
    ///
    /// Panics if `fill` appends other than `value_bytes` bytes: the record length was
    /// already written.
    pub fn push_with(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value_bytes: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        self.finished = None;
        if self.record_count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(self.base_timestamp);
        let offset_delta = i64::from(self.record_count);
        let key_length = key.map_or(-1, |k| k.len() as i64);
        let key_bytes = key.map_or(0, <[u8]>::len);
        let value_length = value_bytes as i64;
        let body = 1
            + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + varint_len(key_length)
            + key_bytes
            + varint_len(value_length)
            + value_bytes
            + 1;
        self.buf.reserve(varint_len(body as i64) + body);
        put_varint(&mut self.buf, body as i64);
        self.buf.push(0); // attributes: unused in v2 records
        put_varint(&mut self.buf, timestamp_delta);
        put_varint(&mut self.buf, offset_delta);
        put_varint(&mut self.buf, key_length);
        if let Some(key) = key {
            self.buf.extend_from_slice(key);
        }
        put_varint(&mut self.buf, value_length);
        let value_start = self.buf.len();
        fill(&mut self.buf);
        assert_eq!(self.buf.len() - value_start, value_bytes, "fill wrote the declared value size");
        self.buf.push(0); // header count
        self.record_count += 1;
    }

    fn fields(&self) -> RecordFields {
        RecordFields {
            record_count: self.record_count,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
        }
    }

    /// Writes the header and CRC of the uncompressed batch and returns its bytes. The
    /// builder keeps them until `clear`.
    ///
    /// Panics on an empty batch (Kafka has no empty producer batch).
    pub fn finish(&mut self, options: BatchOptions) -> &[u8] {
        assert!(self.record_count > 0, "a batch holds at least one record");
        let fields = self.fields();
        write_header(&mut self.buf, fields, options, 0);
        self.finished = Some(Finished::Plain);
        &self.buf
    }

    /// Like [`BatchBuilder::finish`], with the records compressed by `compress` (which
    /// appends the compressed form of its first argument to its second) and the codec
    /// named in the attributes. Returns the compressed batch.
    pub fn finish_compressed<E>(
        &mut self,
        options: BatchOptions,
        compression: Compression,
        compress: impl FnOnce(&[u8], &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<&[u8], E> {
        assert!(self.record_count > 0, "a batch holds at least one record");
        if compression == Compression::None {
            return Ok(self.finish(options));
        }
        let mut compressed = std::mem::take(&mut self.compressed);
        compressed.clear();
        compressed.resize(HEADER_BYTES, 0);
        let result = compress(&self.buf[HEADER_BYTES..], &mut compressed);
        if result.is_ok() {
            write_header(&mut compressed, self.fields(), options, codec_id(compression));
            self.finished = Some(Finished::Compressed);
        }
        self.compressed = compressed;
        result.map(|()| self.compressed.as_slice())
    }
}

/// The header fields that come from the records.
#[derive(Debug, Clone, Copy)]
struct RecordFields {
    record_count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

/// Writes the 61-byte header into `out[..61]` for the records after it, then the CRC.
fn write_header(out: &mut [u8], builder: RecordFields, options: BatchOptions, attributes: i16) {
    let length = i32::try_from(out.len() - LOG_OVERHEAD).expect("a batch is under 2 GiB");
    out[0..OFFSET_LENGTH].copy_from_slice(&0i64.to_be_bytes());
    out[OFFSET_LENGTH..OFFSET_LEADER_EPOCH].copy_from_slice(&length.to_be_bytes());
    // Producers send no partition leader epoch (-1); the broker stamps it.
    out[OFFSET_LEADER_EPOCH..OFFSET_MAGIC].copy_from_slice(&(-1i32).to_be_bytes());
    out[OFFSET_MAGIC] = MAGIC_V2 as u8;
    out[OFFSET_ATTRIBUTES..OFFSET_LAST_OFFSET_DELTA].copy_from_slice(&attributes.to_be_bytes());
    out[OFFSET_LAST_OFFSET_DELTA..OFFSET_BASE_TIMESTAMP]
        .copy_from_slice(&(builder.record_count - 1).to_be_bytes());
    out[OFFSET_BASE_TIMESTAMP..OFFSET_MAX_TIMESTAMP]
        .copy_from_slice(&builder.base_timestamp.to_be_bytes());
    out[OFFSET_MAX_TIMESTAMP..OFFSET_PRODUCER_ID]
        .copy_from_slice(&builder.max_timestamp.to_be_bytes());
    out[OFFSET_PRODUCER_ID..OFFSET_PRODUCER_EPOCH]
        .copy_from_slice(&options.producer_id.to_be_bytes());
    out[OFFSET_PRODUCER_EPOCH..OFFSET_BASE_SEQUENCE]
        .copy_from_slice(&options.producer_epoch.to_be_bytes());
    out[OFFSET_BASE_SEQUENCE..OFFSET_RECORD_COUNT]
        .copy_from_slice(&options.base_sequence.to_be_bytes());
    out[OFFSET_RECORD_COUNT..HEADER_BYTES].copy_from_slice(&builder.record_count.to_be_bytes());
    let crc = crc32c::crc32c(&out[OFFSET_ATTRIBUTES..]);
    out[OFFSET_CRC..OFFSET_ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
}

/// Bytes of the zig-zag varint encoding of `value`.
pub fn varint_len(value: i64) -> usize {
    let raw = ((value << 1) ^ (value >> 63)) as u64;
    // 1 byte per 7 bits, at least one byte.
    let bits = 64 - (raw | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a zig-zag varint: the value and the bytes used.
#[inline]
fn read_varint(bytes: &[u8]) -> Result<(i64, usize), RecordError> {
    // One-byte varints (small deltas and lengths under 64) are the common case.
    match bytes.first() {
        Some(&byte) if byte & 0x80 == 0 => {
            let raw = u64::from(byte);
            Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), 1))
        }
        Some(_) => sluice_engine::batch::read_varint(bytes).ok_or(RecordError::BadVarint),
        None => Err(RecordError::Truncated),
    }
}

/// Why record bytes inside a batch do not decode.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    #[error("record truncated")]
    Truncated,
    #[error("malformed varint in a record")]
    BadVarint,
    #[error("invalid record length {length}")]
    BadLength { length: i64 },
}

/// Walks the batches in fetched record bytes. A fetch response may end with a partial
/// batch (the broker cut it at the size limit): iteration stops before it, and
/// [`Batches::partial_tail`] says whether there was one. Other damage is an error item.
#[derive(Debug)]
pub struct Batches<'a> {
    rest: &'a [u8],
    partial_tail: bool,
}

impl<'a> Batches<'a> {
    pub fn new(bytes: &'a [u8]) -> Batches<'a> {
        Batches { rest: bytes, partial_tail: false }
    }

    /// Whether iteration stopped at an incomplete last batch.
    pub fn partial_tail(&self) -> bool {
        self.partial_tail
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<Batch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Batch::parse(self.rest) {
            Ok((batch, rest)) => {
                self.rest = rest;
                Some(Ok(batch))
            }
            Err(BatchError::Truncated { .. }) => {
                self.partial_tail = true;
                self.rest = &[];
                None
            }
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

/// One record, borrowed from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i64,
    /// Base timestamp + the record's delta (CreateTime); for a LogAppendTime batch the
    /// batch's max timestamp is every record's timestamp and this is not it.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Walks the records of one uncompressed record section (a batch's `records_bytes()`, or
/// the decompressed form of it).
#[derive(Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    base_timestamp: i64,
    remaining: i32,
}

impl<'a> Records<'a> {
    pub fn new(records: &'a [u8], base_timestamp: i64, record_count: i32) -> Records<'a> {
        Records { rest: records, base_timestamp, remaining: record_count.max(0) }
    }

    /// The records of an uncompressed batch.
    pub fn of(batch: &Batch<'a>) -> Records<'a> {
        Records::new(batch.records_bytes(), batch.base_timestamp(), batch.record_count())
    }

    fn next_record(&mut self) -> Result<RecordView<'a>, RecordError> {
        let (length, used) = read_varint(self.rest)?;
        let body_length = usize::try_from(length).map_err(|_| RecordError::BadLength { length })?;
        let body = self.rest.get(used..used + body_length).ok_or(RecordError::Truncated)?;
        self.rest = &self.rest[used + body_length..];
        // Skip the attributes byte.
        let mut at = 1;
        let (timestamp_delta, used) = read_varint(body.get(at..).ok_or(RecordError::Truncated)?)?;
        at += used;
        // An int varint in Kafka's format (the engine's reading, `read_varint32`).
        let (offset_delta, used) = match body.get(at..) {
            Some([]) | None => return Err(RecordError::Truncated),
            Some(rest) => read_varint32(rest).ok_or(RecordError::BadVarint)?,
        };
        at += used;
        let (key, used) = read_bytes(&body[at..])?;
        at += used;
        let (value, _) = read_bytes(&body[at..])?;
        Ok(RecordView {
            offset_delta: i64::from(offset_delta),
            timestamp: self.base_timestamp.wrapping_add(timestamp_delta),
            key,
            value,
        })
    }
}

/// A varint length (-1: null) and that many bytes.
#[inline]
fn read_bytes(bytes: &[u8]) -> Result<(Option<&[u8]>, usize), RecordError> {
    let (length, used) = read_varint(bytes)?;
    if length < 0 {
        return Ok((None, used));
    }
    let end = usize::try_from(length)
        .ok()
        .and_then(|length| used.checked_add(length))
        .ok_or(RecordError::BadLength { length })?;
    let data = bytes.get(used..end).ok_or(RecordError::Truncated)?;
    Ok((Some(data), end))
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let record = self.next_record();
        if record.is_err() {
            self.remaining = 0;
        }
        Some(record)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_engine::batch::{encode_batch, EncodeOptions, Record};

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in
            [0i64, 1, -1, 63, -64, 64, -65, 8191, 8192, i32::MAX as i64, i64::MIN, i64::MAX]
        {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(read_varint(&out).unwrap(), (value, out.len()));
        }
    }

    #[test]
    fn builder_matches_the_engine_encoder() {
        // The engine's encoder is the reference; leader epoch differs (-1 from a producer)
        // and sits outside the CRC, so compare everything else.
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                key: (i % 2 == 0).then(|| format!("key{i}").into_bytes()),
                value: Some(vec![i as u8; 100 + i]),
                timestamp: 1_700_000_000_000 + i as i64 * 3,
            })
            .collect();
        let expected = encode_batch(&records, EncodeOptions::default());
        let mut builder = BatchBuilder::with_capacity(16);
        for record in &records {
            builder.push(record.timestamp, record.key.as_deref(), record.value.as_deref().unwrap());
        }
        let built = builder.finish(BatchOptions::default()).to_vec();
        assert_eq!(built.len(), expected.len());
        assert_eq!(built[..OFFSET_LEADER_EPOCH], expected[..OFFSET_LEADER_EPOCH]);
        assert_eq!(built[OFFSET_MAGIC..], expected[OFFSET_MAGIC..]);
        let (batch, rest) = Batch::parse(&built).unwrap();
        assert!(rest.is_empty());
        batch.validate(usize::MAX).unwrap();
        assert_eq!(batch.partition_leader_epoch(), -1);

        assert_eq!(builder.finished_bytes(), Some(built.as_slice()));
        builder.push(1, None, b"more");
        assert_eq!(builder.finished_bytes(), None, "a push invalidates the finished batch");

        // The builder is reused: a second, different batch is encoded from scratch.
        builder.clear();
        builder.push(5, None, b"x");
        let second = builder.finish(BatchOptions::default());
        let (batch, _) = Batch::parse(second).unwrap();
        batch.validate(usize::MAX).unwrap();
        assert_eq!(batch.record_count(), 1);
        assert_eq!(batch.base_timestamp(), 5);
    }

    #[test]
    fn records_read_back_with_timestamps_keys_and_values() {
        let mut builder = BatchBuilder::with_capacity(1024);
        builder.push(1000, Some(b"a"), b"first");
        builder.push(998, None, b"");
        builder.push_with(1_000_000, Some(b""), 3, |out| out.extend_from_slice(b"xyz"));
        let bytes = builder.finish(BatchOptions::default()).to_vec();
        let (batch, _) = Batch::parse(&bytes).unwrap();
        assert_eq!(batch.max_timestamp(), 1_000_000);
        let records: Vec<_> = Records::of(&batch).map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            RecordView { offset_delta: 0, timestamp: 1000, key: Some(b"a"), value: Some(b"first") }
        );
        assert_eq!(
            records[1],
            RecordView { offset_delta: 1, timestamp: 998, key: None, value: Some(b"") }
        );
        assert_eq!(
            records[2],
            RecordView {
                offset_delta: 2,
                timestamp: 1_000_000,
                key: Some(b""),
                value: Some(b"xyz")
            }
        );
        // Offsets and timestamps agree with the engine's reading of the same batch.
        let engine: Vec<(i64, i64)> = batch.record_offsets_and_timestamps().unwrap();
        let ours: Vec<(i64, i64)> = records.iter().map(|r| (r.offset_delta, r.timestamp)).collect();
        assert_eq!(engine, ours);
    }

    #[test]
    fn compressed_finish_sets_the_codec_and_a_valid_crc() {
        let mut builder = BatchBuilder::with_capacity(1024);
        builder.push(7, None, b"hello");
        builder.push(8, None, b"world");
        let uncompressed_records = builder.buf[HEADER_BYTES..].to_vec();
        // A stand-in codec: reversed bytes.
        let bytes = builder
            .finish_compressed(BatchOptions::default(), Compression::Lz4, |records, out| {
                out.extend(records.iter().rev());
                Ok::<(), ()>(())
            })
            .unwrap()
            .to_vec();
        let (batch, _) = Batch::parse(&bytes).unwrap();
        batch.validate(usize::MAX).unwrap();
        assert_eq!(batch.compression(), Compression::Lz4);
        assert_eq!(batch.record_count(), 2);
        let restored: Vec<u8> = batch.records_bytes().iter().rev().copied().collect();
        assert_eq!(restored, uncompressed_records);
        // A failing codec is the caller's error, not a panic.
        let failed =
            builder.finish_compressed(BatchOptions::default(), Compression::Zstd, |_, _| {
                Err("no codec")
            });
        assert_eq!(failed.unwrap_err(), "no codec");
    }

    #[test]
    fn batches_stop_at_a_partial_tail_and_report_damage() {
        let mut builder = BatchBuilder::with_capacity(1024);
        builder.push(1, None, b"one");
        let one = builder.finish(BatchOptions::default()).to_vec();
        let mut bytes = one.clone();
        bytes.extend_from_slice(&one);
        bytes.extend_from_slice(&one[..30]);
        let mut batches = Batches::new(&bytes);
        assert_eq!(batches.by_ref().filter(Result::is_ok).count(), 2);
        assert!(batches.partial_tail());

        let mut damaged = one.clone();
        damaged[OFFSET_LENGTH..OFFSET_LEADER_EPOCH].copy_from_slice(&3i32.to_be_bytes());
        let mut batches = Batches::new(&damaged);
        assert!(matches!(batches.next(), Some(Err(BatchError::BadLength { length: 3 }))));
        assert!(batches.next().is_none());
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let mut builder = BatchBuilder::with_capacity(1024);
        builder.push(1, Some(b"k"), b"value");
        let bytes = builder.finish(BatchOptions::default()).to_vec();
        let records = &bytes[HEADER_BYTES..];
        for cut in 0..records.len() {
            let mut iter = Records::new(&records[..cut], 0, 1);
            assert!(iter.next().unwrap().is_err(), "cut at {cut}");
            assert!(iter.next().is_none());
        }
        // A key length past the record's end.
        let mut bad = records.to_vec();
        bad[4] = 0x7e; // key length varint: 63
        assert!(Records::new(&bad, 0, 1).next().unwrap().is_err());
    }
}
