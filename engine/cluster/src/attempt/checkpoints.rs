//! The checkpoint coordinator of an attempt: its task messages go to the
//! executors as control frames, each checkpoint is announced (`Prepare`)
//! before its trigger and approved (a Raft group's log) before it
//! completes. For an adopted attempt it starts above every id the deposed
//! leader announced, which a rejoining executor reports and which is
//! checked here first.

use super::*;

/// How far past the checkpoint directory's ids a rejoining executor may
/// say the deposed leader announced checkpoints (aborted ones leave no
/// directory, so some lead is real): ids beyond would let job code make
/// them run out.
const MAX_CHECKPOINT_LEAD: u64 = 1 << 32;

/// A remote task's control messages, as frames to its executor.
struct RemotePort {
    task: TaskKey,
    link: ExecLink,
}

impl TaskPort for RemotePort {
    fn send(&self, msg: TaskControl) {
        if let Err(e) = self.link.send(&ToExecutor::Task {
            task: self.task,
            msg,
        }) {
            // The connection's reader reports the loss.
            debug!(task = ?self.task, error = %e, "task control frame not sent");
        }
    }
}

impl Attempt {
    /// Refuses what a rejoining executor `i` says that cannot be true: a
    /// finished task it does not run, or a checkpoint id far past every id
    /// the checkpoint directory holds (ids that large would exhaust them).
    pub(super) fn check_rejoin(
        &self,
        i: usize,
        r: &Rejoin,
        setup: Option<&CheckpointSetup>,
    ) -> std::result::Result<(), String> {
        if let Some(t) = r
            .finished
            .iter()
            .find(|t| !self.placement.contains(&(**t, i)))
        {
            return Err(format!(
                "executor {i} says subtask {} of vertex {} finished, which it does not run",
                t.subtask, t.vertex
            ));
        }
        if let Some(setup) = setup {
            if r.checkpoint > setup.next_id.saturating_add(MAX_CHECKPOINT_LEAD) {
                return Err(format!(
                    "executor {i} says checkpoint {} was announced, but the checkpoint \
                     directory's newest id is below {}",
                    r.checkpoint, setup.next_id
                ));
            }
        }
        Ok(())
    }

    pub(super) fn start_checkpoints(
        self: &Arc<Self>,
        setup: CheckpointSetup,
        links: &[ExecLink],
    ) -> Result<Sender<CoordinatorMsg>> {
        let placed: HashMap<TaskKey, usize> = self.placement.iter().copied().collect();
        let sources: HashMap<usize, bool> = self
            .description
            .vertices
            .iter()
            .map(|v| (v.id, v.source))
            .collect();
        let tasks = self
            .description
            .tasks()
            .into_iter()
            .map(|t| {
                let port: Box<dyn TaskPort> = Box::new(RemotePort {
                    task: t,
                    link: links[placed[&t]].clone(),
                });
                (t, port, sources[&t.vertex])
            })
            .collect();
        let announce = links.to_vec();
        let announced = self.announced.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let coordinator = Coordinator {
            config: setup.config,
            root: setup.root,
            job: self.description.name.clone(),
            attempt: self.attempt,
            next_id: setup.next_id,
            trigger_at_once: self.adopting,
            max_parallelism: self.description.max_parallelism,
            nodes: sluice_engine::executor::describe::node_infos(&self.description),
            tasks,
            rx,
            dirs: Arc::default(),
            stats: self.stats.clone(),
            control: self.control.clone(),
            prepare: Some(Box::new(move |id, dir: &Storage, savepoint| {
                announced.fetch_max(id, Ordering::SeqCst);
                let msg = ToExecutor::Prepare {
                    id,
                    dir: absolute(dir.location()),
                    savepoint,
                };
                for l in &announce {
                    if let Err(e) = l.send(&msg) {
                        debug!(checkpoint = id, error = %e, "prepare frame not sent");
                    }
                }
            })),
            on_complete: self.on_checkpoint.clone().map(|hook| {
                let job = self.job_id.clone();
                Arc::new(move |r: &CheckpointRecord| hook(&job, r)) as CompletionHook
            }),
            approve: self.approve_checkpoint.clone().map(|hook| {
                let (job, attempt) = (self.job_id.clone(), self.attempt);
                Arc::new(move |id: u64, savepoint: bool| hook(&job, attempt, id, savepoint))
                    as ApprovalHook
            }),
        };
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint-coordinator".into())
            .spawn(move || {
                coordinator.run();
                me.coordinator_stopped.store(true, Ordering::SeqCst);
                if let Some(e) = me.control.take_error() {
                    me.fail(format!("checkpoint coordinator: {e}"), Retry::Backoff);
                    return;
                }
                {
                    let mut st = me.state.lock().expect("attempt lock");
                    st.checkpoints_done = true;
                    st.coordinator = None;
                }
                me.check_finished();
            })
            .map_err(|e| Error::io("spawning the checkpoint coordinator", e))?;
        *self.coordinator_thread.lock().expect("coordinator lock") = Some(thread.thread().id());
        Ok(tx)
    }
}
