//! What the client commands print for people: tables, a job's status,
//! its checkpoints. `--json` prints the API's bodies instead.

use sluice_protocol::api::{Checkpoints, JobStatus};
use sluice_protocol::metrics::JobMetrics;

pub(crate) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub(crate) fn jobs_table(jobs: &[JobStatus]) -> String {
    let rows = jobs.iter().map(|j| {
        vec![
            j.id.clone(),
            j.name.clone(),
            j.state.name().to_string(),
            j.parallelism.to_string(),
            j.attempt.to_string(),
        ]
    });
    table(&["ID", "NAME", "STATE", "PARALLELISM", "ATTEMPT"], rows)
}

/// The state on the first line (scripts read it), then details, then the
/// job's operators with their parallelism and records in and out.
pub(crate) fn status_text(s: &JobStatus) -> String {
    let mut out = format!("{}\n", s.state.name());
    out.push_str(&format!("id: {}\n", s.id));
    out.push_str(&format!("name: {}\n", s.name));
    let rescaling = s
        .rescaling_to
        .map(|p| format!(" (rescaling to {p})"))
        .unwrap_or_default();
    out.push_str(&format!("parallelism: {}{rescaling}\n", s.parallelism));
    out.push_str(&format!(
        "attempt: {}  restarts: {}\n",
        s.attempt, s.restarts
    ));
    out.push_str(&format!(
        "latest checkpoint: {}\n",
        opt(s.latest_checkpoint)
    ));
    out.push_str(&format!("artifact: {}\n", s.artifact));
    out.push_str(&format!("args: {}\n", s.args.join(" ")));
    if let Some(e) = &s.error {
        out.push_str(&format!("error: {e}\n"));
    }
    if !s.placement.is_empty() {
        let mut workers: Vec<&str> = s.placement.iter().map(|p| p.worker.as_str()).collect();
        workers.sort_unstable();
        workers.dedup();
        out.push_str(&format!(
            "placement: {} subtasks on {} workers ({})\n",
            s.placement.len(),
            workers.len(),
            workers.join(", ")
        ));
    }
    if !s.exceptions.is_empty() {
        out.push_str(&format!(
            "exceptions ({}, newest first):\n",
            s.exceptions.len()
        ));
        for e in s.exceptions.iter().rev().take(5) {
            out.push_str(&format!(
                "  attempt {} at {} ms: {} -> {}\n",
                e.attempt, e.time_ms, e.error, e.outcome
            ));
        }
    }
    if let Some(a) = &s.autoscaler {
        out.push_str(&format!(
            "autoscaler: {}..{}, {} decisions{}\n",
            a.min,
            a.max,
            a.decisions.len(),
            if a.decisions.is_empty() {
                ""
            } else {
                " (newest first):"
            }
        ));
        if let Some(p) = a.pending {
            out.push_str(&format!(
                "  recommends {} since {} ms (waiting out its stabilization window)\n",
                p.to, p.since_ms
            ));
        }
        for d in a.decisions.iter().rev().take(5) {
            let failed = d
                .error
                .as_ref()
                .map(|e| format!(" [not done: {e}]"))
                .unwrap_or_default();
            out.push_str(&format!("  at {} ms: {}{failed}\n", d.time_ms, d.reason));
        }
    }
    if !s.vertices.is_empty() {
        out.push_str("operators (records of the current attempt):\n");
        let rows = s.vertices.iter().flat_map(|v| {
            v.nodes.iter().map(move |(node, name)| {
                let counters = s.nodes.iter().find(|c| c.node == *node);
                vec![
                    format!("  {node}"),
                    name.clone(),
                    v.parallelism.to_string(),
                    opt(counters.map(|c| c.records_in)),
                    opt(counters.map(|c| c.records_out)),
                ]
            })
        });
        out.push_str(&table(
            &["  NODE", "OPERATOR", "PARALLELISM", "IN", "OUT"],
            rows,
        ));
    }
    out
}

/// Per vertex of a running attempt: the busiest subtask's busy and
/// backpressured milliseconds per second, idle of the idlest, and the
/// largest watermark lag (nothing while no attempt runs).
pub(crate) fn load_text(m: &JobMetrics) -> String {
    let mut vertices: Vec<usize> = m.subtasks.iter().map(|s| s.metrics.vertex).collect();
    vertices.dedup();
    if vertices.is_empty() {
        return String::new();
    }
    let rows = vertices.into_iter().map(|v| {
        let subtasks: Vec<_> = m
            .subtasks
            .iter()
            .filter(|s| s.metrics.vertex == v)
            .collect();
        let max = |f: fn(&sluice_protocol::metrics::SubtaskMetrics) -> u64| {
            subtasks.iter().map(|s| f(&s.metrics)).max().unwrap_or(0)
        };
        let lag = subtasks.iter().filter_map(|s| s.watermark_lag_ms).max();
        vec![
            format!("  {v}"),
            subtasks[0].vertex_name.clone(),
            subtasks.len().to_string(),
            max(|s| s.busy_ms_per_s).to_string(),
            max(|s| s.backpressured_ms_per_s).to_string(),
            max(|s| s.idle_ms_per_s).to_string(),
            opt(lag),
            usage(subtasks.iter().filter_map(|s| s.metrics.input_queue_usage)),
            usage(subtasks.iter().filter_map(|s| s.metrics.output_queue_usage)),
            opt(subtasks
                .iter()
                .filter_map(|s| s.metrics.latency)
                .map(|l| l.p99_ms)
                .max()),
        ]
    });
    let mut out = String::from("load (ms per second, highest subtask):\n");
    out.push_str(&table(
        &[
            "  VERTEX",
            "NAME",
            "SUBTASKS",
            "BUSY",
            "BACKPRESSURED",
            "IDLE",
            "WATERMARK LAG MS",
            "IN QUEUE",
            "OUT QUEUE",
            "P99 LATENCY MS",
        ],
        rows,
    ));
    out
}

