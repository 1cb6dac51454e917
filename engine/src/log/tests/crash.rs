//! Crash tests: damage the files on disk (a cut, a flipped byte), reopen, and check what
//! recovery kept.

use super::*;

/// Writes a log of several segments, damages it at `damage_at` (a fraction of the total
/// bytes: a cut of the file there, or a flipped byte), reopens with recovery from the
/// start, and checks what recovery kept.
///
/// After a restart of the machine (`machine_restarted`) anything unflushed may be lost in
/// any order, so every batch wholly before the damage is kept and nothing from the damaged
/// batch on. After a crash of the process alone, only a torn tail is cut: damage with valid
/// batches after it (a later segment, or the batch right after a damaged batch whose length
/// field survived) takes the log offline and leaves its files as they are.
fn crash_case(mode: IoMode, damage_at: f64, flip: Option<u8>, machine_restarted: bool) {
    run(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let mut opts = options(mode);
        opts.segment_bytes = 12 << 10;
        opts.index_interval_bytes = 700;
        let log = open(dir.path(), opts.clone(), OpenHints::default(), &clock).await;
        for i in 0..60u64 {
            let records = 1 + (i % 5) as usize;
            append_fresh(&log, &batch_bytes(records, 50 + (i as usize * 37) % 900, T0, i as u8))
                .await;
        }
        let before = read_all(&log).await;
        let segments: Vec<i64> = log.segment_base_offsets();
        drop(log); // a crash: no flush, no close
        crate::io::writes_landed().await; // writes the kernel accepted still land

        // Lay the segments end to end and find the damaged file and position.
        let mut files = Vec::new();
        for base in &segments {
            let path = dir.path().join(segment_file_name(*base, "log"));
            // Direct mode leaves zero padding after the logical end of unsealed files.
            let logical: u64 = before
                .iter()
                .filter(|(b, _)| {
                    *b >= *base && segments.iter().find(|s| **s > *base).is_none_or(|n| *b < *n)
                })
                .map(|(_, bytes)| bytes.len() as u64)
                .sum();
            files.push((*base, path, logical));
        }
        let total: u64 = files.iter().map(|(_, _, len)| len).sum();
        let mut target = ((total as f64) * damage_at) as u64;
        let mut damaged = None;
        for (base, path, len) in &files {
            if target < *len {
                damaged = Some((*base, path.clone(), target));
                break;
            }
            target -= len;
        }
        let (damaged_base, path, position) = damaged.unwrap();
        let mut content = std::fs::read(&path).unwrap();
        match flip {
            Some(mask) => content[position as usize] ^= mask.max(1),
            None => content.truncate(position as usize),
        }
        std::fs::write(&path, &content).unwrap();
        let last_segment = damaged_base == *segments.last().unwrap();

        // What must survive a cut: batches wholly before the damage. A flip inside a
        // batch's leader epoch (outside the CRC, by Kafka's design) is undetectable: that
        // batch survives changed, and so does everything after it.
        let mut expected = Vec::new();
        let mut epoch_flipped = false;
        // Whether valid batches follow the damaged one where recovery looks for them.
        let mut followed = false;
        let mut at = 0u64;
        for (index, (base, bytes)) in before.iter().enumerate() {
            let segment = *segments.iter().rev().find(|s| **s <= *base).unwrap();
            if segment != damaged_base || epoch_flipped {
                if segment < damaged_base || epoch_flipped {
                    expected.push((*base, bytes.clone()));
                    continue;
                }
                break;
            }
            let end = at + bytes.len() as u64;
            if end <= position {
                expected.push((*base, bytes.clone()));
            } else if flip.is_some() && (12..16).contains(&(position - at)) {
                let mut changed = bytes.clone();
                changed[(position - at) as usize] ^= flip.unwrap().max(1);
                expected.push((*base, changed));
                epoch_flipped = true;
            } else {
                let length_field = (8..12).contains(&(position - at));
                followed =
                    !last_segment || (flip.is_some() && !length_field && index + 1 < before.len());
                break;
            }
            at = end;
        }
        let hints = OpenHints { machine_restarted, ..OpenHints::default() };
        if followed && !machine_restarted {
            let opened = Log::open(dir.path(), opts, hints, Rc::new(clock.clone())).await;
            let Err(error) = opened else { panic!("damage followed by valid batches is cut") };
            assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
            let on_disk = std::fs::read(&path).unwrap();
            assert!(
                on_disk == content,
                "the damaged file is left as it is: {} bytes on disk, {} written",
                on_disk.len(),
                content.len()
            );
            for (base, path, _) in &files {
                assert!(path.exists() || *base < damaged_base, "segment {base} is kept");
            }
            return;
        }
        let log = open(dir.path(), opts, hints, &clock).await;
        let after = read_all(&log).await;
        assert_eq!(after.len(), expected.len(), "damage at {position} of {damaged_base}");
        assert_eq!(after, expected);
        let end = expected
            .last()
            .map_or(0, |(_, bytes)| Batch::parse(bytes).unwrap().0.last_offset() + 1);
        assert_eq!(log.log_end_offset(), end);
        assert_dense(&after, 0, end);
        // The log takes appends again right after the damage point.
        let info = append_fresh(&log, &batch_bytes(1, 10, T0, 99)).await;
        assert_eq!(info.base_offset, end);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn crash_cut_at_random_position(
        at in 0.0f64..1.0,
        direct in any::<bool>(),
        restarted in any::<bool>(),
    ) {
        crash_case(if direct { IoMode::Direct } else { IoMode::Buffered }, at, None, restarted);
    }

    #[test]
    fn crash_flip_random_byte(
        at in 0.0f64..1.0,
        mask in any::<u8>(),
        direct in any::<bool>(),
        restarted in any::<bool>(),
    ) {
        let mode = if direct { IoMode::Direct } else { IoMode::Buffered };
        crash_case(mode, at, Some(mask), restarted);
    }
}
