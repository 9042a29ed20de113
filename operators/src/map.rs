//! Row closures over typed records — `map`, `flat_map`, `try_map` — and
//! `map_batches` over whole batches. Rows cross between Arrow and serde
//! structs with `serde_arrow`: each batch is deserialized once into a `Vec`
//! of the input type and the outputs are serialized back into one batch. The
//! output schema is traced from the output type at plan time. Built-in
//! operators never pay this cost; these verbs are for convenience.
//!
//! Types: struct fields map to columns by name (`i64` ↔ Int64, `f64` ↔
//! Float64, `String` ↔ Utf8, `Option<T>` ↔ nullable). An input field may
//! read a Timestamp column as `i64`; an output timestamp is traced as
//! Int64, which `watermarks` accepts as epoch milliseconds. For a typed
//! `Timestamp(Millisecond)` column, follow the map with
//! `select([col("ts").cast(DataType::Timestamp(TimeUnit::Millisecond, None)), ...])`
//! or build the batch yourself with `map_batches`. The output of these
//! verbs is not keyed and has no event time: re-assign them downstream.

use std::fmt::Display;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_arrow::schema::{SchemaLike, TracingOptions};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result, Stream};

use crate::plan_error;

type RowFn<I, O> = Arc<dyn Fn(I, &mut Vec<O>) -> std::result::Result<(), String> + Send + Sync>;

/// Applies a row function to every record of a batch.
struct RowMapOperator<I, O> {
    f: RowFn<I, O>,
    fields: Vec<FieldRef>,
    schema: SchemaRef,
    name: String,
    _types: PhantomData<fn(I) -> O>,
}

impl<I, O> Operator for RowMapOperator<I, O>
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let rows: Vec<I> = serde_arrow::from_record_batch(&batch)
            .map_err(|e| Error::Decode(format!("{}: reading rows: {e}", self.name)))?;
        let mut outputs = Vec::with_capacity(rows.len());
        for r in rows {
            (self.f)(r, &mut outputs).map_err(|e| Error::User(format!("{}: {e}", self.name)))?;
        }
        let b = serde_arrow::to_record_batch(&self.fields, &outputs)
            .map_err(|e| Error::User(format!("{}: writing rows: {e}", self.name)))?;
        let b = RecordBatch::try_new(self.schema.clone(), b.columns().to_vec())?;
        out.emit(b);
        Ok(())
    }
}

/// The Arrow fields of a serde type: `i64` ↔ Int64, `String` ↔ Utf8, ...
pub(crate) fn fields_of<T: DeserializeOwned>() -> serde_arrow::Result<Vec<FieldRef>> {
    let opts = TracingOptions::default()
        .allow_null_fields(true)
        .strings_as_large_utf8(false);
    Vec::<FieldRef>::from_type::<T>(opts)
}

fn traced<T: DeserializeOwned>(s: &Stream, verb: &str) -> Option<Vec<FieldRef>> {
    match fields_of::<T>() {
        Ok(f) => Some(f),
        Err(e) => {
            s.report(plan_error(
                s,
                verb,
                format!(
                    "cannot derive an Arrow schema for {}: {e}",
                    std::any::type_name::<T>()
                ),
            ));
            None
        }
    }
}

/// Checks that the stream has every non-optional field of `I` (plan errors
/// otherwise) and traces the output fields and schema of `O`.
pub(crate) fn row_schemas<I, O>(s: &Stream, verb: &str) -> (Vec<FieldRef>, SchemaRef)
where
    I: DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
{
    if let Some(input) = traced::<I>(s, verb) {
        for field in input {
            if s.schema().field_with_name(field.name()).is_err() && !field.is_nullable() {
                s.report(plan_error(
                    s,
                    verb,
                    format!(
                        "the closure reads field '{}' of {} but the stream has {}",
                        field.name(),
                        std::any::type_name::<I>(),
                        s.column_list()
                    ),
                ));
            }
        }
    }
    let fields = traced::<O>(s, verb).unwrap_or_default();
    let schema: SchemaRef = Arc::new(Schema::new(fields.clone()));
    (fields, schema)
}

fn add_row_map<I, O>(s: Stream, verb: &str, f: RowFn<I, O>) -> Stream
where
    I: DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
{
    let (fields, schema) = row_schemas::<I, O>(&s, verb);
    let name = format!("{verb} after '{}'", s.node_name());
    let out = schema.clone();
    s.transform(verb, schema, move |_| {
        Ok(Box::new(RowMapOperator::<I, O> {
            f: f.clone(),
            fields: fields.clone(),
            schema: out.clone(),
            name: name.clone(),
            _types: PhantomData,
        }))
    })
    .stateless()
}

/// Typed and batch closures.
pub trait Map {
    /// One output row per input row.
    ///
    /// A field of `I` missing from the input (and not an `Option`) is a plan
    /// error naming the field. A panic in `f` fails the job with the panic
    /// message and the operator's name.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
    /// # use serde::{Deserialize, Serialize};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("auction", DataType::Int64, false),
    /// #     Field::new("price", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2])),
    /// #     Arc::new(Int64Array::from(vec![100, 250])),
    /// # ]).unwrap();
    /// let env = Env::new();
    /// let bids = env.from_batches("bids", schema, vec![batch]);
    /// #[derive(Deserialize)]
    /// struct Bid { auction: i64, price: i64 }
    /// #[derive(Serialize, Deserialize)]
    /// struct Euro { auction: i64, euros: f64 }
    ///
    /// let out = bids
    ///     .map(|b: Bid| Euro { auction: b.auction, euros: b.price as f64 * 0.5 })
    ///     .collect();
    /// env.execute()?;
    /// let b = out.concat();
    /// assert_eq!(b.schema().field(1).name(), "euros");
    /// assert_eq!(b.column(1).as_primitive::<Float64Type>().values(), &[50.0, 125.0]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn map<I, O, F>(self, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I) -> O + Send + Sync + 'static;

