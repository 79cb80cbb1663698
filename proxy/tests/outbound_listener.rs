//! The outbound listener on loopback: HTTP routed per request (by Host, through splits, with
//! retries and latency-aware balancing), opaque TCP that never waits on server-speaks-first
//! protocols, and TLS that passes through untouched, routed by SNI.
#![allow(clippy::unwrap_used)]

#[path = "support/outbound_apps.rs"]
mod apps;
#[path = "support/http_app.rs"]
mod http_app;
#[path = "support/mesh_pki.rs"]
mod pki;
#[path = "support/tunnel_gateway.rs"]
mod tunnel_gateway;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apps::{Behaviour, dead_addr, get, http_app, http_app_on};
use http::StatusCode;
use mesh_proxy::balance::{BalanceConfig, EjectionPolicy};
use mesh_proxy::discovery::{StaticDiscovery, Target};
use mesh_proxy::drain;
use mesh_proxy::metrics::{MetricsConfig, ProxyMetrics};
use mesh_proxy::outbound::{
    OutboundConfig, OutboundContext, OutboundTls, PROXY_ERROR_HEADER, serve_mapped, serve_outbound,
};
use mesh_proxy::tap::Tap;
use mesh_proxy::tcp::{InboundConfig, serve_inbound};
use mesh_trust::tls::CertResolver;
use pki::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// How long a test waits for anything it expects; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// A west proxy's outbound side with a static discovery file.
struct West {
    addr: SocketAddr,
    metrics: ProxyMetrics,
    tap: Tap,
    drain: drain::Drain,
    task: tokio::task::JoinHandle<()>,
}

impl West {
    /// Serves the outbound listener (clients address the proxy itself, so HTTP is routed by
    /// Host) with discovery from `json`.
    async fn outbound(json: &str, tweak: impl FnOnce(&mut OutboundConfig)) -> Self {
        Self::start(json, tweak, None).await
    }

    /// Serves an explicit listener for `target`.
    async fn mapped(json: &str, target: &str, tweak: impl FnOnce(&mut OutboundConfig)) -> Self {
        Self::start(json, tweak, Some(Target::parse(target).unwrap())).await
    }

    async fn start(
        json: &str,
        tweak: impl FnOnce(&mut OutboundConfig),
        mapped: Option<Target>,
    ) -> Self {
        Self::start_trusting(json, tweak, mapped, &Domain::new("west"), None).await
    }

    /// As workload `client` of `west`, trusting `peer` too.
    async fn start_trusting(
        json: &str,
        tweak: impl FnOnce(&mut OutboundConfig),
        mapped: Option<Target>,
        west: &Domain,
        peer: Option<&Domain>,
    ) -> Self {
        let mut domains = vec![west];
        domains.extend(peer);
        let bundles = pki::bundles(&domains);
        let tls = Arc::new(OutboundTls::new(
            bundles,
            Arc::new(CertResolver::new(west.creds("client")).unwrap()),
        ));
        let mut config = OutboundConfig {
            resolve_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ..OutboundConfig::default()
        };
        tweak(&mut config);
        let metrics = ProxyMetrics::new(MetricsConfig::default());
        let tap = Tap::default();
        let discovery = StaticDiscovery::from_json("test.json", json).unwrap();
        let ctx = Arc::new(OutboundContext::new(
            Arc::new(discovery),
            tls,
            config,
            metrics.clone(),
            tap.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain, watch) = drain::channel();
        let task = match mapped {
            Some(target) => tokio::spawn(serve_mapped(listener, target, ctx, watch)),
            None => tokio::spawn(serve_outbound(listener, ctx, watch)),
        };
        Self {
            addr,
            metrics,
            tap,
            drain,
            task,
        }
    }

    async fn stop(self) {
        timeout(PATIENCE, self.drain.drain()).await.unwrap();
        timeout(PATIENCE, self.task).await.unwrap().unwrap();
    }
}

fn endpoints(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!(r#"{{ "addr": "{a}" }}"#))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn http_is_routed_by_host_and_counted() {
    let web = http_app("127.0.0.1", Behaviour::named("web")).await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[web.addr])
    );
    let west = West::outbound(&json, |_| {}).await;

