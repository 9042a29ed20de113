//! A Sluice job in a crate of its own: sensor readings from a typed row
//! source, filtered, averaged per sensor in one-second windows, and
//! written by a sink of its own as one line per window (or printed as
//! tables with `--print`).
//!
//! Flags: `--print`, `--state memory|rocksdb` (where window state lives),
//! `--checkpoint-dir DIR` (checkpoint every 100 ms into a directory or an
//! `s3://` bucket). `SLUICE_PARALLELISM` and `SLUICE_UI` work as for any
//! job. A binary built without a feature says which one a flag needs.

use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_connectors::sinks::PrintSink;
use sluice_engine::arrow::array::AsArray;
use sluice_engine::arrow::record_batch::RecordBatch;
use sluice_engine::data::CheckpointId;
use sluice_engine::state::rocks::RocksConfig;
use sluice_engine::state::StateBackend;
use sluice_engine::{CheckpointConfig, Error, OperatorContext, Result, Sink};
use sluice_operators::prelude::*;

/// Readings per sensor, a quarter of a second apart.
const READINGS: i64 = 12;
/// Sensors 0, 1 and 2.
const SENSORS: i64 = 3;

/// One reading; its fields are the stream's columns.
#[derive(Serialize, Deserialize)]
struct Reading {
    sensor: i64,
    celsius: f64,
    /// Event time, epoch milliseconds.
    ts: i64,
}

/// One reading of every sensor per poll, then the end. Replayable: its
/// position is checkpointed.
struct Sensors {
    next: i64,
}

impl RowSource for Sensors {
    type Row = Reading;

    fn next_batch(&mut self, _ctx: &OperatorContext) -> Result<Option<Vec<Reading>>> {
        if self.next >= READINGS {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        Ok(Some(
            (0..SENSORS)
                .map(|sensor| Reading {
                    sensor,
                    celsius: 20.0 + sensor as f64 + (i % 4) as f64,
                    ts: i * 250,
                })
                .collect(),
        ))
    }

    fn supports_checkpoints(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Vec<Vec<u8>>> {
        Ok(vec![self.next.to_le_bytes().to_vec()])
    }

    fn restore(&mut self, entries: Vec<Vec<u8>>, _ctx: &OperatorContext) -> Result<()> {
        for e in entries {
            let bytes: [u8; 8] = e
                .as_slice()
                .try_into()
                .map_err(|_| Error::Checkpoint("malformed sensor position".into()))?;
            self.next = i64::from_le_bytes(bytes);
        }
        Ok(())
    }
}

/// A window's aggregates, as the window operator names them.
#[derive(Deserialize)]
struct Summary {
    sensor: i64,
    window_start: i64,
    count: i64,
    max_celsius: f64,
    avg_celsius: f64,
}

/// One output line.
#[derive(Serialize, Deserialize)]
struct Line {
    line: String,
}

/// Writes the `line` column to stdout.
struct Stdout;

impl Sink for Stdout {
    fn write(&mut self, batch: RecordBatch, _ctx: &OperatorContext) -> Result<()> {
        for line in batch.column(0).as_string::<i32>().iter().flatten() {
            println!("{line}");
        }
        Ok(())
    }
}

struct Args {
    print: bool,
    rocksdb: bool,
    checkpoint_dir: Option<String>,
}

fn args() -> Result<Args> {
    let mut out = Args {
        print: false,
        rocksdb: false,
        checkpoint_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::Config(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--print" => out.print = true,
            "--state" => match value()?.as_str() {
                "memory" => out.rocksdb = false,
                "rocksdb" => out.rocksdb = true,
                other => return Err(Error::Config(format!("unknown state backend '{other}'"))),
            },
            "--checkpoint-dir" => out.checkpoint_dir = Some(value()?),
            other => return Err(Error::Config(format!("unknown argument '{other}'"))),
        }
    }
    Ok(out)
}

fn run() -> Result<()> {
    let args = args()?;
    let env = Env::new();
    env.configure(|c| {
        if args.rocksdb {
            c.state.backend = StateBackend::RocksDb(RocksConfig::default());
        }
        if let Some(dir) = &args.checkpoint_dir {
            let mut ck = CheckpointConfig::new(dir.as_str());
            ck.interval = Duration::from_millis(100);
            c.checkpoint = Some(ck);
        }
    });
    let windows = env
        .row_source("sensors", |_ctx| Sensors { next: 0 })
        .set_parallelism(1)
        .watermarks(WatermarkStrategy::ascending("ts").emit_every(Duration::from_millis(100)))
        .filter(col("celsius").gt(lit(20.5)))
        .key_by(["sensor"])
        .window(WindowSpec::tumbling(Duration::from_secs(1)))
        .aggregate([count(), max("celsius"), avg("celsius")]);
    if args.print {
        windows.sink(PrintSink);
    } else {
        windows
            .map(|s: Summary| Line {
                line: format!(
                    "sensor={} start_ms={} count={} max={:.1} avg={:.2}",
                    s.sensor, s.window_start, s.count, s.max_celsius, s.avg_celsius
                ),
            })
            .sink_fn("stdout", |_ctx| Ok(Box::new(Stdout)));
    }
    env.execute()?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("external-job: {e}");
            ExitCode::FAILURE
        }
    }
}
