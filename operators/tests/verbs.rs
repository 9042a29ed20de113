//! The DSL verbs driven as a user would: small jobs at parallelism 1 and 4,
//! results compared as sorted row sets; plan errors; a panicking closure;
//! lateness and the late-data output; user-defined aggregates; joins.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMillisecondType,
};
use serde::{Deserialize, Serialize};
use sluice_engine::{Env, Stream};
use sluice_operators::prelude::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

/// One batch per entry of `rows` groups, from a single source subtask.
fn source(env: &Env, groups: Vec<Vec<(i64, &str, i64)>>) -> Stream {
    let batches: Vec<RecordBatch> = groups
        .into_iter()
        .map(|g| {
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(g.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(g.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter_values(g.iter().map(|r| r.2))),
                ],
            )
            .unwrap()
        })
        .collect();
    env.from_batches("rows", schema(), batches)
}

fn numbers(env: &Env, n: i64) -> Stream {
    let rows: Vec<(i64, &str, i64)> = (0..n)
        .map(|i| (i, if i % 2 == 0 { "even" } else { "odd" }, i * 10))
        .collect();
    source(env, rows.chunks(7).map(|c| c.to_vec()).collect())
}

fn ids(batches: &[RecordBatch], col: usize) -> Vec<i64> {
    let mut v: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(col).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    v.sort();
    v
}

#[test]
fn filter_select_and_partitioning_at_several_parallelisms() {
    for p in [1, 4] {
        let env = Env::new();
        env.set_parallelism(p);
        let base = numbers(&env, 100);
        let filtered = base
            .clone()
            .rebalance()
            .filter(col("id").gt(lit(10)).and(col("name").eq(lit("even"))))
            .select([
                (col("id") * lit(2)).alias("double"),
                upper(col("name")).alias("n"),
            ]);
        let a = filtered.collect();
        let keyed = base
            .clone()
            .key_by(["name"])
            .filter(col("id").lt(lit(5)))
            .load_balance()
            .select([col("id")])
            .collect();
        let b = base
            .clone()
            .broadcast()
            .select([col("id")])
            .set_parallelism(3)
            .collect();
        let u = base
            .clone()
            .union(&[base.clone().filter(col("id").lt(lit(3)))])
            .select([col("id")])
            .collect();
        env.execute().unwrap();
        let want: Vec<i64> = (12..100).step_by(2).map(|i| i * 2).collect();
        assert_eq!(ids(&a.batches(), 0), want, "p={p}");
        let names = a.concat();
        assert!(names
            .column(1)
            .as_string::<i32>()
            .iter()
            .all(|s| s == Some("EVEN")));
        assert_eq!(ids(&keyed.batches(), 0), vec![0, 1, 2, 3, 4]);
        assert_eq!(b.num_rows(), 300, "broadcast to 3 subtasks");
        let mut want_u: Vec<i64> = (0..100).chain(0..3).collect();
        want_u.sort();
        assert_eq!(ids(&u.batches(), 0), want_u);
    }
}

#[derive(Deserialize)]
struct In {
    id: i64,
    name: String,
}

#[derive(Serialize, Deserialize)]
struct Out {
    id: i64,
    label: String,
    half: f64,
}

#[test]
fn typed_closures_and_batch_functions() {
    for p in [1, 4] {
        let env = Env::new();
        env.set_parallelism(p);
        let base = numbers(&env, 50).rebalance();
        let m = base
            .clone()
            .map(|r: In| Out {
                id: r.id,
                label: format!("{}-{}", r.name, r.id),
                half: r.id as f64 / 2.0,
            })
            .collect();
        let fm = base
            .clone()
            .flat_map(|r: In| {
                (0..r.id % 3).map(move |k| Out {
                    id: r.id,
                    label: String::new(),
                    half: k as f64,
                })
            })
            .collect();
        let out_schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let s2 = out_schema.clone();
        let mb = base
            .clone()
            .map_batches(out_schema, move |b| {
                Ok(RecordBatch::try_new(s2.clone(), vec![b.column(0).clone()])?)
            })
            .collect();
        env.execute().unwrap();
        let all = m.concat();
        assert_eq!(all.num_rows(), 50);
        let half = all
            .column_by_name("half")
            .unwrap()
            .as_primitive::<Float64Type>();
        let id = all
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let label = all.column_by_name("label").unwrap().as_string::<i32>();
        for i in 0..50 {
            assert_eq!(half.value(i), id.value(i) as f64 / 2.0);
            assert!(label.value(i).ends_with(&format!("-{}", id.value(i))));
        }
        assert_eq!(fm.num_rows() as i64, (0..50).map(|i| i % 3).sum::<i64>());
        assert_eq!(ids(&mb.batches(), 0), (0..50).collect::<Vec<_>>());
    }
}

