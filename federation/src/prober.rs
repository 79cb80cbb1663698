//! Probes of linked gateways, sent through this cluster's own gateway.
//!
//! A [`GatewayProber`] is the controller's [`GatewayHealthSource`]. For each valid Link it runs
//! one task that, every `probe_period`, opens a mutual TLS connection to the local gateway's
//! egress port (as a workload of this trust domain, requiring exactly the local gateway's
//! identity and ALPN `mesh.tunnel`), sends one `StreamHeader { probe }` naming the Link's
//! cluster, and reads one `ProbeResponse`, all within `probe_timeout`. The local gateway relays
//! the probe over the same link tunnels use, so a success says that the path a tunnel would
//! take works end to end; when the link cannot be used, the local gateway answers itself with
//! `healthy: false` and the reason, which becomes the probe's error.
//!
//! A probe succeeds when the answer arrives in time, is `healthy`, echoes the nonce and comes
//! from the cluster the Link names. [`ProbeTally`] turns probe results into [`GatewayHealth`]:
//! the gateway stops counting as alive after `probe_failure_threshold` failures in a row and
//! counts as alive again after one success. It is plain data, so the counting is tested without
//! sockets or clocks.
//!
//! Metrics ([`ProberMetrics`]), labelled by the Link's cluster only (so bounded by the link
//! list; a Link's series go when its probes stop):
//! - `gateway_alive{target_cluster}`: 1 while the gateway counts as alive, else 0;
//! - `gateway_probe_latency_ms{target_cluster}`: round trips of successful probes;
//! - `gateway_probes_total{target_cluster, result}`: probes by result ([`ProbeError::result`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::frame::{self, FrameError};
use mesh_api::ports::ALPN_TUNNEL;
use mesh_api::tunnel::{Probe, ProbeResponse, StreamHeader, stream_header};
use mesh_trust::tls::{self, CertResolver, TlsError};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;

use crate::link::ValidLink;
use crate::probe::{GatewayHealth, GatewayHealthSource, ProbeHandle};

/// The largest answer read from the local gateway: a `ProbeResponse` is a few dozen bytes plus
/// the gateway's error text.
const MAX_ANSWER_LEN: usize = 16 * 1024;
/// The longest error text kept from an answer: it comes from the network and ends up in a
/// Link's status.
const MAX_ERROR_TEXT: usize = 512;
/// Buckets of `gateway_probe_latency_ms`.
const LATENCY_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1_000.0, 2_000.0, 5_000.0,
    10_000.0,
];
/// Every value of the `result` label.
const RESULTS: [&str; 7] = [
    "ok",
    "connect",
    "handshake",
    "timeout",
    "exchange",
    "unhealthy",
    "mismatch",
];

/// What the prober needs to know about this cluster.
#[derive(Clone)]
pub struct ProberConfig {
    /// The local gateway's egress address.
    pub egress: SocketAddr,
    /// The identity the local gateway must present
    /// (`spiffe://<own domain>/ns/<mesh namespace>/sa/mesh-gateway`).
    pub gateway_identity: SpiffeId,
    /// The controller's own credentials: egress serves workloads of its trust domain only.
    pub certs: Arc<CertResolver>,
    /// The roots the local gateway's certificate is checked against.
    pub bundles: SharedTrustBundles,
    /// Where probe results are counted.
    pub metrics: ProberMetrics,
    /// Called after every probe with what it found (logs, tests).
    pub events: Option<ProbeHook>,
}

