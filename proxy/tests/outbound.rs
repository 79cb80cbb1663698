//! Two proxies on loopback: an explicit outbound listener finds the service through discovery,
//! balances over its endpoints, skips a dead one, and reaches the app through the meshed hop.
#![allow(clippy::unwrap_used)]

#[path = "support/mesh_pki.rs"]
mod pki;
#[path = "support/tunnel_gateway.rs"]
mod tunnel_gateway;

use mesh_test_support::apps::echo_app;
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::discovery::{StaticDiscovery, Target};
use mesh_proxy::drain;
use mesh_proxy::metrics::{MetricsConfig, ProxyMetrics};
use mesh_proxy::outbound::{
    OutboundConfig, OutboundContext, OutboundTls, ServiceBalancer, serve_mapped,
};
use mesh_proxy::tap::Tap;
use mesh_proxy::tcp::{EventHook, InboundConfig, InboundEvent, serve_inbound};
use mesh_trust::tls::CertResolver;
use pki::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tunnel_gateway::{Answer, TunnelGateway};

const SERVICE: &str = "echo.default.svc.cluster.local:7000";

/// East's echo app behind its inbound proxy, and what a west client needs to reach it.
struct Clusters {
    west: Domain,
    east: Domain,
    bundles: mesh_trust::SharedTrustBundles,
    app_port: u16,
    inbound_port: u16,
    inbound_drain: drain::Drain,
    inbound_task: tokio::task::JoinHandle<()>,
}

impl Clusters {
    /// `events`, when given, is told about every inbound connection.
    async fn start(events: Option<EventHook>) -> Self {
        let west = Domain::new("west");
        let east = Domain::new("east");
        let bundles = pki::bundles(&[&west, &east]);
        let app_port = echo_app().await.port();
        let mut inbound = InboundConfig::new(pki::inbound_tls(&bundles, east.creds("echo")));
        inbound.events = events;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound_port = listener.local_addr().unwrap().port();
        let (inbound_drain, watch) = drain::channel();
        let inbound_task = tokio::spawn(serve_inbound(listener, inbound, watch));
        Self {
            west,
            east,
            bundles,
            app_port,
            inbound_port,
            inbound_drain,
            inbound_task,
        }
    }

    /// The west proxy's client TLS, as workload `client`.
    fn west_tls(&self) -> OutboundTls {
        OutboundTls::new(
            self.bundles.clone(),
            Arc::new(CertResolver::new(self.west.creds("client")).unwrap()),
        )
    }

    async fn stop(self) {
        self.inbound_drain.drain().await;
        self.inbound_task.await.unwrap();
    }
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn explicit_listener_reaches_the_app_through_the_mesh_and_skips_a_dead_endpoint() {
    // East: the app and its inbound proxy, which reports the identity of each caller.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let clusters = Clusters::start(Some(EventHook::new(move |event| {
        let _ = events_tx.send(event);
    })))
    .await;
    let (east, app_port, inbound_port) = (&clusters.east, clusters.app_port, clusters.inbound_port);

    // Discovery: one live meshed endpoint and one dead plain-text one.
    let dead = dead_port().await;
    let discovery = StaticDiscovery::from_json(
        "test.json",
        &format!(
            r#"{{ "{SERVICE}": {{ "endpoints": [
                {{ "addr": "127.0.0.1:{app_port}", "identity": "{}" }},
                {{ "addr": "127.0.0.1:{dead}" }}
            ] }} }}"#,
            east.id("echo")
        ),
    )
    .unwrap();

    // West: the outbound proxy's explicit listener for the service.
    let config = OutboundConfig {
        inbound_port,
        connect_timeout: Duration::from_millis(500),
        ..OutboundConfig::default()
    };
    let tls = Arc::new(clusters.west_tls());
    let ctx = Arc::new(OutboundContext::new(
        Arc::new(discovery),
        tls,
        config,
        ProxyMetrics::new(MetricsConfig::default()),
        Tap::default(),
    ));
    let outbound_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = outbound_listener.local_addr().unwrap();
    let (outbound_drain, outbound_watch) = drain::channel();
    let outbound_task = tokio::spawn(serve_mapped(
        outbound_listener,
        Target::parse(SERVICE).unwrap(),
        ctx,
        outbound_watch,
    ));

    // Every connection succeeds: a pick of the dead endpoint fails to connect and the next pick
    // is tried, until the dead one is ejected and no longer picked at all.
    for i in 0..20u32 {
        let mut app = TcpStream::connect(outbound).await.unwrap();
        let message = format!("hello {i}");
        app.write_all(message.as_bytes()).await.unwrap();
        app.shutdown().await.unwrap();
        let mut echoed = String::new();
        app.read_to_string(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }

    // The inbound side saw the caller's SPIFFE identity, and the header's app port.
    let mut opened = 0;
    while let Ok(event) = events.try_recv() {
        if let InboundEvent::Opened { peer, header, .. } = event {
            assert_eq!(peer, clusters.west.id("client"));
            assert_eq!(header.port, app_port);
            opened += 1;
        }
    }
    assert_eq!(opened, 20, "every connection went through the meshed hop");

    outbound_drain.drain().await;
    outbound_task.await.unwrap();
    clusters.stop().await;
}

