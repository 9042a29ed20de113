//! The job-building surface: [`Env`] owns the logical graph under
//! construction, [`Stream`] is a handle on one output of a node. Built-in
//! verbs (filter, window, join ...) are extension traits in
//! `sluice-operators`; this module offers the primitives they build on.
//! Plan errors found while building are kept and returned by `execute`, so
//! a job fails before any record moves.
//!
//! This file holds [`Env`] (sources, the graph, running or describing the
//! job); `stream.rs` holds [`Stream`] and its primitives (partitioning,
//! watermarks, transforms, sinks, collecting).

mod stream;

pub use stream::{Collected, IdentityOperator, Stream};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::executor;
use crate::graph::{Edge, LogicalGraph, Node, NodeId, NodeKind, SinkFactory, SourceFactory};
use crate::operator::{OperatorContext, Source};
use crate::runtime::{self, JobConfig, JobResult};

/// A source definition a connector hands to [`Env::source`].
pub trait SourceSpec {
    /// Default node name.
    fn name(&self) -> String;
    /// Output schema, fixed at plan time.
    fn schema(&self) -> Result<SchemaRef>;
    /// Parallelism the source wants (e.g. number of files); `None` = job default.
    fn parallelism(&self) -> Option<usize> {
        None
    }
    /// Builds the factory creating one source per subtask.
    fn factory(&self) -> SourceFactory;
}

/// A sink definition a connector hands to [`Stream::sink`].
pub trait SinkSpec {
    /// Default node name.
    fn name(&self) -> String;
    /// Checks the input schema at plan time.
    fn validate(&self, _input: &SchemaRef) -> Result<()> {
        Ok(())
    }
    /// Builds the factory creating one sink per subtask.
    fn factory(&self, input: SchemaRef) -> SinkFactory;
}

struct EnvInner {
    graph: LogicalGraph,
    errors: Vec<Error>,
    config: JobConfig,
}

/// The job under construction. Cheap to clone (a shared handle).
///
/// A job adds sources to an `Env` ([`Env::source`], [`Env::source_fn`];
/// `sluice-operators` adds typed ones), transforms the [`Stream`]s they
/// return with the DSL verbs and ends them in sinks; [`Env::execute`]
/// checks the plan, then runs it — embedded in this process, or as an
/// executor of a distributed job when the coordinator started the binary
/// (see [`Env::execute`]).
///
/// ```
/// use sluice_engine::testing::int_batch;
/// use sluice_engine::Env;
///
/// let env = Env::new();
/// env.set_parallelism(2).configure(|c| c.name = "numbers-job".into());
/// let batch = int_batch(&[("n", &[1, 2, 3])]);
/// let out = env.from_batches("numbers", batch.schema(), vec![batch]).collect();
/// let result = env.execute()?;
/// assert_eq!(out.num_rows(), 3);
/// assert_eq!(result.node("numbers").unwrap().records_out, 3);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Clone)]
pub struct Env {
    inner: Rc<RefCell<EnvInner>>,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A new job with default configuration (parallelism = available cores).
    pub fn new() -> Self {
        Self::with_config(JobConfig::default())
    }

    /// A new job with this configuration.
    pub fn with_config(config: JobConfig) -> Self {
        Env {
            inner: Rc::new(RefCell::new(EnvInner {
                graph: LogicalGraph::default(),
                errors: Vec::new(),
                config,
            })),
        }
    }

    /// Sets the default parallelism of every operator.
    pub fn set_parallelism(&self, parallelism: usize) -> &Self {
        self.inner.borrow_mut().config.parallelism = parallelism.max(1);
        self
    }

    /// The job configuration.
    pub fn config(&self) -> JobConfig {
        self.inner.borrow().config.clone()
    }

    /// Mutates the job configuration.
    pub fn configure(&self, f: impl FnOnce(&mut JobConfig)) -> &Self {
        f(&mut self.inner.borrow_mut().config);
        self
    }

    /// Records a plan error; `execute` will return the first one.
    pub fn report(&self, error: Error) {
        self.inner.borrow_mut().errors.push(error);
    }

