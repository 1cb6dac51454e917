//! Fuzz target: the metadata log's frames (`__cluster_metadata/metadata.log`: length,
//! CRC-32C and a record per frame: record type, version and an rkyv-archived body; or,
//! in logs of format 0, the rkyv archive of the whole record), replayed as at start-up.
//! rkyv reads archives in place, so untrusted bytes must go through its validation:
//! nothing here may panic or read out of bounds. The first input byte's bit 0 clear
//! recomputes each frame's CRC, so mutations reach rkyv; its bit 1 set reads the frames as
//! format 0. The records that replay, encoded again (in the current format), replay to the
//! same image. Bit 2 set reads the bytes as a snapshot of the metadata instead, which
//! must decode to an image whose snapshot decodes to the same image, or fail cleanly.
#![no_main]

use sluice_engine::fuzzing::{metadata_encode_frame, metadata_replay};
use sluice_engine::metadata::{MetadataImage, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 4 != 0 {
        if let Ok(image) = MetadataImage::decode_snapshot(&bytes) {
            let again = image.encode_snapshot().expect("a decoded image encodes");
            let second = MetadataImage::decode_snapshot(&again).expect("its snapshot decodes");
            assert_eq!(second, image);
        }
        return;
    }
    if mode & 1 == 0 {
        fix_frame_crcs(&mut bytes);
    }
    let replay = metadata_replay(&bytes, mode & 2 != 0);
    assert!(replay.end <= bytes.len() as u64);
    assert_eq!(replay.cut.is_none(), replay.end == bytes.len() as u64);
    assert_eq!(replay.applied.len(), replay.records);
    let mut again = Vec::new();
    for record in &replay.applied {
        again.extend(metadata_encode_frame(record).expect("a decoded record encodes"));
    }
    let second = metadata_replay(&again, false);
    assert!(second.cut.is_none(), "{:?}", second.cut);
    assert_eq!(second.records, replay.records);
    assert_eq!(second.image, replay.image);
});

/// Recomputes the CRC of every whole frame, walking by the length fields.
fn fix_frame_crcs(bytes: &mut [u8]) {
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_BYTES) {
        let length = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        if length > FRAME_PAYLOAD_BYTES_MAX {
            return;
        }
        let end = at + FRAME_HEADER_BYTES + length as usize;
        if end > bytes.len() {
            return;
        }
        sluice_fuzz::fix_crc(&mut bytes[at..end], 4, FRAME_HEADER_BYTES);
        at = end;
    }
}
