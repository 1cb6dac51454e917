//! Entry points for the cargo-fuzz targets (`fuzz/`) into decoders of untrusted bytes that
//! are otherwise private to their module. Not an API: the broker does not use it.

use crate::metadata::{self, MetadataError, MetadataImage, MetadataRecord};

/// What replaying a metadata log's bytes gave.
#[derive(Debug)]
pub struct MetadataReplay {
    pub image: MetadataImage,
    /// Records applied.
    pub records: usize,
    /// End of the last good frame.
    pub end: u64,
    /// Why replay stopped before the end of the bytes.
    pub cut: Option<String>,
    /// The records applied, in order.
    pub applied: Vec<MetadataRecord>,
}

/// Replays the frames of a `metadata.log` (after its file header) as `MetadataLog::open`
/// does, without the file; `legacy`: frames of format 0 (untyped records).
pub fn metadata_replay(bytes: &[u8], legacy: bool) -> MetadataReplay {
    let replay = if legacy { metadata::replay_legacy(bytes) } else { metadata::replay(bytes) };
    MetadataReplay {
        image: replay.image,
        records: replay.records,
        end: replay.end,
        cut: replay.cut,
        applied: replay.applied,
    }
}

/// Encodes a metadata log frame as `MetadataLog::append` writes it.
pub fn metadata_encode_frame(record: &MetadataRecord) -> Result<Vec<u8>, MetadataError> {
    metadata::encode_frame(record)
}
