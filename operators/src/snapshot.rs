//! Helpers the stateful operators share for checkpoints: their scalar
//! progress (watermark, fired-up-to) as operator-state entries.

use sluice_engine::{Error, OperatorContext, Result};

/// Encodes progress values as one entry.
pub(crate) fn encode_times(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A subtask's progress values as one entry, followed by the subtask and
/// the parallelism it ran at (its owner).
pub(crate) fn encode_progress(values: &[i64], ctx: &OperatorContext) -> Vec<u8> {
    let mut e = encode_times(values);
    e.extend(encode_times(&[ctx.subtask as i64, ctx.parallelism as i64]));
    e
}

/// The progress a restoring subtask resumes with: its own entry when the
/// job runs at the parallelism of the checkpoint (an unaligned checkpoint's
/// subtasks took their state at different points, and a subtask that had
/// fired a window must not fire it again), otherwise the element-wise
/// minimum over every old subtask (all equal at an aligned barrier; the
/// minimum is the safe choice should they differ). `None` when there are
/// no entries. Entries without an owner (older checkpoints) count towards
/// the minimum.
pub(crate) fn restored_progress(
    entries: &[Vec<u8>],
    n: usize,
    ctx: &OperatorContext,
) -> Result<Option<Vec<i64>>> {
    let me = (ctx.subtask as i64, ctx.parallelism as i64);
    let mut min: Option<Vec<i64>> = None;
    let mut own = None;
    let mut same_parallelism = true;
    for e in entries {
        if e.len() != n * 8 && e.len() != n * 8 + 16 {
            return Err(Error::Checkpoint(format!(
                "operator progress entry has {} bytes, expected {} or {}",
                e.len(),
                n * 8,
                n * 8 + 16
            )));
        }
        let mut vals = decode(e);
        let owner = (vals.len() > n).then(|| (vals[n], vals[n + 1]));
        vals.truncate(n);
        same_parallelism &= owner.is_some_and(|(_, p)| p == me.1);
        if owner == Some(me) {
            own = Some(vals.clone());
        }
        min = Some(match min {
            None => vals,
            Some(cur) => cur.iter().zip(&vals).map(|(a, b)| *a.min(b)).collect(),
        });
    }
    Ok(if same_parallelism { own.or(min) } else { min })
}

fn decode(e: &[u8]) -> Vec<i64> {
    e.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect()
}

/// An operator context for unit tests: subtask `subtask` of
/// `parallelism`, 128 key groups, heap state.
#[cfg(test)]
pub(crate) fn test_ctx(subtask: usize, parallelism: usize) -> OperatorContext {
    OperatorContext {
        operator: "w".into(),
        subtask,
        parallelism,
        max_parallelism: 128,
        input_schemas: vec![],
        watermark: None,
        attempt: 0,
        checkpointing: false,
        state: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_ctx as ctx;

    #[test]
    fn progress_is_the_own_one_at_the_same_parallelism_else_the_minimum() {
        let a = encode_progress(&[5, 9], &ctx(0, 2));
        let b = encode_progress(&[3, 12], &ctx(1, 2));
        let both = [a.clone(), b.clone()];
        assert_eq!(
            restored_progress(&both, 2, &ctx(0, 2)).unwrap(),
            Some(vec![5, 9])
        );
        assert_eq!(
            restored_progress(&both, 2, &ctx(1, 2)).unwrap(),
            Some(vec![3, 12])
        );
        // Rescaled: the minimum.
        assert_eq!(
            restored_progress(&both, 2, &ctx(0, 3)).unwrap(),
            Some(vec![3, 9])
        );
        // Entries of older checkpoints have no owner: the minimum.
        let old = [encode_times(&[5, 9]), encode_times(&[3, 12])];
        assert_eq!(
            restored_progress(&old, 2, &ctx(0, 2)).unwrap(),
            Some(vec![3, 9])
        );
        assert_eq!(restored_progress(&[], 2, &ctx(0, 2)).unwrap(), None);
        assert!(restored_progress(&[vec![1, 2, 3]], 2, &ctx(0, 2)).is_err());
    }
}
