//! The Parquet sink: each subtask writes its own files into a local
//! directory or, with the `s3` feature (on by default), an object store
//! (`s3://bucket/prefix`), optionally in
//! Hive-style partition directories, rolled by size, rows, age,
//! inactivity or the watermark, exactly once with checkpoints.
//!
//! A reader listing `*.parquet` only ever sees complete, committed files:
//! locally a file is written under a hidden in-progress name and renamed
//! when published; in a bucket it is a multipart upload that is completed
//! when published. Files stay open across checkpoints (each checkpoint
//! commits the rows written so far as finished row groups, see
//! [`sink`](self) and `ARCHITECTURE.md`), so a quiet or finely partitioned
//! stream does not leave a file per checkpoint. [`compact`] merges the
//! small files of closed partitions of a local output afterwards.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_connectors::parquet::{ParquetSink, PartitionSpec};
//! # fn f() -> sluice_engine::Result<()> {
//! let sink = ParquetSink::new("s3://lake/events")
//!     .partition_by(PartitionSpec::parse("country,dt=date(_timestamp),hour=hour(_timestamp)")?)
//!     .max_file_size(256 << 20)
//!     .rollover_interval(Duration::from_secs(300))
//!     .inactivity_interval(Duration::from_secs(60));
//! # let _ = sink; Ok(()) }
//! ```

#[cfg(feature = "s3")]
pub(crate) mod bucket;
// Without the `s3` feature: the same names, no values, a clear error.
#[cfg(not(feature = "s3"))]
#[path = "no_bucket.rs"]
pub(crate) mod bucket;
pub(crate) mod compact;
mod footer;
mod local;
mod names;
mod output;
mod partition;
mod roll;
mod sink;
mod state;
pub(crate) mod table;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use parquet::basic::Compression;
use sluice_engine::checkpoint::Location;
use sluice_engine::graph::SinkFactory;
use sluice_engine::{Result, SinkSpec};

pub use compact::{compact, CompactOptions, CompactStats};
pub use partition::{PartitionField, PartitionSpec, PartitionValue, Transform, NULL_PARTITION};
pub use roll::RollPolicy;
pub use state::{Durable, FileEntry, Phase};
pub use table::TableFormat;

/// Writes Parquet files into a directory or, with the `s3` feature (on by
/// default), a bucket: files per subtask, rolled by size, rows, age,
/// inactivity or the watermark, optionally partitioned. With checkpoints
/// the rows of a file become visible only when the checkpoint that covers
/// them completes (two-phase commit); a bounded job publishes what it
/// wrote when its input ends.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sluice_connectors::file::FileSource;
/// use sluice_connectors::parquet::ParquetSink;
/// use sluice_operators::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Reading { sensor: i64, celsius: f64 }
///
/// let dir = tempfile::tempdir().unwrap();
/// let env = Env::new();
/// let rows = (0..10).map(|i| Reading { sensor: i % 3, celsius: 20.0 + i as f64 }).collect();
/// env.from_rows("readings", rows).sink(ParquetSink::new(dir.path()));
/// env.execute()?;
///
/// // Read back by the file source.
/// let env = Env::new();
/// let back = env.source(FileSource::parquet(dir.path())).collect();
/// env.execute()?;
/// let mut readings: Vec<Reading> = back.rows()?;
/// readings.sort_by(|a, b| a.celsius.total_cmp(&b.celsius));
/// assert_eq!(readings.len(), 10);
/// assert_eq!(readings[9].sensor, 0);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParquetSink {
    location: Location,
    row_group_size: usize,
    compression: Compression,
    no_dictionary: Vec<String>,
    roll: RollPolicy,
    partitioning: PartitionSpec,
    part_size: usize,
    max_open_files: usize,
    /// Commit to this table format instead of publishing by name.
    table: Option<Arc<dyn TableFormat>>,
}

impl ParquetSink {
    /// Files go to `location`: a directory (created if missing), a
    /// `file://` URL, or `s3://bucket/prefix` (S3 settings from the
    /// `AWS_*` environment variables, as for checkpoints).
    pub fn new(location: impl Into<Location>) -> Self {
        ParquetSink {
            location: location.into(),
            row_group_size: 1024 * 1024,
            compression: Compression::SNAPPY,
            no_dictionary: Vec::new(),
            roll: RollPolicy::default(),
            partitioning: PartitionSpec::new(),
            part_size: 8 << 20,
            max_open_files: 64,
            table: None,
        }
    }

