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

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_cluster::attempt::{
    AttemptConfig, AttemptEvent, AttemptHandle, CheckpointSetup, CheckpointStart, ControlServer,
};
use sluice_engine::checkpoint::coordinator::TaskKey;
use sluice_engine::checkpoint::store::pin_savepoint;
use sluice_engine::checkpoint::{CheckpointConfig, Location, Storage};
use sluice_engine::data::CheckpointId;
use sluice_engine::plan::plan;
use sluice_engine::runtime::JobConfig;
use sluice_engine::state::snapshot::{with_key_groups, OperatorSnapshot, RestoredState};
use sluice_engine::testing::VecSource;
use sluice_engine::{Collector, Env, Operator, OperatorContext, Result, Sink, Source, SourcePoll};
use sluice_protocol::api::{ExecutorSpec, JobDescription};
use sluice_protocol::control::{read_frame, write_frame, ToCoordinator, ToExecutor};

/// Generous bound for things that must happen; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(60);
/// Where an executor's sink writes (set by the parent).
const OUT_ENV: &str = "SLUICE_TEST_OUT";
/// The checkpoint directory an executor's job config names (set by the
/// parent when the job checkpoints).
const CK_ENV: &str = "SLUICE_TEST_CK";
/// The executor's [`Mode`].
const MODE_ENV: &str = "SLUICE_TEST_MODE";
const PARALLELISM: usize = 3;
const JOB_ID: &str = "job-1";
/// The attempts' secret, which executors present to the coordinator and
/// to each other.
const SECRET: &str = "5ec2e7";

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

fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
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
/// reaching the same subtask in order, and its sums are keyed state.
#[derive(Default)]
struct RunningSum {
    sums: HashMap<i64, i64>,
    /// Fail on this value (the failure test).
    fail_at: Option<i64>,
}

impl Operator for RunningSum {
    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let (k, sum): (Vec<i64>, Vec<i64>) = self.sums.iter().map(|(k, s)| (*k, *s)).unzip();
        let k: ArrayRef = Arc::new(Int64Array::from(k));
        let batch = RecordBatch::try_new(
            state_schema(),
            vec![k.clone(), Arc::new(Int64Array::from(sum))],
        )?;
        Ok(OperatorSnapshot::keyed(vec![with_key_groups(
            batch,
            &[k],
            ctx.max_parallelism,
        )?]))
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        for b in state.keyed {
            let k = b.column(0).as_primitive::<Int64Type>();
            let s = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                self.sums.insert(k.value(i), s.value(i));
            }
        }
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let k = batch.column(0).as_primitive::<Int64Type>();
        let v = batch.column(1).as_primitive::<Int64Type>();
        if let Some(f) = self.fail_at {
            if v.values().contains(&f) {
                return Err(sluice_engine::Error::User(format!("boom at {f}")));
            }
        }
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

/// Writes rows as `k,v,sum` lines. Without checkpointing straight to
/// `DIR/part-SUBTASK`; with checkpointing exactly once: the lines of an
/// epoch are staged at its barrier (and kept in the snapshot) and written
/// to `DIR/part-SUBTASK-CHECKPOINT` when the checkpoint completes, or when
/// a restore finds them staged in the restored checkpoint (rewriting the
/// same file is idempotent).
struct LineSink {
    dir: PathBuf,
    file: Option<std::fs::File>,
    buffer: Vec<String>,
    staged: std::collections::BTreeMap<u64, Vec<String>>,
}

impl LineSink {
    fn new(dir: PathBuf) -> Self {
        LineSink {
            dir,
            file: None,
            buffer: Vec::new(),
            staged: Default::default(),
        }
    }

    fn publish(&self, subtask: usize, id: u64, lines: &[String]) -> Result<()> {
        let path = self.dir.join(format!("part-{subtask}-{id:06}"));
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text)
            .map_err(|e| sluice_engine::Error::io(format!("writing {}", path.display()), e))
    }
}

