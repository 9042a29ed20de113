//! Where a Kafka source started and stopped, per partition, shared by its
//! subtasks so a job's closing summary can say what was read
//! ([`KafkaProgress::describe`]); and the notices a source logs for
//! whoever started the job (target [`NOTICE_TARGET`]): where each
//! partition resumes or starts, where a bounded read stops, and that a
//! bounded rerun found nothing new.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// The `tracing` target of notices meant for the person running a job
/// (the reference job binaries show it at INFO by default).
pub const NOTICE_TARGET: &str = "sluice::job";

/// One partition's read, as far as it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionProgress {
    /// The offset the run started at (`None`: the earliest retained record).
    pub from: Option<i64>,
    /// The next offset to read (`None`: nothing read yet).
    pub next: Option<i64>,
    /// Bounded reads: where it stops (`None` while not known yet).
    pub end: Option<i64>,
    /// Whether the position came from a checkpoint.
    pub resumed: bool,
}

/// Per-partition progress of one source (all its subtasks).
#[derive(Debug, Default)]
pub struct KafkaProgress {
    parts: Mutex<BTreeMap<i32, PartitionProgress>>,
}

impl KafkaProgress {
    /// Every partition read so far, by partition.
    pub fn partitions(&self) -> BTreeMap<i32, PartitionProgress> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, partition: i32, p: PartitionProgress) {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, p);
    }

    pub(crate) fn update(&self, partition: i32, next: Option<i64>, end: Option<i64>) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let p = parts.entry(partition).or_default();
        p.next = next;
        p.end = end;
    }

    /// Whether any partition resumed from a checkpoint.
    pub fn resumed(&self) -> bool {
        self.partitions().values().any(|p| p.resumed)
    }

    /// Whether nothing was read past where the run started.
    pub fn nothing_new(&self) -> bool {
        self.partitions()
            .values()
            .all(|p| p.next.is_none() || p.next == p.from)
    }

    /// One line: `partition 0: 10030 → 11031 (end 11031), partition 1: …`.
    pub fn describe(&self) -> String {
        describe(&self.partitions())
    }
}

/// Renders offsets: a number, or `earliest` for a start from the first
/// retained record.
fn offset(o: Option<i64>, none: &str) -> String {
    o.map_or_else(|| none.to_string(), |o| o.to_string())
}

/// `partition P: FROM → NEXT[ (end E)]`, comma-separated.
pub(crate) fn describe(parts: &BTreeMap<i32, PartitionProgress>) -> String {
    let mut s = String::new();
    for (partition, p) in parts {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "partition {partition}: {} → {}",
            offset(p.from, "earliest"),
            offset(p.next.or(p.from), "earliest")
        );
        if let Some(e) = p.end {
            let _ = write!(s, " (end {e})");
        }
    }
    if s.is_empty() {
        s.push_str("no partitions");
    }
    s
}

/// `partition P at OFFSET[ (end E)]`, comma-separated: where reads start.
pub(crate) fn describe_start(parts: &BTreeMap<i32, PartitionProgress>) -> String {
    let mut s = String::new();
    for (partition, p) in parts {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "partition {partition} at {}",
            offset(p.from, "the earliest record")
        );
        if let Some(e) = p.end {
            let _ = write!(s, " (end {e})");
        }
    }
    if s.is_empty() {
        s.push_str("no partitions");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_where_each_partition_went() {
        let p = KafkaProgress::default();
        p.set(
            0,
            PartitionProgress {
                from: Some(10),
                resumed: true,
                ..Default::default()
            },
        );
        p.set(1, PartitionProgress::default());
        assert!(p.resumed() && p.nothing_new());
        p.update(0, Some(15), Some(15));
        assert!(!p.nothing_new());
        assert_eq!(
            p.describe(),
            "partition 0: 10 → 15 (end 15), partition 1: earliest → earliest"
        );
        assert_eq!(
            describe_start(&p.partitions()),
            "partition 0 at 10 (end 15), partition 1 at the earliest record"
        );
    }
}
