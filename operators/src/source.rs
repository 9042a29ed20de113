//! Typed sources: records as serde structs instead of Arrow columns, as
//! `map(|b: Bid| ..)` reads them. The schema is traced from the row type
//! at plan time (`i64` ↔ Int64, `f64` ↔ Float64, `String` ↔ Utf8,
//! `Option<T>` ↔ nullable; an `i64` field is a valid event-time column in
//! epoch milliseconds), and each batch of rows becomes one Arrow batch
//! with `serde_arrow`.
//!
//! Three forms, from most to least control:
//!
//! - [`RowSource`], a trait a source implements (open, next batch, close,
//!   optional checkpointed position), added with
//!   [`RowSources::row_source`];
//! - [`RowSources::iter_source`], an iterator per subtask;
//! - [`RowSources::from_rows`], a `Vec` of rows from one subtask (tests,
//!   examples; replayable, so it checkpoints).
//!
//! [`CollectedRows::rows`] reads what [`Stream::collect`] gathered back
//! into structs.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_engine::data::CheckpointId;
use sluice_engine::{Collected, Env, Error, OperatorContext, Result, Source, SourcePoll, Stream};

use crate::map::fields_of;

/// Rows [`RowSources::iter_source`] and [`RowSources::from_rows`] put in
/// one batch.
pub const ROWS_PER_BATCH: usize = 1024;

/// A source of typed rows, one instance per subtask. Only
/// [`RowSource::next_batch`] is required; the other hooks mirror
/// [`Source`]'s.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sluice_engine::{OperatorContext, Result};
/// use sluice_operators::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Reading { sensor: i64, celsius: f64 }
///
/// /// Three batches of two readings, then the end.
/// struct Sensors { polls: i64 }
///
/// impl RowSource for Sensors {
///     type Row = Reading;
///     fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<Reading>>> {
///         self.polls += 1;
///         Ok((self.polls <= 3).then(|| {
///             (0..2).map(|s| Reading { sensor: s, celsius: self.polls as f64 }).collect()
///         }))
///     }
/// }
///
/// let env = Env::new();
/// let hot = env
///     .row_source("sensors", |_ctx| Sensors { polls: 0 })
///     .set_parallelism(1)
///     .filter(col("celsius").gt(lit(2.0)))
///     .collect();
/// env.execute()?;
/// let rows: Vec<Reading> = hot.rows()?;
/// assert_eq!(rows.iter().map(|r| r.sensor).collect::<Vec<_>>(), [0, 1]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
pub trait RowSource: Send + 'static {
    /// The record type; its fields are the stream's columns.
    type Row: Serialize + DeserializeOwned;

    /// Called once before the first batch (after [`RowSource::restore`]
    /// when the job resumes).
    fn open(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// The next rows: `Some(rows)`, where an empty `Vec` means "nothing
    /// now" (the runtime backs off for [`RowSource::idle_backoff`] and
    /// asks again), or `None` once the input has ended. Must not block
    /// for long: barriers and cancellation wait for it.
    fn next_batch(&mut self, ctx: &OperatorContext) -> Result<Option<Vec<Self::Row>>>;

    /// How long to back off after an empty batch.
    fn idle_backoff(&self) -> Duration {
        Duration::from_millis(5)
    }

    /// Whether the source can record its position and resume from it; a
    /// job with checkpoints refuses to start with a source that cannot.
    fn supports_checkpoints(&self) -> bool {
        false
    }

    /// The position reached, as entries every restored subtask receives
    /// (see [`Source::snapshot`]).
    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }

    /// Called before [`RowSource::open`] with every entry of every old
    /// subtask when the job resumes.
    fn restore(&mut self, _entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }

    /// The task ended, however it ended (see [`Source::close`]).
    fn close(&mut self, _ctx: &OperatorContext) -> Result<()> {
        Ok(())
    }
}

/// Runs a [`RowSource`] as a [`Source`]: each batch of rows becomes one
/// Arrow batch of the traced schema.
struct TypedSource<S> {
    inner: S,
    fields: Arc<Vec<FieldRef>>,
    schema: SchemaRef,
    name: String,
    emitted: u64,
}

