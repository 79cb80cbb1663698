//! `mesh controller` as an operator runs it: against a dev cluster, with an issuer made by
//! `mesh trust`. It becomes ready, takes the leader Lease, answers DNS and stops cleanly on
//! SIGTERM; bad flags and files are named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{MESH, Process as Running, create_issuer, devcluster, dns_a, free_port};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::time::Instant;

fn mesh(args: &[&str]) -> Output {
    Command::new(MESH).args(args).output().unwrap()
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
    let issuer = create_issuer(dir.path(), "west");
    let (_cluster, kubeconfig) = devcluster(dir.path(), "dev");

    install_crds(&kubeconfig);

    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dns_port = free_port();
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

    // Live as soon as it serves, ready once its cache is complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(admin, "/live").is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
        assert!(
            Instant::now() < deadline,
            "the controller never served /live"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
        let rcode = dns_a(dns_port, "nope.default.svc.west.mesh.local").map(|m| m.response_code());
        match rcode {
            Some(ResponseCode::NXDomain) => break,
            other => assert!(
                other == Some(ResponseCode::ServFail) && Instant::now() < deadline,
                "expected NXDOMAIN, got {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        dns_a(dns_port, "example.com").map(|m| m.response_code()),
        Some(ResponseCode::Refused)
    );
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
    let issuer = create_issuer(dir.path(), "west");
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
