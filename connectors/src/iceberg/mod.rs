//! Apache Iceberg tables as a sink: the Parquet sink in table mode
//! ([`crate::parquet::TableFormat`]) writing the data files of a table
//! kept in a SQL catalog on SQLite (the JDBC catalog's layout, which
//! PyIceberg, Spark and Trino read), with its files in a local warehouse.
//!
//! Each checkpoint's files become one Iceberg snapshot (an append) whose
//! summary names the writer, the checkpoint and the staged lists it
//! commits, so a commit replayed after a crash is recognised
//! (`table.rs` has the protocol). Data files carry the table's field ids
//! and Iceberg's types (microsecond timestamps); a stream that gains a
//! column or widens `int` to `long` evolves the table's schema. Partition
//! fields map onto Iceberg transforms: a column's value is `identity`,
//! `date`/`day`, `hour`, `month` and `year` of a timestamp are Iceberg's
//! transforms of the same names.
//!
//! Metadata, manifests and the catalog are written here rather than
//! through the `iceberg` crate, which is built against another major
//! version of `arrow` and `parquet` than the engine's (see
//! `ARCHITECTURE.md`).

mod catalog;
mod compact;
mod files;
mod manifest;
mod metadata;
mod table;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use sluice_engine::checkpoint::Location;
use sluice_engine::graph::SinkFactory;
use sluice_engine::{Error, Result, SinkSpec};

use crate::parquet::{ParquetSink, PartitionSpec, RollPolicy, TableFormat};
pub use compact::compact_table;
pub use table::{CHECKPOINT_PROPERTY, LISTS_PROPERTY, WRITER_PROPERTY};

use self::catalog::SqlCatalog;
use self::metadata::TableMetadata;
use self::table::IcebergTable;

/// Writes an Iceberg table, exactly once with checkpoints.
///
/// ```no_run
/// use sluice_connectors::iceberg::IcebergSink;
/// use sluice_connectors::parquet::PartitionSpec;
///
/// let sink = IcebergSink::new("lake/catalog.db", "lake/warehouse", "events.clicks")
///     .partition_by(PartitionSpec::parse("country,dt=date(_timestamp)").unwrap());
/// ```
#[derive(Debug, Clone)]
pub struct IcebergSink {
    catalog: PathBuf,
    catalog_name: String,
    warehouse: Location,
    table: String,
    writer: String,
    parquet: ParquetSink,
    /// The opened table, shared by the subtasks of this process.
    opened: Arc<Mutex<Option<Arc<IcebergTable>>>>,
}

impl IcebergSink {
    /// The table `namespace.name` of the SQL catalog in the SQLite file
    /// `catalog` (created if missing), its files under `warehouse`: a
    /// directory, or `s3://bucket/prefix` (S3 settings from the `AWS_*`
    /// environment variables, as for Parquet output). The table is
    /// created on first use with the stream's columns and the sink's
    /// partitioning.
    pub fn new(
        catalog: impl AsRef<Path>,
        warehouse: impl Into<Location>,
        table: impl Into<String>,
    ) -> Self {
        IcebergSink {
            catalog: catalog.as_ref().to_path_buf(),
            catalog_name: "sluice".into(),
            warehouse: warehouse.into(),
            table: table.into(),
            writer: "sluice".into(),
            parquet: ParquetSink::new("unused"),
            opened: Arc::new(Mutex::new(None)),
        }
    }

    /// The catalog's name inside the database (default `sluice`; a
    /// reader opens the catalog under the same name).
    pub fn catalog_name(mut self, name: impl Into<String>) -> Self {
        self.catalog_name = name.into();
        self
    }

    /// Who writes (the snapshots' `sluice.writer`, default `sluice`):
    /// jobs writing to one table at the same time need distinct ids.
    pub fn writer_id(mut self, id: impl Into<String>) -> Self {
        self.writer = id.into();
        self
    }

    /// Partitions of the table (as [`ParquetSink::partition_by`]; `date`
    /// and `day` are Iceberg's day transform).
    pub fn partition_by(mut self, spec: PartitionSpec) -> Self {
        self.parquet = self.parquet.partition_by(spec);
        self
    }

    /// When data files roll (as the Parquet sink's).
    pub fn roll_policy(mut self, policy: RollPolicy) -> Self {
        self.parquet = self.parquet.roll_policy(policy);
        self
    }

    /// Other Parquet settings of the data files (compression, row group
    /// size; the location is the table's).
    pub fn parquet(mut self, f: impl FnOnce(ParquetSink) -> ParquetSink) -> Self {
        self.parquet = f(self.parquet);
        self
    }

    fn names(&self) -> Result<(&str, &str)> {
        split_table_name(&self.table)
    }

    /// Opens the table (creating it for `input`), once per process.
    fn table(&self, input: &SchemaRef) -> Result<Arc<IcebergTable>> {
        let mut opened = self.opened.lock().expect("table lock");
        if let Some(t) = opened.as_ref() {
            return Ok(t.clone());
        }
        let (ns, name) = self.names()?;
        let warehouse = match self.warehouse.local_path() {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                let dir = std::fs::canonicalize(&dir)
                    .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
                format!("file://{}", dir.display())
            }
            None => self.warehouse.as_str().to_string(),
        };
        let catalog = SqlCatalog::open(&self.catalog, &self.catalog_name)?;
        let partitioning = self.parquet.partitioning().clone();
        let t = IcebergTable::open(catalog, &warehouse, ns, name, &self.writer, |location| {
            TableMetadata::create(
                location,
                table::uuid(),
                input,
                &partitioning,
                table::now_ms(),
            )
        })?;
        t.load()?.1.check_spec(&partitioning)?;
        *opened = Some(t.clone());
        Ok(t)
    }

    fn parquet_for(&self, input: &SchemaRef) -> Result<ParquetSink> {
        let table = self.table(input)?;
        Ok(self
            .parquet
            .clone()
            .commit_to(table as Arc<dyn TableFormat>))
    }
}

/// `NAMESPACE.TABLE` split at its last dot (a namespace may have levels:
/// `lake.raw.events`), or why it is not such a name.
pub fn split_table_name(table: &str) -> Result<(&str, &str)> {
    table
        .rsplit_once('.')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| {
            Error::Config(format!(
                "Iceberg table '{table}' must be NAMESPACE.TABLE (e.g. lake.events)"
            ))
        })
}

impl SinkSpec for IcebergSink {
    fn name(&self) -> String {
        format!("iceberg_sink({})", self.table)
    }

    /// Checks what needs no catalog: planning (and `--explain`) must not
    /// create the table; the table's own checks (its partitioning, its
    /// columns' types) come when the first subtask opens it.
    fn validate(&self, input: &SchemaRef) -> Result<()> {
        self.names()?;
        self.parquet.partitioning().validate(input)?;
        for f in input.fields() {
            metadata::stored_type(f.data_type(), f.name())?;
        }
        Ok(())
    }

    fn factory(&self, input: SchemaRef) -> SinkFactory {
        let sink = self.clone();
        Arc::new(move |ctx| {
            let parquet = sink.parquet_for(&input)?;
            (parquet.factory(input.clone()))(ctx)
        })
    }
}
