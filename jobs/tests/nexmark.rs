//! Every Nexmark query against a straightforward reference computed from the
//! generator's rows, at parallelism 1 and 3 with state on the heap, and at
//! parallelism 3 with every stateful operator (windows, sessions, joins,
//! top-N) keeping its state in RocksDB behind a cache far smaller than it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use sluice_connectors::nexmark::{generate, Auction, Bid, Event, NexmarkConfig, Person};
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::Env;
use sluice_jobs::nexmark::{build, Query};

fn cfg() -> NexmarkConfig {
    NexmarkConfig {
        events: 300_000,
        seed: 7,
        max_out_of_orderness_ms: 40,
        batch_size: 1000,
        ..Default::default()
    }
}

struct Data {
    persons: Vec<Person>,
    auctions: Vec<Auction>,
    bids: Vec<Bid>,
}

fn data() -> Data {
    let mut d = Data {
        persons: vec![],
        auctions: vec![],
        bids: vec![],
    };
    for e in generate(&cfg()) {
        match e {
            Event::Person(p) => d.persons.push(p),
            Event::Auction(a) => d.auctions.push(a),
            Event::Bid(b) => d.bids.push(b),
        }
    }
    d
}

fn run(q: Query, p: usize, rocks: bool) -> RecordBatch {
    let env = Env::new();
    env.set_parallelism(p);
    if rocks {
        env.configure(|c| {
            c.state.backend = StateBackend::RocksDb(RocksConfig {
                cache_bytes: 16 << 10,
                block_cache_bytes: 256 << 10,
                write_buffer_bytes: 256 << 10,
            })
        });
    }
    let out = build(&env, q, &cfg()).collect();
    env.execute()
        .unwrap_or_else(|e| panic!("{q:?} at p={p} (rocksdb: {rocks}): {e}"));
    out.concat()
}

/// Column `name` as i64 (timestamps as epoch ms).
fn i64s(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let c = cast(c, &DataType::Int64).unwrap();
    c.as_primitive::<Int64Type>().values().to_vec()
}

fn strs(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = b.column_by_name(name).unwrap();
    (0..c.len())
        .map(|i| c.as_string::<i32>().value(i).to_string())
        .collect()
}

fn both<T: PartialEq + std::fmt::Debug>(q: Query, f: impl Fn(&RecordBatch) -> T, want: &T) {
    for (p, rocks) in [(1, false), (3, false), (3, true)] {
        let got = f(&run(q, p, rocks));
        assert!(
            &got == want,
            "{q:?} at parallelism {p} (rocksdb: {rocks}):\n got {got:?}\nwant {want:?}"
        );
    }
}

fn window_start(t: i64, size: i64) -> i64 {
    t - t.rem_euclid(size)
}

#[test]
fn stateless_queries() {
    let d = data();
    let mut q0: Vec<(i64, i64, i64, i64)> = d
        .bids
        .iter()
        .map(|b| (b.auction, b.bidder, b.price, b.date_time))
        .collect();
    q0.sort();
    both(
        Query::Q0,
        |b| {
            let (a, bd, p, t) = (
                i64s(b, "auction"),
                i64s(b, "bidder"),
                i64s(b, "price"),
                i64s(b, "date_time"),
            );
            let mut v: Vec<_> = (0..b.num_rows())
                .map(|i| (a[i], bd[i], p[i], t[i]))
                .collect();
            v.sort();
            v
        },
        &q0,
    );

    let mut q1: Vec<(i64, i64)> = d
        .bids
        .iter()
        .map(|b| (b.auction, (b.price as f64 * 0.908 * 1000.0).round() as i64))
        .collect();
    q1.sort();
    both(
        Query::Q1,
        |b| {
            let price = b
                .column_by_name("price")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec();
            let auction = i64s(b, "auction");
            let mut v: Vec<_> = auction
                .into_iter()
                .zip(price)
                .map(|(a, p)| (a, (p * 1000.0).round() as i64))
                .collect();
            v.sort();
            v
        },
        &q1,
    );

    let mut q2: Vec<(i64, i64)> = d
        .bids
        .iter()
        .filter(|b| b.auction % 123 == 0)
        .map(|b| (b.auction, b.price))
        .collect();
    q2.sort();
    assert!(!q2.is_empty());
    both(
        Query::Q2,
        |b| {
            let mut v: Vec<_> = i64s(b, "auction")
                .into_iter()
                .zip(i64s(b, "price"))
                .collect();
            v.sort();
            v
        },
        &q2,
    );
}

