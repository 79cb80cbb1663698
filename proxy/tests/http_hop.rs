//! The `mesh.h2` hop end to end over loopback: west's [`MeshH2Client`] sends requests to east's
//! inbound listener (`serve_inbound`), which forwards them to a real HTTP application
//! (HTTP/1.1 and HTTP/2 on one port). Upgrades go through a stand-in for west's outbound
//! listener: a hyper HTTP/1 server that hands each request to the client, as the real one does.
#![allow(clippy::unwrap_used)]

#[path = "support/http_app.rs"]
mod app;
#[path = "support/mesh_pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use app::{HttpApp, WS_GREETING, full};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_proxy::drain;
use mesh_proxy::http::client::{H2ClientConfig, HttpHopError, MeshEndpoint, MeshH2Client};
use mesh_proxy::http::{Body, BoxError};
use mesh_proxy::metrics::ProxyMetrics;
use mesh_proxy::outbound::OutboundTls;
use mesh_proxy::tap::Tap;
use mesh_proxy::tcp::{EventHook, HopError, InboundConfig, InboundEvent, serve_inbound};
use mesh_proxy::transport_header::{Authority, MeshTransportHeader};
use mesh_trust::SpiffeId;
use mesh_trust::tls::CertResolver;
use pki::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

/// How long a test waits for anything it expects; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// West's client, east's inbound listener and application.
struct Hop {
    east: Domain,
    bundles: mesh_trust::SharedTrustBundles,
    client_id: SpiffeId,
    client: MeshH2Client,
    endpoint: MeshEndpoint,
    app: HttpApp,
    inbound: SocketAddr,
    config: InboundConfig,
    /// Connections the inbound listener accepted and served (one `Opened` each).
    opened: Arc<AtomicUsize>,
    events: mpsc::UnboundedReceiver<InboundEvent>,
    drain: Option<drain::Drain>,
    serve: Option<JoinHandle<()>>,
}

impl Hop {
    async fn start() -> Self {
        Self::start_with(|_| {}, H2ClientConfig::default()).await
    }

    async fn start_with(tweak: impl FnOnce(&mut InboundConfig), client: H2ClientConfig) -> Self {
        let west = Domain::new("west");
        let east = Domain::new("east");
        let bundles = pki::bundles(&[&west, &east]);
        let app = HttpApp::spawn().await;

        let (tx, events) = mpsc::unbounded_channel();
        let opened = Arc::new(AtomicUsize::new(0));
        let count = opened.clone();
        let mut config = InboundConfig::new(pki::inbound_tls(&bundles, east.creds("web")));
        config.events = Some(EventHook::new(move |event| {
            if matches!(event, InboundEvent::Opened { .. }) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send(event);
        }));
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound = listener.local_addr().unwrap();
        let (drain, watch) = drain::channel();
        let serve = tokio::spawn(serve_inbound(listener, config.clone(), watch));

        let tls = OutboundTls::new(
            bundles.clone(),
            Arc::new(CertResolver::new(west.creds("client")).unwrap()),
        );
        let endpoint = MeshEndpoint {
            proxy: inbound,
            app_port: app.port(),
            identity: Some(east.id("web")),
            authority: Some(Authority::parse("web.default.svc.cluster.local:8080").unwrap()),
            tunnel: None,
        };
        Self {
            client_id: west.id("client"),
            east,
            bundles,
            client: MeshH2Client::new(Arc::new(tls), client),
            endpoint,
            app,
            inbound,
            config,
            opened,
            events,
            drain: Some(drain),
            serve: Some(serve),
        }
    }

    async fn send(&self, req: Request<Body>) -> Response<Body> {
        timeout(PATIENCE, self.client.send(&self.endpoint, req))
            .await
            .unwrap()
            .unwrap()
    }

    /// Stops east's inbound listener at once, every connection with it, and starts a new one
    /// on the same port.
    async fn restart_inbound(&mut self) {
        let serve = self.serve.take().unwrap();
        serve.abort();
        let _ = serve.await;
        let listener = TcpListener::bind(self.inbound).await.unwrap();
        let (drain, watch) = drain::channel();
        self.drain = Some(drain);
        self.serve = Some(tokio::spawn(serve_inbound(
            listener,
            self.config.clone(),
            watch,
        )));
    }

    async fn closed(&mut self) {
        loop {
            let event = timeout(PATIENCE, self.events.recv())
                .await
                .unwrap()
                .unwrap();
            if matches!(event, InboundEvent::Closed { .. }) {
                return;
            }
        }
    }
}

