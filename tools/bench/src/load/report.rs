//! What a run reports: the summary printed at the end, the comparison of two brokers
//! (`--against`), the JSON report, and the SVG plot next to it (the latency distribution as
//! percentile curves, and throughput per second). The SVG is written by hand: a few
//! polylines do not need a plotting library.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::stats::{quantile, Flow, Second, Stats};

/// Bytes in a megabyte, as the figures use it (decimal, like fio and iperf3).
const MB: f64 = 1e6;

/// Throughput in one direction.
#[derive(Debug, Clone)]
pub struct FlowReport {
    pub msgs: u64,
    pub payload_bytes: u64,
    pub wire_bytes: u64,
    pub requests: u64,
    /// The measured window: from the end of the warm-up to the last counted event.
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub payload_mb_per_s: f64,
    pub wire_mb_per_s: f64,
}

impl FlowReport {
    fn new(flow: &Flow, measure_from_us: u64) -> Option<FlowReport> {
        if flow.requests.get() == 0 {
            return None;
        }
        let seconds = flow.last_us.get().saturating_sub(measure_from_us) as f64 / 1e6;
        let per_s = |value: u64| if seconds > 0.0 { value as f64 / seconds } else { 0.0 };
        Some(FlowReport {
            msgs: flow.msgs.get(),
            payload_bytes: flow.payload_bytes.get(),
            wire_bytes: flow.wire_bytes.get(),
            requests: flow.requests.get(),
            seconds,
            msgs_per_s: per_s(flow.measured_msgs.get()),
            payload_mb_per_s: per_s(flow.measured_payload_bytes.get()) / MB,
            wire_mb_per_s: per_s(flow.measured_wire_bytes.get()) / MB,
        })
    }

    fn json(&self) -> Value {
        json!({
            "msgs": self.msgs,
            "payload_bytes": self.payload_bytes,
            "wire_bytes": self.wire_bytes,
            "requests": self.requests,
            "measured_seconds": round3(self.seconds),
            "msgs_per_s": self.msgs_per_s.round(),
            "payload_mb_per_s": round3(self.payload_mb_per_s),
            "wire_mb_per_s": round3(self.wire_mb_per_s),
        })
    }
}

/// One run against one broker.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub workload: &'static str,
    pub broker: String,
    pub round: usize,
    pub started_unix_ms: u64,
    pub sent_msgs: u64,
    pub produce: Option<FlowReport>,
    pub consume: Option<FlowReport>,
    pub produce_latency: Option<Histogram<u64>>,
    pub request_latency: Option<Histogram<u64>>,
    pub queue_latency: Option<Histogram<u64>>,
    pub e2e_latency: Option<Histogram<u64>>,
    pub e2e_from_stamp: u64,
    pub e2e_from_timestamp: u64,
    pub series: Vec<Second>,
}

impl RunReport {
    pub fn new(workload: &'static str, broker: &str, round: usize, stats: &Stats) -> RunReport {
        let histogram = |h: &std::cell::RefCell<Histogram<u64>>| {
            let h = h.borrow();
            (!h.is_empty()).then(|| h.clone())
        };
        RunReport {
            workload,
            broker: broker.to_string(),
            round,
            started_unix_ms: stats.started_us / 1000,
            sent_msgs: stats.sent_msgs.get(),
            produce: FlowReport::new(&stats.produced, stats.measure_from_us),
            consume: FlowReport::new(&stats.consumed, stats.measure_from_us),
            produce_latency: histogram(&stats.produce_latency.total),
            request_latency: histogram(&stats.request_latency.total),
            queue_latency: histogram(&stats.queue_latency.total),
            e2e_latency: histogram(&stats.e2e_latency.total),
            e2e_from_stamp: stats.e2e_from_stamp.get(),
            e2e_from_timestamp: stats.e2e_from_timestamp.get(),
            series: stats.series.borrow().clone(),
        }
    }

