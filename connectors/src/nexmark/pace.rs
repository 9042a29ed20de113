//! The wall-clock schedule of a paced Nexmark run: when each event number
//! is due, as a rate that may change at given event numbers. Keyed by
//! event number rather than by time, so a job restored from a checkpoint
//! (at any parallelism) follows the same schedule from where it stopped.

use std::time::Duration;

/// One stretch of the schedule: from event `from` on, `rate` events per
/// second, the first of them due `at` seconds after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stretch {
    from: u64,
    rate: u64,
    at: f64,
}

/// Events per second, changing at event numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pace {
    stretches: Vec<Stretch>,
}

impl Pace {
    /// `first` events per second from event 0, then each `(from, rate)`
    /// of `steps` (in any order; rates of 0 count as 1).
    pub(crate) fn new(first: u64, steps: &[(u64, u64)]) -> Pace {
        let mut steps: Vec<(u64, u64)> = steps.to_vec();
        steps.sort_by_key(|s| s.0);
        let mut stretches = vec![Stretch {
            from: 0,
            rate: first.max(1),
            at: 0.0,
        }];
        for (from, rate) in steps {
            let last = *stretches.last().expect("one at least");
            let at = last.at + (from - last.from) as f64 / last.rate as f64;
            let s = Stretch {
                from,
                rate: rate.max(1),
                at,
            };
            if from == last.from {
                *stretches.last_mut().expect("one at least") = s;
            } else {
                stretches.push(s);
            }
        }
        Pace { stretches }
    }

    fn stretch_of(&self, event: u64) -> Stretch {
        *self
            .stretches
            .iter()
            .rev()
            .find(|s| s.from <= event)
            .expect("the first stretch starts at 0")
    }

    /// When event `event` is due, after the start.
    pub(crate) fn due(&self, event: u64) -> Duration {
        let s = self.stretch_of(event);
        Duration::from_secs_f64(s.at + (event - s.from) as f64 / s.rate as f64)
    }

    /// The last event number due `elapsed` after the start.
    pub(crate) fn due_by(&self, elapsed: Duration) -> u64 {
        let t = elapsed.as_secs_f64();
        let s = self
            .stretches
            .iter()
            .rev()
            .find(|s| s.at <= t)
            .expect("the first stretch starts at 0");
        s.from + ((t - s.at) * s.rate as f64) as u64
    }

    /// Events per second at event `event`.
    pub(crate) fn rate_at(&self, event: u64) -> u64 {
        self.stretch_of(event).rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_each_stretch_and_invert() {
        // 1000/s for events 0..2000 (2 s), 4000/s for 2000..10000 (2 s),
        // then 1000/s.
        let p = Pace::new(1000, &[(10_000, 1000), (2_000, 4000)]);
        assert_eq!(p.due(0), Duration::ZERO);
        assert_eq!(p.due(1_000), Duration::from_secs(1));
        assert_eq!(p.due(2_000), Duration::from_secs(2));
        assert_eq!(p.due(6_000), Duration::from_secs(3));
        assert_eq!(p.due(10_000), Duration::from_secs(4));
        assert_eq!(p.due(11_000), Duration::from_secs(5));
        assert_eq!(p.rate_at(1_999), 1000);
        assert_eq!(p.rate_at(2_000), 4000);
        assert_eq!(p.rate_at(10_000), 1000);
        for e in [0, 999, 2_000, 5_555, 10_000, 12_345] {
            let back = p.due_by(p.due(e) + Duration::from_micros(1));
            assert_eq!(back, e, "event {e}");
        }
        // Without steps: a constant rate, as `--rate` always was.
        let flat = Pace::new(500, &[]);
        assert_eq!(flat.due(1_000), Duration::from_secs(2));
        assert_eq!(flat.due_by(Duration::from_secs(3)), 1_500);
        // A step at 0 replaces the first rate.
        assert_eq!(
            Pace::new(500, &[(0, 1000)]).due(1_000),
            Duration::from_secs(1)
        );
    }
}
