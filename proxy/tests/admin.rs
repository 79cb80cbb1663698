//! The admin server over loopback: probes, metrics, shutdown, the limits that keep a slow client
//! from costing more than one connection, and a drain that lets a slow scrape finish.
//!
//! Clients write HTTP/1.1 by hand on a raw `TcpStream`, so that a test can also misbehave (stall
//! mid-header, read slowly). The header timeout is a few hundred milliseconds so the slowloris
//! test costs little wall time.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proxy::admin::{
    AdminConfig, AdminState, OPENMETRICS_CONTENT_TYPE, Readiness, ShutdownRequests, serve,
    shutdown_channel,
};
use mesh_proxy::drain;
use mesh_proxy::metrics::{
    Classification, Direction, Labels, MetricsConfig, ProxyMetrics, TlsStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a test waits for anything it expects; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// A running admin server and the handles a binary would hold.
struct Admin {
    addr: SocketAddr,
    metrics: ProxyMetrics,
    readiness: Readiness,
    requests: ShutdownRequests,
    drain: drain::Drain,
    server: JoinHandle<std::io::Result<()>>,
}

async fn start(metrics: ProxyMetrics) -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(listener, metrics)
}

fn start_on(listener: TcpListener, metrics: ProxyMetrics) -> Admin {
    let addr = listener.local_addr().unwrap();
    let readiness = Readiness::new();
    let (trigger, requests) = shutdown_channel();
    let state =
        AdminState::new(metrics.clone(), readiness.clone(), trigger).with_config(AdminConfig {
            header_read_timeout: HEADER_TIMEOUT,
            ..AdminConfig::default()
        });
    let (drain, watch) = drain::channel();
    let server = tokio::spawn(serve(listener, state, watch));
    Admin {
        addr,
        metrics,
        readiness,
        requests,
        drain,
        server,
    }
}

/// A parsed response: status, headers (names lowercased) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse(raw: &[u8]) -> Reply {
    let raw = std::str::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    parse(&raw)
}

fn outbound(authority: &str) -> Labels {
    Labels {
        authority: authority.into(),
        dst_cluster: "east".into(),
        dst_service: "web".into(),
        ..Labels::new(Direction::Outbound, TlsStatus::Mutual)
    }
}

#[tokio::test]
async fn live_is_always_200() {
    let admin = start(ProxyMetrics::default()).await;
    let rsp = request(admin.addr, "GET", "/live").await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body, "live\n");
}

#[tokio::test]
async fn ready_is_503_until_the_flag_is_set() {
    let admin = start(ProxyMetrics::default()).await;
    let rsp = request(admin.addr, "GET", "/ready").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.body, "not ready\n");

    admin.readiness.set_ready(true);
    let rsp = request(admin.addr, "GET", "/ready").await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body, "ready\n");
}

