//! Ejection of failing endpoints: a circuit breaker per endpoint, over time and outcomes.
//!
//! An endpoint is *active* until a run of consecutive connect failures ejects it for a backoff.
//! The backoff doubles with each consecutive ejection, up to a cap, and is shortened by a random
//! jitter so that the proxies that saw one endpoint fail at the same moment do not all probe it
//! at the same moment. When the backoff ends the endpoint is *half-open*: it may be picked again,
//! once, as a probe. The probe's success restores it and forgets the backoff; its failure ejects
//! it again for the next, longer backoff.
//!
//! Only the probe decides the fate of an ejected endpoint. Requests picked before the ejection
//! may still finish afterwards, and their outcomes say more about the past than about now.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// When to eject an endpoint and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EjectionPolicy {
    /// Consecutive connect failures that eject an endpoint (default 5). Zero never ejects.
    pub consecutive_failures: u32,
    /// The backoff of a first ejection (default 1 s); it doubles with each consecutive one.
    pub base_backoff: Duration,
    /// The longest backoff (default 60 s), however many ejections in a row.
    pub max_backoff: Duration,
    /// The fraction of a backoff that jitter may take off (default 0.25: a nominal 4 s backoff
    /// lasts between 3 and 4 s). Values outside `0.0..=1.0` are clamped; NaN means none.
    pub jitter: f64,
}

/// Where an endpoint stands with respect to ejection, as reported by
/// [`Balancer::status`](super::Balancer::status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointHealth {
    /// Picked normally.
    Active,
    /// Not picked until the instant given.
    Ejected {
        /// When the backoff ends and the endpoint becomes half-open.
        until: Instant,
    },
    /// The backoff is over: the next pick of this endpoint is a probe.
    HalfOpen,
    /// A probe is in flight; the endpoint is not picked again until it resolves.
    Probing,
}

/// The ejection state machine of one endpoint.
#[derive(Clone, Debug)]
pub(crate) struct Ejection {
    policy: EjectionPolicy,
    state: State,
    consecutive_failures: u32,
    /// Consecutive ejections since the endpoint was last restored: the backoff exponent.
    ejections: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    /// Half-open once `until` has passed.
    Ejected {
        until: Instant,
    },
    /// `until` is kept so that an abandoned probe can return the endpoint to half-open.
    Probing {
        until: Instant,
    },
}

// === impl EjectionPolicy ===

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: 0.25,
        }
    }
}

impl EjectionPolicy {
    /// The nominal backoff of the `ejections`-th consecutive ejection (1 for the first), before
    /// jitter: `base_backoff * 2^(ejections - 1)`, capped at `max_backoff`.
    pub fn nominal_backoff(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1);
        let grown = 1u32
            .checked_shl(doublings)
            .and_then(|factor| self.base_backoff.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(self.max_backoff)
    }

    /// The backoff of the `ejections`-th consecutive ejection, with jitter drawn from `rng`:
    /// between `(1 - jitter)` and all of the nominal backoff, so never above the cap.
    pub fn backoff(&self, ejections: u32, rng: &mut impl Rng) -> Duration {
        let nominal = self.nominal_backoff(ejections);
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 {
            return nominal;
        }
        // The factor lies in (0, 1], so the product neither overflows nor goes negative.
        nominal.mul_f64(1.0 - jitter * rng.random::<f64>())
    }
}

// === impl Ejection ===

impl Ejection {
    pub(crate) fn new(policy: EjectionPolicy) -> Self {
        Self {
            policy,
            state: State::Active,
            consecutive_failures: 0,
            ejections: 0,
        }
    }

