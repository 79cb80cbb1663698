//! The controller's gateway probes against two real gateways on loopback, west (the local one,
//! whose egress port the probes go through) and east (the linked one), each with its own trust
//! domain and root: east found alive with a latency; east stopped, down after exactly the
//! failure threshold; east back, alive after one success; an unknown cluster, down with the
//! local gateway's reason; a wrong gateway identity, refused in the handshake and named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::core::Selector;
use mesh_federation::link::ValidLink;
use mesh_federation::probe::GatewayHealthSource;
use mesh_federation::prober::{
    GatewayProber, ProbeError, ProbeEvent, ProbeHook, ProberConfig, ProberMetrics,
};
use mesh_gateway::{Gateway, GatewayConfig, Link, Timeouts, gateway_identity};
use mesh_proxy::discovery::{Resolve, StaticDiscovery};
use mesh_test_support::pki::{Domain, bundles};
use mesh_trust::SpiffeId;
use mesh_trust::ca::{DEFAULT_LEAF_LIFETIME, Validity};
use mesh_trust::tls::CertResolver;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How long a test waits for what it expects; only reached when it fails.
const PATIENCE: Duration = Duration::from_secs(20);
const PERIOD: Duration = Duration::from_millis(100);
const THRESHOLD: u32 = 3;

fn timeouts() -> Timeouts {
    Timeouts {
        open: Duration::from_secs(3),
        connect: Duration::from_millis(500),
        tunnel_idle: Duration::from_secs(30),
        quic_idle: Duration::from_secs(2),
        drain: Duration::from_millis(100),
    }
}

