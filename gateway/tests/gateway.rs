//! Two gateways on loopback, west and east, each with its own trust domain and root.
//!
//! The full path: west's proxy (`connect_tunnelled`) -> west egress -> QUIC -> east ingress ->
//! east's inbound proxy (`serve_inbound`) -> an echo app; east's proxy must see the west
//! caller's identity. Then every refusal a gateway owes: services that are not exported or have
//! no endpoints, unknown clusters, a workload on the QUIC port, another domain's workload and a
//! wrong ALPN on the egress port, broken frames (that cost only their own stream), and a remote
//! gateway restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mesh_test_support::apps::echo_app;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_api::frame;
use mesh_api::ports::{ALPN_GATEWAY, ALPN_OPAQUE, ALPN_TUNNEL};
use mesh_api::tunnel::{
    OpenStatus, Probe, ProbeResponse, StreamHeader, TunnelOpen, TunnelOpenResponse, stream_header,
};
use mesh_gateway::config::Transport;
use mesh_gateway::metrics::GatewayMetrics;
use mesh_gateway::{Gateway, GatewayConfig, Link, Timeouts, gateway_identity};
use mesh_proxy::discovery::{Resolve, StaticDiscovery, TunnelMeta};
use mesh_proxy::drain;
use mesh_proxy::outbound::OutboundTls;
use mesh_proxy::tcp::{EventHook, InboundConfig, InboundEvent, serve_inbound};
use mesh_proxy::transport_header::{Authority, MeshTransportHeader};
use mesh_proxy::tunnel::{Refusal, TunnelError, TunnelErrorKind, TunnelStream, connect_tunnelled};
use mesh_test_support::pki::{Domain, bundles};
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

const ECHO: &str = "echo.default.svc.cluster.local:7000";
const EMPTY: &str = "empty.default.svc.cluster.local:80";
const HIDDEN: &str = "hidden.default.svc.cluster.local:80";
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long a test waits for what it expects; only reached when it fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn test_timeouts() -> Timeouts {
    Timeouts {
        open: TIMEOUT,
        connect: Duration::from_secs(1),
        tunnel_idle: Duration::from_secs(30),
        quic_idle: Duration::from_secs(2),
        drain: Duration::from_millis(200),
    }
}

