//! Helpers the stateful operators share for checkpoints: their scalar
//! progress (watermark, fired-up-to) as operator-state entries.

use sluice_engine::{Error, Result};

/// Encodes progress values as one entry.
pub(crate) fn encode_times(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The element-wise minimum of the progress entries of every old subtask
/// (all equal at an aligned barrier; the minimum is the safe choice
/// should they differ), or `None` when there are none.
pub(crate) fn restored_times(entries: &[Vec<u8>], n: usize) -> Result<Option<Vec<i64>>> {
    let mut out: Option<Vec<i64>> = None;
    for e in entries {
        if e.len() != n * 8 {
            return Err(Error::Checkpoint(format!(
                "operator progress entry has {} bytes, expected {}",
                e.len(),
                n * 8
            )));
        }
        let vals: Vec<i64> = e
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        out = Some(match out {
            None => vals,
            Some(cur) => cur.iter().zip(&vals).map(|(a, b)| *a.min(b)).collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_takes_the_minimum() {
        let a = encode_times(&[5, 9]);
        let b = encode_times(&[3, 12]);
        assert_eq!(restored_times(&[a, b], 2).unwrap(), Some(vec![3, 9]));
        assert_eq!(restored_times(&[], 2).unwrap(), None);
        assert!(restored_times(&[vec![1, 2, 3]], 2).is_err());
    }
}