fn request(version: Version, method: Method, uri: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .version(version)
        .method(method)
        .uri(uri)
        .body(full(body))
        .unwrap()
}

fn seen<'r>(response: &'r Response<Body>, name: &str) -> &'r str {
    response.headers()[name].to_str().unwrap()
}

async fn text(response: Response<Body>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn http1_requests_reach_the_app_in_the_callers_version_with_its_host() {
    let hop = Hop::start().await;

    let mut get = request(Version::HTTP_11, Method::GET, "/items?page=2", "");
    get.headers_mut()
        .insert("host", "web.example:8080".parse().unwrap());
    get.headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    let response = hop.send(get).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(seen(&response, "x-version"), "HTTP/1.1");
    assert_eq!(seen(&response, "x-host"), "web.example:8080");
    assert_eq!(seen(&response, "x-method"), "GET");
    assert_eq!(seen(&response, "x-target"), "/items?page=2");

    let body = "a body that crosses the hop both ways";
    let mut post = request(Version::HTTP_11, Method::POST, "/items", body);
    post.headers_mut()
        .insert("host", "web.example".parse().unwrap());
    let response = hop.send(post).await;
    assert_eq!(seen(&response, "x-method"), "POST");
    assert_eq!(seen(&response, "x-host"), "web.example");
    assert_eq!(text(response).await, body);

    let mut old = request(Version::HTTP_10, Method::POST, "/legacy", "ten");
    old.headers_mut()
        .insert("host", "old.example".parse().unwrap());
    old.headers_mut()
        .insert("content-length", "3".parse().unwrap());
    let response = hop.send(old).await;
    assert_eq!(response.version(), Version::HTTP_10);
    assert_eq!(seen(&response, "x-version"), "HTTP/1.0");
    assert_eq!(seen(&response, "x-host"), "old.example");
    assert_eq!(text(response).await, "ten");

    // An HTTP/1.0 request without Host: the service the caller addressed stands in.
    let response = hop
        .send(request(Version::HTTP_10, Method::GET, "/", ""))
        .await;
    assert_eq!(
        seen(&response, "x-host"),
        "web.default.svc.cluster.local:8080"
    );

    // All of it on one connection.
    assert_eq!(hop.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_requests_stay_http2_and_a_grpc_style_stream_interleaves_with_trailers() {
    let hop = Hop::start().await;

    let mut unary = request(
        Version::HTTP_2,
        Method::PUT,
        "http://grpc.example:50051/pkg.Svc/Unary",
        "h2 body",
    );
    // Only the proxy may say what version a request had at the caller.
    unary
        .headers_mut()
        .insert("mesh-orig-proto", "HTTP/1.0".parse().unwrap());
    let response = hop.send(unary).await;
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(seen(&response, "x-version"), "HTTP/2.0");
    assert_eq!(seen(&response, "x-authority"), "grpc.example:50051");
    assert_eq!(seen(&response, "x-host"), "-");
    assert_eq!(text(response).await, "h2 body");

    // Request and response streams open at once: each message is answered before the next
    // is sent, which only works if neither side buffers the whole stream.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let req = Request::builder()
        .version(Version::HTTP_2)
        .method(Method::POST)
        .uri("http://grpc.example:50051/stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))))
        .unwrap();
    let response = hop.send(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    for message in ["one", "two", "three"] {
        tx.send(Ok(Frame::data(Bytes::from(message))))
            .await
            .unwrap();
        let frame = timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("ack:{message}"));
    }
    drop(tx);
    let frame = timeout(PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let trailers = frame.into_trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    let hop = Arc::new(Hop::start().await);
    let mut requests = Vec::new();
    for i in 0..64 {
        let hop = hop.clone();
        requests.push(tokio::spawn(async move {
            let version = if i % 2 == 0 {
                Version::HTTP_11
            } else {
                Version::HTTP_2
            };
            let mut req = request(version, Method::GET, "http://web.example/n", "");
            *req.body_mut() = full(format!("request {i}"));
            let response = hop.send(req).await;
            assert_eq!(text(response).await, format!("request {i}"));
        }));
    }
    for request in requests {
        timeout(PATIENCE, request).await.unwrap().unwrap();
    }
    // Every first request raced to an empty pool; one connection was opened for all.
    assert_eq!(hop.opened.load(Ordering::SeqCst), 1);
    assert_eq!(hop.client.connections(), 1);
}

#[tokio::test]
async fn the_app_sees_the_callers_identity_and_never_a_forged_one() {
    let hop = Hop::start().await;
    let mut req = request(Version::HTTP_11, Method::GET, "http://web.example/", "");
    req.headers_mut().append(
        "mesh-client-id",
        "spiffe://east/ns/default/sa/admin".parse().unwrap(),
    );
    req.headers_mut()
        .append("mesh-client-id", "spiffe://x/ns/y/sa/z".parse().unwrap());
    let response = hop.send(req).await;
    assert_eq!(seen(&response, "x-client-id"), hop.client_id.as_str());
    assert_eq!(seen(&response, "x-client-ids"), "1");
}

/// A stand-in for west's outbound listener: an HTTP/1 server (with upgrades) that hands every
/// request to the client, answering 502 when the hop fails.
async fn front(hop: &Hop) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = hop.client.clone();
    let endpoint = hop.endpoint.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let client = client.clone();
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
                    let endpoint = endpoint.clone();
                    async move {
                        let req = req.map(|b| b.map_err(BoxError::from).boxed());
                        let response = match client.send(&endpoint, req).await {
                            Ok(response) => response,
                            Err(error) => Response::builder()
                                .status(StatusCode::BAD_GATEWAY)
                                .body(full(error.to_string()))
                                .unwrap(),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Reads a response head (through the blank line) from a raw HTTP/1 connection.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(PATIENCE, conn.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn a_websocket_upgrade_switches_protocols_and_bytes_flow_both_ways() {
    let mut hop = Hop::start().await;
    let front = front(&hop).await;
    let mut conn = TcpStream::connect(front).await.unwrap();
    conn.write_all(upgrade_request("/ws").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut conn).await;
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-accept: test-accept\r\n"),
        "{head}"
    );
    assert!(!head.contains("mesh-"), "{head}");

    // The stream is opaque now: the app speaks first, then echoes.
    let mut greeting = vec![0u8; WS_GREETING.len()];
    timeout(PATIENCE, conn.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, WS_GREETING);
    for message in [&b"\x81\x05hello"[..], b"any bytes at all \x00\xff"] {
        conn.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        timeout(PATIENCE, conn.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
    // Closing our side closes the app's, and the close comes back.
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());

    // The upgrade was one stream of the shared connection, which still serves requests.
    let response = hop
        .send(request(
            Version::HTTP_11,
            Method::GET,
            "http://web.example/",
            "",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(hop.opened.load(Ordering::SeqCst), 1);
    drop(hop.drain.take());
}

#[tokio::test]
async fn an_upgrade_the_app_refuses_or_ignores_is_an_ordinary_response() {
    let hop = Hop::start().await;
    let front = front(&hop).await;

    let mut conn = TcpStream::connect(front).await.unwrap();
    conn.write_all(upgrade_request("/ws-refused").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut conn).await;
    assert!(
        head.starts_with("http/1.1 426 upgrade required\r\n"),
        "{head}"
    );
    let mut body = [0u8; 8];
    conn.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"not here");

    let mut conn = TcpStream::connect(front).await.unwrap();
    conn.write_all(upgrade_request("/ws-ignored").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut conn).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(!head.contains("mesh-"), "{head}");
    // The body came through the CONNECT stream, so its length is known only at its end.
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    let mut body = Vec::new();
    while !body.ends_with(b"0\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(PATIENCE, conn.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        body.push(byte[0]);
    }
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("no upgrade, just this"), "{body:?}");
}

#[tokio::test]
async fn a_restarted_inbound_is_reconnected_to_on_the_next_request() {
    let mut hop = Hop::start().await;
    let get = || request(Version::HTTP_11, Method::GET, "http://web.example/", "");
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);

    hop.restart_inbound().await;
    // The client sees its connection close and forgets it.
    timeout(PATIENCE, async {
        while hop.client.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);
    assert_eq!(hop.opened.load(Ordering::SeqCst), 2);
}

/// A TCP relay that can be frozen: it then neither forwards nor closes anything, like a peer
/// whose host vanished.
async fn freezable_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.load(Ordering::SeqCst) {
                // Swallow everything from now on, and hold both sockets open.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        loop {
            let (down, _) = listener.accept().await.unwrap();
            let up = TcpStream::connect(to).await.unwrap();
            let (down_read, down_write) = down.into_split();
            let (up_read, up_write) = up.into_split();
            tokio::spawn(pump(down_read, up_write, flag.clone()));
            tokio::spawn(pump(up_read, down_write, flag.clone()));
        }
    });
    (addr, frozen)
}

#[tokio::test]
async fn a_silent_peer_is_noticed_by_pings_and_requests_do_not_hang() {
    let mut config = H2ClientConfig::default();
    config.keep_alive_interval = Duration::from_millis(100);
    config.keep_alive_timeout = Duration::from_millis(200);
    let mut hop = Hop::start_with(|_| {}, config).await;
    let (relay, frozen) = freezable_relay(hop.inbound).await;
    hop.endpoint.proxy = relay;
    let get = || request(Version::HTTP_11, Method::GET, "http://web.example/", "");
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);

    frozen.store(true, Ordering::SeqCst);
    // The request goes into the void; the unanswered PINGs close the connection and the
    // request fails instead of waiting forever. It may have reached the peer.
    let error = timeout(PATIENCE, hop.client.send(&hop.endpoint, get()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, HttpHopError::Request { .. }), "{error}");
    assert!(!error.nothing_sent(), "{error}");

    // The next request opens a new connection, which works once the path is back.
    frozen.store(false, Ordering::SeqCst);
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_server_identity_is_refused_before_anything_is_sent() {
    let mut hop = Hop::start().await;
    hop.endpoint.identity = Some(hop.east.id("someone-else"));
    let error = hop
        .client
        .send(
            &hop.endpoint,
            request(
                Version::HTTP_11,
                Method::POST,
                "http://web.example/",
                "secret",
            ),
        )
        .await
        .unwrap_err();
    assert!(error.nothing_sent(), "{error}");
    assert!(
        matches!(error.hop_error(), Some(HopError::Handshake { .. })),
        "{error}"
    );
    assert_eq!(hop.app.accepts.load(Ordering::SeqCst), 0);
    assert_eq!(hop.opened.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_request_headers_cost_one_stream_not_the_connection() {
    let hop = Hop::start_with(
        |config| config.http.max_header_list_size = 16 * 1024,
        H2ClientConfig::default(),
    )
    .await;
    let get = || request(Version::HTTP_11, Method::GET, "http://web.example/", "");
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);

    let mut big = get();
    big.headers_mut()
        .insert("x-big", "x".repeat(32 * 1024).parse().unwrap());
    match timeout(PATIENCE, hop.client.send(&hop.endpoint, big))
        .await
        .unwrap()
    {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        Err(error) => assert!(matches!(error, HttpHopError::Request { .. }), "{error}"),
    }

    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);
    assert_eq!(hop.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_app_that_is_down_is_a_502_from_the_proxy() {
    let mut hop = Hop::start().await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    hop.endpoint.app_port = closed.port();
    let response = hop
        .send(request(
            Version::HTTP_11,
            Method::GET,
            "http://web.example/",
            "",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.headers().contains_key("mesh-proxy-error"));
    assert!(text(response).await.contains("refused"));
}

#[tokio::test]
async fn an_app_that_does_not_answer_in_time_is_a_504_and_the_connection_lives_on() {
    let hop = Hop::start_with(
        |config| config.http.response_timeout = Some(Duration::from_millis(100)),
        H2ClientConfig::default(),
    )
    .await;
    let response = hop
        .send(request(
            Version::HTTP_11,
            Method::GET,
            "http://web.example/hang",
            "",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(response.headers().contains_key("mesh-proxy-error"));
    let response = hop
        .send(request(
            Version::HTTP_11,
            Method::GET,
            "http://web.example/",
            "",
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(hop.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_inbound_side_closes_when_idle_is_replaced() {
    let mut hop = Hop::start_with(
        |config| config.http.idle_timeout = Duration::from_millis(100),
        H2ClientConfig::default(),
    )
    .await;
    let get = || request(Version::HTTP_11, Method::GET, "http://web.example/", "");
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);
    // GOAWAY, then the close: the client forgets the connection.
    hop.closed().await;
    timeout(PATIENCE, async {
        while hop.client.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);
    assert_eq!(hop.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn inbound_requests_are_counted_and_tapped_without_the_query() {
    let metrics = ProxyMetrics::default();
    let tap = Tap::default();
    let mut watcher = tap.subscribe();
    let hop = Hop::start_with(
        |config| {
            config.metrics = Some(metrics.clone());
            config.tap = Some(tap.clone());
        },
        H2ClientConfig::default(),
    )
    .await;
    let mut req = request(Version::HTTP_11, Method::GET, "/orders?token=secret", "");
    req.headers_mut()
        .insert("host", "web.example:8080".parse().unwrap());
    assert_eq!(hop.send(req).await.status(), StatusCode::OK);

    let event = timeout(PATIENCE, watcher.recv()).await.unwrap().unwrap();
    assert_eq!(event.method, Method::GET);
    assert_eq!(event.authority, "web.example:8080");
    assert_eq!(event.path, "/orders");
    assert_eq!(event.status, Some(StatusCode::OK));
    assert_eq!(event.client_id.as_ref(), Some(&hop.client_id));

    let text = metrics.encode();
    let labels = format!(
        "direction=\"inbound\",authority=\"web.example:8080\",dst_cluster=\"\",dst_service=\"\",\
         tls=\"true\",client_id=\"{}\",server_id=\"\"",
        hop.client_id
    );
    assert!(
        text.contains(&format!("request_total{{{labels}}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "response_total{{{labels},status_code=\"200\",classification=\"success\"}} 1"
        )),
        "{text}"
    );
    assert!(!text.contains("secret"));
}

#[tokio::test]
async fn idle_connections_are_closed_and_drain_sends_the_rest_away() {
    let mut config = H2ClientConfig::default();
    config.idle_timeout = Duration::from_millis(100);
    let mut hop = Hop::start_with(|_| {}, config).await;
    let get = || request(Version::HTTP_11, Method::GET, "http://web.example/", "");
    assert_eq!(hop.send(get()).await.status(), StatusCode::OK);
    // The client closes the unused connection; the inbound side sees it end.
    hop.closed().await;
    assert_eq!(hop.client.connections(), 0);

    // A connection in use when the drain starts: it goes away gracefully, the listener
    // returns, and the next request cannot connect (nothing sent).
    let response = hop.send(get()).await;
    let serve = hop.serve.take().unwrap();
    let draining = tokio::spawn(hop.drain.take().unwrap().drain());
    assert_eq!(text(response).await, "");
    timeout(PATIENCE, serve).await.unwrap().unwrap();
    timeout(PATIENCE, draining).await.unwrap().unwrap();
    let error = hop.client.send(&hop.endpoint, get()).await.unwrap_err();
    assert!(error.nothing_sent(), "{error}");
}

/// How the fake peer below answers every stream.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// `RST_STREAM(REFUSED_STREAM)`: the stream was not processed (RFC 9113 §8.7).
    RefusedStream,
    /// `RST_STREAM(INTERNAL_ERROR)`: the stream may have been processed.
    InternalError,
    /// `GOAWAY(NO_ERROR)` with last stream ID 0, before taking any stream, on a connection
    /// that then stays open.
    GoAway,
}

/// A peer that passes the mesh handshake as east's `web` and then answers HTTP/2 with
/// `refusal`, as a real inbound proxy may under load or while shutting down.
async fn refusing_peer(hop: &Hop, refusal: Refusal) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let creds = hop.east.creds("web");
    let tls = tokio_rustls::TlsAcceptor::from(pki::inbound_tls(&hop.bundles, creds));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut stream = tls.accept(tcp).await.unwrap();
                // One byte at a time, so that nothing after the header is consumed.
                let mut header = bytes::BytesMut::new();
                while MeshTransportHeader::decode(&mut header.clone())
                    .unwrap()
                    .is_none()
                {
                    header.extend_from_slice(&[stream.read_u8().await.unwrap()]);
                }
                if matches!(refusal, Refusal::GoAway) {
                    // Raw frames, so that the GOAWAY goes out before any stream is read: an
                    // empty SETTINGS (the server preface), then GOAWAY(last stream 0, NO_ERROR).
                    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
                    const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    stream.write_all(&SETTINGS).await.unwrap();
                    stream.write_all(&GOAWAY).await.unwrap();
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                    return;
                }
                let mut conn = h2::server::handshake(stream).await.unwrap();
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(match refusal {
                        Refusal::InternalError => h2::Reason::INTERNAL_ERROR,
                        _ => h2::Reason::REFUSED_STREAM,
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn only_refusals_that_prove_nothing_was_processed_say_nothing_was_sent() {
    for (refusal, nothing_sent) in [
        (Refusal::RefusedStream, true),
        (Refusal::GoAway, true),
        (Refusal::InternalError, false),
    ] {
        let mut hop = Hop::start().await;
        hop.endpoint.proxy = refusing_peer(&hop, refusal).await;
        let error = timeout(
            PATIENCE,
            hop.client.send(
                &hop.endpoint,
                request(
                    Version::HTTP_11,
                    Method::POST,
                    "http://web.example/",
                    "once",
                ),
            ),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(error, HttpHopError::Request { .. }),
            "{refusal:?}: {error}"
        );
        assert_eq!(error.nothing_sent(), nothing_sent, "{refusal:?}: {error}");
    }
}