#[test]
fn a_panicking_closure_fails_the_job_with_its_message() {
    let env = Env::new();
    env.set_parallelism(2);
    numbers(&env, 100)
        .rebalance()
        .map(|r: In| {
            if r.id == 42 {
                panic!("cannot handle record 42");
            }
            Out {
                id: r.id,
                label: r.name,
                half: 0.0,
            }
        })
        .collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("cannot handle record 42") && err.contains("map"),
        "{err}"
    );

    let env = Env::new();
    numbers(&env, 10)
        .try_map(|r: In| {
            if r.id == 3 {
                Err("bad id 3")
            } else {
                Ok(Out {
                    id: r.id,
                    label: r.name,
                    half: 0.0,
                })
            }
        })
        .collect();
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("bad id 3") && err.contains("try_map"), "{err}");
}

#[test]
fn plan_errors_name_the_operator_and_the_column() {
    let check = |build: &dyn Fn(&Env), want: &[&str]| {
        let env = Env::new();
        build(&env);
        let err = env.execute().unwrap_err().to_string();
        for w in want {
            assert!(err.contains(w), "'{w}' missing from: {err}");
        }
    };
    check(
        &|env| drop(numbers(env, 3).filter(col("nope").gt(lit(1))).collect()),
        &["filter after 'rows'", "'nope'"],
    );
    check(
        &|env| drop(numbers(env, 3).filter(col("id")).collect()),
        &["filter", "not Boolean"],
    );
    check(
        &|env| drop(numbers(env, 3).select([col("id") + col("name")]).collect()),
        &["select", "'name' is Utf8"],
    );
    check(
        &|env| drop(numbers(env, 3).key_by(["missing"]).collect()),
        &["key_by", "'missing'"],
    );
    check(
        &|env| {
            drop(
                numbers(env, 3)
                    .key_by(["id"])
                    .window(WindowSpec::tumbling(Duration::from_secs(1)))
                    .aggregate([count()])
                    .collect(),
            )
        },
        &["window", "no watermark strategy"],
    );
    check(
        &|env| {
            drop(
                numbers(env, 3)
                    .watermarks(bounded_out_of_orderness("ts", Duration::ZERO))
                    .key_by(["id"])
                    .window(WindowSpec::tumbling(Duration::from_secs(1)))
                    .aggregate([sum("name")])
                    .collect(),
            )
        },
        &["window", "sum_name", "'name' is Utf8"],
    );
    check(
        &|env| {
            drop(
                numbers(env, 3)
                    .watermarks(bounded_out_of_orderness("name", Duration::ZERO))
                    .collect(),
            )
        },
        &["'name'", "Utf8"],
    );
    check(
        &|env| {
            drop(
                numbers(env, 3)
                    .union(&[numbers(env, 2).select([col("id")])])
                    .collect(),
            )
        },
        &["union", "[id, name, ts]", "[id]"],
    );
    check(
        &|env| {
            drop(
                numbers(env, 3)
                    .join(numbers(env, 3), &["id"], &["name"])
                    .collect(),
            )
        },
        &["join", "key types differ"],
    );
    check(
        &|env| drop(numbers(env, 3).map(|r: Out| r).collect()),
        &["map", "'label'"],
    );
}

fn windows(s: Stream, lateness: u64) -> (Stream, Stream) {
    let agg = s
        .watermarks(bounded_out_of_orderness("ts", Duration::ZERO))
        .key_by(["name"])
        .window(WindowSpec::tumbling(Duration::from_millis(100)))
        .allowed_lateness(Duration::from_millis(lateness))
        .aggregate([count(), sum("id")]);
    let late = agg.late_data();
    (agg, late)
}

fn rows_of(b: &[RecordBatch]) -> Vec<(String, i64, i64, i64)> {
    let mut v = Vec::new();
    for b in b {
        let name = b.column(0).as_string::<i32>();
        let start = b.column(1).as_primitive::<TimestampMillisecondType>();
        let c = b.column(3).as_primitive::<Int64Type>();
        let s = b.column(4).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            v.push((
                name.value(i).to_string(),
                start.value(i),
                c.value(i),
                s.value(i),
            ));
        }
    }
    v
}

