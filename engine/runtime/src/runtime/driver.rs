//! The embedded job's driver: runs attempts of a job (planning, wiring
//! tasks, the checkpoint coordinator and writer) until one finishes, and
//! restarts a failed one from its latest checkpoint under the restart
//! strategy.

use super::*;

/// Runs attempts of a job until one finishes or the restart strategy gives up.
pub(super) struct Driver {
    pub(super) graph: LogicalGraph,
    pub(super) config: JobConfig,
    pub(super) plan: PhysicalPlan,
    pub(super) current: Arc<Mutex<Current>>,
    pub(super) user_cancel: Arc<AtomicBool>,
    pub(super) stats: Arc<Mutex<CheckpointStats>>,
    /// Told of each completed checkpoint (the web UI's metrics).
    pub(super) on_complete: Option<CompletionHook>,
}

/// Where an attempt starts.
struct Start {
    attempt: u64,
    next_id: u64,
    restore: Option<Arc<RestorePlan>>,
    /// The opened checkpoint location, when the job checkpoints.
    root: Option<Storage>,
}

impl Driver {
    pub(super) fn run(self) -> Result<JobResult> {
        info!(job = %self.config.name, "starting embedded job\n{}", self.plan.describe());
        let started = Instant::now();
        let mut restarts = 0u32;
        let mut attempt_floor = 0u64;
        loop {
            let start = self.prepare(attempt_floor)?;
            let attempt = start.attempt;
            match self.run_attempt(start) {
                Ok(mut r) => {
                    r.duration = started.elapsed();
                    r.checkpoints = self.stats.lock().expect("stats lock").clone();
                    return Ok(r);
                }
                Err(e) => {
                    if self.user_cancel.load(Ordering::SeqCst) || self.config.checkpoint.is_none() {
                        return Err(e);
                    }
                    // A failure that replays identically (a bad record, a
                    // schema error) is not worth a restart.
                    if e.retry() == Retry::Never {
                        info!(job = %self.config.name, error = %e, attempt, retry = ?Retry::Never,
                            "job failed with an error a restart cannot fix; not restarting");
                        return Err(e);
                    }
                    let Some(delay) = self.config.restart.delay(restarts) else {
                        return Err(e);
                    };
                    warn!(job = %self.config.name, error = %e, attempt, ?delay, retry = ?Retry::Backoff,
                        "job failed; restarting from the latest checkpoint");
                    self.current.lock().expect("job handle lock").restarting = Some(e.to_string());
                    std::thread::sleep(delay);
                    restarts += 1;
                    self.stats.lock().expect("stats lock").restarts += 1;
                    attempt_floor = attempt + 1;
                }
            }
        }
    }

