//! Load balancing over the endpoints of one service: power of two choices over peak-EWMA load,
//! with ejection of endpoints that fail to connect.
//!
//! The core is sans-IO: the caller passes the time and the randomness, and reports outcomes; the
//! balancer never reads a clock nor opens a socket. It balances per request for HTTP and per
//! connection for TCP; the caller decides which by when it calls [`Balancer::pick`].
//!
//! - [`ewma`]: the per-endpoint round-trip estimate.
//! - [`ejection`]: the per-endpoint circuit breaker (consecutive failures, backoff, probes).
//! - this module: the endpoint set, kept across discovery updates, and the pick itself.
//!
//! A pick draws two distinct endpoints among those available and keeps the one with the lower
//! load, `rtt_estimate * (pending + 1)`. Two random choices avoid both the herd that "always the
//! least loaded" sends to one endpoint on stale data and the blindness of a plain random choice.
//!
//! When every endpoint is ejected the pick fails fast with [`PickError::AllEjected`] rather than
//! sending traffic to an endpoint known to be failing: the caller is usually a
//! [`split`](crate::split) that should move to the next priority group at once, and otherwise it
//! answers 503 or refuses the connection, which the application's own retries handle better than
//! a connect timeout would. The error says when the first endpoint becomes probe-able again.

pub mod ejection;
mod endpoint;
pub mod ewma;

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

pub use self::ejection::{EjectionPolicy, EndpointHealth};
pub use self::endpoint::{EndpointStatus, InFlight};
pub use self::ewma::PeakEwma;

use self::endpoint::Endpoint;

/// How the balancer estimates load and ejects endpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceConfig {
    /// The round-trip estimate of an endpoint with no samples yet (default 30 ms).
    pub default_rtt: Duration,
    /// The time constant of the peak-EWMA decay (default 10 s).
    pub decay: Duration,
    /// The round-trip sample a connect failure counts as (default 1 s): a failing endpoint loses
    /// the power-of-two comparison at once, well before it is ejected.
    pub failure_penalty: Duration,
    /// When to eject endpoints and for how long.
    pub ejection: EjectionPolicy,
}

/// Why a pick found no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// Discovery gave no endpoints.
    #[error("the service has no endpoints")]
    NoEndpoints,
    /// Every endpoint is ejected, or half-open with its probe in flight.
    #[error("all {endpoints} endpoints are ejected after connect failures")]
    AllEjected {
        /// How many endpoints the service has.
        endpoints: usize,
        /// When the first ejection backoff ends; `None` when every endpoint is already being
        /// probed.
        next_probe_at: Option<Instant>,
    },
}

/// The endpoints of one service and their load statistics, keyed by address.
///
/// `A` is the endpoint's key: its socket address by default, or anything that names an endpoint
/// uniquely (a tunnel target, for instance).
#[derive(Debug)]
pub struct Balancer<A = SocketAddr> {
    config: BalanceConfig,
    /// In discovery order, so that a seeded RNG makes the same picks.
    endpoints: Vec<(A, Endpoint)>,
    /// Reused by every pick, so that picking does not allocate.
    available: Vec<usize>,
}

// === impl BalanceConfig ===

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_secs(1),
            ejection: EjectionPolicy::default(),
        }
    }
}

// === impl Balancer ===

impl<A: Clone + Eq + Hash> Balancer<A> {
    /// A balancer with no endpoints yet; [`update`](Self::update) gives it some.
    pub fn new(config: BalanceConfig) -> Self {
        Self {
            config,
            endpoints: Vec::new(),
            available: Vec::new(),
        }
    }

