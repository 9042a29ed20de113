//! State partitioning. Keyed state is split into a fixed number of key
//! groups (the job's max parallelism); a subtask owns a contiguous range of
//! groups, so state moves by whole groups when parallelism changes.

pub mod key_group;
