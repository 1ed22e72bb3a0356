//! The one retry policy of Navigator's reconnect and restart loops: jittered
//! exponential backoff, from the `backon` crate.
//!
//! Jitter matters because many processes lose the same thing at the same
//! moment: after a RabbitMQ restart every agent reconnects, and without jitter
//! they would all retry in lockstep, hitting the broker together on every
//! round. Each loop keeps its own sleeping and cancellation (a `select!` on
//! its shutdown signal); this type only says how long the next pause is.
//!
//! The k-th pause lies in `[d/2, d)`, where `d = min(start * 2^k, max)` is
//! what the loop waited before it had jitter: no pause is longer than it
//! used to be, none is shorter than half of it, and once capped the pauses
//! spread evenly over `[max / 2, max)`.

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
    /// Delays from `start` doubling up to `max`, each jittered down by up
    /// to half.
    pub fn new(start: Duration, max: Duration) -> Self {
        // backon's jitter adds up to 100% to a base that doubles up to its
        // cap; with bases of half the old delays, the result stays below them.
        let half = max / 2;
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            // backon does not cap the first delay: a `start` above `max`
            // starts at the cap's base instead.
            .with_min_delay((start / 2).min(half))
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

    /// What the loops waited before they had jitter: `start` doubling up to `max`.
    fn unjittered(step: u32) -> Duration {
        START.saturating_mul(2u32.saturating_pow(step)).min(MAX)
    }

    #[test]
    fn first_delay_is_half_of_start_up_to_start() {
        for _ in 0..200 {
            let delay = Backoff::new(START, MAX).next_delay();
            assert!(delay >= START / 2 && delay < START, "{delay:?}");
        }
    }

    #[test]
    fn each_delay_is_between_half_and_all_of_the_unjittered_one() {
        for _ in 0..20 {
            let mut backoff = Backoff::new(START, MAX);
            for step in 0..50 {
                let delay = backoff.next_delay();
                let bound = unjittered(step);
                // backon multiplies in f32: allow its rounding (a microsecond).
                let slack = Duration::from_micros(1);
                assert!(
                    delay + slack >= bound / 2 && delay <= bound + slack,
                    "step {step}: {delay:?} not in [{:?}, {bound:?}]",
                    bound / 2
                );
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        // Two processes that start together do not retry together...
        let sequence = || {
            let mut b = Backoff::new(START, MAX);
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(sequence(), sequence());
        // ...and once capped, the pauses still spread over [max/2, max)
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
        assert!(delay >= START / 2 && delay < START, "{delay:?}");
    }

    #[test]
    fn a_start_above_the_cap_stays_within_it() {
        let max = Duration::from_millis(600);
        let mut backoff = Backoff::new(Duration::from_secs(1), max);
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!(delay >= max / 2 && delay <= max, "{delay:?}");
        }
    }
}
