//! Tests of a partition replica on a real log in a temporary directory, driven by a
//! manual clock: leader and follower appends, producer sequences, transactions, the
//! leader-epoch checkpoint across reopen.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::rc::Rc;

use super::*;
use crate::batch::{encode_batch, Batch, EncodeOptions, Record};
use crate::clock::ManualClock;
use crate::log::LogOptions;
use crate::test_support::run;

const T0: i64 = 1_700_000_000_000;

fn tp() -> TopicPartition {
    TopicPartition::new("orders", 0)
}

fn records(count: usize, timestamp: i64) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            key: Some(vec![i as u8]),
            value: Some(vec![7; 10]),
            timestamp: timestamp + i as i64,
        })
        .collect()
}

fn plain(count: usize) -> Vec<u8> {
    encode_batch(&records(count, T0), EncodeOptions::default())
}

fn idempotent(producer_id: i64, base_sequence: i32, count: usize) -> Vec<u8> {
    let options =
        EncodeOptions { producer_id, producer_epoch: 0, base_sequence, ..Default::default() };
    encode_batch(&records(count, T0), options)
}

fn transactional(producer_id: i64, base_sequence: i32, count: usize) -> Vec<u8> {
    let options = EncodeOptions {
        producer_id,
        producer_epoch: 0,
        base_sequence,
        transactional: true,
        ..Default::default()
    };
    encode_batch(&records(count, T0), options)
}

const CREATE_TIME: LeaderAppend =
    LeaderAppend { log_append_time_ms: None, max_message_bytes: 1 << 20 };

async fn open(dir: &Path, clock: &ManualClock, epoch: i32) -> Replica {
    Replica::open(
        tp(),
        dir,
        LogOptions::default(),
        OpenHints::default(),
        Rc::new(clock.clone()),
        epoch,
        true,
    )
    .await
    .unwrap()
}

async fn written(replica: &Replica, mut bytes: Vec<u8>) -> AppendInfo {
    match replica.append_as_leader(&mut bytes, CREATE_TIME).await.unwrap() {
        Appended::Written(info) => info,
        other => panic!("not written: {other:?}"),
    }
}

/// Every batch of the log as (base offset, partition leader epoch).
async fn batches(replica: &Replica) -> Vec<(i64, i32)> {
    let log = replica.log();
    let slice =
        log.read(log.log_start_offset(), 1 << 30, log.log_end_offset(), true).await.unwrap();
    let bytes = slice.read().await.unwrap();
    BatchIter::new(&bytes)
        .map(|b| b.unwrap())
        .map(|b| (b.base_offset(), b.partition_leader_epoch()))
        .collect()
}

#[test]
fn a_leader_assigns_dense_offsets_stamps_its_epoch_and_moves_the_high_watermark() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = open(dir.path(), &clock, 0).await;
        assert_eq!((replica.log_end_offset(), replica.high_watermark()), (0, 0));
        assert_eq!(written(&replica, plain(3)).await.base_offset, 0);
        let mut two = plain(2);
        two.extend(plain(4));
        let info = written(&replica, two).await;
        assert_eq!((info.base_offset, info.last_offset), (3, 8));
        assert_eq!((replica.log_end_offset(), replica.high_watermark()), (9, 9));
        assert_eq!(batches(&replica).await, [(0, 0), (3, 0), (5, 0)]);
        assert_eq!(replica.end_offset_for(0), (0, 9));
        // One broker that never changed leader: the checkpoint would say what its
        // absence says, so there is none.
        assert!(!dir.path().join(epochs::LEADER_EPOCH_FILE).exists());
    });
}

