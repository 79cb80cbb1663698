//! How long to wait before reconnecting to the controller.
//!
//! Exponential (doubling from [`ReconnectBackoff::initial`] up to [`ReconnectBackoff::max`]) so
//! that an unreachable controller costs little, and jittered so that the thousands of proxies
//! that lost it at the same moment do not all come back at the same moment either. The state
//! machine takes its randomness as an argument and never sleeps, so its tests need no clock.

use std::time::Duration;

use rand::Rng;

/// The reconnect delays: doubling from `initial` to `max`, each one jittered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectBackoff {
    /// The base of the first delay after a failure.
    pub initial: Duration,
    /// The largest base a delay grows to.
    pub max: Duration,
}

/// The delays of one run of failures; reset it once a connection has proven healthy.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: ReconnectBackoff,
    /// The base of the next delay.
    next: Duration,
}

// === impl ReconnectBackoff ===

impl Default for ReconnectBackoff {
    /// 100 ms doubling to 10 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

// === impl Backoff ===

impl Backoff {
    /// Starts a run of delays at the policy's initial delay.
    pub fn new(policy: ReconnectBackoff) -> Self {
        Self {
            policy,
            next: policy.initial.min(policy.max),
        }
    }

    /// The delay before the next attempt, between half the current base and the full base
    /// ("equal jitter"): never so short that failures turn into a busy loop, never longer than
    /// the base, which then doubles up to the maximum.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.policy.max);
        let half = base / 2;
        let jitter_nanos = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.random_range(0..=jitter_nanos))
    }

    /// Starts over from the initial delay, after a connection that delivered an answer.
    pub fn reset(&mut self) {
        self.next = self.policy.initial.min(self.policy.max);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn bases(backoff: &mut Backoff, rng: &mut StdRng, n: usize) -> Vec<Duration> {
        (0..n).map(|_| backoff.next_delay(rng)).collect()
    }

    #[test]
    fn doubles_to_the_maximum_within_the_jitter_range() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(ReconnectBackoff::default());
        let delays = bases(&mut backoff, &mut rng, 12);
        let expected_bases = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        for (delay, base) in delays.iter().zip(expected_bases) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base / 2 && *delay <= base,
                "{delay:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
        for delay in &delays[8..] {
            assert!(*delay <= Duration::from_secs(10));
        }
    }

    #[test]
    fn jitter_spreads_proxies_apart() {
        let mut rng = StdRng::seed_from_u64(1);
        let firsts: Vec<_> = (0..20)
            .map(|_| Backoff::new(ReconnectBackoff::default()).next_delay(&mut rng))
            .collect();
        assert!(firsts.iter().any(|d| *d != firsts[0]));
    }

    #[test]
    fn reset_starts_over() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(ReconnectBackoff::default());
        bases(&mut backoff, &mut rng, 6);
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn an_initial_above_the_maximum_is_capped() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(ReconnectBackoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(1),
        });
        assert!(backoff.next_delay(&mut rng) <= Duration::from_secs(1));
    }
}