    /// Adds a source a connector describes ([`SourceSpec`]: a name, the
    /// output schema, a factory of one [`Source`] per subtask, optionally
    /// the parallelism it wants). `sluice-connectors` has Kafka, files and
    /// the Nexmark generator; `sluice-operators` adds typed row sources.
    ///
    /// ```
    /// use sluice_engine::arrow::datatypes::SchemaRef;
    /// use sluice_engine::graph::SourceFactory;
    /// use sluice_engine::testing::{int_batch, run_collect, VecSource};
    /// use sluice_engine::{Env, Result, SourceSpec};
    /// use std::sync::Arc;
    ///
    /// /// One batch of `n` = 1..=3, from one subtask.
    /// struct Numbers;
    /// impl SourceSpec for Numbers {
    ///     fn name(&self) -> String {
    ///         "numbers".into()
    ///     }
    ///     fn schema(&self) -> Result<SchemaRef> {
    ///         Ok(int_batch(&[("n", &[])]).schema())
    ///     }
    ///     fn parallelism(&self) -> Option<usize> {
    ///         Some(1)
    ///     }
    ///     fn factory(&self) -> SourceFactory {
    ///         Arc::new(|_ctx| Ok(Box::new(VecSource::new(vec![int_batch(&[("n", &[1, 2, 3])])]))))
    ///     }
    /// }
    ///
    /// let env = Env::new();
    /// assert_eq!(run_collect(&env.source(Numbers))?, ["1", "2", "3"]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn source(&self, spec: impl SourceSpec) -> Stream {
        let name = spec.name();
        let schema = match spec.schema() {
            Ok(s) => s,
            Err(e) => {
                self.report(e);
                Arc::new(arrow::datatypes::Schema::empty())
            }
        };
        let id = self.add_node(
            name,
            NodeKind::Source {
                factory: spec.factory(),
                watermarks: None,
            },
            vec![schema.clone()],
            Vec::new(),
            1,
        );
        if let Some(p) = spec.parallelism() {
            self.inner.borrow_mut().graph.nodes[id.0].parallelism = Some(p.max(1));
        }
        Stream::new(self.clone(), id, 0, schema)
    }

    /// Adds a source from a closure that creates one instance per subtask
    /// (`ctx.subtask` of `ctx.parallelism` tells it which share to read).
    ///
    /// ```
    /// use sluice_engine::testing::{int_batch, run_collect, VecSource};
    /// use sluice_engine::Env;
    ///
    /// let env = Env::new();
    /// let schema = int_batch(&[("subtask", &[])]).schema();
    /// let s = env
    ///     .source_fn("per-subtask", schema, |ctx| {
    ///         let batch = int_batch(&[("subtask", &[ctx.subtask as i64])]);
    ///         Ok(Box::new(VecSource::new(vec![batch])))
    ///     })
    ///     .set_parallelism(3);
    /// let mut rows = run_collect(&s)?;
    /// rows.sort();
    /// assert_eq!(rows, ["0", "1", "2"]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn source_fn<F>(&self, name: &str, schema: SchemaRef, factory: F) -> Stream
    where
        F: Fn(&OperatorContext) -> Result<Box<dyn Source>> + Send + Sync + 'static,
    {
        let id = self.add_node(
            name.to_string(),
            NodeKind::Source {
                factory: Arc::new(factory),
                watermarks: None,
            },
            vec![schema.clone()],
            Vec::new(),
            1,
        );
        Stream::new(self.clone(), id, 0, schema)
    }

    fn add_node(
        &self,
        name: String,
        kind: NodeKind,
        outputs: Vec<SchemaRef>,
        inputs: Vec<Edge>,
        num_inputs: usize,
    ) -> NodeId {
        let mut inner = self.inner.borrow_mut();
        let id = NodeId(inner.graph.nodes.len());
        let taken = |n: &str| inner.graph.nodes.iter().any(|x| x.name == n);
        let mut unique = name.clone();
        let mut i = 2;
        while taken(&unique) {
            unique = format!("{name}#{i}");
            i += 1;
        }
        inner.graph.nodes.push(Node {
            id,
            name: unique,
            kind,
            parallelism: None,
            outputs,
            inputs,
            num_inputs,
            chain_head: false,
            uid: None,
            stateless: false,
        });
        id
    }

    /// The logical graph built so far, or the first plan error.
    pub fn graph(&self) -> Result<LogicalGraph> {
        let mut inner = self.inner.borrow_mut();
        if !inner.errors.is_empty() {
            return Err(inner.errors.remove(0));
        }
        let graph = inner.graph.clone();
        let uids = graph.uids();
        let mut owner: std::collections::HashMap<&str, &str> = Default::default();
        for (n, u) in graph.nodes.iter().zip(&uids) {
            if let Some(other) = owner.insert(u.as_str(), n.name.as_str()) {
                return Err(Error::plan(
                    n.name.clone(),
                    format!(
                        "operator id '{u}' is also the id of '{other}'; give each operator \
                         its own id with .uid(...)"
                    ),
                ));
            }
        }
        Ok(graph)
    }

    /// Runs the job, returning when every sink has seen the end of its
    /// input (bounded jobs) or on the first failure. The environment decides
    /// how (see [`crate::executor`]): `SLUICE_PARALLELISM` overrides the
    /// default parallelism; with `SLUICE_DESCRIBE=PATH` the plan is written
    /// to `PATH` as a `JobDescription` and the process exits; with
    /// `SLUICE_EXECUTOR=PATH` this process runs the subtasks the
    /// `ExecutorSpec` in `PATH` (`-`: on stdin) assigns (the result counts only those);
    /// otherwise the job runs on the embedded in-process cluster, serving
    /// the web UI on `SLUICE_UI=ADDR` if set.
    pub fn execute(&self) -> Result<JobResult> {
        let graph = self.graph()?;
        let config = self.config_from_env()?;
        match mode()? {
            Mode::Describe(path) => describe_and_exit(&graph, &config, &path),
            Mode::Executor(path) => {
                let spec = executor::read_spec(&path)?;
                executor::run(&graph, &config, &spec)
            }
            Mode::Embedded => runtime::run_embedded(&graph, &config),
        }
    }

    /// The plan the job would run, as text, without running it: its
    /// settings (parallelism, checkpoints, state backend), then each
    /// vertex (chained operators, parallelism) with its inputs and how they
    /// are partitioned — what a job binary's `--explain` prints.
    ///
    /// ```
    /// use sluice_engine::testing::int_batch;
    /// use sluice_engine::Env;
    ///
    /// let env = Env::new();
    /// let batch = int_batch(&[("n", &[1, 2, 3])]);
    /// let _ = env.from_batches("numbers", batch.schema(), vec![batch]).collect();
    /// let plan = env.explain()?;
    /// assert!(plan.contains("numbers"), "{plan}");
    /// assert!(plan.contains("checkpoints: off"), "{plan}");
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn explain(&self) -> Result<String> {
        let graph = self.graph()?;
        let config = self.config_from_env()?;
        let plan = crate::plan::plan(
            &graph,
            config.parallelism,
            config.max_parallelism,
            config.chaining,
        )?;
        let checkpoints = match &config.checkpoint {
            None => "off".to_string(),
            Some(ck) => format!(
                "every {} into {} ({}, {} retained)",
                humantime::format_duration(ck.interval),
                ck.dir,
                match (ck.guarantee, ck.unaligned) {
                    (crate::checkpoint::Guarantee::ExactlyOnce, true) => "exactly once, unaligned",
                    (crate::checkpoint::Guarantee::ExactlyOnce, false) => "exactly once",
                    (crate::checkpoint::Guarantee::AtLeastOnce, _) => "at least once",
                },
                ck.retained
            ),
        };
        let state = match &config.state.backend {
            crate::state::StateBackend::Memory => "heap".to_string(),
            crate::state::StateBackend::RocksDb(r) => format!(
                "RocksDB in {} ({} MiB cache per subtask)",
                config.state.local_dir.display(),
                r.cache_bytes >> 20
            ),
        };
        Ok(format!(
            "job {}: parallelism {}, {} key groups, chaining {}\n\
             checkpoints: {checkpoints}\nstate: {state}\n{} vertices:\n{}",
            config.name,
            config.parallelism,
            config.max_parallelism,
            if config.chaining { "on" } else { "off" },
            plan.vertices.len(),
            plan.describe()
        ))
    }

    /// Starts the job and returns at once with a handle (savepoints,
    /// stop-with-savepoint, cancel, join); the environment decides the mode
    /// as for [`Env::execute`]. An executor's savepoints are the
    /// coordinator's business, so its handle only cancels and joins.
    ///
    /// ```
    /// use sluice_engine::testing::int_batch;
    /// use sluice_engine::Env;
    ///
    /// let env = Env::new();
    /// let batch = int_batch(&[("n", &[1, 2, 3])]);
    /// let out = env.from_batches("numbers", batch.schema(), vec![batch]).collect();
    /// let handle = env.start()?;
    /// // ... handle.savepoint(dir), handle.cancel() while it runs ...
    /// let result = handle.join()?;
    /// assert_eq!(result.node("numbers").unwrap().records_out, 3);
    /// assert_eq!(out.num_rows(), 3);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn start(&self) -> Result<runtime::JobHandle> {
        let graph = self.graph()?;
        let config = self.config_from_env()?;
        match mode()? {
            Mode::Describe(path) => describe_and_exit(&graph, &config, &path),
            Mode::Executor(path) => {
                let spec = executor::read_spec(&path)?;
                runtime::JobHandle::spawn(move |cancel| {
                    executor::run_until(&graph, &config, &spec, cancel)
                })
            }
            Mode::Embedded => runtime::start_embedded(&graph, &config),
        }
    }

    /// The configuration with `SLUICE_PARALLELISM` and `SLUICE_UI`
    /// applied, checked against the features this build has.
    fn config_from_env(&self) -> Result<JobConfig> {
        let mut config = self.config();
        if let Some(p) = env_var(PARALLELISM_ENV) {
            config.parallelism = p
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    Error::Config(format!("{PARALLELISM_ENV}='{p}' is not a positive integer"))
                })?;
        }
        if let Some(addr) = env_var(UI_ENV) {
            config.ui = Some(addr.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "{UI_ENV}='{addr}' is not an address to serve the web UI on (e.g. 127.0.0.1:8080)"
                ))
            })?);
        }
        config.check_features()?;
        Ok(config)
    }
}

