//! The tap server on 127.0.0.1, watched through the generated gRPC client, with events published
//! by the test through `Tap::publish` as the data path would.
//!
//! Real time, not paused: hyper and tonic keep their own timers on the sockets. Waits are bounded
//! by `PATIENCE` and only ever guard against a hang.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use mesh_api::tap::tap_client::TapClient;
use mesh_api::tap::tap_event::Kind;
use mesh_api::tap::{self as proto, ObserveRequest, TapEvent};
use mesh_proxy::drain::{self, Drain};
use mesh_proxy::metrics::Direction;
use mesh_proxy::tap::{self, ObserveError, RequestEvent, Tap, TapServerConfig};
use mesh_trust::SpiffeId;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tonic::{Code, Status, Streaming};

const WEB: &str = "web.default.svc.cluster.local:80";
const PATIENCE: Duration = Duration::from_secs(5);

/// A tap server on an ephemeral loopback port.
struct Fixture {
    addr: SocketAddr,
    tap: Tap,
    drain: Drain,
    server: JoinHandle<()>,
}

impl Fixture {
    async fn start(capacity: usize, config: TapServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tap = Tap::new(capacity);
        let (drain, watch) = drain::channel();
        let server = tokio::spawn(tap::serve(listener, tap.clone(), config, watch));
        Self {
            addr,
            tap,
            drain,
            server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn observe(&self, request: ObserveRequest) -> Result<Streaming<TapEvent>, ObserveError> {
        timeout(PATIENCE, tap::observe(&self.endpoint(), request))
            .await
            .unwrap()
    }

    /// Waits until nobody watches the tap any more.
    async fn inactive(&self) {
        timeout(PATIENCE, async {
            while self.tap.is_active() {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the tap still has a watcher");
    }
}

fn event(direction: Direction, authority: &str, path: &str) -> RequestEvent {
    RequestEvent {
        direction,
        method: http::Method::GET,
        authority: authority.to_owned(),
        path: path.to_owned(),
        status: Some(http::StatusCode::OK),
        error: None,
        latency: Duration::from_micros(250),
        started: SystemTime::now(),
        client_id: None,
        server_id: None,
        peer: None,
    }
}

async fn next(stream: &mut Streaming<TapEvent>) -> Option<Result<TapEvent, Status>> {
    timeout(PATIENCE, stream.next())
        .await
        .expect("no event arrived")
}

async fn next_request(stream: &mut Streaming<TapEvent>) -> proto::RequestEvent {
    match next(stream).await.unwrap().unwrap().kind.unwrap() {
        Kind::Request(request) => request,
        other => panic!("expected a request event, got {other:?}"),
    }
}

fn refusal(result: Result<Streaming<TapEvent>, ObserveError>) -> Status {
    match result {
        Err(error) => error.status().cloned().unwrap_or_else(|| panic!("{error}")),
        Ok(_) => panic!("the tap accepted the watcher"),
    }
}

#[tokio::test]
async fn only_matching_events_arrive_in_order() {
    let fx = Fixture::start(64, TapServerConfig::default()).await;
    let mut stream = fx
        .observe(ObserveRequest {
            authority: WEB.to_owned(),
            path_prefix: "/api".to_owned(),
            direction: proto::Direction::Inbound.into(),
            limit: 0,
        })
        .await
        .unwrap();
    assert!(fx.tap.is_active());

    let published = [
        (Direction::Inbound, WEB, "/api/1", true),
        (Direction::Outbound, WEB, "/api/x", false),
        (
            Direction::Inbound,
            "other.default.svc.cluster.local:80",
            "/api/x",
            false,
        ),
        (Direction::Inbound, WEB, "/web/x", false),
        (Direction::Inbound, WEB, "/api/2", true),
        (
            Direction::Inbound,
            "WEB.default.svc.cluster.local:80",
            "/api/3",
            true,
        ),
        (
            Direction::Inbound,
            "web.default.svc.cluster.local:8080",
            "/api/x",
            false,
        ),
        (Direction::Inbound, WEB, "/api", true),
    ];
    for (direction, authority, path, _) in published {
        fx.tap.publish(event(direction, authority, path));
    }
    let expected: Vec<&str> = published
        .iter()
        .filter(|(.., wanted)| *wanted)
        .map(|(_, _, path, _)| *path)
        .collect();
    let mut received = Vec::new();
    for _ in &expected {
        received.push(next_request(&mut stream).await.path);
    }
    assert_eq!(received, expected);

    // A full event crosses the wire field for field.
    let started = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001);
    fx.tap.publish(RequestEvent {
        method: http::Method::DELETE,
        status: None,
        error: Some("connection reset".to_owned()),
        started,
        client_id: Some(SpiffeId::parse("spiffe://west/ns/default/sa/client").unwrap()),
        server_id: Some(SpiffeId::parse("spiffe://west/ns/default/sa/web").unwrap()),
        peer: Some("10.0.0.7:4143".parse().unwrap()),
        ..event(Direction::Inbound, WEB, "/api/full")
    });
    assert_eq!(
        next_request(&mut stream).await,
        proto::RequestEvent {
            direction: proto::Direction::Inbound.into(),
            method: "DELETE".to_owned(),
            authority: WEB.to_owned(),
            path: "/api/full".to_owned(),
            status_code: 0,
            error: "connection reset".to_owned(),
            latency_micros: 250,
            start_unix_micros: 1_700_000_000_000_001,
            client_identity: "spiffe://west/ns/default/sa/client".to_owned(),
            server_identity: "spiffe://west/ns/default/sa/web".to_owned(),
            peer_addr: "10.0.0.7:4143".to_owned(),
        }
    );
}

#[tokio::test]
async fn the_limit_ends_the_stream() {
    let fx = Fixture::start(64, TapServerConfig::default()).await;
    let mut stream = fx
        .observe(ObserveRequest {
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..5 {
        fx.tap
            .publish(event(Direction::Outbound, WEB, &format!("/{i}")));
    }
    for i in 0..3 {
        assert_eq!(next_request(&mut stream).await.path, format!("/{i}"));
    }
    // The stream ends cleanly, with no error, and the subscription is gone.
    assert!(next(&mut stream).await.is_none());
    fx.inactive().await;
}

#[tokio::test]
async fn a_slow_watcher_is_told_what_it_lost_and_goes_on() {
    // A current-thread runtime: the server cannot read the tap while this test publishes, so
    // the watcher's buffer of 4 overflows exactly as a watcher that reads too slowly would.
    let fx = Fixture::start(4, TapServerConfig::default()).await;
    let mut stream = fx.observe(ObserveRequest::default()).await.unwrap();
    for i in 0..20 {
        fx.tap
            .publish(event(Direction::Inbound, WEB, &format!("/{i}")));
    }
    let notice = next(&mut stream).await.unwrap().unwrap();
    assert_eq!(
        notice.kind,
        Some(Kind::Lost(proto::EventsLost { count: 16 }))
    );
    for i in 16..20 {
        assert_eq!(next_request(&mut stream).await.path, format!("/{i}"));
    }
    fx.tap.publish(event(Direction::Inbound, WEB, "/after"));
    assert_eq!(next_request(&mut stream).await.path, "/after");
}

#[tokio::test]
async fn a_watcher_that_leaves_is_unsubscribed_at_once() {
    let config = TapServerConfig {
        max_watchers: 1,
        ..Default::default()
    };
    let fx = Fixture::start(64, config).await;
    let stream = fx.observe(ObserveRequest::default()).await.unwrap();
    assert!(fx.tap.is_active());
    // Nothing is published: the server learns of the departure from the stream reset alone.
    drop(stream);
    fx.inactive().await;
    // And the watcher's slot is free again.
    let mut again = fx.observe(ObserveRequest::default()).await.unwrap();
    fx.tap.publish(event(Direction::Inbound, WEB, "/again"));
    assert_eq!(next_request(&mut again).await.path, "/again");
}

#[tokio::test]
async fn watchers_beyond_the_cap_are_refused() {
    let config = TapServerConfig {
        max_watchers: 2,
        ..Default::default()
    };
    let fx = Fixture::start(64, config).await;
    let first = fx.observe(ObserveRequest::default()).await.unwrap();
    let _second = fx.observe(ObserveRequest::default()).await.unwrap();
    let status = refusal(fx.observe(ObserveRequest::default()).await);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("2 watchers"),
        "{}",
        status.message()
    );

    drop(first);
    timeout(PATIENCE, async {
        while fx.observe(ObserveRequest::default()).await.is_err() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a freed slot was never given to a new watcher");
}

#[tokio::test]
async fn a_bad_filter_is_refused_with_what_to_fix() {
    let fx = Fixture::start(64, TapServerConfig::default()).await;
    let status = refusal(
        fx.observe(ObserveRequest {
            path_prefix: "api/v1".to_owned(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("must start with '/'"),
        "{}",
        status.message()
    );
    assert!(!fx.tap.is_active());
}

#[tokio::test]
async fn drain_ends_watchers_and_stops_the_server() {
    let fx = Fixture::start(64, TapServerConfig::default()).await;
    let mut stream = fx.observe(ObserveRequest::default()).await.unwrap();
    let Fixture {
        addr,
        tap,
        drain,
        server,
    } = fx;

    let draining = tokio::spawn(drain.drain());
    let ended = next(&mut stream).await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(next(&mut stream).await.is_none());
    timeout(PATIENCE, draining).await.unwrap().unwrap();
    timeout(PATIENCE, server).await.unwrap().unwrap();
    assert!(!tap.is_active());

    // The port is closed.
    let error = timeout(
        PATIENCE,
        tap::observe(&format!("http://{addr}"), ObserveRequest::default()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(error, ObserveError::Connect { .. }), "{error}");
}

#[tokio::test]
async fn drain_does_not_wait_forever_for_a_watcher_that_stopped_reading() {
    let config = TapServerConfig {
        drain_grace: Duration::from_millis(200),
        ..Default::default()
    };
    let fx = Fixture::start(4096, config).await;
    // A client with the smallest HTTP/2 window, which this test then never reads from: the
    // server's stream stalls on flow control once a few dozen events are on their way.
    let channel = tonic::transport::Endpoint::from_shared(fx.endpoint())
        .unwrap()
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .connect()
        .await
        .unwrap();
    let _stalled = TapClient::new(channel)
        .observe(ObserveRequest::default())
        .await
        .unwrap()
        .into_inner();
    for i in 0..2000 {
        fx.tap
            .publish(event(Direction::Inbound, WEB, &format!("/{i}")));
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Give the server a moment to fill the window and stall.
    sleep(Duration::from_millis(50)).await;
    assert!(fx.tap.is_active());
    timeout(PATIENCE, fx.drain.drain())
        .await
        .expect("drain waited for a watcher that does not read");
    timeout(PATIENCE, fx.server).await.unwrap().unwrap();
}
