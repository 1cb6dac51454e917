//! Helpers shared by the fuzz targets: fixing up the checksums that guard a decoder, so
//! that libFuzzer's mutations reach the code behind the check instead of dying at it.

use sluice_engine::batch::{batch_size, OFFSET_ATTRIBUTES, OFFSET_CRC};

/// How a target prepares RecordBatch bytes, from the input's first byte: bit 7 clear
/// recomputes each whole batch's CRC-32C; bit 3 set makes each batch's attributes claim
/// codec `bits 0..2` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd, 5..7 undefined).
pub fn prepare_batches(mode: u8, bytes: &mut [u8]) {
    let codec = (mode & 0x08 != 0).then_some(mode & 0x07);
    let fix_crc = mode & 0x80 == 0;
    let mut at = 0;
    while at < bytes.len() {
        let Ok(size) = batch_size(&bytes[at..]) else { return };
        let Some(end) = at.checked_add(size).filter(|&end| end <= bytes.len()) else { return };
        let batch = &mut bytes[at..end];
        if let Some(codec) = codec {
            // Attributes are big-endian: the codec bits are in the second byte.
            batch[OFFSET_ATTRIBUTES + 1] = (batch[OFFSET_ATTRIBUTES + 1] & !0x07) | codec;
        }
        if fix_crc {
            let crc = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
            batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        }
        at = end;
    }
}

/// Recomputes a CRC-32C stored big-endian at `crc_at` over `bytes[from..]`, when both
/// are in range. For the producer snapshot and metadata log frames.
pub fn fix_crc(bytes: &mut [u8], crc_at: usize, from: usize) {
    if bytes.len() < from || bytes.len() < crc_at + 4 {
        return;
    }
    let crc = crc32c::crc32c(&bytes[from..]);
    bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}
