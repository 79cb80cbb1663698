//! Tunnels through the local gateway, on loopback: a west proxy (`connect_tunnelled`), a test
//! gateway of west that speaks the tunnel frames and relays to east, and east's inbound proxy in
//! front of an echo application. The gateway is scripted to misbehave in each way a proxy must
//! survive: refusals, silence, broken frames, a foreign endpoint, the wrong certificate.
#![allow(clippy::unwrap_used)]

#[path = "support/mesh_pki.rs"]
mod pki;
#[path = "support/tunnel_gateway.rs"]
mod tunnel_gateway;

use mesh_test_support::apps::echo_app;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_api::frame::FrameError;
use mesh_api::ports::ALPN_OPAQUE;
use mesh_api::tunnel::OpenStatus;
use mesh_proxy::discovery::TunnelMeta;
use mesh_proxy::drain;
use mesh_proxy::outbound::OutboundTls;
use mesh_proxy::tcp::{EventHook, HopError, InboundConfig, InboundEvent, serve_inbound};
use mesh_proxy::transport_header::{Authority, MeshTransportHeader};
use mesh_proxy::tunnel::{
    Fault, MAX_GATEWAY_MESSAGE_CHARS, MAX_OPEN_RESPONSE_LEN, OpenStage, ProtocolViolation, Refusal,
    TunnelError, TunnelErrorKind, connect_tunnelled,
};
use mesh_trust::tls::CertResolver;
use mesh_trust::{SharedTrustBundles, SpiffeId};
use pki::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tunnel_gateway::{Answer, TunnelGateway};

const AUTHORITY: &str = "echo.default.svc.cluster.local:7000";
/// A string no TLS record would contain by chance: if a gateway saw it, it saw plaintext.
const PAYLOAD: &[u8] = b"plaintext-only-the-two-proxies-may-see";
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a test waits for anything it expects; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// West (the calling proxy and its gateway's PKI) and east (the echo app behind its inbound
/// proxy, which reports every connection).
struct Mesh {
    west: Domain,
    east: Domain,
    bundles: SharedTrustBundles,
    client_id: SpiffeId,
    tls: OutboundTls,
    app_port: u16,
    inbound: SocketAddr,
    events: mpsc::UnboundedReceiver<InboundEvent>,
    _inbound_drain: drain::Drain,
}

impl Mesh {
    async fn start() -> Self {
        let west = Domain::new("west");
        let east = Domain::new("east");
        let bundles = pki::bundles(&[&west, &east]);
        let app_port = echo_app().await.port();

        let (events_tx, events) = mpsc::unbounded_channel();
        let mut config = InboundConfig::new(pki::inbound_tls(&bundles, east.creds("echo")));
        config.events = Some(EventHook::new(move |event| {
            let _ = events_tx.send(event);
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound = listener.local_addr().unwrap();
        let (inbound_drain, watch) = drain::channel();
        tokio::spawn(serve_inbound(listener, config, watch));

        let tls = OutboundTls::new(
            bundles.clone(),
            Arc::new(CertResolver::new(west.creds("client")).unwrap()),
        );
        Self {
            client_id: west.id("client"),
            west,
            east,
            bundles,
            tls,
            app_port,
            inbound,
            events,
            _inbound_drain: inbound_drain,
        }
    }

    /// West's gateway, as the discovery data names it, answering with `answer`.
    async fn gateway(&self, answer: Answer) -> TunnelGateway {
        TunnelGateway::start(
            &self.bundles,
            self.west.creds("gateway"),
            &self.west.td,
            answer,
        )
        .await
    }

    /// A gateway that answers OK naming `identity` and relays to east's inbound proxy.
    async fn relaying_gateway(&self, identity: &SpiffeId) -> TunnelGateway {
        self.gateway(Answer::Relay {
            identity: identity.to_string(),
            upstream: self.inbound,
        })
        .await
    }

    /// A gateway that answers `status` and relays nothing.
    async fn answering_gateway(&self, status: i32, identity: &str, message: &str) -> TunnelGateway {
        self.gateway(Answer::Status {
            status,
            identity: identity.into(),
            message: message.into(),
        })
        .await
    }

    /// What discovery says about east's echo service, reached through `gateway`.
    fn tunnel(&self, gateway: SocketAddr) -> TunnelMeta {
        TunnelMeta {
            cluster: "east".into(),
            authority: AUTHORITY.into(),
            gateway,
            gateway_identity: self.west.id("gateway"),
            remote_trust_domain: self.east.td.clone(),
        }
    }

    fn header(&self) -> MeshTransportHeader {
        MeshTransportHeader {
            port: self.app_port,
            authority: Some(Authority::parse(AUTHORITY).unwrap()),
            protocol: ProtocolHint::Opaque,
        }
    }

    async fn connect(
        &self,
        tunnel: &TunnelMeta,
        timeout: Duration,
    ) -> Result<(mesh_proxy::tunnel::TunnelStream, SpiffeId), TunnelError> {
        self.connect_expecting(tunnel, None, timeout).await
    }

    async fn connect_expecting(
        &self,
        tunnel: &TunnelMeta,
        expected: Option<&SpiffeId>,
        timeout: Duration,
    ) -> Result<(mesh_proxy::tunnel::TunnelStream, SpiffeId), TunnelError> {
        connect_tunnelled(
            &self.tls,
            &self.client_id,
            tunnel,
            expected,
            ALPN_OPAQUE,
            &self.header(),
            timeout,
        )
        .await
    }

    /// Opens a tunnel through `gateway` that must fail, and checks what every tunnel error
    /// promises: nothing of the application's was sent, and the tunnel is named.
    async fn refused(&self, gateway: &TunnelGateway, timeout: Duration) -> TunnelError {
        let error = self
            .connect(&self.tunnel(gateway.addr), timeout)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(error.nothing_sent(), "{error}");
        assert_eq!(error.cluster, "east");
        assert_eq!(error.authority, AUTHORITY);
        assert_eq!(error.gateway, gateway.addr);
        error
    }

    async fn event(&mut self) -> InboundEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no inbound event in time")
            .unwrap()
    }
}

/// A protobuf varint: a frame's length prefix.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn tunnelled_round_trip_carries_the_callers_identity_end_to_end() {
    let mut mesh = Mesh::start().await;
    let endpoint = mesh.east.id("echo");
    let mut gateway = mesh.relaying_gateway(&endpoint).await;

    let (mut stream, reported) = mesh
        .connect(&mesh.tunnel(gateway.addr), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reported, endpoint);
    stream.write_all(PAYLOAD).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, PAYLOAD);

