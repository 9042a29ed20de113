//! State time-to-live driven through the DSL: keyed state whose entries
//! expire in event time (on both backends), and an unbounded join that
//! forgets rows after a processing-time TTL.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{OperatorContext, Result};
use sluice_operators::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Visit {
    user: i64,
    ts: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    user: i64,
    ts: i64,
    first: bool,
}

/// Emits `rows` one per batch, each when its wall-clock offset is due.
struct Scheduled<R> {
    rows: Vec<(Duration, R)>,
    start: Option<Instant>,
}

impl<R: Serialize + for<'de> Deserialize<'de> + Send + 'static> RowSource for Scheduled<R> {
    type Row = R;

    fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<R>>> {
        let start = *self.start.get_or_insert_with(Instant::now);
        match self.rows.first() {
            None => Ok(None),
            Some((at, _)) if start.elapsed() < *at => Ok(Some(Vec::new())),
            Some(_) => Ok(Some(vec![self.rows.remove(0).1])),
        }
    }
}

fn scheduled<R: Clone>(rows: &[(u64, R)]) -> impl Fn(&OperatorContext) -> Scheduled<R> {
    let rows: Vec<(Duration, R)> = rows
        .iter()
        .map(|(ms, r)| (Duration::from_millis(*ms), r.clone()))
        .collect();
    move |_ctx| Scheduled {
        rows: rows.clone(),
        start: None,
    }
}

#[test]
fn keyed_state_expires_as_the_watermark_passes_its_ttl() {
    let visits: Vec<(u64, Visit)> = [
        (1, 0),
        (1, 500),
        (2, 600),
        (3, 2_000),
        (1, 2_100),
        (2, 2_200),
        (1, 2_300),
    ]
    .into_iter()
    .map(|(user, ts)| (0, Visit { user, ts }))
    .collect();
    // The watermark trails the rows by a batch: row 5 (user 1 at 2,100)
    // comes after watermark 2,000, past the 1,000 ms TTL of user 1's
    // write at watermark 0 (row 2), so user 1 is new again; row 6 likewise
    // for user 2 (written at 500); row 7 is within the TTL of row 5.
    let want: Vec<bool> = vec![true, false, true, true, true, true, false];
    let rocks = StateBackend::RocksDb(RocksConfig {
        cache_bytes: 64,
        ..RocksConfig::default()
    });
    for backend in [StateBackend::Memory, rocks] {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::new();
        env.configure(|c| {
            c.state.backend = backend.clone();
            c.state.local_dir = dir.path().to_path_buf();
        });
        let last =
            ValueState::<i64>::new("last").ttl(StateTtl::event_time(Duration::from_millis(1_000)));
        let l = last.clone();
        let out = env
            .row_source("visits", scheduled(&visits))
            .set_parallelism(1)
            .watermarks(WatermarkStrategy::bounded_out_of_orderness(
                "ts",
                Duration::ZERO,
            ))
            .key_by(["user"])
            .process_keyed(
                [last.descriptor()],
                move |v: Visit, st, out: &mut Vec<Seen>| {
                    let first = l.get(st)?.is_none();
                    l.set(st, &v.ts)?;
                    out.push(Seen {
                        user: v.user,
                        ts: v.ts,
                        first,
                    });
                    Ok(())
                },
            )
            .set_parallelism(1)
            .collect();
        env.execute().unwrap();
        let mut got = out.rows::<Seen>().unwrap();
        got.sort_by_key(|s| s.ts);
        let firsts: Vec<bool> = got.iter().map(|s| s.first).collect();
        assert_eq!(firsts, want, "{backend:?}: {got:?}");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Side {
    k: i64,
    v: i64,
}

#[derive(Debug, Deserialize)]
struct Pair {
    k: i64,
    v: i64,
    right_v: i64,
}

#[test]
fn a_join_with_a_ttl_forgets_rows_older_than_it() {
    let pairs = |ttl: Option<StateTtl>| {
        let env = Env::new();
        env.set_parallelism(1);
        let left = env.row_source(
            "left",
            scheduled(&[(0, Side { k: 1, v: 10 }), (0, Side { k: 2, v: 20 })]),
        );
        // k = 2 arrives at once; k = 1 long after the TTL of the left row.
        let right = env.row_source(
            "right",
            scheduled(&[(0, Side { k: 2, v: 21 }), (4_000, Side { k: 1, v: 11 })]),
        );
        let joined = match ttl {
            Some(ttl) => left.join_with_ttl(right, &["k"], &["k"], ttl),
            None => left.join(right, &["k"], &["k"]),
        };
        let out = joined.collect();
        env.execute().unwrap();
        let mut got: Vec<(i64, i64, i64)> = out
            .rows::<Pair>()
            .unwrap()
            .into_iter()
            .map(|p| (p.k, p.v, p.right_v))
            .collect();
        got.sort();
        got
    };
    let ttl = StateTtl::processing_time(Duration::from_millis(1_500));
    assert_eq!(
        pairs(Some(ttl)),
        [(2, 20, 21)],
        "the left k = 1 row expired"
    );
    assert_eq!(
        pairs(None),
        [(1, 10, 11), (2, 20, 21)],
        "without a TTL both match"
    );
}

#[test]
fn a_join_ttl_restarting_on_reads_is_a_plan_error() {
    let env = Env::new();
    let left = env.from_rows("left", vec![Side { k: 1, v: 1 }]);
    let right = env.from_rows("right", vec![Side { k: 1, v: 2 }]);
    let ttl = StateTtl::processing_time(Duration::from_secs(1)).update_on_read();
    let _ = left.join_with_ttl(right, &["k"], &["k"], ttl).collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("join_with_ttl") && err.contains("OnWrite"),
        "{err}"
    );
}
