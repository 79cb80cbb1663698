//! The meshed opaque-TCP hop end to end over loopback: an outbound proxy (`connect_meshed`) in
//! `west`, an inbound proxy (`serve_inbound`) in `east` in front of a test application, all in
//! one process. Timeouts are a few hundred milliseconds so that the misbehaving peers below cost
//! little wall time.
#![allow(clippy::unwrap_used)]

#[path = "support/mesh_pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_api::ports::{ALPN_H2, ALPN_OPAQUE};
use mesh_proxy::detect::Protocol;
use mesh_proxy::drain;
use mesh_proxy::tcp::{
    EventHook, HopError, HopStage, InboundConfig, InboundError, InboundEvent, Transferred,
    connect_meshed, connect_meshed_alpn, connect_plain, serve_inbound,
};
use mesh_proxy::transport_header::MeshTransportHeader;
use mesh_trust::SpiffeId;
use pki::Domain;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

const DETECT_TIMEOUT: Duration = Duration::from_millis(250);
const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a test waits for anything it expects; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// What the test application does with each connection.
#[derive(Clone, Copy)]
enum App {
    /// Echoes every byte until end of stream, then closes.
    Echo,
    /// Writes a banner on accept, before reading anything, then echoes.
    Banner,
    /// Reads to end of stream, then answers how many bytes it got and closes.
    CountAfterEof,
}

const BANNER: &[u8] = b"220 app ready\r\n";

/// Two proxies and an application: west's outbound config, east's inbound listener.
struct Mesh {
    client_id: SpiffeId,
    client_tls: Arc<rustls::ClientConfig>,
    server_id: SpiffeId,
    west: Domain,
    bundles: mesh_trust::SharedTrustBundles,
    inbound: SocketAddr,
    app_port: u16,
    app_accepts: Arc<AtomicUsize>,
    events: mpsc::UnboundedReceiver<InboundEvent>,
    drain: Option<drain::Drain>,
    serve: Option<JoinHandle<()>>,
}

impl Mesh {
    async fn start(app: App) -> Self {
        Self::start_with(app, |_| {}).await
    }

    async fn start_with(app: App, tweak: impl FnOnce(&mut InboundConfig)) -> Self {
        let west = Domain::new("west");
        let east = Domain::new("east");
        // Linked clusters: each proxy trusts both domains.
        let bundles = pki::bundles(&[&west, &east]);
        let client_id = west.id("client");
        let server_id = east.id("server");
        let client_tls = pki::outbound_tls(&bundles, west.creds("client"), &server_id, ALPN_OPAQUE);

        let (app_port, app_accepts) = spawn_app(app).await;
        let (tx, events) = mpsc::unbounded_channel();
        let mut config = InboundConfig::new(pki::inbound_tls(&bundles, east.creds("server")));
        config.detect_timeout = DETECT_TIMEOUT;
        config.header_timeout = HEADER_TIMEOUT;
        config.idle_timeout = PATIENCE;
        config.events = Some(EventHook::new(move |event| {
            let _ = tx.send(event);
        }));
        tweak(&mut config);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound = listener.local_addr().unwrap();
        let (drain, watch) = drain::channel();
        let serve = tokio::spawn(serve_inbound(listener, config, watch));
        Self {
            client_id,
            client_tls,
            server_id,
            west,
            bundles,
            inbound,
            app_port,
            app_accepts,
            events,
            drain: Some(drain),
            serve: Some(serve),
        }
    }

