//! Request latency on the broker, split into the phases Kafka's `RequestMetrics` report
//! (`kafka.network:type=RequestMetrics`: RequestQueueTimeMs, LocalTimeMs,
//! ResponseQueueTimeMs, ResponseSendTimeMs, TotalTimeMs), so that a client's latency can be
//! told apart from the broker's share of it.
//!
//! Every request served on a connection gets five timestamps:
//! - `first_byte`: the `recv` that brought the frame's first byte returned (for a frame
//!   whose first bytes came with the previous frame's last `recv`, that `recv`);
//! - `received`: the whole frame is in memory;
//! - `started`: its handler task first ran;
//! - `done`: its handler finished (the response is built; for acks=all and fetch this
//!   includes waiting for replicas or for data, Kafka's RemoteTimeMs);
//! - `sent`: the connection's writer handed the response's last byte to the kernel.
//!
//! and the phases between them go into one HDR histogram each, per API:
//!
//! | phase | from | to | Kafka's name |
//! |---|---|---|---|
//! | `receive` | first_byte | received | (in the client's send time) |
//! | `queue` | received | started | RequestQueueTimeMs |
//! | `local` | started | done | LocalTimeMs + RemoteTimeMs |
//! | `response_queue` | done | writer takes it | ResponseQueueTimeMs |
//! | `send` | writer takes it | sent | ResponseSendTimeMs |
//! | `total` | first_byte | sent | TotalTimeMs, plus `receive` |
//!
//! Kafka starts TotalTimeMs when the request has been read; ours starts at its first byte,
//! so a large produce request that trickles in is visible (in `receive`). A request with no
//! response (acks=0 produce) has no `response_queue` and `send`; its `total` ends at `done`.
//!
//! The shard logs the histograms as `request latency` lines, one per API, every
//! `request.latency.log.interval.ms` and once more when it stops, and starts the next
//! window empty. Each line also names the window's slowest request: its phases
//! (`slowest_phases_us`, receive/queue/local/response_queue/send) and when its first byte
//! came (`slowest_at_ms`, from the window's start). A tail that percentiles only bound is
//! then attributed: one request stuck in `local` is the handler's (or its disk's), one
//! whose time went to `queue` or `response_queue` waited for the shard's CPU, and one
//! spread over every phase, or slow on every shard at the same moment, is the machine
//! stopping. Cost: about six monotonic clock reads (vDSO, ~20 ns each) and six histogram
//! records per request.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use crate::limits::LATENCY_US_MAX;
use hdrhistogram::Histogram;
use kafka_protocol::messages::ApiKey;
use tracing::info;

/// Significant figures of every histogram: values within 1% (about 20 KiB each).
const SIGFIGS: u8 = 2;

/// The timestamps of one request (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct RequestTimes {
    pub api_key: i16,
    pub first_byte: Instant,
    pub received: Instant,
    pub started: Instant,
    pub done: Instant,
}

/// One API's histograms, one per phase, in microseconds: receive, queue, local,
/// response_queue, send, total.
struct ApiLatency {
    phases: [Histogram<u64>; 6],
    /// The request with the longest total of the window.
    slowest: Option<Slowest>,
}

/// The slowest request of a window: its phases (as `ApiLatency::phases`, microseconds; 0
/// for the two a request without a response lacks) and its first byte's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slowest {
    phases_us: [u64; 6],
    first_byte: Instant,
}

impl ApiLatency {
    fn new() -> Option<Self> {
        let histogram = || Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGFIGS).ok();
        Some(ApiLatency {
            phases: [
                histogram()?,
                histogram()?,
                histogram()?,
                histogram()?,
                histogram()?,
                histogram()?,
            ],
            slowest: None,
        })
    }
}

/// A shard's request latency histograms since the last report, per API key.
pub struct RequestMetrics {
    apis: RefCell<Vec<Option<ApiLatency>>>,
    /// Start of the current window.
    since: Cell<Instant>,
}

