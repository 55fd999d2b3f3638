//! The `--find-max` search over offered rates.

use crate::options::Options;

/// The `--find-max` search: geometric steps up until one fails, then bisection between the
/// last good and the first bad rate.
#[derive(Debug)]
pub(crate) struct Search {
    rate: f64,
    factor: f64,
    retries: u32,
    /// Which measurement of `rate` the next step is (0: the first).
    pub(crate) attempt: u32,
    /// The highest rate sustained so far.
    pub(crate) good: Option<f64>,
    /// The lowest rate that failed so far.
    bad: Option<f64>,
}

impl Search {
    pub(crate) fn new(options: &Options) -> Search {
        Search {
            rate: options.rate,
            factor: options.step_factor,
            retries: options.latency_retries,
            attempt: 0,
            good: None,
            bad: None,
        }
    }

    /// Takes the verdict of the step at the current rate; returns the rate to measure next,
    /// or `None` when the search is over.
    pub(crate) fn next(&mut self, sustainable: bool, latency_only: bool) -> Option<f64> {
        // A p99 over a few seconds is decided by a handful of slow entries: one stall (a
        // RocksDB flush, the other process on the core) can fail a rate the server otherwise
        // sustains. A step that failed on its latency bound alone is measured again before
        // it counts, and the last attempt decides; any other failure counts at once.
        if !sustainable && latency_only && self.attempt < self.retries {
            self.attempt += 1;
            return Some(self.rate);
        }
        self.attempt = 0;
        if sustainable {
            self.good = Some(self.rate);
        } else {
            self.bad = Some(self.rate);
        }
        self.rate = match (self.good, self.bad) {
            (Some(g), None) => g * self.factor,
            (None, Some(b)) => b / self.factor,
            (Some(g), Some(b)) if b / g > 1.05 => (g + b) / 2.0,
            _ => return None,
        };
        (self.good.is_some() || self.rate >= 1.0).then_some(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn search(args: &str) -> Search {
        Search::new(&Options::parse_from(
            std::iter::once("chat-loadgen").chain(args.split_whitespace()),
        ))
    }

    #[test]
    fn the_search_steps_up_then_bisects() {
        let mut s = search("dm --find-max --rate 100 --step-factor 2");
        assert_eq!(s.next(true, false), Some(200.0));
        assert_eq!(s.next(true, false), Some(400.0));
        assert_eq!(s.next(false, false), Some(300.0));
        assert_eq!(s.next(true, false), Some(350.0));
        assert_eq!(s.next(false, false), Some(325.0));
        assert_eq!(s.next(true, false), Some(337.5));
        assert_eq!(s.next(true, false), None);
        assert_eq!(s.good, Some(337.5));
    }

    #[test]
    fn a_step_failed_on_latency_alone_is_measured_again_and_the_repeat_decides() {
        let mut s = search("dm --find-max --rate 100 --step-factor 2 --latency-retries 1");
        assert_eq!(s.next(true, false), Some(200.0));
        // Latency alone: the same rate again, as attempt 1.
        assert_eq!(s.next(false, true), Some(200.0));
        assert_eq!(s.attempt, 1);
        // The repeat held the bound: the rate counts as sustained.
        assert_eq!(s.next(true, false), Some(400.0));
        assert_eq!(s.attempt, 0);
        // Latency alone twice: the second failure counts.
        assert_eq!(s.next(false, true), Some(400.0));
        assert_eq!(s.next(false, true), Some(300.0));
        assert_eq!(s.good, Some(200.0));
        assert_eq!(s.bad, Some(400.0));
    }

    #[test]
    fn a_step_that_failed_on_anything_else_is_not_repeated() {
        let mut s = search("dm --find-max --rate 100 --step-factor 2 --latency-retries 3");
        assert_eq!(s.next(false, false), Some(50.0));
        let mut s = search("dm --find-max --rate 100 --step-factor 2 --latency-retries 0");
        assert_eq!(s.next(false, true), Some(50.0));
    }

    #[test]
    fn the_search_gives_up_below_one_message_per_second() {
        let mut s = search("dm --find-max --rate 3 --step-factor 2");
        assert_eq!(s.next(false, false), Some(1.5));
        assert_eq!(s.next(false, false), None);
        assert_eq!(s.good, None);
    }
}
