//! Following a job from the command line: `status --watch`, `submit
//! --wait` and `submit --follow` poll the coordinator until the job ends
//! (with a progress bar on a terminal),
//! and a command that changes a job asks first when a person is at the
//! terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_cluster::client::Client;
use sluice_engine::progress::{Bar, Reading};
use sluice_protocol::api::{JobState, JobStatus};

/// How long polling rides out an unreachable coordinator (a failover, a
/// restart) before it gives up.
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(60);

/// Polls `job` every `every` until it ends; `on_change` sees the first
/// status and each one that differs from the last shown in what `key`
/// picks, and what it returns is printed. On a terminal a progress bar
/// on stderr shows what the job's sources read of their total (the
/// printed lines go above it). Returns the final status.
pub(crate) async fn until_ended<K: PartialEq>(
    client: &Client,
    job: &str,
    every: Duration,
    key: impl Fn(&JobStatus) -> K,
    mut on_change: impl FnMut(&JobStatus) -> Option<String>,
) -> anyhow::Result<JobStatus> {
    let mut shown: Option<K> = None;
    let mut failing_since: Option<Instant> = None;
    let mut bar = std::io::stderr().is_terminal().then(Bar::new);
    loop {
        match client.status(job).await {
            Ok(status) => {
                failing_since = None;
                let k = key(&status);
                if shown.as_ref() != Some(&k) {
                    if let Some(line) = on_change(&status) {
                        match &bar {
                            Some(bar) => bar.println(&line),
                            None => println!("{line}"),
                        }
                    }
                    shown = Some(k);
                }
                if status.state.is_terminal() {
                    if let Some(bar) = &mut bar {
                        bar.finish();
                    }
                    return Ok(status);
                }
                if let Some(bar) = &mut bar {
                    // A coordinator without the route shows no bar.
                    if let Ok(m) = client.job_metrics(job).await {
                        let subtasks: Vec<_> = m.subtasks.into_iter().map(|s| s.metrics).collect();
                        bar.update(&Reading::of(&subtasks));
                    }
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_PATIENCE {
                    return Err(e).context(format!(
                        "following {job}: the coordinator did not answer for {}s",
                        UNREACHABLE_PATIENCE.as_secs()
                    ));
                }
                tracing::warn!(job, error = %e, "cannot read the job's status; trying again");
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The exit a following command ends with: success only for a job that
/// finished, so `submit --wait && next-step` does what it says.
pub(crate) fn ended_ok(status: &JobStatus) -> anyhow::Result<()> {
    match status.state {
        JobState::Finished => Ok(()),
        state => match &status.error {
            Some(e) => bail!("{} ended {}: {e}", status.id, state.name()),
            None => bail!("{} ended {}", status.id, state.name()),
        },
    }
}

/// One line per change for `submit --follow`.
pub(crate) fn progress_line(s: &JobStatus) -> String {
    let records: u64 = s
        .vertices
        .iter()
        .filter(|v| v.source)
        .flat_map(|v| v.nodes.iter())
        .filter_map(|(node, _)| s.nodes.iter().find(|c| c.node == *node))
        .map(|c| c.records_out)
        .sum();
    format!(
        "{} {} attempt {} restarts {} checkpoint {} source records {records}",
        s.id,
        s.state.name(),
        s.attempt,
        s.restarts,
        s.latest_checkpoint
            .map_or_else(|| "-".to_string(), |c| c.to_string()),
    )
}

/// Asks before a state-changing command when stdin is a terminal and
/// `--yes` was not given; scripts (stdin not a terminal) are not asked.
pub(crate) async fn confirm(question: String, yes: bool) -> anyhow::Result<()> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let answer = tokio::task::spawn_blocking(move || {
        eprint!("{question} [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("asking for confirmation")?
    .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed (--yes skips the question)")
    }
}
