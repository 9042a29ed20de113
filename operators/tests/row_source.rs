//! Typed row sources: rows of serde structs in, Arrow out, and back with
//! `rows()`; idle polls, the end, `close`, checkpoints and resume, and the
//! plan error for a row type with no Arrow schema.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_engine::arrow::datatypes::DataType;
use sluice_engine::data::CheckpointId;
use sluice_engine::{CheckpointConfig, Env, Error, OperatorContext, Result};
use sluice_operators::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Event {
    id: i64,
    name: String,
    score: Option<f64>,
}

fn event(id: i64) -> Event {
    Event {
        id,
        name: format!("e{id}"),
        score: (id % 2 == 0).then_some(id as f64 / 2.0),
    }
}

#[test]
fn rows_round_trip_with_strings_and_nulls() {
    let env = Env::new();
    env.set_parallelism(1); // one sink subtask: rows in order
    let rows: Vec<Event> = (0..2500).map(event).collect();
    let s = env.from_rows("events", rows.clone());
    let schema = s.schema().clone();
    assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
    assert!(schema.field(2).is_nullable());
    let out = s.collect();
    env.execute().unwrap();
    assert_eq!(out.batches().len(), 3, "1024 rows a batch");
    let back = out.rows::<Event>().unwrap();
    assert!(
        back == rows,
        "rows differ, e.g. {:?}",
        back.iter().zip(&rows).find(|(a, b)| a != b)
    );
}

/// Idle twice, then two batches, then the end; counts closes.
struct Flaky {
    polls: u64,
    closed: Arc<AtomicU64>,
}

impl RowSource for Flaky {
    type Row = Event;

    fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<Event>>> {
        self.polls += 1;
        Ok(match self.polls {
            1 | 2 => Some(Vec::new()),
            3 => Some(vec![event(1), event(2)]),
            4 => Some(vec![event(3)]),
            _ => None,
        })
    }

    fn idle_backoff(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }

    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn idle_polls_batches_end_and_close() {
    let closed = Arc::new(AtomicU64::new(0));
    let env = Env::new();
    let c = closed.clone();
    let out = env
        .row_source("flaky", move |_ctx| Flaky {
            polls: 0,
            closed: c.clone(),
        })
        .set_parallelism(2)
        .collect();
    let result = env.execute().unwrap();
    let mut ids: Vec<i64> = out
        .rows::<Event>()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 1, 2, 2, 3, 3], "both subtasks' rows");
    assert_eq!(result.node("flaky").unwrap().records_out, 6);
    assert_eq!(closed.load(Ordering::SeqCst), 2, "one close per subtask");
}

/// Emits ids `0..20`, one a poll, failing once after 10 (the first run
/// only); records its position.
struct Counting {
    next: i64,
    fail_at: Option<i64>,
}

impl RowSource for Counting {
    type Row = Event;

    fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<Event>>> {
        if Some(self.next) == self.fail_at {
            // A transient failure of the outside world: worth a restart
            // (a user function's own error is not, see `Error::retry`).
            return Err(Error::connector("counting", "source failed on purpose"));
        }
        if self.next >= 20 {
            return Ok(None);
        }
        self.next += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(Some(vec![event(self.next - 1)]))
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(vec![self.next.to_le_bytes().to_vec()])
    }

    fn restore(&mut self, entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        for e in entries {
            self.next = i64::from_le_bytes(e.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

#[test]
fn a_checkpointed_row_source_resumes_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let env = Env::new();
    env.configure(|c| {
        let mut ck = CheckpointConfig::new(dir.path());
        ck.interval = std::time::Duration::from_millis(50);
        c.checkpoint = Some(ck);
    });
    let r = runs.clone();
    let out = env
        .row_source("counting", move |_ctx| Counting {
            next: 0,
            // Only the first run fails; the restart resumes from a checkpoint.
            fail_at: (r.fetch_add(1, Ordering::SeqCst) == 0).then_some(10),
        })
        .set_parallelism(1)
        .collect();
    env.execute().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one restart");
    let mut ids: Vec<i64> = out
        .rows::<Event>()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, (0..20).collect::<Vec<_>>(), "every id, none skipped");
    // Resumed, not replayed from the start: fewer than 10 ids twice.
    assert!(out.num_rows() < 30, "{} rows", out.num_rows());
}

#[test]
fn a_row_type_without_an_arrow_schema_is_a_plan_error() {
    /// Rows that are plain numbers, not structs: no columns to name.
    struct Numbers;
    impl RowSource for Numbers {
        type Row = i64;
        fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<i64>>> {
            Ok(None)
        }
    }
    let env = Env::new();
    env.row_source("numbers", |_ctx| Numbers).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("source 'numbers'") && err.contains("cannot derive an Arrow schema"),
        "{err}"
    );
}
