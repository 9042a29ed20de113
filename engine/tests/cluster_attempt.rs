//! A job attempt across real processes: the test binary re-executes itself
//! as task executors (`SLUICE_EXECUTOR` set: the test function builds the
//! job, runs `execute()` and returns), the test plays the coordinator with
//! a `ControlServer`, and the union of the executors' output must equal an
//! embedded run of the same job. Also: checkpointing across processes
//! (manifests are written, the final checkpoint completes), and fencing of
//! hellos from stale attempts.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::checkpoint::coordinator::TaskKey;
use sluice_engine::checkpoint::{CheckpointConfig, Storage};
use sluice_engine::cluster::api::{ExecutorSpec, JobDescription};
use sluice_engine::cluster::attempt::{
    AttemptConfig, AttemptEvent, AttemptHandle, CheckpointSetup, ControlServer,
};
use sluice_engine::cluster::control::{read_frame, write_frame, ToCoordinator, ToExecutor};
use sluice_engine::plan::plan;
use sluice_engine::runtime::JobConfig;
use sluice_engine::{Collector, Env, Operator, OperatorContext, Result, Sink};

/// Generous bound for things that must happen; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(60);
/// Where an executor's sink writes (set by the parent).
const OUT_ENV: &str = "SLUICE_TEST_OUT";
/// The checkpoint directory an executor's job config names (set by the
/// parent when the job checkpoints).
const CK_ENV: &str = "SLUICE_TEST_CK";
const PARALLELISM: usize = 3;
const JOB_ID: &str = "job-1";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn out_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("sum", DataType::Int64, false),
    ]))
}

fn input() -> Vec<RecordBatch> {
    (0..40)
        .map(|b| {
            let v: Vec<i64> = (0..64).map(|i| b * 64 + i).collect();
            let k: Vec<i64> = v.iter().map(|x| (x * 7919) % 13).collect();
            RecordBatch::try_new(
                schema(),
                vec![Arc::new(Int64Array::from(k)), Arc::new(Int64Array::from(v))],
            )
            .unwrap()
        })
        .collect()
}

/// A running sum per key: its output depends on every row of a key
/// reaching the same subtask in order.
#[derive(Default)]
struct RunningSum {
    sums: HashMap<i64, i64>,
}

impl Operator for RunningSum {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let k = batch.column(0).as_primitive::<Int64Type>();
        let v = batch.column(1).as_primitive::<Int64Type>();
        let sums: Vec<i64> = (0..batch.num_rows())
            .map(|i| {
                let s = self.sums.entry(k.value(i)).or_default();
                *s += v.value(i);
                *s
            })
            .collect();
        out.emit(RecordBatch::try_new(
            out_schema(),
            vec![
                batch.column(0).clone(),
                batch.column(1).clone(),
                Arc::new(Int64Array::from(sums)),
            ],
        )?);
        Ok(())
    }
}

/// Writes rows as `k,v,sum` lines to `DIR/part-SUBTASK`.
struct LineSink {
    dir: PathBuf,
    file: Option<std::fs::File>,
}

impl Sink for LineSink {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        let path = self.dir.join(format!("part-{}", ctx.subtask));
        self.file =
            Some(std::fs::File::create(&path).map_err(|e| {
                sluice_engine::Error::io(format!("creating {}", path.display()), e)
            })?);
        Ok(())
    }

    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        let mut text = String::new();
        for i in 0..batch.num_rows() {
            let cols: Vec<String> = (0..batch.num_columns())
                .map(|c| {
                    batch
                        .column(c)
                        .as_primitive::<Int64Type>()
                        .value(i)
                        .to_string()
                })
                .collect();
            text.push_str(&cols.join(","));
            text.push('\n');
        }
        let f = self.file.as_mut().expect("opened");
        f.write_all(text.as_bytes())
            .map_err(|e| sluice_engine::Error::io("writing output", e))
    }
}

