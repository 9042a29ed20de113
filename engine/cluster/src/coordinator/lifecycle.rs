//! The life cycle of one job on the coordinator, as one explicit state
//! machine: the states are [`JobState`]'s, and every transition is a method
//! of [`Lifecycle`] that checks the state it starts from, moves to the next
//! and says what the manager must do about it. Pure: no I/O, no clock (the
//! caller passes times in), no locks, so every transition has unit tests
//! below.
//!
//! ```text
//!   CREATED ──schedule──▶ SCHEDULING ──running──▶ RUNNING ◀──▶ SAVEPOINTING
//!      ▲                     │  ▲                    │ │ ╲
//!      │              start  │  │ schedule   rescale │ │  ╲ finishing
//!      │             failed  ▼  │                    ▼ │   ▼
//!      │                  RESTARTING ◀──failed──  RESCALING  FINISHING
//!      │                     │                       │ ended    │ ended
//!      │                     ▼ budget spent,         ▼          ▼
//!      │                   FAILED   deterministic  (SCHEDULING) FINISHED
//!   cancel from any state that has not ended ──▶ CANCELED
//! ```
//!
//! - A failure of a running or starting attempt, and a start that fails
//!   for a reason other than missing slots (an unreadable checkpoint
//!   location, a checkpoint of another job), count against the job's
//!   [`RestartPolicy`]: the job restarts after the policy's delay or fails
//!   for good. A deterministic failure (a record that can never be decoded
//!   under the fail policy, a plan error) and a job that does not
//!   checkpoint fail at once.
//! - Too few slots is not a failure: the job waits in CREATED or
//!   RESTARTING.
//! - A rescale stops the attempt with a savepoint; when that attempt ends,
//!   the job schedules its next attempt at the new parallelism without
//!   counting a restart. If the attempt fails first, the rescale is dropped
//!   and the failure handled as any other.

use serde::{Deserialize, Serialize};
use sluice_protocol::api::{JobState, RestartPolicy};
pub use sluice_protocol::control::Retry;

/// The part of a job's record the life cycle decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Where the job is.
    pub state: JobState,
    /// The newest attempt started (0: none yet).
    pub attempt: u64,
    /// Restarts after failures so far.
    pub restarts: u64,
    /// The last failure (kept while the job restarts or after it failed).
    pub error: Option<String>,
    /// The job's restart strategy.
    pub policy: RestartPolicy,
    /// Whether the job checkpoints (only then can it resume after a failure).
    pub checkpoints: bool,
    /// Savepoints asked for through the API and not answered yet.
    #[serde(skip)]
    savepoints: u32,
}

/// A transition asked of a job in a state that does not allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job is {}: {why}", state.name())]
pub struct Refused {
    /// The job's state.
    pub state: JobState,
    /// What is not possible from there.
    pub why: &'static str,
}

/// What follows a failed attempt or start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Start the next attempt no sooner than this many ms from now.
    Restart {
        /// The restart policy's delay.
        delay_ms: u64,
    },
    /// The job failed for good (its error says why).
    Failed,
    /// The job had ended already; nothing changes.
    Ignored,
}

impl Lifecycle {
    /// A job just submitted.
    pub fn new(policy: RestartPolicy, checkpoints: bool) -> Self {
        Lifecycle {
            state: JobState::Created,
            attempt: 0,
            restarts: 0,
            error: None,
            policy,
            checkpoints,
            savepoints: 0,
        }
    }

    /// A job read back from its record by a coordinator that starts (or
    /// takes over): one that had an attempt running resumes it from its
    /// checkpoints, without counting a restart.
    pub fn reopened(mut self) -> Self {
        self.savepoints = 0;
        if !self.state.is_terminal() && self.state != JobState::Created {
            self.state = JobState::Restarting;
        }
        self
    }

    /// Whether a new leader may adopt the job's running attempt instead of
    /// starting another: it ran (a savepoint or the final checkpoint may
    /// have been under way), and no rescale was asked of it.
    pub fn may_adopt(&self) -> bool {
        matches!(
            self.state,
            JobState::Running | JobState::Savepointing | JobState::Finishing
        )
    }

    /// A job whose running attempt a new leader adopted: it runs on; a
    /// savepoint asked of the previous leader is not answered by this one.
    pub fn adopted(mut self) -> Self {
        self.savepoints = 0;
        if self.state == JobState::Savepointing {
            self.state = JobState::Running;
        }
        self
    }

