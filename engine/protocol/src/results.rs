//! The latest rows of a job's sinks, as `GET /api/v1/jobs/{id}/results`,
//! `sluice results` and the web UI show them: executors report the rows
//! their sinks received, rendered as text ([`SinkRows`]), and the
//! coordinator (or an embedded job's view) keeps the newest [`TAIL_ROWS`]
//! per sink across reports and attempts ([`LatestRows`]). They are the rows
//! sinks received, not what they committed: a row may belong to an epoch
//! that a failure rolls back.

use std::collections::{BTreeMap, VecDeque};

use crate::api::{JobDescription, JobResults, SinkResults, SinkRows};

/// Rows kept per sink.
pub const TAIL_ROWS: usize = 20;

/// The newest rows per sink node of one job.
#[derive(Debug, Default, Clone)]
pub struct LatestRows {
    sinks: BTreeMap<usize, Latest>,
}

/// The newest rows of one sink.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Latest {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, oldest first.
    pub rows: VecDeque<Vec<String>>,
    /// When rows last arrived, ms since the epoch.
    pub updated_ms: i64,
}

impl LatestRows {
    /// Adds reported rows (received at `now_ms`), dropping the oldest
    /// beyond [`TAIL_ROWS`]. Rows under other columns (the sink's schema
    /// changed) replace the ones kept.
    pub fn add(&mut self, report: SinkRows, now_ms: i64) {
        if report.rows.is_empty() {
            return;
        }
        let latest = self.sinks.entry(report.node).or_default();
        if latest.columns != report.columns {
            latest.columns = report.columns;
            latest.rows.clear();
        }
        latest.rows.extend(report.rows);
        while latest.rows.len() > TAIL_ROWS {
            latest.rows.pop_front();
        }
        latest.updated_ms = now_ms;
    }

    /// Moves every sink's rows of `other` in, after the ones kept.
    pub fn merge(&mut self, other: LatestRows) {
        for (node, latest) in other.sinks {
            let updated = latest.updated_ms;
            self.add(
                SinkRows {
                    node,
                    columns: latest.columns,
                    rows: latest.rows.into(),
                },
                updated,
            );
        }
    }

    /// The rows kept, by graph node.
    pub fn sinks(&self) -> &BTreeMap<usize, Latest> {
        &self.sinks
    }

    /// The API's answer for job `job_id` planned as `plan`.
    pub fn to_results(&self, job_id: &str, plan: &JobDescription) -> JobResults {
        JobResults {
            job_id: job_id.to_string(),
            sinks: self
                .sinks
                .iter()
                .map(|(&node, latest)| SinkResults {
                    node,
                    name: plan
                        .node_name(node)
                        .map_or_else(|| format!("node {node}"), str::to_string),
                    columns: latest.columns.clone(),
                    rows: latest.rows.iter().cloned().collect(),
                    updated_ms: latest.updated_ms,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(node: usize, ids: std::ops::Range<i64>) -> SinkRows {
        SinkRows {
            node,
            columns: vec!["id".into(), "name".into()],
            rows: ids.map(|i| vec![i.to_string(), String::new()]).collect(),
        }
    }

    #[test]
    fn the_newest_rows_are_kept_per_sink() {
        let mut l = LatestRows::default();
        l.add(rows(1, 0..15), 10);
        l.add(rows(1, 15..30), 20);
        l.add(rows(2, 0..1), 30);
        let one = &l.sinks()[&1];
        assert_eq!(one.rows.len(), TAIL_ROWS);
        assert_eq!(one.rows.front().unwrap()[0], (30 - TAIL_ROWS).to_string());
        assert_eq!(one.rows.back().unwrap()[0], "29");
        assert_eq!(one.updated_ms, 20);
        assert_eq!(l.sinks()[&2].rows.len(), 1);

        let mut other = LatestRows::default();
        let mut renamed = rows(2, 7..8);
        renamed.columns[1] = "label".into();
        other.add(renamed, 40);
        l.merge(other);
        let two = &l.sinks()[&2];
        assert_eq!(two.columns, ["id", "label"]);
        assert_eq!(two.rows.len(), 1, "other columns replace the rows kept");
        assert_eq!(two.updated_ms, 40);
    }
}