    let (status, served_by, body) =
        get(west.addr, "POST", "web.default.svc.cluster.local", "hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served_by, "web");
    // The app sees the request as the client sent it: method, Host, version, body.
    assert_eq!(body, "web POST web.default.svc.cluster.local HTTP/1.1 5");

    // An unknown authority is answered by the proxy, saying why.
    let (status, _, body) = get(west.addr, "GET", "nope.default.svc.cluster.local", "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("is not a known service"), "{body}");

    let metrics = west.metrics.encode();
    let counted = metrics.lines().any(|line| {
        line.starts_with("request_total{")
            && line.contains(r#"direction="outbound""#)
            && line.contains(r#"authority="web.default.svc.cluster.local""#)
            && line.ends_with(" 1")
    });
    assert!(counted, "{metrics}");
    assert!(
        metrics.contains(r#"status_code="502""#),
        "the proxy's own answers are counted too: {metrics}"
    );
    west.stop().await;
}

#[tokio::test]
async fn a_split_skips_a_backend_whose_endpoints_are_all_dead() {
    let fallback = http_app("127.0.0.1", Behaviour::named("fallback")).await;
    let primary = http_app("127.0.0.1", Behaviour::named("primary")).await;
    let dead = dead_addr("127.0.0.1").await;
    let json = format!(
        r#"{{
          "web.default.svc.cluster.local:80": {{ "split_backends": [
              {{ "authority": "web-primary.default.svc.cluster.local:80", "weight": 1, "priority": 0 }},
              {{ "authority": "web-fallback.default.svc.cluster.local:80", "weight": 1, "priority": 1 }} ] }},
          "api.default.svc.cluster.local:80": {{ "split_backends": [
              {{ "authority": "api-primary.default.svc.cluster.local:80", "weight": 1, "priority": 0 }},
              {{ "authority": "web-fallback.default.svc.cluster.local:80", "weight": 1, "priority": 1 }} ] }},
          "web-primary.default.svc.cluster.local:80": {{ "endpoints": [ {dead_ep} ] }},
          "api-primary.default.svc.cluster.local:80": {{ "endpoints": [ {primary_ep} ] }},
          "web-fallback.default.svc.cluster.local:80": {{ "endpoints": [ {fallback_ep} ] }}
        }}"#,
        dead_ep = endpoints(&[dead]),
        primary_ep = endpoints(&[primary.addr]),
        fallback_ep = endpoints(&[fallback.addr]),
    );
    let west = West::outbound(&json, |config| {
        // Eject after the first failure, for a long time: the test shows the skip, not timing.
        config.balance.ejection = EjectionPolicy {
            consecutive_failures: 1,
            base_backoff: Duration::from_secs(60),
            ..EjectionPolicy::default()
        };
    })
    .await;

    // A healthy primary takes everything.
    for _ in 0..5 {
        let (status, served_by, _) =
            get(west.addr, "GET", "api.default.svc.cluster.local", "").await;
        assert_eq!((status, served_by.as_str()), (StatusCode::OK, "primary"));
    }
    // The primary's only endpoint refuses connections: the first request finds out (and its
    // retry goes to the fallback); from then on the primary is skipped without trying it.
    for _ in 0..10 {
        let (status, served_by, _) =
            get(west.addr, "POST", "web.default.svc.cluster.local", "x").await;
        assert_eq!((status, served_by.as_str()), (StatusCode::OK, "fallback"));
    }
    assert_eq!(fallback.posts.load(std::sync::atomic::Ordering::SeqCst), 10);
    west.stop().await;
}

#[tokio::test]
async fn only_idempotent_requests_are_retried() {
    let failing = http_app(
        "127.0.0.1",
        Behaviour::named("failing").status(StatusCode::SERVICE_UNAVAILABLE),
    )
    .await;
    let healthy = http_app("127.0.0.1", Behaviour::named("healthy")).await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[failing.addr, healthy.addr])
    );
    let west = West::outbound(&json, |_| {}).await;

    for _ in 0..20 {
        let (status, served_by, _) =
            get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
        assert_eq!((status, served_by.as_str()), (StatusCode::OK, "healthy"));
    }
    let mut failed_posts = 0;
    for _ in 0..20 {
        let (status, served_by, _) =
            get(west.addr, "POST", "web.default.svc.cluster.local", "order").await;
        match status {
            StatusCode::OK => assert_eq!(served_by, "healthy"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(served_by, "failing");
                failed_posts += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Each POST reached exactly one endpoint: the failing one saw exactly the POSTs that failed.
    assert_eq!(
        failing.posts.load(std::sync::atomic::Ordering::SeqCst),
        failed_posts
    );
    west.stop().await;
}

#[tokio::test]
async fn load_shifts_toward_the_faster_endpoint() {
    let fast = http_app("127.0.0.1", Behaviour::named("fast")).await;
    let slow = http_app(
        "127.0.0.1",
        Behaviour::named("slow").delay(Duration::from_millis(25)),
    )
    .await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[fast.addr, slow.addr])
    );
    let west = West::outbound(&json, |_| {}).await;
    for _ in 0..100 {
        let (status, _, _) = get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (fast, slow) = (fast.requests(), slow.requests());
    assert_eq!(fast + slow, 100);
    assert!(fast > 3 * slow, "fast {fast}, slow {slow}");
    west.stop().await;
}

#[tokio::test]
async fn a_refusing_endpoint_is_ejected_then_probed_back_in() {
    let live = http_app("127.0.0.1", Behaviour::named("live")).await;
    let flaky_addr = dead_addr("127.0.0.1").await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[flaky_addr, live.addr])
    );
    let west = West::outbound(&json, |config| {
        config.balance = BalanceConfig {
            ejection: EjectionPolicy {
                // The first refusal ejects it: the failure penalty alone would keep the
                // balancer away from it for much longer than this test waits.
                consecutive_failures: 1,
                base_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(200),
                jitter: 0.0,
            },
            ..config.balance
        };
    })
    .await;
    // While the endpoint refuses, every request still succeeds (nothing was sent, so even a POST
    // is retried on the live endpoint).
    for _ in 0..20 {
        let (status, served_by, _) =
            get(west.addr, "POST", "web.default.svc.cluster.local", "x").await;
        assert_eq!((status, served_by.as_str()), (StatusCode::OK, "live"));
    }
    // It comes back; after its backoff a probe finds it, and it takes traffic again.
    let flaky = http_app_on(
        TcpListener::bind(flaky_addr).await.unwrap(),
        Behaviour::named("flaky"),
    );
    let waiting = tokio::time::Instant::now();
    while flaky.requests() == 0 && waiting.elapsed() < PATIENCE {
        get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(flaky.requests() > 0, "the endpoint was probed back in");
    west.stop().await;
}

/// A server-speaks-first app: writes a banner on accept, then echoes.
async fn banner_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                conn.write_all(b"220 ready\r\n").await.unwrap();
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn read_banner(proxy: SocketAddr) -> String {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let mut banner = [0u8; 11];
    timeout(PATIENCE, conn.read_exact(&mut banner))
        .await
        .expect("the banner arrives")
        .unwrap();
    String::from_utf8_lossy(&banner).into_owned()
}

#[tokio::test]
async fn server_speaks_first_protocols_are_not_stalled() {
    let app = banner_app().await;
    let port = app.port();
    let json = format!(
        r#"{{ "smtp.default.svc.cluster.local:{port}": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[app])
    );
    let authority = format!("smtp.default.svc.cluster.local:{port}");
    // A port configured opaque is forwarded without detection: with detection waiting an hour,
    // the banner still arrives at once.
    let west = West::mapped(&json, &authority, |config| {
        config.detect_timeout = Duration::from_secs(3600);
        config.opaque_ports.insert(port);
    })
    .await;
    assert_eq!(read_banner(west.addr).await, "220 ready\r\n");
    west.stop().await;

    // Any other port: the silent client is declared opaque when detection times out.
    let west = West::mapped(&json, &authority, |config| {
        config.detect_timeout = Duration::from_millis(200);
    })
    .await;
    assert_eq!(read_banner(west.addr).await, "220 ready\r\n");
    west.stop().await;
}

/// A TLS server that is not the mesh's: answers "tls ok" to the first line it reads.
async fn tls_app(domain: &Domain) -> SocketAddr {
    let creds = domain.creds("tls-app");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(creds.chain.clone(), creds.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(conn).await.unwrap();
                let mut line = [0u8; 5];
                tls.read_exact(&mut line).await.unwrap();
                tls.write_all(b"tls ok").await.unwrap();
                tls.shutdown().await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_passes_through_and_its_sni_routes_direct_clients() {
    let domain = Domain::new("apps");
    let app = tls_app(&domain).await;
    // A client that addresses the proxy directly is routed by its SNI, on port 443.
    let json = format!(
        r#"{{ "billing.example.com:443": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[app])
    );
    let west = West::outbound(&json, |_| {}).await;
    let client_config = mesh_trust::tls::client_config(
        pki::bundles(&[&domain]),
        mesh_trust::PeerPolicy::Exactly(domain.id("tls-app")),
        None,
        &[b"h2"],
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(west.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("billing.example.com").unwrap();
    // The handshake is the app's own, end to end: the proxy holds no key for it.
    let mut tls = timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "tls ok");
    drop(tls);
    let metrics = west.metrics.encode();
    assert!(
        metrics.contains(r#"authority="billing.example.com:443""#),
        "{metrics}"
    );
    west.stop().await;
}

#[tokio::test]
async fn bad_clients_cost_one_connection() {
    let web = http_app("127.0.0.1", Behaviour::named("web")).await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[web.addr])
    );
    let west = West::outbound(&json, |config| {
        config.header_read_timeout = Duration::from_millis(200);
        config.detect_timeout = Duration::from_millis(200);
    })
    .await;

    // Oversized headers: 431, then closed.
    let mut conn = TcpStream::connect(west.addr).await.unwrap();
    let huge = "x".repeat(100 * 1024);
    let request =
        format!("GET / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\nx-big: {huge}\r\n\r\n");
    let _ = conn.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = timeout(PATIENCE, conn.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(100)])
    );

    // Slowloris: a request head that never ends is closed at the header timeout.
    let mut slow = TcpStream::connect(west.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\nx-a: 1\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    timeout(PATIENCE, slow.read_to_end(&mut rest))
        .await
        .expect("closed by the proxy")
        .unwrap();

    // Garbage from a client that addressed the proxy directly has no destination: closed.
    let mut garbage = TcpStream::connect(west.addr).await.unwrap();
    garbage.write_all(&[0u8, 1, 2, 3, 0xff]).await.unwrap();
    let mut rest = Vec::new();
    timeout(PATIENCE, garbage.read_to_end(&mut rest))
        .await
        .expect("closed by the proxy")
        .unwrap();
    assert!(rest.is_empty());

    // A half-open client (sends nothing, never closes) is let go at the detection timeout.
    let mut idle = TcpStream::connect(west.addr).await.unwrap();
    let mut rest = Vec::new();
    timeout(PATIENCE, idle.read_to_end(&mut rest))
        .await
        .expect("closed by the proxy")
        .unwrap();

    // Through all of it, the proxy serves others.
    let (status, _, _) = get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
    assert_eq!(status, StatusCode::OK);
    west.stop().await;
}

#[tokio::test]
async fn proxy_errors_say_why() {
    let json = r#"{ "web.default.svc.cluster.local:80": { "endpoints": [] } }"#;
    let west = West::outbound(json, |_| {}).await;
    let tcp = TcpStream::connect(west.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header(http::header::HOST, "web.default.svc.cluster.local")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why = response.headers().get(PROXY_ERROR_HEADER).unwrap();
    assert!(
        why.to_str()
            .unwrap()
            .contains("web.default.svc.cluster.local"),
        "{why:?}"
    );
    west.stop().await;
}

/// East: the test app of `support/http_app.rs` behind a real inbound proxy.
struct East {
    domain: Domain,
    app: http_app::HttpApp,
    inbound_port: u16,
    drain: drain::Drain,
    task: tokio::task::JoinHandle<()>,
}

impl East {
    async fn start(west: &Domain) -> Self {
        let domain = Domain::new("east");
        let bundles = pki::bundles(&[west, &domain]);
        let app = http_app::HttpApp::spawn().await;
        let config = InboundConfig::new(pki::inbound_tls(&bundles, domain.creds("web")));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound_port = listener.local_addr().unwrap().port();
        let (drain, watch) = drain::channel();
        let task = tokio::spawn(serve_inbound(listener, config, watch));
        Self {
            domain,
            app,
            inbound_port,
            drain,
            task,
        }
    }

    async fn stop(self) {
        timeout(PATIENCE, self.drain.drain()).await.unwrap();
        timeout(PATIENCE, self.task).await.unwrap().unwrap();
    }
}

/// West's outbound listener in front of east's meshed `web`.
async fn meshed_pair() -> (Domain, East, West) {
    let west_domain = Domain::new("west");
    let east = East::start(&west_domain).await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "protocol_hint": "http", "endpoints": [
            {{ "addr": "127.0.0.1:{}", "identity": "{}" }} ] }} }}"#,
        east.app.port(),
        east.domain.id("web")
    );
    let inbound_port = east.inbound_port;
    let west = West::start_trusting(
        &json,
        |config| config.inbound_port = inbound_port,
        None,
        &west_domain,
        Some(&east.domain),
    )
    .await;
    (west_domain, east, west)
}

