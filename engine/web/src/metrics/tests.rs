//! `/metrics` as rendered from a view with one running job whose figures
//! cover every family, and the Grafana dashboard in `docs/` checked
//! against it: every metric the dashboard queries must be one Sluice
//! exposes.

use std::collections::BTreeSet;

use sluice_protocol::api::{
    Checkpoints, ClusterInfo, JobResults, JobState, JobStatus, RestartPolicy, SavepointRequest,
    SavepointTaken, VertexInfo, WorkerInfo,
};
use sluice_protocol::manifest::CheckpointFigures;
use sluice_protocol::metrics::{
    ExecutorProcess, JobMetrics, ProcessMetrics, SplitPending, SubtaskMetrics,
};

use super::Metrics;
use crate::error::{Error, Result};
use crate::history::History;
use crate::routes::JobsView;

/// One running job, `j1`, with a source vertex and a sink vertex.
struct OneJob {
    metrics: Metrics,
    history: History,
}

pub(crate) fn vertices() -> Vec<VertexInfo> {
    ["source", "sink"]
        .iter()
        .enumerate()
        .map(|(id, name)| VertexInfo {
            id,
            name: name.to_string(),
            parallelism: 1,
            source: id == 0,
            nodes: vec![(id, name.to_string())],
            inputs: Vec::new(),
        })
        .collect()
}

/// A running job `j1` of [`vertices`], attempt 1, placed nowhere.
pub(crate) fn running_job() -> JobStatus {
    JobStatus {
        id: "j1".into(),
        name: "job".into(),
        state: JobState::Running,
        attempt: 1,
        restarts: 0,
        artifact: String::new(),
        args: Vec::new(),
        submitted_ms: 0,
        updated_ms: 0,
        error: None,
        latest_checkpoint: None,
        rejected_stale: 0,
        placement: Vec::new(),
        nodes: Vec::new(),
        vertices: vertices(),
        parallelism: 1,
        workdir: None,
        rescaling_to: None,
        restart: RestartPolicy::None,
        exceptions: Vec::new(),
        autoscaler: None,
    }
}