#[tokio::test]
async fn unknown_services_and_wrong_identities_close_only_that_connection() {
    let clusters = Clusters::start(None).await;
    let (east, app_port, inbound_port) = (&clusters.east, clusters.app_port, clusters.inbound_port);
    // Discovery claims the endpoint is "api", but its proxy presents "echo": the handshake fails.
    let discovery = StaticDiscovery::from_json(
        "test.json",
        &format!(
            r#"{{ "{SERVICE}": {{ "endpoints": [ {{ "addr": "127.0.0.1:{app_port}", "identity": "{}" }} ] }} }}"#,
            east.id("api")
        ),
    )
    .unwrap();
    let config = OutboundConfig {
        inbound_port,
        resolve_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        ..OutboundConfig::default()
    };
    let tls = clusters.west_tls();

    let wrong = ServiceBalancer::new(SERVICE, &discovery, config.balance).unwrap();
    let err = wrong.connect(&tls, &config).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no endpoint answered after 3 attempts"),
        "{err}"
    );

    let unknown = ServiceBalancer::new(
        "nope.default.svc.cluster.local:80",
        &discovery,
        config.balance,
    )
    .unwrap();
    let err = unknown.connect(&tls, &config).await.unwrap_err();
    assert!(err.to_string().contains("is not a known service"), "{err}");
}