    // East's proxy saw west's workload, not the gateway: identity holds end to end.
    let InboundEvent::Opened {
        peer, header, app, ..
    } = mesh.event().await
    else {
        panic!("expected the inbound connection to open");
    };
    assert_eq!(peer, mesh.client_id);
    assert_eq!(header, mesh.header());
    assert_eq!(app.port(), mesh.app_port);

    // The gateway authenticated the caller, and was asked for east's service.
    let seen = gateway.seen().await;
    assert_eq!(seen.caller.as_ref(), Some(&mesh.client_id));
    let open = seen.open.unwrap();
    assert_eq!(open.target_cluster, "east");
    assert_eq!(open.authority, AUTHORITY);
    assert_eq!(open.protocol_hint, i32::from(ProtocolHint::Opaque));
    assert_eq!(open.caller_identity, mesh.client_id.to_string());

    // After the open it carried only TLS records (starting with the inner ClientHello), never
    // the application's bytes, either way.
    assert_eq!(seen.from_caller.first(), Some(&0x16), "not a TLS handshake");
    assert!(!contains(&seen.from_caller, PAYLOAD));
    assert!(!seen.to_caller.is_empty());
    assert!(!contains(&seen.to_caller, PAYLOAD));
}

#[tokio::test]
async fn a_gateway_cannot_choose_an_endpoint_other_than_the_one_discovery_names() {
    let mesh = Mesh::start().await;
    // The gateway names another workload of the remote domain (its own identity, say, to
    // terminate the inner TLS itself); discovery said the service runs as east's "echo".
    let mut gateway = mesh.relaying_gateway(&mesh.east.id("gateway")).await;
    let error = mesh
        .connect_expecting(
            &mesh.tunnel(gateway.addr),
            Some(&mesh.east.id("echo")),
            TIMEOUT,
        )
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&error.kind, TunnelErrorKind::UnexpectedEndpoint { endpoint, expected }
            if *endpoint == mesh.east.id("gateway") && *expected == mesh.east.id("echo")),
        "{error:?}"
    );
    assert!(error.nothing_sent());
    // Closed right after the open: not even the inner ClientHello went through.
    assert!(gateway.seen().await.from_caller.is_empty());
    // With the identity discovery names, the same tunnel works.
    let good = mesh.relaying_gateway(&mesh.east.id("echo")).await;
    mesh.connect_expecting(
        &mesh.tunnel(good.addr),
        Some(&mesh.east.id("echo")),
        TIMEOUT,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn each_refusal_is_typed_and_sent_nothing() {
    let mesh = Mesh::start().await;
    let cases = [
        (
            OpenStatus::NotExported,
            Refusal::NotExported,
            Fault::RemoteService,
        ),
        (
            OpenStatus::NoEndpoints,
            Refusal::NoEndpoints,
            Fault::RemoteService,
        ),
        (
            OpenStatus::Unreachable,
            Refusal::Unreachable,
            Fault::RemoteEndpoint,
        ),
        (OpenStatus::Forbidden, Refusal::Forbidden, Fault::Local),
        (OpenStatus::BadRequest, Refusal::BadRequest, Fault::Local),
    ];
    for (status, refusal, fault) in cases {
        let mut gateway = mesh
            .answering_gateway(status.into(), "", "service web is not here")
            .await;
        let error = mesh.refused(&gateway, TIMEOUT).await;
        assert!(
            matches!(&error.kind, TunnelErrorKind::Refused { refusal: r, message } if *r == refusal && message == "service web is not here"),
            "{status:?}: {error:?}"
        );
        assert_eq!(error.fault(), fault, "{status:?}");
        assert!(
            error.to_string().contains("service web is not here"),
            "{error}"
        );
        // The caller hung up right after the answer.
        assert!(gateway.seen().await.from_caller.is_empty());
    }

    // A status the protocol does not allow is the gateway's fault, whatever it says.
    for status in [0, 99] {
        let gateway = mesh.answering_gateway(status, "", "").await;
        let error = mesh.refused(&gateway, TIMEOUT).await;
        let expected = match status {
            0 => ProtocolViolation::UnspecifiedStatus,
            _ => ProtocolViolation::UnknownStatus(status),
        };
        assert!(
            matches!(&error.kind, TunnelErrorKind::Protocol { violation, .. } if *violation == expected),
            "{error:?}"
        );
        assert_eq!(error.fault(), Fault::Gateway);
    }
}

#[tokio::test]
async fn the_gateways_message_is_sanitised() {
    let mesh = Mesh::start().await;
    // Long, but within the frame cap: the message is cut here, not refused as a frame.
    let hostile = format!("line one\r\nFAKE LOG LINE\u{1b}[2J{}", "x".repeat(3_000));
    let gateway = mesh
        .answering_gateway(OpenStatus::NoEndpoints.into(), "", &hostile)
        .await;
    let error = mesh.refused(&gateway, TIMEOUT).await;
    let TunnelErrorKind::Refused { message, .. } = &error.kind else {
        panic!("{error:?}");
    };
    assert!(
        message.starts_with("line oneFAKE LOG LINE[2Jxxx"),
        "{message}"
    );
    assert!(message.ends_with("..."), "{message}");
    assert_eq!(message.chars().count(), MAX_GATEWAY_MESSAGE_CHARS + 3);
    assert!(!message.chars().any(char::is_control));
    assert!(!error.to_string().contains('\n'));
}

#[tokio::test]
async fn an_endpoint_outside_the_remote_domain_is_refused_before_any_byte() {
    let mut mesh = Mesh::start().await;
    // The gateway claims the endpoint is one of west's own workloads, then another domain's;
    // either way it relays to east's proxy, so only the caller's check stands in the way.
    for foreign in [mesh.west.id("echo"), Domain::new("south").id("echo")] {
        let mut gateway = mesh.relaying_gateway(&foreign).await;
        let error = mesh.refused(&gateway, TIMEOUT).await;
        assert!(
            matches!(&error.kind, TunnelErrorKind::ForeignEndpoint { endpoint, remote } if *endpoint == foreign && *remote == mesh.east.td),
            "{error:?}"
        );
        assert_eq!(error.fault(), Fault::Gateway);
        // Not a byte after the open: not even the inner ClientHello.
        assert!(gateway.seen().await.from_caller.is_empty());
    }
    // An identity that is not a SPIFFE ID is a protocol error.
    let mut gateway = mesh
        .answering_gateway(OpenStatus::Ok.into(), "east/ns/default/sa/echo", "")
        .await;
    let error = mesh.refused(&gateway, TIMEOUT).await;
    assert!(
        matches!(
            &error.kind,
            TunnelErrorKind::Protocol {
                violation: ProtocolViolation::EndpointIdentity { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(gateway.seen().await.from_caller.is_empty());

    // East's proxy never got as far as a handshake.
    while let Ok(event) = mesh.events.try_recv() {
        assert!(
            !matches!(event, InboundEvent::Opened { .. }),
            "unexpected {event:?}"
        );
    }
}

#[tokio::test]
async fn the_inner_handshake_requires_exactly_the_reported_endpoint() {
    let mut mesh = Mesh::start().await;
    // The gateway names another east workload than the one it relays to (east's echo proxy).
    let reported = mesh.east.id("web");
    let mut gateway = mesh.relaying_gateway(&reported).await;
    let error = mesh.refused(&gateway, TIMEOUT).await;
    assert!(
        matches!(&error.kind, TunnelErrorKind::Inner { endpoint, source } if *endpoint == reported && matches!(**source, HopError::Handshake { .. })),
        "{error:?}"
    );
    assert_eq!(error.fault(), Fault::RemoteEndpoint);

    // The inner ClientHello went through, and nothing else reached the application.
    let seen = gateway.seen().await;
    assert_eq!(seen.from_caller.first(), Some(&0x16), "not a TLS handshake");
    let InboundEvent::Closed { peer, result, .. } = mesh.event().await else {
        panic!("expected the inbound connection to close without opening");
    };
    assert_eq!(peer, None);
    assert!(result.is_err());
}

#[tokio::test]
async fn a_gateway_without_the_expected_identity_is_refused() {
    let mesh = Mesh::start().await;
    let imposters = [
        // A west workload, but not the gateway.
        mesh.west.creds("imposter"),
        // East's gateway, at the address of west's.
        mesh.east.creds("gateway"),
    ];
    for creds in imposters {
        let mut gateway =
            TunnelGateway::start(&mesh.bundles, creds, &mesh.west.td, Answer::Silent).await;
        let error = mesh.refused(&gateway, TIMEOUT).await;
        assert!(
            matches!(&error.kind, TunnelErrorKind::Gateway(hop) if matches!(&**hop, HopError::Handshake { expected, .. } if *expected == mesh.west.id("gateway"))),
            "{error:?}"
        );
        assert_eq!(error.fault(), Fault::Gateway);
        // The open request, which says what this workload calls, was never sent.
        assert!(gateway.seen().await.open.is_none());
    }
}

#[tokio::test]
async fn a_gateway_of_another_domain_is_refused_without_connecting() {
    let mesh = Mesh::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut tunnel = mesh.tunnel(listener.local_addr().unwrap());
    tunnel.gateway_identity = mesh.east.id("gateway");

    let error = mesh
        .connect(&tunnel, TIMEOUT)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&error.kind, TunnelErrorKind::ForeignGateway { gateway_identity, own } if *gateway_identity == mesh.east.id("gateway") && *own == mesh.west.td),
        "{error:?}"
    );
    assert!(error.nothing_sent());
    assert_eq!(error.fault(), Fault::Local);
    // A connection attempt would sit in the listener's backlog by now.
    let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the proxy connected to a foreign gateway"
    );
}

#[tokio::test]
async fn a_silent_gateway_hits_the_deadline() {
    let mesh = Mesh::start().await;
    let mut gateway = mesh.gateway(Answer::Silent).await;
    let error = mesh.refused(&gateway, Duration::from_millis(300)).await;
    assert!(
        matches!(
            error.kind,
            TunnelErrorKind::Timeout {
                stage: OpenStage::AwaitResponse,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.fault(), Fault::Gateway);
    // The proxy hung up at the deadline, without sending anything after the open.
    let seen = gateway.seen().await;
    assert!(seen.open.is_some());
    assert!(seen.from_caller.is_empty());
}

#[tokio::test]
async fn broken_response_frames_are_clean_errors() {
    let mesh = Mesh::start().await;
    let just_over = varint(MAX_OPEN_RESPONSE_LEN as u64 + 1);
    let huge = varint(64 << 20);

    type Check = fn(&FrameError) -> bool;
    let cases: [(&str, Vec<u8>, Check); 5] = [
        (
            "just over the cap",
            just_over,
            |e| matches!(e, FrameError::Oversized { max, .. } if *max == MAX_OPEN_RESPONSE_LEN),
        ),
        ("64 MiB declared", huge, |e| {
            matches!(e, FrameError::Oversized { .. })
        }),
        ("wire type 7", vec![0x01, 0x0f], |e| {
            matches!(e, FrameError::MalformedMessage { .. })
        }),
        ("cut in the body", vec![0x05, 0x08], |e| {
            matches!(e, FrameError::Truncated { .. })
        }),
        ("over-long length prefix", vec![0x80; 11], |e| {
            matches!(e, FrameError::MalformedLength)
        }),
    ];
    for (case, bytes, check) in cases {
        let mut gateway = mesh.gateway(Answer::Raw(bytes)).await;
        let error = mesh.refused(&gateway, TIMEOUT).await;
        assert!(
            matches!(&error.kind, TunnelErrorKind::ReadResponse(e) if check(e)),
            "{case}: {error:?}"
        );
        assert_eq!(error.fault(), Fault::Gateway, "{case}");
        assert!(gateway.seen().await.from_caller.is_empty(), "{case}");
    }

    // A gateway that closes without answering.
    let gateway = mesh.gateway(Answer::Raw(Vec::new())).await;
    let error = mesh.refused(&gateway, TIMEOUT).await;
    assert!(
        matches!(error.kind, TunnelErrorKind::NoResponse),
        "{error:?}"
    );
}
