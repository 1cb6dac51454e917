//! Entry points for the cargo-fuzz targets (`fuzz/`) into decoders of untrusted bytes that
//! are otherwise private to their module. Not an API: the broker does not use it.

use crate::metadata::{self, FrameError, MetadataError, MetadataImage, MetadataRecord};

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
}

/// Replays `metadata.log` bytes as `MetadataLog::open` does, without the file.
pub fn metadata_replay(bytes: &[u8]) -> MetadataReplay {
    let replay = metadata::replay(bytes);
    MetadataReplay {
        image: replay.image,
        records: replay.records,
        end: replay.end,
        cut: replay.cut,
    }
}

/// Decodes the metadata log frame at the start of `bytes`: the record and the frame's size.
pub fn metadata_decode_frame(bytes: &[u8]) -> Result<(MetadataRecord, usize), FrameError> {
    metadata::decode_frame(bytes)
}

/// Encodes a metadata log frame as `MetadataLog::append` writes it.
pub fn metadata_encode_frame(record: &MetadataRecord) -> Result<Vec<u8>, MetadataError> {
    metadata::encode_frame(record)
}
