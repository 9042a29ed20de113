//! Everything a job author needs: `use sluice_operators::prelude::*;`.

pub use crate::aggregate::*;
pub use crate::expr::*;
pub use crate::filter::*;
pub use crate::join::*;
pub use crate::map::*;
pub use crate::partition::*;
pub use crate::process::*;
pub use crate::select::*;
pub use crate::source::*;
pub use crate::top::*;
pub use crate::union::*;
pub use crate::window::*;
pub use sluice_engine::state::keyed::{KeyScope, ListState, MapState, StateDescriptor, ValueState};
pub use sluice_engine::{arrow, Env, Stream, WatermarkStrategy};
