//! One endpoint's load statistics, and the guard that a pick hands out for it.
//!
//! The statistics are shared between the balancer and the guards of the requests in flight,
//! because those finish on other tasks, long after the pick, while the balancer keeps picking.
//! A mutex per endpoint keeps this simple: it is held for a few arithmetic operations, never
//! across an await, and two locks are never held at once.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::BalanceConfig;
use super::ejection::{Ejection, EndpointHealth};
use super::ewma::PeakEwma;

/// A snapshot of one endpoint's statistics, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointStatus {
    /// The peak-EWMA round-trip estimate at the instant asked for.
    pub rtt_estimate: Duration,
    /// Requests or connections picked and not yet finished, failed or dropped.
    pub pending: u64,
    /// Connect failures since the last success (reset by an ejection).
    pub consecutive_failures: u32,
    /// Consecutive ejections since the endpoint was last restored.
    pub ejections: u32,
    /// Whether the endpoint may be picked.
    pub health: EndpointHealth,
}

/// The shared statistics of one endpoint.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint(Arc<Mutex<Stats>>);

#[derive(Debug)]
struct Stats {
    rtt: PeakEwma,
    pending: u64,
    ejection: Ejection,
}

/// A request or connection in flight to the endpoint that [`Balancer::pick`](super::Balancer::pick)
/// chose.
///
/// It counts as pending on its endpoint until it is finished, failed or dropped. Each pick yields
/// at most one round-trip sample, taken at the first sign of life from the endpoint:
/// [`connected`](Self::connected) for a TCP connection (whose lifetime says nothing about the
/// endpoint's speed; keep the guard until the connection closes, to count it as pending), or
/// [`finish`](Self::finish) for an HTTP request.
///
/// Dropping the guard without an outcome releases it and records nothing: neither a sample
/// (there is no `now` to measure with in `Drop`) nor a failure (a drop is most often the client
/// giving up, which says nothing against the endpoint; counting it would eject healthy endpoints
/// under cancellation). A shell that gives up on a slow endpoint should say so with
/// [`fail`](Self::fail). A dropped probe returns its endpoint to half-open, so that the next pick
/// probes it again.
#[derive(Debug)]
pub struct InFlight<A> {
    addr: A,
    endpoint: Endpoint,
    started: Instant,
    /// The round-trip sample a connect failure counts as.
    failure_penalty: Duration,
    probe: bool,
    /// A round-trip sample was taken (by `connected` or `finish`).
    sampled: bool,
    /// An outcome was reported, so a drop is not an abandoned probe.
    resolved: bool,
}

// === impl Endpoint ===

impl Endpoint {
    pub(crate) fn new(config: &BalanceConfig, now: Instant) -> Self {
        Self(Arc::new(Mutex::new(Stats {
            rtt: PeakEwma::new(config.default_rtt, config.decay, now),
            pending: 0,
            ejection: Ejection::new(config.ejection),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        // Nothing panics while the lock is held; if something ever did, the numbers inside are
        // still numbers, and a balancer that stops picking would be worse than a stale estimate.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_available(&self, now: Instant) -> bool {
        self.lock().ejection.is_available(now)
    }

    /// Whether the endpoint's ejection backoff is over and its probe not yet sent.
    pub(crate) fn is_half_open(&self, now: Instant) -> bool {
        self.lock().ejection.health(now) == EndpointHealth::HalfOpen
    }

    pub(crate) fn ejected_until(&self, now: Instant) -> Option<Instant> {
        self.lock().ejection.ejected_until(now)
    }

    /// The load score: the round-trip estimate times the requests in flight, plus one so that an
    /// idle endpoint's score still reflects its speed.
    pub(crate) fn load(&self, now: Instant) -> f64 {
        let stats = self.lock();
        // u64 to f64 loses precision only beyond 2^53 pending requests.
        stats.rtt.estimate_secs(now) * (stats.pending as f64 + 1.0)
    }

    /// Counts a pick at `now` and hands out its guard.
    pub(crate) fn start<A>(&self, addr: A, now: Instant, failure_penalty: Duration) -> InFlight<A> {
        let probe = {
            let mut stats = self.lock();
            stats.pending = stats.pending.saturating_add(1);
            stats.ejection.on_pick(now)
        };
        InFlight {
            addr,
            endpoint: self.clone(),
            started: now,
            failure_penalty,
            probe,
            sampled: false,
            resolved: false,
        }
    }

    pub(crate) fn status(&self, now: Instant) -> EndpointStatus {
        let stats = self.lock();
        EndpointStatus {
            rtt_estimate: stats.rtt.estimate(now),
            pending: stats.pending,
            consecutive_failures: stats.ejection.consecutive_failures(),
            ejections: stats.ejection.ejections(),
            health: stats.ejection.health(now),
        }
    }
}

// === impl InFlight ===

impl<A> InFlight<A> {
    /// The endpoint picked.
    pub fn addr(&self) -> &A {
        &self.addr
    }

    /// Whether this pick probes an endpoint whose ejection backoff has ended: its outcome
    /// restores or re-ejects the endpoint.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// When the pick was made.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The endpoint accepted the connection at `now`: records the connect time as a round-trip
    /// sample and counts a success. The guard stays pending until it is finished or dropped.
    /// Calling it again does nothing.
    pub fn connected(&mut self, now: Instant) {
        if self.sampled {
            return;
        }
        self.sampled = true;
        self.resolved = true;
        let rtt = now.saturating_duration_since(self.started);
        let mut stats = self.endpoint.lock();
        if self.probe {
            // Back from ejection: the penalties that led there say nothing about it now.
            stats.rtt.reset(rtt, now);
        } else {
            stats.rtt.record(rtt, now);
        }
        stats.ejection.on_success(self.probe);
    }

    /// The request completed at `now` (the endpoint answered, whatever the answer): records its
    /// latency as a round-trip sample unless [`connected`](Self::connected) already took one,
    /// counts a success, and releases the guard.
    pub fn finish(mut self, now: Instant) {
        self.connected(now);
    }

    /// The endpoint could not be reached (connection refused or timed out, handshake failed):
    /// counts a failure toward ejection and releases the guard. The time it took is not the
    /// sample (a fast refusal must not make a broken endpoint look attractive); the configured
    /// failure penalty is, so that peak-EWMA lifts the endpoint's estimate at once and the next
    /// picks prefer its peers until the penalty decays, long before ejection. `rng` draws the
    /// jitter of the backoff, should this failure eject the endpoint.
    pub fn fail(mut self, now: Instant, rng: &mut impl Rng) {
        self.resolved = true;
        self.sampled = true;
        let mut stats = self.endpoint.lock();
        stats.rtt.record(self.failure_penalty, now);
        stats.ejection.on_failure(self.probe, now, rng);
    }
}

impl<A> Drop for InFlight<A> {
    fn drop(&mut self) {
        let mut stats = self.endpoint.lock();
        stats.pending = stats.pending.saturating_sub(1);
        if !self.resolved {
            stats.ejection.on_abandon(self.probe);
        }
    }
}
