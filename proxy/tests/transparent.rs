//! Transparent proxying end to end, with the real `mesh-proxy` binary: two pods whose traffic
//! the kernel redirects through their proxies, as in a cluster. Needs root, `ip` (iproute2),
//! iptables and `setpriv` (util-linux); without them it says why on stderr and passes. Set
//! `MESH_REDIRECT_TEST_REQUIRED=1` to make a skip a failure.
//!
//! ```text
//!                 lan ns: br0 10.98.0.1/24 (a client outside the mesh)
//!                  /                                        \
//!   west ns: eth0 10.98.0.2                       east ns: eth0 10.98.0.3
//!     mesh-proxy init, then run as uid 2102         mesh-proxy init, then run as uid 2102
//!     the app (root): a client                      the apps (root): HTTP on :8080, echo on :9000
//! ```
//!
//! The service IP 10.98.100.10:80 exists nowhere: only west's discovery file knows it, as the
//! cluster IP of `web.default.svc.cluster.local:80`, whose one endpoint is 10.98.0.3:8080 with
//! east's identity. What the test shows:
//! - a plain HTTP/1.1 request from west's app to the service IP is redirected by `OUTPUT` to
//!   west's outbound listener (for locally generated traffic, `REDIRECT` rewrites the destination
//!   to 127.0.0.1, hence `--outbound-addr 127.0.0.1:4140`), resolved by its original destination,
//!   carried over the `mesh.h2` hop with mTLS to 10.98.0.3:4143 (the proxy's own connection is
//!   exempt by uid), and forwarded by east's inbound proxy to the app, which sees the service's
//!   Host, west's SPIFFE ID in `mesh-client-id`, and a connection from loopback (its proxy);
//! - plain TCP to an address discovery does not know (10.98.0.3:9000) passes through west's
//!   proxy unmeshed, and east's inbound forwards it, as redirected traffic, to the app's port;
//! - a client outside the mesh, in the LAN namespace, dialling east's app directly is redirected
//!   by `PREROUTING` into east's proxy and still reaches the app;
//! - west's `/metrics` counts the request as outbound with `tls="true"` and east's identity, and
//!   the echo connection as outbound with `tls="no_identity"`; east's counts the outsider's
//!   connection as inbound with `tls="false"`.
//!
//! The outer test, [`a_pod_calls_a_service_ip_through_both_proxies`], builds the namespaces,
//! installs the rules with `mesh-proxy init`, starts the proxies (`ip netns exec` then
//! `setpriv`), and re-executes this test binary inside the namespaces for the applications and
//! clients, with `MESH_TRANSPARENT_ROLE` naming the part to play; the inner tests are
//! `#[ignore]`d and do nothing without it. Processes are killed and namespaces deleted by a drop
//! guard, even on panic; every wait has a deadline.
#![allow(clippy::unwrap_used)]

#[path = "support/pod_network.rs"]
mod pod_network;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_test_support::pki::Domain;
use mesh_trust::TrustBundleSet;
use pod_network::PodNetwork;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const ROLE: &str = "MESH_TRANSPARENT_ROLE";
const REQUIRED: &str = "MESH_REDIRECT_TEST_REQUIRED";
// Printed by an inner test that ran to the end: libtest exits 0 when a filter matches no test,
// so success alone would not prove the inner test ran at all.
const DONE: &str = "MESH-TRANSPARENT-INNER-DONE";
const APPS_READY: &str = "MESH-TRANSPARENT-APPS-READY";

/// The uid both proxies run as; `init` exempts its connections from redirection.
const PROXY_UID: u32 = 2102;
const LAN_IP: &str = "10.98.0.1";
const WEST_IP: &str = "10.98.0.2";
const EAST_IP: &str = "10.98.0.3";
/// A service IP that no interface has: only west's discovery knows it.
const SERVICE_IP: &str = "10.98.100.10:80";
const SERVICE_HOST: &str = "web.default.svc.cluster.local";
const APP_PORT: u16 = 8080;
/// East's echo server, a port no discovery entry names.
/// MySQL's port, opaque by default: its server speaks first.
const BANNER_PORT: u16 = 3306;
const BANNER: &[u8] = b"5.7.0-mesh-test\n";
const ECHO_PORT: u16 = 9000;
const ADMIN_PORT: u16 = 4191;
/// West's workload and east's, as service accounts of the `default` namespace.
const WEST_SA: &str = "frontend";
const EAST_SA: &str = "web";

