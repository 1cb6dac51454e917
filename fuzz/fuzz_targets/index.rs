//! Fuzz target: `.index` and `.timeindex` file bytes, as segment recovery loads them. The
//! first 8 input bytes are the log file's size. Decoding never panics; an index that
//! decodes answers lookups, and written out again gives back the same bytes.
#![no_main]

use sluice_engine::log::index::{OffsetIndex, TimeIndex};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((log_bytes, rest)) = data.split_first_chunk::<8>() else { return };
    let log_bytes = u64::from_be_bytes(*log_bytes);
    if let Ok(index) = OffsetIndex::decode(rest, log_bytes) {
        let mut again = OffsetIndex::default();
        for &entry in index.entries() {
            again.append(entry);
            let _ = index.locate(entry.relative_offset);
            assert_eq!(index.lookup(entry.relative_offset), Some(entry));
        }
        assert_eq!(again.unflushed().1, rest);
        let _ = index.locate(u32::MAX);
        let _ = index.lookup(0);
        let mut cut = index.clone();
        cut.truncate_to_position(log_bytes / 2);
        assert!(cut.file_len() <= index.file_len());
    }
    if let Ok(index) = TimeIndex::decode(rest) {
        let mut again = TimeIndex::default();
        for &entry in index.entries() {
            assert!(again.maybe_append(entry));
            assert_eq!(index.lookup(entry.timestamp), Some(entry));
        }
        assert_eq!(again.unflushed().1, rest);
        let _ = index.lookup(i64::MIN);
        let mut cut = index.clone();
        cut.truncate_to_offset(u32::MAX / 2);
    }
});
