//! A zero-copy view over a Kafka RecordBatch v2 (magic 2), the unit Sluice stores, indexes
//! and sends: bytes arrive from a producer, are validated here, get their base offset
//! rewritten in place, and go to disk exactly as they came.
//!
//! Layout (big-endian, Kafka's `DefaultRecordBatch`):
//!
//! ```text
//!  0 baseOffset i64          8 batchLength i32       12 partitionLeaderEpoch i32
//! 16 magic i8               17 crc u32 (CRC-32C of bytes 21..end)
//! 21 attributes i16         23 lastOffsetDelta i32  27 baseTimestamp i64
//! 35 maxTimestamp i64       43 producerId i64       51 producerEpoch i16
//! 53 baseSequence i32       57 recordCount i32      61 records...
//! ```
//!
//! baseOffset, batchLength and partitionLeaderEpoch sit before the CRC'd range, so the
//! broker can assign offsets and stamp the leader epoch without recomputing the CRC.

use thiserror::Error;

/// Bytes before `batchLength`'s payload starts: baseOffset + batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the v2 batch header, up to and including `recordCount`.
pub const HEADER_BYTES: usize = 61;
/// The only record-batch format Sluice stores.
pub const MAGIC_V2: i8 = 2;

/// Byte offsets of the RecordBatch v2 header fields.
pub const OFFSET_BASE: usize = 0;
pub const OFFSET_LENGTH: usize = 8;
pub const OFFSET_LEADER_EPOCH: usize = 12;
pub const OFFSET_MAGIC: usize = 16;
pub const OFFSET_CRC: usize = 17;
pub const OFFSET_ATTRIBUTES: usize = 21;
pub const OFFSET_LAST_OFFSET_DELTA: usize = 23;
pub const OFFSET_BASE_TIMESTAMP: usize = 27;
pub const OFFSET_MAX_TIMESTAMP: usize = 35;
pub const OFFSET_PRODUCER_ID: usize = 43;
pub const OFFSET_PRODUCER_EPOCH: usize = 51;
pub const OFFSET_BASE_SEQUENCE: usize = 53;
pub const OFFSET_RECORD_COUNT: usize = 57;

/// The smallest record Kafka encodes (`DefaultRecord`): length, attributes, timestamp
/// delta, offset delta, key length, value length and header count, one byte each.
pub const RECORD_BYTES_MIN: usize = 7;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

const _: () = assert!(OFFSET_RECORD_COUNT + 4 == HEADER_BYTES);
const _: () = assert!(OFFSET_CRC + 4 == OFFSET_ATTRIBUTES);

/// Why bytes are not a valid record batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a batch header or than the batch's own length field claims; a torn
    /// write at the end of a log looks like this.
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("invalid batch length {length}")]
    BadLength { length: i32 },
    #[error("unsupported magic {magic} (only magic 2 record batches are stored)")]
    BadMagic { magic: i8 },
    #[error("corrupt batch: stored crc {stored:#010x}, computed {computed:#010x}")]
    CorruptCrc { stored: u32, computed: u32 },
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid record count {count} for last offset delta {last_offset_delta}")]
    BadRecordCount { count: i32, last_offset_delta: i32 },
}

/// Compression codec, from attribute bits 0..2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    /// Codec ids 5..7 are not defined by Kafka; kept so validation can reject them.
    Unknown(u8),
}

/// Which clock a batch's timestamps come from (attribute bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// A validated-or-not view over exactly one batch's bytes (`LOG_OVERHEAD + batchLength`).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    bytes: &'a [u8],
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Reads the total size (`LOG_OVERHEAD + batchLength`) of the batch starting at `bytes`,
/// from its first 12 bytes only. Used to walk a buffer or file batch by batch.
pub fn batch_size(bytes: &[u8]) -> Result<usize, BatchError> {
    if bytes.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated { needed: LOG_OVERHEAD, available: bytes.len() });
    }
    let length = read_i32(bytes, OFFSET_LENGTH);
    // batchLength counts everything after itself: the rest of the header at minimum.
    let length_min = i32::try_from(HEADER_BYTES - LOG_OVERHEAD).expect("header fits i32");
    if length < length_min {
        return Err(BatchError::BadLength { length });
    }
    let length = usize::try_from(length).map_err(|_| BatchError::BadLength { length })?;
    Ok(LOG_OVERHEAD + length)
}

/// Base offset of the batch starting at `bytes` (first 8 bytes).
pub fn base_offset_of(bytes: &[u8]) -> Option<i64> {
    (bytes.len() >= 8).then(|| read_i64(bytes, OFFSET_BASE))
}