/// A running gateway and the means to stop it.
struct RunningGateway {
    quic: SocketAddr,
    egress: SocketAddr,
    admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningGateway {
    async fn start(config: GatewayConfig) -> Self {
        let gateway = Gateway::bind(config).await.unwrap();
        let (quic, egress, admin) = (
            gateway.quic_addr(),
            gateway.egress_addr(),
            gateway.admin_addr(),
        );
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        Self {
            quic,
            egress,
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// Tells the gateway to shut down, without waiting.
    fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn stop(mut self) {
        self.signal();
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the gateway stopped in time")
            .unwrap();
    }
}

/// West: a calling proxy and its gateway. East: an echo app behind its inbound proxy, and its
/// gateway exporting the echo service.
struct World {
    west: Domain,
    east: Domain,
    bundles: SharedTrustBundles,
    client: SpiffeId,
    client_tls: OutboundTls,
    app_port: u16,
    west_gw: RunningGateway,
    east_gw: RunningGateway,
    east_config: GatewayConfig,
    links_west: watch::Sender<Vec<Link>>,
    west_metrics: GatewayMetrics,
    east_metrics: GatewayMetrics,
    events: mpsc::UnboundedReceiver<InboundEvent>,
    _inbound_drain: drain::Drain,
    exports: watch::Sender<BTreeSet<String>>,
    _east_links: watch::Sender<Vec<Link>>,
}

fn link(cluster: &str, domain: &Domain, quic: SocketAddr) -> Link {
    Link {
        cluster: cluster.into(),
        trust_domain: domain.td.clone(),
        addresses: vec![quic.ip().to_string()],
        port: quic.port(),
        gateway_identity: gateway_identity(&domain.td, "mesh").unwrap(),
    }
}

fn gateway_creds(domain: &Domain) -> WorkloadCredentials {
    let id = gateway_identity(&domain.td, "mesh").unwrap();
    domain.creds_with(
        &id,
        mesh_trust::ca::Validity::starting_now(mesh_trust::ca::DEFAULT_LEAF_LIFETIME),
    )
}

impl World {
    async fn start() -> Self {
        Self::start_with(test_timeouts()).await
    }

    async fn start_with(timeouts: Timeouts) -> Self {
        Self::start_tuned(timeouts, |_| {}).await
    }

    /// Starts the world with `tune` applied to east's gateway configuration.
    async fn start_tuned(timeouts: Timeouts, tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_full(timeouts, Transport::Quic, tune).await
    }

    /// Starts the world with both gateways on `transport`.
    async fn start_full(
        timeouts: Timeouts,
        transport: Transport,
        tune: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let west = Domain::new("west.local");
        let east = Domain::new("east.local");
        let bundles = bundles(&[&west, &east]);
        let app_port = echo_app().await.port();

        // East's inbound proxy, reporting every connection.
        let inbound_tls = tls::server_config(
            bundles.clone(),
            PeerPolicy::AnyDomain,
            Arc::new(CertResolver::new(east.creds("echo")).unwrap()),
            &[ALPN_OPAQUE],
        )
        .unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut inbound = InboundConfig::new(Arc::new(inbound_tls));
        // A thousand tunnels reach the echo app at once on a small machine: its accept backlog,
        // not the gateways, would otherwise decide the test.
        inbound.app_connect_timeout = PATIENCE;
        inbound.events = Some(EventHook::new(move |event| {
            let _ = events_tx.send(event);
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound_port = listener.local_addr().unwrap().port();
        let (inbound_drain, inbound_watch) = drain::channel();
        tokio::spawn(serve_inbound(listener, inbound, inbound_watch));

        // East's discovery: the echo service's one endpoint, an exported service without
        // endpoints, and a service discovery knows but nobody exported.
        let echo_id = east.id("echo");
        let json = format!(
            r#"{{
              "{ECHO}": {{ "endpoints": [ {{ "addr": "127.0.0.1:7000", "identity": "{echo_id}", "cluster": "east" }} ] }},
              "{EMPTY}": {{ "endpoints": [] }},
              "{HIDDEN}": {{ "endpoints": [ {{ "addr": "127.0.0.1:80", "identity": "{echo_id}", "cluster": "east" }} ] }}
            }}"#
        );
        let discovery: Arc<dyn Resolve> =
            Arc::new(StaticDiscovery::from_json("east.json", &json).unwrap());
        let (exports_tx, exports) =
            watch::channel(BTreeSet::from([ECHO.to_owned(), EMPTY.to_owned()]));

        // West's gateway first (east's link needs its address), with no links yet.
        let (links_west, west_links_rx) = watch::channel(Vec::new());
        let (_unused_exports, west_exports) = watch::channel(BTreeSet::new());
        let west_discovery: Arc<dyn Resolve> =
            Arc::new(StaticDiscovery::from_json("west.json", "{}").unwrap());
        let mut west_config = GatewayConfig::new(
            "west",
            Arc::new(CertResolver::new(gateway_creds(&west)).unwrap()),
            bundles.clone(),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            west_links_rx,
            west_exports,
            west_discovery,
        );
        west_config.timeouts = timeouts;
        west_config.transport = transport;
        west_config.sample_interval = Duration::from_millis(50);
        west_config.admin_addr = Some("127.0.0.1:0".parse().unwrap());
        let west_metrics = west_config.metrics.clone();
        let west_gw = RunningGateway::start(west_config).await;

        let (east_links_tx, east_links) = watch::channel(vec![link("west", &west, west_gw.quic)]);
        let mut east_config = GatewayConfig::new(
            "east",
            Arc::new(CertResolver::new(gateway_creds(&east)).unwrap()),
            bundles.clone(),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            east_links,
            exports,
            discovery,
        );
        east_config.inbound_port = inbound_port;
        east_config.timeouts = timeouts;
        east_config.transport = transport;
        tune(&mut east_config);
        let east_metrics = east_config.metrics.clone();
        let east_gw = RunningGateway::start(east_config.clone()).await;
        links_west.send_replace(vec![link("east", &east, east_gw.quic)]);

        let client_tls = OutboundTls::new(
            bundles.clone(),
            Arc::new(CertResolver::new(west.creds("client")).unwrap()),
        );
        Self {
            client: west.id("client"),
            west,
            east,
            bundles,
            client_tls,
            app_port,
            west_gw,
            east_gw,
            east_config,
            links_west,
            west_metrics,
            east_metrics,
            events,
            _inbound_drain: inbound_drain,
            exports: exports_tx,
            _east_links: east_links_tx,
        }
    }

    fn tunnel(&self, cluster: &str, authority: &str) -> TunnelMeta {
        TunnelMeta {
            cluster: cluster.into(),
            authority: authority.into(),
            gateway: self.west_gw.egress,
            gateway_identity: gateway_identity(&self.west.td, "mesh").unwrap(),
            remote_trust_domain: self.east.td.clone(),
        }
    }

    fn header(&self, authority: &str) -> MeshTransportHeader {
        MeshTransportHeader {
            port: self.app_port,
            authority: Some(Authority::parse(authority).unwrap()),
            protocol: ProtocolHint::Opaque,
        }
    }

    async fn connect(
        &self,
        cluster: &str,
        authority: &str,
    ) -> Result<(TunnelStream, SpiffeId), TunnelError> {
        self.connect_within(cluster, authority, TIMEOUT).await
    }

    async fn connect_within(
        &self,
        cluster: &str,
        authority: &str,
        timeout: Duration,
    ) -> Result<(TunnelStream, SpiffeId), TunnelError> {
        connect_tunnelled(
            &self.client_tls,
            &self.client,
            &self.tunnel(cluster, authority),
            None,
            ALPN_OPAQUE,
            &self.header(authority),
            timeout,
        )
        .await
    }

    async fn refusal(&self, cluster: &str, authority: &str) -> (Refusal, String) {
        let error = self
            .connect(cluster, authority)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(error.nothing_sent(), "{error}");
        match error.kind {
            TunnelErrorKind::Refused { refusal, message } => (refusal, message),
            other => panic!("expected a refusal, got {other}"),
        }
    }

    async fn opened_peer(&mut self) -> SpiffeId {
        loop {
            let event = tokio::time::timeout(PATIENCE, self.events.recv())
                .await
                .expect("no inbound event in time")
                .unwrap();
            if let InboundEvent::Opened { peer, .. } = event {
                return peer;
            }
        }
    }

    /// A TLS client of west's egress port presenting `creds` and offering `alpn`.
    async fn egress_client(
        &self,
        creds: WorkloadCredentials,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = tls::client_config(
            self.bundles.clone(),
            PeerPolicy::Exactly(gateway_identity(&self.west.td, "mesh").unwrap()),
            Some(Arc::new(CertResolver::new(creds).unwrap())),
            &[alpn],
        )
        .unwrap();
        let tcp = TcpStream::connect(self.west_gw.egress).await?;
        let name = ServerName::IpAddress(self.west_gw.egress.ip().into());
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// A QUIC client of east's gateway presenting `creds`.
    async fn quic_client(&self, creds: WorkloadCredentials) -> quinn::Connection {
        let link = link("east", &self.east, self.east_gw.quic);
        let config = mesh_gateway::quic::client_config(
            self.bundles.clone(),
            Arc::new(CertResolver::new(creds).unwrap()),
            &link,
            Duration::from_secs(5),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint
            .connect_with(config, self.east_gw.quic, "127.0.0.1")
            .unwrap()
            .await
            .unwrap()
    }
}

/// Waits until `metrics` show `line`.
async fn shows(metrics: &GatewayMetrics, line: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = metrics.encode();
        if text.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed {line}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `payload` into a tunnel, half-closes, and reads the echo.
async fn echo(stream: &mut TunnelStream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    echoed
}

fn open_header(cluster: &str, authority: &str) -> StreamHeader {
    StreamHeader {
        kind: Some(stream_header::Kind::Open(TunnelOpen {
            target_cluster: cluster.into(),
            authority: authority.into(),
            protocol_hint: ProtocolHint::Opaque.into(),
            caller_identity: String::new(),
        })),
    }
}

#[tokio::test]
async fn a_tunnel_crosses_both_gateways_and_the_destination_sees_the_west_caller() {
    let mut world = World::start().await;
    let (mut stream, endpoint) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(endpoint, world.east.id("echo"));
    assert_eq!(world.opened_peer().await, world.client);
    let payload = vec![7u8; 256 * 1024];
    assert_eq!(echo(&mut stream, &payload).await, payload);

    // A second tunnel reuses the warm link.
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"again").await, b"again");

    let (west, east) = (&world.west_metrics, &world.east_metrics);
    shows(
        west,
        r#"gateway_streams_total{remote_cluster="east",direction="egress",status="ok"} 2"#,
    )
    .await;
    shows(
        east,
        r#"gateway_streams_total{remote_cluster="west",direction="ingress",status="ok"} 2"#,
    )
    .await;
    shows(
        west,
        r#"gateway_open_streams{remote_cluster="east",direction="egress"} 0"#,
    )
    .await;
    shows(
        east,
        r#"gateway_open_streams{remote_cluster="west",direction="ingress"} 0"#,
    )
    .await;
    shows(west, r#"gateway_link_connected{remote_cluster="east"} 1"#).await;
    shows(west, "gateway_quic_rtt_ms{remote_cluster=\"east\"}").await;
    // Loopback loses nothing; the counter is sampled from quinn's path stats all the same.
    shows(
        west,
        r#"gateway_quic_lost_packets_total{remote_cluster="east"} 0"#,
    )
    .await;
    shows(west, "gateway_handshake_latency_ms_count 1").await;
    // The payload went out and came back, each way more than its own size (TLS records).
    let text = west.encode();
    let bytes = |flow: &str| -> u64 {
        let prefix = format!(
            "gateway_bytes_total{{remote_cluster=\"east\",direction=\"egress\",flow=\"{flow}\"}} "
        );
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line[prefix.len()..].parse().unwrap()
    };
    assert!(bytes("to_remote") > 256 * 1024, "{text}");
    assert!(bytes("from_remote") > 256 * 1024, "{text}");
}

#[tokio::test]
async fn services_that_are_not_exported_or_have_no_endpoints_are_refused() {
    let world = World::start().await;
    let (refusal, message) = world.refusal("east", HIDDEN).await;
    assert_eq!(refusal, Refusal::NotExported, "{message}");
    let (refusal, message) = world
        .refusal("east", "nobody.default.svc.cluster.local:80")
        .await;
    assert_eq!(refusal, Refusal::NotExported, "{message}");
    let (refusal, message) = world.refusal("east", EMPTY).await;
    assert_eq!(refusal, Refusal::NoEndpoints, "{message}");
    shows(
        &world.east_metrics,
        r#"gateway_streams_total{remote_cluster="west",direction="ingress",status="not_exported"} 2"#,
    )
    .await;
    // The link still works afterwards.
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"ok").await, b"ok");
}

#[tokio::test]
async fn an_unknown_cluster_is_unreachable() {
    let world = World::start().await;
    let (refusal, message) = world.refusal("south", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable);
    assert!(message.contains("south"), "{message}");
    // The name came from the network: it never becomes a label.
    shows(
        &world.west_metrics,
        r#"gateway_streams_total{remote_cluster="unknown",direction="egress",status="unreachable"} 1"#,
    )
    .await;
    assert!(!world.west_metrics.encode().contains("south"));
}

#[tokio::test]
async fn a_removed_link_makes_its_cluster_unknown() {
    let world = World::start().await;
    world.links_west.send_replace(Vec::new());
    let (refusal, _) = world.refusal("east", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable);
}

#[tokio::test]
async fn the_quic_port_refuses_workloads_and_unlinked_gateways() {
    let world = World::start().await;
    // A workload of a linked domain is not its gateway.
    let conn = world.quic_client(world.west.creds("client")).await;
    let closed = tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == mesh_gateway::quic::code::FORBIDDEN),
        "{closed:?}"
    );
    // East's own gateway identity is not a linked cluster's.
    let conn = world.quic_client(gateway_creds(&world.east)).await;
    let closed = tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == mesh_gateway::quic::code::FORBIDDEN),
        "{closed:?}"
    );
}