    fn header(&self) -> MeshTransportHeader {
        MeshTransportHeader {
            port: self.app_port,
            authority: None,
            protocol: ProtocolHint::Opaque,
        }
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HopError> {
        connect_meshed(
            self.inbound,
            &self.server_id,
            self.client_tls.clone(),
            &self.header(),
            CONNECT_TIMEOUT,
        )
        .await
    }

    /// A meshed connection, one echoed message, and a clean close: proof the proxy still serves.
    async fn good_round_trip(&self) {
        let mut conn = self.connect().await.unwrap();
        conn.write_all(b"still here").await.unwrap();
        let mut echoed = Vec::new();
        conn.shutdown().await.unwrap();
        timeout(PATIENCE, conn.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"still here");
    }

    /// A raw mesh TLS client from west offering `alpn`, for peers that misbehave after the
    /// handshake.
    async fn raw_tls(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tls = pki::outbound_tls(
            &self.bundles,
            self.west.creds("client"),
            &self.server_id,
            alpn,
        );
        let tcp = TcpStream::connect(self.inbound).await.unwrap();
        let name = ServerName::try_from("mesh.internal").unwrap();
        TlsConnector::from(tls).connect(name, tcp).await.unwrap()
    }

    async fn event(&mut self) -> InboundEvent {
        timeout(PATIENCE, self.events.recv())
            .await
            .unwrap()
            .unwrap()
    }

    /// Skips events until a connection closes in a way `matches` accepts; returns that event's
    /// peer and result.
    async fn closed_with(
        &mut self,
        matches: impl Fn(&Result<Transferred, InboundError>) -> bool,
    ) -> (Option<SpiffeId>, Result<Transferred, InboundError>) {
        loop {
            if let InboundEvent::Closed { peer, result, .. } = self.event().await {
                if matches(&result) {
                    return (peer, result);
                }
            }
        }
    }
}

/// An application on loopback; returns its port and a count of the connections it accepted.
async fn spawn_app(app: App) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                match app {
                    App::Echo | App::Banner => {
                        if matches!(app, App::Banner) {
                            sock.write_all(BANNER).await.unwrap();
                        }
                        let (mut r, mut w) = sock.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    App::CountAfterEof => {
                        let mut got = Vec::new();
                        sock.read_to_end(&mut got).await.unwrap();
                        let reply = format!("got {} bytes", got.len());
                        sock.write_all(reply.as_bytes()).await.unwrap();
                        sock.shutdown().await.unwrap();
                    }
                }
            });
        }
    });
    (port, accepts)
}

/// Reads until the peer closes (cleanly or not) and returns what came.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = timeout(PATIENCE, io.read_to_end(&mut got)).await.unwrap();
    got
}

#[tokio::test]
async fn bytes_round_trip_and_inbound_sees_the_callers_identity() {
    let mut mesh = Mesh::start(App::Echo).await;
    let mut conn = mesh.connect().await.unwrap();
    conn.write_all(b"hello east").await.unwrap();
    let mut echoed = [0u8; 10];
    conn.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello east");

    let InboundEvent::Opened {
        peer, header, app, ..
    } = mesh.event().await
    else {
        panic!("expected Opened first");
    };
    assert_eq!(peer, mesh.client_id);
    assert_eq!(header, mesh.header());
    assert_eq!(app.port(), mesh.app_port);

    conn.shutdown().await.unwrap();
    assert!(read_until_closed(&mut conn).await.is_empty());
    let (peer, result) = mesh.closed_with(|_| true).await;
    assert_eq!(peer.as_ref(), Some(&mesh.client_id));
    assert_eq!(
        result.unwrap(),
        Transferred {
            a_to_b: 10,
            b_to_a: 10
        }
    );
}

#[tokio::test]
async fn a_wrong_server_identity_is_refused_before_any_byte_is_sent() {
    let mut mesh = Mesh::start(App::Echo).await;
    let someone_else = mesh
        .server_id
        .trust_domain()
        .workload("default", "other")
        .unwrap();
    let tls = pki::outbound_tls(
        &mesh.bundles,
        mesh.west.creds("client"),
        &someone_else,
        ALPN_OPAQUE,
    );
    let err = connect_meshed(
        mesh.inbound,
        &someone_else,
        tls,
        &mesh.header(),
        CONNECT_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HopError::Handshake { .. }), "{err}");

    // The inbound side saw the client abort the handshake: no header, no application.
    let (peer, result) = mesh.closed_with(|_| true).await;
    assert!(peer.is_none());
    assert!(
        matches!(result, Err(InboundError::Handshake(_))),
        "{result:?}"
    );
    assert_eq!(mesh.app_accepts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_that_speaks_first_works_through_the_hop() {
    let mesh = Mesh::start(App::Banner).await;
    let mut conn = mesh.connect().await.unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    timeout(PATIENCE, conn.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(banner, BANNER);
    conn.write_all(b"HELO").await.unwrap();
    let mut echoed = [0u8; 4];
    conn.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"HELO");
}

#[tokio::test]
async fn half_close_reaches_the_app_and_its_reply_still_comes_back() {
    let mut mesh = Mesh::start(App::CountAfterEof).await;
    let mut conn = mesh.connect().await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    conn.shutdown().await.unwrap();
    let reply = read_until_closed(&mut conn).await;
    assert_eq!(reply, b"got 4 bytes");
    let (_, result) = mesh.closed_with(|_| true).await;
    assert_eq!(
        result.unwrap(),
        Transferred {
            a_to_b: 4,
            b_to_a: 11
        }
    );
}

#[tokio::test]
async fn a_garbage_transport_header_costs_one_connection() {
    let mut mesh = Mesh::start(App::Echo).await;
    let mut bad = mesh.raw_tls(ALPN_OPAQUE).await;
    // A frame that declares three bytes and holds no valid message.
    bad.write_all(&[0x03, 0xff, 0xff, 0xff]).await.unwrap();
    bad.flush().await.unwrap();
    mesh.good_round_trip().await;

    let (peer, result) = mesh
        .closed_with(|r| matches!(r, Err(InboundError::TransportHeader(_))))
        .await;
    // The header came from an authenticated peer, and the log names it.
    assert_eq!(peer.as_ref(), Some(&mesh.client_id));
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("bad transport header")
    );
    assert!(read_until_closed(&mut bad).await.is_empty());
}

