//! `mesh_proxy::run` in process, against a test controller: the identity obtained from the
//! identity service and renewed, trust bundles that follow the controller's `TrustBundles.Watch`
//! stream live (over plaintext and over mesh TLS), the last good set kept when the stream breaks,
//! and readiness that waits for all of it.
//!
//! Every listener binds 127.0.0.1:0. A peer is "trusted" when a meshed connection from it to the
//! proxy's inbound listener reaches the echo app behind it and back.
#![allow(clippy::unwrap_used)]

use mesh_test_support::apps::echo_app;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_api::discovery::trust_bundles_server::{TrustBundles, TrustBundlesServer};
use mesh_api::discovery::{TrustBundleSet as BundleUpdate, TrustDomainBundle, WatchTrustBundles};
use mesh_api::ports::ALPN_OPAQUE;
use mesh_proxy::run::{
    ControllerAddr, DiscoverySource, IdentitySource, Proxy, ProxyConfig, Running,
};
use mesh_proxy::tcp::connect_meshed;
use mesh_proxy::transport_header::MeshTransportHeader;
use mesh_test_support::pki::{Domain, bundles};
use mesh_trust::ca::Validity;
use mesh_trust::identity::{self, IdentityService, StaticTokens};
use mesh_trust::rotation::RotationOptions;
use mesh_trust::tls::{CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId, x509};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

const PATIENCE: Duration = Duration::from_secs(10);

// === the test controller: TrustBundles.Watch ===

#[derive(Clone)]
struct Bundles(watch::Receiver<BundleUpdate>);

#[tonic::async_trait]
impl TrustBundles for Bundles {
    type WatchStream = ReceiverStream<Result<BundleUpdate, Status>>;

    async fn watch(
        &self,
        _request: Request<WatchTrustBundles>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut current = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let update = current.borrow_and_update().clone();
                if tx.send(Ok(update)).await.is_err() || current.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn update(domains: &[&Domain], sequence: u64) -> BundleUpdate {
    BundleUpdate {
        domains: domains
            .iter()
            .map(|d| TrustDomainBundle {
                trust_domain: d.td.to_string(),
                roots: vec![d.root.certificate().to_vec()],
            })
            .collect(),
        sequence,
    }
}

/// The controller's TrustBundles service on `listener`, in plaintext; aborting the task is a
/// controller that went away, its connections cut.
fn serve_bundles_plain(listener: TcpListener, bundles: Bundles) -> JoinHandle<()> {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TrustBundlesServer::new(bundles))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    })
}

/// The same over mesh TLS: the controller presents `creds` and requires a workload certificate.
fn serve_bundles_tls(
    listener: TcpListener,
    bundles: Bundles,
    trust: SharedTrustBundles,
    creds: WorkloadCredentials,
) -> JoinHandle<()> {
    let config = mesh_trust::tls::server_config(
        trust,
        PeerPolicy::AnyDomain,
        Arc::new(CertResolver::new(creds).unwrap()),
        &[b"h2"],
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                }
            });
        }
    });
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TrustBundlesServer::new(bundles))
            .serve_with_incoming(ReceiverStream::new(rx))
            .await
            .unwrap();
    })
}

// === the proxy under test ===

fn loopback(config: &mut ProxyConfig) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.inbound_addr = any;
    config.outbound_addr = any;
    config.admin_addr = any;
    config.tap_addr = any;
    config.reload_interval = Duration::from_millis(100);
    config.shutdown_grace = Duration::from_secs(2);
}

struct Started {
    running: Running,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), mesh_proxy::run::RunError>>,
}

async fn start(config: ProxyConfig) -> Started {
    let proxy = Proxy::bind(config).await.unwrap();
    let running = proxy.running().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.serve(async {
        let _ = stopped.await;
    }));
    Started {
        running,
        stop,
        task,
    }
}