impl<S: RowSource> Source for TypedSource<S> {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.inner.open(ctx)
    }

    fn poll(&mut self, ctx: &OperatorContext) -> Result<SourcePoll> {
        let rows = match self.inner.next_batch(ctx)? {
            None => return Ok(SourcePoll::End),
            Some(rows) if rows.is_empty() => return Ok(SourcePoll::Idle),
            Some(rows) => rows,
        };
        self.emitted += rows.len() as u64;
        let batch = to_batch(&self.fields, &self.schema, &rows)
            .map_err(|e| Error::User(format!("source '{}': {e}", self.name)))?;
        Ok(SourcePoll::Batch { split: 0, batch })
    }

    fn idle_backoff(&self) -> Duration {
        self.inner.idle_backoff()
    }

    fn records_emitted(&self) -> u64 {
        self.emitted
    }

    fn supports_checkpoints(&self) -> bool {
        self.inner.supports_checkpoints()
    }

    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        self.inner.snapshot(checkpoint)
    }

    fn restore(&mut self, entries: Vec<Vec<u8>>, ctx: &OperatorContext) -> Result<()> {
        self.inner.restore(entries, ctx)
    }

    fn close(&mut self, ctx: &OperatorContext) -> Result<()> {
        self.inner.close(ctx)
    }
}

/// `rows` as one batch of `schema`.
fn to_batch<R: Serialize>(
    fields: &[FieldRef],
    schema: &SchemaRef,
    rows: &[R],
) -> std::result::Result<RecordBatch, String> {
    let b =
        serde_arrow::to_record_batch(fields, &rows).map_err(|e| format!("writing rows: {e}"))?;
    RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| e.to_string())
}

/// The fields and schema of `R`, or a plan error naming the source.
fn traced<R: DeserializeOwned>(env: &Env, name: &str) -> (Arc<Vec<FieldRef>>, SchemaRef) {
    let fields = fields_of::<R>().unwrap_or_else(|e| {
        env.report(Error::plan(
            format!("source '{name}'"),
            format!(
                "cannot derive an Arrow schema for {}: {e}",
                std::any::type_name::<R>()
            ),
        ));
        Vec::new()
    });
    let schema = Arc::new(Schema::new(fields.clone()));
    (Arc::new(fields), schema)
}

/// An iterator as a [`RowSource`], [`ROWS_PER_BATCH`] rows at a time.
struct IterRows<I: Iterator> {
    rows: I,
}

impl<I> RowSource for IterRows<I>
where
    I: Iterator + Send + 'static,
    I::Item: Serialize + DeserializeOwned,
{
    type Row = I::Item;

    fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<I::Item>>> {
        let batch: Vec<_> = self.rows.by_ref().take(ROWS_PER_BATCH).collect();
        Ok((!batch.is_empty()).then_some(batch))
    }
}

/// Typed sources on an [`Env`]; in the prelude.
pub trait RowSources {
    /// Adds a source built by `factory` once per subtask (the context says
    /// which subtask of how many, to split the input by). Its parallelism
    /// is the job's unless set with [`Stream::set_parallelism`]. A row
    /// type with no Arrow schema is a plan error naming the source.
    /// Example: [`RowSource`].
    fn row_source<S, F>(&self, name: &str, factory: F) -> Stream
    where
        S: RowSource,
        F: Fn(&OperatorContext) -> S + Send + Sync + 'static;

    /// Adds a source emitting the rows of the iterator `factory` builds
    /// once per subtask, then ending. It does not checkpoint (implement
    /// [`RowSource`] for a source that records its position).
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct N { n: i64 }
    ///
    /// let env = Env::new();
    /// // Each of two subtasks emits its share of 0..10.
    /// let evens = env
    ///     .iter_source("numbers", |ctx| {
    ///         let (me, of) = (ctx.subtask as i64, ctx.parallelism as i64);
    ///         (0..10).filter(move |n| n % of == me).map(|n| N { n })
    ///     })
    ///     .set_parallelism(2)
    ///     .filter(col("n").rem(lit(2i64)).eq(lit(0i64)))
    ///     .collect();
    /// env.execute()?;
    /// let mut got: Vec<i64> = evens.rows::<N>()?.into_iter().map(|r| r.n).collect();
    /// got.sort();
    /// assert_eq!(got, [0, 2, 4, 6, 8]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn iter_source<I, F>(&self, name: &str, factory: F) -> Stream
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Serialize + DeserializeOwned,
        F: Fn(&OperatorContext) -> I + Send + Sync + 'static;

