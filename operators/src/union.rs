//! `union`: merges streams of one schema into one stream.

use std::sync::Arc;

use sluice_engine::dsl::IdentityOperator;
use sluice_engine::Stream;

use crate::plan_error;

/// The `union` verb.
pub trait Union {
    /// Merges `self` and `others`; all must have the same schema.
    fn union(self, others: &[Stream]) -> Stream;
}

impl Union for Stream {
    fn union(self, others: &[Stream]) -> Stream {
        for o in others {
            let (a, b) = (self.schema().fields(), o.schema().fields());
            let differ = a.len() != b.len()
                || a.iter()
                    .zip(b.iter())
                    .any(|(x, y)| x.name() != y.name() || x.data_type() != y.data_type());
            if differ {
                self.report(plan_error(
                    &self,
                    "union",
                    format!(
                        "'{}' has {} but '{}' has {}",
                        self.node_name(),
                        self.column_list(),
                        o.node_name(),
                        o.column_list()
                    ),
                ));
            }
        }
        let time = self
            .event_time()
            .map(str::to_string)
            .filter(|t| others.iter().all(|o| o.event_time() == Some(t)));
        let refs: Vec<&Stream> = others.iter().collect();
        self.merge_into("union", &refs, Arc::new(|_| Ok(Box::new(IdentityOperator))))
            .with_event_time(time)
    }
}