/// How long any one wait may take; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Outer test: runs in the host namespace, sets up, drives and tears down.

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_calls_a_service_ip_through_both_proxies() {
    if let Some(reason) = skip_reason() {
        skip(&reason);
        return;
    }
    let files = PodFiles::new();
    let prefix = format!("mesh-tp{}", std::process::id());
    let network = match PodNetwork::new(&prefix, &format!("{LAN_IP}/24")) {
        Ok(network) => network,
        Err(e) => return skip(&format!("cannot build the pod network: {e}")),
    };
    let mut sandbox = Sandbox {
        processes: Vec::new(),
        network,
        _files: files.dir,
    };
    let west = sandbox
        .network
        .add_pod("west", &format!("{WEST_IP}/24"), LAN_IP)
        .unwrap();
    let east = sandbox
        .network
        .add_pod("east", &format!("{EAST_IP}/24"), LAN_IP)
        .unwrap();
    for ns in [&west, &east] {
        install_rules(ns);
    }

    // East's applications, as root (the app's uid), then both proxies as the proxy uid.
    let apps = inner_command(&east, "inner_east_apps", "east-apps");
    sandbox.spawn("east apps", apps).wait_for(APPS_READY).await;
    let east_proxy = proxy_command(
        &east,
        &files.east_identity,
        &files.bundle,
        &files.east_discovery,
    );
    sandbox.spawn("east proxy", east_proxy);
    let west_proxy = proxy_command(
        &west,
        &files.west_identity,
        &files.bundle,
        &files.west_discovery,
    );
    sandbox.spawn("west proxy", west_proxy);
    for process in &mut sandbox.processes[1..] {
        process.wait_for(" listening ").await;
    }

    // The outsider waits for both proxies to be ready, so it goes first.
    let lan = sandbox.network.lan().to_owned();
    let out = run_inner(&lan, "inner_outside_client", "outside").await;
    sandbox.assert_ran("outside client", &out);
    let outside = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = run_inner(&west, "inner_west_app", "west-app").await;
    sandbox.assert_ran("west app", &out);
    // Shown with --nocapture: the series each inner test found.
    eprintln!("{outside}\n{}", String::from_utf8_lossy(&out.stdout));
    if let Some(dir) = proxy_bin().parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn skip(reason: &str) {
    if std::env::var_os(REQUIRED).is_some() {
        panic!("transparent proxy test cannot run ({REQUIRED} is set): {reason}");
    }
    eprintln!("skipping a_pod_calls_a_service_ip_through_both_proxies: {reason}");
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces, iptables and setpriv need it)".into());
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if !on_path(program) {
            return Some(format!(
                "`{program}` is not installed (apt-get install -y {package})"
            ));
        }
    }
    // The proxy runs as PROXY_UID: it must be able to execute the binary where cargo built it.
    let probe = Command::new("setpriv")
        .args(as_proxy_uid())
        .arg(proxy_bin())
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "uid {PROXY_UID} cannot run {}: {}",
            proxy_bin().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("setpriv: {e}")),
    }
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `setpriv` arguments that drop root for the proxy uid (and its own group, no others).
/// The binary where the proxy uid can run it. Cargo's target directory may sit under a home
/// only root can enter (`/root/.cache/...`), so the binary is linked (or copied) into a
/// world-readable directory of its own, once per test process.
fn proxy_bin() -> &'static Path {
    static BIN_FOR_PROXY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN_FOR_PROXY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mesh-transparent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("mesh-proxy");
        let _ = std::fs::remove_file(&bin);
        if std::fs::hard_link(BIN, &bin).is_err() {
            std::fs::copy(BIN, &bin).unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
}

fn as_proxy_uid() -> [String; 3] {
    [
        format!("--reuid={PROXY_UID}"),
        format!("--regid={PROXY_UID}"),
        "--clear-groups".to_owned(),
    ]
}