/// The job every process builds: one source, a keyed running sum at
/// parallelism 3, a sink at parallelism 3 (chained to the sum).
fn job(out: &Path, checkpoint: Option<&Path>) -> Env {
    let env = Env::with_config(JobConfig {
        name: "cluster-test".into(),
        parallelism: PARALLELISM,
        checkpoint: checkpoint.map(|d| {
            let mut c = CheckpointConfig::new(d);
            c.interval = Duration::from_millis(50);
            c
        }),
        ..JobConfig::default()
    });
    let out = out.to_path_buf();
    env.from_batches("numbers", schema(), input())
        .keyed_by(&["k"])
        .transform("running_sum", out_schema(), |_| {
            Ok(Box::new(RunningSum::default()))
        })
        .sink_fn("lines", move |_| {
            Ok(Box::new(LineSink {
                dir: out.clone(),
                file: None,
            }))
        });
    env
}

/// In a child process started by a test: play the executor and return true.
fn as_executor() -> bool {
    if std::env::var("SLUICE_EXECUTOR").is_err() {
        return false;
    }
    let out = PathBuf::from(std::env::var(OUT_ENV).expect("output dir"));
    let ck = std::env::var(CK_ENV).ok().map(PathBuf::from);
    let r = job(&out, ck.as_deref()).execute();
    if let Err(e) = &r {
        eprintln!("executor failed: {e}");
    }
    r.expect("the executor's run");
    true
}

fn lines(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        all.extend(text.lines().map(str::to_string));
    }
    all.sort();
    all
}

fn embedded_lines() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), None).execute().unwrap();
    lines(dir.path())
}

fn description(out: &Path, checkpoint: Option<&Path>) -> JobDescription {
    let env = job(out, checkpoint);
    let graph = env.graph().unwrap();
    let config = env.config();
    let p = plan(&graph, config.parallelism, config.max_parallelism, true).unwrap();
    JobDescription::from_plan(&graph, &p, &config)
}

/// Subtask `s` of every vertex runs on executor `s % executors`.
fn placement(d: &JobDescription, executors: usize) -> Vec<(TaskKey, usize)> {
    d.tasks()
        .into_iter()
        .map(|t| (t, t.subtask % executors))
        .collect()
}

struct Cluster {
    children: Vec<Child>,
    _specs: tempfile::TempDir,
}

impl Cluster {
    /// Starts one executor process per index of attempt 1 of [`JOB_ID`],
    /// re-running `test`.
    fn start(
        test: &str,
        server: &ControlServer,
        placement: &[(TaskKey, usize)],
        executors: usize,
        out: &Path,
        checkpoint: Option<&Path>,
    ) -> Cluster {
        let specs = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children = (0..executors)
            .map(|i| {
                let spec = ExecutorSpec {
                    job_id: JOB_ID.into(),
                    attempt: 1,
                    executor: i,
                    executors,
                    control: server.local_addr().to_string(),
                    tasks: placement
                        .iter()
                        .filter(|(_, e)| *e == i)
                        .map(|(t, _)| *t)
                        .collect(),
                    bind_host: "127.0.0.1".into(),
                    parallelism: PARALLELISM,
                    restore: None,
                };
                let path = specs.path().join(format!("executor-{i}.json"));
                std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
                let mut cmd = Command::new(&exe);
                cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
                    .env("SLUICE_EXECUTOR", &path)
                    .env(OUT_ENV, out);
                if let Some(ck) = checkpoint {
                    cmd.env(CK_ENV, ck);
                }
                cmd.spawn().unwrap()
            })
            .collect();
        Cluster {
            children,
            _specs: specs,
        }
    }