#[tokio::test]
async fn the_quic_port_requires_alpn_mesh_gw() {
    let world = World::start().await;
    let tls = tls::client_config(
        world.bundles.clone(),
        PeerPolicy::Exactly(gateway_identity(&world.east.td, "mesh").unwrap()),
        Some(Arc::new(
            CertResolver::new(gateway_creds(&world.west)).unwrap(),
        )),
        &[ALPN_OPAQUE],
    )
    .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            world.east_gw.quic,
            "127.0.0.1",
        )
        .unwrap();
    let result = tokio::time::timeout(PATIENCE, connecting).await.unwrap();
    // The handshake fails (no common protocol); were it to succeed, the gateway closes it.
    if let Ok(conn) = result {
        assert_ne!(
            conn.handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol)
                .as_deref(),
            Some(ALPN_GATEWAY)
        );
        let closed = tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap();
        assert!(
            matches!(&closed, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == mesh_gateway::quic::code::FORBIDDEN),
            "{closed:?}"
        );
    }
}

#[tokio::test]
async fn the_egress_port_refuses_other_domains_and_other_protocols() {
    let world = World::start().await;
    // East's workload trusts west's gateway, but the gateway serves only west's workloads.
    let refused = async {
        let mut stream = world
            .egress_client(world.east.creds("client"), ALPN_TUNNEL)
            .await?;
        frame::write_frame(&mut stream, &open_header("east", ECHO), 4096)
            .await
            .map_err(std::io::Error::other)?;
        frame::read_frame::<TunnelOpenResponse, _>(&mut stream, 4096)
            .await
            .map_err(std::io::Error::other)
    };
    let answer = tokio::time::timeout(PATIENCE, refused).await.unwrap();
    assert!(!matches!(answer, Ok(Some(_))), "{answer:?}");

    // A west workload offering another protocol.
    let answer = world
        .egress_client(world.west.creds("client"), ALPN_OPAQUE)
        .await;
    if let Ok(mut stream) = answer {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .unwrap();
        assert!(!matches!(read, Ok(1)), "{read:?}");
    }
}

