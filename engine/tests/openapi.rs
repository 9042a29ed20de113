//! `engine/openapi.json` must describe the API the code serves: the same
//! routes as `api::ROUTES`, no dangling schema references, and schemas that
//! accept what the api.rs types serialize to (and name every field they
//! carry), so the document cannot drift from the code unnoticed.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;
use sluice_engine::checkpoint::coordinator::TaskKey;
use sluice_engine::checkpoint::{CheckpointFigures, CheckpointRecord, CheckpointStats};
use sluice_engine::cluster::api::*;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let text = std::fs::read_to_string(path).expect("engine/openapi.json is readable");
    serde_json::from_str(&text).expect("engine/openapi.json is valid JSON")
}

#[test]
fn routes_match_the_code() {
    let doc = doc();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.0")),
        "an OpenAPI 3.0 document"
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for key in item.as_object().expect("path item").keys() {
            if METHODS.contains(&key.as_str()) {
                documented.insert(format!("{} {path}", key.to_uppercase()));
            }
        }
    }
    let served: BTreeSet<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        documented,
        served,
        "only documented: {:?}; only served: {:?}",
        documented.difference(&served).collect::<Vec<_>>(),
        served.difference(&documented).collect::<Vec<_>>()
    );
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_schema_is_used() {
    let doc = doc();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    let mut used = BTreeSet::new();
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r} does not point into #/components/schemas"));
        assert!(
            schemas.contains_key(name),
            "{r} is referenced but not defined"
        );
        used.insert(name.to_string());
    }
    let defined: BTreeSet<String> = schemas.keys().cloned().collect();
    assert_eq!(
        defined.difference(&used).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "schemas nothing refers to"
    );
}