/// A running gateway and the means to stop it.
struct RunningGateway {
    quic: SocketAddr,
    egress: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningGateway {
    async fn start(config: GatewayConfig) -> Self {
        let gateway = Gateway::bind(config).await.unwrap();
        let (quic, egress) = (gateway.quic_addr(), gateway.egress_addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        Self {
            quic,
            egress,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the gateway stopped in time")
            .unwrap();
    }
}

fn gateway_link(cluster: &str, domain: &Domain, quic: SocketAddr) -> Link {
    Link {
        cluster: cluster.into(),
        trust_domain: domain.td.clone(),
        addresses: vec![quic.ip().to_string()],
        port: quic.port(),
        gateway_identity: gateway_identity(&domain.td, "mesh").unwrap(),
    }
}

fn gateway_config(
    cluster: &str,
    domain: &Domain,
    trust: &mesh_trust::SharedTrustBundles,
    links: watch::Receiver<Vec<Link>>,
) -> GatewayConfig {
    let id = gateway_identity(&domain.td, "mesh").unwrap();
    let creds = domain.creds_with(&id, Validity::starting_now(DEFAULT_LEAF_LIFETIME));
    let (_, exports) = watch::channel(BTreeSet::new());
    let discovery: Arc<dyn Resolve> =
        Arc::new(StaticDiscovery::from_json("none.json", "{}").unwrap());
    let mut config = GatewayConfig::new(
        cluster,
        Arc::new(CertResolver::new(creds).unwrap()),
        trust.clone(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        links,
        exports,
        discovery,
    );
    config.timeouts = timeouts();
    config
}

/// West's and east's gateways, linked both ways.
struct World {
    west: Domain,
    west_gw: RunningGateway,
    east_gw: RunningGateway,
    east_config: GatewayConfig,
    _links: (watch::Sender<Vec<Link>>, watch::Sender<Vec<Link>>),
}

impl World {
    async fn start() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (west, east) = (Domain::new("west.local"), Domain::new("east.local"));
        let trust = bundles(&[&west, &east]);
        let (west_links, west_links_rx) = watch::channel(Vec::new());
        let west_gw =
            RunningGateway::start(gateway_config("west", &west, &trust, west_links_rx)).await;
        let (east_links, east_links_rx) =
            watch::channel(vec![gateway_link("west", &west, west_gw.quic)]);
        let east_config = gateway_config("east", &east, &trust, east_links_rx);
        let east_gw = RunningGateway::start(east_config.clone()).await;
        west_links.send_replace(vec![gateway_link("east", &east, east_gw.quic)]);
        Self {
            west,
            west_gw,
            east_gw,
            east_config,
            _links: (west_links, east_links),
        }
    }

    /// A prober as west's controller runs it, requiring `gateway` of west's egress port, with
    /// every probe reported on the returned channel.
    fn prober(
        &self,
        gateway: SpiffeId,
        metrics: ProberMetrics,
    ) -> (GatewayProber, mpsc::UnboundedReceiver<ProbeEvent>) {
        let controller = self.west.td.workload("mesh", "mesh-controller").unwrap();
        let creds = self
            .west
            .creds_with(&controller, Validity::starting_now(DEFAULT_LEAF_LIFETIME));
        let (events_tx, events) = mpsc::unbounded_channel();
        let prober = GatewayProber::new(ProberConfig {
            egress: self.west_gw.egress,
            gateway_identity: gateway,
            certs: Arc::new(CertResolver::new(creds).unwrap()),
            // The controller checks only its own gateway: its own domain is enough.
            bundles: bundles(&[&self.west]),
            metrics,
            events: Some(ProbeHook::new(move |event| {
                let _ = events_tx.send(event.clone());
            })),
        })
        .unwrap();
        (prober, events)
    }

    fn west_gateway(&self) -> SpiffeId {
        gateway_identity(&self.west.td, "mesh").unwrap()
    }
}

/// A valid Link to `cluster` with the probe settings of these tests.
fn valid_link(cluster: &str, threshold: u32) -> ValidLink {
    let domain = Domain::new(&format!("{cluster}.local"));
    ValidLink {
        namespace: "mesh".into(),
        name: cluster.into(),
        cluster: cluster.into(),
        trust_domain: domain.td.clone(),
        cluster_domain: "cluster.local".into(),
        gateway_addresses: vec!["127.0.0.1".into()],
        gateway_port: 4180,
        gateway_identity: gateway_identity(&domain.td, "mesh").unwrap(),
        credentials_secret: format!("{cluster}-credentials"),
        bundle: domain.bundle(),
        bundle_config_map: "mesh-trust-bundle".into(),
        export_selector: Selector::default(),
        probe_period: PERIOD,
        probe_timeout: Duration::from_secs(2),
        probe_failure_threshold: threshold,
    }
}

async fn next(events: &mut mpsc::UnboundedReceiver<ProbeEvent>) -> ProbeEvent {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("a probe in time")
        .expect("the prober runs")
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_gateway_is_alive_then_down_after_the_threshold_then_back() {
    let mut world = World::start().await;
    let metrics = ProberMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (prober, mut events) = world.prober(world.west_gateway(), metrics);
    let handle = prober.probe(&valid_link("east", THRESHOLD));
    let mut health = handle.health.clone();

    // East answers through west's egress port.
    let first = next(&mut events).await;
    let latency = first.outcome.clone().expect("east answers");
    assert!(first.health.alive);
    assert_eq!(first.health.latency, Some(latency));
    assert!(first.health.last_probe.is_some());
    assert_eq!(first.health.last_error, None);
    let published = health
        .wait_for(|h| h.latency.is_some())
        .await
        .unwrap()
        .clone();
    assert!(published.alive);
    let text = encode(&registry);
    assert!(
        text.contains("gateway_alive{target_cluster=\"east\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_probes_total{target_cluster=\"east\",result=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("gateway_probe_latency_ms_count{target_cluster=\"east\"}"),
        "{text}"
    );

    // East's gateway stops: after the last success, exactly THRESHOLD failures in a row, the
    // first THRESHOLD - 1 of them still alive, the last one not.
    let east_quic = world.east_gw.quic;
    let east = std::mem::replace(
        &mut world.east_gw,
        RunningGateway {
            quic: east_quic,
            egress: east_quic,
            stop: oneshot::channel().0,
            task: tokio::spawn(async {}),
        },
    );
    east.stop().await;
    let mut failures = Vec::new();
    let mut last_latency = latency;
    loop {
        let event = next(&mut events).await;
        match &event.outcome {
            Ok(latency) => {
                assert!(event.health.alive);
                last_latency = *latency;
                failures.clear();
            }
            Err(_) => {
                assert_eq!(event.failures_in_a_row as usize, failures.len() + 1);
                failures.push(event.clone());
                if !event.health.alive {
                    break;
                }
            }
        }
    }
    assert_eq!(
        failures.len(),
        THRESHOLD as usize,
        "the gateway went down after {} failures: {failures:?}",
        failures.len()
    );
    assert!(
        failures[..failures.len() - 1]
            .iter()
            .all(|e| e.health.alive)
    );
    let down = failures.last().unwrap();
    assert!(down.health.last_error.is_some());
    assert_eq!(
        down.health.latency,
        Some(last_latency),
        "the last success's round trip is kept"
    );
    health.wait_for(|h| !h.alive).await.unwrap();
    let text = encode(&registry);
    assert!(
        text.contains("gateway_alive{target_cluster=\"east\"} 0"),
        "{text}"
    );

    // East comes back on the same address: one success makes it alive again.
    let mut config = world.east_config.clone();
    config.quic_addr = east_quic;
    world.east_gw = RunningGateway::start(config).await;
    loop {
        let event = next(&mut events).await;
        if event.outcome.is_ok() {
            assert!(event.health.alive, "one success is enough");
            assert_eq!(event.failures_in_a_row, 0);
            assert_eq!(event.health.last_error, None);
            break;
        }
        assert!(!event.health.alive, "down until a success");
    }
    health.wait_for(|h| h.alive).await.unwrap();

    // The Link goes: its series go with its probes.
    drop(handle);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = encode(&registry);
        if !text.contains("target_cluster=\"east\"") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "east's series stayed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.east_gw.stop().await;
    world.west_gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cluster_is_down_with_the_local_gateways_reason() {
    let world = World::start().await;
    let (prober, mut events) = world.prober(world.west_gateway(), ProberMetrics::default());
    let handle = prober.probe(&valid_link("nowhere", 1));
    let event = next(&mut events).await;
    let error = event.outcome.unwrap_err();
    assert!(matches!(error, ProbeError::Unhealthy { .. }), "{error}");
    // The reason is west's gateway's: it has no link to that cluster.
    assert!(error.to_string().contains("nowhere"), "{error}");
    assert!(!event.health.alive, "threshold 1: down at once");
    let health = handle
        .health
        .clone()
        .wait_for(|h| !h.alive)
        .await
        .unwrap()
        .clone();
    assert!(
        health.last_error.as_deref().unwrap().contains("nowhere"),
        "{health:?}"
    );
    assert_eq!(health.latency, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_gateway_identity_fails_the_handshake_and_is_named() {
    let world = World::start().await;
    let impostor = world.west.td.workload("mesh", "not-the-gateway").unwrap();
    let (prober, _events) = world.prober(impostor.clone(), ProberMetrics::default());
    let error = prober
        .probe_once("east", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(error.result(), "handshake", "{error}");
    let text = error.to_string();
    assert!(text.contains(&impostor.to_string()), "{text}");
    assert!(text.contains("mesh-gateway"), "names who answered: {text}");

    // The right identity works through the same gateway.
    let (prober, _events) = world.prober(world.west_gateway(), ProberMetrics::default());
    prober
        .probe_once("east", Duration::from_secs(2))
        .await
        .expect("east answers");

    // Nothing listens: the connection error names the address.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let controller = world.west.td.workload("mesh", "mesh-controller").unwrap();
    let prober = GatewayProber::new(ProberConfig {
        egress: closed,
        gateway_identity: world.west_gateway(),
        certs: Arc::new(
            CertResolver::new(
                world
                    .west
                    .creds_with(&controller, Validity::starting_now(DEFAULT_LEAF_LIFETIME)),
            )
            .unwrap(),
        ),
        bundles: bundles(&[&world.west]),
        metrics: ProberMetrics::default(),
        events: None,
    })
    .unwrap();
    let error = prober
        .probe_once("east", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(error.result(), "connect", "{error}");
    assert!(error.to_string().contains(&closed.to_string()), "{error}");
}
