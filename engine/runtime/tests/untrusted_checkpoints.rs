//! Checkpoint files are input too: a restore reads whatever a disk, a
//! bucket or another process left there. Garbage manifests, and state
//! files whose length and checksum match the manifest but whose content is
//! mangled (a bug, or a hand-edited checkpoint), must give an error, never
//! a panic or an allocation sized by the file's claims.

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;
use sluice_engine::checkpoint::manifest::FileRef;
use sluice_engine::checkpoint::store::{load_verified, read_entries, read_keyed};
use sluice_engine::checkpoint::{Location, Storage};

fn storage(dir: &tempfile::TempDir) -> Storage {
    Storage::open(&Location::from(dir.path())).expect("a local directory opens")
}

/// A real keyed-state file: Arrow IPC, as the snapshot writer makes them.
fn ipc_file() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("count", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "bb", "ccc"])),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
        ],
    )
    .expect("a valid batch");
    let mut out = Vec::new();
    let mut w = FileWriter::try_new(&mut out, &schema).expect("writer");
    w.write(&batch).expect("write");
    w.finish().expect("finish");
    drop(w);
    out
}

/// Stores `bytes` and the reference a manifest would hold for them, so
/// only the content can be wrong.
fn stored(dir: &Storage, name: &str, bytes: Vec<u8>) -> FileRef {
    let r = FileRef {
        path: name.to_string(),
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    };
    dir.put(name, bytes).expect("put");
    r
}

#[test]
fn a_valid_keyed_file_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = storage(&tmp);
    let f = stored(&dir, "k.arrow", ipc_file());
    let batches = read_keyed(&dir, &f).expect("reads");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
}

#[test]
fn a_file_that_fails_its_checksum_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = storage(&tmp);
    let mut f = stored(&dir, "k.arrow", ipc_file());
    f.crc32 ^= 1;
    let e = read_keyed(&dir, &f).expect_err("checksum");
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn an_entries_file_claiming_billions_of_entries_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = storage(&tmp);
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend(u32::MAX.to_le_bytes());
    let f = stored(&dir, "e.bin", bytes);
    let e = read_entries(&dir, &f).expect_err("truncated");
    assert!(e.to_string().contains("malformed"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_manifests_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = storage(&tmp);
        dir.put("_manifest.json", bytes).unwrap();
        prop_assert!(load_verified(&dir).is_err());
    }

    #[test]
    fn mangled_keyed_files_with_matching_checksums_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = ipc_file();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = storage(&tmp);
        let f = stored(&dir, "k.arrow", bytes);
        // Ok (an edit inside a value) or an error; never a panic.
        let _ = read_keyed(&dir, &f);
    }

    #[test]
    fn arbitrary_entries_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = storage(&tmp);
        let f = stored(&dir, "e.bin", bytes);
        let _ = read_entries(&dir, &f);
    }
}