#[tokio::test]
async fn broken_frames_cost_only_their_own_stream() {
    let world = World::start().await;
    let (mut tunnel, _) = world.connect("east", ECHO).await.unwrap();

    // Egress: an oversized length prefix, then garbage.
    for bad in [
        vec![0xff, 0xff, 0xff, 0x7f],
        vec![0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut stream = world
            .egress_client(world.west.creds("client"), ALPN_TUNNEL)
            .await
            .unwrap();
        stream.write_all(&bad).await.unwrap();
        stream.flush().await.unwrap();
        let answer = tokio::time::timeout(
            PATIENCE,
            frame::read_frame::<TunnelOpenResponse, _>(&mut stream, 4096),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(
            answer.status,
            i32::from(OpenStatus::BadRequest),
            "{answer:?}"
        );
    }

    // Ingress, as west's gateway: a garbage stream and a truncated one (ten bytes announced,
    // three sent, then the end), then a probe on the same connection.
    let conn = world.quic_client(gateway_creds(&world.west)).await;
    for bad in [&[0x03, 0xff, 0xff, 0xff][..], &[0x0a, 0x0a, 0x04, 0x65][..]] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bad).await.unwrap();
        send.finish().unwrap();
        let answer = tokio::time::timeout(
            PATIENCE,
            frame::read_frame::<TunnelOpenResponse, _>(&mut recv, 4096),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(
            answer.status,
            i32::from(OpenStatus::BadRequest),
            "{answer:?}"
        );
    }

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let probe = StreamHeader {
        kind: Some(stream_header::Kind::Probe(Probe {
            nonce: 42,
            sent_at_unix_micros: 1,
            target_cluster: String::new(),
        })),
    };
    frame::write_frame(&mut send, &probe, 4096).await.unwrap();
    let response = tokio::time::timeout(
        PATIENCE,
        frame::read_frame::<ProbeResponse, _>(&mut recv, 4096),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(response.nonce, 42);
    assert_eq!(response.cluster, "east");
    assert!(response.healthy);
    assert_eq!(response.exported_services, 2);

    // The tunnel opened before all this still carries bytes.
    assert_eq!(echo(&mut tunnel, b"still here").await, b"still here");
}

#[tokio::test]
async fn tunnels_work_again_after_the_remote_gateway_restarts() {
    let mut world = World::start().await;
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"before").await, b"before");

    let quic = world.east_gw.quic;
    let east = std::mem::replace(
        &mut world.east_gw,
        RunningGateway {
            quic,
            egress: quic,
            admin: None,
            stop: None,
            task: tokio::spawn(async {}),
        },
    );
    east.stop().await;
    let mut config = world.east_config.clone();
    config.quic_addr = quic;
    world.east_gw = RunningGateway::start(config).await;

    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut stream = loop {
        match world.connect("east", ECHO).await {
            Ok((stream, _)) => break stream,
            Err(error) => {
                errors += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still failing: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(echo(&mut stream, b"after").await, b"after");
    assert!(
        errors <= 5,
        "{errors} failed tunnels before the link came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_tunnels_complete_and_leave_nothing_open() {
    const TUNNELS: usize = 1000;
    // Two TLS handshakes per tunnel on each side, a thousand at once, on a small debug build:
    // the deadlines are for hangs, not for speed.
    let patient = Duration::from_secs(60);
    let world = Arc::new(
        World::start_with(Timeouts {
            open: patient,
            connect: patient,
            quic_idle: patient,
            ..test_timeouts()
        })
        .await,
    );
    // What the running pair (and this test) hold before the tunnels: tasks and file descriptors.
    let alive_tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let open_fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    let (tasks_before, fds_before) = (alive_tasks(), open_fds());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TUNNELS {
        let world = world.clone();
        tasks.spawn(async move {
            let payload = format!("tunnel {i}").into_bytes();
            let (mut stream, _) = world.connect_within("east", ECHO, patient).await?;
            let echoed = echo(&mut stream, &payload).await;
            assert_eq!(echoed, payload);
            Ok::<_, TunnelError>(())
        });
    }
    let mut failed = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(error) = result.unwrap() {
            failed.push(error.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let ok = format!(
        r#"gateway_streams_total{{remote_cluster="east",direction="egress",status="ok"}} {TUNNELS}"#
    );
    shows(&world.west_metrics, &ok).await;
    shows(
        &world.west_metrics,
        r#"gateway_open_streams{remote_cluster="east",direction="egress"} 0"#,
    )
    .await;
    shows(
        &world.east_metrics,
        r#"gateway_open_streams{remote_cluster="west",direction="ingress"} 0"#,
    )
    .await;
    // Nothing is left behind: the tunnels' tasks and sockets are gone once they have closed.
    // Tasks are this test's runtime's own, with slack for the warm links: under this load the
    // pair opens up to its per-peer limit of QUIC connections, each with its own tasks on both
    // sides, and keeps them;
    // file descriptors are the whole process's, shared with tests running alongside, hence the
    // wider slack, still far below the thousands a leak of these tunnels would leave.
    let settled =
        |(tasks, fds): (usize, usize)| tasks <= tasks_before + 32 && fds <= fds_before + 200;
    let mut left = (alive_tasks(), open_fds());
    for _ in 0..100 {
        if settled(left) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = (alive_tasks(), open_fds());
    }
    assert!(
        settled(left),
        "tasks {tasks_before} -> {}, file descriptors {fds_before} -> {}",
        left.0,
        left.1
    );
}

#[tokio::test]
async fn a_connection_carries_at_most_its_stream_limit() {
    let world = World::start_tuned(
        Timeouts {
            open: Duration::from_millis(500),
            ..test_timeouts()
        },
        |east| east.max_streams_per_connection = 1,
    )
    .await;
    let (mut first, _) = world.connect("east", ECHO).await.unwrap();
    // The one stream east grants is taken: the next tunnel waits for it, then gives up.
    let (refusal, message) = world.refusal("east", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable, "{message}");
    assert_eq!(echo(&mut first, b"first").await, b"first");
    drop(first);
    // The stream is back once the first tunnel is over.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut next = loop {
        match world.connect("east", ECHO).await {
            Ok((stream, _)) => break stream,
            Err(error) => {
                assert!(tokio::time::Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(echo(&mut next, b"next").await, b"next");
}

#[tokio::test]
async fn shutdown_refuses_new_tunnels_and_lets_open_ones_finish() {
    let mut world = World::start_tuned(
        Timeouts {
            open: Duration::from_millis(500),
            drain: PATIENCE,
            ..test_timeouts()
        },
        |_| {},
    )
    .await;
    let (mut open, _) = world.connect("east", ECHO).await.unwrap();
    // Another connection of a linked gateway, idle: shutdown closes it with the shutdown code.
    let idle = world.quic_client(gateway_creds(&world.west)).await;
    world.east_gw.signal();
    // Give the drain signal time to reach the accept loops.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (refusal, message) = world.refusal("east", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable, "{message}");
    assert!(!world.east_gw.task.is_finished());
    // The tunnel opened before the shutdown still works, and its end lets the gateway stop
    // well before the drain deadline.
    assert_eq!(echo(&mut open, b"finishing").await, b"finishing");
    drop(open);
    tokio::time::timeout(PATIENCE / 2, &mut world.east_gw.task)
        .await
        .expect("the gateway stopped once its last tunnel ended")
        .unwrap();
    let closed = tokio::time::timeout(PATIENCE, idle.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == mesh_gateway::quic::code::SHUTDOWN),
        "{closed:?}"
    );
}

#[tokio::test]
async fn link_addresses_are_resolved_and_tried_in_turn() {
    let world = World::start().await;
    let mut east = link("east", &world.east, world.east_gw.quic);
    // A name that never resolves, then a host name for the gateway's address.
    east.addresses = vec!["gateway.invalid".into(), "localhost".into()];
    world.links_west.send_replace(vec![east]);
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"by name").await, b"by name");
    shows(
        &world.west_metrics,
        r#"gateway_connect_errors_total{reason="resolve"} 1"#,
    )
    .await;
    // A changed link drops its connection; the next one resolves the names again rather than
    // reusing an old answer (the unresolvable name fails a second time).
    let mut east = link("east", &world.east, world.east_gw.quic);
    east.addresses = vec![
        "gateway.invalid".into(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    world.links_west.send_replace(vec![east]);
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"again").await, b"again");
    shows(
        &world.west_metrics,
        r#"gateway_connect_errors_total{reason="resolve"} 2"#,
    )
    .await;
}

/// A GET on an admin server: the status line and the body.
async fn admin_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, conn.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn the_admin_server_shows_metrics_readiness_and_links() {
    let world = World::start().await;
    let admin = world.west_gw.admin.unwrap();
    let (status, body) = admin_get(admin, "/links").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        body,
        "east disconnected open_streams=0 bytes_to_remote=0 bytes_from_remote=0\n"
    );

    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"hello").await, b"hello");
    let (_, body) = admin_get(admin, "/links").await;
    let expected = format!("east connected remote={} rtt_ms=", world.east_gw.quic);
    assert!(body.starts_with(&expected), "{body}");
    // Once the tunnel is over, its bytes count for the link.
    drop(stream);
    let mut carried = false;
    for _ in 0..100 {
        let (_, body) = admin_get(admin, "/links").await;
        if body.contains(" open_streams=0 ") && !body.contains("bytes_to_remote=0 ") {
            carried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        carried,
        "the finished tunnel's bytes never showed on /links"
    );

    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains(
            "gateway_streams_total{remote_cluster=\"east\",direction=\"egress\",status=\"ok\"} 1"
        ),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(admin_get(admin, "/ready").await.0, "HTTP/1.1 200 OK");
    assert_eq!(admin_get(admin, "/live").await.0, "HTTP/1.1 200 OK");
    assert_eq!(
        admin_get(admin, "/nothing").await.0,
        "HTTP/1.1 404 Not Found"
    );
}

/// A QUIC handshake with east's gateway as `creds`, trusting `bundles`.
async fn quic_handshake(
    world: &World,
    bundles: SharedTrustBundles,
    creds: WorkloadCredentials,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let link = link("east", &world.east, world.east_gw.quic);
    let config = mesh_gateway::quic::client_config(
        bundles,
        Arc::new(CertResolver::new(creds).unwrap()),
        &link,
        Duration::from_secs(5),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(config, world.east_gw.quic, "127.0.0.1")
        .unwrap();
    tokio::time::timeout(PATIENCE, connecting).await.unwrap()
}

#[tokio::test]
async fn a_gateway_of_an_unlinked_trust_domain_is_refused_in_the_handshake() {
    let world = World::start().await;
    // South has its own root, which east does not trust.
    let south = Domain::new("south.local");
    let trusting_all = bundles(&[&world.west, &world.east, &south]);
    let result = quic_handshake(&world, trusting_all, gateway_creds(&south)).await;
    match result {
        Err(_) => {}
        // TLS 1.3: the client may finish before the server rejects its certificate.
        Ok(conn) => {
            let closed = tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap();
            assert!(
                !matches!(closed, quinn::ConnectionError::LocallyClosed),
                "{closed:?}"
            );
            assert!(conn.open_bi().await.is_err());
        }
    }

    // West's bundle dropped from east's trust, live: west's gateway is refused from then on.
    world.east_config.bundles.update(world.east.bundle());
    let result = quic_handshake(&world, world.bundles.clone(), gateway_creds(&world.west)).await;
    if let Ok(conn) = result {
        let closed = tokio::time::timeout(PATIENCE, conn.closed()).await.unwrap();
        assert!(
            !matches!(closed, quinn::ConnectionError::LocallyClosed),
            "{closed:?}"
        );
    }
}

#[tokio::test]
async fn exports_change_live() {
    let world = World::start().await;
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"exported").await, b"exported");
    world
        .exports
        .send_replace(BTreeSet::from([EMPTY.to_owned()]));
    let (refusal, message) = world.refusal("east", ECHO).await;
    assert_eq!(refusal, Refusal::NotExported, "{message}");
    world
        .exports
        .send_replace(BTreeSet::from([ECHO.to_owned()]));
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"again").await, b"again");
}

/// Random bytes as the first frame, on both ports: every stream ends (answered or closed) and
/// the gateways keep serving.
#[tokio::test]
async fn random_first_frames_end_their_own_stream_only() {
    use rand::{Rng, SeedableRng};
    let world = World::start().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d65_7368);
    let (mut tunnel, _) = world.connect("east", ECHO).await.unwrap();
    let conn = world.quic_client(gateway_creds(&world.west)).await;

    let mut inputs = Vec::new();
    for _ in 0..64 {
        let len = rng.random_range(0..64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half of them start with a plausible small length prefix.
        if rng.random_bool(0.5) && !bytes.is_empty() {
            bytes[0] = rng.random_range(0..64);
        }
        inputs.push(bytes);
    }
    let ingress = inputs.iter().map(|bytes| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let _ = send.write_all(bytes).await;
            let _ = send.finish();
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, AsyncReadExt::read_to_end(&mut recv, &mut sink))
                .await
                .expect("an ingress stream was left hanging");
        }
    });
    futures_util::future::join_all(ingress).await;

    let egress = inputs.iter().map(|bytes| {
        let world = &world;
        async move {
            let mut stream = world
                .egress_client(world.west.creds("client"), ALPN_TUNNEL)
                .await
                .unwrap();
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink))
                .await
                .expect("an egress connection was left hanging");
        }
    });
    futures_util::future::join_all(egress).await;

    assert_eq!(echo(&mut tunnel, b"unharmed").await, b"unharmed");
    let (mut fresh, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut fresh, b"fresh").await, b"fresh");
}

