//! How each placement strategy spreads a skewed set of jobs: per
//! strategy, a real `sluice coordinator --scheduling STRATEGY` and three
//! `sluice worker`s on loopback ([`LocalCluster`]), then a sequence of
//! heavy Nexmark q5 jobs (a high `--rate`) and light ones (a low rate),
//! `--jobs H,L,L,H,L,L` by default, submitted one after another with a
//! pause between them, as jobs arrive in a real cluster (so the
//! coordinator has measured the earlier ones' CPU when it places the
//! next). Once all run, the executors' CPU time is read twice,
//! `--measure` apart, from `GET /api/v1/jobs/{id}/metrics`, and attributed
//! to workers through each job's placement (`GET /api/v1/jobs/{id}`).
//!
//! Reported per strategy: slots used per worker, CPU cores per worker,
//! heavy jobs per worker, and two spread
//! figures over the workers' CPU: max/mean (1 is perfectly even; 3 is
//! everything on one of three workers) and the coefficient of variation
//! (standard deviation / mean). With `--repeat N` the runs of the
//! strategies are interleaved and the spread figures are medians.
//!
//! All workers run on this machine, so "CPU per worker" is the CPU of the
//! executors placed on it, not a separate machine's load; on a 2-core
//! machine the heavy job's rate may be capped by what the CPU gives it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use sluice_benches::machine;
use sluice_cluster::local::{LocalCluster, LocalClusterConfig, WorkerPlace};
use sluice_engine::protocol::api::{JobStatus, WorkerInfo};
use sluice_engine::protocol::metrics::JobMetrics;

/// How placement strategies spread a skewed set of jobs over workers.
#[derive(Parser, Debug)]
struct Args {
    /// The `sluice` binary [default: `sluice` beside this executable].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `nexmark` job binary [default: `nexmark` beside this executable].
    #[arg(long)]
    nexmark: Option<PathBuf>,
    /// Strategies to compare, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spread,pack,weighted,round-robin,least-loaded"
    )]
    strategies: Vec<String>,
    /// Workers started.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// The jobs in the order they are submitted: `H` heavy, `L` light.
    #[arg(long, value_delimiter = ',', default_value = "H,L,L,H,L,L",
          value_parser = ["H", "L"])]
    jobs: Vec<String>,
    /// Each heavy job's rate, events/s.
    #[arg(long, default_value_t = 2_000_000)]
    heavy_rate: u64,
    /// Each heavy job's parallelism.
    #[arg(long, default_value_t = 1)]
    heavy_parallelism: usize,
    /// Each light job's rate, events/s (parallelism 1).
    #[arg(long, default_value_t = 20_000)]
    light_rate: u64,
    /// Pause after each job runs before the next is submitted (longer
    /// than the coordinator's 5 s CPU window lets it measure the job).
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// How long the executors' CPU is measured once every job runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    measure: Duration,
    /// Rounds over the strategies; the spread figures are medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Keep the working directories (logs) instead of removing them.
    #[arg(long)]
    keep: bool,
}

/// One strategy's run.
struct Run {
    strategy: String,
    /// Worker ids, sorted.
    workers: Vec<String>,
    /// Slots used per worker (as `workers`).
    slots: Vec<usize>,
    /// CPU cores per worker (as `workers`).
    cores: Vec<f64>,
    /// Heavy jobs with an executor on each worker (as `workers`).
    heavies: Vec<usize>,
}

impl Run {
    fn max_over_mean(&self) -> f64 {
        let mean = mean(&self.cores);
        self.cores.iter().copied().fold(0.0, f64::max) / mean
    }

