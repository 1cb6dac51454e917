//! The Produce request, encoded by hand around borrowed record batches: the request's
//! small fields go into a reused buffer, and each batch is either copied in (small ones,
//! to save a write) or written to the socket from where it lies (large ones), so a
//! megabyte batch is never copied into a request buffer. Versions 3..=12 (v13 names topics
//! by id); a unit test checks the bytes against the `kafka-protocol` crate's encoder.

/// Batches at least this large are written from their own buffer instead of being copied
/// into the request buffer (a copy of a small batch is cheaper than a separate write).
pub(crate) const SPLICE_BYTES_MIN: usize = 64 << 10;
/// The Produce versions this encoder writes.
pub(crate) const VERSION_MIN: i16 = 3;
pub(crate) const VERSION_MAX: i16 = 12;
/// First flexible (compact, tagged-field) Produce version.
const VERSION_FLEXIBLE: i16 = 9;

/// Record bytes (whole batches) for one partition.
#[derive(Debug, Clone, Copy)]
pub struct ProducePartition<'a> {
    pub partition: i32,
    pub records: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub struct ProduceTopic<'a> {
    pub name: &'a str,
    pub partitions: &'a [ProducePartition<'a>],
}

/// A Produce request: acks 0 (no response), 1 or -1 (all).
#[derive(Debug, Clone, Copy)]
pub struct ProduceSpec<'a> {
    pub acks: i16,
    pub timeout_ms: i32,
    pub transactional_id: Option<&'a str>,
    pub topics: &'a [ProduceTopic<'a>],
}

/// Where the encoded frame's pieces are: `head` holds everything but the spliced batches;
/// batch `(topic, partition)` goes after `head[..at]`.
#[derive(Debug, Default)]
pub(crate) struct ProduceFrame {
    pub(crate) head: Vec<u8>,
    pub(crate) splices: Vec<Splice>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Splice {
    pub(crate) at: usize,
    pub(crate) topic: usize,
    pub(crate) partition: usize,
}

impl ProduceFrame {
    /// Encodes the whole frame (size prefix, request header v1/v2, body). Errors are
    /// lengths that do not fit their fields.
    pub(crate) fn encode(
        &mut self,
        spec: &ProduceSpec<'_>,
        version: i16,
        correlation_id: i32,
        client_id: &str,
        splice_bytes_min: usize,
    ) -> Result<(), String> {
        assert!(version >= VERSION_MIN);
        assert!(version <= VERSION_MAX);
        let flexible = version >= VERSION_FLEXIBLE;
        let head = &mut self.head;
        head.clear();
        self.splices.clear();
        head.extend_from_slice(&[0; 4]); // size, patched below
                                         // Request header: v1 (non-flexible) or v2 (+ tagged fields). client_id is a
                                         // classic nullable string in both.
        head.extend_from_slice(&0i16.to_be_bytes()); // API key: Produce
        head.extend_from_slice(&version.to_be_bytes());
        head.extend_from_slice(&correlation_id.to_be_bytes());
        put_string(head, client_id, false)?;
        if flexible {
            head.push(0); // no tagged fields
        }
        match spec.transactional_id {
            Some(id) => put_string(head, id, flexible)?,
            None if flexible => head.push(0),
            None => head.extend_from_slice(&(-1i16).to_be_bytes()),
        }
        head.extend_from_slice(&spec.acks.to_be_bytes());
        head.extend_from_slice(&spec.timeout_ms.to_be_bytes());
        put_array_len(head, spec.topics.len(), flexible)?;
        let mut spliced_bytes = 0usize;
        for (t, topic) in spec.topics.iter().enumerate() {
            put_string(head, topic.name, flexible)?;
            put_array_len(head, topic.partitions.len(), flexible)?;
            for (p, partition) in topic.partitions.iter().enumerate() {
                head.extend_from_slice(&partition.partition.to_be_bytes());
                let length = partition.records.len();
                if flexible {
                    put_uvarint(head, length as u64 + 1);
                } else {
                    let length = i32::try_from(length).map_err(|_| "records over 2 GiB")?;
                    head.extend_from_slice(&length.to_be_bytes());
                }
                if length >= splice_bytes_min {
                    self.splices.push(Splice { at: head.len(), topic: t, partition: p });
                    spliced_bytes += length;
                } else {
                    head.extend_from_slice(partition.records);
                }
                if flexible {
                    head.push(0);
                }
            }
            if flexible {
                head.push(0);
            }
        }
        if flexible {
            head.push(0);
        }
        let size = i32::try_from(head.len() - 4 + spliced_bytes)
            .map_err(|_| "request over 2 GiB".to_string())?;
        head[..4].copy_from_slice(&size.to_be_bytes());
        Ok(())
    }