fn micros(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics {
    pub fn new() -> Self {
        RequestMetrics { apis: RefCell::default(), since: Cell::new(Instant::now()) }
    }

    /// Records a request whose response the writer took at `taken` and finished sending
    /// at `sent`; both `None` for a request without a response.
    pub fn record(&self, times: &RequestTimes, response: Option<(Instant, Instant)>) {
        let Ok(index) = usize::try_from(times.api_key) else {
            return;
        };
        let mut apis = self.apis.borrow_mut();
        if apis.len() <= index {
            apis.resize_with(index + 1, || None);
        }
        if apis[index].is_none() {
            apis[index] = ApiLatency::new();
        }
        let Some(api) = apis[index].as_mut() else {
            return;
        };
        let end = response.map_or(times.done, |(_, sent)| sent);
        let mut phases_us = [0u64; 6];
        let mut phase = |which: usize, from: Instant, to: Instant| {
            let us = micros(from, to).max(1);
            phases_us[which] = us;
            api.phases[which].saturating_record(us);
        };
        phase(0, times.first_byte, times.received);
        phase(1, times.received, times.started);
        phase(2, times.started, times.done);
        if let Some((taken, sent)) = response {
            phase(3, times.done, taken);
            phase(4, taken, sent);
        }
        phase(5, times.first_byte, end);
        if api.slowest.map_or(true, |slowest| phases_us[5] > slowest.phases_us[5]) {
            api.slowest = Some(Slowest { phases_us, first_byte: times.first_byte });
        }
    }

    /// Requests recorded per API key since the last report.
    #[cfg(test)]
    fn counts(&self) -> Vec<(usize, u64)> {
        let apis = self.apis.borrow();
        let counts = apis.iter().enumerate().filter_map(|(key, api)| {
            let count = api.as_ref()?.phases[5].len();
            (count > 0).then_some((key, count))
        });
        counts.collect()
    }

    /// Logs one `request latency` line per API that served requests since the last report,
    /// then empties the histograms for the next window.
    pub fn report(&self, shard: usize) {
        let now = Instant::now();
        let since = self.since.replace(now);
        let window = now.saturating_duration_since(since);
        let mut apis = self.apis.borrow_mut();
        for (key, api) in apis.iter_mut().enumerate() {
            let Some(api) = api else { continue };
            let requests = api.phases[5].len();
            if requests == 0 {
                continue;
            }
            let name = i16::try_from(key)
                .ok()
                .and_then(|key| ApiKey::try_from(key).ok())
                .map_or_else(|| format!("api-{key}"), |api| format!("{api:?}"));
            let [receive, queue, local, response_queue, send, total] = &api.phases;
            let p99 = |histogram: &Histogram<u64>| histogram.value_at_quantile(0.99);
            let (slowest_phases, slowest_at_ms) = match api.slowest.take() {
                Some(Slowest { phases_us: [r, q, l, rq, s, _], first_byte }) => (
                    format!("{r}/{q}/{l}/{rq}/{s}"),
                    // A request that began before the window (its first byte came in the
                    // previous one) counts from the window's start.
                    first_byte.saturating_duration_since(since).as_millis() as u64,
                ),
                None => (String::new(), 0),
            };
            info!(
                shard,
                api = %name,
                requests,
                window_ms = window.as_millis() as u64,
                total_p50_us = total.value_at_quantile(0.5),
                total_p99_us = p99(total),
                total_p999_us = total.value_at_quantile(0.999),
                total_max_us = total.max(),
                receive_p99_us = p99(receive),
                queue_p99_us = p99(queue),
                local_p99_us = p99(local),
                response_queue_p99_us = p99(response_queue),
                send_p99_us = p99(send),
                slowest_phases_us = %slowest_phases,
                slowest_at_ms,
                "request latency"
            );
            for histogram in &mut api.phases {
                histogram.reset();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn times(api_key: i16, base: Instant, steps_us: [u64; 4]) -> RequestTimes {
        let at = |us: u64| base + Duration::from_micros(us);
        RequestTimes {
            api_key,
            first_byte: base,
            received: at(steps_us[0]),
            started: at(steps_us[1]),
            done: at(steps_us[2]),
        }
    }

    #[test]
    fn phases_are_the_differences_between_the_timestamps() {
        let metrics = RequestMetrics::new();
        let base = Instant::now();
        let t = times(0, base, [100, 150, 1150, 0]);
        let at = |us: u64| base + Duration::from_micros(us);
        metrics.record(&t, Some((at(1200), at(1500))));
        let apis = metrics.apis.borrow();
        let api = apis[0].as_ref().unwrap();
        let value = |phase: usize| api.phases[phase].max();
        let close = |got: u64, want: u64| got.abs_diff(want) * 100 <= want;
        assert!(close(value(0), 100), "receive {}", value(0));
        assert!(close(value(1), 50), "queue {}", value(1));
        assert!(close(value(2), 1000), "local {}", value(2));
        assert!(close(value(3), 50), "response queue {}", value(3));
        assert!(close(value(4), 300), "send {}", value(4));
        assert!(close(value(5), 1500), "total {}", value(5));
    }

    #[test]
    fn a_request_without_a_response_ends_when_its_handler_does() {
        let metrics = RequestMetrics::new();
        let base = Instant::now();
        metrics.record(&times(0, base, [10, 20, 400, 0]), None);
        let apis = metrics.apis.borrow();
        let api = apis[0].as_ref().unwrap();
        assert_eq!(api.phases[3].len(), 0, "no response queue time");
        assert_eq!(api.phases[4].len(), 0, "no send time");
        assert!(api.phases[5].max().abs_diff(400) <= 4, "total {}", api.phases[5].max());
    }

    #[test]
    fn the_slowest_request_of_a_window_keeps_its_phases() {
        let metrics = RequestMetrics::new();
        let base = Instant::now();
        let at = |us: u64| base + Duration::from_micros(us);
        metrics.record(&times(0, base, [10, 20, 400, 0]), Some((at(410), at(420))));
        // The slowest: 5 ms waiting for the shard after it was read.
        metrics.record(&times(0, base, [100, 5_100, 5_300, 0]), Some((at(5_350), at(5_400))));
        metrics.record(&times(0, base, [1, 2, 3_000, 0]), None);
        let slowest = {
            let apis = metrics.apis.borrow();
            apis[0].as_ref().unwrap().slowest.unwrap()
        };
        let close = |got: u64, want: u64| got.abs_diff(want) <= 1;
        let want = [100, 5_000, 200, 50, 50, 5_400];
        assert!(
            slowest.phases_us.iter().zip(want).all(|(got, want)| close(*got, want)),
            "{:?}",
            slowest.phases_us
        );
        assert_eq!(slowest.first_byte, base);
        metrics.report(0);
        assert!(metrics.apis.borrow()[0].as_ref().unwrap().slowest.is_none(), "next window");
    }

    #[test]
    fn a_report_empties_the_window_and_counts_are_per_api() {
        let metrics = RequestMetrics::new();
        let base = Instant::now();
        for _ in 0..3 {
            metrics.record(&times(0, base, [1, 2, 3, 0]), None);
        }
        metrics.record(&times(1, base, [1, 2, 3, 0]), None);
        metrics.record(&times(-1, base, [1, 2, 3, 0]), None); // ignored, no panic
        assert_eq!(metrics.counts(), [(0, 3), (1, 1)]);
        metrics.report(0);
        assert!(metrics.counts().is_empty());
    }
}