#[test]
fn a_new_leader_epoch_is_stamped_checkpointed_and_survives_reopen() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        {
            let replica = open(dir.path(), &clock, 0).await;
            written(&replica, plain(5)).await;
            replica.become_leader(3).await;
            written(&replica, plain(2)).await;
            assert_eq!(batches(&replica).await, [(0, 0), (5, 3)]);
            assert_eq!(replica.check_leader_epoch(3), Ok(()));
            assert!(replica.check_leader_epoch(2).is_err());
            assert_eq!(replica.end_offset_for(1), (0, 5));
            replica.log().close().await.unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(epochs::LEADER_EPOCH_FILE)).unwrap();
        assert_eq!(text, "0\n2\n0 0\n3 5\n");
        let replica = open(dir.path(), &clock, 3).await;
        assert_eq!(replica.leader_epoch(), 3);
        assert_eq!(replica.end_offset_for(0), (0, 5));
        assert_eq!(replica.end_offset_for(3), (3, 7));
        assert_eq!(replica.end_offset_for(4), (-1, -1));
        replica.log().close().await.unwrap();
        drop(replica);
        // Asked to lead at an older epoch than the checkpoint knows (a directory from
        // another history): the checkpoint is set aside, not a panic and not offline.
        let text = std::fs::read_to_string(dir.path().join(epochs::LEADER_EPOCH_FILE)).unwrap();
        let replica = open(dir.path(), &clock, 2).await;
        assert_eq!(replica.leader_epoch(), 2);
        assert_eq!(replica.end_offset_for(2), (2, 7));
        assert_eq!(replica.end_offset_for(3), (-1, -1));
        replica.log().close().await.unwrap();
        drop(replica);
        let kept = std::fs::read_to_string(dir.path().join(epochs::LEADER_EPOCH_FILE)).unwrap();
        assert_eq!(kept, text, "the file is left for an operator");
        // An unreadable checkpoint is set aside the same way.
        std::fs::write(dir.path().join(epochs::LEADER_EPOCH_FILE), "garbage").unwrap();
        let replica = open(dir.path(), &clock, 3).await;
        assert_eq!(replica.end_offset_for(3), (3, 7));
    });
}

#[test]
fn log_append_time_replaces_timestamps_with_the_clock() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = open(dir.path(), &clock, 0).await;
        let now = T0 + 12_345;
        let options = LeaderAppend { log_append_time_ms: Some(now), ..CREATE_TIME };
        let mut bytes = plain(3);
        replica.append_as_leader(&mut bytes, options).await.unwrap();
        let (batch, _) = Batch::parse(&bytes).unwrap();
        assert_eq!(batch.max_timestamp(), now);
        batch.validate(usize::MAX).unwrap();
    });
}

#[test]
fn producer_sequences_are_checked_and_a_retry_is_answered_with_the_first_offsets() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = open(dir.path(), &clock, 0).await;
        written(&replica, plain(2)).await;
        assert_eq!(written(&replica, idempotent(7, 0, 3)).await.base_offset, 2);
        let mut retry = idempotent(7, 0, 3);
        let answer = replica.append_as_leader(&mut retry, CREATE_TIME).await.unwrap();
        assert_eq!(answer, Appended::Duplicate { base_offset: 2 });
        let mut gap = idempotent(7, 5, 1);
        let refused = replica.append_as_leader(&mut gap, CREATE_TIME).await.unwrap_err();
        assert!(
            matches!(
                refused,
                AppendError::Sequence { error: SequenceError::OutOfOrderSequence, .. }
            ),
            "{refused:?}"
        );
        let mut unknown = idempotent(8, 4, 1);
        let refused = replica.append_as_leader(&mut unknown, CREATE_TIME).await.unwrap_err();
        assert!(matches!(
            refused,
            AppendError::Sequence { error: SequenceError::UnknownProducerId, .. }
        ));
        let mut pair = idempotent(7, 0, 3);
        pair.extend(idempotent(7, 3, 1));
        let refused = replica.append_as_leader(&mut pair, CREATE_TIME).await.unwrap_err();
        assert!(matches!(refused, AppendError::DuplicateAmongOthers));
        assert_eq!(written(&replica, idempotent(7, 3, 1)).await.base_offset, 5);
        assert_eq!(replica.log_end_offset(), 6);
    });
}