#[tokio::test]
async fn a_linked_gateway_holds_at_most_its_connection_limit() {
    let world = World::start_tuned(test_timeouts(), |east| east.max_connections_per_peer = 1).await;
    // West's link is the one connection west's gateway may hold.
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    let extra = world.quic_client(gateway_creds(&world.west)).await;
    let closed = tokio::time::timeout(PATIENCE, extra.closed())
        .await
        .unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(close) if close.error_code == mesh_gateway::quic::code::TOO_MANY_CONNECTIONS),
        "{closed:?}"
    );
    // The link itself is unharmed.
    assert_eq!(echo(&mut stream, b"still linked").await, b"still linked");
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"and again").await, b"and again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_carries_the_same_tunnels_with_the_same_checks() {
    let mut world = World::start_full(test_timeouts(), Transport::Tcp, |_| {}).await;
    let (mut stream, endpoint) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(endpoint, world.east.id("echo"));
    assert_eq!(world.opened_peer().await, world.client);
    let payload = vec![3u8; 128 * 1024];
    assert_eq!(echo(&mut stream, &payload).await, payload);

    let (refusal, message) = world.refusal("east", HIDDEN).await;
    assert_eq!(refusal, Refusal::NotExported, "{message}");
    let (refusal, message) = world.refusal("south", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable, "{message}");

    // Many at once, each on its own connection.
    let world = Arc::new(world);
    let tunnels = (0..100).map(|i| {
        let world = world.clone();
        async move {
            let payload = format!("tcp tunnel {i}").into_bytes();
            let (mut stream, _) = world.connect_within("east", ECHO, PATIENCE).await.unwrap();
            assert_eq!(echo(&mut stream, &payload).await, payload);
        }
    });
    futures_util::future::join_all(tunnels).await;
    shows(
        &world.west_metrics,
        r#"gateway_streams_total{remote_cluster="east",direction="egress",status="ok"} 101"#,
    )
    .await;

    // A workload on the link port: TLS may complete, but no answer ever comes.
    let config = tls::client_config(
        world.bundles.clone(),
        PeerPolicy::Exactly(gateway_identity(&world.east.td, "mesh").unwrap()),
        Some(Arc::new(
            CertResolver::new(world.west.creds("client")).unwrap(),
        )),
        &[ALPN_GATEWAY],
    )
    .unwrap();
    let answer = async {
        let tcp = TcpStream::connect(world.east_gw.quic).await?;
        let name = ServerName::IpAddress(world.east_gw.quic.ip().into());
        let mut stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        frame::write_frame(&mut stream, &open_header("east", ECHO), 4096)
            .await
            .map_err(std::io::Error::other)?;
        frame::read_frame::<TunnelOpenResponse, _>(&mut stream, 4096)
            .await
            .map_err(std::io::Error::other)
    };
    let answer = tokio::time::timeout(PATIENCE, answer).await.unwrap();
    assert!(!matches!(answer, Ok(Some(_))), "{answer:?}");
}