/// `mesh-proxy init` inside `ns`, as an init container would run it.
fn install_rules(ns: &str) {
    let out = PodNetwork::exec(ns, BIN)
        .args(["init", "--proxy-uid", &PROXY_UID.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mesh-proxy init in {ns} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mesh-proxy run` inside `ns`, as the proxy uid, on the default ports.
fn proxy_command(ns: &str, identity: &Path, bundle: &Path, discovery: &Path) -> Command {
    let mut cmd = PodNetwork::exec(ns, "setpriv");
    cmd.args(as_proxy_uid())
        .arg(proxy_bin())
        .arg("run")
        .arg("--identity-dir")
        .arg(identity)
        .arg("--trust-bundle")
        .arg(bundle)
        .arg("--discovery-file")
        .arg(discovery)
        .args([
            "--inbound-addr",
            "0.0.0.0:4143",
            "--outbound-addr",
            "127.0.0.1:4140",
            "--admin-addr",
            &format!("0.0.0.0:{ADMIN_PORT}"),
        ])
        .env("MESH_PROXY_LOG", "info,mesh_proxy::tcp=debug");
    cmd
}

/// This test binary, as `role` inside `ns`, running only the inner test `test`.
fn inner_command(ns: &str, test: &str, role: &str) -> Command {
    let mut cmd = PodNetwork::exec(ns, std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE, role);
    cmd
}

/// Runs an inner test to its end, or kills it after a deadline longer than its own waits.
async fn run_inner(ns: &str, test: &str, role: &str) -> Output {
    let mut cmd = tokio::process::Command::from(inner_command(ns, test, role));
    cmd.kill_on_drop(true);
    timeout(PATIENCE * 3, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{test} in {ns} did not finish"))
        .unwrap()
}

// === the files each pod's proxy reads ===

/// PKI, trust bundle and discovery files in a temporary directory, owned by the proxy uid as a
/// pod's mounted Secrets and ConfigMaps would be readable by it.
struct PodFiles {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    west_identity: PathBuf,
    east_identity: PathBuf,
    west_discovery: PathBuf,
    east_discovery: PathBuf,
}

impl PodFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (west, east) = (Domain::new("west"), Domain::new("east"));
        let mut set = TrustBundleSet::new();
        set.merge(&west.bundle());
        set.merge(&east.bundle());
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        set.save_pem_dir(&bundle).unwrap();

        let west_identity = dir.path().join("west-identity");
        mesh_test_support::pki::write_identity_dir(&west_identity, &west.creds(WEST_SA));
        let east_identity = dir.path().join("east-identity");
        mesh_test_support::pki::write_identity_dir(&east_identity, &east.creds(EAST_SA));

        // The service answers both its cluster IP and its name, as the controller's would.
        let west_discovery = dir.path().join("west-discovery.json");
        let json = serde_json::json!({
            format!("{SERVICE_HOST}:80"): {
                "addresses": [SERVICE_IP],
                "protocol_hint": "http",
                "endpoints": [{
                    "addr": format!("{EAST_IP}:{APP_PORT}"),
                    "identity": east.id(EAST_SA).to_string(),
                }],
            },
        });
        std::fs::write(&west_discovery, json.to_string()).unwrap();
        let east_discovery = dir.path().join("east-discovery.json");
        std::fs::write(&east_discovery, "{}").unwrap();

        give_to_proxy_uid(dir.path());
        Self {
            dir,
            bundle,
            west_identity,
            east_identity,
            west_discovery,
            east_discovery,
        }
    }
}

/// Hands `path` and everything under it to the proxy uid.
fn give_to_proxy_uid(path: &Path) {
    chown(path, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            give_to_proxy_uid(&entry.unwrap().path());
        }
    }
}

// === processes and teardown ===

/// Everything the test started: processes are killed, then namespaces deleted, on drop.
struct Sandbox {
    processes: Vec<Process>,
    network: PodNetwork,
    _files: tempfile::TempDir,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Before the namespaces go: a process left in a deleted namespace would keep it alive.
        self.processes.clear();
    }
}

impl Sandbox {
    fn spawn(&mut self, name: &str, cmd: Command) -> &mut Process {
        self.processes.push(Process::spawn(name, cmd));
        self.processes.last_mut().unwrap()
    }

    /// Fails with the inner test's output and every process's log unless it ran to the end.
    fn assert_ran(&self, what: &str, out: &Output) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.contains(DONE) {
            return;
        }
        let logs: String = self
            .processes
            .iter()
            .map(|p| format!("--- {} log\n{}\n", p.name, p.log_text()))
            .collect();
        panic!(
            "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n{logs}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A long-running child, its stdout and stderr collected line by line; killed on drop.
struct Process {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(name: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let lines = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Waits for a log line containing `needle`; fails if the process exits first.
    async fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader threads a moment to collect the last lines.
                sleep(Duration::from_millis(100)).await;
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?}:\n{}",
                self.name,
                self.log_text()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Inner tests: run only inside the namespaces.

fn role_is(expected: &str) -> bool {
    let role = std::env::var(ROLE).unwrap_or_default();
    if role != expected {
        eprintln!(
            "not run: only a_pod_calls_a_service_ip_through_both_proxies runs this, with \
             {ROLE}={expected}"
        );
        return false;
    }
    true
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// East's applications, as root: the HTTP app and the echo server, until killed.
#[tokio::test]
#[ignore = "run inside a network namespace by a_pod_calls_a_service_ip_through_both_proxies"]
async fn inner_east_apps() {
    if !role_is("east-apps") {
        return;
    }
    // On every address, as a pod's application listens: reached through the proxy on loopback,
    // and (were the rules missing) directly on eth0.
    let http = TcpListener::bind(("0.0.0.0", APP_PORT)).await.unwrap();
    let echo = TcpListener::bind(("0.0.0.0", ECHO_PORT)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = http.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(move |req| tell_what_was_seen(req, peer.ip()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = echo.accept().await.unwrap();
            tokio::spawn(echo_lines(tcp, peer.ip()));
        }
    });
    // A server-speaks-first protocol on a port that is opaque by default (MySQL's).
    let banner = TcpListener::bind(("0.0.0.0", BANNER_PORT)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = banner.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = tcp.write_all(BANNER).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    println!("{APPS_READY}");
    std::future::pending::<()>().await;
}

/// The HTTP app's answer: 200, with what the request carried and who connected, in headers.
async fn tell_what_was_seen(
    req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let seen = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let response = Response::builder()
        .header("x-seen-host", seen(header::HOST))
        .header("x-seen-client-id", seen(mesh_proxy::http::CLIENT_ID))
        .header("x-seen-peer", peer.to_string())
        .body(Full::new(Bytes::from_static(b"hello from east\n")))
        .unwrap();
    Ok(response)
}

/// Echoes each line, followed by ` via <peer ip>`.
async fn echo_lines(tcp: TcpStream, peer: IpAddr) {
    let (read, mut write) = tcp.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = format!("{line} via {peer}\n");
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A client outside the mesh: dials east's app directly.
#[tokio::test]
#[ignore = "run inside a network namespace by a_pod_calls_a_service_ip_through_both_proxies"]
async fn inner_outside_client() {
    if !role_is("outside") {
        return;
    }
    // The admin port is exempt from inbound redirection, so the LAN reaches both admin servers.
    for ip in [WEST_IP, EAST_IP] {
        wait_ready(SocketAddr::new(ip.parse().unwrap(), ADMIN_PORT)).await;
    }

    let app: SocketAddr = format!("{EAST_IP}:{APP_PORT}").parse().unwrap();
    let host = app.to_string();
    // It claims to be a mesh workload; east's proxy removes the claim.
    let forged = "spiffe://west/ns/default/sa/frontend";
    let response = within(
        "plain HTTP to east's app",
        get_with(app, &host, "/", Some(forged)),
    )
    .await
    .unwrap();
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.seen("x-seen-host"), host);
    // From loopback: east's proxy took the connection and forwarded it to the app.
    assert_eq!(response.seen("x-seen-peer"), "127.0.0.1", "{response:?}");
    assert_eq!(response.seen("x-seen-client-id"), "-", "{response:?}");

    // A client of a server-speaks-first protocol sends nothing: on an opaque port east's proxy
    // forwards it at once instead of waiting out protocol detection (10 s here).
    let mut db = TcpStream::connect(SocketAddr::new(EAST_IP.parse().unwrap(), BANNER_PORT))
        .await
        .unwrap();
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), db.read_to_end(&mut banner))
        .await
        .expect("the banner arrives without waiting for detection")
        .unwrap();
    assert_eq!(banner, BANNER);

    // East's proxy counts it as an inbound request to the app, not meshed.
    let east_admin = SocketAddr::new(EAST_IP.parse().unwrap(), ADMIN_PORT);
    let counted = wait_for_metrics(
        east_admin,
        &[&[
            "request_total{",
            "direction=\"inbound\"",
            &format!("authority=\"{app}\""),
            "tls=\"false\"",
        ]],
    )
    .await;
    println!("{counted}");
    println!("{DONE}");
}

/// West's application: calls the service IP, and an address outside the mesh.
#[tokio::test]
#[ignore = "run inside a network namespace by a_pod_calls_a_service_ip_through_both_proxies"]
async fn inner_west_app() {
    if !role_is("west-app") {
        return;
    }
    // Meshed: the request goes to an address that exists nowhere but in discovery.
    let service: SocketAddr = SERVICE_IP.parse().unwrap();
    let response = within("HTTP to the service IP", get(service, SERVICE_HOST, "/"))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.seen("x-seen-host"), SERVICE_HOST, "{response:?}");
    let west_id = format!("spiffe://west/ns/default/sa/{WEST_SA}");
    assert_eq!(response.seen("x-seen-client-id"), west_id, "{response:?}");
    assert_eq!(response.seen("x-seen-peer"), "127.0.0.1", "{response:?}");

    // Not in discovery: plain TCP through west's proxy, then forwarded by east's inbound.
    let echo: SocketAddr = format!("{EAST_IP}:{ECHO_PORT}").parse().unwrap();
    let reply = within("TCP to east's echo server", echo_once(echo, "ping")).await;
    assert_eq!(reply, "ping via 127.0.0.1");

    // West's proxy counts the request as outbound over mTLS, and the echo connection as
    // outbound to a destination without an identity.
    let east_id = format!("spiffe://east/ns/default/sa/{EAST_SA}");
    let admin: SocketAddr = format!("127.0.0.1:{ADMIN_PORT}").parse().unwrap();
    let counted = wait_for_metrics(
        admin,
        &[
            &[
                "request_total{",
                "direction=\"outbound\"",
                "tls=\"true\"",
                &format!("server_id=\"{east_id}\""),
            ],
            &[
                "tcp_open_total{",
                "direction=\"outbound\"",
                &format!("authority=\"{echo}\""),
                "tls=\"no_identity\"",
            ],
        ],
    )
    .await;
    println!("{counted}");
    println!("{DONE}");
}

/// Connects to `addr`, sends `line`, and reads one line back.
async fn echo_once(addr: SocketAddr, line: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = tcp.into_split();
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::io::BufReader::new(read)
        .read_line(&mut reply)
        .await
        .unwrap();
    reply.trim_end().to_owned()
}

/// A response, as the client saw it.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Seen {
    fn seen(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(missing)")
    }
}

/// One plain HTTP/1.1 GET on a new connection.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Seen, String> {
    get_with(addr, host, path, None).await
}

/// A GET that also claims a `mesh-client-id`, as a client outside the mesh might.
async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    claimed_id: Option<&str>,
) -> Result<Seen, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(conn);
    let mut request = Request::get(path).header(header::HOST, host);
    if let Some(claimed) = claimed_id {
        request = request.header(mesh_proxy::http::CLIENT_ID, claimed);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path} from {addr}: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body of {path} from {addr}: {e}"))?
        .to_bytes();
    Ok(Seen {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = timeout(Duration::from_secs(1), get(admin, "admin", "/ready")).await;
        if let Ok(Ok(seen)) = &status
            && seen.status == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "{admin} never ready: {status:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// The lines of `/metrics` from `admin` that match, once each group of `wanted` fragments is
/// found together on one line.
async fn wait_for_metrics(admin: SocketAddr, wanted: &[&[&str]]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = match timeout(Duration::from_secs(1), get(admin, "admin", "/metrics")).await {
            Ok(Ok(seen)) => seen.body,
            other => format!("{other:?}"),
        };
        let matching = |fragments: &[&str]| -> Vec<&str> {
            text.lines()
                .filter(|line| fragments.iter().all(|f| line.contains(f)))
                .collect()
        };
        let found: Vec<Vec<&str>> = wanted.iter().map(|w| matching(w)).collect();
        if found.iter().all(|lines| !lines.is_empty()) {
            return found.concat().join("\n");
        }
        assert!(
            Instant::now() < deadline,
            "no line with each of {wanted:?} in:\n{text}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}