#[tokio::test]
async fn a_header_naming_one_of_the_proxys_own_ports_is_refused() {
    // The admin port trusts loopback clients (POST /shutdown); the inbound side connects from
    // loopback, so a meshed peer must never be spliced to it, nor to the other proxy ports.
    let mut mesh = Mesh::start_with(App::Echo, |config| {
        config.denied_ports.insert(9000); // an explicit outbound listener, say
    })
    .await;
    for port in [4191u16, 4190, 4140, 4143, 9000] {
        let header = MeshTransportHeader {
            port,
            authority: None,
            protocol: ProtocolHint::Opaque,
        };
        let mut conn = connect_meshed(
            mesh.inbound,
            &mesh.server_id,
            mesh.client_tls.clone(),
            &header,
            CONNECT_TIMEOUT,
        )
        .await
        .unwrap();
        conn.write_all(b"POST /shutdown HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (peer, result) = mesh
            .closed_with(|r| matches!(r, Err(InboundError::Loop { .. })))
            .await;
        assert_eq!(peer.as_ref(), Some(&mesh.client_id));
        assert!(
            matches!(result, Err(InboundError::Loop { port: p }) if p == port),
            "port {port}"
        );
        assert!(read_until_closed(&mut conn).await.is_empty());
    }
    mesh.good_round_trip().await;
}

#[tokio::test]
async fn a_plain_text_client_costs_one_connection() {
    let mut mesh = Mesh::start(App::Echo).await;
    let mut plain = TcpStream::connect(mesh.inbound).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    mesh.good_round_trip().await;

    let (peer, result) = mesh
        .closed_with(|r| matches!(r, Err(InboundError::NotMeshed { .. })))
        .await;
    assert!(peer.is_none());
    assert!(
        matches!(
            result,
            Err(InboundError::NotMeshed {
                protocol: Protocol::Http1 { .. },
                ..
            })
        ),
        "{result:?}"
    );
    assert!(read_until_closed(&mut plain).await.is_empty());
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_at_the_detect_timeout() {
    let mut mesh = Mesh::start(App::Echo).await;
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(mesh.inbound).await.unwrap();
    mesh.good_round_trip().await;

    let (_, result) = mesh
        .closed_with(|r| matches!(r, Err(InboundError::NotMeshed { .. })))
        .await;
    assert!(
        matches!(result, Err(InboundError::NotMeshed { sent: 0, .. })),
        "{result:?}"
    );
    assert!(started.elapsed() >= DETECT_TIMEOUT);
    assert!(read_until_closed(&mut silent).await.is_empty());
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_its_handshake_costs_one_connection() {
    let mut mesh = Mesh::start(App::Echo).await;
    // A genuine ClientHello offering mesh.opaque, and then nothing.
    let mut hello = Vec::new();
    let name = ServerName::try_from("mesh.internal").unwrap();
    rustls::ClientConnection::new(mesh.client_tls.clone(), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    let mut stalled = TcpStream::connect(mesh.inbound).await.unwrap();
    stalled.write_all(&hello).await.unwrap();
    mesh.good_round_trip().await;

    let (_, result) = mesh
        .closed_with(|r| matches!(r, Err(InboundError::HandshakeTimeout(_))))
        .await;
    assert!(result.is_err());
    // The server's flight arrives, then the close.
    assert!(!read_until_closed(&mut stalled).await.is_empty());
}

#[tokio::test]
async fn mesh_h2_is_served_with_the_peers_identity() {
    let mut mesh = Mesh::start(App::Echo).await;
    let header = MeshTransportHeader {
        port: mesh.app_port,
        authority: None,
        protocol: ProtocolHint::Http,
    };
    let tls = pki::outbound_tls(
        &mesh.bundles,
        mesh.west.creds("client"),
        &mesh.server_id,
        ALPN_H2,
    );
    let stream = connect_meshed_alpn(
        mesh.inbound,
        &mesh.server_id,
        tls,
        ALPN_H2,
        &header,
        CONNECT_TIMEOUT,
    )
    .await
    .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);

    let InboundEvent::Opened {
        peer,
        header: seen,
        app,
        ..
    } = mesh.event().await
    else {
        panic!("expected Opened first");
    };
    assert_eq!(peer, mesh.client_id);
    assert_eq!(seen, header);
    assert_eq!(app.port(), mesh.app_port);

    // The echo application is not an HTTP server: the request reaches it, the bytes that come
    // back are not a response, and the proxy answers 502 on that stream alone.
    let request = http::Request::builder()
        .uri("http://echo.default:80/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = timeout(PATIENCE, send.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    assert!(response.headers().contains_key("mesh-proxy-error"));
    assert_eq!(mesh.app_accepts.load(Ordering::SeqCst), 1);

    // The last stream and the last sender gone, the client closes the connection.
    drop(response);
    drop(send);
    timeout(PATIENCE, driver).await.unwrap().unwrap().unwrap();
    let (peer, result) = mesh.closed_with(|_| true).await;
    assert_eq!(peer.as_ref(), Some(&mesh.client_id));
    let transferred = result.unwrap();
    assert!(
        transferred.a_to_b > 0 && transferred.b_to_a > 0,
        "{transferred:?}"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let mut mesh = Mesh::start_with(App::Echo, |c| c.max_connections = 1).await;
    let mut first = mesh.connect().await.unwrap();
    first.write_all(b"1").await.unwrap();
    let mut byte = [0u8; 1];
    first.read_exact(&mut byte).await.unwrap();
    assert!(matches!(mesh.event().await, InboundEvent::Opened { .. }));

    let err = mesh.connect().await.unwrap_err();
    assert!(matches!(err, HopError::Handshake { .. }), "{err}");
    assert!(matches!(
        mesh.event().await,
        InboundEvent::Overloaded { limit: 1, .. }
    ));

    // The first connection still works, and once it is gone there is room again.
    first.write_all(b"2").await.unwrap();
    first.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"2");
    first.shutdown().await.unwrap();
    read_until_closed(&mut first).await;
    let (_, result) = mesh.closed_with(|_| true).await;
    assert!(result.is_ok(), "{result:?}");
    mesh.good_round_trip().await;
}

#[tokio::test]
async fn drain_stops_accepting_and_waits_for_spliced_connections() {
    let mut mesh = Mesh::start(App::Echo).await;
    let mut conn = mesh.connect().await.unwrap();
    conn.write_all(b"before").await.unwrap();
    let mut echoed = [0u8; 6];
    conn.read_exact(&mut echoed).await.unwrap();

    let draining = tokio::spawn(mesh.drain.take().unwrap().drain());
    // The listener closes: connections are refused by the kernel.
    timeout(PATIENCE, async {
        while TcpStream::connect(mesh.inbound).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let serve = mesh.serve.take().unwrap();
    assert!(!serve.is_finished(), "returned with a connection in flight");
    assert!(!draining.is_finished());

    // The connection in flight still works to its end.
    conn.write_all(b"after").await.unwrap();
    conn.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut conn).await, b"after");
    timeout(PATIENCE, serve).await.unwrap().unwrap();
    timeout(PATIENCE, draining).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_outbound_handshake_that_stalls_times_out() {
    let mesh = Mesh::start(App::Echo).await;
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let (_sock, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let timeout = Duration::from_millis(200);
    let err = connect_meshed(
        addr,
        &mesh.server_id,
        mesh.client_tls.clone(),
        &mesh.header(),
        timeout,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            HopError::Timeout {
                stage: HopStage::Handshake,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn plain_hops_connect_without_tls_or_header() {
    let (port, _) = spawn_app(App::Banner).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = connect_plain(addr, CONNECT_TIMEOUT).await.unwrap();
    let mut banner = vec![0u8; BANNER.len()];
    conn.read_exact(&mut banner).await.unwrap();
    assert_eq!(banner, BANNER);

    // Nothing listens on the port of a listener just closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = connect_plain(closed, CONNECT_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, HopError::Connect { .. }), "{err}");
}