    /// The summary printed after a run.
    pub fn print(&self) {
        println!("broker {} round {}:", self.broker, self.round);
        if let Some(flow) = &self.produce {
            println!("  produce  {}", flow_line(flow));
        }
        if let Some(histogram) = &self.produce_latency {
            println!(
                "  produce latency (us, per message, made -> acknowledged): {}",
                latency_line(histogram)
            );
        }
        if let Some(histogram) = &self.request_latency {
            println!(
                "  produce request latency (us, per request, written -> acknowledged): {}",
                latency_line(histogram)
            );
        }
        if let Some(histogram) = &self.queue_latency {
            println!(
                "  produce queue time (us, per message, made -> written): {}",
                latency_line(histogram)
            );
        }
        if let Some(flow) = &self.consume {
            println!("  consume  {}", flow_line(flow));
        }
        if let Some(histogram) = &self.e2e_latency {
            // Without producers in the run, records may be old: their latency is their age.
            let what = if self.workload == "consume" { "record age" } else { "end-to-end latency" };
            println!("  {what} (us, per record, made -> fetched): {}", latency_line(histogram));
            if self.e2e_from_timestamp > 0 {
                println!(
                    "    {} records had no bench stamp: their latency is from the record \
                     timestamp (millisecond resolution)",
                    thousands(self.e2e_from_timestamp as f64)
                );
            }
        }
        if self.produce.is_some() && self.consume.is_some() {
            let consumed = self.consume.as_ref().map_or(0, |c| c.msgs);
            if consumed != self.sent_msgs {
                println!(
                    "  MISMATCH: {} messages sent, {} consumed",
                    thousands(self.sent_msgs as f64),
                    thousands(consumed as f64)
                );
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "broker": self.broker,
            "round": self.round,
            "started_unix_ms": self.started_unix_ms,
            "sent_msgs": self.sent_msgs,
            "produce": self.produce.as_ref().map(FlowReport::json),
            "consume": self.consume.as_ref().map(FlowReport::json),
            "produce_latency_us": self.produce_latency.as_ref().map(latency_json),
            "produce_latency_measure": "per message, from the time it was made (its scheduled time under --rate) to reading its acknowledgement",
            "produce_request_latency_us": self.request_latency.as_ref().map(latency_json),
            "produce_request_latency_measure": "per produce request, from just before writing it to reading its acknowledgement",
            "produce_queue_time_us": self.queue_latency.as_ref().map(latency_json),
            "produce_queue_time_measure": "per message, from the time it was made to just before writing the request holding it",
            "e2e_latency_us": self.e2e_latency.as_ref().map(latency_json),
            "e2e_latency_measure": "per record, from the time it was made to reading the fetch response holding it",
            "e2e_records_from_stamp_us": self.e2e_from_stamp,
            "e2e_records_from_record_timestamp_ms": self.e2e_from_timestamp,
            "series": self.series.iter().map(|s| json!({
                "at_s": round3(s.at_s),
                "interval_s": round3(s.interval_s),
                "produced_msgs": s.produced_msgs,
                "produced_payload_mb": round3(s.produced_payload_bytes as f64 / MB),
                "consumed_msgs": s.consumed_msgs,
                "consumed_payload_mb": round3(s.consumed_payload_bytes as f64 / MB),
                "produce_p50_us": s.produce_p50_us,
                "produce_p99_us": s.produce_p99_us,
                "produce_request_p99_us": s.request_p99_us,
                "produce_queue_p99_us": s.queue_p99_us,
                "e2e_p50_us": s.e2e_p50_us,
                "e2e_p99_us": s.e2e_p99_us,
            })).collect::<Vec<_>>(),
        })
    }

    /// The figures two brokers are compared on: (name, value, higher is better).
    fn metrics(&self) -> Vec<(&'static str, f64, bool)> {
        let mut metrics = Vec::new();
        if let Some(flow) = &self.produce {
            metrics.push(("produce msg/s", flow.msgs_per_s, true));
            metrics.push(("produce MB/s", flow.payload_mb_per_s, true));
        }
        if let Some(h) = &self.produce_latency {
            metrics.push(("produce p50 us", h.value_at_quantile(0.5) as f64, false));
            metrics.push(("produce p99 us", h.value_at_quantile(0.99) as f64, false));
        }
        if let Some(h) = &self.request_latency {
            metrics.push(("request p99 us", h.value_at_quantile(0.99) as f64, false));
        }
        if let Some(h) = &self.queue_latency {
            metrics.push(("queue p99 us", h.value_at_quantile(0.99) as f64, false));
        }
        if let Some(flow) = &self.consume {
            metrics.push(("consume msg/s", flow.msgs_per_s, true));
            metrics.push(("consume MB/s", flow.payload_mb_per_s, true));
        }
        if let Some(h) = &self.e2e_latency {
            metrics.push(("e2e p50 us", h.value_at_quantile(0.5) as f64, false));
            metrics.push(("e2e p99 us", h.value_at_quantile(0.99) as f64, false));
        }
        metrics
    }
}