    /// Replaces the endpoint set with a discovery snapshot received at `now`.
    ///
    /// Endpoints that remain keep their statistics (estimate, pending count, ejection), so that a
    /// snapshot does not forgive a failing endpoint nor forget a slow one. New endpoints start
    /// fresh at the default round-trip estimate; gone ones are dropped (requests still in flight
    /// to them finish harmlessly). A repeated address counts once.
    pub fn update(&mut self, endpoints: impl IntoIterator<Item = A>, now: Instant) {
        let mut previous: HashMap<A, Endpoint> = self.endpoints.drain(..).collect();
        let mut seen = HashSet::new();
        for addr in endpoints {
            if !seen.insert(addr.clone()) {
                continue;
            }
            let endpoint = previous
                .remove(&addr)
                .unwrap_or_else(|| Endpoint::new(&self.config, now));
            self.endpoints.push((addr, endpoint));
        }
    }

    /// Picks an endpoint at `now` by the power of two choices among the available ones.
    ///
    /// The returned guard counts as pending on the endpoint until it is finished, failed or
    /// dropped. This takes `&mut self` so that two picks never race for one half-open endpoint's
    /// single probe.
    pub fn pick(&mut self, now: Instant, rng: &mut impl Rng) -> Result<InFlight<A>, PickError> {
        self.pick_avoiding(now, rng, None)
    }

    /// [`pick`](Self::pick), passing over `avoid` (the endpoint a retry's previous attempt just
    /// failed on) unless it is the only one available.
    pub fn pick_avoiding(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        avoid: Option<&A>,
    ) -> Result<InFlight<A>, PickError> {
        if self.endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        self.available.clear();
        self.available.extend(
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, (_, endpoint))| endpoint.is_available(now))
                .map(|(index, _)| index),
        );
        if let Some(avoid) = avoid {
            if self.available.len() > 1 {
                let endpoints = &self.endpoints;
                self.available.retain(|&index| endpoints[index].0 != *avoid);
            }
        }

        // An endpoint whose ejection backoff is over gets its probe first: left to the power of
        // two choices, the failure penalties in its estimate would keep it from ever being
        // tried, and so from ever coming back.
        let half_open = self
            .available
            .iter()
            .copied()
            .find(|&index| self.endpoints[index].1.is_half_open(now));
        let chosen = match self.available[..] {
            [] => return Err(self.all_ejected(now)),
            _ if half_open.is_some() => half_open.unwrap_or_default(),
            [only] => only,
            _ => {
                let count = self.available.len();
                let first = rng.random_range(0..count);
                // Draw the second among the others, so that the two are distinct.
                let mut second = rng.random_range(0..count - 1);
                if second >= first {
                    second += 1;
                }
                let (a, b) = (self.available[first], self.available[second]);
                // Ties go to the first draw, which is as random as the second.
                if self.endpoints[b].1.load(now) < self.endpoints[a].1.load(now) {
                    b
                } else {
                    a
                }
            }
        };
        let (addr, endpoint) = &self.endpoints[chosen];
        Ok(endpoint.start(addr.clone(), now, self.config.failure_penalty))
    }

    /// Whether at least one endpoint may be picked at `now`: what a [`split`](crate::split)
    /// asks of each backend.
    pub fn has_available(&self, now: Instant) -> bool {
        self.endpoints
            .iter()
            .any(|(_, endpoint)| endpoint.is_available(now))
    }

    /// A snapshot of one endpoint's statistics at `now`, if it is in the set.
    pub fn status(&self, addr: &A, now: Instant) -> Option<EndpointStatus> {
        self.endpoints
            .iter()
            .find(|(known, _)| known == addr)
            .map(|(_, endpoint)| endpoint.status(now))
    }

    /// The endpoints, in discovery order.
    pub fn endpoints(&self) -> impl Iterator<Item = &A> {
        self.endpoints.iter().map(|(addr, _)| addr)
    }

    /// How many endpoints the set holds, available or not.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The configuration this balancer was built with.
    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    fn all_ejected(&self, now: Instant) -> PickError {
        PickError::AllEjected {
            endpoints: self.endpoints.len(),
            next_probe_at: self
                .endpoints
                .iter()
                .filter_map(|(_, endpoint)| endpoint.ejected_until(now))
                .min(),
        }
    }
}

#[cfg(test)]
mod tests;