impl JobsView for OneJob {
    fn jobs(&self) -> Vec<JobStatus> {
        vec![running_job()]
    }
    fn job(&self, id: &str) -> Option<JobStatus> {
        self.jobs().into_iter().find(|j| j.id == id)
    }
    fn checkpoints(&self, _id: &str) -> Option<Checkpoints> {
        None
    }
    fn results(&self, _id: &str) -> Option<JobResults> {
        None
    }
    fn job_metrics(&self, id: &str) -> Option<JobMetrics> {
        let source = SubtaskMetrics {
            vertex: 0,
            busy_ms_per_s: 200,
            backpressured_ms_per_s: 800,
            backpressured_ms: 4_000,
            watermark_ms: Some(10_000),
            pending: vec![SplitPending {
                split: "bids-0".into(),
                records: 12,
            }],
            output_queue_usage: Some(0.75),
            ..SubtaskMetrics::default()
        };
        let sink = SubtaskMetrics {
            vertex: 1,
            busy_ms_per_s: 1000,
            busy_ms: 5_000,
            latency: Some(sluice_protocol::metrics::Latency {
                markers: 3,
                p50_ms: 20,
                p99_ms: 250,
                max_ms: 300,
            }),
            records_in: 7,
            watermark_ms: Some(i64::MAX),
            ..SubtaskMetrics::default()
        };
        let process = ExecutorProcess {
            executor: 0,
            process: ProcessMetrics {
                cpu_ms: 1_500,
                rss_bytes: 1 << 20,
                net_sent_bytes: 4_096,
                net_received_bytes: 512,
            },
        };
        Some(JobMetrics::new(
            id,
            12_500,
            &vertices(),
            vec![source, sink],
            vec![process],
        ))
    }
    fn workers(&self) -> Vec<WorkerInfo> {
        vec![WorkerInfo {
            id: "worker-1".into(),
            slots: 2,
            used_slots: 2,
            capacity: 1.0,
            host: "h".into(),
            alive: true,
            since_heartbeat_ms: 0,
            process: Some(ProcessMetrics {
                cpu_ms: 2_500,
                rss_bytes: 3 << 20,
                ..ProcessMetrics::default()
            }),
        }]
    }
    fn cluster(&self) -> ClusterInfo {
        ClusterInfo {
            workers_alive: 1,
            slots: 2,
            used_slots: 2,
            jobs: [(JobState::Running, 1)].into(),
            heartbeat_timeout_ms: 0,
            control: String::new(),
        }
    }
    fn cancel(&self, _id: &str) -> Result<JobStatus> {
        Err(Error::Invalid("not here".into()))
    }
    fn savepoint(&self, _id: &str, _request: SavepointRequest) -> Result<SavepointTaken> {
        Err(Error::Invalid("not here".into()))
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn history(&self) -> &History {
        &self.history
    }
}

/// The rendered exposition of [`OneJob`] with one checkpoint observed.
fn rendered() -> String {
    let view = OneJob {
        metrics: Metrics::new(),
        history: History::new(std::time::Duration::from_secs(1)),
    };
    view.metrics.checkpoint_completed(
        "j1",
        &CheckpointFigures {
            duration_ms: 100,
            alignment_ms: 1,
            bytes: 4096,
            uploaded_bytes: 4096,
            in_flight_bytes: 0,
        },
    );
    view.metrics.render(&view)
}

/// The value of the one series whose line starts with `series`.
fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[test]
fn subtask_and_process_figures_are_exposed_with_their_labels() {
    let text = rendered();
    let source = r#"{job="j1",subtask="0",vertex="0",vertex_name="source"}"#;
    let sink = r#"{job="j1",subtask="0",vertex="1",vertex_name="sink"}"#;
    let at = |name: &str, labels: &str| value(&text, &format!("{name}{labels}"));
    assert_eq!(at("sluice_task_backpressured_ms_per_second", source), 800.0);
    assert_eq!(at("sluice_task_busy_ms_per_second", sink), 1000.0);
    assert_eq!(at("sluice_task_backpressured_seconds_total", source), 4.0);
    assert_eq!(at("sluice_task_busy_seconds_total", sink), 5.0);
    // Lag is the view's time minus the watermark; none once input ended.
    assert_eq!(at("sluice_task_watermark_lag_seconds", source), 2.5);
    assert_eq!(at("sluice_task_watermark_seconds", source), 10.0);
    assert!(!text.contains(&format!("sluice_task_watermark_lag_seconds{sink}")));
    assert_eq!(
        at(
            "sluice_task_records_total",
            r#"{direction="in",job="j1",subtask="0",vertex="1",vertex_name="sink"}"#
        ),
        7.0
    );
    assert_eq!(
        at(
            "sluice_source_pending_records",
            r#"{job="j1",split="bids-0",subtask="0",vertex="0",vertex_name="source"}"#
        ),
        12.0
    );
    assert_eq!(
        at(
            "sluice_executor_cpu_seconds_total",
            r#"{executor="0",job="j1"}"#
        ),
        1.5
    );
    assert_eq!(
        at(
            "sluice_executor_resident_memory_bytes",
            r#"{executor="0",job="j1"}"#
        ),
        1048576.0
    );
    assert_eq!(
        at("sluice_worker_cpu_seconds_total", r#"{worker="worker-1"}"#),
        2.5
    );
    assert_eq!(
        at(
            "sluice_worker_resident_memory_bytes",
            r#"{worker="worker-1"}"#
        ),
        3145728.0
    );
    assert_eq!(
        at(
            "sluice_task_latency_seconds",
            r#"{job="j1",quantile="0.99",subtask="0",vertex="1",vertex_name="sink"}"#
        ),
        0.25
    );
    assert_eq!(
        at(
            "sluice_task_queue_usage",
            r#"{direction="out",job="j1",subtask="0",vertex="0",vertex_name="source"}"#
        ),
        0.75
    );
    assert!(
        !text.contains(r#"sluice_task_queue_usage{direction="in",job="j1",subtask="0""#),
        "a source has no inputs"
    );
    assert_eq!(
        at(
            "sluice_executor_network_bytes_total",
            r#"{direction="sent",executor="0",job="j1"}"#
        ),
        4096.0
    );
    assert_eq!(
        at(
            "sluice_executor_network_bytes_total",
            r#"{direction="received",executor="0",job="j1"}"#
        ),
        512.0
    );
    assert!(text.contains("# TYPE sluice_task_busy_seconds_total counter"));
    assert!(text.contains("# TYPE sluice_task_busy_ms_per_second gauge"));
}

/// Metric names in a PromQL expression: `sluice_` identifiers, with a
/// histogram's `_bucket`, `_sum` and `_count` series named by their family.
fn queried(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        into.insert(family.to_string());
        rest = &tail[end..];
    }
}

/// Every `expr` in a dashboard's JSON, at any depth.
fn exprs(v: &serde_json::Value, into: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => into.push(s.clone()),
                    _ => exprs(v, into),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, into)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_sluice_exposes() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana-dashboard.json"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).unwrap();
    let mut all = Vec::new();
    exprs(&json, &mut all);
    let mut names = BTreeSet::new();
    for e in &all {
        queried(e, &mut names);
    }
    assert!(names.len() >= 8, "the dashboard queries {names:?}");
    let text = rendered();
    let exposed: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for n in &names {
        assert!(
            exposed.contains(n.as_str()),
            "the dashboard queries {n}, which /metrics does not expose ({exposed:?})"
        );
    }
}