fn flow_line(flow: &FlowReport) -> String {
    format!(
        "{} msgs in {:.2} s: {} msg/s, {:.1} MB/s payload, {:.1} MB/s on the wire ({} requests)",
        thousands(flow.msgs as f64),
        flow.seconds,
        thousands(flow.msgs_per_s),
        flow.payload_mb_per_s,
        flow.wire_mb_per_s,
        thousands(flow.requests as f64)
    )
}

fn latency_line(h: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (n={})",
        thousands(h.value_at_quantile(0.5) as f64),
        thousands(h.value_at_quantile(0.9) as f64),
        thousands(h.value_at_quantile(0.99) as f64),
        thousands(h.value_at_quantile(0.999) as f64),
        thousands(h.value_at_quantile(0.9999) as f64),
        thousands(h.max() as f64),
        thousands(h.len() as f64)
    )
}

fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "mean": round3(h.mean()),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "p99_99": h.value_at_quantile(0.9999),
        "max": h.max(),
    })
}

/// The comparison of `--against`: per metric, the median over each broker's rounds and
/// the ratio B/A. Printed, and returned for the JSON report.
pub fn compare(runs: &[RunReport], a: &str, b: &str) -> Value {
    let medians = |broker: &str| -> Vec<(&'static str, f64, bool)> {
        let of_broker: Vec<&RunReport> = runs.iter().filter(|r| r.broker == broker).collect();
        let Some(first) = of_broker.first() else { return Vec::new() };
        first
            .metrics()
            .into_iter()
            .map(|(name, _, higher_better)| {
                let mut values: Vec<f64> = of_broker
                    .iter()
                    .filter_map(|r| r.metrics().into_iter().find(|m| m.0 == name).map(|m| m.1))
                    .collect();
                (name, median(&mut values), higher_better)
            })
            .collect()
    };
    let (ma, mb) = (medians(a), medians(b));
    println!();
    println!("comparison (median over rounds), A = {a}, B = {b}:");
    println!("  {:<16} {:>14} {:>14} {:>8}", "metric", "A", "B", "B/A");
    let mut rows = Vec::new();
    for (name, value_a, higher_better) in &ma {
        let Some((_, value_b, _)) = mb.iter().find(|m| m.0 == *name) else { continue };
        let ratio = if *value_a > 0.0 { value_b / value_a } else { f64::NAN };
        println!(
            "  {:<16} {:>14} {:>14} {:>8.3}",
            name,
            thousands(*value_a),
            thousands(*value_b),
            ratio
        );
        rows.push(json!({
            "metric": name,
            "a": round3(*value_a),
            "b": round3(*value_b),
            "ratio_b_over_a": if ratio.is_finite() { json!(round3(ratio)) } else { Value::Null },
            "higher_is_better": higher_better,
        }));
    }
    json!({ "a": a, "b": b, "statistic": "median over rounds", "metrics": rows })
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// Writes the JSON report to `path` and the SVG plot next to it.
pub fn write(path: &Path, report: &Value, runs: &[RunReport]) -> anyhow::Result<PathBuf> {
    let text = serde_json::to_string_pretty(report).context("encoding the JSON report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    let svg_path = path.with_extension("svg");
    std::fs::write(&svg_path, svg(runs, report))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    Ok(svg_path)
}

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 340.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 260.0;
const TOP: f64 = 50.0;
const GAP: f64 = 90.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
/// Shorter (last) intervals of the series are not plotted.
const SECOND_PLOTTED_MIN_S: f64 = 0.25;
/// The percentile axis ends at 99.9999% (six nines).
const NINES_MAX: f64 = 6.0;

/// One plotted line: label, color, dashed, and points in data coordinates.
type Line<'a> = (String, &'a str, bool, Vec<(f64, f64)>);

/// The plot: latency by percentile (log-log "nines" axis) on top, throughput per second
/// below, one color per broker, solid for produce and dashed for end-to-end / consume.
fn svg(runs: &[RunReport], report: &Value) -> String {
    let height = TOP + PANEL_HEIGHT * 2.0 + GAP + 60.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "sluice-bench {} - {}",
        report["workload"].as_str().unwrap_or("?"),
        report["timestamp"].as_str().unwrap_or("")
    );
    let _ = writeln!(out, r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#, escape(&title));

    let brokers: Vec<&str> = {
        let mut seen = Vec::new();
        for run in runs {
            if !seen.contains(&run.broker.as_str()) {
                seen.push(run.broker.as_str());
            }
        }
        seen
    };
    let color = |broker: &str| {
        COLORS[brokers.iter().position(|b| *b == broker).unwrap_or(0) % COLORS.len()]
    };

    // Panel 1: latency by percentile. Histograms of a broker's rounds are merged.
    let plot_width = WIDTH - LEFT - RIGHT;
    let y0 = TOP;
    let mut curves: Vec<Line<'_>> = Vec::new();
    for broker in &brokers {
        for (kind, dashed) in [("produce", false), ("end-to-end", true)] {
            let mut merged: Option<Histogram<u64>> = None;
            for run in runs.iter().filter(|r| r.broker == *broker) {
                let h = if kind == "produce" { &run.produce_latency } else { &run.e2e_latency };
                if let Some(h) = h {
                    match &mut merged {
                        Some(m) => {
                            let _ = m.add(h);
                        }
                        None => merged = Some(h.clone()),
                    }
                }
            }
            let Some(h) = merged else { continue };
            let points: Vec<(f64, f64)> = (0..=300)
                .map(|i| {
                    let nines = NINES_MAX * f64::from(i) / 300.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    (nines, h.value_at_quantile(q.min(1.0)).max(1) as f64)
                })
                .collect();
            curves.push((format!("{kind} {broker}"), color(broker), dashed, points));
        }
    }
    let latency_max = curves.iter().flat_map(|c| c.3.iter().map(|p| p.1)).fold(10.0f64, f64::max);
    let decades_max = latency_max.log10().ceil().max(1.0);
    let decades_min = curves
        .iter()
        .flat_map(|c| c.3.iter().map(|p| p.1))
        .fold(latency_max, f64::min)
        .log10()
        .floor()
        .min(decades_max - 1.0);
    let x_of = |nines: f64| LEFT + plot_width * nines / NINES_MAX;
    let y_of = |latency: f64| {
        let f = (latency.max(1.0).log10() - decades_min) / (decades_max - decades_min);
        y0 + PANEL_HEIGHT * (1.0 - f)
    };
    axes(&mut out, y0, "latency (log)", "percentile");
    for (nines, label) in [
        (0.0, "0%"),
        (2f64.log10(), "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
        (6.0, "99.9999%"),
    ] {
        tick_x(&mut out, x_of(nines), y0, label);
    }
    let mut decade = decades_min;
    while decade <= decades_max {
        tick_y(&mut out, y_of(10f64.powf(decade)), &duration_label(10f64.powf(decade)));
        decade += 1.0;
    }
    for (i, (label, color, dashed, points)) in curves.iter().enumerate() {
        let path: Vec<(f64, f64)> = points.iter().map(|&(n, l)| (x_of(n), y_of(l))).collect();
        polyline(&mut out, &path, color, *dashed);
        legend(&mut out, y0 + 14.0 + 18.0 * i as f64, color, *dashed, label);
    }
    if curves.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">no latency measured</text>"#,
            LEFT + 20.0,
            y0 + 30.0
        );
    }

    // Panel 2: throughput per second, MB/s of payload (the last interval may be short).
    let y1 = TOP + PANEL_HEIGHT + GAP;
    let mut lines: Vec<Line<'_>> = Vec::new();
    for run in runs {
        // A last interval of a few milliseconds would plot as a spike: leave it out.
        let plotted = || run.series.iter().filter(|s| s.interval_s >= SECOND_PLOTTED_MIN_S);
        let produced: Vec<(f64, f64)> = plotted()
            .map(|s| (s.at_s, s.produced_payload_bytes as f64 / MB / s.interval_s.max(1e-3)))
            .collect();
        let consumed: Vec<(f64, f64)> = plotted()
            .map(|s| (s.at_s, s.consumed_payload_bytes as f64 / MB / s.interval_s.max(1e-3)))
            .collect();
        if run.produce.is_some() {
            lines.push((
                format!("produce {} #{}", run.broker, run.round),
                color(&run.broker),
                false,
                produced,
            ));
        }
        if run.consume.is_some() {
            lines.push((
                format!("consume {} #{}", run.broker, run.round),
                color(&run.broker),
                true,
                consumed,
            ));
        }
    }
    let (t_step, t_ticks) =
        ticks(lines.iter().flat_map(|l| l.3.iter().map(|p| p.0)).fold(1.0f64, f64::max));
    let (mb_step, mb_ticks) =
        ticks(lines.iter().flat_map(|l| l.3.iter().map(|p| p.1)).fold(1.0f64, f64::max));
    let t_max = t_step * f64::from(t_ticks);
    let mb_max = mb_step * f64::from(mb_ticks);
    let tx = |t: f64| LEFT + plot_width * t / t_max;
    let ty = |mb: f64| y1 + PANEL_HEIGHT * (1.0 - mb / mb_max);
    axes(&mut out, y1, "MB/s (payload)", "seconds");
    for i in 0..=t_ticks {
        let t = t_step * f64::from(i);
        tick_x(&mut out, tx(t), y1, &axis_label(t));
    }
    for i in 0..=mb_ticks {
        let mb = mb_step * f64::from(i);
        tick_y(&mut out, ty(mb), &axis_label(mb));
    }
    for (i, (label, color, dashed, points)) in lines.iter().enumerate() {
        let path: Vec<(f64, f64)> = points.iter().map(|&(t, mb)| (tx(t), ty(mb))).collect();
        polyline(&mut out, &path, color, *dashed);
        if i < 16 {
            legend(&mut out, y1 + 14.0 + 18.0 * i as f64, color, *dashed, label);
        }
    }
    let _ = writeln!(out, "</svg>");
    out
}