#[tokio::test]
async fn http_crosses_the_mesh_h2_hop_with_the_callers_identity() {
    let (west_domain, east, west) = meshed_pair().await;
    // HTTP/1.1, routed by Host, one request after another on one client connection.
    let tcp = TcpStream::connect(west.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("/echo?n={i}"))
            .header(http::header::HOST, "web.default.svc.cluster.local")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "body {i}"
            ))))
            .unwrap();
        let response = send.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("x-version"), "HTTP/1.1");
        assert_eq!(header("x-host"), "web.default.svc.cluster.local");
        // The inbound proxy told the app who called: west's workload, proven by mTLS.
        assert_eq!(header("x-client-id"), west_domain.id("client").to_string());
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], format!("body {i}").as_bytes());
    }

    // HTTP/2 with prior knowledge (gRPC-style clients), routed by :authority.
    let tcp = TcpStream::connect(west.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://web.default.svc.cluster.local/h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("x-version").unwrap(), "HTTP/2.0");

    let metrics = west.metrics.encode();
    assert!(
        metrics.lines().any(|l| l.starts_with("response_total{")
            && l.contains(r#"tls="true""#)
            && l.contains(&format!(r#"server_id="{}""#, east.domain.id("web")))),
        "{metrics}"
    );
    west.stop().await;
    east.stop().await;
}

/// An HTTP/1.1 upgrade through `proxy` to `/ws` of the test app: `101`, the app's greeting,
/// then an echo on the now opaque stream.
async fn websocket_round_trip(proxy: SocketAddr, host: &str) {
    let mut conn = TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(http_app::WS_GREETING) {
        let n = timeout(PATIENCE, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 101 switching protocols\r\n"),
        "{text}"
    );
    conn.write_all(b"ping over the upgraded stream")
        .await
        .unwrap();
    let mut echoed = [0u8; 29];
    timeout(PATIENCE, conn.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over the upgraded stream");
}

#[tokio::test]
async fn a_websocket_upgrade_goes_through_the_outbound_listener() {
    // Over the mesh.h2 hop, as an extended CONNECT stream...
    let (_west_domain, east, west) = meshed_pair().await;
    websocket_round_trip(west.addr, "web.default.svc.cluster.local").await;
    west.stop().await;
    east.stop().await;

    // ...and straight to an endpoint without an identity.
    let app = http_app::HttpApp::spawn().await;
    let json = format!(
        r#"{{ "chat.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[app.addr])
    );
    let west = West::outbound(&json, |_| {}).await;
    websocket_round_trip(west.addr, "chat.default.svc.cluster.local").await;
    west.stop().await;
}

#[tokio::test]
async fn http_to_a_linked_cluster_rides_one_tunnel_through_the_gateway() {
    http_through_a_tunnel(true).await;
}

/// The controller's discovery names no identity for a mirror's endpoints: the proxy requires
/// the one the remote gateway reports, and HTTP still goes through the tunnel, never in plain
/// text to the endpoint's address.
#[tokio::test]
async fn http_to_a_mirror_without_an_identity_still_goes_through_the_tunnel() {
    http_through_a_tunnel(false).await;
}

async fn http_through_a_tunnel(identity_in_discovery: bool) {
    let west_domain = Domain::new("west");
    let east = East::start(&west_domain).await;
    let bundles = pki::bundles(&[&west_domain, &east.domain]);
    let mut gateway = tunnel_gateway::TunnelGateway::start(
        &bundles,
        west_domain.creds("gateway"),
        &west_domain.td,
        tunnel_gateway::Answer::Relay {
            identity: east.domain.id("web").to_string(),
            upstream: format!("127.0.0.1:{}", east.inbound_port).parse().unwrap(),
        },
    )
    .await;
    let json = format!(
        r#"{{ "web-east.default.svc.cluster.local:80": {{ "endpoints": [ {{
            "addr": "10.9.0.1:{port}", {id} "cluster": "east",
            "tunnel": {{ "cluster": "east", "authority": "web.default.svc.cluster.local:80",
                         "gateway": "{gw}", "gateway_identity": "{gw_id}",
                         "remote_trust_domain": "east" }} }} ] }} }}"#,
        port = east.app.port(),
        id = if identity_in_discovery {
            format!(r#""identity": "{}","#, east.domain.id("web"))
        } else {
            String::new()
        },
        gw = gateway.addr,
        gw_id = west_domain.id("gateway"),
    );
    let west = West::start_trusting(&json, |_| {}, None, &west_domain, Some(&east.domain)).await;

    for _ in 0..5 {
        let tcp = TcpStream::connect(west.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("/remote")
            .header(http::header::HOST, "web-east.default.svc.cluster.local")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = send.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // East's app was told the west workload called: identity end to end, through the
        // gateway.
        assert_eq!(
            response
                .headers()
                .get("x-client-id")
                .unwrap()
                .to_str()
                .unwrap(),
            west_domain.id("client").to_string()
        );
    }
    west.stop().await;
    // Five requests, one pooled mesh.h2 connection, so one tunnel; the gateway saw only TLS.
    let seen = gateway.seen().await;
    let open = seen.open.unwrap();
    assert_eq!(open.target_cluster, "east");
    assert_eq!(open.authority, "web.default.svc.cluster.local:80");
    assert!(!String::from_utf8_lossy(&seen.from_caller).contains("/remote"));
    east.stop().await;
}

#[tokio::test]
async fn opaque_connections_follow_the_split_to_a_live_backend() {
    let fallback = banner_app().await;
    let dead = dead_addr("127.0.0.1").await;
    // 5432 is opaque by default (PostgreSQL speaks first): no detection, straight to the split.
    let json = format!(
        r#"{{
          "db.default.svc.cluster.local:5432": {{ "split_backends": [
              {{ "authority": "db-west.default.svc.cluster.local:5432", "weight": 1, "priority": 0 }},
              {{ "authority": "db-east.default.svc.cluster.local:5432", "weight": 1, "priority": 1 }} ] }},
          "db-west.default.svc.cluster.local:5432": {{ "endpoints": [ {} ] }},
          "db-east.default.svc.cluster.local:5432": {{ "endpoints": [ {} ] }}
        }}"#,
        endpoints(&[dead]),
        endpoints(&[fallback]),
    );
    let west = West::mapped(&json, "db.default.svc.cluster.local:5432", |config| {
        config.balance.ejection = EjectionPolicy {
            consecutive_failures: 1,
            base_backoff: Duration::from_secs(60),
            ..EjectionPolicy::default()
        };
    })
    .await;
    // The first connection may find the primary dead (and is closed); from then on the primary
    // is skipped and every connection reaches the fallback.
    let mut conn = TcpStream::connect(west.addr).await.unwrap();
    let mut banner = [0u8; 11];
    if timeout(PATIENCE, conn.read_exact(&mut banner))
        .await
        .unwrap()
        .is_err()
    {
        conn = TcpStream::connect(west.addr).await.unwrap();
        timeout(PATIENCE, conn.read_exact(&mut banner))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(&banner, b"220 ready\r\n");
    drop(conn);
    for _ in 0..5 {
        assert_eq!(read_banner(west.addr).await, "220 ready\r\n");
    }
    west.stop().await;
}