/// Checks `value` against `schema`: the subset of OpenAPI 3.0 the document
/// uses. Returns where and why it does not match.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(
            doc,
            &doc["components"]["schemas"][name],
            value,
            &format!("{at}<{name}>"),
        );
    }
    if value.is_null() {
        return if schema["nullable"] == Value::Bool(true) {
            Ok(())
        } else {
            Err(format!("{at}: null but not nullable"))
        };
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().try_for_each(|s| check(doc, s, value, at));
    }
    if let Some(any) = schema["oneOf"].as_array() {
        return if any.iter().any(|s| check(doc, s, value, at).is_ok()) {
            Ok(())
        } else {
            Err(format!("{at}: {value} matches no oneOf alternative"))
        };
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    let ty = schema["type"]
        .as_str()
        .ok_or(format!("{at}: schema without type"))?;
    let ok = match ty {
        "object" => {
            let obj = value.as_object().ok_or(format!("{at}: not an object"))?;
            let props = schema["properties"]
                .as_object()
                .ok_or(format!("{at}: no properties"))?;
            for req in schema["required"].as_array().into_iter().flatten() {
                let req = req.as_str().expect("required names are strings");
                if !obj.contains_key(req) {
                    return Err(format!("{at}: required '{req}' missing"));
                }
            }
            for (k, v) in obj {
                let s = props
                    .get(k)
                    .ok_or(format!("{at}: field '{k}' is not in the schema"))?;
                check(doc, s, v, &format!("{at}.{k}"))?;
            }
            // Every documented field must exist in the type.
            for k in props.keys() {
                if !obj.contains_key(k) {
                    return Err(format!("{at}: documented field '{k}' is not serialized"));
                }
            }
            true
        }
        "array" => {
            let items = value.as_array().ok_or(format!("{at}: not an array"))?;
            if let Some(min) = schema["minItems"].as_u64() {
                if (items.len() as u64) < min {
                    return Err(format!("{at}: fewer than {min} items"));
                }
            }
            if let Some(max) = schema["maxItems"].as_u64() {
                if (items.len() as u64) > max {
                    return Err(format!("{at}: more than {max} items"));
                }
            }
            for (i, v) in items.iter().enumerate() {
                check(doc, &schema["items"], v, &format!("{at}[{i}]"))?;
            }
            true
        }
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        other => return Err(format!("{at}: unsupported schema type {other}")),
    };
    if !ok {
        return Err(format!("{at}: {value} is not a {ty}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_i64(), value.as_i64()) {
        if n < min {
            return Err(format!("{at}: {n} below {min}"));
        }
    }
    Ok(())
}

fn assert_matches<T: Serialize>(doc: &Value, name: &str, value: &T) {
    let json = serde_json::to_value(value).expect("serializes");
    let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
    if let Err(e) = check(doc, &schema, &json, "") {
        panic!("{name} does not match its schema: {e}\nvalue: {json:#}");
    }
}

fn description() -> JobDescription {
    JobDescription {
        name: "wordcount".into(),
        parallelism: 2,
        max_parallelism: 128,
        vertices: vec![VertexInfo {
            id: 0,
            name: "source -> map".into(),
            parallelism: 2,
            source: true,
            nodes: vec![(0, "source".into()), (1, "map".into())],
        }],
        graph_nodes: 2,
        checkpoint: Some(CheckpointDescription {
            dir: "ckpt".into(),
            interval_ms: 1000,
            timeout_ms: 10000,
            min_pause_ms: 0,
            retained: 3,
            exactly_once: true,
            restore_from: None,
        }),
    }
}

fn launch() -> ExecutorLaunch {
    ExecutorLaunch {
        artifact: "ab".repeat(32),
        args: vec!["--rate".into(), "10".into()],
        workdir: Some("/tmp".into()),
        spec: ExecutorSpec {
            job_id: "j1".into(),
            attempt: 2,
            executor: 0,
            executors: 2,
            control: "127.0.0.1:9001".into(),
            tasks: vec![TaskKey {
                vertex: 0,
                subtask: 1,
            }],
            bind_host: "127.0.0.1".into(),
            parallelism: 2,
            restore: Some("ckpt/chk-3".into()),
            secret: "5e".repeat(32),
        },
    }
}

#[test]
fn schemas_accept_what_the_types_serialize() {
    let doc = doc();
    let status = JobStatus {
        id: "j1".into(),
        name: "wordcount".into(),
        state: JobState::Restarting,
        attempt: 2,
        restarts: 1,
        artifact: "ab".repeat(32),
        args: vec![],
        submitted_ms: 1,
        updated_ms: 2,
        error: Some("worker lost".into()),
        latest_checkpoint: None,
        rejected_stale: 0,
        placement: vec![Placement {
            task: TaskKey {
                vertex: 0,
                subtask: 0,
            },
            worker: "w1".into(),
            executor: 0,
        }],
        nodes: vec![NodeCounters {
            node: 0,
            records_in: 5,
            records_out: 5,
        }],
        vertices: description().vertices,
        parallelism: 2,
        workdir: Some("/home/me".into()),
        rescaling_to: Some(4),
    };
    assert_matches(&doc, "JobStatus", &status);
    assert_matches(
        &doc,
        "JobResults",
        &JobResults {
            job_id: "j1".into(),
            sinks: vec![SinkResults {
                node: 3,
                name: "parquet".into(),
                columns: vec!["auction".into(), "bids".into()],
                rows: vec![vec!["7".into(), "".into()]],
                updated_ms: 3,
            }],
        },
    );
    assert_matches(
        &doc,
        "SubmitJob",
        &SubmitJob {
            artifact: "ab".repeat(32),
            args: vec!["x".into()],
            parallelism: Some(2),
            workdir: None,
            description: description(),
        },
    );
    let mut no_checkpoints = description();
    no_checkpoints.checkpoint = None;
    assert_matches(&doc, "JobDescription", &no_checkpoints);
    assert_matches(
        &doc,
        "Submitted",
        &Submitted {
            job_id: "j1".into(),
        },
    );
    assert_matches(
        &doc,
        "SavepointRequest",
        &SavepointRequest {
            dir: "sp".into(),
            stop: true,
        },
    );
    assert_matches(
        &doc,
        "RescaleRequest",
        &RescaleRequest {
            parallelism: 4,
            description: description(),
        },
    );
    assert_matches(
        &doc,
        "Rescaled",
        &Rescaled {
            savepoint: "ckpt/rescale-a2-17".into(),
            parallelism: 4,
        },
    );
    assert_matches(
        &doc,
        "SavepointTaken",
        &SavepointTaken {
            location: "sp/chk-9".into(),
        },
    );
    assert_matches(
        &doc,
        "Checkpoints",
        &Checkpoints {
            job_id: "j1".into(),
            dir: Some("ckpt".into()),
            latest: Some(9),
            stats: CheckpointStats {
                completed: 9,
                aborted: 1,
                restarts: 0,
                restored_from: None,
                recent: vec![CheckpointRecord {
                    id: 9,
                    savepoint: false,
                    figures: CheckpointFigures {
                        duration_ms: 12,
                        alignment_ms: 1,
                        bytes: 1024,
                        uploaded_bytes: 512,
                    },
                }],
            },
        },
    );
    assert_matches(
        &doc,
        "RegisterWorker",
        &RegisterWorker {
            worker_id: None,
            slots: 4,
            capacity: 1.5,
            host: "127.0.0.1".into(),
        },
    );
    assert_matches(
        &doc,
        "Registered",
        &Registered {
            worker_id: "w1".into(),
            heartbeat_interval_ms: 500,
        },
    );
    assert_matches(
        &doc,
        "Heartbeat",
        &Heartbeat {
            executors: vec![
                ExecutorReport {
                    job_id: "j1".into(),
                    attempt: 2,
                    executor: 0,
                    pid: 4242,
                    exit: None,
                },
                ExecutorReport {
                    job_id: "j1".into(),
                    attempt: 1,
                    executor: 1,
                    pid: 4243,
                    exit: Some(-1),
                },
            ],
        },
    );
    assert_matches(
        &doc,
        "HeartbeatReply",
        &HeartbeatReply {
            executors: vec![launch()],
            prefetch: vec!["ab".repeat(32)],
        },
    );
    assert_matches(
        &doc,
        "WorkerInfo",
        &WorkerInfo {
            id: "w1".into(),
            slots: 4,
            used_slots: 2,
            capacity: 1.0,
            host: "127.0.0.1".into(),
            alive: true,
            since_heartbeat_ms: 120,
        },
    );
    assert_matches(
        &doc,
        "ClusterInfo",
        &ClusterInfo {
            workers_alive: 1,
            slots: 4,
            used_slots: 2,
            jobs: vec![(JobState::Running, 1), (JobState::Finished, 3)],
            heartbeat_timeout_ms: 3000,
            control: "127.0.0.1:9001".into(),
        },
    );
    assert_matches(
        &doc,
        "ApiError",
        &ApiError {
            error: "no such job".into(),
        },
    );
}

#[test]
fn every_job_state_is_documented() {
    let doc = doc();
    let states = [
        JobState::Created,
        JobState::Running,
        JobState::Restarting,
        JobState::Finished,
        JobState::Failed,
        JobState::Canceled,
    ];
    let documented = doc["components"]["schemas"]["JobState"]["enum"]
        .as_array()
        .expect("enum")
        .clone();
    let serialized: Vec<Value> = states
        .iter()
        .map(|s| serde_json::to_value(s).expect("serializes"))
        .collect();
    assert_eq!(documented, serialized);
}
