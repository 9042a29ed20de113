//! Key-group arithmetic, as pure functions (ported from Flink's
//! `KeyGroupRangeAssignment`): hash → key group → subtask, and the range of
//! groups a subtask owns.

use std::ops::Range;

/// Default number of key groups (Flink's lower default).
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// The key group of a key hash.
#[inline]
pub fn key_group_of(hash: u64, max_parallelism: usize) -> usize {
    (hash % max_parallelism as u64) as usize
}

/// The subtask that owns `key_group` at `parallelism`.
#[inline]
pub fn subtask_of(key_group: usize, max_parallelism: usize, parallelism: usize) -> usize {
    key_group * parallelism / max_parallelism
}

/// The key groups subtask `subtask` owns at `parallelism`.
pub fn range_of(subtask: usize, max_parallelism: usize, parallelism: usize) -> Range<usize> {
    let start = (subtask * max_parallelism).div_ceil(parallelism);
    let end = ((subtask + 1) * max_parallelism).div_ceil(parallelism);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranges_partition_all_groups(max in 1usize..512, p in 1usize..64) {
            prop_assume!(p <= max);
            let mut next = 0;
            for s in 0..p {
                let r = range_of(s, max, p);
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty());
                for g in r.clone() {
                    prop_assert_eq!(subtask_of(g, max, p), s);
                }
                next = r.end;
            }
            prop_assert_eq!(next, max);
        }
    }
}
