//! The footer of a file's committed prefix: what turns the first `len`
//! bytes of a Parquet file that is still being written (magic and the row
//! groups flushed so far) into a complete, readable file.
//!
//! A file stays open across checkpoints: at a barrier the sink flushes the
//! row group in progress, so the bytes written so far end on a row-group
//! boundary, and stores their length and this footer in the checkpoint.
//! Recovery cuts the file back to that length and appends the footer (the
//! Parquet footer is only metadata: the row groups' locations, the schema
//! and the Arrow schema), so exactly the checkpointed rows are published.

use std::sync::Arc;

use arrow::datatypes::Schema;
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::file::metadata::{
    FileMetaData, ParquetMetaData, ParquetMetaDataWriter, RowGroupMetaData,
};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::SchemaDescPtr;
use sluice_engine::{Error, Result};

/// What every prefix footer of one file shares: the file's schema in
/// Parquet and Arrow form and the writer's identity.
#[derive(Debug, Clone)]
pub struct FooterTemplate {
    schema: SchemaDescPtr,
    props: WriterProperties,
}

impl FooterTemplate {
    /// The template for files of `schema` written with `props` (as the
    /// `ArrowWriter` derives them).
    pub fn new(schema: &Schema, props: &WriterProperties) -> Result<Self> {
        let descr = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(schema)
            .map_err(|e| Error::connector("parquet", format!("converting the schema: {e}")))?;
        let mut props = props.clone();
        add_encoded_arrow_schema_to_metadata(schema, &mut props);
        Ok(FooterTemplate {
            schema: Arc::new(descr),
            props,
        })
    }

    /// The footer (metadata, its length, `PAR1`) for a file whose bytes up
    /// to the end of `row_groups` are written.
    pub fn footer(&self, row_groups: &[RowGroupMetaData]) -> Result<Vec<u8>> {
        let rows = row_groups.iter().map(RowGroupMetaData::num_rows).sum();
        let meta = FileMetaData::new(
            self.props.writer_version().as_num(),
            rows,
            Some(self.props.created_by().to_string()),
            self.props.key_value_metadata().cloned(),
            self.schema.clone(),
            None,
        );
        let meta = ParquetMetaData::new(meta, row_groups.to_vec());
        let mut out = Vec::new();
        ParquetMetaDataWriter::new(&mut out, &meta)
            .with_preserve_page_index_locations(false)
            .finish()
            .map_err(|e| Error::connector("parquet", format!("writing a footer: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;

    #[test]
    fn a_prefix_with_its_footer_reads_back_the_flushed_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = |from: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + 100)),
                    Arc::new(StringArray::from_iter_values(
                        (from..from + 100).map(|i| format!("v{i}")),
                    )),
                ],
            )
            .unwrap()
        };
        let props = WriterProperties::builder().build();
        let template = FooterTemplate::new(&schema, &props).unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).unwrap();
        w.write(&batch(0)).unwrap();
        w.flush().unwrap();
        w.write(&batch(100)).unwrap();
        w.flush().unwrap();
        w.sync().unwrap();
        // The "checkpoint": length and footer of what is flushed.
        let len = w.bytes_written();
        let footer = template.footer(w.flushed_row_groups()).unwrap();
        // Rows after it, never committed.
        w.write(&batch(200)).unwrap();
        w.flush().unwrap();
        w.sync().unwrap();
        let mut file = w.inner().clone();
        assert!(file.len() > len);
        file.truncate(len);
        file.extend_from_slice(&footer);
        let mut tmp = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut tmp, &file).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(tmp)
            .unwrap()
            .build()
            .unwrap();
        let got: Vec<i64> = r
            .flat_map(|b| {
                let b = b.unwrap();
                assert_eq!(b.schema(), schema, "the Arrow schema is in the footer");
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
}