#[tokio::test]
async fn tunnels_still_open_at_the_drain_deadline_are_cut_in_both_modes() {
    for transport in [Transport::Quic, Transport::Tcp] {
        let mut world = World::start_full(
            Timeouts {
                drain: Duration::from_millis(200),
                ..test_timeouts()
            },
            transport,
            |_| {},
        )
        .await;
        let (mut open, _) = world.connect("east", ECHO).await.unwrap();
        open.write_all(b"never finished").await.unwrap();
        open.flush().await.unwrap();
        world.east_gw.signal();
        // The tunnel never ends by itself; the deadline ends it, and the gateway with it.
        tokio::time::timeout(PATIENCE, &mut world.east_gw.task)
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: the gateway outlived its drain deadline"))
            .unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, open.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "{transport:?}: the cut tunnel was left hanging"
        );
    }
}

/// One cluster cannot starve another at a gateway they share: east grants each linked gateway
/// its own streams (per connection) and connections (per peer), so west holding every stream it
/// may have, each kept full by flow control, leaves north's tunnels untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_cluster_cannot_starve_another_of_streams_or_bandwidth() {
    const WEST_STREAMS: u32 = 4;
    let world = World::start_tuned(
        Timeouts {
            open: Duration::from_millis(500),
            ..test_timeouts()
        },
        |east| {
            east.max_streams_per_connection = WEST_STREAMS;
            east.max_connections_per_peer = 1;
        },
    )
    .await;

    // North: a third cluster with its own root, linked with east.
    let north = Domain::new("north.local");
    let mut trusted = world.west.bundle();
    trusted.merge(&world.east.bundle());
    trusted.merge(&north.bundle());
    world.bundles.update(trusted);
    let (_north_links, north_links) =
        watch::channel(vec![link("east", &world.east, world.east_gw.quic)]);
    let (_north_exports, north_exports) = watch::channel(BTreeSet::new());
    let mut north_config = GatewayConfig::new(
        "north",
        Arc::new(CertResolver::new(gateway_creds(&north)).unwrap()),
        world.bundles.clone(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        north_links,
        north_exports,
        Arc::new(StaticDiscovery::from_json("north.json", "{}").unwrap()),
    );
    north_config.timeouts = test_timeouts();
    let north_gw = RunningGateway::start(north_config).await;
    world._east_links.send_replace(vec![
        link("west", &world.west, world.west_gw.quic),
        link("north", &north, north_gw.quic),
    ]);

    // West takes every stream east grants it and floods each one: the echoes are never read,
    // so the app, the tunnels and the QUIC flow-control windows all fill up and stay full.
    let mut floods = Vec::new();
    for _ in 0..WEST_STREAMS {
        let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
        floods.push(tokio::spawn(async move {
            let chunk = vec![0x77u8; 64 * 1024];
            while stream.write_all(&chunk).await.is_ok() {}
        }));
    }
    // West is at its limit: one more of its tunnels waits for a stream, then gives up.
    let (refusal, message) = world.refusal("east", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable, "{message}");

    // North's tunnels open and carry data meanwhile, each to the end.
    let north_client = north.id("client");
    let north_tls = OutboundTls::new(
        world.bundles.clone(),
        Arc::new(CertResolver::new(north.creds("client")).unwrap()),
    );
    let north_tunnel = TunnelMeta {
        cluster: "east".into(),
        authority: ECHO.into(),
        gateway: north_gw.egress,
        gateway_identity: gateway_identity(&north.td, "mesh").unwrap(),
        remote_trust_domain: world.east.td.clone(),
    };
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..WEST_STREAMS + 2 {
        let (mut stream, endpoint) = connect_tunnelled(
            &north_tls,
            &north_client,
            &north_tunnel,
            None,
            ALPN_OPAQUE,
            &world.header(ECHO),
            TIMEOUT,
        )
        .await
        .expect("north's tunnel opens while west holds all of its streams");
        assert_eq!(endpoint, world.east.id("echo"));
        assert_eq!(echo(&mut stream, &payload).await, payload);
    }
    // West's floods are still stuck behind their own windows, not finished or failed.
    assert!(floods.iter().all(|flood| !flood.is_finished()));
    for flood in floods {
        flood.abort();
    }
}