impl std::fmt::Debug for ProberConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProberConfig")
            .field("egress", &self.egress)
            .field("gateway_identity", &self.gateway_identity)
            .field("events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

/// A callback told about every probe.
#[derive(Clone)]
pub struct ProbeHook(Arc<dyn Fn(&ProbeEvent) + Send + Sync>);

impl ProbeHook {
    /// A hook calling `f` after every probe, on the probing task: it must not block.
    pub fn new(f: impl Fn(&ProbeEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for ProbeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeHook")
    }
}

/// One probe and what it did to the gateway's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    /// The Link's cluster.
    pub cluster: String,
    /// The round trip, or why the probe failed.
    pub outcome: Result<Duration, ProbeError>,
    /// The gateway's health after this probe.
    pub health: GatewayHealth,
    /// Failed probes in a row, this one included.
    pub failures_in_a_row: u32,
}

/// Why a probe failed. Each names where the path broke and what to check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The local gateway's egress port refused or did not answer the TCP connection.
    #[error(
        "cannot connect to the local gateway's egress port {addr}: {reason}; is the gateway running?"
    )]
    Connect {
        /// The egress address.
        addr: SocketAddr,
        /// The operating system's reason.
        reason: String,
    },
    /// The TLS handshake with the local gateway failed, or it did not agree to `mesh.tunnel`.
    #[error(
        "the TLS handshake with the local gateway at {addr}, which must be {expected}, failed: {reason}"
    )]
    Handshake {
        /// The egress address.
        addr: SocketAddr,
        /// The identity the gateway must present.
        expected: SpiffeId,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the Link's probe timeout.
    #[error("no answer through the local gateway within {0:?}")]
    Timeout(Duration),
    /// Sending the probe or reading the answer failed.
    #[error("the probe exchange with the local gateway failed: {0}")]
    Exchange(String),
    /// The answer says the gateway cannot be used (the local gateway could not reach it, or it
    /// reports itself unhealthy).
    #[error("the gateway of cluster {cluster} is not usable: {reason}")]
    Unhealthy {
        /// The probed cluster.
        cluster: String,
        /// The reason the answer gives.
        reason: String,
    },
    /// The answer is not the answer to this probe.
    #[error("the answer does not match the probe: {0}")]
    Mismatch(String),
}

impl ProbeError {
    /// The `result` label of `gateway_probes_total` for this failure.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Handshake { .. } => "handshake",
            Self::Timeout(_) => "timeout",
            Self::Exchange(_) => "exchange",
            Self::Unhealthy { .. } => "unhealthy",
            Self::Mismatch(_) => "mismatch",
        }
    }
}

/// Why a prober could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    /// mesh-trust could not build the client TLS configuration.
    #[error("the probes' TLS configuration: {0}")]
    Tls(#[from] TlsError),
}

// === ProbeTally ===

/// A gateway's health as probe results make it: the counting rule, as plain data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTally {
    threshold: u32,
    failures: u32,
    health: GatewayHealth,
}

impl ProbeTally {
    /// A gateway that counts as alive until `threshold` probes in a row fail (at least 1).
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: 0,
            health: GatewayHealth::default(),
        }
    }

    /// Records a probe that finished at `at`; returns whether `alive` changed.
    pub fn record(&mut self, outcome: &Result<Duration, ProbeError>, at: SystemTime) -> bool {
        let was_alive = self.health.alive;
        self.health.last_probe = Some(at);
        match outcome {
            Ok(latency) => {
                self.failures = 0;
                self.health.alive = true;
                self.health.latency = Some(*latency);
                self.health.last_error = None;
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.threshold {
                    self.health.alive = false;
                }
                self.health.last_error = Some(error.to_string());
            }
        }
        was_alive != self.health.alive
    }

    /// The health after the probes recorded so far.
    pub fn health(&self) -> &GatewayHealth {
        &self.health
    }

    /// Failed probes since the last success.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures
    }
}

/// Whether `answer` is a good answer to the probe `nonce` for `cluster`.
///
/// # Errors
///
/// The answer is for another probe or another cluster, or says the gateway cannot be used.
pub fn judge(answer: &ProbeResponse, nonce: u64, cluster: &str) -> Result<(), ProbeError> {
    if answer.nonce != nonce {
        return Err(ProbeError::Mismatch(format!(
            "it carries nonce {}, the probe sent {nonce}",
            answer.nonce
        )));
    }
    if !answer.healthy {
        let reason = if answer.error.is_empty() {
            "it reports itself unhealthy".to_owned()
        } else {
            answer.error.chars().take(MAX_ERROR_TEXT).collect()
        };
        return Err(ProbeError::Unhealthy {
            cluster: cluster.to_owned(),
            reason,
        });
    }
    if answer.cluster != cluster {
        let named: String = answer.cluster.chars().take(MAX_ERROR_TEXT).collect();
        return Err(ProbeError::Mismatch(format!(
            "the gateway at the end of the link to {cluster} says it is cluster {named:?}; \
             check the Link's clusterName and that gateway's configuration"
        )));
    }
    Ok(())
}

// === GatewayProber ===

