//! How far a job has come, for people watching it: the records its
//! sources read, of the total they will read when they can tell (what they
//! read plus what they say remains, [`Source::remaining`]), the rate and
//! the time left — as a [`Reading`] of subtask figures, and drawn as a
//! terminal [`Bar`] (indicatif). The job binaries draw it for an embedded
//! run, `sluice submit --wait` and `status --watch` for a cluster's job
//! from the coordinator's figures. Log lines written through
//! [`LogWriter`] print above the bar instead of into it.
//!
//! [`Source::remaining`]: crate::operator::Source::remaining

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_protocol::metrics::SubtaskMetrics;

/// The bar on screen, if any: log lines are written around it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The span the bar's rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(3);

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

/// A progress bar on stderr, drawn from successive readings; at most one
/// is on screen.
#[derive(Default)]
pub struct Bar {
    bar: Option<ProgressBar>,
    /// Readings of the last [`RATE_WINDOW`], for the rate.
    recent: VecDeque<(Instant, u64)>,
}

impl Bar {
    /// No bar until the first reading with figures.
    pub fn new() -> Bar {
        Bar::default()
    }

    /// Draws `r`.
    pub fn update(&mut self, r: &Reading) {
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

    /// Prints `line` to stdout above the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Takes the bar off the screen.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            *BAR.lock().unwrap_or_else(|p| p.into_inner()) = None;
            bar.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
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