/// On the egress side clusters are independent too: a tunnel to a linked cluster whose gateway
/// never answers waits for its own handshake, while tunnels to a live cluster go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cluster_does_not_hold_up_tunnels_to_a_live_one() {
    let world = World::start_with(Timeouts {
        connect: Duration::from_secs(5),
        ..test_timeouts()
    })
    .await;
    // South's gateway address takes packets and never answers.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let south = Domain::new("south.local");
    world.links_west.send_replace(vec![
        link("east", &world.east, world.east_gw.quic),
        link("south", &south, black_hole.local_addr().unwrap()),
    ]);
    let south_tunnel = TunnelMeta {
        remote_trust_domain: south.td.clone(),
        ..world.tunnel("south", ECHO)
    };
    let header = world.header(ECHO);
    let stuck = connect_tunnelled(
        &world.client_tls,
        &world.client,
        &south_tunnel,
        None,
        ALPN_OPAQUE,
        &header,
        PATIENCE,
    );
    tokio::pin!(stuck);
    let live = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for round in 0..3 {
            let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
            assert_eq!(echo(&mut stream, b"live").await, b"live", "round {round}");
        }
    };
    tokio::select! {
        biased;
        result = &mut stuck => panic!(
            "south's tunnel ended before east's went through: {:?}",
            result.map(|_| ()).map_err(|e| e.to_string())
        ),
        () = live => {}
    }
    let error = stuck.await.map(|_| ()).unwrap_err();
    assert!(
        matches!(
            error.kind,
            TunnelErrorKind::Refused {
                refusal: Refusal::Unreachable,
                ..
            }
        ),
        "{error}"
    );
}