#[test]
fn what_a_client_may_not_write_is_refused_before_anything_is_written() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = open(dir.path(), &clock, 0).await;
        let mut marker = encode_marker(9, 0, Marker { committed: true, coordinator_epoch: 0 }, T0);
        let refused = replica.append_as_leader(&mut marker, CREATE_TIME).await.unwrap_err();
        assert!(matches!(refused, AppendError::Refused(_)), "{refused:?}");
        let mut no_id = encode_batch(
            &records(1, T0),
            EncodeOptions { transactional: true, ..Default::default() },
        );
        let refused = replica.append_as_leader(&mut no_id, CREATE_TIME).await.unwrap_err();
        assert!(matches!(refused, AppendError::Refused(_)), "{refused:?}");
        let mut trailing = plain(1);
        trailing.extend_from_slice(&[0; 5]);
        assert!(replica.append_as_leader(&mut trailing, CREATE_TIME).await.is_err());
        let mut big = plain(1);
        let small = LeaderAppend { max_message_bytes: 10, ..CREATE_TIME };
        let refused = replica.append_as_leader(&mut big, small).await.unwrap_err();
        assert!(matches!(refused, AppendError::Batch(BatchError::TooLarge { .. })), "{refused:?}");
        assert_eq!(replica.log_end_offset(), 0);
    });
}

#[test]
fn a_transaction_holds_the_last_stable_offset_until_its_marker() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = open(dir.path(), &clock, 0).await;
        written(&replica, plain(2)).await;
        written(&replica, transactional(5, 0, 3)).await;
        written(&replica, plain(1)).await;
        assert_eq!(replica.high_watermark(), 6);
        assert_eq!(replica.last_stable_offset(), 2);
        assert_eq!(replica.fetch_bound(true), 2);
        assert_eq!(replica.fetch_bound(false), 6);
        let abort = Marker { committed: false, coordinator_epoch: 0 };
        let (info, _) = replica.append_marker(5, 0, abort, T0).await.unwrap().unwrap();
        assert_eq!(info.base_offset, 6);
        assert_eq!(replica.last_stable_offset(), 7);
        assert_eq!(replica.aborted_between(0, 7), [(5, 2)]);
        // A marker of an older producer epoch is stale: nothing is written.
        written(&replica, transactional(5, 3, 1)).await;
        replica.producers_mut().complete_txn(5, 2, abort, 8);
        assert!(replica.append_marker(5, 1, abort, T0).await.unwrap().is_none());
        assert_eq!(replica.log_end_offset(), 8);
    });
}

#[test]
fn delete_records_stops_at_the_high_watermark() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = open(dir.path(), &clock, 0).await;
        written(&replica, plain(4)).await;
        assert!(matches!(
            replica.delete_records(5).await,
            Err(DeleteRecordsError::PastHighWatermark { offset: 5, high_watermark: 4 })
        ));
        assert_eq!(replica.delete_records(3).await.unwrap(), 3);
        assert_eq!(replica.delete_records(-1).await.unwrap(), 4);
        assert_eq!(replica.log_start_offset(), 4);
    });
}

