//! Rows a sink received, rendered as text for the REST API's results
//! ([`SinkRows`]): each sink keeps the tail of the last batch it received
//! ([`NodeMetrics::take_tail`](crate::runtime::NodeMetrics::take_tail)), and
//! an executor's reporter (or an embedded job's view) renders it.

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_protocol::api::SinkRows;

use crate::error::Result;

/// Longest value shown, in characters; longer ones are cut and end in `…`.
pub const MAX_CELL_CHARS: usize = 200;

/// The rows of `batch` as text (Arrow's display format; null is empty),
/// for graph node `node`.
pub fn render(node: usize, batch: &RecordBatch) -> Result<SinkRows> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rows = (0..batch.num_rows())
        .map(|r| {
            formatters
                .iter()
                .map(|f| cut(f.value(r).to_string()))
                .collect()
        })
        .collect();
    Ok(SinkRows {
        node,
        columns: batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        rows,
    })
}

fn cut(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(MAX_CELL_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let names: Vec<Option<String>> = ids
            .clone()
            .map(|i| (i % 2 == 0).then(|| "é".repeat(i as usize * 50)))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_render_as_text_with_long_values_cut() {
        let r = render(3, &batch(0..7)).unwrap();
        assert_eq!(r.node, 3);
        assert_eq!(r.columns, ["id", "name"]);
        assert_eq!(r.rows[0], ["0", ""]);
        assert_eq!(r.rows[1], ["1", ""], "null is empty");
        assert_eq!(r.rows[2][1], "é".repeat(100));
        assert_eq!(
            r.rows[4][1],
            "é".repeat(MAX_CELL_CHARS),
            "at the limit: kept whole"
        );
        let cut = &r.rows[6][1];
        assert_eq!(cut.chars().count(), MAX_CELL_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