/// The fullest of some channels' usages, in percent; `-` for none.
fn usage(usages: impl Iterator<Item = f64>) -> String {
    usages
        .reduce(f64::max)
        .map_or_else(|| "-".into(), |u| format!("{:.0}%", u * 100.0))
}

/// A job's checkpoints, newest first, at most `limit` of them.
pub(crate) fn checkpoints_text(cps: &Checkpoints, limit: usize) -> String {
    let mut out = format!("dir: {}\n", cps.dir.as_deref().unwrap_or("-"));
    out.push_str(&format!("latest: {}\n", opt(cps.latest)));
    out.push_str(&format!(
        "completed: {}  aborted: {}  restarts: {}  restored from: {}\n",
        cps.stats.completed,
        cps.stats.aborted,
        cps.stats.restarts,
        opt(cps.stats.restored_from)
    ));
    let mut recent: Vec<_> = cps.stats.recent.iter().collect();
    recent.sort_by_key(|r| std::cmp::Reverse(r.id));
    let rows = recent.into_iter().take(limit).map(|r| {
        vec![
            r.id.to_string(),
            if r.savepoint {
                "savepoint"
            } else {
                "checkpoint"
            }
            .to_string(),
            r.figures.duration_ms.to_string(),
            r.figures.alignment_ms.to_string(),
            r.figures.bytes.to_string(),
            r.figures.in_flight_bytes.to_string(),
        ]
    });
    out.push_str(&table(
        &[
            "ID",
            "KIND",
            "DURATION_MS",
            "ALIGNMENT_MS",
            "BYTES",
            "IN_FLIGHT_BYTES",
        ],
        rows,
    ));
    out
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use sluice_protocol::api::JobState;
    use sluice_protocol::stats::{CheckpointRecord, CheckpointStats};

    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            vec![vec!["j-1".into(), "RUNNING".into()]].into_iter(),
        );
        assert_eq!(t, "ID   STATE\nj-1  RUNNING\n");
        assert_eq!(JobState::Canceled.name(), "CANCELED");
    }

    #[test]
    fn checkpoints_are_listed_newest_first_up_to_the_limit() {
        let record = |id| CheckpointRecord {
            id,
            savepoint: false,
            figures: Default::default(),
        };
        let cps = Checkpoints {
            job_id: "job-1".into(),
            dir: Some("/ck".into()),
            latest: Some(3),
            stats: CheckpointStats {
                recent: vec![record(1), record(3), record(2)],
                ..CheckpointStats::default()
            },
        };
        let text = checkpoints_text(&cps, 2);
        let ids: Vec<&str> = text
            .lines()
            .skip(4)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ids, ["3", "2"], "{text}");
    }

    #[test]
    fn load_is_the_highest_subtask_per_vertex() {
        use sluice_protocol::metrics::{SubtaskFigures, SubtaskMetrics};
        let sub = |vertex: usize, subtask, busy: u64, back: u64, lag| SubtaskFigures {
            vertex_name: ["src", "sink"][vertex].into(),
            watermark_lag_ms: lag,
            metrics: SubtaskMetrics {
                vertex,
                subtask,
                busy_ms_per_s: busy,
                backpressured_ms_per_s: back,
                idle_ms_per_s: 1000 - busy - back,
                ..SubtaskMetrics::default()
            },
        };
        let mut subtasks = vec![
            sub(0, 0, 100, 900, Some(5)),
            sub(0, 1, 300, 600, Some(7)),
            sub(1, 0, 1000, 0, None),
        ];
        // The fullest queues and the worst latency of a vertex's subtasks.
        subtasks[0].metrics.output_queue_usage = Some(0.25);
        subtasks[1].metrics.output_queue_usage = Some(0.875);
        subtasks[2].metrics.input_queue_usage = Some(1.0);
        subtasks[2].metrics.latency = Some(sluice_protocol::metrics::Latency {
            markers: 4,
            p50_ms: 3,
            p99_ms: 40,
            max_ms: 41,
        });
        let m = JobMetrics {
            subtasks,
            ..JobMetrics::default()
        };
        let text = load_text(&m);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["0", "src", "2", "300", "900", "100", "7", "-", "88%", "-"],
            "{text}"
        );
        assert_eq!(
            rows[1],
            ["1", "sink", "1", "1000", "0", "0", "-", "100%", "-", "40"],
            "{text}"
        );
        assert_eq!(load_text(&JobMetrics::default()), "");
    }
}
