//! `sluice logs JOB`: the lines a job's executors wrote to their stdout
//! and stderr, as the coordinator keeps them (its workers forward them
//! with their heartbeats): printed once, or with `--follow` as they come
//! until the job ended and its last lines arrived.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_cluster::client::Client;
use sluice_engine::error::Error;
use sluice_protocol::logs::{JobLogs, LogLine};

/// Lines asked for per request (the coordinator answers at most 5000).
const PAGE: usize = 1000;
/// How long `--follow` rides out an unreachable coordinator (a failover,
/// a restart) before it gives up, as `status --watch` does.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(60);

/// What `sluice logs` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct LogsRequest {
    pub(crate) follow: bool,
    pub(crate) since: Option<u64>,
    pub(crate) tail: Option<usize>,
    pub(crate) json: bool,
    pub(crate) interval: Duration,
}

/// Prints the job's lines from where asked, then (`follow`) the new ones
/// until the coordinator says no more will come.
pub(crate) async fn print(client: &Client, job: &str, request: &LogsRequest) -> anyhow::Result<()> {
    let mut since = request.since.unwrap_or(0);
    // Only the first request takes the last lines; later ones read on.
    let mut tail = request.tail;
    let mut failing_since: Option<Instant> = None;
    let mut printed = 0;
    loop {
        let answer = match client.logs(job, since, PAGE, tail).await {
            Ok(answer) => answer,
            Err(e) if request.follow && passing(&e) => {
                let first = *failing_since.get_or_insert_with(Instant::now);
                if first.elapsed() > UNREACHABLE_PATIENCE {
                    return Err(e).context(format!(
                        "following {job}'s logs: the coordinator did not answer for {}s",
                        UNREACHABLE_PATIENCE.as_secs()
                    ));
                }
                tracing::warn!(job, error = %e, "cannot read the job's logs; trying again");
                tokio::time::sleep(request.interval).await;
                continue;
            }
            Err(e) => return Err(e).context(format!("reading {job}'s logs")),
        };
        failing_since = None;
        note_gaps(&answer, since, tail.is_some());
        if !show(&answer.lines, request.json)? {
            // Whoever read our output is gone (`| head`): done.
            return Ok(());
        }
        printed += answer.lines.len();
        tail = None;
        since = answer.next;
        if answer.lines.len() == PAGE {
            // More is there already.
            continue;
        }
        if !request.follow || answer.complete {
            if printed == 0 {
                // Silence would leave a user wondering whether anything
                // works; the usual reason is the executors' log level.
                eprintln!(
                    "(no lines from {job}'s executors: a job binary logs warnings and its own \
                     notices only, unless the workers run with RUST_LOG=info)"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(request.interval).await;
    }
}

/// Whether a failed request is worth repeating while following.
fn passing(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. } | Error::Api { status: 500.., .. }
    )
}

/// Says on stderr when lines between `since` and the first answered were
/// dropped by the coordinator, or when its numbering is not the one
/// `since` came from (a new leader numbers its own lines from 0).
fn note_gaps(answer: &JobLogs, since: u64, tail: bool) {
    let Some(first) = answer.lines.first() else {
        return;
    };
    if first.seq < since {
        eprintln!(
            "(the coordinator numbers lines anew, a new leader perhaps; from the oldest line it has)"
        );
    } else if first.seq > since && !tail {
        eprintln!(
            "({} older lines were dropped: the coordinator keeps a job's newest lines only)",
            first.seq - since
        );
    }
}

/// Prints `lines`: `aATTEMPT/eEXECUTOR TEXT`, or one JSON object per
/// line. False once stdout is closed.
fn show(lines: &[LogLine], json: bool) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut written = Ok(());
    for line in lines {
        written = if json {
            let text = serde_json::to_string(line)?;
            writeln!(out, "{text}")
        } else {
            writeln!(out, "a{}/e{} {}", line.attempt, line.executor, line.text)
        };
        if written.is_err() {
            break;
        }
    }
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
