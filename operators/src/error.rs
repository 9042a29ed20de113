//! Helpers shared by the DSL verbs and operators: plan errors and
//! watermark bookkeeping.

use sluice_engine::{Error, Stream, Watermark};

/// A plan error for verb `verb` applied after the node producing `stream`.
pub fn plan_error(stream: &Stream, verb: &str, message: impl std::fmt::Display) -> Error {
    Error::plan(format!("{verb} after '{}'", stream.node_name()), message)
}

/// Moves an operator's event time to `wm` if it is a later event time;
/// returns the new time, or `None` when nothing advanced (idle or stale).
pub(crate) fn advance(current: &mut i64, wm: Watermark) -> Option<i64> {
    match wm {
        Watermark::EventTime(t) if t > *current => {
            *current = t;
            Some(t)
        }
        _ => None,
    }
}