/// Probes linked gateways through the local gateway: the controller's
/// [`GatewayHealthSource`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GatewayProber {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProberConfig,
    connector: TlsConnector,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayProber")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GatewayProber {
    /// A prober for `config`.
    ///
    /// # Errors
    ///
    /// When the TLS client configuration cannot be built.
    pub fn new(config: ProberConfig) -> Result<Self, ProberError> {
        let tls = tls::client_config(
            config.bundles.clone(),
            PeerPolicy::Exactly(config.gateway_identity.clone()),
            Some(config.certs.clone()),
            &[ALPN_TUNNEL],
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                connector: TlsConnector::from(Arc::new(tls)),
            }),
        })
    }

    /// Probes `cluster`'s gateway once, within `timeout`: the round trip from sending the probe
    /// to reading the answer (the local TCP and TLS handshakes are not counted).
    ///
    /// # Errors
    ///
    /// Why the probe failed.
    pub async fn probe_once(
        &self,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Duration, ProbeError> {
        let nonce = rand::random::<u64>();
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        tokio::time::timeout(timeout, self.exchange(cluster, nonce, sent_at))
            .await
            .map_err(|_| ProbeError::Timeout(timeout))?
    }

    async fn exchange(
        &self,
        cluster: &str,
        nonce: u64,
        sent_at: i64,
    ) -> Result<Duration, ProbeError> {
        let config = &self.inner.config;
        let addr = config.egress;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ProbeError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let handshake = |reason: String| ProbeError::Handshake {
            addr,
            expected: config.gateway_identity.clone(),
            reason,
        };
        let mut stream = self
            .inner
            .connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| handshake(e.to_string()))?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_TUNNEL) {
            return Err(handshake(format!(
                "it did not agree to ALPN mesh.tunnel; is {addr} its egress port?"
            )));
        }
        let header = StreamHeader {
            kind: Some(stream_header::Kind::Probe(Probe {
                nonce,
                sent_at_unix_micros: sent_at,
                target_cluster: cluster.to_owned(),
            })),
        };
        let started = Instant::now();
        let exchange = |e: FrameError| ProbeError::Exchange(e.to_string());
        frame::write_frame(&mut stream, &header, MAX_ANSWER_LEN)
            .await
            .map_err(exchange)?;
        let answer = frame::read_frame::<ProbeResponse, _>(&mut stream, MAX_ANSWER_LEN)
            .await
            .map_err(exchange)?
            .ok_or_else(|| {
                ProbeError::Exchange(
                    "the local gateway closed the connection without an answer".into(),
                )
            })?;
        let round_trip = started.elapsed();
        judge(&answer, nonce, cluster)?;
        Ok(round_trip)
    }
}

impl GatewayHealthSource for GatewayProber {
    fn probe(&self, link: &ValidLink) -> ProbeHandle {
        let (health_tx, health) = watch::channel(GatewayHealth::default());
        let schedule = Schedule {
            cluster: link.cluster.clone(),
            period: link.probe_period,
            timeout: link.probe_timeout,
            threshold: link.probe_failure_threshold,
        };
        let task = tokio::spawn(probe_forever(self.clone(), schedule, health_tx));
        ProbeHandle {
            health,
            guard: Some(task),
        }
    }
}

/// What one Link's probes follow.
#[derive(Debug)]
struct Schedule {
    cluster: String,
    period: Duration,
    timeout: Duration,
    threshold: u32,
}

/// Probes one Link's gateway every period until aborted (its [`ProbeHandle`] dropped).
async fn probe_forever(
    prober: GatewayProber,
    schedule: Schedule,
    health: watch::Sender<GatewayHealth>,
) {
    let config = &prober.inner.config;
    let cluster = schedule.cluster.as_str();
    // Dropped with the task, abort included: the Link's series go with its probes.
    let _series = config.metrics.claim(cluster);
    config.metrics.set_alive(cluster, true);
    let mut tally = ProbeTally::new(schedule.threshold);
    let mut ticks = tokio::time::interval(schedule.period.max(Duration::from_millis(1)));
    // A probe slower than the period is followed by the next at the next period boundary, not
    // at once: probes never run back to back, whatever the timeout.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let outcome = prober.probe_once(cluster, schedule.timeout).await;
        let flipped = tally.record(&outcome, SystemTime::now());
        config
            .metrics
            .observe(cluster, &outcome, tally.health().alive);
        match (&outcome, flipped) {
            (Ok(latency), true) => {
                tracing::info!(%cluster, ?latency, "the linked gateway answers probes again");
            }
            (Err(error), true) => tracing::warn!(
                %cluster,
                %error,
                failures = tally.failures_in_a_row(),
                "the linked gateway is down: its mirrors are marked not ready"
            ),
            (Err(error), false) => tracing::debug!(
                %cluster,
                %error,
                failures = tally.failures_in_a_row(),
                "probe failed"
            ),
            (Ok(latency), false) => tracing::trace!(%cluster, ?latency, "probe answered"),
        }
        // Every probe changes `last_probe`; the link reconciler debounces status writes.
        health.send_replace(tally.health().clone());
        if let Some(hook) = &config.events {
            (hook.0)(&ProbeEvent {
                cluster: cluster.to_owned(),
                outcome,
                health: tally.health().clone(),
                failures_in_a_row: tally.failures_in_a_row(),
            });
        }
        if health.is_closed() {
            return;
        }
    }
}

