//! Shared measurements of one run: message and byte counters per direction, latency
//! histograms (whole run and the current second), the per-second series, and the stop
//! flag. All tasks of a run live on one executor, so this is plain `Cell`s and
//! `RefCell`s; no borrow is held across an `.await`.

use std::cell::{Cell, RefCell, RefMut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Highest latency a histogram holds (larger values are recorded as this): 10 minutes.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Significant digits of the latency histograms.
const LATENCY_SIGFIG: u8 = 3;

/// Wall-clock time in microseconds since the Unix epoch. Record timestamps and the
/// bench's payload stamps use it, so a consumer in another process can compare.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Messages and bytes in one direction (produced and acknowledged, or consumed).
#[derive(Debug, Default)]
pub struct Flow {
    pub msgs: Cell<u64>,
    /// Keys + values of the records.
    pub payload_bytes: Cell<u64>,
    /// Bytes on the socket in this direction (request or response frames).
    pub wire_bytes: Cell<u64>,
    pub requests: Cell<u64>,
    /// Counted after the warm-up only, for the throughput figures.
    pub measured_msgs: Cell<u64>,
    pub measured_payload_bytes: Cell<u64>,
    pub measured_wire_bytes: Cell<u64>,
    /// Time of the last counted event (µs since the epoch).
    pub last_us: Cell<u64>,
}

impl Flow {
    pub fn add(
        &self,
        now_us: u64,
        measuring: bool,
        msgs: u64,
        payload_bytes: u64,
        wire_bytes: u64,
    ) {
        add(&self.msgs, msgs);
        add(&self.payload_bytes, payload_bytes);
        add(&self.wire_bytes, wire_bytes);
        add(&self.requests, 1);
        if measuring {
            add(&self.measured_msgs, msgs);
            add(&self.measured_payload_bytes, payload_bytes);
            add(&self.measured_wire_bytes, wire_bytes);
        }
        self.last_us.set(self.last_us.get().max(now_us));
    }
}

fn add(cell: &Cell<u64>, value: u64) {
    cell.set(cell.get() + value);
}

/// A latency distribution for the whole run and for the current second.
#[derive(Debug)]
pub struct Latency {
    pub total: RefCell<Histogram<u64>>,
    pub second: RefCell<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self { total: RefCell::new(new_histogram()), second: RefCell::new(new_histogram()) }
    }
}

impl Latency {
    /// Both histograms, borrowed to record a run of values; `measuring` is whether the
    /// warm-up is over. Drop it before the next `.await`.
    pub fn recorder(&self, measuring: bool) -> Recorder<'_> {
        Recorder { total: self.total.borrow_mut(), second: self.second.borrow_mut(), measuring }
    }
}

/// See [`Latency::recorder`].
pub struct Recorder<'a> {
    total: RefMut<'a, Histogram<u64>>,
    second: RefMut<'a, Histogram<u64>>,
    measuring: bool,
}

impl Recorder<'_> {
    /// Records `us` in the current second, and in the whole run's histogram once the
    /// warm-up is over.
    pub fn record(&mut self, us: u64) {
        if self.measuring {
            self.total.saturating_record(us);
        }
        self.second.saturating_record(us);
    }
}

/// One second of the run, as the progress line printed it.
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Seconds since the run started (end of this interval).
    pub at_s: f64,
    /// Length of the interval (1 s but for the last, partial one).
    pub interval_s: f64,
    pub produced_msgs: u64,
    pub produced_payload_bytes: u64,
    pub consumed_msgs: u64,
    pub consumed_payload_bytes: u64,
    pub produce_p50_us: Option<u64>,
    pub produce_p99_us: Option<u64>,
    /// p99 of the produce requests acknowledged in the interval, from writing each to
    /// reading its acknowledgement.
    pub request_p99_us: Option<u64>,
    /// p99 of the time the messages written in the interval waited in the client.
    pub queue_p99_us: Option<u64>,
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
}

/// Everything a run measures.
#[derive(Debug)]
pub struct Stats {
    pub started_us: u64,
    /// Latencies and throughput count from here on (the end of the warm-up).
    pub measure_from_us: u64,
    /// Messages sent (produce requests written), whether acknowledged or not.
    pub sent_msgs: Cell<u64>,
    pub produced: Flow,
    pub consumed: Flow,
    pub produce_latency: Latency,
    /// Per produce request: from just before it is written to reading its
    /// acknowledgement (what the client sees of the network and the broker, without the
    /// time messages wait in the client for a batch or an in-flight slot).
    pub request_latency: Latency,
    /// Per message: from the time it was made to just before the request holding it was
    /// written (the Java producer's `record-queue-time`: waiting for its batch to close
    /// and for an in-flight slot, and any lateness of the producer loop itself).
    pub queue_latency: Latency,
    pub e2e_latency: Latency,
    /// Records whose end-to-end latency came from the bench's microsecond payload stamp,
    /// and from the Kafka record timestamp (milliseconds) for records without one.
    pub e2e_from_stamp: Cell<u64>,
    pub e2e_from_timestamp: Cell<u64>,
    pub series: RefCell<Vec<Second>>,
    /// Totals at the end of the series so far (produced msgs and bytes, consumed msgs and
    /// bytes) and the time of its last entry, so the next entry is a difference.
    pub series_totals: Cell<(u64, u64, u64, u64)>,
    pub series_at_s: Cell<f64>,
    pub producers_done: Cell<bool>,
    /// Set on the first failure (or by the end of the run): every task stops.
    pub stop: Cell<bool>,
    pub failure: RefCell<Option<anyhow::Error>>,
}

impl Stats {
    pub fn new(warmup: Duration) -> Stats {
        let started_us = now_us();
        Stats {
            started_us,
            measure_from_us: started_us + warmup.as_micros() as u64,
            sent_msgs: Cell::new(0),
            produced: Flow::default(),
            consumed: Flow::default(),
            produce_latency: Latency::default(),
            request_latency: Latency::default(),
            queue_latency: Latency::default(),
            e2e_latency: Latency::default(),
            e2e_from_stamp: Cell::new(0),
            e2e_from_timestamp: Cell::new(0),
            series: RefCell::new(Vec::new()),
            series_totals: Cell::new((0, 0, 0, 0)),
            series_at_s: Cell::new(0.0),
            producers_done: Cell::new(false),
            stop: Cell::new(false),
            failure: RefCell::new(None),
        }
    }

    pub fn measuring(&self, now_us: u64) -> bool {
        now_us >= self.measure_from_us
    }

    /// Records the first failure and stops the run.
    pub fn fail(&self, error: anyhow::Error) {
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(error);
        }
        self.stop.set(true);
    }
}

/// Percentile of a histogram, `None` when it is empty.
pub fn quantile(histogram: &Histogram<u64>, q: f64) -> Option<u64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(q))
}
