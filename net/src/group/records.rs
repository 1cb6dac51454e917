//! The records of the internal `__consumer_offsets` topic: committed offsets and group
//! metadata, each a key and a value byte string.
//!
//! The formats are Kafka's, byte for byte, so the topic's records read the same as a Kafka
//! broker's (and tools that dump `__consumer_offsets` understand ours). The schemas are
//! Kafka's `OffsetCommitKey.json`, `OffsetCommitValue.json`, `GroupMetadataKey.json` and
//! `GroupMetadataValue.json` (`group-coordinator/src/main/resources/common/message/`).
//!
//! Keys and values start with a big-endian `i16` version. A key's version says which record
//! it is: 0 and 1 are offset commits, 2 is group metadata, and 3+ are Kafka's newer records
//! (KIP-848 consumer groups, share groups), which decode to
//! [`RecordError::UnknownKeyVersion`] so a reader can skip them. Value version 4 is the
//! flexible form (compact lengths, tagged fields). Decoding takes every value version Kafka
//! has written; encoding writes what current Kafka writes: OffsetCommitValue 3 (or 1 when
//! the offset has an expire timestamp) and GroupMetadataValue 3.
//!
//! A key with a null value is a tombstone; that is the caller's to recognise. Decoding
//! never panics and, as in Kafka, ignores bytes after a record's last field.

use bytes::Bytes;

/// Key version of an offset commit as Kafka writes it (0 is the same layout, also read).
const KEY_OFFSET_COMMIT: i16 = 1;
/// Key version of group metadata.
const KEY_GROUP_METADATA: i16 = 2;
/// The first flexible value version, and the newest we read.
const FLEXIBLE_VERSION: i16 = 4;
/// Value versions we encode (Kafka's choices since 2.3).
const OFFSET_VALUE_VERSION: i16 = 3;
const OFFSET_VALUE_VERSION_WITH_EXPIRE: i16 = 1;
const GROUP_VALUE_VERSION: i16 = 3;

/// The key of a `__consumer_offsets` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsKey {
    /// A committed offset (OffsetCommitKey); its value is an [`OffsetValue`].
    Offset { group: String, topic: String, partition: i32 },
    /// A group's metadata (GroupMetadataKey); its value is a [`GroupValue`].
    Group { group: String },
}

/// A committed offset (OffsetCommitValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 if none (and always -1 from versions before 3).
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// -1 if none. Only version 1 carries it; encoding one writes version 1, which has no
    /// leader epoch, as Kafka does.
    pub expire_timestamp_ms: i64,
}

/// A classic group's state (GroupMetadataValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// -1 if unknown (versions before 2).
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

/// One member of a [`GroupValue`] (GroupMetadataValue's MemberMetadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    /// Static membership id; always `None` from versions before 3.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Equal to the session timeout from version 0, which has no rebalance timeout.
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Why a key or value could not be decoded (of `__consumer_offsets`, or of
/// `__transaction_state`, whose records use the same [`Reader`] and [`Writer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("internal record ends before its last field")]
    Truncated,
    /// A key of a record type this module does not read (e.g. Kafka's KIP-848 records).
    #[error("unknown internal record key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown internal record value version {0}")]
    UnknownValueVersion(i16),
    #[error("internal record string is null where not nullable, or is not UTF-8")]
    BadString,
    #[error("internal record bytes or array is null where not nullable, or a varint is malformed")]
    BadLength,
    /// A field whose value the schema does not define (e.g. an unknown transaction status).
    #[error("internal record field has an undefined value {0}")]
    BadValue(i64),
}

/// Encodes a key: an offset as version 1, a group as version 2, as Kafka does.
pub fn encode_key(key: &OffsetsKey) -> Vec<u8> {
    match key {
        OffsetsKey::Offset { group, topic, partition } => {
            let mut w = Writer::new(KEY_OFFSET_COMMIT, false);
            w.string(group);
            w.string(topic);
            w.i32(*partition);
            w.buf
        }
        OffsetsKey::Group { group } => {
            let mut w = Writer::new(KEY_GROUP_METADATA, false);
            w.string(group);
            w.buf
        }
    }
}

/// Decodes a key; versions other than 0..=2 are [`RecordError::UnknownKeyVersion`].
pub fn decode_key(bytes: &[u8]) -> Result<OffsetsKey, RecordError> {
    let mut r = Reader::new(bytes);
    match r.i16()? {
        0 | KEY_OFFSET_COMMIT => {
            Ok(OffsetsKey::Offset { group: r.string()?, topic: r.string()?, partition: r.i32()? })
        }
        KEY_GROUP_METADATA => Ok(OffsetsKey::Group { group: r.string()? }),
        version => Err(RecordError::UnknownKeyVersion(version)),
    }
}