    /// Whether the job waits for its next attempt (CREATED, RESTARTING, or
    /// RESCALING once the stopped attempt ended).
    pub fn waits_for_attempt(&self, has_run: bool) -> bool {
        !has_run
            && matches!(
                self.state,
                JobState::Created | JobState::Restarting | JobState::Rescaling
            )
    }

    /// Starts attempt `max(attempt + 1, min_attempt)` (a checkpoint of a
    /// later attempt raises the floor, so numbers never go back): the job
    /// is SCHEDULING until its executors all say hello. Returns the number.
    pub fn schedule(&mut self, min_attempt: u64) -> Result<u64, Refused> {
        match self.state {
            JobState::Created | JobState::Restarting | JobState::Rescaling => {
                self.attempt = (self.attempt + 1).max(min_attempt);
                self.state = JobState::Scheduling;
                self.savepoints = 0;
                Ok(self.attempt)
            }
            state => Err(Refused {
                state,
                why: "only a job waiting for an attempt can start one",
            }),
        }
    }

    /// Every executor of the attempt said hello.
    pub fn running(&mut self) -> Result<(), Refused> {
        match self.state {
            JobState::Scheduling => {
                self.state = JobState::Running;
                self.error = None;
                Ok(())
            }
            // Already running (a repeated event) is no change.
            s if s.is_running() => Ok(()),
            state => Err(Refused {
                state,
                why: "only a starting attempt can begin to run",
            }),
        }
    }

    /// A savepoint was asked for through the API.
    pub fn savepoint_requested(&mut self) -> Result<(), Refused> {
        match self.state {
            JobState::Running | JobState::Savepointing => {
                self.savepoints += 1;
                self.state = JobState::Savepointing;
                Ok(())
            }
            state => Err(Refused {
                state,
                why: "only a running job can take a savepoint",
            }),
        }
    }

    /// A savepoint asked for was answered (taken or not).
    pub fn savepoint_answered(&mut self) {
        self.savepoints = self.savepoints.saturating_sub(1);
        if self.savepoints == 0 && self.state == JobState::Savepointing {
            self.state = JobState::Running;
        }
    }

    /// A rescale was asked for: the attempt stops with a savepoint.
    pub fn rescale_requested(&mut self) -> Result<(), Refused> {
        match self.state {
            JobState::Running | JobState::Savepointing => {
                if !self.checkpoints {
                    return Err(Refused {
                        state: self.state,
                        why: "it does not checkpoint, so its state cannot move to another parallelism",
                    });
                }
                self.state = JobState::Rescaling;
                Ok(())
            }
            JobState::Rescaling => Err(Refused {
                state: self.state,
                why: "it is already being rescaled",
            }),
            state => Err(Refused {
                state,
                why: "only a running job can be rescaled",
            }),
        }
    }

    /// The rescale's savepoint failed while the attempt runs on: back to
    /// running at the old parallelism.
    pub fn rescale_abandoned(&mut self) {
        if self.state == JobState::Rescaling {
            self.state = if self.savepoints > 0 {
                JobState::Savepointing
            } else {
                JobState::Running
            };
        }
    }

    /// Every task consumed its input; the final checkpoint is under way.
    pub fn finishing(&mut self) {
        if matches!(self.state, JobState::Running | JobState::Savepointing) {
            self.state = JobState::Finishing;
        }
    }

    /// The attempt ended cleanly. With a rescale pending (`rescaling`), the
    /// job stays RESCALING and waits for its next attempt; otherwise it is
    /// FINISHED.
    pub fn attempt_ended(&mut self, rescaling: bool) -> Result<JobState, Refused> {
        if self.state.is_terminal() {
            return Err(Refused {
                state: self.state,
                why: "it ended already",
            });
        }
        self.savepoints = 0;
        self.state = if rescaling && self.state == JobState::Rescaling {
            JobState::Rescaling
        } else {
            JobState::Finished
        };
        Ok(self.state)
    }