// === ProberMetrics ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    target_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    target_cluster: String,
    result: &'static str,
}

/// The probes' metrics. Clones share the series, so the prober keeps one and the admin
/// server's registry another.
#[derive(Clone, Debug)]
pub struct ProberMetrics {
    inner: Arc<MetricsInner>,
}

#[derive(Debug)]
struct MetricsInner {
    alive: Family<ClusterLabels, Gauge>,
    latency: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    probes: Family<ResultLabels, Counter>,
    /// Which probing task owns each cluster's series: a Link restarted with a new spec starts
    /// its new task before the old one is gone, and the old one must not remove the new
    /// series.
    owners: Mutex<HashMap<String, u64>>,
    next_owner: AtomicU64,
}

impl Default for ProberMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            Histogram::new(LATENCY_BUCKETS_MS)
        }
        Self {
            inner: Arc::new(MetricsInner {
                alive: Family::default(),
                latency: Family::new_with_constructor(histogram),
                probes: Family::default(),
                owners: Mutex::new(HashMap::new()),
                next_owner: AtomicU64::new(0),
            }),
        }
    }
}

impl ProberMetrics {
    /// Registers the metrics (names in the module doc) into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_alive",
            "1 while the linked cluster's gateway counts as alive (probes through the local gateway)",
            self.inner.alive.clone(),
        );
        registry.register(
            "gateway_probe_latency_ms",
            "Round trips of successful probes of linked gateways, in milliseconds",
            self.inner.latency.clone(),
        );
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "gateway_probes",
            "Probes of linked gateways, by result",
            self.inner.probes.clone(),
        );
    }

    fn labels(cluster: &str) -> ClusterLabels {
        ClusterLabels {
            target_cluster: cluster.to_owned(),
        }
    }

    fn set_alive(&self, cluster: &str, alive: bool) {
        self.inner
            .alive
            .get_or_create(&Self::labels(cluster))
            .set(i64::from(alive));
    }

    fn observe(&self, cluster: &str, outcome: &Result<Duration, ProbeError>, alive: bool) {
        self.set_alive(cluster, alive);
        let result = match outcome {
            Ok(latency) => {
                self.inner
                    .latency
                    .get_or_create(&Self::labels(cluster))
                    .observe(latency.as_secs_f64() * 1_000.0);
                "ok"
            }
            Err(error) => error.result(),
        };
        self.inner
            .probes
            .get_or_create(&ResultLabels {
                target_cluster: cluster.to_owned(),
                result,
            })
            .inc();
    }

    /// Makes the caller the owner of `cluster`'s series until the guard is dropped.
    fn claim(&self, cluster: &str) -> SeriesGuard {
        let token = self.inner.next_owner.fetch_add(1, Ordering::Relaxed);
        self.inner
            .owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cluster.to_owned(), token);
        SeriesGuard {
            metrics: self.clone(),
            cluster: cluster.to_owned(),
            token,
        }
    }

    /// Removes `cluster`'s series if `token` still owns them.
    fn release(&self, cluster: &str, token: u64) {
        let mut owners = self
            .inner
            .owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if owners.get(cluster) != Some(&token) {
            return;
        }
        owners.remove(cluster);
        let labels = Self::labels(cluster);
        self.inner.alive.remove(&labels);
        self.inner.latency.remove(&labels);
        for result in RESULTS {
            self.inner.probes.remove(&ResultLabels {
                target_cluster: cluster.to_owned(),
                result,
            });
        }
    }
}

/// A probing task's hold on its cluster's series.
#[derive(Debug)]
struct SeriesGuard {
    metrics: ProberMetrics,
    cluster: String,
    token: u64,
}

