//! File names of the Parquet sink and what a name found in the output
//! says about its file.
//!
//! With checkpoints a file is named when it is opened,
//! `part-{subtask:03}-{epoch:06}-a{attempt}-{seq:05}.parquet`, where
//! `epoch` is the last checkpoint the writing subtask had passed: every row
//! of the file comes after that checkpoint. The name is the same whatever
//! the backend, and an upload to object storage is started under it, so it
//! cannot depend on when the file will be committed. Without checkpoints:
//! `part-{subtask:03}-{seq:05}.parquet`, numbered on after earlier runs.
//! Local in-progress files are hidden (`.{name}.inprogress`); staging
//! objects in a bucket live under `_staging/` (readers skip names starting
//! with `.` or `_`).

/// The prefix of every staging object in a bucket.
// Bucket names only: unused without the `s3` feature, kept (and tested)
// so the naming scheme is one whatever the build.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub const STAGING: &str = "_staging";

/// The stem (name without `.parquet`) of a file opened with checkpoints.
pub fn checkpointed_stem(subtask: usize, epoch: u64, attempt: u64, seq: u64) -> String {
    format!("part-{subtask:03}-{epoch:06}-a{attempt}-{seq:05}")
}

/// The stem of a file opened without checkpoints.
pub fn plain_stem(subtask: usize, seq: u64) -> String {
    format!("part-{subtask:03}-{seq:05}")
}

/// The local in-progress name of a stem.
pub fn in_progress(stem: &str) -> String {
    format!(".{stem}.parquet.inprogress")
}

/// `dir/name`, or `name` at the top.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// What a file name in the output is.
#[derive(Debug, PartialEq, Eq)]
pub enum Name {
    /// `.part-{subtask}-…inprogress`: a local file being written.
    InProgress {
        /// The subtask writing it.
        subtask: usize,
        /// The job attempt writing it (checkpointed runs).
        attempt: Option<u64>,
    },
    /// `part-{subtask}-{epoch}-a{attempt}-{seq}.parquet`: a published file
    /// of a checkpointed run.
    Committed {
        /// The subtask that wrote it.
        subtask: usize,
        /// The last checkpoint before its first row.
        epoch: u64,
        /// The job attempt that wrote it.
        attempt: u64,
    },
    /// `part-{subtask}-{seq}.parquet`: a file of a run without checkpoints.
    Plain {
        /// The subtask that wrote it.
        subtask: usize,
        /// Its number.
        seq: u64,
    },
    /// Anything else (left alone).
    Other,
}

/// Classifies a file name (the last path segment).
pub fn classify(name: &str) -> Name {
    if let Some(rest) = name
        .strip_prefix(".part-")
        .and_then(|r| r.strip_suffix(".parquet.inprogress"))
    {
        let parts: Vec<&str> = rest.split('-').collect();
        if let Some(Ok(subtask)) = parts.first().map(|s| s.parse()) {
            let attempt = parts
                .iter()
                .find_map(|p| p.strip_prefix('a').and_then(|a| a.parse().ok()));
            return Name::InProgress { subtask, attempt };
        }
    }
    if let Some(rest) = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
    {
        let parts: Vec<&str> = rest.split('-').collect();
        match parts[..] {
            [sub, epoch, attempt, seq] => {
                if let (Ok(subtask), Ok(epoch), Some(Ok(attempt)), true) = (
                    sub.parse(),
                    epoch.parse(),
                    attempt.strip_prefix('a').map(str::parse),
                    seq.parse::<u64>().is_ok(),
                ) {
                    return Name::Committed {
                        subtask,
                        epoch,
                        attempt,
                    };
                }
            }
            [sub, seq] => {
                if let (Ok(subtask), Ok(seq)) = (sub.parse(), seq.parse()) {
                    return Name::Plain { subtask, seq };
                }
            }
            _ => {}
        }
    }
    Name::Other
}

/// The subtask that owns a staging object of a bucket, from its name
/// (`{stem}` or `{stem}-{offset}`).
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub fn staging_subtask(name: &str) -> Option<usize> {
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        let stem = checkpointed_stem(2, 7, 1, 3);
        assert_eq!(stem, "part-002-000007-a1-00003");
        assert_eq!(
            classify(&in_progress(&stem)),
            Name::InProgress {
                subtask: 2,
                attempt: Some(1)
            }
        );
        assert_eq!(
            classify(&format!("{stem}.parquet")),
            Name::Committed {
                subtask: 2,
                epoch: 7,
                attempt: 1
            }
        );
        assert_eq!(
            classify("part-002-00003.parquet"),
            Name::Plain { subtask: 2, seq: 3 }
        );
        assert_eq!(classify("notes.txt"), Name::Other);
        assert_eq!(staging_subtask(&format!("{stem}-000000001024")), Some(2));
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("dt=1", "a"), "dt=1/a");
    }
}