impl<'a> Batch<'a> {
    /// Splits one batch off the front of `bytes`, checking only that the header and the
    /// length are present and sane. Call [`Batch::validate`] before trusting the content.
    pub fn parse(bytes: &'a [u8]) -> Result<(Batch<'a>, &'a [u8]), BatchError> {
        let size = batch_size(bytes)?;
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated { needed: HEADER_BYTES, available: bytes.len() });
        }
        if bytes.len() < size {
            return Err(BatchError::Truncated { needed: size, available: bytes.len() });
        }
        let (batch, rest) = bytes.split_at(size);
        Ok((Batch { bytes: batch }, rest))
    }

    /// Full validation: magic, CRC-32C, record count against the offset delta, and the
    /// size limit (`max.message.bytes`).
    pub fn validate(&self, size_max: usize) -> Result<(), BatchError> {
        self.check_magic_and_size(size_max)?;
        // The CRC before the counts: damage in the counted fields is a corrupt batch.
        let computed = self.crc_computed();
        if computed != self.crc_stored() {
            return Err(BatchError::CorruptCrc { stored: self.crc_stored(), computed });
        }
        self.check_counts()
    }

    /// Everything [`Batch::validate`] checks except the CRC: for a caller that hands the
    /// batch to `Log::append`, which checks the CRC before writing (one pass over the
    /// bytes instead of two).
    pub fn validate_structure(&self, size_max: usize) -> Result<(), BatchError> {
        self.check_magic_and_size(size_max)?;
        self.check_counts()
    }

    fn check_magic_and_size(&self, size_max: usize) -> Result<(), BatchError> {
        if self.magic() != MAGIC_V2 {
            return Err(BatchError::BadMagic { magic: self.magic() });
        }
        if self.size() > size_max {
            return Err(BatchError::TooLarge { size: self.size(), limit: size_max });
        }
        Ok(())
    }

    fn check_counts(&self) -> Result<(), BatchError> {
        let count = self.record_count();
        let last_offset_delta = self.last_offset_delta();
        // A batch holds at least one record except after compaction (count 0 is legal for
        // an emptied batch); offsets are never negative and deltas cover the records.
        if count < 0 || last_offset_delta < 0 || (count > 0 && last_offset_delta < count - 1) {
            return Err(BatchError::BadRecordCount { count, last_offset_delta });
        }
        Ok(())
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Total bytes of the batch including the 12-byte log overhead.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub fn base_offset(&self) -> i64 {
        read_i64(self.bytes, OFFSET_BASE)
    }

    pub fn batch_length(&self) -> i32 {
        read_i32(self.bytes, OFFSET_LENGTH)
    }

    pub fn partition_leader_epoch(&self) -> i32 {
        read_i32(self.bytes, OFFSET_LEADER_EPOCH)
    }

    pub fn magic(&self) -> i8 {
        i8::from_be_bytes([self.bytes[OFFSET_MAGIC]])
    }

    pub fn crc_stored(&self) -> u32 {
        u32::from_be_bytes(
            self.bytes[OFFSET_CRC..OFFSET_CRC + 4].try_into().expect("header length checked"),
        )
    }

    /// CRC-32C (Castagnoli) over attributes..end, as Kafka computes it.
    pub fn crc_computed(&self) -> u32 {
        crc32c::crc32c(&self.bytes[OFFSET_ATTRIBUTES..])
    }

    pub fn attributes(&self) -> i16 {
        read_i16(self.bytes, OFFSET_ATTRIBUTES)
    }

    pub fn compression(&self) -> Compression {
        match (self.attributes() & ATTR_COMPRESSION_MASK) as u8 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => Compression::Unknown(other),
        }
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes() & ATTR_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }

    pub fn last_offset_delta(&self) -> i32 {
        read_i32(self.bytes, OFFSET_LAST_OFFSET_DELTA)
    }

    /// Offset of the last record: `baseOffset + lastOffsetDelta`, wrapping as Kafka's long
    /// arithmetic does (the base offset is outside the CRC; a stored batch's is checked
    /// against the log, but a reader may meet any value first).
    pub fn last_offset(&self) -> i64 {
        self.base_offset().wrapping_add(i64::from(self.last_offset_delta()))
    }

    pub fn base_timestamp(&self) -> i64 {
        read_i64(self.bytes, OFFSET_BASE_TIMESTAMP)
    }

    pub fn max_timestamp(&self) -> i64 {
        read_i64(self.bytes, OFFSET_MAX_TIMESTAMP)
    }

    pub fn producer_id(&self) -> i64 {
        read_i64(self.bytes, OFFSET_PRODUCER_ID)
    }

    pub fn producer_epoch(&self) -> i16 {
        read_i16(self.bytes, OFFSET_PRODUCER_EPOCH)
    }

    pub fn base_sequence(&self) -> i32 {
        read_i32(self.bytes, OFFSET_BASE_SEQUENCE)
    }

    pub fn record_count(&self) -> i32 {
        read_i32(self.bytes, OFFSET_RECORD_COUNT)
    }

    /// The record section (after the 61-byte header), compressed if the codec says so.
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_BYTES..]
    }

    /// Offset and timestamp of each record, for uncompressed batches; `None` when the
    /// batch is compressed (the caller needs a codec) or a record does not decode.
    pub fn record_offsets_and_timestamps(&self) -> Option<Vec<(i64, i64)>> {
        if self.compression() != Compression::None {
            return None;
        }
        // The count is the producer's word: reserve no more than the bytes can hold.
        let count = usize::try_from(self.record_count()).ok()?;
        let mut out = Vec::with_capacity(count.min(self.records_bytes().len() / RECORD_BYTES_MIN));
        let mut rest = self.records_bytes();
        for _ in 0..self.record_count() {
            let (length, used) = read_varint(rest)?;
            let length = usize::try_from(length).ok()?;
            let body = rest.get(used..used + length)?;
            // Record: attributes i8, timestampDelta varlong, offsetDelta varint, ...
            let after_attributes = body.get(1..)?;
            let (timestamp_delta, used_ts) = read_varint(after_attributes)?;
            let (offset_delta, _) = read_varint32(after_attributes.get(used_ts..)?)?;
            out.push((
                self.base_offset().checked_add(i64::from(offset_delta))?,
                self.base_timestamp().wrapping_add(timestamp_delta),
            ));
            rest = &rest[used + length..];
        }
        Some(out)
    }
}

