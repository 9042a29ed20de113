//! `process_keyed`: a typed row closure over a keyed stream that reads and
//! writes keyed state (value, list and map states with namespaces) — the
//! user-facing side of [`sluice_engine::state::keyed`].
//!
//! Each input batch is deserialized into rows of the closure's input type
//! (as `map` does); for every row, in arrival order, the operator positions
//! the subtask's [`KeyedState`] at the row's key — the Arrow row-format
//! bytes of the key columns, in the key group the same hash that routed the
//! row picks — and calls the closure, which pushes any number of output
//! rows. The state is checkpointed with the operator (heap: Arrow batches
//! with a key-group column; RocksDB: native checkpoints) and restored at any
//! parallelism, so results after a failure or a rescale equal those of a
//! run without either.

use std::marker::PhantomData;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{FieldRef, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_row::{RowConverter, SortField};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_engine::data::CheckpointId;
use sluice_engine::hash::hash_columns;
use sluice_engine::state::key_group::key_group_of;
use sluice_engine::state::keyed::{KeyScope, KeyedState, StateDescriptor};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result, Stream, Watermark};

use crate::map::row_schemas;
use crate::plan_error;

type KeyedFn<I, O> = Arc<dyn Fn(I, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync>;
type TimerFn<O> = Arc<dyn Fn(i64, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync>;

struct KeyedProcessOperator<I, O> {
    f: KeyedFn<I, O>,
    on_timer: Option<TimerFn<O>>,
    watermark: i64,
    states: Vec<StateDescriptor>,
    key_cols: Vec<usize>,
    key_conv: RowConverter,
    fields: Vec<FieldRef>,
    schema: SchemaRef,
    name: String,
    store: Option<KeyedState>,
    restored: RestoredState,
    hashes: Vec<u64>,
    _types: PhantomData<fn(I) -> O>,
}

/// Names the operator in a user function's errors.
fn wrap(name: &str, e: Error) -> Error {
    match e {
        Error::User(m) => Error::User(format!("{name}: {m}")),
        Error::State(m) => Error::State(format!("{name}: {m}")),
        e => e,
    }
}

impl<I, O: Serialize> KeyedProcessOperator<I, O> {
    fn emit(&self, outputs: Vec<O>, out: &mut Collector) -> Result<()> {
        if outputs.is_empty() {
            return Ok(());
        }
        let b = serde_arrow::to_record_batch(&self.fields, &outputs)
            .map_err(|e| Error::User(format!("{}: writing rows: {e}", self.name)))?;
        out.emit(RecordBatch::try_new(
            self.schema.clone(),
            b.columns().to_vec(),
        )?);
        Ok(())
    }
}

impl<I, O> Operator for KeyedProcessOperator<I, O>
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
{
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        let restored = std::mem::take(&mut self.restored);
        self.store = Some(KeyedState::open(ctx, &self.states, restored)?);
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let rows: Vec<I> = serde_arrow::from_record_batch(&batch)
            .map_err(|e| Error::Decode(format!("{}: reading rows: {e}", self.name)))?;
        let keys: Vec<ArrayRef> = self
            .key_cols
            .iter()
            .map(|c| batch.column(*c).clone())
            .collect();
        hash_columns(&keys, batch.num_rows(), &mut self.hashes)?;
        let key_rows = self.key_conv.convert_columns(&keys)?;
        let store = self
            .store
            .as_mut()
            .ok_or_else(|| Error::Internal(format!("{}: process before open", self.name)))?;
        let keys: Vec<(usize, &[u8])> = (0..key_rows.num_rows())
            .map(|i| {
                (
                    key_group_of(self.hashes[i], ctx.max_parallelism),
                    key_rows.row(i).data(),
                )
            })
            .collect();
        // One multi-get per state for the batch's keys the cache lacks.
        store.prefetch(&keys)?;
        let mut outputs = Vec::new();
        for (row, (kg, key)) in rows.into_iter().zip(&keys) {
            let mut scope = store.scope(*kg, key)?;
            (self.f)(row, &mut scope, &mut outputs).map_err(|e| wrap(&self.name, e))?;
        }
        store.maintain()?;
        self.emit(outputs, out)
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        let (Some(on_timer), Some(t)) = (&self.on_timer, crate::advance(&mut self.watermark, wm))
        else {
            return Ok(Some(wm));
        };
        let store = self
            .store
            .as_mut()
            .ok_or_else(|| Error::Internal(format!("{}: watermark before open", self.name)))?;
        let mut outputs = Vec::new();
        // A callback may set timers that are already due: fire until none is.
        loop {
            let due = store.take_due_timers(t)?;
            if due.is_empty() {
                break;
            }
            for timer in due {
                let mut scope = store.scope(timer.key_group, &timer.key)?;
                on_timer(timer.time, &mut scope, &mut outputs).map_err(|e| wrap(&self.name, e))?;
            }
            store.maintain()?;
        }
        self.emit(outputs, out)?;
        Ok(Some(wm))
    }

    fn snapshot(&mut self, _id: CheckpointId, _ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        self.store
            .as_mut()
            .ok_or_else(|| Error::Internal(format!("{}: snapshot before open", self.name)))?
            .snapshot()
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        self.restored = state;
        Ok(())
    }
}

/// The `process_keyed` verb.
pub trait ProcessKeyed {
    /// Calls `f(row, state, out)` for every row of a keyed stream, with
    /// `state` positioned at the row's key (namespace 0; the closure may
    /// switch with `state.set_namespace(ns)`). `states` declares every state
    /// the closure uses (each handle's `descriptor()`); using an undeclared
    /// one, or a handle of another kind under a declared name, fails the job
    /// with an `Error::State`. Output rows are serialized as `map`'s are;
    /// the output is not keyed and has no event time.
    ///
    /// A stream that is not keyed is a plan error: call `key_by` first.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    /// # use serde::{Deserialize, Serialize};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("user", DataType::Int64, false),
    /// #     Field::new("page", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 2, 1, 1])),
    /// #     Arc::new(Int64Array::from(vec![10, 10, 11, 10])),
    /// # ]).unwrap();
    /// #[derive(Deserialize)]
    /// struct Click { user: i64, page: i64 }
    /// #[derive(Serialize, Deserialize)]
    /// struct Seen { user: i64, clicks: i64, pages: i64 }
    ///
    /// let clicks = ValueState::<i64>::new("clicks");
    /// let pages = MapState::<i64, ()>::new("pages");
    /// let env = Env::new();
    /// let out = env
    ///     .from_batches("clicks", schema, vec![batch])
    ///     .key_by(["user"])
    ///     .process_keyed(
    ///         [clicks.descriptor(), pages.descriptor()],
    ///         move |c: Click, st, out: &mut Vec<Seen>| {
    ///             let n = clicks.get(st)?.unwrap_or(0) + 1;
    ///             clicks.set(st, &n)?;
    ///             pages.put(st, &c.page, &())?;
    ///             let distinct = pages.entries(st)?.len() as i64;
    ///             out.push(Seen { user: c.user, clicks: n, pages: distinct });
    ///             Ok(())
    ///         },
    ///     )
    ///     .collect();
    /// env.execute()?;
    /// let b = out.concat();
    /// let mut rows: Vec<(i64, i64, i64)> = (0..b.num_rows())
    ///     .map(|r| {
    ///         let c = |i: usize| b.column(i).as_primitive::<Int64Type>().value(r);
    ///         (c(0), c(1), c(2))
    ///     })
    ///     .collect();
    /// rows.sort();
    /// assert_eq!(rows, [(1, 1, 1), (1, 2, 2), (1, 3, 2), (2, 1, 1)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn process_keyed<I, O, F>(
        self,
        states: impl IntoIterator<Item = StateDescriptor>,
        f: F,
    ) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync + 'static;

    /// `process_keyed` with event-time timers: `f` may call
    /// `state.register_timer(t)` (or `delete_timer`), and once the watermark
    /// reaches `t` the operator calls `on_timer(t, state, out)` with `state`
    /// positioned at that key (namespace 0), before forwarding the
    /// watermark. Timers due at the same watermark fire in time order; a
    /// timer set for a time already passed fires at the next watermark.
    /// Timers are keyed state: checkpointed, and moved with their key when
    /// the parallelism changes. The stream needs watermarks for timers to
    /// fire (the end of a bounded input fires all that are left). After a
    /// restore the watermark starts again from upstream, so write logic that
    /// does not depend on when a timer fires relative to later rows.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use arrow::array::{AsArray, Int64Array, RecordBatch};
    /// # use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    /// # use serde::{Deserialize, Serialize};
    /// # use sluice_operators::prelude::*;
    /// # let schema = Arc::new(Schema::new(vec![
    /// #     Field::new("user", DataType::Int64, false),
    /// #     Field::new("ts", DataType::Int64, false),
    /// # ]));
    /// # let batch = RecordBatch::try_new(schema.clone(), vec![
    /// #     Arc::new(Int64Array::from(vec![1, 1, 2, 1])),
    /// #     Arc::new(Int64Array::from(vec![0, 400, 500, 2000])),
    /// # ]).unwrap();
    /// #[derive(Deserialize)]
    /// struct Click { user: i64, ts: i64 }
    /// #[derive(Serialize, Deserialize)]
    /// struct Session { user: i64, clicks: i64, end: i64 }
    ///
    /// // A user's clicks, reported once they have been idle for 1 s of
    /// // event time (here all rows come before the watermark passes).
    /// let user = ValueState::<i64>::new("user");
    /// let clicks = ValueState::<i64>::new("clicks");
    /// let last = ValueState::<i64>::new("last");
    /// let states = [user.descriptor(), clicks.descriptor(), last.descriptor()];
    /// let (u, c, l) = (user.clone(), clicks.clone(), last.clone());
    /// let env = Env::new();
    /// let out = env
    ///     .from_batches("clicks", schema, vec![batch])
    ///     .watermarks(WatermarkStrategy::bounded_out_of_orderness("ts", Duration::ZERO))
    ///     .key_by(["user"])
    ///     .process_keyed_with_timers(
    ///         states,
    ///         move |e: Click, st, _out: &mut Vec<Session>| {
    ///             u.set(st, &e.user)?;
    ///             c.set(st, &(c.get(st)?.unwrap_or(0) + 1))?;
    ///             l.set(st, &e.ts)?;
    ///             st.register_timer(e.ts + 1000)
    ///         },
    ///         move |t, st, out| {
    ///             if last.get(st)? == Some(t - 1000) {
    ///                 let clicks_in = clicks.get(st)?.unwrap_or(0);
    ///                 out.push(Session { user: user.get(st)?.unwrap_or(0), clicks: clicks_in, end: t });
    ///                 clicks.clear(st)?;
    ///             }
    ///             Ok(())
    ///         },
    ///     )
    ///     .collect();
    /// env.execute()?;
    /// let b = out.concat();
    /// let mut rows: Vec<(i64, i64, i64)> = (0..b.num_rows())
    ///     .map(|r| {
    ///         let c = |i: usize| b.column(i).as_primitive::<Int64Type>().value(r);
    ///         (c(0), c(1), c(2))
    ///     })
    ///     .collect();
    /// rows.sort();
    /// assert_eq!(rows, [(1, 3, 3000), (2, 1, 1500)]);
    /// # Ok::<(), sluice_engine::Error>(())
    /// ```
    fn process_keyed_with_timers<I, O, F, T>(
        self,
        states: impl IntoIterator<Item = StateDescriptor>,
        f: F,
        on_timer: T,
    ) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync + 'static,
        T: Fn(i64, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync + 'static;
}

impl ProcessKeyed for Stream {
    fn process_keyed<I, O, F>(
        self,
        states: impl IntoIterator<Item = StateDescriptor>,
        f: F,
    ) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync + 'static,
    {
        let states = states.into_iter().collect();
        add_keyed_process(self, "process_keyed", states, Arc::new(f), None)
    }

    fn process_keyed_with_timers<I, O, F, T>(
        self,
        states: impl IntoIterator<Item = StateDescriptor>,
        f: F,
        on_timer: T,
    ) -> Stream
    where
        I: DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(I, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync + 'static,
        T: Fn(i64, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync + 'static,
    {
        add_keyed_process(
            self,
            "process_keyed_with_timers",
            states.into_iter().collect(),
            Arc::new(f),
            Some(Arc::new(on_timer)),
        )
    }
}

fn add_keyed_process<I, O>(
    stream: Stream,
    verb: &'static str,
    states: Vec<StateDescriptor>,
    f: KeyedFn<I, O>,
    on_timer: Option<TimerFn<O>>,
) -> Stream
where
    I: DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
{
    let keys: Vec<String> = stream.keys().map(|k| k.to_vec()).unwrap_or_default();
    if keys.is_empty() {
        stream.report(plan_error(
            &stream,
            verb,
            format!("{verb} needs a keyed stream: call key_by([...]) first"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for s in &states {
        if s.name.is_empty() || s.name.starts_with("__") || !names.insert(s.name.as_str()) {
            stream.report(plan_error(
                &stream,
                verb,
                format!(
                    "state '{}' is declared twice, has no name or starts with '__' (reserved)",
                    s.name
                ),
            ));
        }
    }
    let input = stream.schema().clone();
    let key_cols: Vec<usize> = keys.iter().filter_map(|k| input.index_of(k).ok()).collect();
    let key_types: Vec<SortField> = key_cols
        .iter()
        .map(|i| SortField::new(input.field(*i).data_type().clone()))
        .collect();
    let (fields, schema) = row_schemas::<I, O>(&stream, verb);
    let name = format!("{verb} after '{}'", stream.node_name());
    let out = schema.clone();
    // Re-hash on the keys at this operator's input, as windows do, so a
    // forward operator between key_by and here cannot break routing.
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    let input_stream = if keys.is_empty() {
        stream
    } else {
        stream.keyed_by(&k)
    };
    input_stream.transform(verb, schema, move |_| {
        Ok(Box::new(KeyedProcessOperator::<I, O> {
            f: f.clone(),
            on_timer: on_timer.clone(),
            watermark: i64::MIN,
            states: states.clone(),
            key_cols: key_cols.clone(),
            key_conv: RowConverter::new(key_types.clone())?,
            fields: fields.clone(),
            schema: out.clone(),
            name: name.clone(),
            store: None,
            restored: RestoredState::default(),
            hashes: Vec::new(),
            _types: PhantomData,
        }))
    })
}
