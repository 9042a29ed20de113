//! The latest rows of a job's sinks, as `GET /api/v1/jobs/{id}/results`,
//! `sluice results` and the web UI show them.
//!
//! Each sink keeps the tail of the last batch it received
//! ([`NodeMetrics::take_tail`](crate::runtime::NodeMetrics::take_tail));
//! an executor's reporter takes the tails every 250 ms and sends them
//! rendered as text ([`render`]), and the coordinator keeps the newest
//! [`TAIL_ROWS`] per sink across reports and attempts ([`LatestRows`]).
//! They are the rows sinks received, not what they committed: a row may
//! belong to an epoch that a failure rolls back.

use std::collections::{BTreeMap, VecDeque};

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::cluster::api::{JobDescription, JobResults, SinkResults, SinkRows};
use crate::error::Result;
pub use crate::runtime::TAIL_ROWS;

/// Longest value shown, in characters; longer ones are cut and end in `…`.
pub const MAX_CELL_CHARS: usize = 200;

/// The rows of `batch` as text (Arrow's display format; null is empty),
/// for graph node `node`.
pub fn render(node: usize, batch: &RecordBatch) -> Result<SinkRows> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rows = (0..batch.num_rows())
        .map(|r| {
            formatters
                .iter()
                .map(|f| cut(f.value(r).to_string()))
                .collect()
        })
        .collect();
    Ok(SinkRows {
        node,
        columns: batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        rows,
    })
}

fn cut(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(MAX_CELL_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

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
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let names: Vec<Option<String>> = ids
            .clone()
            .map(|i| (i % 2 == 0).then(|| "é".repeat(i as usize * 50)))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_render_as_text_with_long_values_cut() {
        let r = render(3, &batch(0..7)).unwrap();
        assert_eq!(r.node, 3);
        assert_eq!(r.columns, ["id", "name"]);
        assert_eq!(r.rows[0], ["0", ""]);
        assert_eq!(r.rows[1], ["1", ""], "null is empty");
        assert_eq!(r.rows[2][1], "é".repeat(100));
        assert_eq!(
            r.rows[4][1],
            "é".repeat(MAX_CELL_CHARS),
            "at the limit: kept whole"
        );
        let cut = &r.rows[6][1];
        assert_eq!(cut.chars().count(), MAX_CELL_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_newest_rows_are_kept_per_sink() {
        let mut l = LatestRows::default();
        l.add(render(1, &batch(0..15)).unwrap(), 10);
        l.add(render(1, &batch(15..30)).unwrap(), 20);
        l.add(render(2, &batch(0..1)).unwrap(), 30);
        let one = &l.sinks()[&1];
        assert_eq!(one.rows.len(), TAIL_ROWS);
        assert_eq!(one.rows.front().unwrap()[0], (30 - TAIL_ROWS).to_string());
        assert_eq!(one.rows.back().unwrap()[0], "29");
        assert_eq!(one.updated_ms, 20);
        assert_eq!(l.sinks()[&2].rows.len(), 1);

        let mut other = LatestRows::default();
        let mut renamed = render(2, &batch(7..8)).unwrap();
        renamed.columns[1] = "label".into();
        other.add(renamed, 40);
        l.merge(other);
        let two = &l.sinks()[&2];
        assert_eq!(two.columns, ["id", "label"]);
        assert_eq!(two.rows.len(), 1, "other columns replace the rows kept");
        assert_eq!(two.updated_ms, 40);
    }
}
