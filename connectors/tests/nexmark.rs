//! The Nexmark generator and sources: determinism by seed, sources at any
//! parallelism emitting exactly the events of the plain generator, the
//! 1:3:46 mix, id references, event-time disorder within its bound, and
//! watermarks with that bound never making a record late.

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use sluice_connectors::nexmark::model::{
    AUCTION_ID_LEAD, BASE_TIME_MS, FIRST_AUCTION_ID, FIRST_PERSON_ID, HOT_CHANNELS, PERSON_ID_LEAD,
    US_STATES,
};
use sluice_connectors::nexmark::{
    bid_schema, count_of, generate, kind_of, Auction, Bid, Event, Kind, NexmarkConfig,
    NexmarkSource, Person,
};
use sluice_engine::{
    Collector, Env, Error, Operator, OperatorContext, Result, Watermark, WatermarkStrategy,
};

const DISORDER: i64 = 25;

fn cfg(events: u64) -> NexmarkConfig {
    NexmarkConfig {
        events,
        seed: 3,
        max_out_of_orderness_ms: DISORDER,
        batch_size: 333,
        ..Default::default()
    }
}

fn ints(b: &RecordBatch, name: &str) -> Vec<i64> {
    let c = b.column_by_name(name).expect("column");
    match c.as_primitive_opt::<Int64Type>() {
        Some(a) => a.values().to_vec(),
        None => c
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec(),
    }
}

fn strs(b: &RecordBatch, name: &str) -> Vec<String> {
    let a = b.column_by_name(name).expect("column").as_string::<i32>();
    assert_eq!(a.null_count(), 0);
    a.iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect()
}

fn bids_of(b: &RecordBatch) -> Vec<Bid> {
    let (auction, bidder, price) = (ints(b, "auction"), ints(b, "bidder"), ints(b, "price"));
    let (channel, url, extra) = (strs(b, "channel"), strs(b, "url"), strs(b, "extra"));
    let time = ints(b, "date_time");
    (0..b.num_rows())
        .map(|r| Bid {
            auction: auction[r],
            bidder: bidder[r],
            price: price[r],
            channel: channel[r].clone(),
            url: url[r].clone(),
            date_time: time[r],
            extra: extra[r].clone(),
        })
        .collect()
}

fn persons_of(b: &RecordBatch) -> Vec<Person> {
    let (id, time) = (ints(b, "id"), ints(b, "date_time"));
    let (name, email, card) = (
        strs(b, "name"),
        strs(b, "email_address"),
        strs(b, "credit_card"),
    );
    let (city, state, extra) = (strs(b, "city"), strs(b, "state"), strs(b, "extra"));
    (0..b.num_rows())
        .map(|r| Person {
            id: id[r],
            name: name[r].clone(),
            email_address: email[r].clone(),
            credit_card: card[r].clone(),
            city: city[r].clone(),
            state: state[r].clone(),
            date_time: time[r],
            extra: extra[r].clone(),
        })
        .collect()
}

fn auctions_of(b: &RecordBatch) -> Vec<Auction> {
    let (id, initial, reserve) = (ints(b, "id"), ints(b, "initial_bid"), ints(b, "reserve"));
    let (time, expires) = (ints(b, "date_time"), ints(b, "expires"));
    let (seller, category) = (ints(b, "seller"), ints(b, "category"));
    let (item, desc, extra) = (
        strs(b, "item_name"),
        strs(b, "description"),
        strs(b, "extra"),
    );
    (0..b.num_rows())
        .map(|r| Auction {
            id: id[r],
            item_name: item[r].clone(),
            description: desc[r].clone(),
            initial_bid: initial[r],
            reserve: reserve[r],
            date_time: time[r],
            expires: expires[r],
            seller: seller[r],
            category: category[r],
            extra: extra[r].clone(),
        })
        .collect()
}

/// Rows as a sorted multiset (Debug text is a total, faithful key).
fn sorted<T: std::fmt::Debug>(rows: impl IntoIterator<Item = T>) -> Vec<String> {
    let mut v: Vec<String> = rows.into_iter().map(|r| format!("{r:?}")).collect();
    v.sort();
    v
}

/// Everything a source emits at parallelism `p`.
fn run(source: NexmarkSource, p: usize) -> Vec<RecordBatch> {
    let env = Env::new();
    env.set_parallelism(p);
    let out = env.source(source).collect();
    env.execute().expect("nexmark job");
    out.batches()
}

#[test]
fn same_seed_gives_the_same_events_and_another_seed_others() {
    let a: Vec<Event> = generate(&cfg(2_000)).collect();
    assert_eq!(a, generate(&cfg(2_000)).collect::<Vec<_>>());
    let other = NexmarkConfig {
        seed: 4,
        ..cfg(2_000)
    };
    let b: Vec<Event> = generate(&other).collect();
    assert_eq!(a.len(), b.len());
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert!(same < 20, "{same} of 2000 events identical across seeds");
    // A prefix run is a prefix of a longer run.
    assert_eq!(&a[..500], &generate(&cfg(500)).collect::<Vec<_>>()[..]);
}

