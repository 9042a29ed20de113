//! # sluice-operators
//!
//! Sluice's built-in operators and the DSL verbs that add them to a
//! [`sluice_engine::Stream`]. One verb, one extension trait, one module:
//!
//! - [`expr`]: vectorized expressions (`col`, `lit`, arithmetic, comparison,
//!   boolean, cast, string functions) evaluated with Arrow kernels.
//! - [`filter`], [`select`]: `filter(expr)` and `select([expr, ...])`.
//! - [`map`]: typed row closures over serde structs and `map_batches`.
//! - [`partition`]: `key_by`, `rebalance`, `broadcast`, `load_balance`,
//!   `watermarks`.
//! - [`process`]: `process_keyed`, a row closure over a keyed stream with
//!   value, list and map state (namespaces), checkpointed and rescalable.
//! - [`source`]: typed sources — a [`source::RowSource`] of serde
//!   structs, an iterator, or a `Vec` of rows — and typed reading of
//!   collected results.
//! - [`union`]: `union` of streams with one schema.
//! - [`window`]: tumbling, sliding (per-slide panes, merged on fire) and
//!   session windows; allowed lateness and the late-data side output.
//! - [`aggregate`]: `count`, `sum`, `min`, `max`, `avg` and user-defined
//!   aggregates, vectorized over group indices.
//! - [`join`]: windowed joins, interval joins and unbounded joins of two
//!   keyed streams.
//! - [`top`]: rows holding the maximum of a column per window.
//!
//! `use sluice_operators::prelude::*;` brings every verb into scope, and
//! the engine's Arrow (`prelude::arrow`), so a job needs no `arrow`
//! dependency of its own.
//!
//! Features: `rocksdb` (on by default) keeps tumbling and sliding window
//! state in RocksDB when the job's state backend says so; the engine's
//! default features (`ui`, `rocksdb`, `s3`) follow this crate's
//! `default`.

pub mod aggregate;
pub mod expr;
pub mod filter;
pub mod join;
pub mod map;
pub mod partition;
pub mod prelude;
pub mod process;
pub mod select;
pub mod source;
pub mod top;
pub mod union;
pub mod window;

mod error;
pub(crate) use error::advance;
pub use error::plan_error;
pub(crate) mod snapshot;
pub(crate) mod table_keys;
