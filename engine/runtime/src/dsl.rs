//! The job-building surface: [`Env`] owns the logical graph under
//! construction, [`Stream`] is a handle on one output of a node. Built-in
//! verbs (filter, window, join ...) are extension traits in
//! `sluice-operators`; this module offers the primitives they build on.
//! Plan errors found while building are kept and returned by `execute`, so
//! a job fails before any record moves.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::data::is_event_time_type;
use crate::error::{Error, Result};
use crate::executor;
use crate::graph::{
    Edge, EdgeKind, LogicalGraph, Node, NodeId, NodeKind, OperatorFactory, SinkFactory,
    SourceFactory, WatermarkStrategy,
};
use crate::operator::{Collector, Operator, OperatorContext, Sink, Source};
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
/// Executor mode: the `ExecutorSpec` JSON file to run (`-`: read it from
/// stdin, as a worker hands it over).
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

/// A handle on one output of a node, plus what the DSL knows about it:
/// pending partitioning, key columns and the event-time column. The verbs
/// (`filter`, `key_by`, `window`, ... in `sluice-operators`) consume a
/// stream and return the next; the primitives here are what they build on.
///
/// ```
/// use sluice_engine::testing::{int_batch, run_collect};
/// use sluice_engine::Env;
///
/// let env = Env::new();
/// let batch = int_batch(&[("k", &[1, 2, 1]), ("v", &[10, 20, 30])]);
/// let s = env.from_batches("kv", batch.schema(), vec![batch]);
/// assert_eq!(s.column_list(), "[k, v]");
/// // Hash-partitioned by `k` for the next operator, which sees it keyed.
/// let keyed = s.keyed_by(&["k"]);
/// assert_eq!(keyed.keys(), Some(&["k".to_string()][..]));
/// let mut rows = run_collect(&keyed)?;
/// rows.sort();
/// assert_eq!(rows, ["1, 10", "1, 30", "2, 20"]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Clone)]
pub struct Stream {
    env: Env,
    node: NodeId,
    port: usize,
    schema: SchemaRef,
    partitioning: Option<EdgeKind>,
    keys: Option<Vec<String>>,
    event_time: Option<String>,
}

impl Stream {
    fn new(env: Env, node: NodeId, port: usize, schema: SchemaRef) -> Self {
        Stream {
            env,
            node,
            port,
            schema,
            partitioning: None,
            keys: None,
            event_time: None,
        }
    }

    /// The job this stream belongs to.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The node producing this stream.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The node's display name.
    pub fn node_name(&self) -> String {
        self.env.inner.borrow().graph.nodes[self.node.0]
            .name
            .clone()
    }

    /// Schema of the records on this stream.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Key columns, when the stream is keyed.
    pub fn keys(&self) -> Option<&[String]> {
        self.keys.as_deref()
    }

    /// The event-time column, when watermarks were assigned upstream.
    pub fn event_time(&self) -> Option<&str> {
        self.event_time.as_deref()
    }

    /// The partitioning the next operator's input edge will use.
    pub fn partitioning(&self) -> Option<&EdgeKind> {
        self.partitioning.as_ref()
    }

    /// Records a plan error against this stream's job.
    pub fn report(&self, error: Error) {
        self.env.report(error);
    }

    /// Returns this stream with `kind` as the partitioning of the next edge.
    pub fn partition(mut self, kind: EdgeKind) -> Self {
        if !matches!(kind, EdgeKind::Hash(_)) {
            self.keys = None;
        }
        self.partitioning = Some(kind);
        self
    }

