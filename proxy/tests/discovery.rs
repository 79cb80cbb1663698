//! Discovery against a real gRPC controller on 127.0.0.1, whose answers each test controls.
//!
//! Real time, not paused: hyper and tonic keep their own timers on the sockets, and an
//! auto-advancing clock fires them spuriously. Reconnect delays are configured in milliseconds
//! instead, so the slowest test (a controller restart) still takes well under a second.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::common::SocketAddr as ProtoSocketAddr;
use mesh_api::discovery::destination_server::{Destination as DestinationApi, DestinationServer};
use mesh_api::discovery::{Endpoint, GetDestination, Update, get_destination};
use mesh_proxy::discovery::{
    Destination, DestinationWatch, FileProblem, GrpcDiscovery, GrpcDiscoveryOptions,
    ReconnectBackoff, Resolve, StaticDiscovery, StaticDiscoveryError, Target,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

const WEB: &str = "web.default.svc.cluster.local:80";
const PATIENCE: Duration = Duration::from_secs(2);

// === the test controller ===

/// What the controller serves and what it saw; survives restarts of the server.
#[derive(Default)]
struct Controller {
    /// The snapshot every stream sends, whatever its target.
    snapshot: watch::Sender<Update>,
    /// Streams opened since the start.
    opened: AtomicUsize,
    /// Streams still open.
    active: AtomicUsize,
    /// The target of each request.
    targets: Mutex<Vec<Option<get_destination::Target>>>,
    /// Fail every stream right after its first answer, as a flapping controller would.
    flap: std::sync::atomic::AtomicBool,
}

/// One run of the gRPC server; stopping it ends every stream, as a controller restart does.
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Service {
    controller: Arc<Controller>,
    stopping: watch::Receiver<bool>,
}

/// Counts a stream as active for as long as it lives.
struct ActiveStream(Arc<Controller>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl DestinationApi for Service {
    type GetStream = ReceiverStream<Result<Update, Status>>;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let controller = self.controller.clone();
        controller
            .targets
            .lock()
            .unwrap()
            .push(request.into_inner().target);
        controller.opened.fetch_add(1, Ordering::SeqCst);
        controller.active.fetch_add(1, Ordering::SeqCst);
        let active = ActiveStream(controller.clone());

        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = controller.snapshot.subscribe();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let _active = active;
            loop {
                let update = snapshots.borrow_and_update().clone();
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                if controller.flap.load(Ordering::SeqCst) {
                    let _ = tx.send(Err(Status::unavailable("flapping"))).await;
                    return;
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    () = stopped(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("controller stopping"))).await;
                        return;
                    }
                    // The client cancelled: its watchers are gone.
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Completes when the server is told to stop (or is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

impl Controller {
    fn new(update: Update) -> Arc<Self> {
        let controller = Self::default();
        controller.snapshot.send_replace(update);
        Arc::new(controller)
    }

    /// Serves on `addr` (port 0 for any).
    async fn serve(self: &Arc<Self>, addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopping) = watch::channel(false);
        let service = DestinationServer::new(Service {
            controller: self.clone(),
            stopping: stopping.clone(),
        });
        let mut signal = stopping;
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    stopped(&mut signal).await;
                })
                .await
                .unwrap();
        });
        Server { addr, stop, task }
    }

    fn publish(&self, update: Update) {
        self.snapshot.send_replace(update);
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Stops the server and waits until its port is free again.
    async fn stop(self) {
        self.stop.send_replace(true);
        timeout(PATIENCE, self.task).await.unwrap().unwrap();
    }
}

// === helpers ===

fn discovery(addr: SocketAddr) -> GrpcDiscovery {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    GrpcDiscovery::new(
        channel,
        GrpcDiscoveryOptions {
            caller_identity: "spiffe://east.local/ns/default/sa/client".into(),
            backoff: ReconnectBackoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(80),
            },
        },
    )
}

fn endpoint(addr: &str, identity: &str) -> Endpoint {
    let addr: SocketAddr = addr.parse().unwrap();
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    Endpoint {
        addr: Some(ProtoSocketAddr {
            ip,
            port: u32::from(addr.port()),
        }),
        identity: identity.into(),
        cluster: "east".into(),
        weight: 1,
        ready: true,
        ..Endpoint::default()
    }
}

fn web(endpoints: Vec<Endpoint>) -> Update {
    Update {
        exists: true,
        authority: WEB.into(),
        endpoints,
        ..Update::default()
    }
}

