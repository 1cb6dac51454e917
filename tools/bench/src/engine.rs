//! Engine micro-benchmarks. Each figure is printed with the limit it is judged against,
//! measured in the same run on the same directory: fio's sequential-write bandwidth for
//! appends. Runs are repeated and reported as min / median / max because the machines
//! we measure on are shared and noisy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Context};
use sluice_engine::batch::{encode_batch, EncodeOptions, Record};
use sluice_engine::clock::SystemClock;
use sluice_engine::io::IoMode;
use sluice_engine::log::{Log, LogOptions, OpenHints};

#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// Directory to write in (on the disk under test; removed afterwards).
    #[arg(long, default_value = "./bench-data")]
    pub dir: PathBuf,
    /// Bytes appended per run, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub mib: u64,
    /// Batch sizes in KiB (records are 1 KiB each).
    #[arg(long, value_delimiter = ',', default_value = "16,1024")]
    pub batch_kib: Vec<usize>,
    /// I/O modes to run.
    #[arg(long, value_delimiter = ',', default_value = "direct,buffered")]
    pub io: Vec<IoMode>,
    /// Runs per configuration.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Concurrent appending tasks on the shard, like produce requests from several
    /// connections: batch validation (CRC) runs outside the log's append lock and
    /// overlaps with the write in flight.
    #[arg(long, default_value_t = 1)]
    pub appenders: usize,
    /// Skip fio (figures are then printed without a ratio).
    #[arg(long)]
    pub no_fio: bool,
    /// CPU to pin the benchmark to.
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
    /// Write results as JSON lines to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// Directory for the log (kept between runs so the large log is written once).
    #[arg(long, default_value = "./bench-data/lookup")]
    pub dir: PathBuf,
    /// Log size in GiB.
    #[arg(long, default_value_t = 10)]
    pub gib: u64,
    /// Lookups to time.
    #[arg(long, default_value_t = 100_000)]
    pub lookups: usize,
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
    /// Reopen an existing log trusting its checkpointed index files (a clean restart)
    /// instead of recovering it; such segments have no in-memory batch extents, so each
    /// lookup reads batch headers.
    #[arg(long)]
    pub trusted: bool,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn record_batch(batch_kib: usize) -> Vec<u8> {
    // Records of 1 KiB of value each, as many as fit the batch size.
    let records: Vec<Record> = (0..batch_kib.max(1))
        .map(|i| Record { key: None, value: Some(vec![(i % 251) as u8; 1000]), timestamp: 1 })
        .collect();
    encode_batch(&records, EncodeOptions::default())
}

fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2], values[values.len() - 1])
}

/// fio's sequential write bandwidth (MB/s) for one block size and mode, with an fsync at
/// the end like our runs.
fn fio_mb_per_s(dir: &Path, block_bytes: usize, direct: bool, mib: u64) -> anyhow::Result<f64> {
    let output = Command::new("fio")
        .args([
            "--name=seqwrite",
            "--rw=write",
            "--ioengine=io_uring",
            "--iodepth=1",
            "--numjobs=1",
            "--end_fsync=1",
            "--output-format=json",
        ])
        .arg(format!("--directory={}", dir.display()))
        .arg(format!("--bs={block_bytes}"))
        .arg(format!("--size={mib}m"))
        .arg(format!("--direct={}", u8::from(direct)))
        .output()
        .context("running fio (install it with perf/baseline.sh or apt-get install fio)")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // The first "bw_bytes" after the job's `"write" : {` section is its write bandwidth
    // (`"rw" : "write"` in the job options comes first and is not it).
    let at = text.find("\"write\" : {").context("fio output has no write section")?;
    let rest = &text[at..];
    let key = rest.find("\"bw_bytes\"").context("fio output has no bw_bytes")?;
    let value: String = rest[key + 11..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let _ = std::fs::remove_file(dir.join("seqwrite.0.0"));
    Ok(value.parse::<f64>()? / 1e6)
}

fn run_on<F, T>(cpu: usize, work: impl FnOnce() -> F + Send + 'static) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + 'static,
    T: Send + 'static,
{
    sluice_engine::runtime::raise_memlock_limit();
    let handle = glommio::LocalExecutorBuilder::new(sluice_engine::runtime::pinned_placement(cpu))
        .name("bench")
        .spawn(work)
        .map_err(|e| anyhow::anyhow!(sluice_engine::runtime::explain_executor_error(&e, 1)))?;
    handle.join().map_err(|e| anyhow::anyhow!("benchmark executor failed: {e}"))?
}

async fn append_run(
    dir: PathBuf,
    mode: IoMode,
    batch_kib: usize,
    mib: u64,
    appenders: usize,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(&dir);
    let options = LogOptions { io_mode: mode, ..LogOptions::default() };
    let log =
        Rc::new(Log::open(&dir, options, OpenHints::default(), Rc::new(SystemClock::new())).await?);
    let batch = record_batch(batch_kib);
    let per_appender = (mib << 20) / appenders.max(1) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders.max(1) {
        let log = log.clone();
        let mut batch = batch.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut written = 0u64;
            while written < per_appender {
                log.append(&mut batch).await?;
                written += batch.len() as u64;
            }
            anyhow::Ok(written)
        }));
    }
    let mut written = 0u64;
    for task in tasks {
        written += task.await?;
    }
    log.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    log.close().await?;
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(written as f64 / seconds / 1e6)
}