    /// Writes these columns without dictionary encoding: for columns whose
    /// values are nearly all distinct (offsets, timestamps, ids), where a
    /// dictionary is built only to be abandoned. Binary columns never get
    /// one.
    pub fn without_dictionary<S: Into<String>>(
        mut self,
        columns: impl IntoIterator<Item = S>,
    ) -> Self {
        self.no_dictionary
            .extend(columns.into_iter().map(Into::into));
        self
    }

    /// Largest number of rows per row group (default 1 Mi). A checkpoint
    /// also ends the row group in progress of every open file.
    pub fn row_group_size(mut self, rows: usize) -> Self {
        self.row_group_size = rows.max(1);
        self
    }

    /// Roll to a new file once it holds this many bytes (encoded size,
    /// checked after each batch; default 128 MiB).
    pub fn max_file_size(mut self, bytes: usize) -> Self {
        self.roll.max_bytes = bytes.max(1);
        self
    }

    /// Roll to a new file once it holds this many rows, exactly (a batch
    /// is split at the limit; default: no limit).
    pub fn max_file_rows(mut self, rows: u64) -> Self {
        self.roll.max_rows = Some(rows.max(1));
        self
    }

    /// Roll a file this long after it was opened (default 60 s; checked at
    /// every batch, watermark, checkpoint and about five times a second).
    pub fn rollover_interval(mut self, d: Duration) -> Self {
        self.roll.max_age = Some(d);
        self
    }

    /// Roll a file that received no rows for this long (default 30 s), so
    /// the output of a quiet input becomes visible.
    pub fn inactivity_interval(mut self, d: Duration) -> Self {
        self.roll.inactivity = Some(d);
        self
    }

    /// Roll every file at every checkpoint (output visible as soon as a
    /// checkpoint completes, at the price of a file per checkpoint per
    /// subtask and partition). Off by default: files span checkpoints.
    pub fn roll_at_checkpoints(mut self) -> Self {
        self.roll.at_checkpoint = true;
        self
    }

    /// Replaces the whole roll policy.
    pub fn roll_policy(mut self, policy: RollPolicy) -> Self {
        self.roll = policy;
        self
    }

    /// Writes into Hive-style partition directories
    /// (`country=DE/dt=2026-12-06/hour=07/`). With time levels, a file
    /// also rolls once the watermark passes the end of its time bucket.
    pub fn partition_by(mut self, spec: PartitionSpec) -> Self {
        self.partitioning = spec;
        self
    }

    /// Bytes buffered per file before they go to object storage as one
    /// part of its multipart upload (default 8 MiB; S3 needs at least
    /// 5 MiB). Each open file holds up to this plus two parts in flight.
    pub fn upload_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    /// Most files a subtask keeps open at once (one per partition
    /// directory written to; default 64). Opening one more rolls the
    /// file written to longest ago.
    pub fn max_open_files(mut self, n: usize) -> Self {
        self.max_open_files = n.max(1);
        self
    }

    /// Compression codec (default snappy).
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Commits finished files to `table` (a table format such as Iceberg)
    /// instead of publishing them by name; files go to its data directory.
    pub fn commit_to(mut self, table: Arc<dyn TableFormat>) -> Self {
        self.location = table.data_location();
        self.table = Some(table);
        self
    }

    /// The partition layout.
    pub fn partitioning(&self) -> &PartitionSpec {
        &self.partitioning
    }
}

impl SinkSpec for ParquetSink {
    fn name(&self) -> String {
        format!("parquet_sink({})", self.location)
    }

    fn validate(&self, input: &SchemaRef) -> Result<()> {
        if self.table.is_some() {
            // The table format's location is its own; its checks of the
            // columns come when it opens.
            return self.partitioning.validate(input);
        }
        if self.location.local_path().is_none()
            && !["s3://", "s3a://"]
                .iter()
                .any(|p| self.location.as_str().starts_with(p))
        {
            return Err(sluice_engine::Error::Config(format!(
                "unsupported output '{}': use a directory, file:// or s3://bucket/prefix",
                self.location
            )));
        }
        #[cfg(not(feature = "s3"))]
        if self.location.local_path().is_none() {
            return Err(bucket::unavailable(self.location.as_str()));
        }
        self.partitioning.validate(input)
    }

    fn factory(&self, input: SchemaRef) -> SinkFactory {
        let spec = self.clone();
        Arc::new(move |_ctx| {
            Ok(Box::new(sink::ParquetWriterTask::new(
                spec.clone(),
                input.clone(),
            )?))
        })
    }
}
