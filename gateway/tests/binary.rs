//! The `mesh-gateway` binary as operators run it: two gateway processes, configured from files,
//! carry a west workload's tunnel to east's inbound proxy, and follow their files as they change
//! (a link added to the links file, a renewed leaf in the identity directory).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_api::ports::ALPN_OPAQUE;
use mesh_gateway::config::gateway_identity;
use mesh_proxy::discovery::TunnelMeta;
use mesh_proxy::drain;
use mesh_proxy::outbound::OutboundTls;
use mesh_proxy::tcp::{InboundConfig, serve_inbound};
use mesh_proxy::transport_header::{Authority, MeshTransportHeader};
use mesh_proxy::tunnel::connect_tunnelled;
use mesh_test_support::pki::{Domain, bundles};
use mesh_trust::PeerPolicy;
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-gateway");
const SERVICE: &str = "echo.default.svc.cluster.local:7000";

fn gateway_creds(domain: &Domain) -> WorkloadCredentials {
    let id = gateway_identity(&domain.td, "mesh").unwrap();
    domain.creds_with(
        &id,
        mesh_trust::ca::Validity::starting_now(mesh_trust::ca::DEFAULT_LEAF_LIFETIME),
    )
}

async fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(admin: SocketAddr) {
    for _ in 0..200 {
        if let Ok(mut conn) = TcpStream::connect(admin).await {
            let _ = conn
                .write_all(b"GET /ready HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                .await;
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer).await;
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway at {admin} never became ready");
}

#[tokio::test]
async fn two_gateway_processes_carry_a_tunnel_from_files_and_follow_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (west, east) = (Domain::new("west"), Domain::new("east"));
    let mut set = west.bundle();
    set.merge(&east.bundle());
    std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
    set.save_pem_dir(&dir.path().join("bundle")).unwrap();
    mesh_test_support::pki::write_identity_dir(&dir.path().join("west-gw"), &gateway_creds(&west));
    mesh_test_support::pki::write_identity_dir(&dir.path().join("east-gw"), &gateway_creds(&east));

    // East: an echo app behind its inbound proxy.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let shared = bundles(&[&west, &east]);
    let server = tls::server_config(
        shared.clone(),
        PeerPolicy::AnyDomain,
        Arc::new(CertResolver::new(east.creds("echo")).unwrap()),
        &[ALPN_OPAQUE, mesh_api::ports::ALPN_H2],
    )
    .unwrap();
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = inbound.local_addr().unwrap().port();
    let (_inbound_drain, watch) = drain::channel();
    tokio::spawn(serve_inbound(
        inbound,
        InboundConfig::new(Arc::new(server)),
        watch,
    ));

    let (west_quic, east_quic) = (free_udp().await, free_udp().await);
    let (west_egress, east_egress) = (free_tcp().await, free_tcp().await);
    let (west_admin, east_admin) = (free_tcp().await, free_tcp().await);
    let link = |cluster: &str, domain: &Domain, quic: SocketAddr| {
        format!(
            r#"[{{ "cluster": "{cluster}", "trust_domain": "{}", "addresses": ["127.0.0.1"], "port": {}, "gateway_identity": "{}" }}]"#,
            domain.td,
            quic.port(),
            gateway_identity(&domain.td, "mesh").unwrap()
        )
    };
    // West starts linked to nobody; the link to east is written once both run.
    std::fs::write(dir.path().join("west-links.json"), "[]").unwrap();
    std::fs::write(
        dir.path().join("east-links.json"),
        link("west", &west, west_quic),
    )
    .unwrap();
    std::fs::write(dir.path().join("west-discovery.json"), "{}").unwrap();
    std::fs::write(
        dir.path().join("east-discovery.json"),
        format!(
            r#"{{ "{SERVICE}": {{ "endpoints": [ {{ "addr": "127.0.0.1:{app_port}", "identity": "{}" }} ] }} }}"#,
            east.id("echo")
        ),
    )
    .unwrap();

    let spawn =
        |name: &str, quic: SocketAddr, egress: SocketAddr, admin: SocketAddr, exports: &str| {
            let path = |file: &str| dir.path().join(format!("{name}-{file}"));
            Process(
                Command::new(BIN)
                    .args(["--cluster", name])
                    .arg("--identity-dir")
                    .arg(path("gw"))
                    .arg("--trust-bundle")
                    .arg(dir.path().join("bundle"))
                    .arg("--links")
                    .arg(path("links.json"))
                    .arg("--discovery-file")
                    .arg(path("discovery.json"))
                    .args(["--exports", exports])
                    .args(["--quic-addr", &quic.to_string()])
                    .args(["--egress-addr", &egress.to_string()])
                    .args(["--admin-addr", &admin.to_string()])
                    .args(["--inbound-port", &inbound_port.to_string()])
                    .args(["--reload-interval", "100ms"])
                    .env("MESH_GATEWAY_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap(),
            )
        };
    let _west_gw = spawn("west", west_quic, west_egress, west_admin, "");
    let _east_gw = spawn("east", east_quic, east_egress, east_admin, SERVICE);
    wait_ready(west_admin).await;
    wait_ready(east_admin).await;

    // A west workload's proxy asks its gateway for east's service; the inner session runs end to
    // end to east's inbound proxy.
    let client = west.creds("client");
    let own = client.identity.clone();
    let outbound = OutboundTls::new(shared, Arc::new(CertResolver::new(client).unwrap()));
    let tunnel = TunnelMeta {
        cluster: "east".into(),
        authority: SERVICE.into(),
        gateway: west_egress,
        gateway_identity: gateway_identity(&west.td, "mesh").unwrap(),
        remote_trust_domain: east.td.clone(),
    };
    let header = MeshTransportHeader {
        port: app_port,
        authority: Some(Authority::parse(SERVICE).unwrap()),
        protocol: ProtocolHint::Opaque,
    };
    let echo_id = east.id("echo");
    let connect = || {
        connect_tunnelled(
            &outbound,
            &own,
            &tunnel,
            Some(&echo_id),
            ALPN_OPAQUE,
            &header,
            Duration::from_secs(5),
        )
    };
    let refused = connect().await.map(|_| ()).unwrap_err();
    assert!(
        refused.to_string().contains("east"),
        "without a link, east is unknown: {refused}"
    );

    std::fs::write(
        dir.path().join("west-links.json"),
        link("east", &east, east_quic),
    )
    .unwrap();
    let (mut stream, endpoint) = eventually(connect).await;
    assert_eq!(endpoint, east.id("echo"));
    stream
        .write_all(b"across two gateway processes")
        .await
        .unwrap();
    let mut echoed = [0u8; 28];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"across two gateway processes");

    // A renewed leaf written into west's identity directory is what new handshakes get.
    let renewed = gateway_creds(&west);
    let renewed_leaf = renewed.chain[0].clone();
    mesh_test_support::pki::write_identity_dir(&dir.path().join("west-gw"), &renewed);
    let egress_tls = Arc::new(
        tls::client_config(
            bundles(&[&west, &east]),
            PeerPolicy::Exactly(gateway_identity(&west.td, "mesh").unwrap()),
            Some(Arc::new(CertResolver::new(west.creds("client")).unwrap())),
            &[mesh_api::ports::ALPN_TUNNEL],
        )
        .unwrap(),
    );
    let presented = || {
        let egress_tls = egress_tls.clone();
        async move {
            let tcp = TcpStream::connect(west_egress).await?;
            let name = rustls_pki_types::ServerName::IpAddress(west_egress.ip().into());
            let tls = tokio_rustls::TlsConnector::from(egress_tls)
                .connect(name, tcp)
                .await?;
            let leaf = tls.get_ref().1.peer_certificates().map(|c| c[0].clone());
            Ok::<_, std::io::Error>(leaf)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presented().await.unwrap() != Some(renewed_leaf.clone()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "west never presented its renewed leaf"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And tunnels carry on.
    let (mut stream, _) = connect().await.unwrap();
    stream.write_all(b"after the renewal").await.unwrap();
    let mut echoed = [0u8; 17];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"after the renewal");
}

/// Retries `attempt` until it succeeds, for up to ten seconds.
async fn eventually<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    attempt: impl Fn() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => {
                assert!(tokio::time::Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
fn a_bad_links_file_is_a_usage_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("links.json"), "{ not a list").unwrap();
    let west = Domain::new("west");
    mesh_test_support::pki::write_identity_dir(&dir.path().join("gw"), &gateway_creds(&west));
    std::fs::create_dir_all(dir.path().join("bundle")).unwrap();
    west.bundle()
        .save_pem_dir(&dir.path().join("bundle"))
        .unwrap();
    std::fs::write(dir.path().join("discovery.json"), "{}").unwrap();
    let out = Command::new(BIN)
        .args(["--cluster", "west"])
        .arg("--identity-dir")
        .arg(dir.path().join("gw"))
        .arg("--trust-bundle")
        .arg(dir.path().join("bundle"))
        .arg("--links")
        .arg(dir.path().join("links.json"))
        .arg("--discovery-file")
        .arg(dir.path().join("discovery.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--links") && stderr.contains("not a JSON list"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