#[tokio::test]
async fn a_service_in_a_linked_cluster_is_reached_through_the_gateway_with_end_to_end_identity() {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let clusters = Clusters::start(Some(EventHook::new(move |event| {
        let _ = events_tx.send(event);
    })))
    .await;
    let (west, east) = (&clusters.west, &clusters.east);
    // West's gateway relays the tunnel to east's inbound proxy (standing in for the QUIC leg and
    // the east gateway), naming the endpoint it picked.
    let mut gateway = TunnelGateway::start(
        &clusters.bundles,
        west.creds("gateway"),
        &west.td,
        Answer::Relay {
            identity: east.id("echo").to_string(),
            upstream: format!("127.0.0.1:{}", clusters.inbound_port)
                .parse()
                .unwrap(),
        },
    )
    .await;
    let mirror = "echo-east.default.svc.cluster.local:7000";
    let discovery = StaticDiscovery::from_json(
        "test.json",
        &format!(
            r#"{{ "{mirror}": {{ "endpoints": [ {{
                "addr": "10.9.0.1:{app_port}", "identity": "{id}", "cluster": "east",
                "tunnel": {{ "cluster": "east", "authority": "{SERVICE}", "gateway": "{gw}",
                             "gateway_identity": "{gw_id}", "remote_trust_domain": "east" }} }} ] }} }}"#,
            app_port = clusters.app_port,
            id = east.id("echo"),
            gw = gateway.addr,
            gw_id = west.id("gateway"),
        ),
    )
    .unwrap();
    let ctx = Arc::new(OutboundContext::new(
        Arc::new(discovery),
        Arc::new(clusters.west_tls()),
        OutboundConfig::default(),
        ProxyMetrics::new(MetricsConfig::default()),
        Tap::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = listener.local_addr().unwrap();
    let (drain, watch) = drain::channel();
    let task = tokio::spawn(serve_mapped(
        listener,
        Target::parse(mirror).unwrap(),
        ctx,
        watch,
    ));

    let mut app = TcpStream::connect(outbound).await.unwrap();
    app.write_all(b"secret payload").await.unwrap();
    app.shutdown().await.unwrap();
    let mut echoed = String::new();
    app.read_to_string(&mut echoed).await.unwrap();
    assert_eq!(echoed, "secret payload");

    // East saw the west workload itself, not the gateway.
    let opened = loop {
        if let InboundEvent::Opened { peer, .. } = events.recv().await.unwrap() {
            break peer;
        }
    };
    assert_eq!(opened, west.id("client"));
    // The gateway was asked for east's service by its remote name, and carried only TLS.
    let seen = gateway.seen().await;
    let open = seen.open.unwrap();
    assert_eq!(
        (open.target_cluster.as_str(), open.authority.as_str()),
        ("east", SERVICE)
    );
    assert_eq!(seen.caller, Some(west.id("client")));
    let carried = String::from_utf8_lossy(&seen.from_caller).into_owned();
    assert!(!carried.contains("secret payload"));

    drain.drain().await;
    task.await.unwrap();
    clusters.stop().await;
}

/// A discovery source whose answer the test replaces at will.
struct Controlled(tokio::sync::watch::Sender<Option<Arc<mesh_proxy::discovery::Destination>>>);

impl mesh_proxy::discovery::Resolve for Controlled {
    fn watch(
        &self,
        _target: mesh_proxy::discovery::Target,
    ) -> mesh_proxy::discovery::DestinationWatch {
        self.0.subscribe()
    }
}

fn destination(json: &str) -> Arc<mesh_proxy::discovery::Destination> {
    StaticDiscovery::from_json("d.json", json)
        .unwrap()
        .get(&mesh_proxy::discovery::Target::parse(SERVICE).unwrap())
}

#[tokio::test]
async fn a_retry_uses_the_latest_discovery_answer_not_the_one_it_started_with() {
    let clusters = Clusters::start(None).await;
    let (east, app_port, inbound_port) = (&clusters.east, clusters.app_port, clusters.inbound_port);
    // Another loopback address, same port: it accepts TCP and never answers the handshake.
    let stall = TcpListener::bind(("127.0.0.2", inbound_port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = stall.accept().await {
            held.push(conn);
        }
    });
    let id = east.id("echo");
    let stalled = destination(&format!(
        r#"{{ "{SERVICE}": {{ "endpoints": [ {{ "addr": "127.0.0.2:{app_port}", "identity": "{id}" }} ] }} }}"#
    ));
    let healthy = destination(&format!(
        r#"{{ "{SERVICE}": {{ "endpoints": [ {{ "addr": "127.0.0.1:{app_port}", "identity": "{id}" }} ] }} }}"#
    ));
    let (answers, _) = tokio::sync::watch::channel(Some(stalled));
    let resolve = Controlled(answers);
    let config = OutboundConfig {
        inbound_port,
        connect_timeout: Duration::from_millis(300),
        max_attempts: 3,
        ..OutboundConfig::default()
    };
    let tls = clusters.west_tls();
    let service = ServiceBalancer::new(SERVICE, &resolve, config.balance).unwrap();

    // While the first attempt stalls, the controller replaces the endpoint.
    let replace = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        resolve.0.send_replace(Some(healthy));
    };
    let (connected, ()) = tokio::join!(service.connect(&tls, &config), replace);
    let (_upstream, in_flight) = connected.unwrap();
    assert_eq!(in_flight.addr().ip().to_string(), "127.0.0.1");
}