impl Sink for LineSink {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        if ctx.checkpointing {
            return Ok(());
        }
        let path = self.dir.join(format!("part-{}", ctx.subtask));
        self.file =
            Some(std::fs::File::create(&path).map_err(|e| {
                sluice_engine::Error::io(format!("creating {}", path.display()), e)
            })?);
        Ok(())
    }

    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        let mut lines = Vec::new();
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
            lines.push(cols.join(","));
        }
        match self.file.as_mut() {
            Some(f) => {
                let mut text = lines.join("\n");
                text.push('\n');
                f.write_all(text.as_bytes())
                    .map_err(|e| sluice_engine::Error::io("writing output", e))
            }
            None => {
                self.buffer.extend(lines);
                Ok(())
            }
        }
    }

    fn snapshot(&mut self, id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let epoch = std::mem::take(&mut self.buffer);
        self.staged.insert(id.0, epoch);
        // Entry: subtask, checkpoint, then the lines.
        let entries = self
            .staged
            .iter()
            .map(|(id, lines)| {
                let mut e = format!("{}\n{id}\n", ctx.subtask);
                e.push_str(&lines.join("\n"));
                e.into_bytes()
            })
            .collect();
        Ok(OperatorSnapshot::entries(entries))
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        for e in state.entries {
            let text = String::from_utf8(e).unwrap();
            let mut parts = text.splitn(3, '\n');
            let subtask: usize = parts.next().unwrap().parse().unwrap();
            let id: u64 = parts.next().unwrap().parse().unwrap();
            let lines: Vec<String> = parts
                .next()
                .unwrap_or("")
                .lines()
                .map(str::to_string)
                .collect();
            if subtask == ctx.subtask && id <= state.checkpoint.0 && !lines.is_empty() {
                self.publish(subtask, id, &lines)?;
            }
        }
        Ok(())
    }

    fn checkpoint_complete(&mut self, id: CheckpointId, ctx: &OperatorContext) -> Result<()> {
        let done: Vec<u64> = self.staged.range(..=id.0).map(|(k, _)| *k).collect();
        for k in done {
            let lines = self.staged.remove(&k).unwrap();
            if !lines.is_empty() {
                self.publish(ctx.subtask, k, &lines)?;
            }
        }
        Ok(())
    }
}

/// How an executor's job behaves (the graph is the same in every mode).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    /// The source waits between batches, so the job runs long enough to
    /// take a savepoint.
    Slow,
    /// The running sum fails on one value (the source paced as in slow
    /// mode); an executor that finishes normally exits failing.
    Fail,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Slow => "slow",
            Mode::Fail => "fail",
        }
    }
    fn from_env() -> Mode {
        match std::env::var(MODE_ENV).as_deref() {
            Ok("slow") => Mode::Slow,
            Ok("fail") => Mode::Fail,
            _ => Mode::Normal,
        }
    }
}

/// Emits the input batches, waiting a little before each in slow mode.
struct PacedSource {
    inner: VecSource,
    pause: Duration,
}

impl Source for PacedSource {
    fn poll(&mut self, ctx: &OperatorContext) -> Result<SourcePoll> {
        std::thread::sleep(self.pause);
        self.inner.poll(ctx)
    }
    fn supports_checkpoints(&self) -> bool {
        true
    }
    fn snapshot(&mut self, id: CheckpointId) -> Result<Vec<Vec<u8>>> {
        self.inner.snapshot(id)
    }
    fn restore(&mut self, entries: Vec<Vec<u8>>, ctx: &OperatorContext) -> Result<()> {
        self.inner.restore(entries, ctx)
    }
}

/// The job every process builds: one source, a keyed running sum at
/// parallelism 3, a sink at parallelism 3 (chained to the sum).
fn job(out: &Path, checkpoint: Option<&Path>) -> Env {
    job_in(out, checkpoint, Mode::Normal)
}

fn job_in(out: &Path, checkpoint: Option<&Path>, mode: Mode) -> Env {
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
    // The failure test is paced too, so an executor the failure did not
    // stop would still be running when it comes, and would then finish.
    let paced = matches!(mode, Mode::Slow | Mode::Fail);
    let pause = Duration::from_millis(if paced { 40 } else { 0 });
    let fail_at = (mode == Mode::Fail).then_some(1000);
    env.source_fn("numbers", schema(), move |_| {
        Ok(Box::new(PacedSource {
            inner: VecSource::new(input()),
            pause,
        }))
    })
    .set_parallelism(1)
    .keyed_by(&["k"])
    .transform("running_sum", out_schema(), move |_| {
        Ok(Box::new(RunningSum {
            fail_at,
            ..RunningSum::default()
        }))
    })
    .sink_fn("lines", move |_| Ok(Box::new(LineSink::new(out.clone()))));
    env
}