/// Rewrites baseOffset in place. The CRC does not cover it, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[OFFSET_BASE..OFFSET_BASE + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Stamps partitionLeaderEpoch in place (also outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Kafka's LogAppendTime: marks the batch's timestamps as set by the broker (attribute bit
/// 3) and sets maxTimestamp to `timestamp`; consumers then read that time for every record.
/// Both fields are under the CRC, so the CRC is recomputed.
pub fn set_log_append_time(batch: &mut [u8], timestamp: i64) {
    let attributes = i16::from_be_bytes(
        batch[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].try_into().expect("2 bytes"),
    ) | ATTR_TIMESTAMP_TYPE;
    batch[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
    batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Reads a zig-zag varint (Kafka's varint and varlong share the encoding); returns the
/// value and the bytes used, or `None` on truncation or overlong encoding.
pub fn read_varint(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((value, i + 1));
        }
    }
    None
}

/// Reads a zig-zag varint that Kafka's format declares an int (a record's offset delta)
/// as Kafka's `ByteUtils.readVarint` does: at most 5 bytes, bits past 32 dropped; `None`
/// on truncation or a sixth byte.
pub fn read_varint32(bytes: &[u8]) -> Option<(i32, usize)> {
    let mut raw: u32 = 0;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        raw |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i32) ^ -((raw & 1) as i32);
            return Some((value, i + 1));
        }
    }
    None
}

/// Appends a zig-zag varint.
pub fn write_varint(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// One record to encode: key, value, and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
}

/// Options for [`encode_batch`] that are not records.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub base_offset: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            base_offset: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
        }
    }
}

/// Encodes an uncompressed v2 batch, as a producer would send it. Used by tests, the
/// benchmarks, and later by internal topics (`__consumer_offsets`).
pub fn encode_batch(records: &[Record], options: EncodeOptions) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let base_timestamp = records[0].timestamp;
    let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(base_timestamp);
    let mut body = Vec::new();
    for (delta, record) in records.iter().enumerate() {
        let mut one = Vec::new();
        one.push(0u8); // record attributes: unused
        write_varint(&mut one, record.timestamp - base_timestamp);
        write_varint(&mut one, i64::try_from(delta).expect("record count fits i64"));
        for field in [&record.key, &record.value] {
            match field {
                Some(bytes) => {
                    write_varint(&mut one, i64::try_from(bytes.len()).expect("fits i64"));
                    one.extend_from_slice(bytes);
                }
                None => write_varint(&mut one, -1),
            }
        }
        write_varint(&mut one, 0); // header count
        write_varint(&mut body, i64::try_from(one.len()).expect("fits i64"));
        body.extend_from_slice(&one);
    }
    let count = i32::try_from(records.len()).expect("record count fits i32");
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&options.base_offset.to_be_bytes());
    let length = i32::try_from(HEADER_BYTES - LOG_OVERHEAD + body.len()).expect("batch < 2 GiB");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    let attributes: i16 = if options.transactional { ATTR_TRANSACTIONAL } else { 0 };
    out.extend_from_slice(&attributes.to_be_bytes());
    out.extend_from_slice(&(count - 1).to_be_bytes());
    out.extend_from_slice(&base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&options.producer_id.to_be_bytes());
    out.extend_from_slice(&options.producer_epoch.to_be_bytes());
    out.extend_from_slice(&options.base_sequence.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out[OFFSET_ATTRIBUTES..]);
    out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Walks a buffer holding whole batches back to back.
