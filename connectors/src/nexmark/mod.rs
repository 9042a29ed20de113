//! The Nexmark benchmark's data: a deterministic generator of persons,
//! auctions and bids (see [`generator`]) and sources that emit one type each
//! as Arrow batches. The event set depends only on the config, never on the
//! parallelism: subtask `s` of `p` emits the `j`-th record of its type for
//! every `j ≡ s (mod p)`.

pub mod generator;
pub mod model;

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_engine::graph::SourceFactory;
use sluice_engine::{OperatorContext, Result, Source, SourcePoll, SourceSpec};

use generator::{auction, bid, person, write_channel, write_url, Clock};
pub use generator::{count_of, event_of, kind_of, Kind};
pub use model::{auction_schema, bid_schema, person_schema, Auction, Bid, Event, Person};

/// Generator settings (Beam's defaults unless said otherwise).
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    /// Number of events (all types) to generate.
    pub events: u64,
    /// Seed; the same seed gives the same events.
    pub seed: u64,
    /// Events per second of *event time* (spacing of timestamps).
    pub first_event_rate: u64,
    /// Each event's time may be moved back by up to this much (ms).
    pub max_out_of_orderness_ms: i64,
    /// Wall-clock limit in events per second for the whole source; `None`
    /// generates as fast as possible.
    pub rate_limit: Option<u64>,
    /// Rows per batch.
    pub batch_size: usize,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            events: 10_000_000,
            seed: 42,
            first_event_rate: 10_000,
            max_out_of_orderness_ms: 0,
            rate_limit: None,
            batch_size: 8192,
        }
    }
}

impl NexmarkConfig {
    fn clock(&self) -> Clock {
        Clock {
            seed: self.seed,
            rate: self.first_event_rate,
            disorder: self.max_out_of_orderness_ms.max(0),
        }
    }
}

/// Every event in id order, as rows (for references and tests).
pub fn generate(cfg: &NexmarkConfig) -> impl Iterator<Item = Event> + '_ {
    let c = cfg.clock();
    (0..cfg.events).map(move |i| match kind_of(i) {
        Kind::Person => Event::Person(person(&c, i).to_row()),
        Kind::Auction => Event::Auction(auction(&c, i).to_row()),
        Kind::Bid => Event::Bid(bid(&c, i).to_row()),
    })
}

/// A Nexmark source emitting one type of event.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    kind: Kind,
    cfg: NexmarkConfig,
}

impl NexmarkSource {
    /// Bids.
    pub fn bids(cfg: NexmarkConfig) -> Self {
        NexmarkSource {
            kind: Kind::Bid,
            cfg,
        }
    }
    /// Persons.
    pub fn persons(cfg: NexmarkConfig) -> Self {
        NexmarkSource {
            kind: Kind::Person,
            cfg,
        }
    }
    /// Auctions.
    pub fn auctions(cfg: NexmarkConfig) -> Self {
        NexmarkSource {
            kind: Kind::Auction,
            cfg,
        }
    }
}

impl SourceSpec for NexmarkSource {
    fn name(&self) -> String {
        match self.kind {
            Kind::Person => "nexmark_persons",
            Kind::Auction => "nexmark_auctions",
            Kind::Bid => "nexmark_bids",
        }
        .into()
    }

    fn schema(&self) -> Result<SchemaRef> {
        Ok(match self.kind {
            Kind::Person => person_schema(),
            Kind::Auction => auction_schema(),
            Kind::Bid => bid_schema(),
        })
    }

    fn factory(&self) -> SourceFactory {
        let me = self.clone();
        Arc::new(move |ctx: &OperatorContext| {
            Ok(Box::new(NexmarkSubtask {
                kind: me.kind,
                clock: me.cfg.clock(),
                cfg: me.cfg.clone(),
                next: ctx.subtask as u64,
                step: ctx.parallelism as u64,
                total: count_of(me.kind, me.cfg.events),
                started: Instant::now(),
                emitted: 0,
            }) as Box<dyn Source>)
        })
    }
}

/// One subtask of a Nexmark source.
struct NexmarkSubtask {
    kind: Kind,
    clock: Clock,
    cfg: NexmarkConfig,
    /// Next ordinal (within the type) this subtask emits.
    next: u64,
    step: u64,
    total: u64,
    started: Instant,
    emitted: u64,
}