#[test]
fn join_queries() {
    let d = data();
    let people: HashMap<i64, &Person> = d.persons.iter().map(|p| (p.id, p)).collect();
    let mut q3: Vec<(String, String, String, i64)> = d
        .auctions
        .iter()
        .filter(|a| a.category == 10)
        .filter_map(|a| people.get(&a.seller).map(|p| (a, p)))
        .filter(|(_, p)| ["OR", "ID", "CA"].contains(&p.state.as_str()))
        .map(|(a, p)| (p.name.clone(), p.city.clone(), p.state.clone(), a.id))
        .collect();
    q3.sort();
    assert!(!q3.is_empty());
    both(
        Query::Q3,
        |b| {
            let (n, c, s, id) = (
                strs(b, "name"),
                strs(b, "city"),
                strs(b, "state"),
                i64s(b, "id"),
            );
            let mut v: Vec<_> = (0..b.num_rows())
                .map(|i| (n[i].clone(), c[i].clone(), s[i].clone(), id[i]))
                .collect();
            v.sort();
            v
        },
        &q3,
    );

    // q8: persons who opened an auction in the 10 s window they joined.
    let size = 10_000;
    let persons: BTreeSet<(i64, String, i64)> = d
        .persons
        .iter()
        .map(|p| (p.id, p.name.clone(), window_start(p.date_time, size)))
        .collect();
    let sellers: BTreeSet<(i64, i64)> = d
        .auctions
        .iter()
        .map(|a| (a.seller, window_start(a.date_time, size)))
        .collect();
    let q8: BTreeSet<(i64, String, i64)> = persons
        .into_iter()
        .filter(|(id, _, w)| sellers.contains(&(*id, *w)))
        .collect();
    assert!(!q8.is_empty());
    both(
        Query::Q8,
        |b| {
            let (id, n, w) = (i64s(b, "id"), strs(b, "name"), i64s(b, "window_start"));
            let v: Vec<_> = (0..b.num_rows())
                .map(|i| (id[i], n[i].clone(), w[i]))
                .collect();
            let set: BTreeSet<_> = v.iter().cloned().collect();
            assert_eq!(set.len(), v.len(), "duplicate q8 rows");
            set
        },
        &q8,
    );

    // q4: average winning price per category.
    let mut best: HashMap<i64, i64> = HashMap::new();
    let by_id: HashMap<i64, &Auction> = d.auctions.iter().map(|a| (a.id, a)).collect();
    for b in &d.bids {
        if let Some(a) = by_id.get(&b.auction) {
            if b.date_time >= a.date_time && b.date_time <= a.expires {
                let e = best.entry(a.id).or_insert(b.price);
                *e = (*e).max(b.price);
            }
        }
    }
    let mut per_cat: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (id, price) in best {
        per_cat.entry(by_id[&id].category).or_default().push(price);
    }
    let q4: BTreeMap<i64, i64> = per_cat
        .into_iter()
        .map(|(c, v)| {
            (
                c,
                (v.iter().sum::<i64>() as f64 / v.len() as f64 * 1000.0).round() as i64,
            )
        })
        .collect();
    assert!(!q4.is_empty());
    both(
        Query::Q4,
        |b| {
            let avg = b
                .column_by_name("avg_final")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec();
            i64s(b, "category")
                .into_iter()
                .zip(avg)
                .map(|(c, a)| (c, (a * 1000.0).round() as i64))
                .collect::<BTreeMap<_, _>>()
        },
        &q4,
    );
}

#[test]
fn window_queries() {
    let d = data();
    // q5: per sliding window (10 s every 2 s), the auctions with the most bids.
    let (size, slide) = (10_000, 2_000);
    let mut counts: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for b in &d.bids {
        let mut s = window_start(b.date_time, slide);
        while s + size > b.date_time {
            *counts.entry((s, b.auction)).or_default() += 1;
            s -= slide;
        }
    }
    let mut max: BTreeMap<i64, i64> = BTreeMap::new();
    for ((s, _), c) in &counts {
        let m = max.entry(*s).or_default();
        *m = (*m).max(*c);
    }
    let q5: BTreeSet<(i64, i64, i64, i64)> = counts
        .iter()
        .filter(|((s, _), c)| max[s] == **c)
        .map(|((s, a), c)| (*a, *s, s + size, *c))
        .collect();
    both(
        Query::Q5,
        |b| {
            let (a, s, e, c) = (
                i64s(b, "auction"),
                i64s(b, "window_start"),
                i64s(b, "window_end"),
                i64s(b, "count"),
            );
            (0..b.num_rows())
                .map(|i| (a[i], s[i], e[i], c[i]))
                .collect::<BTreeSet<_>>()
        },
        &q5,
    );

    // q7: per tumbling 10 s window, the bids with the highest price.
    let mut top: BTreeMap<i64, i64> = BTreeMap::new();
    for b in &d.bids {
        let m = top
            .entry(window_start(b.date_time, size))
            .or_insert(b.price);
        *m = (*m).max(b.price);
    }
    let mut q7: Vec<(i64, i64, i64, i64, i64)> = d
        .bids
        .iter()
        .filter(|b| top[&window_start(b.date_time, size)] == b.price)
        .map(|b| {
            (
                b.auction,
                b.price,
                b.bidder,
                b.date_time,
                window_start(b.date_time, size),
            )
        })
        .collect();
    q7.sort();
    both(
        Query::Q7,
        |b| {
            let (a, p, bd, t, w) = (
                i64s(b, "auction"),
                i64s(b, "price"),
                i64s(b, "bidder"),
                i64s(b, "date_time"),
                i64s(b, "window_start"),
            );
            let mut v: Vec<_> = (0..b.num_rows())
                .map(|i| (a[i], p[i], bd[i], t[i], w[i]))
                .collect();
            v.sort();
            v
        },
        &q7,
    );

    // q11: bids per bidder session (gap 10 s).
    let gap = 10_000;
    let mut by_bidder: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for b in &d.bids {
        by_bidder.entry(b.bidder).or_default().push(b.date_time);
    }
    let mut q11 = BTreeSet::new();
    for (bidder, mut ts) in by_bidder {
        ts.sort();
        let (mut start, mut last, mut n) = (ts[0], ts[0], 0);
        for t in ts {
            if t >= last + gap {
                q11.insert((bidder, start, last + gap, n));
                start = t;
                n = 0;
            }
            last = t;
            n += 1;
        }
        q11.insert((bidder, start, last + gap, n));
    }
    both(
        Query::Q11,
        |b| {
            let (a, s, e, c) = (
                i64s(b, "bidder"),
                i64s(b, "window_start"),
                i64s(b, "window_end"),
                i64s(b, "count"),
            );
            (0..b.num_rows())
                .map(|i| (a[i], s[i], e[i], c[i]))
                .collect::<BTreeSet<_>>()
        },
        &q11,
    );
}
