//! Winning bids (Nexmark q4/q6's inner query): per auction, the highest bid
//! placed between the auction's start and its expiry, emitted once the
//! watermark passes the expiry. A custom two-input keyed operator, written
//! the way a user would write one.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_ms, Watermark};
use sluice_engine::graph::OperatorFactory;
use sluice_engine::{Collector, Operator, OperatorContext, Result, Stream};
use sluice_operators::prelude::*;

struct Auction {
    category: i64,
    start: i64,
    expires: i64,
    best: Option<i64>,
}

/// Keyed by auction id: auctions on input 0, bids on input 1.
#[derive(Default)]
pub struct WinningBidsOperator {
    auctions: HashMap<i64, Auction>,
    /// Auctions by expiry, to close them in watermark order.
    by_expiry: BTreeMap<(i64, i64), ()>,
    /// Bids that arrived before their auction: (time, price) per auction.
    early: HashMap<i64, Vec<(i64, i64)>>,
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("final", DataType::Int64, false),
        Field::new(
            "expires",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn i64_col<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a [i64]> {
    let c = batch.column_by_name(name).ok_or_else(|| {
        sluice_engine::Error::Internal(format!(
            "winning bids: column '{name}' missing after plan validation"
        ))
    })?;
    Ok(c.as_primitive::<Int64Type>().values())
}

impl Operator for WinningBidsOperator {
    fn process(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        _out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_ms(
            batch
                .column_by_name("date_time")
                .expect("nexmark schemas have date_time"),
        )?;
        if input == 0 {
            let ids = i64_col(&batch, "id")?;
            let cats = i64_col(&batch, "category")?;
            let expires = event_times_ms(
                batch
                    .column_by_name("expires")
                    .expect("auction schema has expires"),
            )?;
            for i in 0..batch.num_rows() {
                let mut a = Auction {
                    category: cats[i],
                    start: ts[i],
                    expires: expires[i],
                    best: None,
                };
                for (t, p) in self.early.remove(&ids[i]).unwrap_or_default() {
                    if t >= a.start && t <= a.expires {
                        a.best = Some(a.best.map_or(p, |b| b.max(p)));
                    }
                }
                self.by_expiry.insert((a.expires, ids[i]), ());
                self.auctions.insert(ids[i], a);
            }
        } else {
            let auction = i64_col(&batch, "auction")?;
            let price = i64_col(&batch, "price")?;
            for i in 0..batch.num_rows() {
                match self.auctions.get_mut(&auction[i]) {
                    Some(a) => {
                        if ts[i] >= a.start && ts[i] <= a.expires {
                            a.best = Some(a.best.map_or(price[i], |b| b.max(price[i])));
                        }
                    }
                    None => self
                        .early
                        .entry(auction[i])
                        .or_default()
                        .push((ts[i], price[i])),
                }
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        let Watermark::EventTime(t) = wm else {
            return Ok(Some(wm));
        };
        let (mut ids, mut cats, mut finals, mut exp) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        while let Some((&(expires, id), _)) = self.by_expiry.first_key_value() {
            if expires > t {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(a) = self.auctions.remove(&id) {
                if let Some(best) = a.best {
                    ids.push(id);
                    cats.push(a.category);
                    finals.push(best);
                    exp.push(expires);
                }
            }
        }
        // An early bid's auction started at or before the bid, so once time
        // passes the bid, its auction can no longer arrive.
        self.early.retain(|_, bids| {
            bids.retain(|(bt, _)| *bt > t);
            !bids.is_empty()
        });
        if !ids.is_empty() {
            let cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(cats)),
                Arc::new(Int64Array::from(finals)),
                Arc::new(TimestampMillisecondArray::from(exp)),
            ];
            out.emit(RecordBatch::try_new(output_schema(), cols)?);
        }
        Ok(Some(wm))
    }
}

/// Joins auctions with their bids and emits each auction's winning price
/// when it expires. Output: `auction`, `category`, `final`, `expires`
/// (event time).
pub fn winning_bids(auctions: Stream, bids: Stream) -> Stream {
    let a = auctions.key_by(["id"]);
    let b = bids.key_by(["auction"]);
    let factory: OperatorFactory = Arc::new(|_ctx| Ok(Box::new(WinningBidsOperator::default())));
    a.transform_multi("winning_bids", &[&b], vec![output_schema()], factory)
        .with_event_time(Some("expires".into()))
}