    /// Finds the checkpoint to resume from and the ids to continue with.
    fn prepare(&self, attempt_floor: u64) -> Result<Start> {
        let Some(ck) = &self.config.checkpoint else {
            return Ok(Start {
                attempt: attempt_floor,
                next_id: 1,
                restore: None,
                root: None,
            });
        };
        let root = Storage::open(&ck.dir)?;
        let found = StartPoint::find(&root, &self.config.name, ck.restore_from.as_ref())?;
        let mut restore = found.restore;
        if let Some(r) = &mut restore {
            r.bind(&self.graph, &self.plan, ck.allow_non_restored_state)?;
            let taken = std::time::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(r.manifest.timestamp_ms).unwrap_or(0));
            info!(job = %self.config.name, checkpoint = r.manifest.id, location = %r.dir.location(),
                taken = %humantime::format_rfc3339_seconds(taken), savepoint = r.manifest.savepoint,
                "resuming from checkpoint");
        }
        self.stats.lock().expect("stats lock").restored_from =
            restore.as_ref().map(|r| r.manifest.id);
        Ok(Start {
            attempt: attempt_floor.max(found.min_attempt),
            next_id: found.next_id,
            restore: restore.map(Arc::new),
            root: Some(root),
        })
    }

    fn run_attempt(&self, start: Start) -> Result<JobResult> {
        let (graph, config, plan) = (&self.graph, &self.config, &self.plan);
        let control = Arc::new(JobControl::default());
        if self.user_cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let metrics = node_metrics(graph);
        let meters = task_meters(plan, &|_| true);
        let (state, _local) = run_state(config, start.attempt);
        let mut wiring = wire(
            plan,
            config.channel_capacity,
            &control.cancelled,
            &|_| true,
            &mut NoRemote,
        )?;

        // Checkpointing: the coordinator, the writer and each task's channels.
        let mut side_threads = Vec::new();
        let mut task_ck: HashMap<TaskKey, task::TaskCheckpointing> = HashMap::new();
        let mut coordinator_tx = None;
        if let Some(ck) = &config.checkpoint {
            let (ctx, crx) = crossbeam_channel::unbounded();
            let (wtx, wrx) = crossbeam_channel::unbounded();
            let dirs = Arc::default();
            let (ports, tcks) = checkpoint_channels(
                graph,
                plan,
                &|_| true,
                &wtx,
                &ctx,
                ck,
                start.restore.clone(),
            );
            task_ck = tcks;
            let tasks = ports
                .into_iter()
                .map(|(k, tx, src)| (k, Box::new(tx) as Box<dyn TaskPort>, src))
                .collect();
            let coordinator = Coordinator {
                config: ck.clone(),
                root: start.root.clone().ok_or_else(|| {
                    Error::Internal("checkpointing without an opened location".into())
                })?,
                job: config.name.clone(),
                attempt: start.attempt,
                next_id: start.next_id,
                trigger_at_once: false,
                max_parallelism: plan.max_parallelism,
                nodes: node_infos(graph, plan),
                tasks,
                rx: crx,
                dirs: Arc::clone(&dirs),
                stats: self.stats.clone(),
                control: control.clone(),
                prepare: None,
                on_complete: self.on_complete.clone(),
                approve: None,
            };
            drop(wtx);
            side_threads.push(spawn_writer(wrx, dirs, ctx.clone())?);
            side_threads.push(
                std::thread::Builder::new()
                    .name("checkpoint-coordinator".into())
                    .spawn(move || coordinator.run())
                    .map_err(|e| Error::io("spawning the checkpoint coordinator", e))?,
            );
            coordinator_tx = Some(ctx);
        }
        {
            let mut cur = self.current.lock().expect("job handle lock");
            cur.control = Some(control.clone());
            cur.coordinator = coordinator_tx;
            cur.attempt = start.attempt;
            cur.metrics = metrics.clone();
            cur.meters = meters.clone();
            cur.restarting = None;
        }

        let start_time = Instant::now();
        let handles = spawn_tasks(
            &TaskContext {
                graph,
                plan,
                metrics: &metrics,
                meters: &meters,
                attempt: start.attempt,
                state: &state,
                control: &control,
            },
            &|_| true,
            &mut wiring,
            &mut task_ck,
        )?;
        for h in handles {
            let _ = h.join();
        }
        {
            let mut cur = self.current.lock().expect("job handle lock");
            cur.coordinator = None;
        }
        // Tasks are gone: wake the coordinator if it still waits, then wait
        // for it and the writer (the writer ends when the tasks' senders do).
        let was_cancelled = control.is_cancelled();
        control.cancelled.store(true, Ordering::SeqCst);
        for t in side_threads {
            let _ = t.join();
        }
        if let Some(e) = control.take_error() {
            return Err(e);
        }
        if was_cancelled {
            return Err(Error::Cancelled);
        }
        let stopped = control.is_stopped();
        let duration = start_time.elapsed();
        info!(job = %config.name, ms = duration.as_millis() as u64, stopped, "job finished");
        Ok(JobResult {
            duration,
            nodes: summaries(graph, &metrics),
            plan: plan.clone(),
            checkpoints: CheckpointStats::default(),
            stopped,
            executor: None,
        })
    }
}
