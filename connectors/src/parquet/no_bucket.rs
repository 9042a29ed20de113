//! Bucket output when sluice-connectors is built without its `s3`
//! feature: the types the sink's output interface names exist but have no
//! values, and opening an `s3://` location fails with an error naming the
//! feature (so a minimal build links no object_store, tokio or TLS).

use sluice_engine::Result;

use super::state::{Durable, FileEntry};

/// A prefix of a bucket; none exists in this build.
#[derive(Debug, Clone)]
pub enum BucketDir {}

/// A file's upload; none exists in this build.
#[derive(Debug)]
pub enum Upload {}

/// The error for an `s3://` output in a build without the `s3` feature.
pub fn unavailable(url: &str) -> sluice_engine::Error {
    sluice_engine::Error::Config(format!(
        "'{url}' is an S3 location, but this job was built without sluice-connectors' \
         `s3` feature; enable it (it is on by default) or write to a local directory"
    ))
}

impl BucketDir {
    pub fn open_s3(url: &str, _part_size: usize) -> Result<Self> {
        Err(unavailable(url))
    }

    #[cfg(feature = "iceberg")]
    pub(crate) fn put(&self, _rel: &str, _bytes: Vec<u8>) -> Result<()> {
        match *self {}
    }

    #[cfg(feature = "iceberg")]
    pub(crate) fn get(&self, _rel: &str) -> Result<Option<Vec<u8>>> {
        match *self {}
    }

    #[cfg(feature = "iceberg")]
    pub(crate) fn get_range(&self, _rel: &str, _range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        match *self {}
    }

    #[cfg(feature = "iceberg")]
    pub(crate) fn delete(&self, _rel: &str) -> Result<()> {
        match *self {}
    }

    #[cfg(feature = "iceberg")]
    pub(crate) fn list_modified(&self, _rel: &str) -> Result<Vec<(String, std::time::SystemTime)>> {
        match *self {}
    }

    pub fn create(&self, _target: &str, _stem: &str) -> Result<Upload> {
        match *self {}
    }

    pub fn ship(&self, _up: &mut Upload, _buf: &mut Vec<u8>, _last: bool) -> Result<()> {
        match *self {}
    }

    pub fn persist(&self, _up: &mut Upload, _buf: &mut Vec<u8>) -> Result<Durable> {
        match *self {}
    }

    pub fn finish(&self, _up: Upload, _buf: Vec<u8>) -> Result<(Durable, u64, Vec<String>)> {
        match *self {}
    }

    pub fn publish(&self, _e: &FileEntry) -> Result<()> {
        match *self {}
    }

    pub fn publish_prefix(&self, _e: &FileEntry) -> Result<()> {
        match *self {}
    }

    pub fn clean(
        &self,
        _mine: &dyn Fn(usize) -> bool,
        _restored: u64,
        _current: u64,
    ) -> Result<()> {
        match *self {}
    }

    pub fn next_plain_seq(&self, _subtask: usize) -> Result<u64> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use sluice_engine::SinkSpec;

    use crate::parquet::ParquetSink;

    #[test]
    fn an_s3_output_is_refused_naming_the_feature() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let e = ParquetSink::new("s3://lake/events")
            .validate(&schema)
            .expect_err("no bucket output in this build");
        assert!(e.to_string().contains("`s3` feature"), "{e}");
        let dir = tempfile::tempdir().expect("temporary directory");
        ParquetSink::new(dir.path())
            .validate(&schema)
            .expect("a local directory needs no feature");
    }
}
