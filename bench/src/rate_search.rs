//! Which rate a sweep offers next, decided from the outcomes of the runs so far.
//!
//! ```text
//!  next_rate() ─▶ Some(rate) ─▶ the sweep runs at rate ─▶ on_outcome(rate, met) ─▶ next_rate() ...
//!              └▶ None: the search is over; best() is the highest rate that met the SLO
//! ```
//!
//! The search only decides; the sweep runs the load and judges the SLO. So it is tested with a
//! made-up server (met below some capacity) instead of a real one.
//!
//! - Step: `rate_max * k / steps` for k = 1, 2, ..., stopping at the first rate that breaks the
//!   SLO. Evenly spaced, so the rows chart the whole latency curve, but each answer is only as
//!   fine as one step.
//! - Bisect: the highest rate that met the SLO (at first 0) and the lowest that broke it (at first
//!   `rate_max`, not yet tried) bound the answer; each run offers the middle of that interval and
//!   replaces one bound, until the interval is at most `precision * rate_max` wide. Then
//!   `rate_max` itself is tried if no rate has broken the SLO yet, so a sweep whose every rate
//!   meets it answers `rate_max`. Bisection assumes a rate that breaks the SLO has no higher rate
//!   meeting it; a noisy run that contradicts that only narrows the search to the wrong side of
//!   the noise, and the answer is still a rate that met the SLO.

/// The state of one sweep's search for the highest rate meeting its SLO.
#[derive(Debug)]
pub struct RateSearch {
    rate_max: f64,
    strategy: Strategy,
    /// Runs whose outcome has been fed in.
    runs: u32,
    /// The highest rate that met the SLO so far.
    met_highest: Option<f64>,
}

#[derive(Debug)]
enum Strategy {
    Step {
        steps: u32,
        /// The next step's k, 1-based.
        step_next: u32,
        /// Whether a step broke the SLO, which ends the sweep.
        broken: bool,
    },
    Bisect {
        /// Rates at most this far apart are not told apart.
        tolerance: f64,
        runs_max: u32,
        /// The highest rate known to meet the SLO (0 until one does).
        low: f64,
        /// The lowest rate known to break the SLO, or `rate_max` until one does.
        high: f64,
        /// Whether `high` has broken the SLO, or is only the top of the range.
        high_broken: bool,
    },
}

impl RateSearch {
    /// Offers `rate_max * k / steps` for k = 1..=steps until one breaks the SLO.
    pub fn step(rate_max: f64, steps: u32) -> Self {
        assert!(rate_max > 0.0 && rate_max.is_finite(), "rate_max {rate_max}");
        assert!(steps > 0);
        RateSearch {
            rate_max,
            strategy: Strategy::Step { steps, step_next: 1, broken: false },
            runs: 0,
            met_highest: None,
        }
    }

    /// Bisects `(0, rate_max]` until the answer is known within `precision * rate_max`, or after
    /// `runs_max` runs.
    pub fn bisect(rate_max: f64, precision: f64, runs_max: u32) -> Self {
        assert!(rate_max > 0.0 && rate_max.is_finite(), "rate_max {rate_max}");
        assert!(precision > 0.0 && precision < 1.0, "precision {precision}");
        assert!(runs_max > 0);
        RateSearch {
            rate_max,
            strategy: Strategy::Bisect {
                tolerance: precision * rate_max,
                runs_max,
                low: 0.0,
                high: rate_max,
                high_broken: false,
            },
            runs: 0,
            met_highest: None,
        }
    }