    /// Hash-partitions by `columns` and marks the stream keyed by them.
    /// Unknown columns are plan errors naming the column.
    pub fn keyed_by(mut self, columns: &[&str]) -> Self {
        let mut idx = Vec::with_capacity(columns.len());
        for c in columns {
            match self.schema.index_of(c) {
                Ok(i) => idx.push(i),
                Err(_) => self.report(Error::plan(
                    format!("key_by after '{}'", self.node_name()),
                    format!(
                        "unknown column '{c}'; the stream has {}",
                        self.column_list()
                    ),
                )),
            }
        }
        self.partitioning = Some(EdgeKind::Hash(idx));
        self.keys = Some(columns.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Comma-separated column names, for error messages.
    pub fn column_list(&self) -> String {
        let names: Vec<_> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!("[{}]", names.join(", "))
    }

    /// Marks `column` as this stream's event time without assigning watermarks
    /// (for operators whose output carries the input's event time).
    pub fn with_event_time(mut self, column: Option<String>) -> Self {
        self.event_time = column.filter(|c| self.schema.index_of(c).is_ok());
        self
    }

    /// Keeps the key columns (if they survive in `schema`) for a derived stream.
    pub fn with_keys(mut self, keys: Option<Vec<String>>) -> Self {
        self.keys = keys;
        self
    }

    /// Gives the operator producing this stream a stable id: its state in
    /// a checkpoint or savepoint is matched by this id on restore, so the
    /// job may change around it (operators added or removed, parallelism
    /// changed) and keep it. Without one, the id is derived (see
    /// [`LogicalGraph::uids`]). Ids must be unique within the job.
    pub fn uid(self, uid: &str) -> Self {
        if uid.is_empty() {
            self.report(Error::plan(
                self.node_name(),
                "an operator id must not be empty",
            ));
        } else {
            self.env.inner.borrow_mut().graph.nodes[self.node.0].uid = Some(uid.to_string());
        }
        self
    }

    /// Marks the operator producing this stream as keeping no state, so
    /// derived operator ids look through it: adding or removing it keeps
    /// the ids (and so the restorable state) of the operators after it.
    /// Built-in stateless verbs (filter, select, map, union, ...) call it.
    pub fn stateless(self) -> Self {
        self.env.inner.borrow_mut().graph.nodes[self.node.0].stateless = true;
        self
    }

    /// Sets the parallelism of the node producing this stream (the job's
    /// default otherwise: [`Env::set_parallelism`], `SLUICE_PARALLELISM`).
    ///
    /// ```
    /// use sluice_engine::testing::{int_batch, VecSource};
    /// use sluice_engine::Env;
    ///
    /// let env = Env::new();
    /// env.set_parallelism(4);
    /// let schema = int_batch(&[("n", &[])]).schema();
    /// let out = env
    ///     .source_fn("ones", schema, |_ctx| {
    ///         Ok(Box::new(VecSource::new(vec![int_batch(&[("n", &[1])])])))
    ///     })
    ///     .set_parallelism(2)
    ///     .collect();
    /// env.execute()?;
    /// // One row from each of the source's two subtasks.
    /// assert_eq!(out.num_rows(), 2);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn set_parallelism(self, parallelism: usize) -> Self {
        self.env.inner.borrow_mut().graph.nodes[self.node.0].parallelism = Some(parallelism.max(1));
        self
    }

    /// Assigns watermarks: on the source itself when this stream comes
    /// straight from one (so they are tracked per split), else through a
    /// watermark operator.
    pub fn assign_watermarks(self, strategy: WatermarkStrategy) -> Self {
        let op_name = format!("watermarks after '{}'", self.node_name());
        match self.schema.field_with_name(&strategy.column) {
            Err(_) => {
                self.report(Error::plan(
                    op_name,
                    format!(
                        "unknown event-time column '{}'; the stream has {}",
                        strategy.column,
                        self.column_list()
                    ),
                ));
                return self;
            }
            Ok(f) if !is_event_time_type(f.data_type()) => {
                self.report(Error::plan(
                    op_name,
                    format!(
                        "event-time column '{}' has type {}; expected Int64 (epoch ms) or a timestamp",
                        strategy.column,
                        f.data_type()
                    ),
                ));
                return self;
            }
            Ok(_) => {}
        }
        let column = strategy.column.clone();
        let at_source = {
            let inner = self.env.inner.borrow();
            let node = &inner.graph.nodes[self.node.0];
            matches!(node.kind, NodeKind::Source { .. })
                && self.port == 0
                && self.partitioning.is_none()
        };
        if at_source {
            let mut inner = self.env.inner.borrow_mut();
            if let NodeKind::Source { watermarks, .. } = &mut inner.graph.nodes[self.node.0].kind {
                *watermarks = Some(strategy);
            }
            drop(inner);
            let mut s = self;
            s.event_time = Some(column);
            s
        } else {
            let schema = self.schema.clone();
            let keys = self.keys.clone();
            let s = self
                .transform("watermarks", schema, move |ctx| {
                    Ok(Box::new(runtime::watermark::WatermarkOperator::new(
                        strategy.clone(),
                        &ctx.input_schemas[0],
                    )?))
                })
                .stateless();
            let mut s = s.with_keys(keys);
            s.event_time = Some(column);
            s
        }
    }

    /// Adds a single-input operator producing `schema`. The new stream keeps
    /// no key or event-time information; verbs that preserve them say so with
    /// [`Stream::with_keys`] / [`Stream::with_event_time`].
    pub fn transform<F>(&self, name: &str, schema: SchemaRef, factory: F) -> Stream
    where
        F: Fn(&OperatorContext) -> Result<Box<dyn Operator>> + Send + Sync + 'static,
    {
        self.transform_multi(name, &[], vec![schema], Arc::new(factory))
    }

    /// Adds an operator fed by this stream (input 0) and `others` (inputs
    /// 1..), with main output `outputs[0]` and side outputs `outputs[1..]`.
    pub fn transform_multi(
        &self,
        name: &str,
        others: &[&Stream],
        outputs: Vec<SchemaRef>,
        factory: OperatorFactory,
    ) -> Stream {
        let mut inputs = vec![self.edge(0)];
        for (i, o) in others.iter().enumerate() {
            inputs.push(o.edge(i + 1));
        }
        let schema = outputs[0].clone();
        let n = inputs.len();
        let id = self.env.add_node(
            name.to_string(),
            NodeKind::Operator { factory },
            outputs,
            inputs,
            n,
        );
        Stream::new(self.env.clone(), id, 0, schema)
    }

    /// Adds an operator whose single logical input is fed by several streams
    /// of the same schema (union).
    pub fn merge_into(&self, name: &str, others: &[&Stream], factory: OperatorFactory) -> Stream {
        let mut inputs = vec![self.edge(0)];
        for o in others {
            inputs.push(o.edge(0));
        }
        let id = self.env.add_node(
            name.to_string(),
            NodeKind::Operator { factory },
            vec![self.schema.clone()],
            inputs,
            1,
        );
        Stream::new(self.env.clone(), id, 0, self.schema.clone())
    }

    /// The side output `port` (1..) of the node producing this stream.
    pub fn side_output(&self, port: usize) -> Option<Stream> {
        let inner = self.env.inner.borrow();
        let schema = inner.graph.nodes[self.node.0].outputs.get(port)?.clone();
        drop(inner);
        Some(Stream::new(self.env.clone(), self.node, port, schema))
    }

    fn edge(&self, input: usize) -> Edge {
        Edge {
            from: self.node,
            port: self.port,
            input,
            kind: self.partitioning.clone().unwrap_or(EdgeKind::Forward),
        }
    }

    /// Ends the stream in a sink a connector describes ([`SinkSpec`]:
    /// a name, a plan-time check of the input schema, a factory of one
    /// [`Sink`] per subtask).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use sluice_engine::arrow::datatypes::SchemaRef;
    /// use sluice_engine::arrow::record_batch::RecordBatch;
    /// use sluice_engine::graph::SinkFactory;
    /// use sluice_engine::testing::int_batch;
    /// use sluice_engine::{Env, Error, OperatorContext, Result, Sink, SinkSpec};
    ///
    /// /// Counts rows into a shared counter; wants an `n` column.
    /// struct CountRows(Arc<AtomicUsize>);
    /// struct Counter(Arc<AtomicUsize>);
    /// impl Sink for Counter {
    ///     fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
    ///         self.0.fetch_add(batch.num_rows(), Ordering::Relaxed);
    ///         Ok(())
    ///     }
    /// }
    /// impl SinkSpec for CountRows {
    ///     fn name(&self) -> String {
    ///         "count-rows".into()
    ///     }
    ///     fn validate(&self, input: &SchemaRef) -> Result<()> {
    ///         input.index_of("n").map(|_| ()).map_err(|_| Error::plan("count-rows", "no column n"))
    ///     }
    ///     fn factory(&self, _input: SchemaRef) -> SinkFactory {
    ///         let rows = self.0.clone();
    ///         Arc::new(move |_ctx| Ok(Box::new(Counter(rows.clone()))))
    ///     }
    /// }
    ///
    /// let env = Env::new();
    /// let rows = Arc::new(AtomicUsize::new(0));
    /// let batch = int_batch(&[("n", &[1, 2, 3])]);
    /// env.from_batches("numbers", batch.schema(), vec![batch]).sink(CountRows(rows.clone()));
    /// env.execute()?;
    /// assert_eq!(rows.load(Ordering::Relaxed), 3);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn sink(&self, spec: impl SinkSpec) {
        if let Err(e) = spec.validate(&self.schema) {
            self.report(e);
        }
        let factory = spec.factory(self.schema.clone());
        self.sink_fn(&spec.name(), move |ctx| factory(ctx));
    }