fn axes(out: &mut String, y: f64, y_label: &str, x_label: &str) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        20.0,
        y + PANEL_HEIGHT / 2.0,
        20.0,
        y + PANEL_HEIGHT / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        y + PANEL_HEIGHT + 38.0,
        escape(x_label)
    );
}

fn tick_x(out: &mut String, x: f64, y: f64, label: &str) {
    let bottom = y + PANEL_HEIGHT;
    let _ = writeln!(
        out,
        r##"<line x1="{x:.1}" y1="{y}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
        bottom + 16.0,
        escape(label)
    );
}

fn tick_y(out: &mut String, y: f64, label: &str) {
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
        LEFT - 6.0,
        y + 4.0,
        escape(label)
    );
}

fn polyline(out: &mut String, points: &[(f64, f64)], color: &str, dashed: bool) {
    if points.is_empty() {
        return;
    }
    let mut coordinates = String::new();
    for (x, y) in points {
        let _ = write!(coordinates, "{x:.1},{y:.1} ");
    }
    let dash = if dashed { r#" stroke-dasharray="6 4""# } else { "" };
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>"#,
        coordinates.trim_end()
    );
}

fn legend(out: &mut String, y: f64, color: &str, dashed: bool, label: &str) {
    let x = WIDTH - RIGHT + 12.0;
    let dash = if dashed { r#" stroke-dasharray="6 4""# } else { "" };
    let _ = writeln!(
        out,
        r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
        x + 24.0,
        x + 30.0,
        y + 4.0,
        escape(label)
    );
}

fn duration_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

/// A tick label: whole numbers without decimals, others with up to two.
fn axis_label(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').to_string()
    }
}