    /// Waits for every executor process; true if all exited cleanly.
    fn wait(mut self) -> bool {
        let exits: Vec<bool> = self
            .children
            .iter_mut()
            .map(|c| c.wait().unwrap().success())
            .collect();
        exits.into_iter().all(|ok| ok)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn next_event(a: &AttemptHandle) -> AttemptEvent {
    a.events()
        .recv_timeout(PATIENCE)
        .expect("an attempt event within the patience bound")
}

/// Runs the job over `executors` processes; returns the output lines and
/// the attempt (for its counters).
fn run_distributed(
    test: &str,
    executors: usize,
    checkpoint: Option<&Path>,
) -> (Vec<String>, AttemptHandle) {
    let out = tempfile::tempdir().unwrap();
    let d = description(out.path(), checkpoint);
    let placement = placement(&d, executors);
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let setup = checkpoint.map(|dir| CheckpointSetup {
        config: d.checkpoint.as_ref().unwrap().to_config(),
        root: Storage::open(&dir.into()).unwrap(),
        next_id: 1,
    });
    let attempt = server
        .start_attempt(AttemptConfig {
            job_id: JOB_ID.into(),
            attempt: 1,
            description: d,
            placement: placement.clone(),
            executors,
            checkpoint: setup,
            stats: Arc::new(Mutex::new(Default::default())),
        })
        .unwrap();
    let cluster = Cluster::start(test, &server, &placement, executors, out.path(), checkpoint);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    assert_eq!(next_event(&attempt), AttemptEvent::Finished);
    assert!(cluster.wait(), "every executor exits cleanly");
    (lines(out.path()), attempt)
}

#[test]
fn three_executors_match_the_embedded_run() {
    if as_executor() {
        return;
    }
    let (got, attempt) = run_distributed("three_executors_match_the_embedded_run", 3, None);
    let want = embedded_lines();
    assert_eq!(want.len(), 40 * 64);
    assert_eq!(got, want);
    // The sink's node counted every row, summed over the executors.
    let m = attempt.metrics();
    assert_eq!(m.iter().map(|c| c.records_in).max(), Some(40 * 64));
    assert_eq!(attempt.rejected_stale(), 0);
}

#[test]
fn checkpoints_across_executors() {
    if as_executor() {
        return;
    }
    let ck = tempfile::tempdir().unwrap();
    let (got, _) = run_distributed("checkpoints_across_executors", 2, Some(ck.path()));
    assert_eq!(got, embedded_lines());
    let manifests: Vec<PathBuf> = std::fs::read_dir(ck.path())
        .unwrap()
        .map(|e| e.unwrap().path().join("_manifest.json"))
        .filter(|p| p.exists())
        .collect();
    assert!(!manifests.is_empty(), "a checkpoint manifest was written");
    // The newest is the final checkpoint, covering every subtask.
    let newest = manifests.iter().max().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
    assert_eq!(m["finished"], serde_json::Value::Bool(true));
    assert_eq!(m["job"], "cluster-test");
}

fn hello(addr: std::net::SocketAddr, job: &str, attempt: u64) -> (TcpStream, ToExecutor) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write_frame(
        &mut s,
        &ToCoordinator::Hello {
            job_id: job.into(),
            attempt,
            executor: 0,
            exchange: "127.0.0.1:1".into(),
        },
    )
    .unwrap();
    let answer = read_frame(&mut s).unwrap().expect("an answer to the hello");
    (s, answer)
}

#[test]
fn stale_hellos_are_rejected_and_counted() {
    let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let d = description(out.path(), None);
    let start = |attempt| {
        server
            .start_attempt(AttemptConfig {
                job_id: "job-s".into(),
                attempt,
                description: d.clone(),
                placement: placement(&d, 1),
                executors: 1,
                checkpoint: None,
                stats: Arc::default(),
            })
            .unwrap()
    };
    let a2 = start(2);
    let (_s, answer) = hello(server.local_addr(), "job-s", 1);
    assert!(matches!(answer, ToExecutor::Rejected { .. }), "{answer:?}");
    assert_eq!(a2.rejected_stale(), 1);
    let (_s, answer) = hello(server.local_addr(), "another-job", 2);
    assert!(matches!(answer, ToExecutor::Rejected { .. }), "{answer:?}");
    assert_eq!(a2.rejected_stale(), 1, "another job's refusals are its own");

    // The current attempt is welcome; a newer one supersedes it and its
    // executor is told to stop.
    let (mut current, answer) = hello(server.local_addr(), "job-s", 2);
    assert!(matches!(answer, ToExecutor::Peers { ref exchange, .. } if exchange.len() == 1));
    assert_eq!(next_event(&a2), AttemptEvent::Running);
    let a3 = start(3);
    let cancel: ToExecutor = read_frame(&mut current).unwrap().expect("a cancel");
    assert!(matches!(cancel, ToExecutor::Cancel { .. }), "{cancel:?}");
    let (_s, answer) = hello(server.local_addr(), "job-s", 2);
    assert!(matches!(answer, ToExecutor::Rejected { .. }), "{answer:?}");
    assert_eq!(a3.rejected_stale(), 2);
    assert!(
        a2.events().try_recv().is_err(),
        "a superseded attempt reports nothing"
    );
}