/// In a child process started by a test: play the executor (or describe
/// the job, which exits) and return true.
fn as_executor() -> bool {
    if std::env::var("SLUICE_DESCRIBE").is_ok() {
        let out = tempfile::tempdir().unwrap();
        let r = job(out.path(), None).execute();
        panic!("describe mode returned instead of exiting: {:?}", r.err());
    }
    if std::env::var("SLUICE_EXECUTOR").is_err() {
        return false;
    }
    let out = PathBuf::from(std::env::var(OUT_ENV).expect("output dir"));
    let ck = std::env::var(CK_ENV).ok().map(PathBuf::from);
    let mode = Mode::from_env();
    let r = job_in(&out, ck.as_deref(), mode).execute();
    match r {
        Ok(_) if mode == Mode::Fail => {
            eprintln!("executor finished although a task of its attempt failed");
            std::process::exit(3);
        }
        Ok(_) => {}
        Err(e) if mode == Mode::Fail => eprintln!("executor failed as planned: {e}"),
        // A failed executor exits failing, without a test harness panic.
        Err(e) => {
            eprintln!("executor failed: {e}");
            std::process::exit(2);
        }
    }
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

/// Equal sorted rows; on a difference, says how, without printing thousands.
fn assert_same_rows(got: Vec<String>, want: Vec<String>) {
    if got != want {
        let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).take(5).collect();
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<&String> = got.iter().filter(|l| !seen.insert(*l)).take(5).collect();
        panic!(
            "{} rows, want {}; missing e.g. {missing:?}; duplicated e.g. {twice:?}",
            got.len(),
            want.len()
        );
    }
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
    sluice_engine::executor::describe::describe(&graph, &p, &config)
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

/// One attempt's executor processes.
struct Launch<'a> {
    /// The test function the children re-run.
    test: &'a str,
    attempt: u64,
    placement: &'a [(TaskKey, usize)],
    executors: usize,
    out: &'a Path,
    checkpoint: Option<&'a Path>,
    restore: Option<String>,
    mode: Mode,
}