/// A tick step (1, 2, 2.5 or 5 times a power of ten) giving at most 6 steps up to
/// `value`, and the number of steps that covers it.
fn ticks(value: f64) -> (f64, u32) {
    let rough = value.max(1e-9) / 6.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= rough)
        .unwrap_or(10.0 * power);
    (step, (value / step - 1e-9).ceil().max(1.0) as u32)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_string();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < -0.5 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// UTC `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch.
pub fn iso8601(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The progress line for one second.
pub fn progress_line(second: &Second, interval_s: f64) -> String {
    let mut line = format!("[{:>5.0}s]", second.at_s);
    let rate = |value: u64| value as f64 / interval_s.max(1e-9);
    if second.produced_msgs > 0 || second.produce_p99_us.is_some() {
        let _ = write!(
            line,
            " produce {:>11} msg/s {:>8.1} MB/s",
            thousands(rate(second.produced_msgs)),
            rate(second.produced_payload_bytes) / MB
        );
        if let Some(p99) = second.produce_p99_us {
            let _ = write!(
                line,
                " p50 {} p99 {}",
                duration_text(second.produce_p50_us.unwrap_or(0)),
                duration_text(p99)
            );
        }
        if let Some(request) = second.request_p99_us {
            let _ = write!(line, " (request p99 {}", duration_text(request));
            if let Some(queue) = second.queue_p99_us {
                let _ = write!(line, ", queue p99 {}", duration_text(queue));
            }
            line.push(')');
        }
    }
    if second.consumed_msgs > 0 || second.e2e_p99_us.is_some() {
        let _ = write!(
            line,
            " | consume {:>11} msg/s {:>8.1} MB/s",
            thousands(rate(second.consumed_msgs)),
            rate(second.consumed_payload_bytes) / MB
        );
        if let Some(p99) = second.e2e_p99_us {
            let _ = write!(
                line,
                " e2e p50 {} p99 {}",
                duration_text(second.e2e_p50_us.unwrap_or(0)),
                duration_text(p99)
            );
        }
    }
    line
}

fn duration_text(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1e3)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} us")
    }
}