#[tokio::test]
async fn an_endpoint_whose_proxy_answers_for_a_dead_app_is_avoided() {
    // A peer proxy whose application is down answers 502 at once: fast, but a failure.
    let sick = http_app(
        "127.0.0.1",
        Behaviour::named("sick")
            .status(StatusCode::BAD_GATEWAY)
            .proxy_error(),
    )
    .await;
    let healthy = http_app(
        "127.0.0.1",
        Behaviour::named("healthy").delay(Duration::from_millis(2)),
    )
    .await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[sick.addr, healthy.addr])
    );
    let west = West::outbound(&json, |_| {}).await;
    // POSTs are not retried, so each 502 the client sees is one pick of the sick endpoint.
    let mut failed = 0;
    for _ in 0..40 {
        let (status, _, _) = get(west.addr, "POST", "web.default.svc.cluster.local", "x").await;
        if status == StatusCode::BAD_GATEWAY {
            failed += 1;
        }
    }
    assert!(
        failed <= 3,
        "the sick endpoint kept being picked: {failed} of 40"
    );
    assert_eq!(sick.requests(), failed);
    west.stop().await;
}

#[tokio::test]
async fn a_response_still_streaming_counts_as_load() {
    // "streaming" sends its headers at once and its body 300 ms later; "steady" answers whole
    // in 20 ms. Judged by headers alone, the streaming endpoint looks idle and fast and takes
    // everything; counted until its bodies end, it is busy and the steady one gets a share.
    let streaming = http_app(
        "127.0.0.1",
        Behaviour::named("streaming").body_delay(Duration::from_millis(300)),
    )
    .await;
    let steady = http_app(
        "127.0.0.1",
        Behaviour::named("steady").delay(Duration::from_millis(20)),
    )
    .await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[streaming.addr, steady.addr])
    );
    let west = West::outbound(&json, |_| {}).await;
    // Warm both estimates, one request at a time.
    for _ in 0..4 {
        get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
    }
    let (before_streaming, before_steady) = (streaming.requests(), steady.requests());
    let mut concurrent = Vec::new();
    for _ in 0..20 {
        concurrent.push(tokio::spawn(get(
            west.addr,
            "GET",
            "web.default.svc.cluster.local",
            "",
        )));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for request in concurrent {
        assert_eq!(request.await.unwrap().0, StatusCode::OK);
    }
    let to_steady = steady.requests() - before_steady;
    let to_streaming = streaming.requests() - before_streaming;
    assert!(
        to_steady >= 5,
        "steady got {to_steady} of 20, streaming {to_streaming}: open responses were not counted"
    );
    west.stop().await;
}

