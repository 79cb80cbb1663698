//! `mesh controller` as an operator runs it: against a dev cluster, with an issuer made by
//! `mesh trust`. It becomes ready, takes the leader Lease, answers DNS and stops cleanly on
//! SIGTERM; bad flags and files are named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

fn mesh(args: &[&str]) -> Output {
    Command::new(MESH).args(args).output().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port for both TCP and UDP (DNS takes both).
fn free_dns_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn issuer(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    let issuer = dir.join("issuer");
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    assert!(
        mesh(&[
            "trust",
            "create-root",
            "--trust-domain",
            "west",
            "--out",
            &p(&root)
        ])
        .status
        .success()
    );
    assert!(
        mesh(&[
            "trust",
            "create-issuer",
            "--root",
            &p(&root),
            "--out",
            &p(&issuer)
        ])
        .status
        .success()
    );
    issuer
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DNS query for `name` (type A) over UDP; the answer's RCODE.
fn dns_rcode(port: u16, name: &str) -> Option<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).ok()?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&query, ("127.0.0.1", port)).ok()?;
    let mut answer = [0u8; 512];
    let n = socket.recv(&mut answer).ok()?;
    (n >= 4 && answer[..2] == [0x12, 0x34]).then(|| answer[3] & 0x0f)
}

/// What `mesh crds | kubectl apply -f -` does, through kube-rs.
fn install_crds(kubeconfig: &Path) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
        for crd in mesh_api::crd::crds() {
            crds.create(&Default::default(), &crd).await.unwrap();
        }
    });
}

#[test]
fn the_controller_serves_leads_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = issuer(dir.path());
    let kubeconfig = dir.path().join("dev.kubeconfig");
    let _cluster = Running(
        Command::new(MESH)
            .args(["devcluster", "--listen", "127.0.0.1:0", "--kubeconfig-out"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kubeconfig.exists() {
        assert!(
            Instant::now() < deadline,
            "the dev cluster never wrote its kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    install_crds(&kubeconfig);

    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dns_port = free_dns_port();
    let mut controller = Running(
        Command::new(MESH)
            .args(["controller", "--cluster", "west", "--namespace", "default"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--issuer-dir")
            .arg(&issuer)
            .args(["--identity-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--discovery-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--dns-addr", &format!("127.0.0.1:{dns_port}")])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--replica", "west-0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // Ready once its cache is complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(admin, "/ready").is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // DNS: authoritative for its zone (an unknown name is NXDOMAIN, once its index of the API
    // is built; SERVFAIL until then), REFUSED elsewhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match dns_rcode(dns_port, "nope.default.svc.west.mesh.local") {
            Some(3) => break,
            other => assert!(
                other == Some(2) && Instant::now() < deadline,
                "expected NXDOMAIN, got {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(dns_rcode(dns_port, "example.com"), Some(5));
    // Counted just after each answer is sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = get(admin, "/metrics").unwrap();
        if metrics.contains(r#"mesh_controller_dns_queries_total{rcode="REFUSED""#) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metrics.contains("mesh_controller_discovery_streams"),
        "{metrics}"
    );

    // SIGTERM: a clean exit, after leading (the Lease taken, then released).
    let pid = controller.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = controller.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    controller
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("became the leader"), "{stderr}");
    assert!(stderr.contains("released the leader lease"), "{stderr}");
}

#[test]
fn bad_flags_and_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = mesh(&[
        "controller",
        "--cluster",
        "west",
        "--issuer-dir",
        "/nonexistent/dir",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--issuer-dir") && stderr.contains("issuer.crt"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // An issuer of another trust domain.
    let issuer = issuer(dir.path());
    let out = Command::new(MESH)
        .args(["controller", "--cluster", "east", "--issuer-dir"])
        .arg(&issuer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trust domain west, not east"), "{stderr}");

    let out = mesh(&[
        "controller",
        "--cluster",
        "west",
        "--issuer-dir",
        "x",
        "--dns-addr",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
