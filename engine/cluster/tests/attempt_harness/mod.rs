//! The harness of `cluster_attempt.rs`: the test job (a running sum over
//! paced input, an exactly-once line sink), the executor processes (the
//! test binary re-executed), and a coordinator played by the test with a
//! `ControlServer`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_cluster::attempt::{
    AttemptConfig, AttemptEvent, AttemptHandle, CheckpointSetup, ControlServer,
};
use sluice_engine::checkpoint::coordinator::TaskKey;
use sluice_engine::checkpoint::{CheckpointConfig, Storage};
use sluice_engine::data::CheckpointId;
use sluice_engine::plan::plan;
use sluice_engine::runtime::JobConfig;
use sluice_engine::state::snapshot::{with_key_groups, OperatorSnapshot, RestoredState};
use sluice_engine::testing::VecSource;
use sluice_engine::{Collector, Env, Operator, OperatorContext, Result, Sink, Source, SourcePoll};
use sluice_protocol::api::{ExecutorSpec, JobDescription};

/// Generous bound for things that must happen; never a speed assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);
/// Where an executor's sink writes (set by the parent).
pub(crate) const OUT_ENV: &str = "SLUICE_TEST_OUT";
/// The checkpoint directory an executor's job config names (set by the
/// parent when the job checkpoints).
pub(crate) const CK_ENV: &str = "SLUICE_TEST_CK";
/// The executor's [`Mode`].
pub(crate) const MODE_ENV: &str = "SLUICE_TEST_MODE";
pub(crate) const PARALLELISM: usize = 3;
pub(crate) const JOB_ID: &str = "job-1";
/// The attempts' secret, which executors present to the coordinator and
/// to each other.
pub(crate) const SECRET: &str = "5ec2e7";

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

pub(crate) fn out_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("sum", DataType::Int64, false),
    ]))
}

pub(crate) fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("sum", DataType::Int64, false),
    ]))
}