/// Encodes an offset as version 3, or as version 1 if it has an expire timestamp.
pub fn encode_offset_value(value: &OffsetValue) -> Vec<u8> {
    let version = if value.expire_timestamp_ms == -1 {
        OFFSET_VALUE_VERSION
    } else {
        OFFSET_VALUE_VERSION_WITH_EXPIRE
    };
    write_offset_value(value, version)
}

fn write_offset_value(value: &OffsetValue, version: i16) -> Vec<u8> {
    let mut w = Writer::new(version, version >= FLEXIBLE_VERSION);
    w.i64(value.offset);
    if version >= 3 {
        w.i32(value.leader_epoch);
    }
    w.string(&value.metadata);
    w.i64(value.commit_timestamp_ms);
    if version == 1 {
        w.i64(value.expire_timestamp_ms);
    }
    w.tagged_fields();
    w.buf
}

/// Decodes an offset value of any version 0..=4.
pub fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
    let (mut r, version) = Reader::value(bytes)?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    let expire_timestamp_ms = if version == 1 { r.i64()? } else { -1 };
    r.tagged_fields()?;
    Ok(OffsetValue { offset, leader_epoch, metadata, commit_timestamp_ms, expire_timestamp_ms })
}

/// Encodes group metadata as version 3.
pub fn encode_group_value(value: &GroupValue) -> Vec<u8> {
    write_group_value(value, GROUP_VALUE_VERSION)
}

fn write_group_value(value: &GroupValue, version: i16) -> Vec<u8> {
    let mut w = Writer::new(version, version >= FLEXIBLE_VERSION);
    w.string(&value.protocol_type);
    w.i32(value.generation);
    w.nullable_string(value.protocol.as_deref());
    w.nullable_string(value.leader.as_deref());
    if version >= 2 {
        w.i64(value.current_state_timestamp_ms);
    }
    let count = w.array_len(value.members.len());
    for member in value.members.iter().take(count) {
        w.string(&member.member_id);
        if version >= 3 {
            w.nullable_string(member.group_instance_id.as_deref());
        }
        w.string(&member.client_id);
        w.string(&member.client_host);
        if version >= 1 {
            w.i32(member.rebalance_timeout_ms);
        }
        w.i32(member.session_timeout_ms);
        w.bytes(&member.subscription);
        w.bytes(&member.assignment);
        w.tagged_fields();
    }
    w.tagged_fields();
    w.buf
}

