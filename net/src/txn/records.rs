//! The records of the internal `__transaction_state` topic, in Kafka's formats
//! (`TransactionLogKey.json` v0, `TransactionLogValue.json` v0): the key is the
//! transactional id, the value the transaction's state. Both start with a big-endian
//! `i16` version. Value v0: producer id i64, producer epoch i16, transaction timeout ms
//! i32, status i8, the partitions (nullable array of topic string and partition ids),
//! last update time ms i64, start time ms i64. Later (flexible) versions are read for the
//! same fields, tagged fields skipped. A null value is a tombstone.

use std::collections::BTreeSet;

use sluice_engine::checkpoint::TopicPartition;

/// A transaction's status, with Kafka's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnStatus {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
    Dead = 6,
    PrepareEpochFence = 7,
}

impl TxnStatus {
    pub fn from_i8(value: i8) -> Option<TxnStatus> {
        Some(match value {
            0 => TxnStatus::Empty,
            1 => TxnStatus::Ongoing,
            2 => TxnStatus::PrepareCommit,
            3 => TxnStatus::PrepareAbort,
            4 => TxnStatus::CompleteCommit,
            5 => TxnStatus::CompleteAbort,
            6 => TxnStatus::Dead,
            7 => TxnStatus::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name ListTransactions and DescribeTransactions show (Kafka's `TransactionState`).
    pub fn name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
            TxnStatus::Dead => "Dead",
            TxnStatus::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// A transaction's stored state (TransactionLogValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<TopicPartition>,
    pub last_update_ms: i64,
    pub start_ms: i64,
}

const VERSION: i16 = 0;

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.extend_from_slice(&VERSION.to_be_bytes());
    put_string(&mut out, transactional_id);
    out
}

pub fn decode_key(bytes: &[u8]) -> Result<String, String> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.i16()?;
    if version != 0 {
        return Err(format!("unknown key version {version}"));
    }
    reader.string()
}

pub fn encode_value(value: &TxnValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&value.producer_id.to_be_bytes());
    out.extend_from_slice(&value.producer_epoch.to_be_bytes());
    out.extend_from_slice(&value.timeout_ms.to_be_bytes());
    out.push(value.status as i8 as u8);
    // Partitions grouped by topic, in order.
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in &value.partitions {
        match topics.last_mut() {
            Some((topic, partitions)) if *topic == tp.topic => partitions.push(tp.partition),
            _ => topics.push((&tp.topic, vec![tp.partition])),
        }
    }
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (topic, partitions) in topics {
        put_string(&mut out, topic);
        out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for partition in partitions {
            out.extend_from_slice(&partition.to_be_bytes());
        }
    }
    out.extend_from_slice(&value.last_update_ms.to_be_bytes());
    out.extend_from_slice(&value.start_ms.to_be_bytes());
    out
}

pub fn decode_value(bytes: &[u8]) -> Result<TxnValue, String> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.i16()?;
    if !(0..=1).contains(&version) {
        return Err(format!("unknown value version {version}"));
    }
    let flexible = version >= 1;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = r.i8()?;
    let status = TxnStatus::from_i8(status).ok_or(format!("unknown status {status}"))?;
    let mut partitions = BTreeSet::new();
    let topics = r.array_len(flexible)?;
    for _ in 0..topics.unwrap_or(0) {
        let topic = if flexible { r.compact_string()? } else { r.string()? };
        let count = r.array_len(flexible)?.unwrap_or(0);
        for _ in 0..count {
            partitions.insert(TopicPartition::new(topic.clone(), r.i32()?));
        }
        if flexible {
            r.skip_tags()?;
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Ok(TxnValue {
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        last_update_ms,
        start_ms,
    })
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn i8(&mut self) -> Result<i8, String> {
        Ok(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn uvarint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.i16()?;
        let len = usize::try_from(len).map_err(|_| format!("string length {len}"))?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|e| e.to_string())
    }
    fn compact_string(&mut self) -> Result<String, String> {
        let len = self.uvarint()?.checked_sub(1).ok_or("null string")? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|e| e.to_string())
    }
    /// `None` for a null array.
    fn array_len(&mut self, flexible: bool) -> Result<Option<usize>, String> {
        if flexible {
            let len = self.uvarint()?;
            Ok(len.checked_sub(1).map(|n| n as usize))
        } else {
            let len = self.i32()?;
            Ok(usize::try_from(len).ok())
        }
    }
    fn skip_tags(&mut self) -> Result<(), String> {
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let len = self.uvarint()? as usize;
            self.take(len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_match_kafkas_layout() {
        let value = TxnValue {
            producer_id: 1000,
            producer_epoch: 2,
            timeout_ms: 60_000,
            status: TxnStatus::Ongoing,
            partitions: [
                TopicPartition::new("a", 1),
                TopicPartition::new("a", 0),
                TopicPartition::new("b", 3),
            ]
            .into_iter()
            .collect(),
            last_update_ms: 5,
            start_ms: 4,
        };
        let bytes = encode_value(&value);
        // version, pid, epoch, timeout, status, 2 topics: "a" [0, 1], "b" [3], times.
        assert_eq!(bytes.len(), 2 + 8 + 2 + 4 + 1 + 4 + (2 + 1 + 4 + 8) + (2 + 1 + 4 + 4) + 16);
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(bytes[16], 1);
        assert_eq!(decode_value(&bytes).unwrap(), value);
        assert_eq!(decode_key(&encode_key("tx-1")).unwrap(), "tx-1");
        assert!(decode_value(&bytes[..20]).is_err());
        let mut bad = bytes.clone();
        bad[16] = 9;
        assert!(decode_value(&bad).is_err());
    }
}
