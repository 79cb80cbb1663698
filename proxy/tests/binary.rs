//! The real `mesh-proxy` binary, as an operator or the bench tooling runs it: two processes (west
//! and east) meshed end to end through an explicit outbound listener, readiness, SIGTERM and
//! `/shutdown` drains, a leaf replaced on disk, usage errors, and `init --dry-run`.
//!
//! Every listener binds 127.0.0.1:0; a test learns the ports from the proxy's `listening` log
//! line. Each child is killed if its test fails, so no process outlives the test run.
#![allow(clippy::unwrap_used)]

use mesh_test_support::apps::echo_app;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::ports::ALPN_OPAQUE;
use mesh_test_support::pki::Domain;
use mesh_trust::tls::{CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId, TrustBundleSet, x509};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const SERVICE: &str = "echo.default.svc.cluster.local:80";
/// How long a test waits for anything it expects; only reached when the test fails.
const PATIENCE: Duration = Duration::from_secs(15);

// === the world: PKI on disk, an echo app ===

struct World {
    tmp: tempfile::TempDir,
    west: Domain,
    east: Domain,
}

impl World {
    fn new() -> Self {
        let world = Self {
            tmp: tempfile::tempdir().unwrap(),
            west: Domain::new("west"),
            east: Domain::new("east"),
        };
        let mut set = TrustBundleSet::new();
        set.merge(&world.west.bundle());
        set.merge(&world.east.bundle());
        std::fs::create_dir(world.bundle()).unwrap();
        set.save_pem_dir(&world.bundle()).unwrap();
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn bundle(&self) -> PathBuf {
        self.path("bundle")
    }

    /// Writes `creds` as `mesh trust issue` does, into the directory `name`.
    fn identity(&self, name: &str, creds: &WorkloadCredentials) -> PathBuf {
        let dir = self.path(name);
        mesh_test_support::pki::write_identity_dir(&dir, creds);
        dir
    }

    fn discovery(&self, name: &str, json: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, json).unwrap();
        path
    }