#[tokio::test]
async fn a_request_without_an_answer_in_time_gets_504() {
    let slow = http_app(
        "127.0.0.1",
        Behaviour::named("slow").delay(Duration::from_millis(800)),
    )
    .await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[slow.addr])
    );
    let west = West::outbound(&json, |config| {
        config.request_timeout = Duration::from_millis(100);
    })
    .await;
    let (status, _, body) = get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("no response within"), "{body}");
    west.stop().await;
}

#[tokio::test]
async fn bodies_over_the_buffer_cap_are_never_retried() {
    // One endpoint, always 503, never ejected: a retried request reaches it once per attempt.
    let failing = http_app(
        "127.0.0.1",
        Behaviour::named("failing").status(StatusCode::SERVICE_UNAVAILABLE),
    )
    .await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[failing.addr])
    );
    let west = West::outbound(&json, |config| {
        config.max_retry_body = 4;
        config.max_attempts = 3;
        config.balance.ejection = EjectionPolicy {
            consecutive_failures: 0,
            ..EjectionPolicy::default()
        };
    })
    .await;
    let seen = || failing.gets.load(std::sync::atomic::Ordering::SeqCst);
    // PUT is idempotent: with a body the proxy could keep (at most 4 bytes), it is sent again.
    let (status, _, _) = get(west.addr, "PUT", "web.default.svc.cluster.local", "ok").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen(), 3, "a kept body is retried up to max_attempts");
    // Over the cap the body is streamed on, so the request cannot be sent again.
    let (status, _, _) = get(
        west.addr,
        "PUT",
        "web.default.svc.cluster.local",
        "longer than four bytes",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen(), 4, "a body over the cap is sent once");
    west.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_others_served() {
    let web = http_app("127.0.0.1", Behaviour::named("web")).await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[web.addr])
    );
    let west = West::outbound(&json, |config| {
        config.max_connections = 1;
        config.detect_timeout = Duration::from_secs(3600);
    })
    .await;
    // One client holds the only slot (it has not said anything yet)...
    let held = TcpStream::connect(west.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so the next is closed at once, without an answer.
    let mut refused = TcpStream::connect(west.addr).await.unwrap();
    let mut rest = Vec::new();
    timeout(PATIENCE, refused.read_to_end(&mut rest))
        .await
        .expect("closed by the proxy")
        .unwrap();
    assert!(rest.is_empty());
    // Once the slot is free, clients are served again.
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        let tcp = TcpStream::connect(west.addr).await.unwrap();
        if let Ok((mut send, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
        {
            tokio::spawn(conn);
            let req = http::Request::builder()
                .uri("/")
                .header(http::header::HOST, "web.default.svc.cluster.local")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            if let Ok(response) = send.send_request(req).await {
                assert_eq!(response.status(), StatusCode::OK);
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no client was served after the slot was freed");
    west.stop().await;
}

#[tokio::test]
async fn outbound_requests_are_tapped_without_the_query() {
    let web = http_app("127.0.0.1", Behaviour::named("web")).await;
    let json = format!(
        r#"{{ "web.default.svc.cluster.local:80": {{ "endpoints": [ {} ] }} }}"#,
        endpoints(&[web.addr])
    );
    let west = West::outbound(&json, |_| {}).await;
    let mut events = west.tap.subscribe();
    // The helper asks for `/path?q=1`.
    let (status, _, _) = get(west.addr, "GET", "web.default.svc.cluster.local", "").await;
    assert_eq!(status, StatusCode::OK);
    let event = timeout(PATIENCE, events.recv()).await.unwrap().unwrap();
    assert_eq!(event.direction, mesh_proxy::metrics::Direction::Outbound);
    assert_eq!(event.method, http::Method::GET);
    assert_eq!(event.authority, "web.default.svc.cluster.local");
    assert_eq!(event.path, "/path");
    assert_eq!(event.status, Some(StatusCode::OK));
    assert_eq!(event.peer, Some(web.addr));
    west.stop().await;
}
