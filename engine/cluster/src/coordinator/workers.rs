//! The workers a coordinator knows: registration (ids that survive a
//! worker's restart on the same data directory), heartbeats, and the
//! decision that one is dead; dead workers are shown for a while, then
//! forgotten. Pure bookkeeping: the manager decides what a lost worker
//! means for its jobs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use sluice_engine::error::{Error, Result};
use sluice_protocol::api::RegisterWorker;

/// One worker.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Slots offered.
    pub slots: usize,
    /// Declared capacity (weight for the weighted scheduler).
    pub capacity: f64,
    /// Host its executors listen on.
    pub host: String,
    /// When its last heartbeat (or registration) arrived.
    pub last_heartbeat: Instant,
    /// Whether its heartbeats arrive in time.
    pub alive: bool,
    /// Its own process, as its last heartbeat said.
    pub process: Option<sluice_protocol::metrics::ProcessMetrics>,
}

/// What a registration meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A worker this coordinator did not know (new, or known to an earlier
    /// coordinator process).
    New(String),
    /// A worker that registered before under this id and registers again:
    /// its earlier process is gone, with whatever executors it ran.
    Restarted(String),
}

impl Registration {
    /// The worker's id.
    pub fn id(&self) -> &str {
        match self {
            Registration::New(id) | Registration::Restarted(id) => id,
        }
    }
}

/// Every worker a coordinator knows.
#[derive(Debug, Default)]
pub struct Workers {
    by_id: HashMap<String, Worker>,
}

