//! Failures a restart cannot fix and records no operator can process,
//! driven through an embedded, checkpointed job: a deterministic error
//! (a bad record under the fail policy) fails the job at once instead of
//! being retried under the restart strategy, a transient one is still
//! retried, and records whose event time is out of range go to the
//! source's bad-record policy instead of reaching the operators.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sluice_engine::data::{MAX_EVENT_TIME, MIN_EVENT_TIME};
use sluice_engine::{
    CheckpointConfig, Env, Error, OperatorContext, RestartStrategy, Result, Retry, Source,
    SourcePoll, WatermarkStrategy,
};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn batch(ts: Vec<i64>) -> RecordBatch {
    let keys = (0..ts.len() as i64).collect::<Vec<_>>();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(Int64Array::from(ts)),
        ],
    )
    .unwrap()
}

/// A checkpointed job with a generous restart strategy.
fn env(ck: &std::path::Path) -> Env {
    let env = Env::new();
    env.set_parallelism(1);
    env.configure(|c| {
        let mut cfg = CheckpointConfig::new(ck);
        cfg.interval = Duration::from_millis(20);
        c.checkpoint = Some(cfg);
        c.restart = RestartStrategy::FixedDelay {
            attempts: 5,
            delay: Duration::from_millis(20),
        };
    });
    env
}

/// Emits one batch, then fails with `error` on the attempts below
/// `failing_attempts` (counted in `attempts`), then ends.
struct Failing {
    error: fn() -> Error,
    failing_attempts: usize,
    attempt: usize,
    polls: usize,
}

impl Source for Failing {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        self.polls += 1;
        match self.polls {
            1 => Ok(SourcePoll::Batch {
                split: 0,
                batch: batch(vec![1, 2, 3]),
            }),
            _ if self.attempt < self.failing_attempts => Err((self.error)()),
            _ => Ok(SourcePoll::End),
        }
    }
    fn supports_checkpoints(&self) -> bool {
        true
    }
}

/// Runs a job whose source fails as [`Failing`] does; returns the result
/// and how many attempts ran.
fn run_failing(error: fn() -> Error, failing_attempts: usize) -> (Result<u64>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let out = env
        .source_fn("failing", schema(), move |_| {
            let attempt = a.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Failing {
                error,
                failing_attempts,
                attempt,
                polls: 0,
            }))
        })
        .collect();
    let result = env.execute().map(|_| out.num_rows() as u64);
    (result, attempts.load(Ordering::SeqCst))
}

#[test]
fn a_bad_record_fails_the_job_at_once_instead_of_restarting() {
    let (result, attempts) = run_failing(
        || Error::Decode("topic 't' partition 0 offset 7: not JSON".into()),
        usize::MAX,
    );
    let e = result.unwrap_err();
    assert_eq!(e.retry(), Retry::Never, "{e}");
    assert!(e.to_string().contains("offset 7"), "{e}");
    assert_eq!(attempts, 1, "a replay fails the same way: no restart");
}

#[test]
fn a_transient_failure_still_restarts() {
    let (result, attempts) = run_failing(|| Error::connector("kafka", "all brokers down"), 1);
    result.expect("the second attempt succeeds");
    assert_eq!(attempts, 2);
}

/// Emits one batch with extreme event times, recording what the runtime
/// rejects; with `skip` it accepts the rejection (a skip policy).
struct Extreme {
    skip: bool,
    rejected: Arc<Mutex<Vec<(i64, String)>>>,
    done: bool,
}

impl Source for Extreme {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(SourcePoll::End);
        }
        Ok(SourcePoll::Batch {
            split: 0,
            batch: batch(vec![
                1_000,
                i64::MAX,
                2_000,
                i64::MIN,
                MAX_EVENT_TIME,
                MIN_EVENT_TIME,
                MAX_EVENT_TIME + 1,
            ]),
        })
    }
    fn reject(
        &mut self,
        split: usize,
        batch: &RecordBatch,
        rows: &[(usize, String)],
    ) -> Result<()> {
        let ts = batch.column(1).as_primitive::<Int64Type>();
        for (r, why) in rows {
            self.rejected
                .lock()
                .unwrap()
                .push((ts.value(*r), why.clone()));
        }
        if self.skip {
            Ok(())
        } else {
            Err(Error::Decode(format!("split {split}: {}", rows[0].1)))
        }
    }
}

fn run_extreme(skip: bool) -> (Result<Vec<i64>>, Vec<(i64, String)>) {
    let env = Env::new();
    env.set_parallelism(1);
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let r = rejected.clone();
    let out = env
        .source_fn("extreme", schema(), move |_| {
            Ok(Box::new(Extreme {
                skip,
                rejected: r.clone(),
                done: false,
            }))
        })
        .assign_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "ts",
            Duration::from_millis(10),
        ))
        .collect();
    let result = env.execute().map(|_| {
        let b = out.concat();
        b.column(1).as_primitive::<Int64Type>().values().to_vec()
    });
    let rejected = rejected.lock().unwrap().clone();
    (result, rejected)
}

#[test]
fn out_of_range_event_times_go_to_the_source_policy_not_downstream() {
    let (result, rejected) = run_extreme(true);
    let mut kept = result.unwrap();
    kept.sort_unstable();
    assert_eq!(kept, vec![MIN_EVENT_TIME, 1_000, 2_000, MAX_EVENT_TIME]);
    let times: Vec<i64> = rejected.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, vec![i64::MAX, i64::MIN, MAX_EVENT_TIME + 1]);
    assert!(
        rejected[0].1.contains("outside the supported range") && rejected[0].1.contains("'ts'"),
        "{:?}",
        rejected[0]
    );
}

#[test]
fn out_of_range_event_times_fail_a_source_without_a_skip_policy() {
    let (result, _) = run_extreme(false);
    let e = result.unwrap_err();
    assert!(matches!(e.root(), Error::Decode(_)), "{e}");
    assert!(e.to_string().contains("9223372036854775807"), "{e}");
}

/// A source without its own `reject`: the default fails, naming the row.
struct Plain(bool);

impl Source for Plain {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        if std::mem::replace(&mut self.0, true) {
            return Ok(SourcePoll::End);
        }
        Ok(SourcePoll::Batch {
            split: 0,
            batch: batch(vec![5, i64::MIN]),
        })
    }
}

#[test]
fn the_default_policy_fails_naming_the_split_and_row() {
    let env = Env::new();
    env.set_parallelism(1);
    env.source_fn("plain", schema(), |_| Ok(Box::new(Plain(false))))
        .assign_watermarks(WatermarkStrategy::ascending("ts"))
        .collect();
    let e = env.execute().unwrap_err();
    assert_eq!(e.retry(), Retry::Never);
    let msg = e.to_string();
    assert!(msg.contains("split 0") && msg.contains("row 1"), "{msg}");
}
