//! Discovery's Prometheus metrics. No label carries a target or a caller, so the series count
//! stays fixed however many proxies watch however many Services.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Discovery's metrics. Cheap to clone: clones share their values.
#[derive(Clone, Debug)]
pub struct DiscoveryMetrics {
    pub(super) streams: Gauge,
    pub(super) updates: Counter,
    pub(super) rejected: Counter,
    pub(super) index_builds: Counter,
    pub(super) index_build_seconds: Histogram,
}

impl Default for DiscoveryMetrics {
    /// Metrics that count but are not registered anywhere.
    fn default() -> Self {
        Self {
            streams: Gauge::default(),
            updates: Counter::default(),
            rejected: Counter::default(),
            index_builds: Counter::default(),
            // 100 µs to about 6.5 s.
            index_build_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
        }
    }
}

// === impl DiscoveryMetrics ===

impl DiscoveryMetrics {
    /// Creates the metrics and registers them in `registry`, named `discovery_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "discovery_streams",
            "Destination.Get streams open now",
            metrics.streams.clone(),
        );
        registry.register(
            "discovery_updates",
            "Updates sent on Destination.Get streams",
            metrics.updates.clone(),
        );
        registry.register(
            "discovery_rejected_requests",
            "Destination.Get requests refused because their target could not be read",
            metrics.rejected.clone(),
        );
        registry.register(
            "discovery_index_builds",
            "Rebuilds of the discovery index, one per batch of cluster changes",
            metrics.index_builds.clone(),
        );
        registry.register(
            "discovery_index_build_seconds",
            "Time to rebuild the discovery index from the cluster's objects",
            metrics.index_build_seconds.clone(),
        );
        metrics
    }

    /// How many streams are open now.
    pub fn open_streams(&self) -> i64 {
        self.streams.get()
    }

    /// How many updates have been sent, on all streams.
    pub fn updates_sent(&self) -> u64 {
        self.updates.get()
    }

    /// How many times the index has been built.
    pub fn index_builds(&self) -> u64 {
        self.index_builds.get()
    }
}

/// Counts one open stream for as long as it lives.
#[derive(Debug)]
pub(super) struct OpenStream(Gauge);

impl OpenStream {
    pub(super) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn registers_every_series() {
        let mut registry = Registry::default();
        let metrics = DiscoveryMetrics::register(&mut registry);
        let open = OpenStream::new(&metrics.streams);
        metrics.updates.inc();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap_or_else(|e| panic!("{e}"));
        for line in [
            "discovery_streams 1",
            "discovery_updates_total 1",
            "discovery_rejected_requests_total 0",
            "discovery_index_builds_total 0",
            "discovery_index_build_seconds_count 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        drop(open);
        assert_eq!(metrics.open_streams(), 0);
    }
}
