//! The `--progress` flag of the job binaries: how far a job run embedded
//! has come ([`sluice_engine::progress`]). On a terminal a bar; with
//! `--progress log` a line in the log every `--progress-interval`;
//! nothing with `--progress off`, in a pipe by default, or when the binary
//! runs as a cluster's executor (its coordinator shows the job).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use sluice_engine::progress::{Bar, Reading};
use sluice_engine::{Env, JobResult};
use tracing::info;

use crate::cli::NOTICE_TARGET;

pub use sluice_engine::progress::LogWriter;

/// How often the figures are read.
const POLL: Duration = Duration::from_millis(200);

/// How a job shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, nothing otherwise.
    #[default]
    Auto,
    /// A line in the log every 10 s (for files and pipes).
    Log,
    /// Nothing.
    Off,
}

/// The `--progress` flag of the job binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    /// How to show progress while the job runs: records read of the total
    /// its sources will read (when they can tell: generated events, a
    /// bounded Kafka read), rate and time left. `auto`: a bar when stderr
    /// is a terminal; `log`: a line in the log every 10 s; `off`: nothing.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub progress: ProgressMode,
    /// How often `--progress log` writes its line.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::cli::parse_duration)]
    pub progress_interval: Duration,
}

impl ProgressArgs {
    /// Runs the job built on `env` to its end, showing its progress.
    pub fn execute(&self, env: &Env) -> sluice_engine::Result<JobResult> {
        let mode = match self.progress {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Auto,
            ProgressMode::Auto => ProgressMode::Off,
            m => m,
        };
        if mode == ProgressMode::Off || !sluice_engine::dsl::runs_embedded() {
            return env.execute();
        }
        let handle = env.start()?;
        let mut bar = Bar::new();
        let mut logged: Option<(Instant, u64)> = None;
        while !handle.is_finished() {
            let r = Reading::of(&handle.task_metrics());
            match mode {
                ProgressMode::Log => log(&r, &mut logged, self.progress_interval),
                _ => bar.update(&r),
            }
            std::thread::sleep(POLL);
        }
        bar.finish();
        handle.join()
    }
}

/// Writes `r` to the log when `every` has passed since the last line.
fn log(r: &Reading, last: &mut Option<(Instant, u64)>, every: Duration) {
    let now = Instant::now();
    let Some((at, read)) = *last else {
        *last = Some((now, r.read));
        return;
    };
    if now.duration_since(at) < every {
        return;
    }
    let per_s = r.read.saturating_sub(read) as f64 / now.duration_since(at).as_secs_f64();
    info!(target: NOTICE_TARGET, "progress: {}", r.describe(per_s));
    *last = Some((now, r.read));
}