#[tokio::test]
async fn metrics_are_openmetrics_text() {
    let admin = start(ProxyMetrics::default()).await;
    let labels = outbound("web.default.svc.cluster.local:80");
    admin.metrics.request(&labels);
    admin.metrics.response(
        &labels,
        http::StatusCode::OK,
        Classification::Success,
        Duration::from_millis(3),
    );

    let rsp = request(admin.addr, "GET", "/metrics").await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(rsp.body.contains("# TYPE request counter"), "{}", rsp.body);
    assert!(
        rsp.body
            .contains("authority=\"web.default.svc.cluster.local:80\""),
        "{}",
        rsp.body
    );
    assert!(
        rsp.body
            .contains("status_code=\"200\",classification=\"success\"} 1")
    );
    assert!(rsp.body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let admin = start(ProxyMetrics::default()).await;
    assert_eq!(request(admin.addr, "GET", "/admin").await.status, 404);
    let rsp = request(admin.addr, "DELETE", "/metrics").await;
    assert_eq!(rsp.status, 405);
    assert_eq!(rsp.header("allow"), Some("GET, HEAD"));
    let rsp = request(admin.addr, "GET", "/shutdown").await;
    assert_eq!(rsp.status, 405);
    assert_eq!(rsp.header("allow"), Some("POST"));
}

#[tokio::test]
async fn shutdown_from_loopback_reaches_the_binary() {
    let mut admin = start(ProxyMetrics::default()).await;
    let rsp = request(admin.addr, "POST", "/shutdown").await;
    assert_eq!(rsp.status, 202, "{}", rsp.body);
    timeout(PATIENCE, admin.requests.requested())
        .await
        .expect("the shutdown request never reached the binary");

    // What the binary does next: drain, after which the admin server is gone.
    timeout(PATIENCE, admin.drain.drain()).await.unwrap();
    timeout(PATIENCE, admin.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_slowloris_is_dropped_after_the_header_timeout_while_others_are_served() {
    let admin = start(ProxyMetrics::default()).await;
    // Taken before connecting: hyper's timer starts once it accepts, which is later.
    let stalled_at = Instant::now();
    let mut slow = TcpStream::connect(admin.addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: adm")
        .await
        .unwrap();

    // Meanwhile, another client is served, before the stalled one could have been dropped.
    let rsp = timeout(HEADER_TIMEOUT, request(admin.addr, "GET", "/live"))
        .await
        .expect("a well-behaved client waited behind the slowloris");
    assert_eq!(rsp.status, 200);

    // The server closes the stalled connection (perhaps after a 408) once the timeout passes.
    let mut rest = Vec::new();
    let closed = timeout(PATIENCE, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slowloris connection was never closed");
    let waited = stalled_at.elapsed();
    assert!(
        waited >= HEADER_TIMEOUT,
        "closed before the timeout: {waited:?}"
    );
    assert!(
        waited < HEADER_TIMEOUT + Duration::from_secs(1),
        "closed long after the timeout: {waited:?}"
    );
    if !rest.is_empty() {
        assert_ne!(parse(&rest).status, 200);
    }
}

#[tokio::test]
async fn drain_lets_a_slow_scrape_finish_then_serve_returns() {
    // Enough series that the response cannot sit in the (shrunk) socket buffers: the server
    // is still writing it when the drain starts.
    let metrics = ProxyMetrics::new(MetricsConfig {
        max_label_sets: 10_000,
    });
    let padding = "x".repeat(150);
    for i in 0..4_000 {
        metrics.request(&outbound(&format!("svc-{i}-{padding}:80")));
    }
    let socket = TcpSocket::new_v4().unwrap();
    // Accepted sockets inherit the listener's send buffer.
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let admin = start_on(listener, metrics);
    let addr = admin.addr;

    let client = TcpSocket::new_v4().unwrap();
    client.set_recv_buffer_size(4096).unwrap();
    let mut scrape = client.connect(addr).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0; 1024];
    let n = timeout(PATIENCE, scrape.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));

    let Admin {
        drain, mut server, ..
    } = admin;
    let draining = tokio::spawn(drain.drain());

    // The listener closes at once: new clients are refused rather than left waiting.
    let refused = timeout(PATIENCE, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the admin listener kept accepting while draining"
    );

    // The scrape is still in flight, so neither the server nor the drain is done.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.is_finished(),
        "serve returned with a response in flight"
    );
    assert!(!draining.is_finished());

    // The slow scraper reads on and gets the whole response; the keep-alive request was
    // turned into a close by the drain.
    let mut raw = first[..n].to_vec();
    timeout(PATIENCE, scrape.read_to_end(&mut raw))
        .await
        .expect("the connection stayed open after its response")
        .unwrap();
    let rsp = parse(&raw);
    assert_eq!(rsp.status, 200);
    let length: usize = rsp.header("content-length").unwrap().parse().unwrap();
    assert_eq!(rsp.body.len(), length);
    assert!(
        length > 500_000,
        "the response was too small to stay in flight: {length}"
    );
    assert!(rsp.body.ends_with("# EOF\n"));

    timeout(PATIENCE, &mut server)
        .await
        .expect("serve did not return after its last connection")
        .unwrap()
        .unwrap();
    timeout(PATIENCE, draining).await.unwrap().unwrap();
}