    /// The flags every test proxy shares: loopback, port 0, fast reloads.
    fn args(&self, identity: &Path, discovery: &Path) -> Vec<String> {
        let mut args: Vec<String> = [
            "--identity-dir",
            path_str(identity),
            "--trust-bundle",
            path_str(&self.bundle()),
            "--discovery-file",
            path_str(discovery),
        ]
        .map(String::from)
        .to_vec();
        for flag in [
            "--inbound-addr",
            "--outbound-addr",
            "--admin-addr",
            "--tap-addr",
        ] {
            args.extend([flag.to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend(["--reload-interval".into(), "100ms".into()]);
        args
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

// === a proxy process ===

/// A running `mesh-proxy run`, killed on drop.
struct Proxy {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    inbound: SocketAddr,
    admin: SocketAddr,
    maps: Vec<SocketAddr>,
}

impl Proxy {
    async fn start(args: &[String]) -> Self {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .env("MESH_PROXY_LOG", "info,mesh_proxy::tcp=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let mut proxy = Self {
            child,
            log,
            inbound: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            maps: Vec::new(),
        };
        let listening = proxy.wait_for_log(" listening ").await;
        let field = |name: &str| {
            listening
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {listening}"))
                .to_owned()
        };
        proxy.inbound = field("inbound").parse().unwrap();
        proxy.admin = field("admin").parse().unwrap();
        proxy.maps = field("maps")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        proxy
    }

    /// The first log line containing `needle`, waiting for it.
    async fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mesh-proxy exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log_text()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while http(self.admin, "GET", "/ready").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "never ready:\n{}",
                self.log_text()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running:\n{}",
                self.log_text()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of an HTTP/1.1 request, or `None` if the server cannot be reached.
async fn http(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let exchange = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: proxy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        response.split_whitespace().nth(1)?.parse().ok()
    };
    timeout(Duration::from_secs(2), exchange).await.ok()?
}

async fn echo_round_trip(conn: &mut TcpStream, message: &[u8]) {
    conn.write_all(message).await.unwrap();
    let mut echoed = vec![0; message.len()];
    timeout(PATIENCE, conn.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, message);
}

/// East's echo app behind an east proxy, and a west proxy with a map to it.
struct Meshed {
    world: World,
    east: Proxy,
    west: Proxy,
}

async fn meshed(west_flags: &[&str]) -> Meshed {
    let world = World::new();
    let app = echo_app().await;
    let east_id = world.identity("east-id", &world.east.creds("echo"));
    let empty = world.discovery("east.json", "{}");
    let mut east = Proxy::start(&world.args(&east_id, &empty)).await;

    let west_id = world.identity("west-id", &world.west.creds("client"));
    let discovery = world.discovery(
        "west.json",
        &format!(
            r#"{{"{SERVICE}": {{"endpoints": [{{"addr": "{app}", "identity": "{}"}}]}}}}"#,
            world.east.id("echo")
        ),
    );
    let mut args = world.args(&west_id, &discovery);
    args.extend([
        "--outbound-map".into(),
        format!("127.0.0.1:0={SERVICE}"),
        "--peer-inbound-port".into(),
        east.inbound.port().to_string(),
    ]);
    args.extend(west_flags.iter().map(|s| s.to_string()));
    let mut west = Proxy::start(&args).await;
    east.wait_ready().await;
    west.wait_ready().await;
    Meshed { world, east, west }
}

// === the tests ===

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_mesh_end_to_end_and_sigterm_drains() {
    let Meshed {
        world: _world,
        mut east,
        mut west,
    } = meshed(&["--shutdown-grace", "10s"]).await;
    assert_eq!(west.maps.len(), 1);

    let mut conn = TcpStream::connect(west.maps[0]).await.unwrap();
    echo_round_trip(&mut conn, b"hello from west").await;
    // East saw a meshed peer: west's identity, proven in the handshake.
    east.wait_for_log("spiffe://west/ns/default/sa/client")
        .await;

    // SIGTERM: west stops being ready and stops accepting, but the open connection carries on.
    let signalled = Instant::now();
    west.signal("TERM");
    west.wait_for_log("draining").await;
    assert_eq!(http(west.admin, "GET", "/ready").await, Some(503));
    assert!(TcpStream::connect(west.maps[0]).await.is_err());
    echo_round_trip(&mut conn, b"still here").await;
    drop(conn);
    let status = west.wait_exit().await;
    assert!(status.success(), "{status}:\n{}", west.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "within the grace"
    );

    east.signal("TERM");
    let status = east.wait_exit().await;
    assert!(status.success(), "{status}:\n{}", east.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grace_period_cuts_a_connection_that_will_not_end() {
    let Meshed {
        world: _world,
        east: _east,
        mut west,
    } = meshed(&["--shutdown-grace", "300ms"]).await;
    let mut conn = TcpStream::connect(west.maps[0]).await.unwrap();
    echo_round_trip(&mut conn, b"hello").await;
    west.signal("TERM");
    let status = west.wait_exit().await;
    assert!(status.success(), "{status}:\n{}", west.log_text());
    west.wait_for_log("shutdown grace ran out").await;
    // The connection was closed under the client.
    let mut rest = Vec::new();
    let read = timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty(), "{read:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_from_loopback_stops_the_proxy() {
    let world = World::new();
    let id = world.identity("id", &world.west.creds("web"));
    let discovery = world.discovery("d.json", "{}");
    let mut proxy = Proxy::start(&world.args(&id, &discovery)).await;
    proxy.wait_ready().await;
    assert_eq!(http(proxy.admin, "GET", "/live").await, Some(200));
    assert_eq!(http(proxy.admin, "POST", "/shutdown").await, Some(202));
    let status = proxy.wait_exit().await;
    assert!(status.success(), "{status}:\n{}", proxy.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_replaced_on_disk_is_served_without_a_restart() {
    let world = World::new();
    let echo = world.east.id("echo");
    let dir = world.identity("id", &world.east.creds("echo"));
    let discovery = world.discovery("d.json", "{}");
    let mut proxy = Proxy::start(&world.args(&dir, &discovery)).await;
    proxy.wait_ready().await;

    let client = world.west.creds("client");
    let bundles = mesh_test_support::pki::bundles(&[&world.west, &world.east]);
    let before = served_serial(proxy.inbound, &client, &bundles, &echo).await;

    let renewed = world.east.creds("echo");
    let renewed_serial = x509::parse(&renewed.chain[0]).unwrap().serial;
    assert_ne!(before, renewed_serial);
    mesh_test_support::pki::write_identity_dir(&dir, &renewed);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = served_serial(proxy.inbound, &client, &bundles, &echo).await;
        if now == renewed_serial {
            break;
        }
        assert_eq!(now, before, "neither the old nor the new leaf");
        assert!(Instant::now() < deadline, "{}", proxy.log_text());
        sleep(Duration::from_millis(50)).await;
    }
    proxy.wait_for_log("reloaded the leaf certificate").await;
    assert_eq!(http(proxy.admin, "GET", "/ready").await, Some(200));

    // A leaf for another identity is refused; the current one stays.
    mesh_test_support::pki::write_identity_dir(&dir, &world.east.creds("intruder"));
    proxy
        .wait_for_log("keeping the current leaf certificate")
        .await;
    let now = served_serial(proxy.inbound, &client, &bundles, &echo).await;
    assert_eq!(now, renewed_serial);
}

/// The serial of the leaf the inbound listener at `addr` presents in a meshed handshake.
async fn served_serial(
    addr: SocketAddr,
    client: &WorkloadCredentials,
    bundles: &SharedTrustBundles,
    expected: &SpiffeId,
) -> String {
    let config = mesh_trust::tls::client_config(
        bundles.clone(),
        PeerPolicy::Exactly(expected.clone()),
        Some(Arc::new(CertResolver::new(client.clone()).unwrap())),
        &[ALPN_OPAQUE],
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("echo.default.svc").unwrap();
    let tls = timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    x509::parse(leaf).unwrap().serial
}

/// Runs `mesh-proxy` with `args` to its end.
fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status, stdout, stderr)
}

/// A usage mistake and what its error message must name.
struct BadUsage {
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    names: Vec<String>,
}

impl BadUsage {
    /// `mesh-proxy run` with `args`, every listener on loopback port 0.
    fn run(args: &[&str], names: &[&str]) -> Self {
        let mut all = vec!["run".to_owned()];
        all.extend(args.iter().map(|s| s.to_string()));
        for flag in [
            "--inbound-addr",
            "--outbound-addr",
            "--admin-addr",
            "--tap-addr",
        ] {
            if !args.contains(&flag) {
                all.extend([flag.to_owned(), "127.0.0.1:0".to_owned()]);
            }
        }
        Self {
            args: all,
            env: Vec::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn env(mut self, var: &'static str, value: &'static str) -> Self {
        self.env.push((var, value));
        self
    }
}

#[test]
fn bad_flags_exit_non_zero_and_name_the_flag() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let files = [
        "--trust-bundle",
        "/nonexistent/bundle",
        "--discovery-file",
        "/d.json",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        files.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let cases = [
        BadUsage::run(&as_strs(&with(&[])), &["--identity-dir", "--identity-addr"]),
        BadUsage::run(
            &as_strs(&with(&[
                "--identity-dir",
                "/id",
                "--discovery-addr",
                "http://127.0.0.1:1",
            ])),
            &["--discovery-file", "--discovery-addr"],
        ),
        BadUsage::run(
            &as_strs(&with(&[
                "--identity-dir",
                "/id",
                "--outbound-map",
                "127.0.0.1:9000",
            ])),
            &["--outbound-map", "LISTEN_ADDR=AUTHORITY"],
        ),
        BadUsage::run(
            &as_strs(&with(&["--identity-dir", "/id", "--detect-timeout", "10x"])),
            &["--detect-timeout", "10x"],
        ),
        BadUsage::run(
            &as_strs(&with(&["--identity-dir", "/id"])),
            &["--idle-timeout", "10x"],
        )
        .env("MESH_PROXY_IDLE_TIMEOUT", "10x"),
        BadUsage::run(
            &["--identity-dir", "/id", "--discovery-file", "/d.json"],
            &["--trust-bundle"],
        ),
        BadUsage::run(
            &as_strs(&with(&["--identity-dir", "/nonexistent/id"])),
            &["--trust-bundle", "/nonexistent/bundle"],
        ),
        BadUsage::run(
            &as_strs(&with(&["--identity-dir", "/id", "--admin-addr", &taken])),
            &["--admin-addr", &taken],
        ),
        BadUsage {
            args: vec!["init".into(), "--dry-run".into()],
            env: Vec::new(),
            names: vec!["--proxy-uid".into()],
        },
    ];
    for case in cases {
        let (status, _, stderr) = run_to_end(&as_strs(&case.args), &case.env);
        let args = &case.args;
        assert!(!status.success(), "{args:?} succeeded");
        assert!(status.code().is_some(), "{args:?} died of a signal");
        for name in &case.names {
            assert!(
                stderr.contains(name.as_str()),
                "{args:?}: no {name:?} in {stderr}"
            );
        }
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{args:?}: {stderr}"
        );
    }
    drop(holder);
}

fn as_strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

#[test]
fn a_bad_identity_dir_is_reported_in_json_logs() {
    let world = World::new();
    let discovery = world.discovery("d.json", "{}");
    let mut args = vec!["run".to_owned(), "--log-format".into(), "json".into()];
    args.extend(world.args(&world.path("missing"), &discovery));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, stderr) = run_to_end(&args, &[("MESH_PROXY_LOG", "info")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let error = lines.iter().find(|l| l["level"] == "ERROR").unwrap();
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("--identity-dir") && message.contains("missing/leaf.crt"),
        "{message}"
    );
}

#[test]
fn init_dry_run_prints_the_rules() {
    let (status, stdout, stderr) = run_to_end(
        &[
            "init",
            "--proxy-uid",
            "2102",
            "--skip-outbound-ports",
            "5432",
            "--dry-run",
        ],
        &[],
    );
    assert!(status.success(), "{stderr}");
    for rule in [
        "*nat",
        "-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
        "-A MESH_OUTPUT -m owner --uid-owner 2102 -j RETURN",
        "-A MESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A OUTPUT -p tcp -j MESH_OUTPUT",
        "COMMIT",
    ] {
        assert!(stdout.contains(rule), "no {rule:?} in {stdout}");
    }
}
