//! The one retry policy of Navigator's reconnect and restart loops: jittered
//! exponential backoff, from the `backon` crate.
//!
//! Jitter matters because many processes lose the same thing at the same
//! moment: after a RabbitMQ restart every agent reconnects, and without jitter
//! they would all retry in lockstep, hitting the broker together on every
//! round. Each loop keeps its own sleeping and cancellation (a `select!` on
//! its shutdown signal); this type only says how long the next pause is.
//!
//! A delay lies in `[b, 2b)`, where `b` starts at `start` and doubles up to
//! `max / 2`; so no pause is longer than `max` (the cap each loop had before
//! jitter), and once capped the pauses spread evenly over `[max / 2, max)`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// An endless sequence of jittered, exponentially growing, capped delays.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from about `start` (up to twice it) growing to at most `max`.
    pub fn new(start: Duration, max: Duration) -> Self {
        let half = max / 2;
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            // backon does not cap the first delay: a `start` above half the
            // cap starts at the cap's base instead.
            .with_min_delay(start.min(half))
            .with_max_delay(half)
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // The sequence has no end (`without_max_times`); `max` is only the
        // fallback should that ever change. The `min` guards the bound
        // against float rounding in backon's multiplication.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts over from `start`: for a loop whose last attempt held long
    /// enough to count as a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(3);

    #[test]
    fn first_delay_is_start_up_to_twice_it() {
        for _ in 0..200 {
            let delay = Backoff::new(START, MAX).next_delay();
            assert!(delay >= START && delay < START * 2, "{delay:?}");
        }
    }

    #[test]
    fn delays_grow_and_never_exceed_the_cap() {
        let mut backoff = Backoff::new(START, MAX);
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= MAX), "{delays:?}");
        // 100 ms doubles past 1.5 s (the cap's base) within 5 steps; from
        // then on every delay lies in [max/2, max].
        assert!(delays[5..].iter().all(|d| *d >= MAX / 2), "{delays:?}");
        // Each step's base doubles, so a later delay is never below the
        // base of an earlier one.
        for (i, pair) in delays.windows(2).enumerate().take(4) {
            assert!(pair[1] >= pair[0] / 2, "step {i}: {pair:?}");
        }
    }

    #[test]
    fn delays_are_jittered() {
        // Two processes that start together do not retry together...
        let a: Vec<Duration> = {
            let mut b = Backoff::new(START, MAX);
            (0..10).map(|_| b.next_delay()).collect()
        };
        let b: Vec<Duration> = {
            let mut b = Backoff::new(START, MAX);
            (0..10).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, b);
        // ...and once capped, the pauses still spread over the range
        // instead of settling on one value.
        let mut backoff = Backoff::new(START, MAX);
        let capped: Vec<Duration> = (0..100).map(|_| backoff.next_delay()).skip(10).collect();
        let (lo, hi) = (capped.iter().min(), capped.iter().max());
        let spread = hi.zip(lo).map(|(hi, lo)| *hi - *lo).unwrap_or_default();
        assert!(spread > MAX / 4, "capped delays barely vary: {capped:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(START, MAX);
        for _ in 0..20 {
            backoff.next_delay();
        }
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= START && delay < START * 2, "{delay:?}");
    }

    #[test]
    fn a_start_above_half_the_cap_stays_within_it() {
        let max = Duration::from_millis(600);
        let mut backoff = Backoff::new(Duration::from_millis(500), max);
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!(delay >= max / 2 && delay <= max, "{delay:?}");
        }
    }
}