#[derive(Debug)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
}

impl<'a> Iterator for BatchIter<'a> {
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
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(count: usize) -> Vec<u8> {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                key: Some(format!("k{i}").into_bytes()),
                value: Some(vec![i as u8; 10 + i]),
                timestamp: 1_000 + i as i64,
            })
            .collect();
        encode_batch(&records, EncodeOptions::default())
    }

    #[test]
    fn header_fields_round_trip() {
        let bytes = sample(3);
        let (batch, rest) = Batch::parse(&bytes).unwrap();
        assert!(rest.is_empty());
        batch.validate(1 << 20).unwrap();
        assert_eq!(batch.size(), bytes.len());
        assert_eq!(batch.magic(), 2);
        assert_eq!(batch.record_count(), 3);
        assert_eq!(batch.last_offset_delta(), 2);
        assert_eq!(batch.base_timestamp(), 1_000);
        assert_eq!(batch.max_timestamp(), 1_002);
        assert_eq!(batch.producer_id(), -1);
        assert_eq!(batch.compression(), Compression::None);
        assert_eq!(batch.timestamp_type(), TimestampType::CreateTime);
        assert!(!batch.is_transactional());
        assert!(!batch.is_control());
        assert_eq!(
            batch.record_offsets_and_timestamps().unwrap(),
            vec![(0, 1_000), (1, 1_001), (2, 1_002)]
        );
    }

    #[test]
    fn log_append_time_stamps_and_keeps_the_batch_valid() {
        let mut bytes = sample(3);
        set_log_append_time(&mut bytes, 99_000);
        let (batch, _) = Batch::parse(&bytes).unwrap();
        batch.validate(1 << 20).unwrap();
        assert_eq!(batch.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(batch.max_timestamp(), 99_000);
        assert_eq!(batch.base_timestamp(), 1_000);
        assert_eq!(batch.record_count(), 3);
    }

    #[test]
    fn offset_and_epoch_rewrite_keep_crc_valid() {
        let mut bytes = sample(5);
        set_base_offset(&mut bytes, 1_234_567);
        set_partition_leader_epoch(&mut bytes, 7);
        let (batch, _) = Batch::parse(&bytes).unwrap();
        batch.validate(1 << 20).unwrap();
        assert_eq!(batch.base_offset(), 1_234_567);
        assert_eq!(batch.last_offset(), 1_234_571);
        assert_eq!(batch.partition_leader_epoch(), 7);
    }

    #[test]
    fn every_flipped_byte_in_crc_range_is_detected() {
        let bytes = sample(2);
        for at in OFFSET_CRC..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            let (batch, _) = Batch::parse(&damaged).unwrap();
            assert!(
                matches!(batch.validate(1 << 20), Err(BatchError::CorruptCrc { .. })),
                "flip at {at} not detected"
            );
        }
    }

    #[test]
    fn typed_errors() {
        let bytes = sample(1);
        assert!(matches!(Batch::parse(&bytes[..20]), Err(BatchError::Truncated { .. })));
        assert!(matches!(
            Batch::parse(&bytes[..bytes.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        let mut bad_length = bytes.clone();
        bad_length[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert!(matches!(Batch::parse(&bad_length), Err(BatchError::BadLength { length: 3 })));
        let mut negative = bytes.clone();
        negative[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(matches!(Batch::parse(&negative), Err(BatchError::BadLength { .. })));
        let mut magic = bytes.clone();
        magic[OFFSET_MAGIC] = 1;
        let (batch, _) = Batch::parse(&magic).unwrap();
        assert_eq!(batch.validate(1 << 20), Err(BatchError::BadMagic { magic: 1 }));
        let (batch, _) = Batch::parse(&bytes).unwrap();
        assert!(matches!(batch.validate(10), Err(BatchError::TooLarge { .. })));
    }

    #[test]
    fn iterator_walks_back_to_back_batches() {
        let mut buffer = sample(1);
        buffer.extend(sample(4));
        buffer.extend(sample(2));
        let counts: Vec<i32> =
            BatchIter::new(&buffer).map(|batch| batch.unwrap().record_count()).collect();
        assert_eq!(counts, vec![1, 4, 2]);
        buffer.truncate(buffer.len() - 3);
        let results: Vec<_> = BatchIter::new(&buffer).collect();
        assert_eq!(results.len(), 3);
        assert!(results[2].is_err());
    }

    /// Rewrites header fields of an encoded batch and recomputes its CRC.
    fn with_header(mut bytes: Vec<u8>, fields: &[(usize, &[u8])]) -> Vec<u8> {
        for (at, value) in fields {
            bytes[*at..*at + value.len()].copy_from_slice(value);
        }
        let crc = crc32c::crc32c(&bytes[OFFSET_ATTRIBUTES..]);
        bytes[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Found by the `record_batch` fuzz target: a valid 80-byte batch claiming 2^31 - 1
    /// records made the record walk (ListOffsets by timestamp) reserve 32 GiB and abort.
    #[test]
    fn a_huge_record_count_reserves_only_what_the_bytes_hold() {
        let count = i32::MAX.to_be_bytes();
        let bytes = with_header(
            sample(1),
            &[(OFFSET_RECORD_COUNT, &count), (OFFSET_LAST_OFFSET_DELTA, &count)],
        );
        let (batch, _) = Batch::parse(&bytes).unwrap();
        batch.validate(1 << 20).unwrap();
        assert_eq!(batch.record_offsets_and_timestamps(), None);
    }

    /// A base offset near `i64::MAX` plus a record's offset delta overflowed (a panic in
    /// debug builds, a wrapped offset in release).
    #[test]
    fn an_offset_past_i64_max_is_no_record() {
        let mut bytes = sample(2);
        set_base_offset(&mut bytes, i64::MAX);
        let (batch, _) = Batch::parse(&bytes).unwrap();
        assert_eq!(batch.record_offsets_and_timestamps(), None);
    }

    /// Found by the `record_batch` fuzz target: a batch whose base offset is near i64::MAX
    /// panicked `last_offset` (and `LoggedBatch::of`) with an overflow in debug builds.
    #[test]
    fn last_offset_wraps_past_i64_max() {
        let mut bytes = sample(3);
        set_base_offset(&mut bytes, i64::MAX);
        let (batch, _) = Batch::parse(&bytes).unwrap();
        assert_eq!(batch.last_offset(), i64::MIN + 1);
    }

    /// A one-record batch whose record is `body` (after its length varint).
    fn one_record(body: &[u8]) -> Vec<u8> {
        let mut bytes = sample(1);
        bytes.truncate(HEADER_BYTES);
        write_varint(&mut bytes, body.len() as i64);
        bytes.extend_from_slice(body);
        let length = ((bytes.len() - LOG_OVERHEAD) as i32).to_be_bytes();
        with_header(bytes, &[(OFFSET_LENGTH, &length)])
    }

    /// Found by the `record_set` fuzz target (the engine and kafka-protocol disagreed): a
    /// record's offset delta is an int varint in Kafka's format, but the engine read a
    /// long one, so ListOffsets by timestamp could answer an offset 2^32 past its batch.
    /// Now read as Kafka does: five bytes at most, bits past 32 dropped.
    #[test]
    fn offset_deltas_are_int_varints() {
        // attributes, timestamp delta 0, offset delta, key -1, value -1, no headers.
        let record = |delta: &[u8]| [&[0u8, 0][..], delta, &[1, 1, 0]].concat();
        let bytes = one_record(&record(&[0x80, 0x80, 0x80, 0x80, 0x20])); // 2^33 raw
        let (batch, _) = Batch::parse(&bytes).unwrap();
        batch.validate(1 << 20).unwrap();
        assert_eq!(batch.record_offsets_and_timestamps(), Some(vec![(0, 1_000)]));
        let bytes = one_record(&record(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]));
        let (batch, _) = Batch::parse(&bytes).unwrap();
        assert_eq!(batch.record_offsets_and_timestamps(), None);
        assert_eq!(read_varint32(&[0xfe, 0xff, 0xff, 0xff, 0x0f]), Some((i32::MAX, 5)));
        assert_eq!(read_varint32(&[0xff, 0xff, 0xff, 0xff, 0x0f]), Some((i32::MIN, 5)));
    }

    #[test]
    fn varints_round_trip() {
        for value in [0i64, 1, -1, 63, -64, 64, 300, -300, i32::MAX as i64, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(read_varint(&out), Some((value, out.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None);
    }
}
