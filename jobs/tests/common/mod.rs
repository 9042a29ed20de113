//! Helpers shared by the end-to-end tests: Parquet output read back with
//! the parquet crate's reader, as counted rows of text.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every row of every visible Parquet file in `dir`, as text, counted.
pub fn rows(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let f = std::fs::File::open(e.path()).unwrap();
        for b in ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            for line in render(&b) {
                *out.entry(line).or_default() += 1;
            }
        }
    }
    out
}

pub fn render(b: &RecordBatch) -> Vec<String> {
    let opts = FormatOptions::default();
    let fmts: Vec<ArrayFormatter> = b
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
        .collect();
    (0..b.num_rows())
        .map(|r| {
            fmts.iter()
                .map(|f| f.value(r).to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

pub fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}