/// Decodes group metadata of any version 0..=4.
pub fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, RecordError> {
    let (mut r, version) = Reader::value(bytes)?;
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.array_len()?;
    // A member takes several bytes, so the remaining length bounds a believable count.
    let mut members = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 { r.nullable_string()? } else { None };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout = if version >= 1 { Some(r.i32()?) } else { None };
        let session_timeout_ms = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        r.tagged_fields()?;
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms: rebalance_timeout.unwrap_or(session_timeout_ms),
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    r.tagged_fields()?;
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

/// Longest string an `i16` length can describe. Longer input is cut at a char boundary
/// (callers bound what they store well below this, e.g. offset metadata).
const MAX_STRING: usize = i16::MAX as usize;
/// Longest bytes or array a length can describe in both the `i32` and the compact
/// (`length + 1`) forms. Unreachable in practice; longer input is cut.
const MAX_LENGTH: usize = i32::MAX as usize - 1;

/// Appends one struct's fields in Kafka's encoding for a given version. Shared by the
/// internal topics' record formats.
pub(crate) struct Writer {
    buf: Vec<u8>,
    flexible: bool,
}

impl Writer {
    pub(crate) fn new(version: i16, flexible: bool) -> Self {
        let mut w = Writer { buf: Vec::with_capacity(64), flexible };
        w.i16(version);
        w
    }

    /// The encoded record.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn i8(&mut self, v: i8) {
        self.buf.push(v as u8);
    }

    pub(crate) fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn uvarint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A length below [`MAX_LENGTH`]: compact (`length + 1`) or `i32`.
    fn length(&mut self, len: usize) {
        if self.flexible {
            self.uvarint(len as u32 + 1);
        } else {
            self.i32(len as i32);
        }
    }

    pub(crate) fn string(&mut self, s: &str) {
        self.nullable_string(Some(s));
    }

    fn nullable_string(&mut self, s: Option<&str>) {
        match (s, self.flexible) {
            (None, true) => self.uvarint(0),
            (None, false) => self.i16(-1),
            (Some(s), _) => {
                let s = truncate_str(s, MAX_STRING);
                if self.flexible {
                    self.uvarint(s.len() as u32 + 1);
                } else {
                    self.i16(s.len() as i16);
                }
                self.buf.extend_from_slice(s.as_bytes());
            }
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        let len = b.len().min(MAX_LENGTH);
        self.length(len);
        self.buf.extend_from_slice(&b[..len]);
    }

    /// Writes an array's count and returns how many elements to write after it.
    pub(crate) fn array_len(&mut self, len: usize) -> usize {
        let len = len.min(MAX_LENGTH);
        self.length(len);
        len
    }

    /// The tagged-field section that ends each flexible struct: we write none.
    pub(crate) fn tagged_fields(&mut self) {
        if self.flexible {
            self.uvarint(0);
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Reads one struct's fields, failing rather than reading past the end. Shared by the
/// internal topics' record formats.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    flexible: bool,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, flexible: false }
    }

    /// A reader past a version, which must be within `versions`; flexible (compact
    /// lengths, tagged fields) from `flexible_from` on.
    pub(crate) fn versioned(
        buf: &'a [u8],
        versions: std::ops::RangeInclusive<i16>,
        flexible_from: i16,
    ) -> Result<(Self, i16), RecordError> {
        let mut r = Reader::new(buf);
        let version = r.i16()?;
        if !versions.contains(&version) {
            return Err(RecordError::UnknownValueVersion(version));
        }
        r.flexible = version >= flexible_from;
        Ok((r, version))
    }

    /// A reader past a value's version, which must be one Kafka has defined (0..=4).
    fn value(buf: &'a [u8]) -> Result<(Self, i16), RecordError> {
        Reader::versioned(buf, 0..=FLEXIBLE_VERSION, FLEXIBLE_VERSION)
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.buf.len() {
            return Err(RecordError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let (head, tail) = self.buf.split_first_chunk::<N>().ok_or(RecordError::Truncated)?;
        self.buf = tail;
        Ok(*head)
    }

    pub(crate) fn i8(&mut self) -> Result<i8, RecordError> {
        self.array().map(i8::from_be_bytes)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, RecordError> {
        self.array().map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, RecordError> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Result<i64, RecordError> {
        self.array().map(i64::from_be_bytes)
    }

    /// An unsigned varint of at most 5 bytes that fits a `u32`.
    fn uvarint(&mut self) -> Result<u32, RecordError> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.array()?;
            if i == 4 && b > 0x0f {
                return Err(RecordError::BadLength);
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::BadLength)
    }

    /// A compact length (`length + 1`, 0 for null).
    fn compact_length(&mut self) -> Result<Option<usize>, RecordError> {
        Ok(self.uvarint()?.checked_sub(1).map(|n| n as usize))
    }

    /// A non-nullable bytes or array length: compact or `i32`.
    fn length(&mut self) -> Result<usize, RecordError> {
        let len =
            if self.flexible { self.compact_length()? } else { usize::try_from(self.i32()?).ok() };
        len.ok_or(RecordError::BadLength)
    }

    /// A string length, `None` for null (Kafka reads any negative `i16` as null).
    fn string_length(&mut self) -> Result<Option<usize>, RecordError> {
        if self.flexible {
            self.compact_length()
        } else {
            Ok(usize::try_from(self.i16()?).ok())
        }
    }

    pub(crate) fn string(&mut self) -> Result<String, RecordError> {
        let len = self.string_length()?.ok_or(RecordError::BadString)?;
        self.utf8(len)
    }

    fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        self.string_length()?.map(|len| self.utf8(len)).transpose()
    }

    fn utf8(&mut self, len: usize) -> Result<String, RecordError> {
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| RecordError::BadString)
    }

    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.length()?;
        self.take(len).map(Bytes::copy_from_slice)
    }

    pub(crate) fn array_len(&mut self) -> Result<usize, RecordError> {
        self.length()
    }

    /// A nullable array's length, `None` for null.
    pub(crate) fn nullable_array_len(&mut self) -> Result<Option<usize>, RecordError> {
        if self.flexible {
            self.compact_length()
        } else {
            Ok(usize::try_from(self.i32()?).ok())
        }
    }

    /// Skips a flexible struct's tagged fields: a count, then (tag, size, data) each. We
    /// know no tags, so every one is skipped.
    pub(crate) fn tagged_fields(&mut self) -> Result<(), RecordError> {
        if !self.flexible {
            return Ok(());
        }
        // Each field takes at least two bytes, so a bogus count runs out of input quickly.
        for _ in 0..self.uvarint()? {
            let _tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