#[test]
fn sources_emit_exactly_the_generated_events_at_any_parallelism() {
    let events = 20_000;
    let (mut bids, mut persons, mut auctions) = (Vec::new(), Vec::new(), Vec::new());
    for e in generate(&cfg(events)) {
        match e {
            Event::Bid(b) => bids.push(b),
            Event::Person(p) => persons.push(p),
            Event::Auction(a) => auctions.push(a),
        }
    }
    assert_eq!(bids.len() as u64, count_of(Kind::Bid, events));
    let (bids, persons, auctions) = (sorted(bids), sorted(persons), sorted(auctions));
    for p in [1, 3] {
        let got = run(NexmarkSource::bids(cfg(events)), p);
        assert!(got
            .iter()
            .all(|b| b.num_rows() <= 333 && b.schema() == bid_schema()));
        assert_eq!(sorted(got.iter().flat_map(bids_of)), bids, "bids at p={p}");
        let got = run(NexmarkSource::persons(cfg(events)), p);
        assert_eq!(sorted(got.iter().flat_map(persons_of)), persons, "p={p}");
        let got = run(NexmarkSource::auctions(cfg(events)), p);
        assert_eq!(sorted(got.iter().flat_map(auctions_of)), auctions, "p={p}");
    }
}

#[test]
fn mix_ids_and_times_follow_the_model() {
    let (mut p, mut a, mut b) = (0i64, 0i64, 0i64);
    let (mut hot_channel, mut extra_bytes) = (0, 0);
    let mut urls: HashMap<String, String> = HashMap::new();
    for (i, e) in generate(&cfg(50_000)).enumerate() {
        let base = BASE_TIME_MS + (i as i64 * 1000) / 10_000;
        let t = e.date_time();
        assert!(
            t <= base && t >= base - DISORDER,
            "event {i} at {t}, base {base}"
        );
        let want = kind_of(i as u64);
        match e {
            Event::Person(x) => {
                assert_eq!(want, Kind::Person);
                assert_eq!(x.id, FIRST_PERSON_ID + p, "persons are numbered in order");
                p += 1;
                assert!(US_STATES.contains(&x.state.as_str()));
                let card: Vec<&str> = x.credit_card.split(' ').collect();
                assert!(card.len() == 4 && card.iter().all(|g| g.len() == 4));
                assert!(x.email_address.ends_with(".com") && x.email_address.contains('@'));
            }
            Event::Auction(x) => {
                assert_eq!(want, Kind::Auction);
                assert_eq!(x.id, FIRST_AUCTION_ID + a, "auctions are numbered in order");
                a += 1;
                assert!(
                    x.seller >= FIRST_PERSON_ID && x.seller < FIRST_PERSON_ID + p + PERSON_ID_LEAD
                );
                assert!(x.expires > x.date_time && (10..15).contains(&x.category));
                assert!(x.reserve >= x.initial_bid && x.initial_bid >= 100);
            }
            Event::Bid(x) => {
                assert_eq!(want, Kind::Bid);
                b += 1;
                // Beam lets a bid name an auction (person) up to a small lead
                // ahead of the newest one, never before the first.
                let (max_a, max_p) = (FIRST_AUCTION_ID + a - 1, FIRST_PERSON_ID + p - 1);
                assert!(x.auction >= FIRST_AUCTION_ID && x.auction <= max_a + AUCTION_ID_LEAD);
                assert!(x.bidder >= FIRST_PERSON_ID && x.bidder <= max_p + PERSON_ID_LEAD);
                assert!(x.price >= 100 && x.price <= 100_000_000);
                if HOT_CHANNELS.contains(&x.channel.as_str()) {
                    hot_channel += 1;
                } else {
                    assert!(x.channel.starts_with("channel-"), "{}", x.channel);
                }
                // A channel always has the same URL.
                let url = urls.entry(x.channel.clone()).or_insert(x.url.clone());
                assert_eq!(*url, x.url);
                extra_bytes += x.extra.len();
            }
        }
    }
    assert_eq!((p, a, b), (1_000, 3_000, 46_000));
    let hot = hot_channel as f64 / b as f64;
    assert!((0.47..0.53).contains(&hot), "hot channel share {hot}");
    // Beam pads bids to 100 bytes counting 32 for the numbers.
    let avg = extra_bytes as f64 / b as f64;
    assert!((66.0..70.0).contains(&avg), "average bid extra {avg}");
}

/// Fails the job if a record arrives at or behind the watermark.
struct NoLateRecords {
    watermark: i64,
}

impl Operator for NoLateRecords {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        if let Some(t) = ints(&batch, "date_time").into_iter().min() {
            if t <= self.watermark {
                return Err(Error::User(format!("late: {t} <= {}", self.watermark)));
            }
        }
        out.emit(batch);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Watermark,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        if let Watermark::EventTime(t) = watermark {
            self.watermark = self.watermark.max(t);
        }
        Ok(Some(watermark))
    }
}

#[test]
fn watermarks_with_the_disorder_bound_never_make_records_late() {
    let env = Env::new();
    env.set_parallelism(2);
    let bids = env
        .source(NexmarkSource::bids(cfg(30_000)))
        .assign_watermarks(WatermarkStrategy::bounded_out_of_orderness(
            "date_time",
            Duration::from_millis(DISORDER as u64),
        ));
    let schema = bids.schema().clone();
    let out = bids
        .transform("no_late", schema, |_| {
            Ok(Box::new(NoLateRecords {
                watermark: i64::MIN,
            }))
        })
        .collect();
    env.execute().expect("no record is late");
    assert_eq!(out.num_rows() as u64, count_of(Kind::Bid, 30_000));
}

#[test]
fn a_rate_limit_paces_the_source_by_wall_clock() {
    // 2,000 events/s for 200 events: about 100 ms, however fast the machine.
    let started = std::time::Instant::now();
    let source = NexmarkSource::bids(NexmarkConfig {
        rate_limit: Some(2_000),
        ..cfg(200)
    });
    let rows: usize = run(source, 2).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, count_of(Kind::Bid, 200));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(90), "took {took:?}");
}