    /// Whether the endpoint may be picked at `now`: active, or half-open with no probe out.
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        match self.state {
            State::Active => true,
            State::Ejected { until } => now >= until,
            State::Probing { .. } => false,
        }
    }

    /// When an ejected endpoint becomes half-open, if it is ejected and that is after `now`.
    pub(crate) fn ejected_until(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Ejected { until } if until > now => Some(until),
            _ => None,
        }
    }

    /// Records that the endpoint was picked at `now`; returns whether the pick is a probe.
    pub(crate) fn on_pick(&mut self, now: Instant) -> bool {
        match self.state {
            State::Ejected { until } if now >= until => {
                self.state = State::Probing { until };
                true
            }
            _ => false,
        }
    }

    /// The endpoint answered.
    pub(crate) fn on_success(&mut self, probe: bool) {
        match self.state {
            State::Active => self.consecutive_failures = 0,
            State::Probing { .. } if probe => self.restore(),
            // A late answer to a request picked before the ejection: not a probe, no verdict.
            State::Ejected { .. } | State::Probing { .. } => {}
        }
    }

    /// The endpoint could not be reached.
    pub(crate) fn on_failure(&mut self, probe: bool, now: Instant, rng: &mut impl Rng) {
        match self.state {
            State::Active => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let threshold = self.policy.consecutive_failures;
                if threshold > 0 && self.consecutive_failures >= threshold {
                    self.eject(now, rng);
                }
            }
            State::Probing { .. } if probe => self.eject(now, rng),
            State::Ejected { .. } | State::Probing { .. } => {}
        }
    }

    /// A probe was given up without an outcome: the endpoint is half-open again, so that the
    /// next pick probes it rather than leaving it stuck with a probe nobody will resolve.
    pub(crate) fn on_abandon(&mut self, probe: bool) {
        if let (true, State::Probing { until }) = (probe, self.state) {
            self.state = State::Ejected { until };
        }
    }

    pub(crate) fn health(&self, now: Instant) -> EndpointHealth {
        match self.state {
            State::Active => EndpointHealth::Active,
            State::Ejected { until } if now < until => EndpointHealth::Ejected { until },
            State::Ejected { .. } => EndpointHealth::HalfOpen,
            State::Probing { .. } => EndpointHealth::Probing,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn ejections(&self) -> u32 {
        self.ejections
    }

    fn eject(&mut self, now: Instant, rng: &mut impl Rng) {
        self.ejections = self.ejections.saturating_add(1);
        let backoff = self.policy.backoff(self.ejections, rng);
        // A backoff beyond the clock's range (a policy of `Duration::MAX`) is as good as never:
        // a century stands in for it.
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
        let until = now
            .checked_add(backoff)
            .or_else(|| now.checked_add(CENTURY))
            .unwrap_or(now);
        self.state = State::Ejected { until };
        self.consecutive_failures = 0;
    }

    fn restore(&mut self) {
        self.state = State::Active;
        self.consecutive_failures = 0;
        self.ejections = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = EjectionPolicy::default();
        let nominal: Vec<_> = (1..=8).map(|n| policy.nominal_backoff(n)).collect();
        assert_eq!(
            nominal,
            [1, 2, 4, 8, 16, 32, 60, 60].map(|s| s * SEC).to_vec()
        );
        assert_eq!(policy.nominal_backoff(u32::MAX), 60 * SEC);
        assert_eq!(policy.nominal_backoff(0), SEC);
    }

    #[test]
    fn jitter_only_shortens() {
        let mut rng = StdRng::seed_from_u64(1);
        let policy = EjectionPolicy::default();
        for n in 1..40 {
            let nominal = policy.nominal_backoff(n);
            let backoff = policy.backoff(n, &mut rng);
            assert!(
                backoff <= nominal && backoff >= nominal.mul_f64(0.75),
                "{n}: {backoff:?}"
            );
        }
    }

    #[test]
    fn odd_policies_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(1);
        for jitter in [f64::NAN, f64::INFINITY, -3.0, 7.0, 1.0] {
            let policy = EjectionPolicy {
                base_backoff: Duration::MAX,
                max_backoff: Duration::MAX,
                jitter,
                ..EjectionPolicy::default()
            };
            assert!(policy.backoff(100, &mut rng) <= Duration::MAX);
            let mut ejection = Ejection::new(policy);
            let now = Instant::now();
            for _ in 0..5 {
                ejection.on_failure(false, now, &mut rng);
            }
            assert!(!ejection.is_available(now));
        }
    }

    #[test]
    fn a_zero_threshold_never_ejects() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut ejection = Ejection::new(EjectionPolicy {
            consecutive_failures: 0,
            ..EjectionPolicy::default()
        });
        let now = Instant::now();
        for _ in 0..100 {
            ejection.on_failure(false, now, &mut rng);
        }
        assert_eq!(ejection.health(now), EndpointHealth::Active);
    }

    #[test]
    fn a_success_resets_the_run_of_failures() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut ejection = Ejection::new(EjectionPolicy::default());
        let now = Instant::now();
        for _ in 0..4 {
            ejection.on_failure(false, now, &mut rng);
        }
        ejection.on_success(false);
        for _ in 0..4 {
            ejection.on_failure(false, now, &mut rng);
        }
        assert_eq!(ejection.health(now), EndpointHealth::Active);
        ejection.on_failure(false, now, &mut rng);
        assert!(matches!(
            ejection.health(now),
            EndpointHealth::Ejected { .. }
        ));
    }

    #[test]
    fn only_the_probe_decides() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut ejection = Ejection::new(EjectionPolicy::default());
        let now = Instant::now();
        for _ in 0..5 {
            ejection.on_failure(false, now, &mut rng);
        }
        // Late outcomes of requests picked earlier change nothing.
        ejection.on_success(false);
        ejection.on_failure(false, now, &mut rng);
        assert_eq!(ejection.ejections(), 1);

        let later = now + 2 * SEC;
        assert_eq!(ejection.health(later), EndpointHealth::HalfOpen);
        assert!(ejection.on_pick(later));
        assert_eq!(ejection.health(later), EndpointHealth::Probing);
        assert!(!ejection.is_available(later));
        ejection.on_success(false);
        assert_eq!(ejection.health(later), EndpointHealth::Probing);

        // An abandoned probe leaves the endpoint half-open.
        ejection.on_abandon(true);
        assert_eq!(ejection.health(later), EndpointHealth::HalfOpen);

        assert!(ejection.on_pick(later));
        ejection.on_success(true);
        assert_eq!(ejection.health(later), EndpointHealth::Active);
        assert_eq!(ejection.ejections(), 0);
    }
}
