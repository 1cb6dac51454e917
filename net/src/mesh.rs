//! The shard mesh: one bounded glommio shared channel per ordered pair of shards, built on
//! the main thread before the shards start and connected by each shard at start-up.
//!
//! Why not glommio's `MeshBuilder`: its join could hang forever (seen in about one start
//! in six with two shards): a shared channel's `connect` waits for the peer's connect
//! through a waker the reactor only re-polls when something else wakes the executor, and
//! the builder keeps its peer list in an `Rc` shared across threads. Here every connect
//! runs concurrently, a `Ticker` keeps the reactor polling while they do, and the whole
//! connection has a deadline, so a start-up problem is an error, not a hang.

use std::time::{Duration, Instant};

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// One shard's ends of the mesh, before connecting. `Send`: built on the main thread,
/// moved into the shard's executor.
pub struct MeshEnds<T: Send + 'static> {
    pub id: usize,
    /// `senders[j]`: from this shard to shard j (none to itself).
    senders: Vec<Option<SharedSender<T>>>,
    /// `receivers[i]`: from shard i to this shard (none from itself).
    receivers: Vec<Option<SharedReceiver<T>>>,
}

/// Builds the ends of every shard; `ends[i]` goes to shard i.
pub fn build<T: Send + 'static>(shards: usize, capacity: usize) -> Vec<MeshEnds<T>> {
    let mut ends: Vec<MeshEnds<T>> = (0..shards)
        .map(|id| MeshEnds {
            id,
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (sender, receiver) = shared_channel::new_bounded(capacity);
                ends[from].senders[to] = Some(sender);
                ends[to].receivers[from] = Some(receiver);
            }
        }
    }
    ends
}

/// A shard's connected senders.
pub struct Mesh<T: Send + 'static> {
    senders: Vec<Option<ConnectedSender<T>>>,
}

impl<T: Send + 'static> Mesh<T> {
    /// Sends to shard `peer`, waiting while its channel is full. False when the peer is
    /// gone (or is this shard) and the message was dropped.
    pub async fn send_to(&self, peer: usize, message: T) -> bool {
        match self.senders.get(peer).and_then(Option::as_ref) {
            Some(sender) => sender.send(message).await.is_ok(),
            None => false,
        }
    }
}

/// Receivers from each peer, by peer id.
pub type MeshReceivers<T> = Vec<(usize, ConnectedReceiver<T>)>;

/// Connects a shard's ends; every shard must call it. Fails after `timeout`.
pub async fn connect<T: Send + 'static>(
    ends: MeshEnds<T>,
    timeout: Duration,
) -> Result<(Mesh<T>, MeshReceivers<T>), String> {
    let ticker = crate::ticker::Ticker::start();
    let sender_tasks: Vec<_> = ends
        .senders
        .into_iter()
        .map(|s| s.map(|s| glommio::spawn_local(async move { s.connect().await })))
        .collect();
    let receiver_tasks: Vec<_> = ends
        .receivers
        .into_iter()
        .enumerate()
        .filter_map(|(peer, r)| {
            r.map(|r| (peer, glommio::spawn_local(async move { r.connect().await })))
        })
        .collect();
    let deadline = Instant::now() + timeout;
    let connected = futures_lite::future::or(
        async {
            let mut senders = Vec::new();
            for task in sender_tasks {
                senders.push(match task {
                    Some(task) => Some(task.await),
                    None => None,
                });
            }
            let mut receivers = Vec::new();
            for (peer, task) in receiver_tasks {
                receivers.push((peer, task.await));
            }
            Some((Mesh { senders }, receivers))
        },
        async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        },
    )
    .await;
    ticker.stop().await;
    connected.ok_or_else(|| {
        format!("shard {}: the other shards did not connect within {timeout:?}", ends.id)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Each shard sends right after it connects, so a receive waits at most for its peer
    /// to finish connecting and for its own executor to notice the message: milliseconds.
    /// Ten seconds is a hang.
    const RECV_BOUND: Duration = Duration::from_secs(10);

    /// Receives one message, or fails the test after `RECV_BOUND` saying whether the
    /// message had arrived (the executor was never woken: a lost wake-up) or not. Seen
    /// once in CI as a hang of this test (an executor asleep in `io_uring_enter`); not
    /// reproduced in about 22 000 mesh starts under load since. The timer is polled
    /// first, so its own wake-up cannot hide the lost one.
    async fn recv_within(
        id: usize,
        peer: usize,
        receiver: &ConnectedReceiver<(usize, usize)>,
    ) -> (usize, usize) {
        let received = futures_lite::future::or(
            async {
                glommio::timer::sleep(RECV_BOUND).await;
                None
            },
            async { Some(receiver.recv().await) },
        )
        .await;
        match received {
            Some(message) => message.expect("the peer sent before it could disconnect"),
            None => {
                let arrived = futures_lite::future::poll_once(receiver.recv()).await;
                panic!(
                    "shard {id}: nothing from shard {peer} within {RECV_BOUND:?}; {}",
                    match arrived {
                        Some(_) => "the message was in the channel: a lost wake-up",
                        None => "the channel is empty",
                    }
                );
            }
        }
    }

    /// Three executors connect and exchange a message on every pair, many times over (the
    /// glommio mesh this replaces hung in about one start in six).
    #[test]
    fn every_pair_connects_and_delivers() {
        for _ in 0..20 {
            let ends = build::<(usize, usize)>(3, 4);
            let handles: Vec<_> = ends
                .into_iter()
                .map(|end| {
                    glommio::LocalExecutorBuilder::default()
                        .spawn(move || async move {
                            let id = end.id;
                            let (mesh, receivers) =
                                connect(end, Duration::from_secs(20)).await.unwrap();
                            for peer in 0..3 {
                                if peer != id {
                                    assert!(mesh.send_to(peer, (id, peer)).await);
                                }
                            }
                            assert!(!mesh.send_to(id, (id, id)).await);
                            let mut got = Vec::new();
                            for (peer, receiver) in &receivers {
                                let (from, to) = recv_within(id, *peer, receiver).await;
                                assert_eq!((from, to), (*peer, id));
                                got.push(from);
                            }
                            got.len()
                        })
                        .unwrap()
                })
                .collect();
            for handle in handles {
                assert_eq!(handle.join().unwrap(), 2);
            }
        }
    }
}
