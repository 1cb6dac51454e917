//! The records of the internal `__transaction_state` topic, in Kafka's formats
//! (`TransactionLogKey.json` v0, `TransactionLogValue.json` v0): the key is the
//! transactional id, the value the transaction's state. Both start with a big-endian
//! `i16` version. Value v0: producer id i64, producer epoch i16, transaction timeout ms
//! i32, status i8, the partitions (nullable array of topic string and partition ids),
//! last update time ms i64, start time ms i64. Later (flexible) versions are read for the
//! same fields, tagged fields skipped. A null value is a tombstone. The encoding helpers
//! are the `__consumer_offsets` records' ([`crate::group::records`]).

use std::collections::BTreeSet;

use sluice_engine::checkpoint::TopicPartition;

use crate::group::records::{Reader, RecordError, Writer};

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
/// Value versions Kafka has defined; 1 is flexible.
const VALUE_VERSIONS: std::ops::RangeInclusive<i16> = 0..=1;
const FLEXIBLE_VERSION: i16 = 1;

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut w = Writer::new(VERSION, false);
    w.string(transactional_id);
    w.finish()
}

pub fn decode_key(bytes: &[u8]) -> Result<String, RecordError> {
    let mut r = Reader::new(bytes);
    let version = r.i16()?;
    if version != VERSION {
        return Err(RecordError::UnknownKeyVersion(version));
    }
    r.string()
}

pub fn encode_value(value: &TxnValue) -> Vec<u8> {
    let mut w = Writer::new(VERSION, false);
    w.i64(value.producer_id);
    w.i16(value.producer_epoch);
    w.i32(value.timeout_ms);
    w.i8(value.status as i8);
    // Partitions grouped by topic, in order.
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in &value.partitions {
        match topics.last_mut() {
            Some((topic, partitions)) if *topic == tp.topic => partitions.push(tp.partition),
            _ => topics.push((&tp.topic, vec![tp.partition])),
        }
    }
    w.array_len(topics.len());
    for (topic, partitions) in topics {
        w.string(topic);
        w.array_len(partitions.len());
        for partition in partitions {
            w.i32(partition);
        }
    }
    w.i64(value.last_update_ms);
    w.i64(value.start_ms);
    w.finish()
}

pub fn decode_value(bytes: &[u8]) -> Result<TxnValue, RecordError> {
    let (mut r, _version) = Reader::versioned(bytes, VALUE_VERSIONS, FLEXIBLE_VERSION)?;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = r.i8()?;
    let status = TxnStatus::from_i8(status).ok_or(RecordError::BadValue(i64::from(status)))?;
    let mut partitions = BTreeSet::new();
    for _ in 0..r.nullable_array_len()?.unwrap_or(0) {
        let topic = r.string()?;
        for _ in 0..r.array_len()? {
            partitions.insert(TopicPartition::new(topic.clone(), r.i32()?));
        }
        r.tagged_fields()?;
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