pub(crate) fn input() -> Vec<RecordBatch> {
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
pub(crate) struct RunningSum {
    pub(crate) sums: HashMap<i64, i64>,
    /// Fail on this value (the failure test).
    pub(crate) fail_at: Option<i64>,
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
pub(crate) struct LineSink {
    pub(crate) dir: PathBuf,
    pub(crate) file: Option<std::fs::File>,
    pub(crate) buffer: Vec<String>,
    pub(crate) staged: std::collections::BTreeMap<u64, Vec<String>>,
}

impl LineSink {
    pub(crate) fn new(dir: PathBuf) -> Self {
        LineSink {
            dir,
            file: None,
            buffer: Vec::new(),
            staged: Default::default(),
        }
    }

    pub(crate) fn publish(&self, subtask: usize, id: u64, lines: &[String]) -> Result<()> {
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
pub(crate) enum Mode {
    Normal,
    /// The source waits between batches, so the job runs long enough to
    /// take a savepoint.
    Slow,
    /// The running sum fails on one value (the source paced as in slow
    /// mode); an executor that finishes normally exits failing.
    Fail,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Slow => "slow",
            Mode::Fail => "fail",
        }
    }
    pub(crate) fn from_env() -> Mode {
        match std::env::var(MODE_ENV).as_deref() {
            Ok("slow") => Mode::Slow,
            Ok("fail") => Mode::Fail,
            _ => Mode::Normal,
        }
    }
}

/// Emits the input batches, waiting a little before each in slow mode.
pub(crate) struct PacedSource {
    pub(crate) inner: VecSource,
    pub(crate) pause: Duration,
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
pub(crate) fn job(out: &Path, checkpoint: Option<&Path>) -> Env {
    job_in(out, checkpoint, Mode::Normal)
}

pub(crate) fn job_in(out: &Path, checkpoint: Option<&Path>, mode: Mode) -> Env {
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
pub(crate) fn as_executor() -> bool {
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

pub(crate) fn lines(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        all.extend(text.lines().map(str::to_string));
    }
    all.sort();
    all
}

/// Equal sorted rows; on a difference, says how, without printing thousands.
pub(crate) fn assert_same_rows(got: Vec<String>, want: Vec<String>) {
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

pub(crate) fn embedded_lines() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    job(dir.path(), None).execute().unwrap();
    lines(dir.path())
}

pub(crate) fn description(out: &Path, checkpoint: Option<&Path>) -> JobDescription {
    let env = job(out, checkpoint);
    let graph = env.graph().unwrap();
    let config = env.config();
    let p = plan(&graph, config.parallelism, config.max_parallelism, true).unwrap();
    sluice_engine::executor::describe::describe(&graph, &p, &config)
}

/// Subtask `s` of every vertex runs on executor `s % executors`.
pub(crate) fn placement(d: &JobDescription, executors: usize) -> Vec<(TaskKey, usize)> {
    d.tasks()
        .into_iter()
        .map(|t| (t, t.subtask % executors))
        .collect()
}

pub(crate) struct Cluster {
    pub(crate) children: Vec<Child>,
    pub(crate) _specs: tempfile::TempDir,
}

/// One attempt's executor processes.
pub(crate) struct Launch<'a> {
    /// The test function the children re-run.
    pub(crate) test: &'a str,
    pub(crate) attempt: u64,
    pub(crate) placement: &'a [(TaskKey, usize)],
    pub(crate) executors: usize,
    pub(crate) out: &'a Path,
    pub(crate) checkpoint: Option<&'a Path>,
    pub(crate) restore: Option<String>,
    pub(crate) mode: Mode,
}

impl Cluster {
    /// Starts one executor process per index of an attempt of [`JOB_ID`].
    pub(crate) fn start(server: &ControlServer, l: &Launch<'_>) -> Cluster {
        let specs = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children = (0..l.executors)
            .map(|i| {
                let spec = ExecutorSpec {
                    protocol: sluice_protocol::PROTOCOL_VERSION,
                    job_id: JOB_ID.into(),
                    attempt: l.attempt,
                    term: 0,
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
                    tls: None,
                    rejoin_grace_ms: 0,
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
    pub(crate) fn wait(mut self) -> bool {
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
pub(crate) fn next_event(a: &AttemptHandle) -> AttemptEvent {
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

pub(crate) fn start_attempt(
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
            adopt: None,
        })
        .unwrap()
}

/// A test's coordinator side: the job's output (and checkpoint)
/// directories, its description and the control server.
pub(crate) struct Coordinator {
    pub(crate) out: tempfile::TempDir,
    pub(crate) ck: Option<tempfile::TempDir>,
    pub(crate) d: JobDescription,
    pub(crate) server: ControlServer,
}

impl Coordinator {
    /// `None` in a child process (which played the executor): the test
    /// returns. Both attempts of a restore write into the one output
    /// directory: a restore publishes the restored checkpoint's staged
    /// epoch again, to the same file.
    pub(crate) fn new(checkpoints: bool) -> Option<Coordinator> {
        if as_executor() {
            return None;
        }
        let ck = checkpoints.then(|| tempfile::tempdir().unwrap());
        let out = tempfile::tempdir().unwrap();
        let d = description(out.path(), ck.as_ref().map(|c| c.path()));
        let server = ControlServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Some(Coordinator { out, ck, d, server })
    }

    pub(crate) fn ck(&self) -> Option<&Path> {
        self.ck.as_ref().map(|c| c.path())
    }

    pub(crate) fn start(&self, attempt: u64, executors: usize) -> AttemptHandle {
        start_attempt(&self.server, &self.d, attempt, executors, self.ck())
    }

    /// Starts the executor processes of `attempt`.
    pub(crate) fn launch(
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
pub(crate) fn run_distributed(
    c: &Coordinator,
    test: &str,
    executors: usize,
) -> (Vec<String>, AttemptHandle) {
    let attempt = c.start(1, executors);
    let cluster = c.launch(test, 1, executors, None, Mode::Normal);
    assert_eq!(next_event(&attempt), AttemptEvent::Running);
    assert_eq!(next_event(&attempt), AttemptEvent::Finished);
    assert!(cluster.wait(), "every executor exits cleanly");
    (lines(c.out.path()), attempt)
}