impl Cluster {
    /// Starts one executor process per index of an attempt of [`JOB_ID`].
    fn start(server: &ControlServer, l: &Launch<'_>) -> Cluster {
        let specs = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children = (0..l.executors)
            .map(|i| {
                let spec = ExecutorSpec {
                    protocol: sluice_protocol::PROTOCOL_VERSION,
                    job_id: JOB_ID.into(),
                    attempt: l.attempt,
                    executor: i,
                    executors: l.executors,
                    control: server.local_addr().to_string(),
                    tasks: l
                        .placement
                        .iter()
                        .filter(|(_, e)| *e == i)
                        .map(|(t, _)| *t)
                        .collect(),
                    bind_host: "127.0.0.1".into(),
                    parallelism: PARALLELISM,
                    restore: l.restore.clone(),
                    secret: SECRET.into(),
                };
                let path = specs.path().join(format!("executor-{i}.json"));
                std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
                let mut cmd = Command::new(&exe);
                cmd.args(["--exact", l.test, "--nocapture", "--test-threads=1"])
                    .env("SLUICE_EXECUTOR", &path)
                    .env(OUT_ENV, l.out)
                    .env(MODE_ENV, l.mode.name());
                if let Some(ck) = l.checkpoint {
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

/// The next event, past `Finishing` (progress, not an outcome).
fn next_event(a: &AttemptHandle) -> AttemptEvent {
    loop {
        let e = a
            .events()
            .recv_timeout(PATIENCE)
            .expect("an attempt event within the patience bound");
        if e != AttemptEvent::Finishing {
            return e;
        }
    }
}

fn start_attempt(
    server: &ControlServer,
    d: &JobDescription,
    attempt: u64,
    executors: usize,
    checkpoint: Option<&Path>,
) -> AttemptHandle {
    let setup = checkpoint.map(|dir| CheckpointSetup {
        config: sluice_engine::executor::describe::checkpoint_config(
            d.checkpoint.as_ref().unwrap(),
        ),
        root: Storage::open(&dir.into()).unwrap(),
        // After every id an earlier attempt used.
        next_id: 1 + 100 * (attempt - 1),
    });
    server
        .start_attempt(AttemptConfig {
            job_id: JOB_ID.into(),
            attempt,
            description: d.clone(),
            placement: placement(d, executors),
            executors,
            checkpoint: setup,
            stats: Arc::new(Mutex::new(Default::default())),
            secret: SECRET.into(),
        })
        .unwrap()
}

/// A test's coordinator side: the job's output (and checkpoint)
/// directories, its description and the control server.
struct Coordinator {
    out: tempfile::TempDir,
    ck: Option<tempfile::TempDir>,
    d: JobDescription,
    server: ControlServer,
}

impl Coordinator {
    /// `None` in a child process (which played the executor): the test
    /// returns. Both attempts of a restore write into the one output
    /// directory: a restore publishes the restored checkpoint's staged
    /// epoch again, to the same file.
    fn new(checkpoints: bool) -> Option<Coordinator> {
        if as_executor() {
            return None;
        }
        let ck = checkpoints.then(|| tempfile::tempdir().unwrap());
        let out = tempfile::tempdir().unwrap();
        let d = description(out.path(), ck.as_ref().map(|c| c.path()));
        let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Some(Coordinator { out, ck, d, server })
    }

    fn ck(&self) -> Option<&Path> {
        self.ck.as_ref().map(|c| c.path())
    }

    fn start(&self, attempt: u64, executors: usize) -> AttemptHandle {
        start_attempt(&self.server, &self.d, attempt, executors, self.ck())
    }

    /// Starts the executor processes of `attempt`.
    fn launch(
        &self,
        test: &str,
        attempt: u64,
        executors: usize,
        restore: Option<String>,
        mode: Mode,
    ) -> Cluster {
        Cluster::start(
            &self.server,
            &Launch {
                test,
                attempt,
                placement: &placement(&self.d, executors),
                executors,
                out: self.out.path(),
                checkpoint: self.ck(),
                restore,
                mode,
            },
        )
    }
}

/// Runs the job over `executors` processes; returns the output lines and
/// the attempt (for its counters).
fn run_distributed(c: &Coordinator, test: &str, executors: usize) -> (Vec<String>, AttemptHandle) {
    let attempt = c.start(1, executors);
    let cluster = c.launch(test, 1, executors, None, Mode::Normal);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    assert_eq!(next_event(&attempt), AttemptEvent::Finished);
    assert!(cluster.wait(), "every executor exits cleanly");
    (lines(c.out.path()), attempt)
}

#[test]
fn three_executors_match_the_embedded_run() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let (got, attempt) = run_distributed(&c, "three_executors_match_the_embedded_run", 3);
    let want = embedded_lines();
    assert_eq!(want.len(), 40 * 64);
    assert_same_rows(got, want);
    // The sink's node counted every row, summed over the executors.
    let m = attempt.metrics();
    assert_eq!(m.iter().map(|c| c.records_in).max(), Some(40 * 64));
    assert_eq!(attempt.rejected_stale(), 0);
}

#[test]
fn checkpoints_across_executors() {
    let Some(c) = Coordinator::new(true) else {
        return;
    };
    let ck = c.ck().unwrap();
    let (got, _) = run_distributed(&c, "checkpoints_across_executors", 2);
    assert_same_rows(got, embedded_lines());
    let manifests: Vec<PathBuf> = std::fs::read_dir(ck)
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

    // A next attempt would resume from that final checkpoint.
    let start = CheckpointStart::find(&description(ck, Some(ck)))
        .unwrap()
        .expect("the job checkpoints");
    let id = m["id"].as_u64().unwrap();
    assert_eq!(start.restored_from, Some(id));
    assert_eq!(
        start.restore.unwrap().local_path().unwrap(),
        newest.parent().unwrap()
    );
    assert_eq!(start.setup.next_id, id + 1);
    assert_eq!(start.min_attempt, 2);
}

fn hello(addr: std::net::SocketAddr, job: &str, attempt: u64) -> (TcpStream, ToExecutor) {
    hello_with(addr, job, attempt, SECRET)
}

fn hello_with(
    addr: std::net::SocketAddr,
    job: &str,
    attempt: u64,
    secret: &str,
) -> (TcpStream, ToExecutor) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write_frame(
        &mut s,
        &ToCoordinator::Hello {
            protocol: sluice_protocol::PROTOCOL_VERSION,
            job_id: job.into(),
            attempt,
            executor: 0,
            exchange: "127.0.0.1:1".into(),
            secret: secret.into(),
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
                secret: SECRET.into(),
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
    let (_s, answer) = hello_with(server.local_addr(), "job-s", 2, "guessed");
    assert!(
        matches!(&answer, ToExecutor::Rejected { reason } if reason.contains("wrong secret")),
        "{answer:?}"
    );
    assert_eq!(
        a2.rejected_stale(),
        2,
        "a wrong secret is refused and counted"
    );

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
    assert_eq!(
        a3.rejected_stale(),
        1,
        "counted once, in the current attempt"
    );
    assert_eq!(a2.rejected_stale(), 2);
    assert!(
        a2.events().try_recv().is_err(),
        "a superseded attempt reports nothing"
    );
}

#[test]
fn a_failing_task_fails_the_attempt_and_cancels_the_others() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let attempt = c.start(1, 3);
    let test = "a_failing_task_fails_the_attempt_and_cancels_the_others";
    let cluster = c.launch(test, 1, 3, None, Mode::Fail);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    match next_event(&attempt) {
        AttemptEvent::Failed { error: e, .. } => assert!(e.contains("boom at 1000"), "{e}"),
        e => panic!("expected a failure, got {e:?}"),
    }
    // Every executor ends, none of them normally: the failed one reports,
    // the others are stopped (an executor that ran to its end would exit
    // failing).
    assert!(cluster.wait());
    assert!(attempt.events().try_recv().is_err(), "one terminal event");
}

#[test]
fn stop_with_savepoint_then_a_new_attempt_restores() {
    let Some(c) = Coordinator::new(true) else {
        return;
    };
    let test = "stop_with_savepoint_then_a_new_attempt_restores";
    let savepoint = c.ck().unwrap().join("savepoint-1");

    let first = c.start(1, 2);
    let cluster = c.launch(test, 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&first), AttemptEvent::Running);
    std::thread::sleep(Duration::from_millis(300));
    let location = first.savepoint(savepoint.as_path().into(), true).unwrap();
    assert_eq!(next_event(&first), AttemptEvent::Finished);
    assert!(
        cluster.wait(),
        "every executor of the stopped attempt exits cleanly"
    );
    let before = lines(c.out.path());
    assert!(
        !before.is_empty() && before.len() < 40 * 64,
        "{} rows",
        before.len()
    );

    // The coordinator pinned the savepoint in the checkpoint directory
    // before taking it (its completion committed the sinks' output), so a
    // restart resumes from it rather than from an older checkpoint; a pin
    // whose savepoint never completed is passed over.
    let ck = c.ck().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(savepoint.join("_manifest.json")).unwrap()).unwrap();
    let savepoint_id = manifest["id"].as_u64().unwrap();
    let pinned = CheckpointStart::find(&c.d)
        .unwrap()
        .expect("the job checkpoints");
    assert_eq!(pinned.restored_from, Some(savepoint_id));
    assert_eq!(pinned.setup.next_id, savepoint_id + 1);
    let root = Storage::open(&ck.into()).unwrap();
    let never_taken = Location::from(ck.join("savepoint-never-taken").to_str().unwrap());
    pin_savepoint(&root, Some(&never_taken)).unwrap();
    let unpinned = CheckpointStart::find(&c.d).unwrap().unwrap();
    assert!(
        unpinned.restored_from < Some(savepoint_id),
        "{:?}",
        unpinned.restored_from
    );
    pin_savepoint(&root, Some(&location)).unwrap();

    let second = c.start(2, 2);
    let restore = Some(location.as_str().to_string());
    let cluster = c.launch(test, 2, 2, restore, Mode::Normal);
    let events: Vec<AttemptEvent> = (0..3)
        .map(|_| second.events().recv_timeout(PATIENCE).expect("an event"))
        .collect();
    assert_eq!(
        events,
        [
            AttemptEvent::Running,
            AttemptEvent::Finishing,
            AttemptEvent::Finished
        ],
        "every task finishes its input, the final checkpoint commits, the attempt ends"
    );
    assert!(cluster.wait());
    // Exactly once across the two attempts: the rows before the savepoint
    // and the rows after it, with the restored sums, are the embedded run's.
    assert_same_rows(lines(c.out.path()), embedded_lines());
}

#[test]
fn describe_mode_writes_the_plan_at_the_given_parallelism() {
    if as_executor() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.json");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "describe_mode_writes_the_plan_at_the_given_parallelism",
            "--nocapture",
        ])
        .env("SLUICE_DESCRIBE", &path)
        .env("SLUICE_PARALLELISM", "2")
        .status()
        .unwrap();
    assert!(status.success());
    let d: JobDescription = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(d.name, "cluster-test");
    assert_eq!(d.parallelism, 2);
    assert_eq!(d.graph_nodes, 3);
    let shape: Vec<(usize, bool, usize)> = d
        .vertices
        .iter()
        .map(|v| (v.parallelism, v.source, v.nodes.len()))
        .collect();
    // The source alone at 1; the sum with the sink chained at 2.
    assert_eq!(shape, vec![(1, true, 1), (2, false, 2)]);
    assert_eq!(d.slots(), 2);
    assert!(d.checkpoint.is_none());
}