fn addrs(destination: &Destination) -> Vec<String> {
    destination
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

/// Waits until the watched destination has exactly these endpoint addresses.
async fn until_endpoints(rx: &mut DestinationWatch, expected: &[&str]) -> Arc<Destination> {
    let found = timeout(
        PATIENCE,
        rx.wait_for(|d| d.as_deref().is_some_and(|d| addrs(d) == expected)),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .and_then(|destination| (*destination).clone());
    match found {
        Some(destination) => destination,
        None => panic!(
            "expected endpoints {expected:?}, have {:?}",
            rx.borrow().as_deref().map(addrs)
        ),
    }
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    let polled = timeout(PATIENCE, async {
        while !condition() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting for {what}");
}

// === gRPC discovery ===

#[tokio::test]
async fn receives_the_first_snapshot_then_each_replacement() {
    let controller = Controller::new(web(vec![endpoint("10.1.0.1:8080", "")]));
    let server = controller.serve("127.0.0.1:0".parse().unwrap()).await;
    let resolve: Arc<dyn Resolve> = Arc::new(discovery(server.addr));

    let mut rx = resolve.watch(Target::parse(WEB).unwrap());
    let first = until_endpoints(&mut rx, &["10.1.0.1:8080"]).await;
    assert!(first.exists);
    assert_eq!(first.authority, WEB);

    // A later snapshot replaces the earlier one whole: 10.1.0.1 is gone, not merged.
    controller.publish(web(vec![
        endpoint("10.1.0.2:8080", ""),
        endpoint("10.1.0.3:8080", ""),
    ]));
    until_endpoints(&mut rx, &["10.1.0.2:8080", "10.1.0.3:8080"]).await;

    controller.publish(Update::default());
    let gone = timeout(
        PATIENCE,
        rx.wait_for(|d| d.as_ref().is_some_and(|d| !d.exists)),
    )
    .await
    .unwrap()
    .unwrap()
    .clone()
    .unwrap();
    assert!(gone.endpoints.is_empty());

    assert_eq!(
        controller.targets.lock().unwrap().as_slice(),
        [Some(get_destination::Target::Authority(WEB.into()))]
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_endpoints_are_dropped_and_the_rest_kept() {
    let mut short_ip = endpoint("10.1.0.2:8080", "");
    short_ip.addr.as_mut().unwrap().ip = vec![10, 1, 0];
    let mut big_port = endpoint("10.1.0.3:8080", "");
    big_port.addr.as_mut().unwrap().port = 65_536;
    let controller = Controller::new(web(vec![
        endpoint("10.1.0.1:8080", "spiffe://east.local/ns/default/sa/web"),
        short_ip,
        big_port,
        endpoint("10.1.0.4:8080", "not-a-spiffe-id"),
        endpoint("10.1.0.5:8080", ""),
    ]));
    let server = controller.serve("127.0.0.1:0".parse().unwrap()).await;
    let discovery = discovery(server.addr);

    let mut rx = discovery.watch(Target::parse(WEB).unwrap());
    let destination = until_endpoints(&mut rx, &["10.1.0.1:8080", "10.1.0.5:8080"]).await;
    assert_eq!(
        destination.endpoints[0].identity.as_ref().unwrap().as_str(),
        "spiffe://east.local/ns/default/sa/web"
    );
    assert_eq!(destination.endpoints[1].identity, None);
    server.stop().await;
}

#[tokio::test]
async fn keeps_the_last_answer_while_the_controller_is_away_then_reconnects() {
    let controller = Controller::new(web(vec![endpoint("10.1.0.1:8080", "")]));
    let server = controller.serve("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let discovery = discovery(addr);

    let mut rx = discovery.watch(Target::parse(WEB).unwrap());
    until_endpoints(&mut rx, &["10.1.0.1:8080"]).await;

    server.stop().await;
    // Several failed reconnects (20 to 80 ms apart) later, watchers still see the last answer.
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.borrow().as_deref().map(addrs),
        Some(vec!["10.1.0.1:8080".to_owned()])
    );
    assert_eq!(controller.active(), 0);

    controller.publish(web(vec![endpoint("10.1.0.9:8080", "")]));
    let server = controller.serve(addr).await;
    until_endpoints(&mut rx, &["10.1.0.9:8080"]).await;
    assert_eq!(controller.opened(), 2);
    server.stop().await;
}

#[tokio::test]
async fn watchers_of_one_target_share_one_stream() {
    let controller = Controller::new(web(vec![endpoint("10.1.0.1:8080", "")]));
    let server = controller.serve("127.0.0.1:0".parse().unwrap()).await;
    let discovery = discovery(server.addr);

    let mut first = discovery.watch(Target::parse(WEB).unwrap());
    until_endpoints(&mut first, &["10.1.0.1:8080"]).await;
    // Another spelling of the same authority, from a clone of the resolver.
    let mut second = discovery
        .clone()
        .watch(Target::parse(&WEB.to_uppercase()).unwrap());
    until_endpoints(&mut second, &["10.1.0.1:8080"]).await;

    controller.publish(web(vec![endpoint("10.1.0.2:8080", "")]));
    until_endpoints(&mut first, &["10.1.0.2:8080"]).await;
    until_endpoints(&mut second, &["10.1.0.2:8080"]).await;
    assert_eq!((controller.opened(), controller.active()), (1, 1));

    // A different target is a different stream.
    let mut by_addr = discovery.watch(Target::from("10.96.0.10:80".parse::<SocketAddr>().unwrap()));
    until_endpoints(&mut by_addr, &["10.1.0.2:8080"]).await;
    assert_eq!((controller.opened(), controller.active()), (2, 2));
    server.stop().await;
}

#[tokio::test]
async fn dropping_every_watcher_ends_the_stream() {
    let controller = Controller::new(web(vec![endpoint("10.1.0.1:8080", "")]));
    let server = controller.serve("127.0.0.1:0".parse().unwrap()).await;
    let discovery = discovery(server.addr);

    let mut first = discovery.watch(Target::parse(WEB).unwrap());
    let second = discovery.watch(Target::parse(WEB).unwrap());
    until_endpoints(&mut first, &["10.1.0.1:8080"]).await;
    assert_eq!(controller.active(), 1);

    drop(first);
    sleep(Duration::from_millis(50)).await;
    assert_eq!(controller.active(), 1, "one watcher is left");

    drop(second);
    until("the controller to see the stream cancelled", || {
        controller.active() == 0
    })
    .await;

    // Watching again starts a new stream, which answers at once.
    let mut again = discovery.watch(Target::parse(WEB).unwrap());
    until_endpoints(&mut again, &["10.1.0.1:8080"]).await;
    assert_eq!((controller.opened(), controller.active()), (2, 1));
    server.stop().await;
}

// === static discovery ===

#[tokio::test]
async fn static_discovery_answers_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("discovery.json");
    std::fs::write(
        &file,
        r#"{
            "web.default.svc.cluster.local:80": {
                "addresses": ["10.96.0.10:80"],
                "endpoints": [
                    { "addr": "10.1.0.1:8080", "identity": "spiffe://east.local/ns/default/sa/web" },
                    { "addr": "10.1.0.2:8080" }
                ],
                "opaque_ports": [3306]
            }
        }"#,
    )
    .unwrap();
    let discovery = StaticDiscovery::load(&file).await.unwrap();

    let by_name = discovery.watch(Target::parse(WEB).unwrap());
    let by_name = by_name.borrow().clone().unwrap();
    assert_eq!(addrs(&by_name), ["10.1.0.1:8080", "10.1.0.2:8080"]);
    assert!(by_name.is_opaque(3306));
    let by_ip = discovery.watch(Target::from("10.96.0.10:80".parse::<SocketAddr>().unwrap()));
    assert_eq!(by_ip.borrow().as_deref(), Some(&*by_name));
    let unknown = discovery.watch(Target::parse("db.default.svc.cluster.local:5432").unwrap());
    assert!(!unknown.borrow().as_ref().unwrap().exists);
}

#[tokio::test]
async fn static_discovery_reports_a_bad_file_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("discovery.json");
    std::fs::write(
        &file,
        r#"{ "web.default.svc.cluster.local:80": {
                "endpoints": [ { "addr": "10.1.0.1:8080" }, { "addr": "10.1.0.2:99999" } ] } }"#,
    )
    .unwrap();
    let error = StaticDiscovery::load(&file).await.unwrap_err();
    let message = error.to_string();
    match error {
        StaticDiscoveryError::Invalid {
            file: named,
            path,
            problem,
        } => {
            assert_eq!(named, file);
            assert_eq!(
                path,
                r#"$["web.default.svc.cluster.local:80"].endpoints[1].addr"#
            );
            assert_eq!(
                problem,
                FileProblem::Addr {
                    value: "10.1.0.2:99999".into()
                }
            );
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("endpoints[1].addr"), "{message}");
    assert!(message.contains("not an ip:port"), "{message}");

    let missing = StaticDiscovery::load(dir.path().join("absent.json"))
        .await
        .unwrap_err();
    assert!(matches!(missing, StaticDiscoveryError::Read { .. }));
    assert!(missing.to_string().contains("absent.json"), "{missing}");
}

#[tokio::test]
async fn a_controller_that_answers_then_fails_is_not_reconnected_to_in_a_tight_loop() {
    let controller = Controller::new(web(vec![endpoint("10.0.0.1:8080", "")]));
    controller.flap.store(true, Ordering::SeqCst);
    let server = controller.serve("127.0.0.1:0".parse().unwrap()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy();
    let discovery = GrpcDiscovery::new(
        channel,
        GrpcDiscoveryOptions {
            caller_identity: String::new(),
            backoff: ReconnectBackoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(400),
            },
        },
    );
    let mut rx = discovery.watch(Target::parse(WEB).unwrap());
    until_endpoints(&mut rx, &["10.0.0.1:8080"]).await;
    let before = controller.opened();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The backoff (20 ms doubling to 400 ms, jittered down to half) keeps growing because no
    // stream lives long enough to count as healthy: under ten reconnects in the second. Resetting
    // it on every answer reconnects as fast as a stream can open and fail (about 16 here).
    let reconnects = controller.opened() - before;
    assert!(reconnects <= 10, "{reconnects} reconnects in one second");
    assert!(reconnects >= 3, "it must keep trying: {reconnects}");
    // The last good answer is kept throughout.
    assert_eq!(addrs(rx.borrow().as_ref().unwrap()), vec!["10.0.0.1:8080"]);
    server.stop().await;
}