/// Overrides the job's default parallelism (every mode).
pub const PARALLELISM_ENV: &str = "SLUICE_PARALLELISM";
/// An embedded run serves the web UI and the job API on this address.
pub const UI_ENV: &str = "SLUICE_UI";
/// Describe mode: write the plan to this path and exit.
pub const DESCRIBE_ENV: &str = "SLUICE_DESCRIBE";
/// Executor mode: the `ExecutorSpec` JSON file to run (`-`: it is the
/// first line of stdin, as a worker hands it over; relays of new leaders
/// follow it on later lines).
pub const EXECUTOR_ENV: &str = "SLUICE_EXECUTOR";

/// Whether this process runs jobs on the embedded cluster (neither
/// describe nor executor mode): only then do its own files (checkpoints,
/// output) belong to it alone, so a job binary may act on them before
/// the job starts.
pub fn runs_embedded() -> bool {
    matches!(mode(), Ok(Mode::Embedded))
}

/// How a job binary runs.
enum Mode {
    Embedded,
    Describe(String),
    Executor(String),
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn mode() -> Result<Mode> {
    match (env_var(DESCRIBE_ENV), env_var(EXECUTOR_ENV)) {
        (Some(_), Some(_)) => Err(Error::Config(format!(
            "{DESCRIBE_ENV} and {EXECUTOR_ENV} are both set"
        ))),
        (Some(p), None) => Ok(Mode::Describe(p)),
        (None, Some(p)) => Ok(Mode::Executor(p)),
        (None, None) => Ok(Mode::Embedded),
    }
}

/// Plans the job, writes its description to `path` and ends the process:
/// nothing runs in describe mode.
fn describe_and_exit<T>(graph: &LogicalGraph, config: &JobConfig, path: &str) -> Result<T> {
    let plan = crate::plan::plan(
        graph,
        config.parallelism,
        config.max_parallelism,
        config.chaining,
    )?;
    let d = executor::describe::describe(graph, &plan, config);
    let json = serde_json::to_vec_pretty(&d)
        .map_err(|e| Error::Internal(format!("encoding the job description: {e}")))?;
    std::fs::write(path, json).map_err(|e| Error::io(format!("writing {path}"), e))?;
    std::process::exit(0)
}