    /// Ends the stream in a sink built by a closure, one [`Sink`] per
    /// subtask.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use sluice_engine::arrow::array::AsArray;
    /// use sluice_engine::arrow::datatypes::Int64Type;
    /// use sluice_engine::arrow::record_batch::RecordBatch;
    /// use sluice_engine::testing::int_batch;
    /// use sluice_engine::{Env, OperatorContext, Result, Sink};
    ///
    /// /// Adds up the `n` column.
    /// struct Total(Arc<Mutex<i64>>);
    /// impl Sink for Total {
    ///     fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
    ///         let n = batch.column(0).as_primitive::<Int64Type>();
    ///         *self.0.lock().unwrap() += n.values().iter().sum::<i64>();
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let env = Env::new();
    /// let total = Arc::new(Mutex::new(0));
    /// let batch = int_batch(&[("n", &[1, 2, 3])]);
    /// let t = total.clone();
    /// env.from_batches("numbers", batch.schema(), vec![batch])
    ///     .sink_fn("total", move |_ctx| Ok(Box::new(Total(t.clone()))));
    /// env.execute()?;
    /// assert_eq!(*total.lock().unwrap(), 6);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn sink_fn<F>(&self, name: &str, factory: F)
    where
        F: Fn(&OperatorContext) -> Result<Box<dyn Sink>> + Send + Sync + 'static,
    {
        self.env.add_node(
            name.to_string(),
            NodeKind::Sink {
                factory: Arc::new(factory),
            },
            vec![self.schema.clone()],
            vec![self.edge(0)],
            1,
        );
    }