/// Sends a probe for `cluster` to west's egress port as a west workload; the answer.
async fn probe_through_egress(world: &World, cluster: &str, nonce: u64) -> ProbeResponse {
    let mut stream = world
        .egress_client(world.west.creds("controller"), ALPN_TUNNEL)
        .await
        .unwrap();
    let probe = StreamHeader {
        kind: Some(stream_header::Kind::Probe(Probe {
            nonce,
            sent_at_unix_micros: 5,
            target_cluster: cluster.into(),
        })),
    };
    frame::write_frame(&mut stream, &probe, 4096).await.unwrap();
    tokio::time::timeout(
        PATIENCE,
        frame::read_frame::<ProbeResponse, _>(&mut stream, 4096),
    )
    .await
    .unwrap()
    .unwrap()
    .expect("an answer")
}

/// A local workload (the controller) probes a linked cluster's gateway through its own gateway:
/// the probe crosses the link and the remote gateway's answer comes back; a cluster that cannot
/// be reached is answered by the local gateway, unhealthy, with the reason.
#[tokio::test]
async fn probes_through_the_egress_port_cross_the_link() {
    let world = World::start().await;
    // A tunnel first, so that east's ingress watches the echo service's endpoints.
    let (mut stream, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut stream, b"warm").await, b"warm");
    let answer = probe_through_egress(&world, "east", 99).await;
    assert_eq!(answer.nonce, 99);
    assert_eq!(answer.sent_at_unix_micros, 5);
    assert_eq!(answer.cluster, "east");
    assert!(answer.healthy, "{answer:?}");
    assert!(answer.error.is_empty(), "{answer:?}");
    // East exports two services; the one it watches, echo, has one ready endpoint.
    assert_eq!(answer.exported_services, 2);
    assert_eq!(answer.ready_endpoints, 1);

    let unknown = probe_through_egress(&world, "nowhere", 7).await;
    assert_eq!(unknown.nonce, 7);
    assert_eq!(unknown.cluster, "nowhere");
    assert!(!unknown.healthy);
    assert!(unknown.error.contains("nowhere"), "{unknown:?}");

    // East's gateway gone: the probe fails at west, which says so.
    let mut world = world;
    world.east_gw.signal();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = probe_through_egress(&world, "east", 8).await;
        if !answer.healthy {
            assert!(!answer.error.is_empty(), "{answer:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "east still answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// As a client, a gateway requires exactly the remote identity its Link names: a remote that
/// presents another identity of the same domain is refused, and the failure is counted.
#[tokio::test]
async fn a_link_requires_the_gateway_identity_it_names() {
    let world = World::start().await;
    let mut east = link("east", &world.east, world.east_gw.quic);
    east.gateway_identity = world.east.td.workload("other", "mesh-gateway").unwrap();
    world.links_west.send_replace(vec![east]);
    let (refusal, message) = world.refusal("east", ECHO).await;
    assert_eq!(refusal, Refusal::Unreachable, "{message}");
    shows(
        &world.west_metrics,
        r#"gateway_connect_errors_total{reason="handshake"} 1"#,
    )
    .await;
}

/// An idle tunnel is closed after the tunnel idle timeout; an idle link stays warm through
/// keep-alives beyond the QUIC idle timeout, so the next tunnel needs no new handshake.
#[tokio::test]
async fn idle_tunnels_close_and_idle_links_stay_warm() {
    let world = World::start_with(Timeouts {
        tunnel_idle: Duration::from_millis(300),
        quic_idle: Duration::from_millis(600),
        ..test_timeouts()
    })
    .await;
    let (mut idle, _) = world.connect("east", ECHO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The idle tunnel was closed: reading ends (EOF or an error), nothing is echoed.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, idle.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // More than twice the QUIC idle timeout later, the link still holds its one connection.
    let (mut fresh, _) = world.connect("east", ECHO).await.unwrap();
    assert_eq!(echo(&mut fresh, b"warm").await, b"warm");
    shows(&world.west_metrics, "gateway_handshake_latency_ms_count 1").await;
}