#[test]
fn a_follower_keeps_the_leaders_offsets_and_epochs_and_refuses_gaps() {
    run(async {
        let clock = ManualClock::new(T0);
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = open(leader_dir.path(), &clock, 2).await;
        written(&leader, plain(3)).await;
        written(&leader, transactional(4, 0, 2)).await;
        leader
            .append_marker(4, 0, Marker { committed: false, coordinator_epoch: 0 }, T0)
            .await
            .unwrap();
        let log = leader.log();
        let slice = log.read(0, 1 << 30, log.log_end_offset(), true).await.unwrap();
        let copied = slice.read().await.unwrap().to_vec();

        let follower_dir = tempfile::tempdir().unwrap();
        let follower = open(follower_dir.path(), &clock, 0).await;
        let mut wrong_role = copied.clone();
        assert!(matches!(
            follower.append_as_follower(&mut wrong_role).await,
            Err(AppendError::WrongRole(Role::Leader))
        ));
        follower.become_follower(2).await;
        // The batches from offset 3 on first: a gap.
        let (first, rest) = Batch::parse(&copied).unwrap();
        let mut gap = rest.to_vec();
        let refused = follower.append_as_follower(&mut gap).await.unwrap_err();
        assert!(matches!(refused, AppendError::NotContinuous(_)), "{refused:?}");
        let mut head = first.bytes().to_vec();
        follower.append_as_follower(&mut head).await.unwrap();
        let mut tail = rest.to_vec();
        let info = follower.append_as_follower(&mut tail).await.unwrap();
        assert_eq!((info.base_offset, info.last_offset), (3, 5));
        assert_eq!(batches(&follower).await, batches(&leader).await);
        // The follower's high watermark is the leader's, capped at its own log end.
        assert_eq!(follower.high_watermark(), 0);
        follower.follow_high_watermark(leader.high_watermark());
        assert_eq!(follower.high_watermark(), 6);
        // The transaction's abort was replayed into the follower's index.
        assert_eq!(follower.aborted_between(0, 6), leader.aborted_between(0, 6));
        assert_eq!(follower.end_offset_for(2), (2, 6));
        // A batch of an older epoch than the follower has is another history.
        let mut old = plain(1);
        crate::batch::set_base_offset(&mut old, 6);
        crate::batch::set_partition_leader_epoch(&mut old, 1);
        let refused = follower.append_as_follower(&mut old).await.unwrap_err();
        assert!(matches!(refused, AppendError::NotContinuous(_)), "{refused:?}");
    });
}

#[test]
fn a_follower_truncates_to_its_leaders_history_and_forgets_what_was_cut() {
    run(async {
        let clock = ManualClock::new(T0);
        let abort = Marker { committed: false, coordinator_epoch: 0 };
        // An old leader's history: 3 records, producer 5's aborted transaction at 3-5,
        // then producer 6's aborted transaction at 6-8.
        let old_dir = tempfile::tempdir().unwrap();
        let old = open(old_dir.path(), &clock, 1).await;
        written(&old, plain(3)).await;
        written(&old, transactional(5, 0, 2)).await;
        old.append_marker(5, 0, abort, T0).await.unwrap();
        written(&old, transactional(6, 0, 2)).await;
        old.append_marker(6, 0, abort, T0).await.unwrap();
        let log = old.log();
        let slice = log.read(0, 1 << 30, log.log_end_offset(), true).await.unwrap();
        let mut history = slice.read().await.unwrap().to_vec();

        let dir = tempfile::tempdir().unwrap();
        {
            let follower = open(dir.path(), &clock, 0).await;
            follower.become_follower(1).await;
            follower.append_as_follower(&mut history).await.unwrap();
            follower.follow_high_watermark(9);
            assert_eq!(follower.aborted_between(0, 9), [(5, 3), (6, 6)]);
            // A snapshot of that history, as a stop would have left it.
            follower.write_snapshot();
            assert!(dir.path().join(crate::log::segment_file_name(9, "snapshot")).exists());
            let wrong_role = open(old_dir.path(), &clock, 1).await;
            let refused = wrong_role.truncate_to(6).await.unwrap_err();
            assert!(matches!(refused, TruncateError::WrongRole(Role::Leader)), "{refused:?}");
            drop(wrong_role);

            // The new leader's history parts from it at offset 6.
            assert_eq!(follower.truncate_to(6).await.unwrap(), 6);
            assert_eq!((follower.log_end_offset(), follower.high_watermark()), (6, 6));
            assert_eq!(follower.aborted_between(0, 9), [(5, 3)]);
            assert!(follower.producers().views().iter().all(|p| p.producer_id != 6));
            assert_eq!(follower.last_stable_offset(), 6);
            assert!(!dir.path().join(crate::log::segment_file_name(9, "snapshot")).exists());
            let mut new = plain(4);
            crate::batch::set_base_offset(&mut new, 6);
            crate::batch::set_partition_leader_epoch(&mut new, 2);
            follower.become_follower(2).await;
            follower.append_as_follower(&mut new).await.unwrap();
            assert_eq!(follower.end_offset_for(1), (1, 6));
            assert_eq!(follower.end_offset_for(2), (2, 10));
            follower.log().close().await.unwrap();
        }
        // After a restart the cut transaction does not come back from the index file.
        let reopened = open(dir.path(), &clock, 2).await;
        assert_eq!(reopened.log_end_offset(), 10);
        assert_eq!(reopened.aborted_between(0, 10), [(5, 3)]);
        assert!(reopened.producers().views().iter().all(|p| p.producer_id != 6));
        assert_eq!(reopened.end_offset_for(1), (1, 6));
        assert_eq!(batches(&reopened).await.last(), Some(&(6, 2)));
    });
}