    /// Any number of output rows per input row.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
    /// # use serde::{Deserialize, Serialize};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("auction", DataType::Int64, false),
    /// #     Field::new("price", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2])),
    /// #     Arc::new(Int64Array::from(vec![100, 250])),
    /// # ]).unwrap();
    /// let env = Env::new();
    /// let bids = env.from_batches("bids", schema, vec![batch]);
    /// #[derive(Deserialize)]
    /// struct Bid { auction: i64, price: i64 }
    /// #[derive(Serialize, Deserialize)]
    /// struct Unit { auction: i64 }
    ///
    /// // One row per started 100 of price.
    /// let out = bids
    ///     .flat_map(|b: Bid| (0..(b.price + 99) / 100).map(move |_| Unit { auction: b.auction }))
    ///     .collect();
    /// env.execute()?;
    /// assert_eq!(out.concat().column(0).as_primitive::<Int64Type>().values(), &[1, 2, 2, 2]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn flat_map<I, O, F, It>(self, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        It: IntoIterator<Item = O>,
        F: Fn(I) -> It + Send + Sync + 'static;

    /// Like `map`, but an `Err` fails the job with an `Error::User` holding
    /// the error and the operator's name.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Schema};
    /// # use serde::{Deserialize, Serialize};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![Field::new("price", DataType::Int64, false)]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![5, -1]))]).unwrap();
    /// #[derive(Deserialize, Serialize)]
    /// struct Price { price: i64 }
    ///
    /// let env = Env::new();
    /// env.from_batches("bids", schema, vec![batch])
    ///     .try_map(|p: Price| if p.price < 0 { Err(format!("negative price {}", p.price)) } else { Ok(p) })
    ///     .collect();
    /// let err = env.execute().unwrap_err().to_string();
    /// assert!(err.contains("try_map after 'bids'") && err.contains("negative price -1"));
    /// ```
    fn try_map<I, O, E, F>(self, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        E: Display,
        F: Fn(I) -> std::result::Result<O, E> + Send + Sync + 'static;

    /// A function over whole batches producing batches of `schema`. A
    /// returned batch whose columns differ from `schema` fails the job with
    /// an [`Error::User`] naming the operator.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
    /// # use serde::{Deserialize, Serialize};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("auction", DataType::Int64, false),
    /// #     Field::new("price", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2])),
    /// #     Arc::new(Int64Array::from(vec![100, 250])),
    /// # ]).unwrap();
    /// let env = Env::new();
    /// let bids = env.from_batches("bids", schema, vec![batch]);
    /// let doubled = Arc::new(Schema::new(vec![Field::new("double", DataType::Int64, false)]));
    /// let declared = doubled.clone();
    /// let out = bids
    ///     .map_batches(doubled, move |b| {
    ///         let price = b.column(1).as_primitive::<Int64Type>();
    ///         let twice = arrow::compute::kernels::numeric::mul(price, &Int64Array::new_scalar(2))?;
    ///         Ok(RecordBatch::try_new(declared.clone(), vec![twice])?)
    ///     })
    ///     .collect();
    /// env.execute()?;
    /// assert_eq!(out.concat().column(0).as_primitive::<Int64Type>().values(), &[200, 500]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn map_batches<F>(self, schema: SchemaRef, f: F) -> Stream
    where
        F: Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static;
}

impl Map for Stream {
    fn map<I, O, F>(self, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I) -> O + Send + Sync + 'static,
    {
        add_row_map::<I, O>(
            self,
            "map",
            Arc::new(move |i, out| {
                out.push(f(i));
                Ok(())
            }),
        )
    }

    fn flat_map<I, O, F, It>(self, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        It: IntoIterator<Item = O>,
        F: Fn(I) -> It + Send + Sync + 'static,
    {
        add_row_map::<I, O>(
            self,
            "flat_map",
            Arc::new(move |i, out| {
                out.extend(f(i));
                Ok(())
            }),
        )
    }

    fn try_map<I, O, E, F>(self, f: F) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        E: Display,
        F: Fn(I) -> std::result::Result<O, E> + Send + Sync + 'static,
    {
        add_row_map::<I, O>(
            self,
            "try_map",
            Arc::new(move |i, out| {
                out.push(f(i).map_err(|e| e.to_string())?);
                Ok(())
            }),
        )
    }

    fn map_batches<F>(self, schema: SchemaRef, f: F) -> Stream
    where
        F: Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let name = format!("map_batches after '{}'", self.node_name());
        let declared = schema.clone();
        self.transform("map_batches", schema, move |_| {
            Ok(Box::new(BatchMapOperator {
                f: f.clone(),
                schema: declared.clone(),
                name: name.clone(),
            }))
        })
        .stateless()
    }
}

type BatchFn = Arc<dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync>;

struct BatchMapOperator {
    f: BatchFn,
    schema: SchemaRef,
    name: String,
}

impl Operator for BatchMapOperator {
    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let b = (self.f)(batch)?;
        if b.schema().fields() != self.schema.fields() {
            return Err(Error::User(format!(
                "{}: the function returned {} but declared {}",
                self.name,
                describe(&b.schema()),
                describe(&self.schema)
            )));
        }
        out.emit(b);
        Ok(())
    }
}

/// `[name: type, ...]` with `?` marking nullable columns, for error messages.
fn describe(schema: &Schema) -> String {
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            let null = if f.is_nullable() { "?" } else { "" };
            format!("{}: {}{null}", f.name(), f.data_type())
        })
        .collect();
    format!("[{}]", cols.join(", "))
}
