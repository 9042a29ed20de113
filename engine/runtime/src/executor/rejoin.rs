//! A running executor's move to a new leader that adopted its attempt.
//!
//! When the coordinators elect a new leader, the worker learns its control
//! address and term from the leader's heartbeat answer and relays them on
//! the executor's stdin, a [`Relay`] per line after the spec. The executor
//! keeps its tasks running meanwhile. A relay of a newer term than the one
//! it serves (or of its term at another address: a restarted leader whose
//! vote survived leads again in its term) makes it dial that leader and say a rejoining hello (the
//! newest checkpoint it prepared and its finished tasks); once the leader
//! answers with the peers, that connection replaces the old one (which is
//! shut down: a deposed leader's frames are dropped from the moment the
//! hello is built) and the control reader goes on with it. Without a relay
//! within the spec's grace after the connection was lost, the executor
//! fences itself as before.

use std::io::BufRead;
use std::sync::OnceLock;

use sluice_protocol::control::{Rejoin, Relay};

use super::*;

/// How long a failed rejoin waits for a newer relay before trying the
/// same leader again.
const RETRY: Duration = Duration::from_millis(500);

/// Relays read from stdin, once the spec came from there.
static RELAYS: OnceLock<Receiver<Relay>> = OnceLock::new();

/// Starts reading relays from stdin (the lines after the spec), once.
pub(super) fn read_relays() -> Result<()> {
    if RELAYS.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("executor-relays".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { return };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Relay>(&line) {
                    Ok(relay) => {
                        if tx.send(relay).is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(error = %e, "a line on stdin is not a relay of a new leader"),
                }
            }
        })
        .map_err(|e| Error::io("spawning the relay reader", e))?;
    let _ = RELAYS.set(rx);
    Ok(())
}

/// What an executor says when it rejoins, and where its relays come from.
pub(super) struct Rejoiner {
    relays: Receiver<Relay>,
    grace: Duration,
    /// The term and control address of the spec: the leader served first.
    term: u64,
    control: String,
    job_id: String,
    attempt: u64,
    executor: usize,
    exchange: String,
    secret: String,
    tls: Option<ClusterTls>,
}

impl Rejoiner {
    /// `None` unless the spec allows a grace and came with relays (from a
    /// worker, on stdin).
    pub(super) fn for_spec(
        spec: &ExecutorSpec,
        exchange: String,
        tls: Option<ClusterTls>,
    ) -> Option<Rejoiner> {
        let relays = RELAYS.get()?.clone();
        (spec.rejoin_grace_ms > 0).then(|| Rejoiner {
            relays,
            grace: Duration::from_millis(spec.rejoin_grace_ms),
            term: spec.term,
            control: spec.control.clone(),
            job_id: spec.job_id.clone(),
            attempt: spec.attempt,
            executor: spec.executor,
            exchange,
            secret: spec.secret.clone(),
            tls,
        })
    }

    /// Starts the thread that follows relays until `done`; returns where
    /// the connections to new leaders go, and the grace.
    pub(super) fn spawn(
        &self,
        link: ControlLink,
        fence: Arc<Fence>,
        done: Arc<AtomicBool>,
    ) -> Result<(Receiver<(StreamReader, u64)>, Duration)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let me = Rejoiner {
            relays: self.relays.clone(),
            grace: self.grace,
            term: self.term,
            control: self.control.clone(),
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            executor: self.executor,
            exchange: self.exchange.clone(),
            secret: self.secret.clone(),
            tls: self.tls.clone(),
        };
        std::thread::Builder::new()
            .name("control-rejoin".into())
            .spawn(move || me.follow(&link, &fence, &done, &tx))
            .map_err(|e| Error::io("spawning the rejoin thread", e))?;
        Ok((rx, self.grace))
    }

    fn follow(
        &self,
        link: &ControlLink,
        fence: &Fence,
        done: &AtomicBool,
        rejoined: &Sender<(StreamReader, u64)>,
    ) {
        // The leader served (term, control address).
        let mut served = (self.term, self.control.clone());
        while !done.load(Ordering::SeqCst) {
            let mut relay = match self.relays.recv_timeout(TICK) {
                Ok(r) => r,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            let deadline = Instant::now() + self.grace;
            loop {
                if !relay.supersedes(served.0, &served.1) {
                    debug!(
                        term = relay.term,
                        "relay of a leader already served ignored"
                    );
                    break;
                }
                match self.rejoin(&relay, link, fence, rejoined) {
                    Ok(()) => {
                        served = (relay.term, relay.control.clone());
                        break;
                    }
                    Err(e) if Instant::now() >= deadline || done.load(Ordering::SeqCst) => {
                        warn!(control = %relay.control, term = relay.term, error = %e,
                            "could not rejoin the new leader");
                        break;
                    }
                    Err(e) => {
                        debug!(control = %relay.control, error = %e, "rejoining failed; retrying");
                        // A newer relay replaces this one.
                        if let Ok(r) = self.relays.recv_timeout(RETRY) {
                            relay = r;
                        }
                    }
                }
            }
        }
    }

    /// Says the rejoining hello to the leader of `relay` and, once it
    /// answers with the peers, makes its connection the executor's.
    fn rejoin(
        &self,
        relay: &Relay,
        link: &ControlLink,
        fence: &Fence,
        rejoined: &Sender<(StreamReader, u64)>,
    ) -> Result<()> {
        let new = ControlLink::dial(&relay.control, self.tls.as_ref())?;
        let mut reader = new.reader()?;
        let told = {
            let mut term = fence.gate();
            // From here on the deposed leader's frames are dropped, so
            // nothing it prepares can be missing from what is reported.
            *term = (*term).max(relay.term);
            Rejoin {
                checkpoint: fence.prepared.load(Ordering::SeqCst),
                finished: fence
                    .finished
                    .lock()
                    .expect("fence lock")
                    .iter()
                    .copied()
                    .collect(),
            }
        };
        new.send(&ToCoordinator::Hello {
            protocol: sluice_protocol::PROTOCOL_VERSION,
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            term: relay.term,
            executor: self.executor,
            exchange: self.exchange.clone(),
            secret: self.secret.clone(),
            rejoin: Some(told.clone()),
        })?;
        // The leader answers once every executor of the attempt rejoined.
        new.set_read_timeout(Some(self.grace));
        let answer = read_frame::<_, ToExecutor>(&mut reader);
        new.set_read_timeout(None);
        peers_of(
            answer?,
            &relay.control,
            relay.term,
            &format!("the rejoin of executor {}", self.executor),
        )?;
        link.replace(&new)?;
        // Tasks that finished after the hello was built.
        let finished: Vec<TaskKey> = fence
            .finished
            .lock()
            .expect("fence lock")
            .iter()
            .filter(|t| !told.finished.contains(t))
            .copied()
            .collect();
        for t in finished {
            link.send(&ToCoordinator::Finished(t))?;
        }
        info!(job = %self.job_id, attempt = self.attempt, executor = self.executor,
            control = %relay.control, term = relay.term, checkpoint = told.checkpoint,
            "rejoined the new leader");
        rejoined
            .send((reader, relay.term))
            .map_err(|_| Error::Cancelled)
    }
}
