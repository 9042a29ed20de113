//! The replicated coordinators' metadata benchmark: three real `sluice
//! coordinator`s on loopback forming a Raft group (no workers, so the
//! jobs only wait for slots and the figures are the metadata path's),
//! driven over HTTP/1.1 as a client would, one connection per request.
//!
//! - writes: a job submitted by its checksum (`POST /api/v1/jobs`, its
//!   record committed on a majority before the answer), then cancelled
//!   (`POST /api/v1/jobs/ID/cancel`, committed likewise);
//! - reads of one job per consistency level: `linearizable` and `leader`
//!   at the leader, `local` at a follower;
//! - a follower's staleness under write load: a writer submits jobs back
//!   to back while a reader polls a follower's local copy for the newest
//!   acknowledged job each time; how long after the submission was
//!   acknowledged the follower shows it, and how many log entries the
//!   follower's applied index trailed the leader's when sampled together.
//!
//! Prints a Markdown section for `benches/RESULTS.md` (machine, command,
//! p50 and p99 of each).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::Value;
use sluice_benches::machine::{command_line, cpu_model, date, loadavg, nproc, percentile, sibling};
use sluice_cluster::local::{LocalCluster, LocalClusterConfig};

/// Replicated-coordinator metadata benchmark (write and read latencies, follower staleness).
#[derive(Parser, Debug)]
struct Args {
    /// The `sluice` binary [default: `sluice` beside this executable].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `nexmark` job binary submitted [default: beside this executable].
    #[arg(long)]
    nexmark: Option<PathBuf>,
    /// Calls per measurement.
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Jobs submitted while the follower's staleness is measured.
    #[arg(long, default_value_t = 200)]
    stale_jobs: usize,
    /// Directory for the cluster (a temporary one if not given).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Status, headers (lower-cased) and JSON body of one request.
fn request(
    url: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String, Value)> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no header block")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

fn header(head: &str, name: &str) -> Option<u64> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Submits the job `submission` describes at `url`; its id.
fn submit(url: &str, submission: &str) -> anyhow::Result<String> {
    let (code, _, body) = request(url, "POST", "/api/v1/jobs", submission)?;
    if !(200..300).contains(&code) {
        bail!("submit: {code} {body}");
    }
    Ok(body["job_id"].as_str().context("no job id")?.to_string())
}

/// Milliseconds each call of `f` took, `n` times.
fn timed(n: usize, mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

fn expect(code: u16, want: u16, what: &str, body: &Value) -> anyhow::Result<()> {
    if code != want {
        bail!("{what}: {code} {body}");
    }
    Ok(())
}

struct Row {
    what: String,
    ms: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sluice = args.sluice.clone().map_or_else(|| sibling("sluice"), Ok)?;
    let nexmark = args
        .nexmark
        .clone()
        .map_or_else(|| sibling("nexmark"), Ok)?;
    for b in [&sluice, &nexmark] {
        if !b.is_file() {
            bail!(
                "{} is missing (cargo build --release -p sluice-cluster -p sluice-jobs)",
                b.display()
            );
        }
    }
    let tmp = tempfile_dir(&args)?;
    let dir = tmp.as_path();
    let load_start = loadavg();
    let cluster = LocalCluster::start(LocalClusterConfig {
        sluice: sluice.clone(),
        dir: dir.to_path_buf(),
        host: "127.0.0.1".into(),
        coordinator_args: Vec::new(),
        workers: Vec::new(),
        slots: 1,
        security: None,
        plaintext: true,
        coordinators: 3,
    })?;
    let urls: Vec<String> = (0..3).map(|i| cluster.coordinator_url(i)).collect();
    let leader = (0..3)
        .find(|&i| request(&urls[i], "GET", "/api/v1/jobs", "").is_ok_and(|(c, _, _)| c == 200))
        .context("no leader answers")?;
    let follower = (leader + 1) % 3;
    let (lead, foll) = (urls[leader].clone(), urls[follower].clone());

    // One submission through the CLI uploads the binary; the rest name it.
    let job_args: Vec<String> = [
        "--query",
        "q5",
        "--events",
        "1000",
        "--rate",
        "1000",
        "--output",
        "blackhole",
    ]
    .map(String::from)
    .to_vec();
    let job_refs: Vec<&str> = job_args.iter().map(String::as_str).collect();
    let first = cluster.submit(1, &nexmark, &job_refs)?;
    let (_, _, status) = request(&lead, "GET", &format!("/api/v1/jobs/{first}"), "")?;
    let described = dir.join("described.json");
    let ran = std::process::Command::new(&nexmark)
        .args(&job_args)
        .env("SLUICE_DESCRIBE", &described)
        .env("SLUICE_PARALLELISM", "1")
        .status()?;
    if !ran.success() {
        bail!("describing the job failed");
    }
    let description: Value = serde_json::from_slice(&std::fs::read(&described)?)?;
    let submission = serde_json::json!({
        "artifact": status["artifact"],
        "args": status["args"],
        "parallelism": 1,
        "workdir": Value::Null,
        "description": description,
    })
    .to_string();
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    let ms = timed(args.calls, |_| {
        ids.push(submit(&lead, &submission)?);
        Ok(())
    })?;
    rows.push(Row {
        what: "write: submit (record committed)".into(),
        ms,
    });
    let ms = timed(args.calls, |i| {
        let (code, _, body) = request(
            &lead,
            "POST",
            &format!("/api/v1/jobs/{}/cancel", ids[i]),
            "{}",
        )?;
        expect(code, 200, "cancel", &body)
    })?;
    rows.push(Row {
        what: "write: cancel (record committed)".into(),
        ms,
    });
    let job = ids.last().cloned().context("no job")?;
    for (what, url, level) in [
        ("read: linearizable, at the leader", &lead, "linearizable"),
        ("read: leader, at the leader", &lead, "leader"),
        ("read: local, at a follower", &foll, "local"),
    ] {
        let path = format!("/api/v1/jobs/{job}?consistency={level}");
        let ms = timed(args.calls, |_| {
            let (code, _, body) = request(url, "GET", &path, "")?;
            expect(code, 200, what, &body)
        })?;
        rows.push(Row {
            what: what.into(),
            ms,
        });
    }

    // Staleness: a writer submits back to back; the reader times how long
    // after each acknowledgement the follower's copy shows the job, and
    // samples how far its applied index trails the leader's.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let writer = {
        let (acked, lead) = (acked.clone(), lead.clone());
        let n = args.stale_jobs;
        std::thread::spawn(move || -> anyhow::Result<()> {
            for _ in 0..n {
                let id = submit(&lead, &submission)?;
                acked.lock().unwrap().push((id, Instant::now()));
            }
            Ok(())
        })
    };
    let mut visible_ms = Vec::new();
    let mut behind = Vec::new();
    let mut measured = 0;
    loop {
        // The newest acknowledged submission not measured yet (older ones
        // are skipped: the reader would otherwise measure its own backlog).
        let newest = {
            let acked = acked.lock().unwrap();
            (acked.len() > measured).then(|| (acked.len(), acked[acked.len() - 1].clone()))
        };
        let Some((count, (id, at))) = newest else {
            if writer.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let path = format!("/api/v1/jobs/{id}?consistency=local");
        loop {
            let (code, fhead, _) = request(&foll, "GET", &path, "")?;
            let (_, lhead, _) = request(&lead, "GET", &path, "")?;
            if let (Some(f), Some(l)) = (
                header(&fhead, "x-sluice-raft-applied"),
                header(&lhead, "x-sluice-raft-applied"),
            ) {
                behind.push(l.saturating_sub(f) as f64);
            }
            if code == 200 {
                visible_ms.push(at.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        measured = count;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    rows.push(Row {
        what: "staleness: a follower shows a job, after its submission was acknowledged".into(),
        ms: visible_ms,
    });

    let md = markdown(&rows, &behind, &load_start, &sluice);
    println!("{md}");
    drop(cluster);
    Ok(())
}

/// The run's directory: `--dir`, or a new one under the temporary directory.
fn tempfile_dir(args: &Args) -> anyhow::Result<PathBuf> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sluice-raft-bench-{}", std::process::id())),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn markdown(rows: &[Row], behind: &[f64], load_start: &str, sluice: &Path) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(md, "## Replicated coordinators: metadata writes, reads per consistency level, follower staleness ({})\n", date());
    if sluice.components().any(|c| c.as_os_str() == "debug") {
        let _ = writeln!(md, "**Debug binaries: not release figures.**\n");
    }
    let _ = writeln!(
        md,
        "Machine: `nproc` = {}, {}; load average {load_start} at the start, {} at the end.\n",
        nproc(),
        cpu_model(),
        loadavg()
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", command_line());
    let _ = writeln!(
        md,
        "Three `sluice coordinator`s on loopback (election timeout 1 s, each its own data \
         directory, every log write synced), no workers; one HTTP/1.1 connection per \
         request from this process.\n"
    );
    let _ = writeln!(
        md,
        "| what | calls | p50 ms | p99 ms |\n|---|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} |",
            r.what,
            r.ms.len(),
            percentile(r.ms.clone(), 50.0),
            percentile(r.ms.clone(), 99.0)
        );
    }
    let _ = writeln!(
        md,
        "\nLog entries the follower's applied index trailed the leader's, sampled together \
         under that write load ({} samples): p50 {:.0}, p99 {:.0}, max {:.0}.",
        behind.len(),
        percentile(behind.to_vec(), 50.0),
        percentile(behind.to_vec(), 99.0),
        behind.iter().copied().fold(0.0, f64::max)
    );
    md
}