    /// The rate to offer next, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        match self.strategy {
            Strategy::Step { steps, step_next, broken } => (!broken && step_next <= steps)
                .then(|| self.rate_max * f64::from(step_next) / f64::from(steps)),
            Strategy::Bisect { tolerance, runs_max, low, high, high_broken } => {
                if self.runs >= runs_max || low >= high {
                    None
                } else if high - low > tolerance {
                    Some(low + (high - low) / 2.0)
                } else if high_broken {
                    None
                } else {
                    // Every rate tried met the SLO: the top of the range is the last question.
                    Some(high)
                }
            }
        }
    }

    /// Takes in the outcome of a run at `rate`, the rate [`Self::next_rate`] returned: whether it
    /// met the SLO.
    pub fn on_outcome(&mut self, rate: f64, met: bool) {
        self.runs += 1;
        if met {
            self.met_highest = Some(self.met_highest.map_or(rate, |highest| highest.max(rate)));
        }
        match &mut self.strategy {
            Strategy::Step { step_next, broken, .. } => {
                *step_next += 1;
                *broken |= !met;
            }
            Strategy::Bisect { low, high, high_broken, .. } => {
                if met {
                    *low = low.max(rate);
                } else if rate <= *high {
                    *high = rate;
                    *high_broken = true;
                }
            }
        }
    }

    /// The highest rate tried that met the SLO.
    pub fn best(&self) -> Option<f64> {
        self.met_highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `search` against a server that meets the SLO at rates up to `capacity`; the rates
    /// offered, in order.
    fn drive(search: &mut RateSearch, capacity: f64) -> Vec<f64> {
        let mut offered = Vec::new();
        while let Some(rate) = search.next_rate() {
            assert!(offered.len() < 1000, "the search does not end: {offered:?}");
            offered.push(rate);
            search.on_outcome(rate, rate <= capacity);
        }
        offered
    }

    #[test]
    fn step_stops_at_the_first_rate_that_breaks_the_slo() {
        let mut search = RateSearch::step(1000.0, 10);
        let offered = drive(&mut search, 350.0);
        assert_eq!(offered, [100.0, 200.0, 300.0, 400.0]);
        assert_eq!(search.best(), Some(300.0));
    }

    #[test]
    fn step_offers_every_step_when_all_meet_the_slo() {
        let mut search = RateSearch::step(1000.0, 4);
        assert_eq!(drive(&mut search, f64::INFINITY), [250.0, 500.0, 750.0, 1000.0]);
        assert_eq!(search.best(), Some(1000.0));
    }

    #[test]
    fn step_with_no_rate_meeting_the_slo_has_no_answer() {
        let mut search = RateSearch::step(1000.0, 10);
        assert_eq!(drive(&mut search, 50.0), [100.0]);
        assert_eq!(search.best(), None);
    }

    #[test]
    fn bisect_halves_the_interval_between_met_and_broken() {
        let mut search = RateSearch::bisect(1000.0, 0.05, 20);
        let offered = drive(&mut search, 700.0);
        // 500 met, 750 broke, 625 met, 687.5 met, 718.75 broke: the interval (687.5, 718.75) is
        // 31.25 wide, within 5% of 1000.
        assert_eq!(offered, [500.0, 750.0, 625.0, 687.5, 718.75]);
        assert_eq!(search.best(), Some(687.5));
    }

    #[test]
    fn bisect_finds_any_capacity_within_the_precision() {
        let rate_max = 50_000.0;
        let precision: f64 = 0.05;
        // ceil(log2(1 / precision)) halvings, and one run at rate_max when every rate meets the SLO.
        let runs_bound = (1.0 / precision).log2().ceil() as usize + 1;
        for tenth_of_a_percent in 0..=1200u32 {
            let capacity = rate_max * f64::from(tenth_of_a_percent) / 1000.0;
            let mut search = RateSearch::bisect(rate_max, precision, 100);
            let offered = drive(&mut search, capacity);
            assert!(offered.len() <= runs_bound, "capacity {capacity}: {offered:?}");
            let mut sorted = offered.clone();
            sorted.sort_by(f64::total_cmp);
            sorted.dedup();
            assert_eq!(sorted.len(), offered.len(), "a rate offered twice: {offered:?}");
            assert!(offered.iter().all(|&rate| rate > 0.0 && rate <= rate_max), "{offered:?}");
            match search.best() {
                Some(best) => {
                    assert!(best <= capacity, "capacity {capacity}: answered {best}");
                    let shortfall = capacity.min(rate_max) - best;
                    assert!(shortfall <= precision * rate_max, "capacity {capacity}: answered {best}");
                }
                None => assert!(capacity < precision * rate_max, "capacity {capacity}: {offered:?}"),
            }
        }
    }

    #[test]
    fn bisect_tries_rate_max_when_every_rate_meets_the_slo() {
        let mut search = RateSearch::bisect(1000.0, 0.1, 20);
        let offered = drive(&mut search, 1000.0);
        assert_eq!(offered.last(), Some(&1000.0), "{offered:?}");
        assert_eq!(search.best(), Some(1000.0));
    }

    #[test]
    fn bisect_stops_after_runs_max() {
        let mut search = RateSearch::bisect(1000.0, 0.001, 3);
        assert_eq!(drive(&mut search, 300.0), [500.0, 250.0, 375.0]);
        assert_eq!(search.best(), Some(250.0));
    }

    #[test]
    fn bisect_answers_the_highest_met_rate_when_runs_contradict_each_other() {
        // A noisy server: 500 breaks the SLO, yet 250 and then 375 meet it.
        let mut search = RateSearch::bisect(1000.0, 0.2, 20);
        let outcomes = [(500.0, false), (250.0, true), (375.0, true)];
        for (rate, met) in outcomes {
            assert_eq!(search.next_rate(), Some(rate));
            search.on_outcome(rate, met);
        }
        assert_eq!(search.next_rate(), None, "(375, 500) is within 20% of 1000");
        assert_eq!(search.best(), Some(375.0));
    }
}