/// A role change waits for the appends queued before it on the log, and an append
/// prepared as leader that reaches the log after the change is refused, not written: a
/// replica that became a follower never takes a client's batch.
#[test]
fn an_append_queued_behind_a_role_change_is_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let replica = Rc::new(open(dir.path(), &clock, 0).await);
        let held = replica.log().exclusive().await;
        // Queued first: an append, then the role change, then another append.
        let first = {
            let replica = replica.clone();
            glommio::spawn_local(async move {
                let mut bytes = plain(2);
                replica.append_as_leader(&mut bytes, CREATE_TIME).await.map(|_| ())
            })
        };
        let settle = || glommio::timer::sleep(std::time::Duration::from_millis(2));
        settle().await;
        let change = {
            let replica = replica.clone();
            glommio::spawn_local(async move { replica.become_follower(1).await })
        };
        settle().await;
        let second = {
            let replica = replica.clone();
            glommio::spawn_local(async move {
                let mut bytes = plain(3);
                replica.append_as_leader(&mut bytes, CREATE_TIME).await.map(|_| ())
            })
        };
        settle().await;
        drop(held);
        first.await.unwrap();
        change.await;
        let refused = second.await.unwrap_err();
        assert!(
            matches!(refused, AppendError::Log(crate::log::LogError::Refused(_))),
            "{refused:?}"
        );
        assert_eq!(replica.log_end_offset(), 2, "only the append before the change");
        assert!(!replica.is_leader());
    });
}

/// A follower that fell behind its leader's log start starts over at it: empty, its
/// epochs and producer state gone, and it then continues with the leader's batches.
#[test]
fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    run(async {
        let clock = ManualClock::new(T0);
        let leader_dir = tempfile::tempdir().unwrap();
        let leader = open(leader_dir.path(), &clock, 1).await;
        written(&leader, plain(3)).await;
        written(&leader, idempotent(9, 0, 2)).await;
        let log = leader.log();
        let slice = log.read(3, 1 << 30, log.log_end_offset(), true).await.unwrap();
        let tail = slice.read().await.unwrap().to_vec();

        let follower_dir = tempfile::tempdir().unwrap();
        let follower = open(follower_dir.path(), &clock, 0).await;
        written(&follower, idempotent(7, 0, 1)).await;
        assert!(follower.truncate_fully_and_start_at(3).await.is_err(), "a leader never does");
        follower.become_follower(1).await;
        assert_eq!(follower.truncate_fully_and_start_at(3).await.unwrap(), 3);
        assert_eq!((follower.log_start_offset(), follower.log_end_offset()), (3, 3));
        assert_eq!(follower.high_watermark(), 3);
        assert_eq!(follower.latest_log_epoch(), -1, "no epoch without records");
        assert!(follower.producers().views().is_empty(), "producer 7's state went");
        let mut copied = tail.clone();
        follower.append_as_follower(&mut copied).await.unwrap();
        assert_eq!(follower.log_end_offset(), 5);
        assert_eq!(batches(&follower).await, [(3, 1)]);
        assert_eq!(follower.producers().views().len(), 1, "producer 9 replayed");
    });
}