impl Started {
    async fn ready(&self) -> bool {
        status(self.running.admin, "/ready").await == Some(200)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.ready().await {
            assert!(Instant::now() < deadline, "never ready");
            sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.ok()?;
        String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    timeout(Duration::from_secs(2), exchange).await.ok()?
}

/// A meshed connection as `client` to the proxy (which must be `proxy_id`), through to the echo
/// app: the serial of the leaf the proxy presented, or `None` if the proxy refused the client.
async fn meshed_echo(
    running: &Running,
    app: SocketAddr,
    client: &WorkloadCredentials,
    client_trust: &SharedTrustBundles,
    proxy_id: &SpiffeId,
) -> Option<String> {
    let config = mesh_trust::tls::client_config(
        client_trust.clone(),
        PeerPolicy::Exactly(proxy_id.clone()),
        Some(Arc::new(CertResolver::new(client.clone()).unwrap())),
        &[ALPN_OPAQUE],
    )
    .unwrap();
    let header = MeshTransportHeader {
        port: app.port(),
        authority: None,
        protocol: ProtocolHint::Opaque,
    };
    let exchange = async {
        let mut tls = connect_meshed(
            running.inbound,
            proxy_id,
            Arc::new(config),
            &header,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
        let serial = x509::parse(&tls.get_ref().1.peer_certificates()?[0])
            .ok()?
            .serial;
        tls.write_all(b"ping").await.ok()?;
        let mut echoed = [0; 4];
        tls.read_exact(&mut echoed).await.ok()?;
        (&echoed == b"ping").then_some(serial)
    };
    timeout(Duration::from_secs(3), exchange).await.ok()?
}

/// Writes `request` and reads until the peer closes (or an error, or a second passes).
async fn exchange(
    mut conn: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &[u8],
) -> Vec<u8> {
    let mut answer = Vec::new();
    if conn.write_all(request).await.is_ok() {
        let _ = timeout(Duration::from_secs(1), conn.read_to_end(&mut answer)).await;
    }
    answer
}

/// Waits until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

// === the tests ===

#[tokio::test(flavor = "multi_thread")]
async fn identity_from_the_service_and_bundles_from_the_controller_stream() {
    let (west, east) = (Domain::new("west"), Domain::new("east"));
    let app = echo_app().await;
    let web = west.id("web");
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "web-token\n").unwrap();

    // The identity service, as the controller serves it. A leaf that lives 2 s (plus the clock
    // skew allowance) is due for renewal at once, so renewals follow each other quickly.
    let controller_id = west.td.workload("mesh-system", "mesh-controller").unwrap();
    let controller_creds = west.creds_with(
        &controller_id,
        Validity::starting_now(Duration::from_secs(3600)),
    );
    let identity_tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(mesh_trust::tls::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CertResolver::new(controller_creds).unwrap()));
    let identity_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let identity_port = identity_listener.local_addr().unwrap().port();
    let tokens = StaticTokens::new().with("web-token", "default", "web");
    let service = IdentityService::new(west.issuer.clone(), tokens, Duration::from_secs(2));
    tokio::spawn(identity::serve(
        identity_listener,
        identity_tls,
        service,
        std::future::pending(),
    ));

    // The controller's bundle stream: both domains at first.
    let (bundle_updates, current) = watch::channel(update(&[&west, &east], 1));
    let bundles_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bundles_addr = bundles_listener.local_addr().unwrap();
    let controller = serve_bundles_plain(bundles_listener, Bundles(current));

    let identity = IdentitySource::Service {
        addr: ControllerAddr {
            tls: true,
            host: "127.0.0.1".into(),
            port: identity_port,
        },
        token_file,
        identity: web.clone(),
    };
    let discovery = DiscoverySource::Controller {
        addr: ControllerAddr::parse(&format!("http://{bundles_addr}"), 0).unwrap(),
    };
    let mut config = ProxyConfig::new(identity, discovery);
    loopback(&mut config);
    config.rotation = RotationOptions {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(200),
        ..RotationOptions::default()
    };
    let proxy = start(config).await;
    proxy.wait_ready().await;

    let trust_both = bundles(&[&west, &east]);
    let (west_client, east_client) = (west.creds("client"), east.creds("client"));
    let first = meshed_echo(&proxy.running, app, &east_client, &trust_both, &web)
        .await
        .expect("an east client is trusted while the controller links east");
    assert!(
        meshed_echo(&proxy.running, app, &west_client, &trust_both, &web)
            .await
            .is_some()
    );

    // The leaf is renewed through the identity service and served without a restart.
    eventually("a renewed leaf", || async {
        meshed_echo(&proxy.running, app, &west_client, &trust_both, &web)
            .await
            .is_some_and(|serial| serial != first)
    })
    .await;

    // East is unlinked: the controller's next set drops it, and east clients are refused.
    bundle_updates.send(update(&[&west], 2)).unwrap();
    eventually("east refused", || async {
        meshed_echo(&proxy.running, app, &east_client, &trust_both, &web)
            .await
            .is_none()
    })
    .await;
    // An update that would trust nobody is refused whole; west stays trusted.
    bundle_updates.send(update(&[], 3)).unwrap();
    sleep(Duration::from_millis(200)).await;
    assert!(
        meshed_echo(&proxy.running, app, &west_client, &trust_both, &web)
            .await
            .is_some()
    );

    // The controller goes away: the last good set stays, and so does readiness.
    controller.abort();
    assert!(controller.await.unwrap_err().is_cancelled());
    sleep(Duration::from_millis(200)).await;
    assert!(
        meshed_echo(&proxy.running, app, &west_client, &trust_both, &web)
            .await
            .is_some()
    );
    assert!(
        meshed_echo(&proxy.running, app, &east_client, &trust_both, &web)
            .await
            .is_none()
    );
    assert!(proxy.ready().await);

    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_the_identity_service() {
    let west = Domain::new("west");
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "web-token").unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    west.bundle().save_pem_dir(&bundle).unwrap();
    let discovery = tmp.path().join("discovery.json");
    std::fs::write(&discovery, "{}").unwrap();
    // Nothing listens here: the identity service is down.
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_port = down.local_addr().unwrap().port();
    drop(down);

    let identity = IdentitySource::Service {
        addr: ControllerAddr {
            tls: true,
            host: "127.0.0.1".into(),
            port: down_port,
        },
        token_file,
        identity: west.id("web"),
    };
    let mut config = ProxyConfig::new(identity, DiscoverySource::File { path: discovery });
    config.trust_bundle = Some(bundle);
    loopback(&mut config);
    config.rotation.initial_backoff = Duration::from_millis(50);
    config.rotation.max_backoff = Duration::from_millis(100);
    let proxy = start(config).await;
    // The admin server answers from the start, and says not ready while there is no identity.
    sleep(Duration::from_millis(300)).await;
    assert_eq!(status(proxy.running.admin, "/live").await, Some(200));
    assert_eq!(status(proxy.running.admin, "/ready").await, Some(503));
    // A shutdown before any identity arrived still ends cleanly.
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_discovery_adds_linked_domains_to_the_bundle_file() {
    let (west, east) = (Domain::new("west"), Domain::new("east"));
    let app = echo_app().await;
    let tmp = tempfile::tempdir().unwrap();

    // The workload's files: its leaf, and a bundle that trusts only its own domain.
    let web = west.creds("web");
    let id_dir = tmp.path().join("identity");
    mesh_test_support::pki::write_identity_dir(&id_dir, &web);
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    west.bundle().save_pem_dir(&bundle).unwrap();

    // The controller, over mesh TLS, streams west and east.
    let controller_id = west.td.workload("mesh-system", "mesh-controller").unwrap();
    let controller_creds = west.creds_with(
        &controller_id,
        Validity::starting_now(Duration::from_secs(3600)),
    );
    let (_updates, current) = watch::channel(update(&[&west, &east], 1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_bundles_tls(
        listener,
        Bundles(current),
        bundles(&[&west]),
        controller_creds,
    );

    let identity = IdentitySource::Dir {
        dir: id_dir,
        expected: Some(west.id("web")),
    };
    let discovery = DiscoverySource::Controller {
        addr: ControllerAddr::parse(&format!("https://{addr}"), 0).unwrap(),
    };
    let mut config = ProxyConfig::new(identity, discovery);
    config.trust_bundle = Some(bundle.clone());
    loopback(&mut config);
    let proxy = start(config).await;
    proxy.wait_ready().await;

    let trust_both = bundles(&[&west, &east]);
    let east_client = east.creds("client");
    eventually("east trusted through the controller", || async {
        meshed_echo(
            &proxy.running,
            app,
            &east_client,
            &trust_both,
            &west.id("web"),
        )
        .await
        .is_some()
    })
    .await;

    // The file's own roots stay in force beside the stream's: a third domain added to the file
    // is trusted too, without a restart.
    let north = Domain::new("north");
    let mut with_north = west.bundle();
    with_north.merge(&north.bundle());
    with_north.save_pem_dir(&bundle).unwrap();
    let north_client = north.creds("client");
    let trust_all = bundles(&[&west, &east, &north]);
    eventually("north trusted from the file", || async {
        meshed_echo(
            &proxy.running,
            app,
            &north_client,
            &trust_all,
            &west.id("web"),
        )
        .await
        .is_some()
    })
    .await;
    assert!(
        meshed_echo(
            &proxy.running,
            app,
            &east_client,
            &trust_all,
            &west.id("web")
        )
        .await
        .is_some()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_an_error_naming_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let identity = IdentitySource::Dir {
        dir: "/nonexistent".into(),
        expected: None,
    };
    let mut config = ProxyConfig::new(
        identity,
        DiscoverySource::File {
            path: "/nonexistent.json".into(),
        },
    );
    loopback(&mut config);
    config.tap_addr = taken_addr;
    let err = Proxy::bind(config).await.unwrap_err().to_string();
    assert!(
        err.contains("--tap-addr") && err.contains(&taken_addr.to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_meshed_peer_cannot_reach_the_proxys_own_ports() {
    let (west, east) = (Domain::new("west"), Domain::new("east"));
    let app = echo_app().await;
    let tmp = tempfile::tempdir().unwrap();
    let web = west.creds("web");
    let id_dir = tmp.path().join("identity");
    mesh_test_support::pki::write_identity_dir(&id_dir, &web);
    let bundle = tmp.path().join("bundle.json");
    let mut both = west.bundle();
    both.merge(&east.bundle());
    std::fs::write(&bundle, both.to_spiffe_json_map().unwrap()).unwrap();
    let discovery = tmp.path().join("discovery.json");
    std::fs::write(&discovery, "{}").unwrap();

    let identity = IdentitySource::Dir {
        dir: id_dir,
        expected: None,
    };
    let mut config = ProxyConfig::new(identity, DiscoverySource::File { path: discovery });
    config.trust_bundle = Some(bundle);
    config.outbound_maps = vec![mesh_proxy::run::OutboundMap {
        listen: "127.0.0.1:0".parse().unwrap(),
        authority: "web.default.svc.cluster.local:80".into(),
    }];
    loopback(&mut config);
    let proxy = start(config).await;
    proxy.wait_ready().await;

    let trust = bundles(&[&west, &east]);
    let client = east.creds("client");
    let web_id = west.id("web");
    // The app is reachable...
    assert!(
        meshed_echo(&proxy.running, app, &client, &trust, &web_id)
            .await
            .is_some()
    );
    // ...but the admin server, which listens where the app does and trusts loopback clients,
    // is not: the inbound listener refuses a header naming any of the proxy's own ports.
    let running = &proxy.running;
    let live = b"GET /live HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n";
    let direct = TcpStream::connect(running.admin).await.unwrap();
    assert!(String::from_utf8_lossy(&exchange(direct, live).await).contains("200 OK"));
    for own in [
        running.admin,
        running.tap,
        running.outbound,
        running.maps[0],
    ] {
        let header = MeshTransportHeader {
            port: own.port(),
            authority: None,
            protocol: ProtocolHint::Opaque,
        };
        let config = mesh_trust::tls::client_config(
            trust.clone(),
            PeerPolicy::Exactly(web_id.clone()),
            Some(Arc::new(CertResolver::new(client.clone()).unwrap())),
            &[ALPN_OPAQUE],
        )
        .unwrap();
        let meshed = connect_meshed(
            running.inbound,
            &web_id,
            Arc::new(config),
            &header,
            PATIENCE,
        )
        .await
        .unwrap();
        let answer = exchange(meshed, live).await;
        assert!(
            answer.is_empty(),
            "{own} answered through the inbound listener: {answer:?}"
        );
    }
    proxy.stop().await;
}