#[test]
fn late_records_go_to_the_side_output_or_refire_within_lateness() {
    // Batch 1 moves time to 249; batch 2 brings a record for [0, 100), fired already.
    let input = vec![
        vec![(1, "a", 10), (2, "a", 250)],
        vec![(3, "a", 20)],
        vec![(4, "a", 400)],
    ];
    let env = Env::new();
    let (agg, late) = windows(source(&env, input.clone()), 0);
    let (agg, late) = (agg.collect(), late.collect());
    env.execute().unwrap();
    assert_eq!(
        ids(&late.batches(), 0),
        vec![3],
        "the record for a fired window is late"
    );
    let mut got = rows_of(&agg.batches());
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a".into(), 0, 1, 1),
            ("a".into(), 200, 1, 2),
            ("a".into(), 400, 1, 4)
        ]
    );

    let env = Env::new();
    let (agg, late) = windows(source(&env, input), 200);
    let (agg, late) = (agg.collect(), late.collect());
    env.execute().unwrap();
    assert_eq!(late.num_rows(), 0);
    let got = rows_of(&agg.batches());
    // [0,100) fires at watermark 249, then again with the late record.
    assert_eq!(
        got.iter().filter(|r| r.1 == 0).cloned().collect::<Vec<_>>(),
        vec![("a".into(), 0, 1, 1), ("a".into(), 0, 2, 4)]
    );
}

struct Product;
impl AggregateFunction for Product {
    type Input = i64;
    type Acc = Option<i64>;
    type Output = Option<i64>;
    fn name(&self) -> &str {
        "product"
    }
    fn accumulate(&self, acc: &mut Option<i64>, v: i64) {
        *acc = Some(acc.unwrap_or(1) * v);
    }
    fn merge(&self, acc: &mut Option<i64>, other: &Option<i64>) {
        if let Some(o) = other {
            self.accumulate(acc, *o);
        }
    }
    fn finish(&self, acc: &Option<i64>) -> Option<i64> {
        *acc
    }
}

#[test]
fn user_defined_aggregates_run_in_sliding_windows() {
    for p in [1, 3] {
        let env = Env::new();
        env.set_parallelism(p);
        let rows: Vec<(i64, &str, i64)> = (1..=6).map(|i| (i, "k", i * 100)).collect();
        let out = source(&env, vec![rows])
            .watermarks(bounded_out_of_orderness("ts", Duration::ZERO))
            .key_by(["name"])
            .window(WindowSpec::sliding(
                Duration::from_millis(300),
                Duration::from_millis(100),
            ))
            .aggregate([udaf("id", Product)])
            .collect();
        env.execute().unwrap();
        let b = out.concat();
        assert_eq!(b.schema().field(3).name(), "product_id");
        let mut got: Vec<(i64, i64)> = (0..b.num_rows())
            .map(|i| {
                (
                    b.column(1)
                        .as_primitive::<TimestampMillisecondType>()
                        .value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                )
            })
            .collect();
        got.sort();
        // Window [s, s+300) holds ids with 100*id in it.
        let want: Vec<(i64, i64)> = (-100..=600)
            .step_by(100)
            .map(|s| {
                (
                    s,
                    (1..=6)
                        .filter(|i| i * 100 >= s && i * 100 < s + 300)
                        .product::<i64>(),
                )
            })
            .filter(|(s, _)| (1..=6).any(|i| i * 100 >= *s && i * 100 < s + 300))
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn unbounded_join_emits_each_pair_once() {
    for p in [1, 4] {
        let env = Env::new();
        env.set_parallelism(p);
        let left = source(
            &env,
            vec![vec![(1, "x", 0), (2, "y", 0)], vec![(3, "x", 0)]],
        );
        let right = source(
            &env,
            vec![vec![(10, "x", 0)], vec![(20, "z", 0), (30, "x", 0)]],
        );
        let out = left.join(right, &["name"], &["name"]).collect();
        env.execute().unwrap();
        let b = out.concat();
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            ["id", "name", "ts", "right_id", "right_name", "right_ts"]
        );
        let mut pairs: Vec<(i64, i64)> = (0..b.num_rows())
            .map(|i| {
                (
                    b.column(0).as_primitive::<Int64Type>().value(i),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                )
            })
            .collect();
        pairs.sort();
        assert_eq!(pairs, vec![(1, 10), (1, 30), (3, 10), (3, 30)]);
    }
}

#[test]
fn filter_and_select_keep_keys_and_event_time_when_columns_survive() {
    let env = Env::new();
    let timed = numbers(&env, 4)
        .watermarks(bounded_out_of_orderness("ts", Duration::ZERO))
        .key_by(["name"]);
    let f = timed.clone().filter(col("id").gt(lit(0)));
    assert_eq!(f.keys(), Some(&["name".to_string()][..]));
    assert_eq!(f.event_time(), Some("ts"));
    let kept = f
        .clone()
        .select([col("name"), col("ts"), col("id") * lit(2)]);
    assert_eq!(kept.keys(), Some(&["name".to_string()][..]));
    assert_eq!(kept.event_time(), Some("ts"));
    let renamed = f.select([col("name").alias("n"), (col("ts") + lit(1)).alias("ts")]);
    assert_eq!(renamed.keys(), None, "a renamed key column is not the key");
    assert_eq!(
        renamed.event_time(),
        None,
        "a computed 'ts' is not event time"
    );
    assert!(
        !renamed.schema().field(0).is_nullable(),
        "a non-null column stays non-null"
    );
}

#[test]
fn select_rejects_duplicate_names_and_map_batches_checks_its_schema() {
    let env = Env::new();
    drop(
        numbers(&env, 3)
            .select([col("id"), col("ts").alias("id")])
            .collect(),
    );
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("select after 'rows'") && err.contains("'id' appears twice"),
        "{err}"
    );

    let env = Env::new();
    let declared = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    drop(
        numbers(&env, 3)
            .map_batches(declared, |b| Ok(b.project(&[1])?))
            .collect(),
    );
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("map_batches after 'rows'")
            && err.contains("returned [name: Utf8]")
            && err.contains("declared [id: Int64]"),
        "{err}"
    );
}

