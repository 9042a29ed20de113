//! The Nexmark benchmark's data: a deterministic generator of persons,
//! auctions and bids ([`generator`]), their row and Arrow forms ([`model`]),
//! and sources that emit one type each as Arrow batches ([`NexmarkSource`]).
//! The event set depends only on the config, never on the parallelism or
//! batch size: subtask `s` of `p` emits the `j`-th record of its type for
//! every `j ≡ s (mod p)`, exactly as a full generator of `events` events
//! would produce it.

pub mod generator;
pub mod model;
mod pace;
mod source;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use sluice_engine::graph::SourceFactory;
use sluice_engine::{OperatorContext, Result, Source, SourceSpec};

use generator::{auction, bid, person, Channels, Clock};
pub use generator::{count_of, event_of, kind_of, Kind};
pub use model::{auction_schema, bid_schema, person_schema, Auction, Bid, Event, Person};

/// Generator settings (Beam's `GeneratorConfig` defaults where it has one).
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    /// Number of events (all types) to generate.
    pub events: u64,
    /// Seed; the same seed gives the same events.
    pub seed: u64,
    /// Events per second of *event time*: event `i` is stamped
    /// `BASE_TIME_MS + i * 1000 / first_event_rate` (before disorder).
    pub first_event_rate: u64,
    /// Each event's time is moved back by a random 0..=this many ms, so a
    /// bounded-out-of-orderness watermark with this delay is never wrong.
    pub max_out_of_orderness_ms: i64,
    /// Wall-clock pace in events per second of the whole event stream (all
    /// types, summed over subtasks): event `i` is emitted no earlier than
    /// `i / rate_limit` seconds after the source opened, so the three
    /// sources of one config stay in step. `None` = as fast as possible.
    pub rate_limit: Option<u64>,
    /// Changes of the pace, by event number: from event `n` on, `rate`
    /// events per second (`(n, rate)`, with `rate_limit` the rate from
    /// event 0). Keyed by event number, so a restored job keeps the
    /// schedule; ignored without `rate_limit`.
    pub rate_steps: Vec<(u64, u64)>,
    /// Synthetic work per event: each source subtask spins this long per
    /// event it emits, so the load on the job follows the event rate (to
    /// exercise backpressure and the autoscaler). Zero by default.
    pub work_per_event: std::time::Duration,
    /// Largest number of rows per batch.
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
            rate_steps: Vec::new(),
            work_per_event: std::time::Duration::ZERO,
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

/// Every event in event-number order, as rows (for references and tests).
pub fn generate(cfg: &NexmarkConfig) -> impl Iterator<Item = Event> + '_ {
    let c = cfg.clock();
    let channels = Channels::new(cfg.seed);
    (0..cfg.events).map(move |i| match kind_of(i) {
        Kind::Person => Event::Person(person(&c, i).to_row()),
        Kind::Auction => Event::Auction(auction(&c, i).to_row()),
        Kind::Bid => Event::Bid(bid(&c, i).to_row(&channels)),
    })
}

/// A Nexmark source emitting one type of event, one split per subtask.
///
/// ```
/// use sluice_connectors::nexmark::{NexmarkConfig, NexmarkSource};
/// use sluice_operators::prelude::*;
///
/// let env = Env::new();
/// let cfg = NexmarkConfig { events: 1_000, ..Default::default() };
/// let bids = env.source(NexmarkSource::bids(cfg.clone())).collect();
/// let persons = env.source(NexmarkSource::persons(cfg)).collect();
/// env.execute()?;
/// // Beam's mix: of every 50 events, 1 person, 3 auctions, 46 bids.
/// assert_eq!(bids.num_rows(), 920);
/// assert_eq!(persons.num_rows(), 20);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    kind: Kind,
    cfg: NexmarkConfig,
}

impl NexmarkSource {
    /// The bids of a generator run with `cfg` ([`bid_schema`]).
    pub fn bids(cfg: NexmarkConfig) -> Self {
        NexmarkSource {
            kind: Kind::Bid,
            cfg,
        }
    }

    /// The persons of a generator run with `cfg` ([`person_schema`]).
    pub fn persons(cfg: NexmarkConfig) -> Self {
        NexmarkSource {
            kind: Kind::Person,
            cfg,
        }
    }

    /// The auctions of a generator run with `cfg` ([`auction_schema`]).
    pub fn auctions(cfg: NexmarkConfig) -> Self {
        NexmarkSource {
            kind: Kind::Auction,
            cfg,
        }
    }

    /// The kind of event this source emits.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The generator settings.
    pub fn config(&self) -> &NexmarkConfig {
        &self.cfg
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
        let (kind, cfg) = (self.kind, self.cfg.clone());
        // Built once for all subtasks; only bids use it.
        let channels = (kind == Kind::Bid).then(|| Arc::new(Channels::new(cfg.seed)));
        Arc::new(move |ctx: &OperatorContext| {
            Ok(Box::new(source::NexmarkSubtask::new(
                kind,
                &cfg,
                channels.clone(),
                ctx.subtask,
                ctx.parallelism,
            )) as Box<dyn Source>)
        })
    }
}