impl Workers {
    /// Checks and records a registration. A worker without an id gets
    /// `worker-{next}`; `next` is raised past any `worker-N` a worker
    /// brings, so a new id never names a known one.
    pub fn register(&mut self, req: RegisterWorker, next: &mut u64) -> Result<Registration> {
        if req.slots == 0 {
            return Err(Error::Config(
                "a worker must offer at least one slot".into(),
            ));
        }
        if !(req.capacity > 0.0 && req.capacity.is_finite()) {
            return Err(Error::Config(format!(
                "capacity must be a positive number, not {}",
                req.capacity
            )));
        }
        if req.host.trim().is_empty() || req.host.contains([' ', '/']) {
            return Err(Error::Config(format!(
                "{:?} is not a host executors can listen on",
                req.host
            )));
        }
        let registration = match req.worker_id.filter(|id| !id.is_empty()) {
            Some(id) => {
                if !valid_id(&id) {
                    return Err(Error::Config(format!(
                        "{id:?} is not a worker id (letters, digits, '-' and '_', at most 64)"
                    )));
                }
                if let Some(n) = id
                    .strip_prefix("worker-")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    *next = (*next).max(n + 1);
                }
                if self.by_id.contains_key(&id) {
                    Registration::Restarted(id)
                } else {
                    Registration::New(id)
                }
            }
            None => loop {
                let id = format!("worker-{next}");
                *next += 1;
                if !self.by_id.contains_key(&id) {
                    break Registration::New(id);
                }
            },
        };
        info!(worker = %registration.id(), slots = req.slots, host = %req.host,
            restarted = matches!(registration, Registration::Restarted(_)), "worker registered");
        self.by_id.insert(
            registration.id().to_string(),
            Worker {
                slots: req.slots,
                capacity: req.capacity,
                host: req.host,
                last_heartbeat: Instant::now(),
                alive: true,
                process: None,
            },
        );
        Ok(registration)
    }

    /// Notes a heartbeat of `id`; false for a worker not known (it must
    /// register again).
    pub fn heartbeat(
        &mut self,
        id: &str,
        now: Instant,
        process: Option<sluice_protocol::metrics::ProcessMetrics>,
    ) -> bool {
        let Some(w) = self.by_id.get_mut(id) else {
            return false;
        };
        w.last_heartbeat = now;
        if process.is_some() {
            w.process = process;
        }
        if !w.alive {
            info!(worker = id, "worker is back");
            w.alive = true;
        }
        true
    }

    /// Declares dead the live workers silent for longer than `timeout`, and
    /// forgets the dead ones silent for longer than `forget_after`; returns
    /// the newly dead.
    pub fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        forget_after: Duration,
    ) -> Vec<String> {
        let mut dead = Vec::new();
        for (id, w) in self.by_id.iter_mut() {
            let silent = now.saturating_duration_since(w.last_heartbeat);
            if w.alive && silent > timeout {
                w.alive = false;
                warn!(worker = %id, ?timeout, "worker missed its heartbeats: declared dead");
                dead.push(id.clone());
            }
        }
        self.by_id.retain(|id, w| {
            let keep = w.alive || now.saturating_duration_since(w.last_heartbeat) <= forget_after;
            if !keep {
                info!(worker = %id, "forgetting a worker dead for long");
            }
            keep
        });
        dead.sort();
        dead
    }

    /// One worker.
    pub fn get(&self, id: &str) -> Option<&Worker> {
        self.by_id.get(id)
    }

    /// Every worker, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Worker)> {
        self.by_id.iter()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: Option<&str>) -> RegisterWorker {
        RegisterWorker {
            worker_id: id.map(str::to_string),
            slots: 2,
            capacity: 1.0,
            host: "127.0.0.1".into(),
        }
    }

    #[test]
    fn new_workers_are_numbered_apart_and_a_known_id_is_a_restart() {
        let mut w = Workers::default();
        let mut next = 1;
        assert_eq!(
            w.register(req(None), &mut next).unwrap(),
            Registration::New("worker-1".into())
        );
        assert_eq!(
            w.register(req(None), &mut next).unwrap(),
            Registration::New("worker-2".into())
        );
        // Same data directory, restarted: the same id.
        assert_eq!(
            w.register(req(Some("worker-1")), &mut next).unwrap(),
            Registration::Restarted("worker-1".into())
        );
        // An id an earlier coordinator handed out raises the counter.
        assert_eq!(
            w.register(req(Some("worker-9")), &mut next).unwrap(),
            Registration::New("worker-9".into())
        );
        assert_eq!(next, 10);
        assert_eq!(w.register(req(None), &mut next).unwrap().id(), "worker-10");
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut w = Workers::default();
        let mut next = 1;
        let mut r = req(None);
        r.slots = 0;
        assert!(w.register(r, &mut next).is_err());
        let mut r = req(None);
        r.capacity = f64::NAN;
        assert!(w.register(r, &mut next).is_err());
        let mut r = req(None);
        r.host = "127.0.0.1:7070/x".into();
        assert!(w.register(r, &mut next).is_err());
        assert!(w.register(req(Some("../etc")), &mut next).is_err());
        assert!(w.register(req(Some(&"x".repeat(65))), &mut next).is_err());
        assert_eq!(next, 1, "nothing handed out");
    }

    #[test]
    fn silent_workers_die_then_are_forgotten() {
        let mut w = Workers::default();
        let mut next = 1;
        w.register(req(None), &mut next).unwrap();
        w.register(req(None), &mut next).unwrap();
        let t0 = Instant::now();
        let (timeout, forget) = (Duration::from_secs(3), Duration::from_secs(60));
        assert!(w.heartbeat("worker-2", t0 + Duration::from_secs(5), None));
        assert!(!w.heartbeat("worker-7", t0, None));
        assert_eq!(
            w.expire(t0 + Duration::from_secs(5), timeout, forget),
            ["worker-1"]
        );
        assert!(
            w.expire(t0 + Duration::from_secs(6), timeout, forget)
                .is_empty(),
            "once"
        );
        assert!(!w.get("worker-1").unwrap().alive);
        assert!(
            w.heartbeat("worker-1", t0 + Duration::from_secs(7), None),
            "back"
        );
        assert!(w.get("worker-1").unwrap().alive);
        // Silent for good: dead, then forgotten.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(w.expire(later, timeout, forget).len(), 2);
        assert!(w.get("worker-1").is_some(), "dead, still listed");
        w.expire(t0 + Duration::from_secs(200), timeout, forget);
        assert!(w.get("worker-1").is_none() && w.get("worker-2").is_none());
    }
}