#[test]
fn cancel_stops_every_executor() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let attempt = c.start(1, 2);
    let cluster = c.launch("cancel_stops_every_executor", 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    attempt.cancel("the test cancels");
    // A cancelled executor's run is an error: the children exit failing,
    // long before the slow input (1.6 s) would have ended.
    let started = std::time::Instant::now();
    assert!(!cluster.wait(), "cancelled executors report failure");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        attempt.events().try_recv().is_err(),
        "a cancel sends no event"
    );
}

#[test]
fn a_killed_executor_fails_the_attempt() {
    let Some(c) = Coordinator::new(false) else {
        return;
    };
    let attempt = c.start(1, 2);
    let test = "a_killed_executor_fails_the_attempt";
    let mut cluster = c.launch(test, 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    cluster.children[1].kill().unwrap();
    match next_event(&attempt) {
        AttemptEvent::Failed { error: e, .. } => assert!(e.contains("executor 1"), "{e}"),
        e => panic!("expected a failure, got {e:?}"),
    }
    // The survivor is cancelled and exits failing, well before its slow
    // input would have ended.
    let status = cluster.children[0].wait().unwrap();
    assert!(!status.success());
}

fn manifests(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("_manifest.json").exists())
        .count()
}

#[test]
fn a_killed_attempt_restarts_from_its_latest_checkpoint_exactly_once() {
    let Some(c) = Coordinator::new(true) else {
        return;
    };
    let test = "a_killed_attempt_restarts_from_its_latest_checkpoint_exactly_once";
    let first = c.start(1, 2);
    let mut cluster = c.launch(test, 1, 2, None, Mode::Slow);
    assert_eq!(next_event(&first), AttemptEvent::Running);
    let deadline = std::time::Instant::now() + PATIENCE;
    while manifests(c.ck().unwrap()) < 2 {
        assert!(std::time::Instant::now() < deadline, "no checkpoints");
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.children[1].kill().unwrap();
    assert!(matches!(next_event(&first), AttemptEvent::Failed { .. }));
    assert!(!cluster.wait());

    // The restart the coordinator service does: from the latest
    // checkpoint, with a higher attempt.
    let start = CheckpointStart::find(&c.d)
        .unwrap()
        .expect("the job checkpoints");
    assert!(start.restored_from.is_some());
    assert_eq!(start.min_attempt, 2);
    let restore = start.restore.as_ref().map(|l| l.as_str().to_string());
    let second = c
        .server
        .start_attempt(AttemptConfig {
            job_id: JOB_ID.into(),
            attempt: start.min_attempt,
            description: c.d.clone(),
            placement: placement(&c.d, 2),
            executors: 2,
            checkpoint: Some(start.setup),
            stats: Arc::default(),
            secret: SECRET.into(),
        })
        .unwrap();
    let cluster = c.launch(test, 2, 2, restore, Mode::Normal);
    let events: Vec<AttemptEvent> = (0..3)
        .map(|_| second.events().recv_timeout(PATIENCE).expect("an event"))
        .collect();
    assert_eq!(
        events,
        [
            AttemptEvent::Running,
            AttemptEvent::Finishing,
            AttemptEvent::Finished
        ],
        "every task finishes its input, the final checkpoint commits, the attempt ends"
    );
    assert!(cluster.wait());
    // What the first attempt committed and what the second did after the
    // restored checkpoint: every row once, with the restored sums.
    assert_same_rows(lines(c.out.path()), embedded_lines());
}
