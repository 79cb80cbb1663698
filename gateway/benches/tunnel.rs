//! What the gateway pair costs: `cargo bench -p mesh-gateway --bench tunnel`.
//!
//! Two gateways on loopback (west and east, separate roots), in QUIC mode and then in TCP mode,
//! with the same code and the same checks. A client opens tunnels through west's egress port
//! with the proxy's own `open_tunnel`; east's ingress connects to a sink standing in for the
//! endpoint's inbound proxy. No inner TLS session runs here, so the figures are the gateways'
//! alone (plus the client's outer TLS session to the egress port).
//!
//! - setup: tunnels opened one after another on a warm link, each to its open response:
//!   mean, p50 and p99.
//! - bulk: `BULK_MIB` MiB through one tunnel to the sink: MB/s, and MB per CPU-second of this
//!   whole process (client, both gateways and the sink share it, so the per-core figure is a
//!   lower bound for the gateways).
//!
//! The output ends with a markdown table for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_gateway::{Gateway, GatewayConfig, Link, Timeouts, Transport, gateway_identity};
use mesh_proxy::discovery::{Resolve, StaticDiscovery, TunnelMeta};
use mesh_proxy::outbound::OutboundTls;
use mesh_proxy::tunnel::open_tunnel;
use mesh_test_support::pki::{Domain, bundles};
use mesh_trust::SpiffeId;
use mesh_trust::ca::{DEFAULT_LEAF_LIFETIME, Validity};
use mesh_trust::tls::{CertResolver, WorkloadCredentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

const AUTHORITY: &str = "sink.default.svc.cluster.local:9000";
const SETUP_TUNNELS: usize = 500;
const BULK_MIB: u64 = 512;

/// Reads everything, then answers with the byte count.
async fn sink() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = conn.write_all(&total.to_be_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

fn gateway_creds(domain: &Domain) -> WorkloadCredentials {
    let id = gateway_identity(&domain.td, "mesh").unwrap();
    domain.creds_with(&id, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
}

struct Pair {
    tls: OutboundTls,
    client: SpiffeId,
    tunnel: TunnelMeta,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

async fn pair(transport: Transport) -> Pair {
    let west = Domain::new("west.local");
    let east = Domain::new("east.local");
    let bundles = bundles(&[&west, &east]);
    let sink_port = sink().await;
    let json = format!(
        r#"{{ "{AUTHORITY}": {{ "endpoints": [ {{ "addr": "127.0.0.1:9000", "identity": "{}" }} ] }} }}"#,
        east.id("sink")
    );
    let discovery: Arc<dyn Resolve> =
        Arc::new(StaticDiscovery::from_json("east.json", &json).unwrap());
    let none: Arc<dyn Resolve> = Arc::new(StaticDiscovery::from_json("west.json", "{}").unwrap());
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let timeouts = Timeouts {
        tunnel_idle: Duration::from_secs(60),
        ..Timeouts::default()
    };

    let (exports_tx, exports) = watch::channel(BTreeSet::from([AUTHORITY.to_owned()]));
    let (west_links_tx, west_links) = watch::channel(Vec::new());
    let (east_links_tx, east_links) = watch::channel(Vec::new());
    let (_no_exports_tx, no_exports) = watch::channel(BTreeSet::new());

    let mut config = GatewayConfig::new(
        "west",
        Arc::new(CertResolver::new(gateway_creds(&west)).unwrap()),
        bundles.clone(),
        any,
        any,
        west_links,
        no_exports,
        none,
    );
    config.transport = transport;
    config.timeouts = timeouts;
    let west_gw = Gateway::bind(config).await.unwrap();
    let (west_quic, west_egress) = (west_gw.quic_addr(), west_gw.egress_addr());
    tokio::spawn(west_gw.run(std::future::pending()));

    let mut config = GatewayConfig::new(
        "east",
        Arc::new(CertResolver::new(gateway_creds(&east)).unwrap()),
        bundles.clone(),
        any,
        any,
        east_links,
        exports,
        discovery,
    );
    config.transport = transport;
    config.timeouts = timeouts;
    config.inbound_port = sink_port;
    let east_gw = Gateway::bind(config).await.unwrap();
    let east_quic = east_gw.quic_addr();
    tokio::spawn(east_gw.run(std::future::pending()));

    let link = |cluster: &str, domain: &Domain, addr: SocketAddr| Link {
        cluster: cluster.into(),
        trust_domain: domain.td.clone(),
        addresses: vec![addr.ip().to_string()],
        port: addr.port(),
        gateway_identity: gateway_identity(&domain.td, "mesh").unwrap(),
    };
    west_links_tx.send_replace(vec![link("east", &east, east_quic)]);
    east_links_tx.send_replace(vec![link("west", &west, west_quic)]);

    let tls = OutboundTls::new(
        bundles.clone(),
        Arc::new(CertResolver::new(west.creds("client")).unwrap()),
    );
    Pair {
        tls,
        client: west.id("client"),
        tunnel: TunnelMeta {
            cluster: "east".into(),
            authority: AUTHORITY.into(),
            gateway: west_egress,
            gateway_identity: gateway_identity(&west.td, "mesh").unwrap(),
            remote_trust_domain: east.td.clone(),
        },
        _keep: vec![
            Box::new(exports_tx),
            Box::new(west_links_tx),
            Box::new(east_links_tx),
            Box::new(_no_exports_tx),
        ],
    }
}

async fn open(pair: &Pair) -> mesh_proxy::tunnel::GatewayStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (stream, _) = open_tunnel(
        &pair.tls,
        &pair.client,
        &pair.tunnel,
        ProtocolHint::Opaque,
        deadline,
    )
    .await
    .unwrap();
    stream
}

fn cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

struct Figures {
    mode: &'static str,
    setup_mean: Duration,
    setup_p50: Duration,
    setup_p99: Duration,
    mb_per_s: f64,
    mb_per_cpu_s: f64,
}

async fn measure(mode: &'static str, transport: Transport) -> Figures {
    let pair = pair(transport).await;
    // Warm the link (and, in QUIC mode, open its connection).
    for _ in 0..20 {
        drop(open(&pair).await);
    }
    let mut setup = Vec::with_capacity(SETUP_TUNNELS);
    for _ in 0..SETUP_TUNNELS {
        let started = Instant::now();
        let stream = open(&pair).await;
        setup.push(started.elapsed());
        drop(stream);
    }
    setup.sort();
    let mean = setup.iter().sum::<Duration>() / setup.len() as u32;

    let chunk = vec![0x5au8; 256 * 1024];
    let total = BULK_MIB << 20;
    let mut stream = open(&pair).await;
    let (cpu_before, started) = (cpu_seconds(), Instant::now());
    let mut sent = 0u64;
    while sent < total {
        stream.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
    }
    stream.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await.unwrap();
    let (elapsed, cpu) = (started.elapsed(), cpu_seconds() - cpu_before);
    assert_eq!(u64::from_be_bytes(count), total, "the sink got every byte");
    let mb = total as f64 / 1e6;
    Figures {
        mode,
        setup_mean: mean,
        setup_p50: setup[setup.len() / 2],
        setup_p99: setup[setup.len() * 99 / 100],
        mb_per_s: mb / elapsed.as_secs_f64(),
        mb_per_cpu_s: mb / cpu,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let figures = runtime.block_on(async {
        vec![
            measure("QUIC", Transport::Quic).await,
            measure("TCP", Transport::Tcp).await,
        ]
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| transport | tunnel setup mean / p50 / p99 (ms) | bulk MB/s | bulk MB per CPU-second |"
    );
    println!("|---|---|---|---|");
    for f in &figures {
        println!(
            "| {} | {:.2} / {:.2} / {:.2} | {:.0} | {:.0} |",
            f.mode,
            ms(f.setup_mean),
            ms(f.setup_p50),
            ms(f.setup_p99),
            f.mb_per_s,
            f.mb_per_cpu_s
        );
    }
}
