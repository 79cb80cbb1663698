//! Where the link reconciler learns whether a linked cluster's gateway is alive.
//!
//! The reconciler asks a [`GatewayHealthSource`] to probe each valid Link's gateway, and reads
//! the answers from the [`ProbeHandle`] it gets back: whether the gateway counts as alive (after
//! the Link's failure threshold), the last round trip and when it was measured. A Link's mirrors
//! are ready only while its gateway is alive. Without a source (no local gateway to probe
//! through), every gateway counts as alive.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::link::ValidLink;

/// A linked gateway's health, as the probes see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayHealth {
    /// Whether the gateway counts as alive: true until `failure_threshold` probes in a row
    /// failed, and again after one succeeds.
    pub alive: bool,
    /// The last successful probe's round trip.
    pub latency: Option<Duration>,
    /// When the last probe finished, successful or not.
    pub last_probe: Option<SystemTime>,
    /// Why the last probe failed, when it did.
    pub last_error: Option<String>,
}

impl Default for GatewayHealth {
    /// Alive until probes say otherwise.
    fn default() -> Self {
        Self {
            alive: true,
            latency: None,
            last_probe: None,
            last_error: None,
        }
    }
}

/// Probing of one Link's gateway; the probes stop when it is dropped.
#[derive(Debug)]
pub struct ProbeHandle {
    /// The gateway's health, updated after every probe.
    pub health: watch::Receiver<GatewayHealth>,
    /// Keeps the probing running.
    pub guard: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        if let Some(task) = self.guard.take() {
            task.abort();
        }
    }
}

impl ProbeHandle {
    /// A handle that never probes: the gateway counts as alive.
    pub fn always_alive() -> Self {
        let (_, health) = watch::channel(GatewayHealth::default());
        Self {
            health,
            guard: None,
        }
    }
}

/// Starts probing linked gateways.
pub trait GatewayHealthSource: Send + Sync + std::fmt::Debug {
    /// Starts probing `link`'s gateway with its period, timeout and failure threshold.
    fn probe(&self, link: &ValidLink) -> ProbeHandle;
}
