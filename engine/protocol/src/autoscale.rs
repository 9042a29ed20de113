//! The autoscaler's part of the REST API: the range a job is submitted
//! with (`sluice submit --autoscale MIN..MAX`) and the decisions its status
//! shows. The decisions themselves are the coordinator's
//! (`sluice-cluster`'s `coordinator::autoscaler`).

use serde::{Deserialize, Serialize};

/// The parallelism range an autoscaled job stays in (`sluice submit
/// --autoscale MIN..MAX`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleRange {
    /// Fewest subtasks per vertex.
    pub min: usize,
    /// Most subtasks per vertex.
    pub max: usize,
}

impl std::str::FromStr for AutoscaleRange {
    type Err = crate::Error;
    /// `MIN..MAX` (`1..4`), or `N` for a range of one.
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        let bad = || {
            crate::Error::Malformed(format!(
                "autoscale range {s:?}: expected MIN..MAX with 1 <= MIN <= MAX (e.g. 1..4)"
            ))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (a.trim(), b.trim().trim_start_matches('=')),
            None => (s.trim(), s.trim()),
        };
        let min: usize = min.parse().map_err(|_| bad())?;
        let max: usize = max.parse().map_err(|_| bad())?;
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(AutoscaleRange { min, max })
    }
}

impl std::fmt::Display for AutoscaleRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

/// How many autoscaler decisions a job keeps (the newest).
pub const MAX_AUTOSCALE_DECISIONS: usize = 32;

/// An autoscaled job's autoscaler, as its status shows it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerStatus {
    /// Fewest subtasks per vertex.
    pub min: usize,
    /// Most subtasks per vertex.
    pub max: usize,
    /// Its rescales, oldest first (the newest
    /// [`MAX_AUTOSCALE_DECISIONS`]).
    #[serde(default)]
    pub decisions: Vec<AutoscaleDecision>,
    /// A rescale it recommends and is waiting out the stabilization
    /// window for (shown, never stored: a new leader starts afresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<AutoscalePending>,
}

/// A recommendation the autoscaler has not acted on yet.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscalePending {
    /// The parallelism it would rescale to now.
    pub to: usize,
    /// Since when it has pointed that way, ms since the epoch.
    pub since_ms: i64,
}

/// One rescale the autoscaler decided, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleDecision {
    /// When it was decided, ms since the epoch.
    pub time_ms: i64,
    /// The parallelism the job ran at.
    pub from: usize,
    /// The parallelism it was rescaled to.
    pub to: usize,
    /// Why, in words: the vertex that needed the most subtasks, its busy
    /// time, rates and the target utilization.
    pub reason: String,
    /// The vertex that drove it (plan index).
    pub vertex: usize,
    /// Its mean busy time per subtask over the metric window, ms per
    /// second.
    pub busy_ms_per_s: u64,
    /// Records per second it must take: what arrived, plus the growth of
    /// its source's backlog.
    pub input_rate: f64,
    /// Records per second one of its subtasks processes while busy.
    pub true_rate: f64,
    /// The utilization aimed at (0..1].
    pub target_utilization: f64,
    /// Why the rescale it asked for did not happen, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_min_dot_dot_max() {
        let r = |s: &str| s.parse::<AutoscaleRange>().map(|r| (r.min, r.max)).ok();
        assert_eq!(r("1..4"), Some((1, 4)));
        assert_eq!(r("2..=3"), Some((2, 3)));
        assert_eq!(r(" 3 "), Some((3, 3)));
        assert_eq!(r("0..2"), None);
        assert_eq!(r("4..2"), None);
        assert_eq!(r("1..x"), None);
        assert_eq!(AutoscaleRange { min: 1, max: 4 }.to_string(), "1..4");
    }
}
