//! Helpers for tests, doctests and examples: a source over prepared
//! batches ([`VecSource`], [`Env::from_batches`]), a batch of integer
//! columns ([`int_batch`]), and [`run_collect`], which runs a job and
//! returns what reached a stream as text lines; [`TestPki`], a throwaway
//! cluster CA for TLS tests.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::data::CheckpointId;
use crate::dsl::{Env, Stream};
use crate::error::Result;
use crate::operator::{OperatorContext, Source, SourcePoll};

/// Emits prepared batches in order (one split), then ends. Replayable: its
/// position (batches emitted) is checkpointed.
pub struct VecSource {
    batches: Vec<RecordBatch>,
    next: usize,
}

impl VecSource {
    /// A source over `batches`.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        VecSource { batches, next: 0 }
    }
}

impl Source for VecSource {
    fn poll(&mut self, _ctx: &OperatorContext) -> Result<SourcePoll> {
        Ok(match self.batches.get(self.next) {
            Some(batch) => {
                self.next += 1;
                SourcePoll::Batch {
                    split: 0,
                    batch: batch.clone(),
                }
            }
            None => SourcePoll::End,
        })
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(vec![(self.next as u64).to_le_bytes().to_vec()])
    }

    fn restore(&mut self, entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        for e in entries {
            let bytes: [u8; 8] = e
                .as_slice()
                .try_into()
                .map_err(|_| crate::Error::Checkpoint("malformed VecSource position".into()))?;
            self.next = u64::from_le_bytes(bytes) as usize;
        }
        Ok(())
    }
}

impl Env {
    /// A source emitting `batches` in order from a single subtask, so tests
    /// get a deterministic arrival order whatever the job's parallelism.
    pub fn from_batches(&self, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Stream {
        self.source_fn(name, schema, move |_| {
            Ok(Box::new(VecSource::new(batches.clone())))
        })
        .set_parallelism(1)
    }
}

/// A batch of non-null Int64 columns, `(name, values)` in order (example
/// on [`run_collect`]).
pub fn int_batch(columns: &[(&str, &[i64])]) -> RecordBatch {
    let cols = columns
        .iter()
        .map(|(name, v)| (*name, Arc::new(Int64Array::from(v.to_vec())) as ArrayRef));
    RecordBatch::try_from_iter(cols).expect("columns of equal length")
}

/// The rows of `batch` as lines of comma-separated values (nulls empty).
pub fn lines(batch: &RecordBatch) -> Result<Vec<String>> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    (0..batch.num_rows())
        .map(|row| {
            let values = formatters
                .iter()
                .map(|f| f.value(row).try_to_string())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(values.join(", "))
        })
        .collect()
}

/// Collects `stream`, runs its job to the end (on the embedded runner)
/// and returns the rows that reached `stream`, as [`lines`], in arrival
/// order (sort them when the stream has more than one subtask).
///
/// ```
/// use sluice_engine::testing::{int_batch, run_collect};
/// use sluice_engine::Env;
///
/// let env = Env::new();
/// let batch = int_batch(&[("k", &[1, 2]), ("v", &[10, 20])]);
/// let s = env.from_batches("numbers", batch.schema(), vec![batch]);
/// assert_eq!(run_collect(&s)?, ["1, 10", "2, 20"]);
/// # Ok::<(), sluice_engine::Error>(())
/// ```
pub fn run_collect(stream: &Stream) -> Result<Vec<String>> {
    let collected = stream.collect();
    stream.env().execute()?;
    let mut out = Vec::new();
    for b in collected.batches() {
        out.extend(lines(&b)?);
    }
    Ok(out)
}

/// A throwaway cluster CA for TLS tests: its certificate and key, and a
/// signer for node and attempt certificates.
pub struct TestPki {
    /// The CA's certificate and key.
    pub ca: crate::tls::issue::Issued,
    /// Signs certificates with the CA.
    pub signer: crate::tls::issue::Signer,
}

impl TestPki {
    /// A new CA named `name`, valid for a day.
    pub fn new(name: &str) -> TestPki {
        let day = std::time::Duration::from_secs(24 * 3600);
        let ca = crate::tls::issue::new_ca(name, day).expect("a test CA");
        let signer = crate::tls::issue::Signer::from_pem(&ca.cert, &ca.key).expect("its signer");
        TestPki { ca, signer }
    }

    /// An identity that trusts this CA and presents `cert`.
    pub fn identity(&self, cert: &crate::tls::issue::Issued) -> crate::tls::ClusterTls {
        crate::tls::ClusterTls::from_pem(
            self.ca.cert.as_bytes(),
            cert.cert.as_bytes(),
            cert.key.as_bytes(),
        )
        .expect("a test identity")
    }
}
