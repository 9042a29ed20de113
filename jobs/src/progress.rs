//! How far a job run embedded has come: the records its sources read, of
//! the total they will read when they can tell (what they read plus what
//! they say remains: a generator's count, a bounded Kafka read's ends),
//! the rate and the time left. On a terminal a bar (indicatif) that log
//! lines print above; with `--progress log` a line in the log every
//! `--progress-interval`; nothing with `--progress off`, in a pipe by default, or
//! when the binary runs as a cluster's executor (its coordinator shows
//! the job).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_engine::protocol::metrics::SubtaskMetrics;
use sluice_engine::{Env, JobResult};
use tracing::info;

use crate::cli::NOTICE_TARGET;

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

/// The bar on screen, if any: log lines are written around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

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
        let mut shown = Shown::new(mode, self.progress_interval);
        while !handle.is_finished() {
            shown.update(&Reading::of(&handle.task_metrics()));
            std::thread::sleep(POLL);
        }
        shown.finish();
        handle.join()
    }
}

/// Records read by the sources and, when every one can tell, what
/// remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// Records read so far.
    pub read: u64,
    /// Records still to read; none when a source cannot tell.
    pub remaining: Option<u64>,
}

impl Reading {
    /// The reading of a job's subtask figures: its sources are the
    /// subtasks that say what remains.
    pub fn of(subtasks: &[SubtaskMetrics]) -> Reading {
        let sources: Vec<_> = subtasks.iter().filter(|s| s.remaining.is_some()).collect();
        Reading {
            read: sources.iter().map(|s| s.records_in).sum(),
            remaining: (!sources.is_empty())
                .then(|| sources.iter().filter_map(|s| s.remaining).sum()),
        }
    }

    /// Read plus remaining.
    pub fn total(&self) -> Option<u64> {
        self.remaining.map(|r| r + self.read)
    }

    /// One line: `1,200,000 of 5,000,000 records (24%), 310,000 records/s,
    /// about 12 seconds left`.
    pub fn describe(&self, per_s: f64) -> String {
        let mut line = format!("{} ", HumanCount(self.read));
        if let Some(total) = self.total() {
            let pct = if total == 0 {
                100.0
            } else {
                100.0 * self.read as f64 / total as f64
            };
            line.push_str(&format!("of {} records ({pct:.0}%)", HumanCount(total)));
        } else {
            line.push_str("records");
        }
        line.push_str(", ");
        line.push_str(&self.rate_and_eta(per_s));
        line
    }

    /// `310,000 records/s, about 12 seconds left`.
    pub fn rate_and_eta(&self, per_s: f64) -> String {
        let mut line = format!("{} records/s", HumanCount(per_s.round() as u64));
        if let Some(left) = self.remaining.filter(|_| per_s >= 1.0) {
            let secs = Duration::from_secs_f64(left as f64 / per_s);
            line.push_str(&format!(", about {} left", HumanDuration(secs)));
        }
        line
    }
}

/// The bar's look: with a known total a bar, without a spinner; the
/// message is the rate and time left.
fn style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{elapsed_precise} [{wide_bar:.cyan/blue}] {human_pos}/{human_len} records, {msg}"
    } else {
        "{spinner} {elapsed_precise} {human_pos} records read, {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

/// What is on show: the bar, or when the last log line was written.
struct Shown {
    mode: ProgressMode,
    every: Duration,
    bar: Option<ProgressBar>,
    last: Option<(Instant, u64)>,
    /// Readings of the last [`RATE_WINDOW`], for the bar's rate.
    recent: std::collections::VecDeque<(Instant, u64)>,
}

/// The span the bar's rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(3);

impl Shown {
    fn new(mode: ProgressMode, every: Duration) -> Shown {
        Shown {
            mode,
            every,
            bar: None,
            last: None,
            recent: std::collections::VecDeque::new(),
        }
    }

    fn update(&mut self, r: &Reading) {
        match self.mode {
            ProgressMode::Auto => self.draw(r),
            ProgressMode::Log => self.log(r),
            ProgressMode::Off => {}
        }
    }

    fn draw(&mut self, r: &Reading) {
        // Nothing to show before the first attempt's sources report.
        if self.bar.is_none() && r.read == 0 && r.remaining.is_none() {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
            bar.set_style(style(false));
            *BAR.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
            bar
        });
        match r.total() {
            Some(total) if bar.length() != Some(total) => {
                if bar.length().is_none() {
                    bar.set_style(style(true));
                }
                bar.set_length(total);
            }
            None if bar.length().is_some() => {
                bar.unset_length();
                bar.set_style(style(false));
            }
            _ => {}
        }
        bar.set_position(r.read);
        let now = Instant::now();
        // A restarted attempt reads from its checkpoint again.
        if self.recent.back().is_some_and(|&(_, read)| read > r.read) {
            self.recent.clear();
        }
        self.recent.push_back((now, r.read));
        while self.recent.len() > 2 && now.duration_since(self.recent[0].0) > RATE_WINDOW {
            self.recent.pop_front();
        }
        let (t0, read0) = self.recent[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs >= 0.5 {
            bar.set_message(r.rate_and_eta(r.read.saturating_sub(read0) as f64 / secs));
        }
    }

    fn log(&mut self, r: &Reading) {
        let now = Instant::now();
        let Some((at, read)) = self.last else {
            self.last = Some((now, r.read));
            return;
        };
        if now.duration_since(at) < self.every {
            return;
        }
        let secs = now.duration_since(at).as_secs_f64();
        let per_s = r.read.saturating_sub(read) as f64 / secs;
        info!(target: NOTICE_TARGET, "progress: {}", r.describe(per_s));
        self.last = Some((now, r.read));
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            *BAR.lock().unwrap_or_else(|p| p.into_inner()) = None;
            bar.finish_and_clear();
        }
    }
}

/// Stderr for the log, written around the progress bar when one is
/// drawn (cleared, the line written, drawn again), so log lines never
/// run into it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(read: u64, remaining: Option<u64>) -> SubtaskMetrics {
        SubtaskMetrics {
            records_in: read,
            remaining,
            ..SubtaskMetrics::default()
        }
    }

    #[test]
    fn sources_are_the_subtasks_that_say_what_remains() {
        let r = Reading::of(&[
            source(300, Some(700)),
            source(200, Some(800)),
            // A window: records in, no remaining.
            source(9_999, None),
        ]);
        assert_eq!(r.read, 500);
        assert_eq!(r.total(), Some(2_000));
        assert_eq!(
            r.describe(250.0),
            "500 of 2,000 records (25%), 250 records/s, about 6 seconds left"
        );
        let unknown = Reading::of(&[source(10, None)]);
        assert_eq!(unknown.total(), None);
        assert_eq!(unknown.describe(0.0), "0 records, 0 records/s");
        let done = Reading::of(&[source(0, Some(0))]);
        assert!(
            done.describe(0.0).contains("(100%)"),
            "{}",
            done.describe(0.0)
        );
    }
}