    /// The attempt failed (a task error, an executor or worker lost), or a
    /// start failed for a reason other than missing slots.
    pub fn failed(&mut self, error: String, retry: Retry) -> AfterFailure {
        if self.state.is_terminal() {
            return AfterFailure::Ignored;
        }
        self.savepoints = 0;
        let give_up = |why: String, this: &mut Self| {
            this.state = JobState::Failed;
            this.error = Some(why);
            AfterFailure::Failed
        };
        if retry == Retry::Never {
            return give_up(
                format!("{error} (a deterministic failure: restarting would fail the same way)"),
                self,
            );
        }
        if !self.checkpoints {
            return give_up(
                format!("{error} (the job does not checkpoint, so it cannot be restarted)"),
                self,
            );
        }
        match self.policy.delay_ms(self.restarts) {
            Some(delay_ms) => {
                self.restarts += 1;
                self.state = JobState::Restarting;
                self.error = Some(error);
                AfterFailure::Restart { delay_ms }
            }
            None => give_up(
                format!(
                    "{error} (after {} restarts; the job's restart strategy allows {})",
                    self.restarts,
                    self.policy.attempts()
                ),
                self,
            ),
        }
    }

    /// A user cancelled the job.
    pub fn cancel(&mut self) -> Result<(), Refused> {
        if self.state.is_terminal() {
            return Err(Refused {
                state: self.state,
                why: "it already ended",
            });
        }
        self.state = JobState::Canceled;
        self.savepoints = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: RestartPolicy = RestartPolicy::ExponentialBackoff {
        attempts: 2,
        initial_ms: 100,
        max_ms: 150,
    };

    fn running() -> Lifecycle {
        let mut l = Lifecycle::new(BACKOFF, true);
        assert_eq!(l.schedule(0), Ok(1));
        l.running().unwrap();
        l
    }

    #[test]
    fn a_job_is_scheduled_then_runs() {
        let mut l = Lifecycle::new(BACKOFF, true);
        assert_eq!(l.state, JobState::Created);
        assert!(l.waits_for_attempt(false));
        assert!(!l.waits_for_attempt(true));
        assert_eq!(l.schedule(0), Ok(1));
        assert_eq!(l.state, JobState::Scheduling);
        assert!(l.schedule(0).is_err(), "one attempt at a time");
        l.running().unwrap();
        assert_eq!(l.state, JobState::Running);
        l.running().unwrap();
        assert_eq!(l.state, JobState::Running, "a repeated event is no change");
    }

    #[test]
    fn attempt_numbers_never_go_back() {
        let mut l = running();
        l.failed("x".into(), Retry::Backoff);
        assert_eq!(
            l.schedule(7),
            Ok(7),
            "a checkpoint of attempt 7 raises the floor"
        );
        l.failed("x".into(), Retry::Backoff);
        assert_eq!(l.schedule(3), Ok(8));
    }

    #[test]
    fn failures_restart_under_the_jobs_policy_then_fail() {
        let mut l = running();
        assert_eq!(
            l.failed("worker lost".into(), Retry::Backoff),
            AfterFailure::Restart { delay_ms: 100 }
        );
        assert_eq!(l.state, JobState::Restarting);
        assert_eq!(l.error.as_deref(), Some("worker lost"));
        assert_eq!(l.restarts, 1);
        l.schedule(0).unwrap();
        assert_eq!(
            l.failed("again".into(), Retry::Backoff),
            AfterFailure::Restart { delay_ms: 150 },
            "doubled, capped at the maximum"
        );
        l.schedule(0).unwrap();
        assert_eq!(
            l.failed("third".into(), Retry::Backoff),
            AfterFailure::Failed
        );
        assert_eq!(l.state, JobState::Failed);
        let e = l.error.clone().unwrap();
        assert!(
            e.contains("third") && e.contains("after 2 restarts") && e.contains("allows 2"),
            "{e}"
        );
        assert_eq!(
            l.failed("late".into(), Retry::Backoff),
            AfterFailure::Ignored
        );
    }

    #[test]
    fn a_start_failure_counts_against_the_budget() {
        // A start that fails before anything runs (a bad checkpoint
        // location) is a failure of the job in CREATED or SCHEDULING.
        let mut l = Lifecycle::new(
            RestartPolicy::FixedDelay {
                attempts: 1,
                delay_ms: 5,
            },
            true,
        );
        assert_eq!(
            l.failed("cannot read s3://nowhere".into(), Retry::Backoff),
            AfterFailure::Restart { delay_ms: 5 }
        );
        l.schedule(0).unwrap();
        assert_eq!(
            l.failed("cannot read s3://nowhere".into(), Retry::Backoff),
            AfterFailure::Failed
        );
    }

    #[test]
    fn deterministic_failures_and_jobs_without_checkpoints_fail_at_once() {
        let mut l = running();
        assert_eq!(
            l.failed("bad record at offset 7".into(), Retry::Never),
            AfterFailure::Failed
        );
        assert!(l.error.unwrap().contains("deterministic"));
        assert_eq!(l.restarts, 0);

        let mut l = Lifecycle::new(BACKOFF, false);
        l.schedule(0).unwrap();
        assert_eq!(
            l.failed("boom".into(), Retry::Backoff),
            AfterFailure::Failed
        );
        assert!(l.error.unwrap().contains("does not checkpoint"));

        let mut l = Lifecycle::new(RestartPolicy::None, true);
        l.schedule(0).unwrap();
        assert_eq!(
            l.failed("boom".into(), Retry::Backoff),
            AfterFailure::Failed
        );
    }

    #[test]
    fn savepoints_are_counted_until_each_is_answered() {
        let mut l = running();
        l.savepoint_requested().unwrap();
        l.savepoint_requested().unwrap();
        assert_eq!(l.state, JobState::Savepointing);
        l.savepoint_answered();
        assert_eq!(l.state, JobState::Savepointing, "one still in flight");
        l.savepoint_answered();
        assert_eq!(l.state, JobState::Running);
        let mut created = Lifecycle::new(BACKOFF, true);
        assert!(created.savepoint_requested().is_err());
    }

    #[test]
    fn a_rescale_stops_the_attempt_and_schedules_the_next_without_a_restart() {
        let mut l = running();
        l.rescale_requested().unwrap();
        assert_eq!(l.state, JobState::Rescaling);
        assert_eq!(
            l.rescale_requested().unwrap_err().why,
            "it is already being rescaled"
        );
        assert_eq!(l.attempt_ended(true), Ok(JobState::Rescaling));
        assert!(l.waits_for_attempt(false));
        assert_eq!(l.schedule(0), Ok(2));
        assert_eq!(l.restarts, 0);
    }

    #[test]
    fn a_rescale_that_fails_leaves_the_job_as_it_was() {
        let mut l = running();
        l.rescale_requested().unwrap();
        l.rescale_abandoned();
        assert_eq!(l.state, JobState::Running);
        // A failure during the rescale is a failure like any other.
        l.rescale_requested().unwrap();
        assert_eq!(
            l.failed("executor lost".into(), Retry::Backoff),
            AfterFailure::Restart { delay_ms: 100 }
        );
        let mut no_checkpoints = Lifecycle::new(BACKOFF, false);
        no_checkpoints.schedule(0).unwrap();
        no_checkpoints.running().unwrap();
        assert!(no_checkpoints.rescale_requested().is_err());
    }

    #[test]
    fn a_job_finishes_through_its_final_checkpoint() {
        let mut l = running();
        l.finishing();
        assert_eq!(l.state, JobState::Finishing);
        assert_eq!(l.attempt_ended(false), Ok(JobState::Finished));
        assert!(l.attempt_ended(false).is_err());
        // A rescale whose attempt finished its input first finishes too.
        let mut l = running();
        l.finishing();
        assert_eq!(l.attempt_ended(true), Ok(JobState::Finished));
    }

    #[test]
    fn cancel_ends_any_job_that_has_not_ended() {
        for setup in [
            |l: &mut Lifecycle| {
                l.schedule(0).unwrap();
            },
            |l: &mut Lifecycle| {
                l.schedule(0).unwrap();
                l.running().unwrap();
                l.rescale_requested().unwrap();
            },
            |l: &mut Lifecycle| {
                let _ = l.failed("x".into(), Retry::Backoff);
            },
        ] {
            let mut l = Lifecycle::new(BACKOFF, true);
            setup(&mut l);
            l.cancel().unwrap();
            assert_eq!(l.state, JobState::Canceled);
            assert!(l.cancel().is_err());
            assert!(l.schedule(0).is_err());
        }
    }

    #[test]
    fn a_reopened_job_resumes_unless_it_ended() {
        let mut l = running();
        l.savepoint_requested().unwrap();
        let l = l.reopened();
        assert_eq!(l.state, JobState::Restarting);
        assert_eq!(l.restarts, 0);
        let created = Lifecycle::new(BACKOFF, true).reopened();
        assert_eq!(created.state, JobState::Created);
        let mut done = running();
        done.attempt_ended(false).unwrap();
        assert_eq!(done.reopened().state, JobState::Finished);
    }
}
