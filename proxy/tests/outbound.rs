//! Two proxies on loopback: an explicit outbound listener finds the service through discovery,
//! balances over its endpoints, skips a dead one, and reaches the app through the meshed hop.
#![allow(clippy::unwrap_used)]

#[path = "support/mesh_pki.rs"]
mod pki;

use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::discovery::StaticDiscovery;
use mesh_proxy::drain;
use mesh_proxy::outbound::{OutboundConfig, OutboundTls, ServiceBalancer, serve_mapped};
use mesh_proxy::tcp::{EventHook, InboundConfig, InboundEvent, serve_inbound};
use mesh_trust::tls::CertResolver;
use pki::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SERVICE: &str = "echo.default.svc.cluster.local:7000";

/// An app that echoes everything back.
async fn echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

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
        let app_port = echo_app().await;
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
    let service = Arc::new(ServiceBalancer::new(SERVICE, &discovery, config.balance).unwrap());
    let tls = Arc::new(clusters.west_tls());
    let outbound_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = outbound_listener.local_addr().unwrap();
    let (outbound_drain, outbound_watch) = drain::channel();
    let outbound_task = tokio::spawn(serve_mapped(
        outbound_listener,
        service.clone(),
        tls,
        config,
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

    // A tunnel endpoint (another cluster, through the gateway) is never picked while this proxy
    // cannot use the gateway: a service with a local endpoint too keeps working...
    let tunnel = format!(
        r#"{{ "addr": "10.2.0.1:7000", "identity": "spiffe://far/ns/default/sa/echo", "cluster": "far",
              "tunnel": {{ "cluster": "far", "authority": "{SERVICE}", "gateway": "127.0.0.1:4181",
                           "gateway_identity": "spiffe://west/ns/mesh/sa/gateway", "remote_trust_domain": "far" }} }}"#
    );
    let mixed = StaticDiscovery::from_json(
        "mixed.json",
        &format!(
            r#"{{ "{SERVICE}": {{ "endpoints": [ {tunnel}, {{ "addr": "127.0.0.1:{app_port}", "identity": "{}" }} ] }},
                 "far.default.svc.cluster.local:7000": {{ "endpoints": [ {tunnel} ] }} }}"#,
            east.id("echo")
        ),
    )
    .unwrap();
    let service = ServiceBalancer::new(SERVICE, &mixed, config.balance).unwrap();
    for _ in 0..10 {
        service.connect(&tls, &config).await.unwrap();
    }
    // ...and one with only tunnel endpoints says why it cannot connect.
    let far =
        ServiceBalancer::new("far.default.svc.cluster.local:7000", &mixed, config.balance).unwrap();
    let err = far.connect(&tls, &config).await.unwrap_err();
    assert!(
        err.to_string().contains("reached through the gateway"),
        "{err}"
    );
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
