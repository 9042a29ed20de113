//! The Kafka source's notices: where a subtask's partitions start and,
//! for a bounded read, where they stopped (the lines a user reads to see
//! what a run resumed from and read).

use std::collections::BTreeMap;

use tracing::info;

use super::KafkaSubtask;
use crate::kafka::progress::{PartitionProgress, NOTICE_TARGET};

impl KafkaSubtask {
    /// The progress of this subtask's partitions, for its notices.
    fn my_progress(&self) -> BTreeMap<i32, PartitionProgress> {
        let all = self.spec.progress.partitions();
        self.parts
            .iter()
            .filter_map(|p| all.get(&p.partition).map(|x| (p.partition, *x)))
            .collect()
    }

    /// Says where this subtask's partitions start, and, bounded, where
    /// they stop.
    pub(super) fn tell_start(&self) {
        if self.parts.is_empty() {
            return;
        }
        let topic = &self.spec.topic;
        let subtask = format!("{}/{}", self.subtask, self.parallelism);
        let parts = crate::kafka::progress::describe_start(&self.my_progress());
        let how = match (self.restored.is_some(), self.spec.bounded, self.resume_ends) {
            (true, true, true) => {
                "resuming from the checkpoint, to the ends the interrupted bounded run fixed"
            }
            (true, true, false) => "resuming from the checkpoint, to the topic's current end",
            (true, false, _) => "resuming from the checkpoint, without end",
            (false, true, _) => "starting, to the topic's current end",
            (false, false, _) => "starting, without end",
        };
        info!(target: NOTICE_TARGET, topic = %topic, subtask, "kafka source {how}: {parts}");
    }

    /// Says where a bounded read stopped, once.
    pub(super) fn tell_end(&mut self) {
        if std::mem::replace(&mut self.told_end, true) || self.parts.is_empty() {
            return;
        }
        let progress = self.my_progress();
        let topic = &self.spec.topic;
        let subtask = format!("{}/{}", self.subtask, self.parallelism);
        let parts = crate::kafka::progress::describe(&progress);
        let nothing = progress
            .values()
            .all(|p| p.next.is_none() || p.next == p.from);
        if self.restored.is_some() && nothing && !progress.is_empty() {
            info!(target: NOTICE_TARGET, topic = %topic, subtask,
                "kafka source: nothing new after the checkpointed offsets ({parts})");
        } else {
            info!(target: NOTICE_TARGET, topic = %topic, subtask, "kafka source reached the end: {parts}");
        }
    }
}