    fn cv(&self) -> f64 {
        let m = mean(&self.cores);
        let var = self.cores.iter().map(|c| (c - m).powi(2)).sum::<f64>() / self.cores.len() as f64;
        var.sqrt() / m
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sluice = match &args.sluice {
        Some(p) => p.clone(),
        None => machine::sibling("sluice")?,
    };
    let nexmark = match &args.nexmark {
        Some(p) => p.clone(),
        None => machine::sibling("nexmark")?,
    };
    for p in [&sluice, &nexmark] {
        if !p.is_file() {
            bail!("{} not found: build it or pass its path", p.display());
        }
    }
    // Absolute: `sluice submit` runs in the cluster's directory.
    let sluice = std::fs::canonicalize(&sluice)?;
    let nexmark = std::fs::canonicalize(&nexmark)?;
    let debug = [&sluice, &nexmark]
        .iter()
        .any(|p| p.components().any(|c| c.as_os_str() == "debug"));
    if debug {
        println!("warning: debug binaries (the rates mean less than in a release build)\n");
    }
    let load_before = machine::loadavg();
    let root = std::env::temp_dir().join(format!("sluice-placement-{}", std::process::id()));
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..args.repeat {
        for strategy in &args.strategies {
            let dir = root.join(format!("{strategy}-{round}"));
            let run = run_strategy(&args, &sluice, &nexmark, &dir, strategy)
                .with_context(|| format!("strategy {strategy}, round {}", round + 1))?;
            print_run(&run);
            runs.push(run);
        }
    }
    let load_after = machine::loadavg();
    println!("\n---- Markdown for benches/RESULTS.md ----\n");
    print!(
        "{}",
        markdown(&args, &runs, &load_before, &load_after, debug)
    );
    if args.keep {
        println!("\nkept {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// A fresh cluster with `--scheduling strategy`, the skewed jobs, and the
/// measurement.
fn run_strategy(
    args: &Args,
    sluice: &Path,
    nexmark: &Path,
    dir: &Path,
    strategy: &str,
) -> anyhow::Result<Run> {
    let _ = std::fs::remove_dir_all(dir);
    let cluster = LocalCluster::start(LocalClusterConfig {
        sluice: sluice.to_path_buf(),
        dir: dir.to_path_buf(),
        host: "127.0.0.1".into(),
        coordinator_args: [
            "--scheduling",
            strategy,
            "--heartbeat-timeout",
            "3s",
            "--heartbeat-interval",
            "200ms",
        ]
        .map(String::from)
        .to_vec(),
        workers: vec![WorkerPlace::loopback(); args.workers],
        slots: args.slots,
        security: None,
        plaintext: true,
        coordinators: 1,
    })?;
    let port = cluster.port();
    let mut jobs = Vec::new();
    // The heavy job first, then the light ones: each placed once the
    // earlier ones ran for `gap`.
    let submissions = args.jobs.iter().map(|j| match j.as_str() {
        "H" => (args.heavy_rate, args.heavy_parallelism),
        _ => (args.light_rate, 1),
    });
    for (rate, parallelism) in submissions {
        // Enough events to outlast the run; the cluster is torn down after.
        let events = (rate * 3600).to_string();
        let rate = rate.to_string();
        let job = cluster.submit(
            parallelism,
            nexmark,
            &[
                "--query",
                "q5",
                "--events",
                &events,
                "--rate",
                &rate,
                "--output",
                "blackhole",
            ],
        )?;
        cluster.wait_for(
            Duration::from_secs(120),
            &format!("job {job} to run"),
            |_| -> anyhow::Result<bool> {
                let s: JobStatus =
                    serde_json::from_value(get(port, &format!("/api/v1/jobs/{job}"))?)?;
                if s.state.is_terminal() {
                    bail!("job {job} ended {:?}: {:?}", s.state, s.error);
                }
                Ok(s.state.is_running() && !s.placement.is_empty())
            },
        )?;
        jobs.push(job);
        std::thread::sleep(args.gap);
    }

    let statuses: Vec<JobStatus> = jobs
        .iter()
        .map(|j| {
            Ok(serde_json::from_value(get(
                port,
                &format!("/api/v1/jobs/{j}"),
            )?)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let (t0, before) = (Instant::now(), cpu_by_worker(port, &statuses)?);
    std::thread::sleep(args.measure);
    let (t1, after) = (Instant::now(), cpu_by_worker(port, &statuses)?);
    let secs = (t1 - t0).as_secs_f64();

    let workers: Vec<WorkerInfo> = serde_json::from_value(get(port, "/api/v1/workers")?)?;
    let mut ids: Vec<String> = workers.iter().map(|w| w.id.clone()).collect();
    ids.sort();
    let slots = ids
        .iter()
        .map(|id| {
            workers
                .iter()
                .find(|w| &w.id == id)
                .map_or(0, |w| w.used_slots)
        })
        .collect();
    let cores = ids
        .iter()
        .map(|id| {
            let ms = |m: &std::collections::HashMap<String, u64>| m.get(id).copied().unwrap_or(0);
            ms(&after).saturating_sub(ms(&before)) as f64 / 1000.0 / secs
        })
        .collect();
    let heavies = ids
        .iter()
        .map(|id| {
            statuses
                .iter()
                .zip(&args.jobs)
                .filter(|(s, kind)| *kind == "H" && s.placement.iter().any(|p| &p.worker == id))
                .count()
        })
        .collect();
    Ok(Run {
        strategy: strategy.to_string(),
        workers: ids,
        slots,
        cores,
        heavies,
    })
}

/// Every job's executors' CPU time (ms), summed per worker they run on.
fn cpu_by_worker(
    port: u16,
    statuses: &[JobStatus],
) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let mut out = std::collections::HashMap::new();
    for s in statuses {
        let m: JobMetrics =
            serde_json::from_value(get(port, &format!("/api/v1/jobs/{}/metrics", s.id))?)?;
        for e in &m.executors {
            let Some(p) = s.placement.iter().find(|p| p.executor == e.executor) else {
                continue;
            };
            *out.entry(p.worker.clone()).or_default() += e.process.cpu_ms;
        }
    }
    Ok(out)
}

fn print_run(r: &Run) {
    println!(
        "{:<13} [{}] slots {:<10} cores {:<20} heavy jobs {:<10} max/mean {:.2}  CV {:.2}",
        r.strategy,
        r.workers.join(" / "),
        join(&r.slots, |s| s.to_string()),
        join(&r.cores, |c| format!("{c:.2}")),
        join(&r.heavies, |h| h.to_string()),
        r.max_over_mean(),
        r.cv(),
    );
}

fn join<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
    v.iter().map(f).collect::<Vec<_>>().join(" / ")
}

/// The section for `benches/RESULTS.md`: machine, command, a table of the
/// first round and the medians of the spread figures over the rounds.
fn markdown(args: &Args, runs: &[Run], load_before: &str, load_after: &str, debug: bool) -> String {
    let mut md = format!(
        "## Placement strategies on a skewed set of jobs ({})\n\n\
         Machine: {}, {} cores; load average {load_before} before, {load_after} after. \
         {} binaries. {} workers of {} slots on loopback; jobs submitted in the order {} \
         (H: a heavy q5, `--rate {}`, parallelism {}; L: a light q5, `--rate {}`, \
         parallelism 1), each {} after the previous one ran; executors' CPU over {} once all ran. \
         {} round(s), strategies interleaved.\n\n\
         ```sh\n{}\n```\n\n",
        machine::date(),
        machine::cpu_model(),
        machine::nproc(),
        if debug { "Debug" } else { "Release" },
        args.workers,
        args.slots,
        args.jobs.join(" "),
        args.heavy_rate,
        args.heavy_parallelism,
        args.light_rate,
        humantime::format_duration(args.gap),
        humantime::format_duration(args.measure),
        args.repeat,
        machine::command_line(),
    );
    md.push_str(
        "| strategy | slots used per worker | heavy jobs per worker | CPU cores per worker | \
         max/mean CPU | CV of CPU | max/mean, median | CV, median | max/mean, every round |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for strategy in &args.strategies {
        let mine: Vec<&Run> = runs.iter().filter(|r| &r.strategy == strategy).collect();
        let Some(first) = mine.first() else { continue };
        let ratios = mine.iter().map(|r| r.max_over_mean()).collect();
        let cvs = mine.iter().map(|r| r.cv()).collect();
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            strategy,
            join(&first.slots, |s| s.to_string()),
            join(&first.heavies, |h| h.to_string()),
            join(&first.cores, |c| format!("{c:.2}")),
            first.max_over_mean(),
            first.cv(),
            machine::median(ratios),
            machine::median(cvs),
            join(&mine, |r| format!("{:.2}", r.max_over_mean())),
        ));
    }
    md.push_str(
        "\nSlots, heavy jobs and cores per worker, and the first max/mean and CV, \
         are the first round's, workers in id order.\n",
    );
    md
}

/// `GET path` from the coordinator on 127.0.0.1:`port`, as JSON.
fn get(port: u16, path: &str) -> anyhow::Result<serde_json::Value> {
    let body = sluice_benches::http::get(port, path)?;
    serde_json::from_slice(&body).with_context(|| format!("parsing GET {path}"))
}