#[test]
fn union_names_the_first_differing_column_and_widens_nullability() {
    let env = Env::new();
    let floats = numbers(&env, 2).select([
        col("id"),
        col("name"),
        col("ts").cast(DataType::Float64).alias("ts"),
    ]);
    drop(numbers(&env, 3).union(&[floats]).collect());
    let err = env.execute().unwrap_err().to_string();
    assert!(
        err.contains("union after 'rows")
            && err.contains("column 2 is 'ts' (Int64) vs 'ts' (Float64)"),
        "{err}"
    );

    for p in [1, 3] {
        let env = Env::new();
        env.set_parallelism(p);
        // `numbers` has non-null columns; a cast can produce nulls, so the
        // other side's `name` is nullable and holds nulls.
        let nullable = numbers(&env, 4).select([
            col("id"),
            lit("x")
                .cast(DataType::Int64)
                .cast(DataType::Utf8)
                .alias("name"),
            col("ts"),
        ]);
        assert!(nullable.schema().field(1).is_nullable());
        let u = numbers(&env, 5).union(&[nullable]);
        assert!(u.schema().field(1).is_nullable(), "widened");
        assert!(!u.schema().field(0).is_nullable(), "id stays non-null");
        let out = u.select([col("name"), col("id")]).collect();
        env.execute().unwrap();
        let b = out.concat();
        assert_eq!(b.num_rows(), 9);
        assert_eq!(b.column(0).null_count(), 4, "the nullable side's names");
        assert_eq!(
            ids(&out.batches(), 1),
            vec![0, 0, 1, 1, 2, 2, 3, 3, 4],
            "p={p}"
        );
    }
}

#[test]
fn timestamp_literals_filter_timestamp_columns() {
    use arrow::datatypes::TimeUnit;
    for p in [1, 4] {
        let env = Env::new();
        env.set_parallelism(p);
        let at = numbers(&env, 20).select([
            col("id"),
            col("ts")
                .cast(DataType::Timestamp(TimeUnit::Millisecond, None))
                .alias("at"),
        ]);
        let out = at
            .clone()
            .rebalance()
            .filter(col("at").gt_eq(lit_timestamp_ms(150)))
            .collect();
        env.execute().unwrap();
        // ts = id * 10, so ts >= 150 means id >= 15.
        let want: Vec<i64> = (0..20).filter(|i| i * 10 >= 150).collect();
        assert_eq!(ids(&out.batches(), 0), want, "p={p}");
    }
    let env = Env::new();
    drop(
        numbers(&env, 3)
            .filter(col("name").gt(lit_timestamp_ms(1)))
            .collect(),
    );
    let err = env.execute().unwrap_err().to_string();
    assert!(err.contains("cannot compare 'name' (Utf8)"), "{err}");
}