/// The series entry from the last one to `at_s` (the interval histograms are reset), and
/// the interval's length in seconds.
pub fn snapshot(stats: &Stats, at_s: f64) -> (Second, f64) {
    let last = stats.series_totals.get();
    let produced = (stats.produced.msgs.get(), stats.produced.payload_bytes.get());
    let consumed = (stats.consumed.msgs.get(), stats.consumed.payload_bytes.get());
    let mut produce = stats.produce_latency.second.borrow_mut();
    let mut request = stats.request_latency.second.borrow_mut();
    let mut queue = stats.queue_latency.second.borrow_mut();
    let mut e2e = stats.e2e_latency.second.borrow_mut();
    let interval_s = at_s - stats.series_at_s.replace(at_s);
    let second = Second {
        at_s,
        interval_s,
        produced_msgs: produced.0 - last.0,
        produced_payload_bytes: produced.1 - last.1,
        consumed_msgs: consumed.0 - last.2,
        consumed_payload_bytes: consumed.1 - last.3,
        produce_p50_us: quantile(&produce, 0.5),
        produce_p99_us: quantile(&produce, 0.99),
        request_p99_us: quantile(&request, 0.99),
        queue_p99_us: quantile(&queue, 0.99),
        e2e_p50_us: quantile(&e2e, 0.5),
        e2e_p99_us: quantile(&e2e, 0.99),
    };
    produce.reset();
    request.reset();
    queue.reset();
    e2e.reset();
    stats.series_totals.set((produced.0, produced.1, consumed.0, consumed.1));
    (second, interval_s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_dates_format() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(ticks(730.0), (200.0, 4));
        assert_eq!(ticks(101.0), (20.0, 6));
        assert_eq!(ticks(5.1), (1.0, 6));
        assert_eq!(ticks(10.12), (2.0, 6));
        assert_eq!(ticks(1.0), (0.2, 5));
        assert_eq!(axis_label(0.6000000000000001), "0.6");
        assert_eq!(axis_label(4.0), "4");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_svg_plots_every_broker() {
        let mut histogram = super::super::stats::new_histogram();
        for latency in [100, 200, 300, 5000] {
            histogram.record(latency).unwrap();
        }
        let run = |broker: &str| RunReport {
            workload: "produce",
            broker: broker.to_string(),
            round: 1,
            started_unix_ms: 0,
            sent_msgs: 4,
            produce: None,
            consume: None,
            produce_latency: Some(histogram.clone()),
            request_latency: Some(histogram.clone()),
            queue_latency: Some(histogram.clone()),
            e2e_latency: None,
            e2e_from_stamp: 0,
            e2e_from_timestamp: 0,
            series: vec![Second {
                at_s: 1.0,
                produced_payload_bytes: 5_000_000,
                ..Second::default()
            }],
        };
        let runs = [run("a:1"), run("b:2")];
        let text = svg(&runs, &json!({ "workload": "produce", "timestamp": "now" }));
        assert!(text.starts_with("<svg"));
        assert!(text.trim_end().ends_with("</svg>"));
        assert!(text.contains("produce a:1") && text.contains("produce b:2"));
        assert_eq!(text.matches("<polyline").count(), 2);
    }
}