impl NexmarkSubtask {
    /// Ordinals of the next batch, and their event ids.
    fn take_ids(&mut self) -> Vec<u64> {
        let mut ids = Vec::with_capacity(self.cfg.batch_size);
        while ids.len() < self.cfg.batch_size && self.next < self.total {
            ids.push(event_of(self.kind, self.next));
            self.next += self.step;
        }
        ids
    }

    fn bids(&self, ids: &[u64], schema: SchemaRef) -> Result<RecordBatch> {
        let n = ids.len();
        let (mut auction, mut bidder, mut price) = (
            Int64Builder::with_capacity(n),
            Int64Builder::with_capacity(n),
            Int64Builder::with_capacity(n),
        );
        let mut channel = StringBuilder::with_capacity(n, n * 8);
        let mut url = StringBuilder::with_capacity(n, n * 60);
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        let mut extra = StringBuilder::with_capacity(n, n * 32);
        for &i in ids {
            let b = bid(&self.clock, i);
            auction.append_value(b.auction);
            bidder.append_value(b.bidder);
            price.append_value(b.price);
            write_channel(&mut channel, &b.channel);
            channel.append_value("");
            write_url(&mut url, b.url_path, &b.channel);
            url.append_value("");
            time.append_value(b.date_time);
            extra.append_value(b.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(auction.finish()),
            Arc::new(bidder.finish()),
            Arc::new(price.finish()),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(time.finish()),
            Arc::new(extra.finish()),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn persons(&self, ids: &[u64], schema: SchemaRef) -> Result<RecordBatch> {
        let n = ids.len();
        let mut id = Int64Builder::with_capacity(n);
        let (mut name, mut email, mut card) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut city, mut state, mut extra) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut time = TimestampMillisecondBuilder::with_capacity(n);
        for &i in ids {
            let p = person(&self.clock, i);
            id.append_value(p.id);
            let _ = write!(name, "{} {}", p.first, p.last);
            name.append_value("");
            let _ = write!(email, "{}@{}.com", p.email.0, p.email.1);
            email.append_value("");
            let _ = write!(
                card,
                "{:04} {:04} {:04} {:04}",
                p.card[0], p.card[1], p.card[2], p.card[3]
            );
            card.append_value("");
            city.append_value(p.city);
            state.append_value(p.state);
            time.append_value(p.date_time);
            extra.append_value(p.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(email.finish()),
            Arc::new(card.finish()),
            Arc::new(city.finish()),
            Arc::new(state.finish()),
            Arc::new(time.finish()),
            Arc::new(extra.finish()),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn auctions(&self, ids: &[u64], schema: SchemaRef) -> Result<RecordBatch> {
        let n = ids.len();
        let mut id = Int64Builder::with_capacity(n);
        let (mut item, mut desc, mut extra) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut initial, mut reserve, mut seller, mut category) = (
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
            Int64Builder::new(),
        );
        let (mut time, mut expires) = (
            TimestampMillisecondBuilder::new(),
            TimestampMillisecondBuilder::new(),
        );
        for &i in ids {
            let a = auction(&self.clock, i);
            id.append_value(a.id);
            item.append_value(a.item_name);
            desc.append_value(a.description);
            initial.append_value(a.initial_bid);
            reserve.append_value(a.reserve);
            time.append_value(a.date_time);
            expires.append_value(a.expires);
            seller.append_value(a.seller);
            category.append_value(a.category);
            extra.append_value(a.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(item.finish()),
            Arc::new(desc.finish()),
            Arc::new(initial.finish()),
            Arc::new(reserve.finish()),
            Arc::new(time.finish()),
            Arc::new(expires.finish()),
            Arc::new(seller.finish()),
            Arc::new(category.finish()),
            Arc::new(extra.finish()),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

impl Source for NexmarkSubtask {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        let ids = self.take_ids();
        let Some(last) = ids.last().copied() else {
            return Ok(SourcePoll::End);
        };
        if let Some(rate) = self.cfg.rate_limit {
            // Event i is due i/rate seconds after the start, whatever the subtask.
            let due = Duration::from_secs_f64(last as f64 / rate.max(1) as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let batch = match self.kind {
            Kind::Bid => self.bids(&ids, bid_schema())?,
            Kind::Person => self.persons(&ids, person_schema())?,
            Kind::Auction => self.auctions(&ids, auction_schema())?,
        };
        self.emitted += batch.num_rows() as u64;
        Ok(SourcePoll::Batch { split: 0, batch })
    }

    fn records_emitted(&self) -> u64 {
        self.emitted
    }
}
