//! The peak-EWMA latency estimate of one endpoint, as in Finagle and linkerd2-proxy.
//!
//! An exponentially weighted moving average whose weight depends on the time between samples
//! (a time constant, not a sample count), so that the estimate means the same thing at 10 and at
//! 10 000 requests per second. It is *peak* sensitive: a sample above the estimate replaces it at
//! once, so a slowing endpoint loses traffic within one request, while a recovering one earns it
//! back gradually.
//!
//! Between samples the estimate decays toward zero (Finagle reads the cost by observing a zero
//! sample). Without that, an endpoint that was slow once would keep its high estimate for ever,
//! never be picked again, and never get the chance to show that it recovered.
//!
//! Reads are pure: [`PeakEwma::estimate`] computes the decay for a given instant and changes
//! nothing, so how often the balancer looks does not change what it sees.

use std::time::Duration;

use tokio::time::Instant;

/// A peak-sensitive, time-decayed estimate of an endpoint's round-trip time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakEwma {
    /// The estimate as of `updated_at`, in seconds: a float, because the decay is continuous.
    estimate_secs: f64,
    updated_at: Instant,
    decay_secs: f64,
}

// === impl PeakEwma ===

impl PeakEwma {
    /// Starts an estimate at `default_rtt` as of `now`, decaying with time constant `decay`.
    ///
    /// A `decay` of zero means no memory at all: the estimate is the last sample.
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            estimate_secs: default_rtt.as_secs_f64(),
            updated_at: now,
            decay_secs: decay.as_secs_f64(),
        }
    }

    /// Folds in one observed round-trip time, measured at `now`.
    ///
    /// A sample above the stored estimate replaces it (the peak); a lower one pulls the estimate
    /// toward it with weight `1 - exp(-elapsed / decay)`, where `elapsed` is the time since the
    /// previous sample. A `now` earlier than the previous sample counts as no time elapsed.
    pub fn record(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_secs_f64();
        if sample > self.estimate_secs {
            self.estimate_secs = sample;
        } else if self.decay_secs <= 0.0 {
            // No memory: the last sample is the estimate. (Through the formula below, a zero
            // time constant would make `0 / 0` a NaN on a same-instant sample, and a NaN
            // estimate compares false against everything.)
            self.estimate_secs = sample;
        } else {
            let kept = self.kept_weight(now);
            self.estimate_secs = self.estimate_secs * kept + sample * (1.0 - kept);
        }
        self.updated_at = self.updated_at.max(now);
    }

    /// Starts over from one sample taken at `now`, forgetting everything before it: for an
    /// endpoint back from ejection, whose old estimate (failure penalties) says nothing about
    /// how it performs now.
    pub fn reset(&mut self, rtt: Duration, now: Instant) {
        self.estimate_secs = rtt.as_secs_f64();
        self.updated_at = now;
    }

    /// The estimate at `now`: the stored one, decayed toward zero for the time since the last
    /// sample.
    pub fn estimate(&self, now: Instant) -> Duration {
        secs_to_duration(self.estimate_secs(now))
    }

    /// The estimate at `now`, in seconds; what the balancer multiplies by the pending count.
    pub(crate) fn estimate_secs(&self, now: Instant) -> f64 {
        self.estimate_secs * self.kept_weight(now)
    }

    /// How much of the stored estimate survives until `now`: `exp(-elapsed / decay)`.
    fn kept_weight(&self, now: Instant) -> f64 {
        if self.decay_secs <= 0.0 {
            // No memory, so no decay either: the last sample stands until the next.
            return 1.0;
        }
        let elapsed = now.saturating_duration_since(self.updated_at).as_secs_f64();
        (-elapsed / self.decay_secs).exp()
    }
}

/// Seconds back to a `Duration`, saturating: estimates are never negative nor NaN, but a huge
/// sample must not panic the conversion.
fn secs_to_duration(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(if secs > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const DECAY: Duration = Duration::from_secs(10);

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(10)
    }

    #[test]
    fn starts_at_the_default() {
        let t0 = Instant::now();
        let ewma = PeakEwma::new(30 * MS, DECAY, t0);
        assert!(close(ewma.estimate(t0), 30 * MS));
    }

    #[test]
    fn a_higher_sample_is_taken_at_once() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, DECAY, t0);
        ewma.record(500 * MS, t0 + MS);
        assert!(close(ewma.estimate(t0 + MS), 500 * MS));
    }

    #[test]
    fn a_lower_sample_pulls_by_elapsed_time() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, DECAY, t0);
        // One time constant later, the old estimate keeps exp(-1) of its weight.
        ewma.record(10 * MS, t0 + DECAY);
        let kept = (-1.0f64).exp();
        let expected = Duration::from_secs_f64(0.030 * kept + 0.010 * (1.0 - kept));
        assert!(close(ewma.estimate(t0 + DECAY), expected));

        // Samples close together barely move it.
        ewma.record(MS, t0 + DECAY + MS);
        assert!(ewma.estimate(t0 + DECAY + MS) > expected - MS / 100);
    }

    #[test]
    fn idle_estimates_decay_toward_zero() {
        let t0 = Instant::now();
        let ewma = PeakEwma::new(30 * MS, DECAY, t0);
        let later = ewma.estimate(t0 + 5 * DECAY);
        assert!(later < MS, "{later:?}");
        // Reads do not change the state.
        assert!(close(ewma.estimate(t0), 30 * MS));
    }

    #[test]
    fn zero_decay_and_extreme_inputs_do_not_panic() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, Duration::ZERO, t0);
        ewma.record(10 * MS, t0);
        assert!(close(ewma.estimate(t0), 10 * MS));

        ewma.record(Duration::MAX, t0);
        assert!(ewma.estimate(t0) > Duration::from_secs(1 << 60));
    }

    #[test]
    fn a_sample_from_the_past_counts_as_no_time_elapsed() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(30 * MS, DECAY, t0 + DECAY);
        // With no time elapsed, the old estimate keeps all its weight.
        ewma.record(MS, t0);
        assert!(close(ewma.estimate(t0 + DECAY), 30 * MS));
    }
}