impl Drop for SeriesGuard {
    fn drop(&mut self) {
        self.metrics.release(&self.cluster, self.token);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn failure() -> Result<Duration, ProbeError> {
        Err(ProbeError::Timeout(Duration::from_secs(1)))
    }

    fn success(ms: u64) -> Result<Duration, ProbeError> {
        Ok(Duration::from_millis(ms))
    }

    #[test]
    fn alive_until_the_threshold_of_failures_in_a_row_and_back_after_one_success() {
        let at = UNIX_EPOCH + Duration::from_secs(1000);
        let mut tally = ProbeTally::new(3);
        assert!(tally.health().alive, "alive before any probe");
        assert!(!tally.record(&success(7), at));
        assert_eq!(tally.health().latency, Some(Duration::from_millis(7)));

        assert!(!tally.record(&failure(), at));
        assert!(!tally.record(&failure(), at));
        assert!(tally.health().alive, "two failures of three");
        assert_eq!(tally.failures_in_a_row(), 2);
        assert!(tally.record(&failure(), at), "the third failure flips it");
        assert!(!tally.health().alive);
        assert_eq!(
            tally.health().latency,
            Some(Duration::from_millis(7)),
            "the last success's round trip is kept"
        );
        assert!(
            tally
                .health()
                .last_error
                .as_deref()
                .unwrap()
                .contains("no answer")
        );
        assert!(!tally.record(&failure(), at), "still down, no change");

        let later = at + Duration::from_secs(3);
        assert!(
            tally.record(&success(9), later),
            "one success brings it back"
        );
        let health = tally.health();
        assert!(health.alive);
        assert_eq!(health.latency, Some(Duration::from_millis(9)));
        assert_eq!(health.last_probe, Some(later));
        assert_eq!(health.last_error, None);
        assert_eq!(tally.failures_in_a_row(), 0);
    }

    #[test]
    fn a_success_between_failures_restarts_the_count() {
        let at = UNIX_EPOCH;
        let mut tally = ProbeTally::new(2);
        tally.record(&failure(), at);
        tally.record(&success(1), at);
        tally.record(&failure(), at);
        assert!(tally.health().alive, "one failure since the last success");
        tally.record(&failure(), at);
        assert!(!tally.health().alive);
    }

    #[test]
    fn a_threshold_of_zero_counts_as_one() {
        let mut tally = ProbeTally::new(0);
        assert!(tally.record(&failure(), UNIX_EPOCH));
        assert!(!tally.health().alive);
    }

    fn answer(nonce: u64, cluster: &str, healthy: bool, error: &str) -> ProbeResponse {
        ProbeResponse {
            nonce,
            cluster: cluster.into(),
            healthy,
            error: error.into(),
            ..ProbeResponse::default()
        }
    }

    #[test]
    fn answers_are_judged_by_nonce_health_and_cluster() {
        assert_eq!(judge(&answer(5, "east", true, ""), 5, "east"), Ok(()));
        let wrong_nonce = judge(&answer(4, "east", true, ""), 5, "east").unwrap_err();
        assert_eq!(wrong_nonce.result(), "mismatch");
        let unreachable = judge(
            &answer(5, "east", false, "cluster \"east\" is down"),
            5,
            "east",
        )
        .unwrap_err();
        assert_eq!(unreachable.result(), "unhealthy");
        assert!(unreachable.to_string().contains("is down"), "{unreachable}");
        let silent = judge(&answer(5, "east", false, ""), 5, "east").unwrap_err();
        assert!(silent.to_string().contains("unhealthy"), "{silent}");
        let other = judge(&answer(5, "north", true, ""), 5, "east").unwrap_err();
        assert_eq!(other.result(), "mismatch");
        assert!(other.to_string().contains("north"), "{other}");
        let long = "x".repeat(10_000);
        let capped = judge(&answer(5, "east", false, &long), 5, "east").unwrap_err();
        assert!(capped.to_string().len() < 1_000);
    }

    #[test]
    fn a_series_is_removed_only_by_its_owner() {
        let metrics = ProberMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let encode = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        let old = metrics.claim("east");
        metrics.observe("east", &success(3), true);
        // The Link restarts: the new task claims before the old one is gone.
        let new = metrics.claim("east");
        metrics.observe("east", &failure(), true);
        drop(old);
        let text = encode(&registry);
        assert!(
            text.contains("gateway_alive{target_cluster=\"east\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_probes_total{target_cluster=\"east\",result=\"timeout\"} 1"),
            "{text}"
        );
        drop(new);
        let text = encode(&registry);
        assert!(!text.contains("target_cluster=\"east\""), "{text}");
    }
}
