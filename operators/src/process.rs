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
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result, Stream};

use crate::map::row_schemas;
use crate::plan_error;

type KeyedFn<I, O> = Arc<dyn Fn(I, &mut KeyScope<'_>, &mut Vec<O>) -> Result<()> + Send + Sync>;

struct KeyedProcessOperator<I, O> {
    f: KeyedFn<I, O>,
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
        let mut outputs = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            let kg = key_group_of(self.hashes[i], ctx.max_parallelism);
            let mut scope = store.scope(kg, key_rows.row(i).data())?;
            (self.f)(row, &mut scope, &mut outputs).map_err(|e| match e {
                Error::User(m) => Error::User(format!("{}: {m}", self.name)),
                Error::State(m) => Error::State(format!("{}: {m}", self.name)),
                e => e,
            })?;
        }
        if !outputs.is_empty() {
            let b = serde_arrow::to_record_batch(&self.fields, &outputs)
                .map_err(|e| Error::User(format!("{}: writing rows: {e}", self.name)))?;
            out.emit(RecordBatch::try_new(
                self.schema.clone(),
                b.columns().to_vec(),
            )?);
        }
        Ok(())
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
        const VERB: &str = "process_keyed";
        let states: Vec<StateDescriptor> = states.into_iter().collect();
        let keys: Vec<String> = self.keys().map(|k| k.to_vec()).unwrap_or_default();
        if keys.is_empty() {
            self.report(plan_error(
                &self,
                VERB,
                "process_keyed needs a keyed stream: call key_by([...]) first",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for s in &states {
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                self.report(plan_error(
                    &self,
                    VERB,
                    format!("state '{}' is declared twice or has no name", s.name),
                ));
            }
        }
        let input = self.schema().clone();
        let key_cols: Vec<usize> = keys.iter().filter_map(|k| input.index_of(k).ok()).collect();
        let key_types: Vec<SortField> = key_cols
            .iter()
            .map(|i| SortField::new(input.field(*i).data_type().clone()))
            .collect();
        let (fields, schema) = row_schemas::<I, O>(&self, VERB);
        let name = format!("{VERB} after '{}'", self.node_name());
        let f: KeyedFn<I, O> = Arc::new(f);
        let out = schema.clone();
        // Re-hash on the keys at this operator's input, as windows do, so a
        // forward operator between key_by and here cannot break routing.
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        let input_stream = if keys.is_empty() {
            self
        } else {
            self.keyed_by(&k)
        };
        input_stream.transform(VERB, schema, move |_| {
            Ok(Box::new(KeyedProcessOperator::<I, O> {
                f: f.clone(),
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
}