    /// Collects everything that reaches this point; read it after `execute`.
    /// Meant for tests, doctests and small results (`sluice-operators`
    /// reads them back as structs with `collected.rows::<T>()`).
    ///
    /// ```
    /// use sluice_engine::testing::{int_batch, lines};
    /// use sluice_engine::Env;
    ///
    /// let env = Env::new();
    /// let batch = int_batch(&[("k", &[1, 2]), ("v", &[10, 20])]);
    /// let out = env.from_batches("kv", batch.schema(), vec![batch]).collect();
    /// env.execute()?;
    /// assert_eq!(out.num_rows(), 2);
    /// assert_eq!(lines(&out.concat())?, ["1, 10", "2, 20"]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    pub fn collect(&self) -> Collected {
        let store = Collected {
            schema: self.schema.clone(),
            batches: Arc::new(Mutex::new(Vec::new())),
        };
        let s = store.clone();
        self.sink_fn("collect", move |_| Ok(Box::new(CollectSink(s.clone()))));
        store
    }
}

/// Batches gathered by [`Stream::collect`].
#[derive(Clone, Debug)]
pub struct Collected {
    schema: SchemaRef,
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl Collected {
    /// Every batch collected, in arrival order (across subtasks: interleaved).
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().expect("collect lock poisoned").clone()
    }

    /// Everything collected as one batch.
    pub fn concat(&self) -> RecordBatch {
        let batches = self.batches();
        arrow::compute::concat_batches(&self.schema, &batches)
            .expect("collected batches share the stream's schema")
    }

    /// Total rows collected.
    pub fn num_rows(&self) -> usize {
        self.batches().iter().map(|b| b.num_rows()).sum()
    }
}

struct CollectSink(Collected);

impl Sink for CollectSink {
    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        self.0
            .batches
            .lock()
            .expect("collect lock poisoned")
            .push(batch);
        Ok(())
    }
}

/// An operator that forwards batches unchanged (used for union).
pub struct IdentityOperator;

impl Operator for IdentityOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(batch);
        Ok(())
    }
}
