//! Helpers for reporting plan errors from DSL verbs.

use sluice_engine::{Error, Stream};

/// A plan error for verb `verb` applied after the node producing `stream`.
pub fn plan_error(stream: &Stream, verb: &str, message: impl std::fmt::Display) -> Error {
    Error::plan(format!("{verb} after '{}'", stream.node_name()), message)
}