    /// The pieces to write in order: ranges of `head` and spliced batches.
    pub(crate) fn pieces<'a>(&'a self, spec: &ProduceSpec<'a>) -> impl Iterator<Item = &'a [u8]> {
        let mut pieces = Vec::with_capacity(self.splices.len() * 2 + 1);
        let mut from = 0;
        for splice in &self.splices {
            pieces.push(&self.head[from..splice.at]);
            pieces.push(spec.topics[splice.topic].partitions[splice.partition].records);
            from = splice.at;
        }
        pieces.push(&self.head[from..]);
        pieces.into_iter().filter(|piece| !piece.is_empty())
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_string(out: &mut Vec<u8>, value: &str, compact: bool) -> Result<(), String> {
    if compact {
        put_uvarint(out, value.len() as u64 + 1);
    } else {
        let length = i16::try_from(value.len())
            .map_err(|_| format!("string of {} bytes is too long", value.len()))?;
        out.extend_from_slice(&length.to_be_bytes());
    }
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

fn put_array_len(out: &mut Vec<u8>, length: usize, compact: bool) -> Result<(), String> {
    if compact {
        put_uvarint(out, length as u64 + 1);
    } else {
        let length = i32::try_from(length).map_err(|_| "array too long".to_string())?;
        out.extend_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

    fn reference(spec: &ProduceSpec<'_>, version: i16, correlation_id: i32) -> Vec<u8> {
        let mut header = RequestHeader::default();
        header.request_api_key = 0;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str("bench"));
        let mut request = ProduceRequest::default();
        request.transactional_id =
            spec.transactional_id.map(|id| StrBytes::from_string(id.to_string()).into());
        request.acks = spec.acks;
        request.timeout_ms = spec.timeout_ms;
        for topic in spec.topics {
            let mut data = TopicProduceData::default();
            data.name = TopicName(StrBytes::from_string(topic.name.to_string()));
            for partition in topic.partitions {
                data.partition_data.push(
                    PartitionProduceData::default()
                        .with_index(partition.partition)
                        .with_records(Some(Bytes::copy_from_slice(partition.records))),
                );
            }
            request.topic_data.push(data);
        }
        let mut body = Vec::new();
        header.encode(&mut body, ProduceRequest::header_version(version)).unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn every_version_matches_the_crate_encoder() {
        let big = vec![7u8; 300];
        let small = vec![9u8; 20];
        let partitions_a = [
            ProducePartition { partition: 0, records: &big },
            ProducePartition { partition: 3, records: &small },
        ];
        let partitions_b = [ProducePartition { partition: 1, records: &small }];
        let topics = [
            ProduceTopic { name: "alpha", partitions: &partitions_a },
            ProduceTopic { name: "b", partitions: &partitions_b },
        ];
        for transactional_id in [None, Some("tx")] {
            let spec =
                ProduceSpec { acks: -1, timeout_ms: 30_000, transactional_id, topics: &topics };
            for version in VERSION_MIN..=VERSION_MAX {
                let expected = reference(&spec, version, 42);
                // Splice nothing, the large batch, and everything.
                for splice_bytes_min in [usize::MAX, 100, 0] {
                    let mut frame = ProduceFrame::default();
                    frame.encode(&spec, version, 42, "bench", splice_bytes_min).unwrap();
                    let written: Vec<u8> = frame.pieces(&spec).flatten().copied().collect();
                    assert_eq!(written, expected, "v{version} splice >= {splice_bytes_min}");
                }
            }
        }
    }
}