pub fn append(args: &AppendArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let mut lines = Vec::new();
    println!(
        "{:<9} {:>6} {:>26} {:>26} {:>7}",
        "io", "batch", "sluice MB/s min/med/max", "fio MB/s min/med/max", "ratio"
    );
    for mode in &args.io {
        for batch_kib in &args.batch_kib {
            let block_bytes = record_batch(*batch_kib).len();
            // fio with O_DIRECT needs aligned blocks: it writes the nominal batch size.
            let fio_block_bytes = batch_kib * 1024;
            let mut ours = Vec::new();
            let mut fio = Vec::new();
            // Interleave ours and fio so both see the same machine state.
            for _ in 0..args.repeat {
                let dir = args.dir.join("append");
                let (run_mode, run_batch, mib, tasks) =
                    (*mode, *batch_kib, args.mib, args.appenders);
                ours.push(run_on(args.cpu, move || {
                    append_run(dir, run_mode, run_batch, mib, tasks)
                })?);
                if !args.no_fio {
                    fio.push(fio_mb_per_s(
                        &args.dir,
                        fio_block_bytes,
                        *mode == IoMode::Direct,
                        args.mib,
                    )?);
                }
            }
            let (o_min, o_med, o_max) = summary(&mut ours);
            let (ratio, fio_text, fio_json) = if fio.is_empty() {
                (f64::NAN, "-".to_string(), "null".to_string())
            } else {
                let (f_min, f_med, f_max) = summary(&mut fio);
                (
                    o_med / f_med,
                    format!("{f_min:.0}/{f_med:.0}/{f_max:.0}"),
                    format!("[{f_min:.1},{f_med:.1},{f_max:.1}]"),
                )
            };
            println!(
                "{:<9} {:>5}K {:>26} {:>26} {:>7.2}",
                mode.to_string(),
                batch_kib,
                format!("{o_min:.0}/{o_med:.0}/{o_max:.0}"),
                fio_text,
                ratio
            );
            lines.push(format!(
                "{{\"bench\":\"append\",\"io\":\"{mode}\",\"batch_bytes\":{block_bytes},\"mib\":{},\"appenders\":{},\"sluice_mb_s\":[{o_min:.1},{o_med:.1},{o_max:.1}],\"fio_mb_s\":{fio_json},\"ratio_median\":{ratio:.3}}}",
                args.mib, args.appenders
            ));
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, lines.join("\n") + "\n")?;
    }
    Ok(())
}

pub fn lookup(args: &LookupArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone();
    let (gib, lookups, trusted) = (args.gib, args.lookups, args.trusted);
    let (latencies, segments, end) = run_on(args.cpu, move || async move {
        let options = LogOptions { io_mode: IoMode::Buffered, ..LogOptions::default() };
        let clock = Rc::new(SystemClock::new());
        // Reuse a log left by an earlier run when it is big enough. Without --trusted it
        // is recovered from offset 0 (as after an unclean stop), which also rebuilds the
        // in-memory batch extents a live partition has.
        let recovery_point = if trusted { i64::MAX } else { 0 };
        let hints = OpenHints { recovery_point, log_start_offset: 0, machine_restarted: false };
        let opened = Instant::now();
        let log = Log::open(&dir, options, hints, clock).await?;
        eprintln!(
            "opened {} GiB log in {:.2} s ({})",
            log.size_bytes() >> 30,
            opened.elapsed().as_secs_f64(),
            if trusted { "trusted" } else { "recovered" }
        );
        let mut batch = record_batch(16);
        let target = gib << 30;
        if log.size_bytes() < target {
            eprintln!("writing a {gib} GiB log in {} ...", dir.display());
            while log.size_bytes() < target {
                log.append(&mut batch).await?;
            }
            log.flush().await?;
        }
        let end = log.log_end_offset();
        // Warm: one pass over random offsets so the index and headers are in memory,
        // as they are for a partition being served.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut latencies = Vec::with_capacity(lookups);
        for round in 0..2 {
            for _ in 0..lookups {
                let offset = (next() % end as u64) as i64;
                let started = Instant::now();
                let slice = log.read(offset, 1 << 20, end, true).await?;
                let elapsed = started.elapsed();
                assert!(slice.first_batch_offset <= offset);
                if round == 1 {
                    latencies.push(elapsed.as_nanos() as f64 / 1000.0);
                }
            }
        }
        let segments = log.segment_count();
        log.close().await?;
        Ok((latencies, segments, end))
    })?;
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p) as usize];
    println!(
        "offset lookup on a {} GiB log ({segments} segments, {end} offsets): p50 {:.2} us, p90 {:.2} us, p99 {:.2} us, max {:.2} us",
        args.gib,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            format!(
                "{{\"bench\":\"lookup\",\"gib\":{},\"segments\":{segments},\"p50_us\":{:.3},\"p90_us\":{:.3},\"p99_us\":{:.3}}}\n",
                args.gib,
                pct(0.5),
                pct(0.9),
                pct(0.99)
            ),
        )?;
    }
    Ok(())
}