    /// Adds a source emitting `rows` in order from a single subtask, then
    /// ending; replayable, so it checkpoints. Meant for tests, examples
    /// and doctests, as [`Env::from_batches`] for typed rows.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use sluice_operators::prelude::*;
    ///
    /// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    /// struct Bid { auction: i64, price: i64 }
    ///
    /// let env = Env::new();
    /// let out = env
    ///     .from_rows("bids", vec![Bid { auction: 1, price: 5 }, Bid { auction: 2, price: 50 }])
    ///     .collect();
    /// env.execute()?;
    /// assert_eq!(out.rows::<Bid>()?[1], Bid { auction: 2, price: 50 });
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    // Named like `Env::from_batches`, which it mirrors for typed rows.
    #[allow(clippy::wrong_self_convention)]
    fn from_rows<R>(&self, name: &str, rows: Vec<R>) -> Stream
    where
        R: Serialize + DeserializeOwned;
}

impl RowSources for Env {
    fn row_source<S, F>(&self, name: &str, factory: F) -> Stream
    where
        S: RowSource,
        F: Fn(&OperatorContext) -> S + Send + Sync + 'static,
    {
        let (fields, schema) = traced::<S::Row>(self, name);
        let out = schema.clone();
        let source = name.to_string();
        self.source_fn(name, schema, move |ctx| {
            Ok(Box::new(TypedSource {
                inner: factory(ctx),
                fields: fields.clone(),
                schema: out.clone(),
                name: source.clone(),
                emitted: 0,
            }))
        })
    }

    fn iter_source<I, F>(&self, name: &str, factory: F) -> Stream
    where
        I: IntoIterator,
        I::IntoIter: Send + 'static,
        I::Item: Serialize + DeserializeOwned,
        F: Fn(&OperatorContext) -> I + Send + Sync + 'static,
    {
        self.row_source(name, move |ctx| IterRows {
            rows: factory(ctx).into_iter(),
        })
    }

    fn from_rows<R>(&self, name: &str, rows: Vec<R>) -> Stream
    where
        R: Serialize + DeserializeOwned,
    {
        let (fields, schema) = traced::<R>(self, name);
        let mut batches = Vec::new();
        if !fields.is_empty() {
            for chunk in rows.chunks(ROWS_PER_BATCH) {
                match to_batch(&fields, &schema, chunk) {
                    Ok(b) => batches.push(b),
                    Err(e) => {
                        self.report(Error::plan(format!("source '{name}'"), e));
                        break;
                    }
                }
            }
        }
        self.from_batches(name, schema, batches)
    }
}

/// Reads collected batches back as typed rows; in the prelude.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sluice_operators::prelude::*;
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Word { word: String, len: i64 }
///
/// let env = Env::new();
/// let words = vec![Word { word: "sluice".into(), len: 6 }, Word { word: "gate".into(), len: 4 }];
/// let out = env.from_rows("words", words).filter(col("len").gt(lit(4i64))).collect();
/// env.execute()?;
/// assert_eq!(out.rows::<Word>()?, [Word { word: "sluice".into(), len: 6 }]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
pub trait CollectedRows {
    /// Every row collected, in arrival order, as `T` (fields by column
    /// name; a column `T` lacks is ignored).
    fn rows<T: DeserializeOwned>(&self) -> Result<Vec<T>>;
}

impl CollectedRows for Collected {
    fn rows<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for b in self.batches() {
            let rows: Vec<T> = serde_arrow::from_record_batch(&b).map_err(|e| {
                Error::Decode(format!(
                    "reading collected rows as {}: {e}",
                    std::any::type_name::<T>()
                ))
            })?;
            out.extend(rows);
        }
        Ok(out)
    }
}
