//! The destinations the outbound side is sending to, each with its discovery watch and balancer,
//! created on first use and dropped once idle.
//!
//! Every distinct target costs a discovery stream and a balancer, and targets come from the
//! application (Host headers, original destinations), so the set is bounded: beyond
//! `max_destinations`, a new target is refused with a clear error until idle ones are collected.
//! A destination is idle once nothing holds it (no connection or request in flight) and it has
//! not been asked for in [`IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{OutboundError, ServiceBalancer};
use crate::balance::BalanceConfig;
use crate::discovery::{Resolve, Target};
use crate::retry::{BudgetConfig, RetryBudget};

/// How long an unused destination is kept (with its latency estimates) before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often idle destinations are looked for, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// One destination as the outbound side uses it.
#[derive(Debug)]
pub struct Service {
    pub balancer: ServiceBalancer,
    /// Retries of requests to this destination come out of this budget.
    pub budget: Mutex<RetryBudget>,
}

/// The destinations in use. Shared by every connection of the outbound side.
pub struct Services {
    resolve: Arc<dyn Resolve>,
    balance: BalanceConfig,
    budget: BudgetConfig,
    max: usize,
    state: Mutex<State>,
}

struct State {
    entries: HashMap<Target, Entry>,
    last_sweep: Instant,
}

struct Entry {
    service: Arc<Service>,
    used: Instant,
}

// === impl Services ===

impl Services {
    pub fn new(
        resolve: Arc<dyn Resolve>,
        balance: BalanceConfig,
        budget: BudgetConfig,
        max_destinations: usize,
    ) -> Self {
        Self {
            resolve,
            balance,
            budget,
            max: max_destinations.max(1),
            state: Mutex::new(State {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// The destination for `target`, watched from now on if it was not already.
    pub fn get(&self, target: &Target) -> Result<Arc<Service>, OutboundError> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(state.last_sweep) >= SWEEP_INTERVAL
            || (state.entries.len() >= self.max && !state.entries.contains_key(target))
        {
            state.sweep(now);
        }
        if let Some(entry) = state.entries.get_mut(target) {
            entry.used = now;
            return Ok(entry.service.clone());
        }
        if state.entries.len() >= self.max {
            return Err(OutboundError::TooManyDestinations {
                target: target.to_string(),
                max: self.max,
            });
        }
        let service = Arc::new(Service {
            balancer: ServiceBalancer::for_target(
                target.clone(),
                self.resolve.as_ref(),
                self.balance,
            ),
            budget: Mutex::new(RetryBudget::new(self.budget)),
        });
        state.entries.insert(
            target.clone(),
            Entry {
                service: service.clone(),
                used: now,
            },
        );
        Ok(service)
    }

    /// How many destinations are held.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// Whether no destination is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("destinations", &self.len())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

// === impl State ===

impl State {
    /// Drops the destinations nothing holds that have not been asked for in a while; dropping
    /// one ends its discovery watch.
    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, entry| {
            Arc::strong_count(&entry.service) > 1 || now.duration_since(entry.used) < IDLE_TIMEOUT
        });
        self.last_sweep = now;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::discovery::StaticDiscovery;

    fn services(max: usize) -> Services {
        let discovery = StaticDiscovery::from_json("test.json", "{}").unwrap();
        Services::new(
            Arc::new(discovery),
            BalanceConfig::default(),
            BudgetConfig::default(),
            max,
        )
    }

    fn target(i: usize) -> Target {
        Target::parse(&format!("svc{i}.default.svc.cluster.local:80")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_destination_per_target() {
        let services = services(10);
        let a = services.get(&target(1)).unwrap();
        let b = services.get(&target(1)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(services.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_destinations_are_dropped_and_busy_ones_kept() {
        let services = services(10);
        let held = services.get(&target(1)).unwrap();
        drop(services.get(&target(2)).unwrap());
        tokio::time::advance(IDLE_TIMEOUT + SWEEP_INTERVAL).await;
        services.get(&target(3)).unwrap();
        assert_eq!(services.len(), 2, "target 2 was idle, target 1 is held");
        let again = services.get(&target(1)).unwrap();
        assert!(Arc::ptr_eq(&held, &again));
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_cap_new_targets_are_refused_until_some_are_idle() {
        let services = services(2);
        let _a = services.get(&target(1)).unwrap();
        let b = services.get(&target(2)).unwrap();
        let err = services.get(&target(3)).unwrap_err();
        assert!(
            err.to_string().contains("2 destinations"),
            "{err}: names the cap"
        );
        drop(b);
        tokio::time::advance(IDLE_TIMEOUT).await;
        services.get(&target(3)).unwrap();
    }
}
