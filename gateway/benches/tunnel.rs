//! What a gateway pair costs: `cargo bench -p mesh-gateway --bench tunnel`.
//!
//! Two gateways on loopback (west and east, separate roots), in QUIC mode and then in TCP mode,
//! with the same code and the same checks. A client opens tunnels through west's egress port
//! with the proxy's own `open_tunnel`; east's ingress connects to a backend standing in for the
//! endpoint's inbound proxy. No inner TLS session runs here, so the figures are the gateways'
//! alone (plus the client's outer TLS session to the egress port); the proxies' own cost is the
//! `hop` bench of mesh-proxy.
//!
//! Three roles, three runtimes, so that CPU time can be told apart: the gateways (both, two
//! worker threads named `gateway`), the load generator (one thread) and the backends (one
//! thread). The gateways' CPU time is read per thread from `/proc/self/task/*/schedstat`.
//!
//! - setup: tunnels opened one after another on a warm link, each to its open response:
//!   mean, p50 and p99.
//! - requests: HTTP/1.1 keep-alive requests over `CONNECTIONS` tunnels (each tunnel carries one
//!   client connection), against the same requests sent straight to the backend in the same run:
//!   - latency: open loop at `RATE` requests per second, each latency measured from the
//!     request's scheduled start (no coordinated omission; mesh-test-support's load generator,
//!     as the proxy's `hop` bench); p50, p99, p99.9, and what the gateway pair adds to the
//!     direct path;
//!   - saturation: closed loop; requests per second, and per core the gateways used.
//! - bulk: `BULK_MIB` MiB through one tunnel to a sink: MB/s, and MB per gateway CPU-second.
//!
//! The output ends with markdown tables for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_gateway::{Gateway, GatewayConfig, Link, Timeouts, Transport, gateway_identity};
use mesh_proxy::discovery::{Resolve, StaticDiscovery, TunnelMeta};
use mesh_proxy::outbound::OutboundTls;
use mesh_proxy::tunnel::open_tunnel;
use mesh_test_support::backends;
use mesh_test_support::load::{self, LoadResult, Target};
use mesh_test_support::pki::{Domain, bundles};
use mesh_trust::SpiffeId;
use mesh_trust::ca::{DEFAULT_LEAF_LIFETIME, Validity};
use mesh_trust::tls::{CertResolver, WorkloadCredentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::time::Instant;

const AUTHORITY: &str = "backend.default.svc.cluster.local:9000";
const SETUP_TUNNELS: usize = 500;
const BULK_MIB: u64 = 512;
/// Offered load of the latency scenario, requests per second.
const RATE: f64 = 1000.0;
/// Tunnels (or direct connections) the requests are spread over.
const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);
/// The name of the gateways' runtime threads, by which their CPU time is found.
const GATEWAY_THREAD: &str = "gateway";
const HOST: &str = "backend.default.svc.cluster.local";

fn gateway_creds(domain: &Domain) -> WorkloadCredentials {
    let id = gateway_identity(&domain.td, "mesh").unwrap();
    domain.creds_with(&id, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
}

/// A linked gateway pair whose east side delivers tunnels to `backend_port`.
struct Pair {
    tls: OutboundTls,
    client: SpiffeId,
    tunnel: TunnelMeta,
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

async fn pair(transport: Transport, backend_port: u16) -> Pair {
    let west = Domain::new("west.local");
    let east = Domain::new("east.local");
    let bundles = bundles(&[&west, &east]);
    let json = format!(
        r#"{{ "{AUTHORITY}": {{ "endpoints": [ {{ "addr": "127.0.0.1:9000", "identity": "{}" }} ] }} }}"#,
        east.id("backend")
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
    let (no_exports_tx, no_exports) = watch::channel(BTreeSet::new());

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
    config.inbound_port = backend_port;
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
            Box::new(no_exports_tx),
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

/// CPU time used so far by this process's threads named [`GATEWAY_THREAD`].
fn gateway_cpu() -> Duration {
    let mut nanos = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim_end() != GATEWAY_THREAD {
            continue;
        }
        // The first field of schedstat is the time spent on a CPU, in nanoseconds.
        if let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) {
            nanos += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}

/// Runs `work` and returns its output with the gateways' CPU time meanwhile.
async fn with_gateway_cpu<T>(work: impl Future<Output = T>) -> (T, Duration) {
    let before = gateway_cpu();
    let out = work.await;
    (out, gateway_cpu().saturating_sub(before))
}

struct Setup {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

async fn setup(pair: &Pair) -> Setup {
    for _ in 0..20 {
        drop(open(pair).await);
    }
    let mut setup = Vec::with_capacity(SETUP_TUNNELS);
    for _ in 0..SETUP_TUNNELS {
        let started = Instant::now();
        let stream = open(pair).await;
        setup.push(started.elapsed());
        drop(stream);
    }
    setup.sort();
    Setup {
        mean: setup.iter().sum::<Duration>() / setup.len() as u32,
        p50: setup[setup.len() / 2],
        p99: setup[setup.len() * 99 / 100],
    }
}

struct Bulk {
    mb_per_s: f64,
    mb_per_gateway_cpu_s: f64,
}

async fn bulk(pair: &Pair) -> Bulk {
    let chunk = vec![0x5au8; 256 * 1024];
    let total = BULK_MIB << 20;
    let mut stream = open(pair).await;
    let started = Instant::now();
    let (count, cpu) = with_gateway_cpu(async {
        let mut sent = 0u64;
        while sent < total {
            stream.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        stream.shutdown().await.unwrap();
        let mut count = [0u8; 8];
        stream.read_exact(&mut count).await.unwrap();
        u64::from_be_bytes(count)
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(count, total, "the sink got every byte");
    let mb = total as f64 / 1e6;
    Bulk {
        mb_per_s: mb / elapsed.as_secs_f64(),
        mb_per_gateway_cpu_s: mb / cpu.as_secs_f64(),
    }
}

struct Requests {
    latency: LoadResult,
    saturation: LoadResult,
    saturation_gateway_cpu: Duration,
}

/// The latency run (open loop at [`RATE`]) and the saturation run (closed loop) on `target`,
/// each after a warm-up of the same load on the same connections.
async fn requests(target: Target) -> Requests {
    let connections = load::connect(&target, CONNECTIONS).await.unwrap();
    let (connections, _) = load::open_loop(connections, RATE, WARMUP).await.unwrap();
    let (connections, latency) = load::open_loop(connections, RATE, MEASURE).await.unwrap();
    let (connections, _) = load::closed_loop(connections, WARMUP).await.unwrap();
    let ((_, saturation), cpu) =
        with_gateway_cpu(async { load::closed_loop(connections, MEASURE).await.unwrap() }).await;
    for (name, run) in [("latency", &latency), ("saturation", &saturation)] {
        assert_eq!(
            run.errors, 0,
            "{name} run on {}: {:?}",
            target.name, run.first_error
        );
    }
    Requests {
        latency,
        saturation,
        saturation_gateway_cpu: cpu,
    }
}

/// Requests through `pair`: each connection is a tunnel.
fn tunnel_target(pair: Arc<Pair>) -> Target {
    Target::dial("the gateway pair", HOST, move || {
        let pair = pair.clone();
        async move { Ok(Box::new(open(&pair).await) as Box<dyn load::Io>) }
    })
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let gateways = runtime(GATEWAY_THREAD, 2);
    let load = runtime("load", 1);
    let backend = runtime("backend", 1);
    let backends = backends::start(&backend, [127, 0, 0, 1].into()).unwrap();
    let (sink_port, http_port, http_addr) =
        (backends.sink.port(), backends.http.port(), backends.http);

    eprintln!("tunnel: direct requests");
    let direct = load.block_on(requests(Target::tcp(http_addr, HOST)));
    let mut rows = Vec::new();
    for (mode, transport) in [("QUIC", Transport::Quic), ("TCP", Transport::Tcp)] {
        eprintln!("tunnel: {mode}: setup and bulk");
        let sink_pair = gateways.block_on(pair(transport, sink_port));
        let setup = load.block_on(setup(&sink_pair));
        let bulk = load.block_on(bulk(&sink_pair));
        eprintln!("tunnel: {mode}: requests");
        let http_pair = Arc::new(gateways.block_on(pair(transport, http_port)));
        let requests = load.block_on(requests(tunnel_target(http_pair)));
        rows.push((mode, setup, bulk, requests));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\nRequests: HTTP/1.1, {CONNECTIONS} connections, {} s measured after {} s of warm-up.\n",
        MEASURE.as_secs(),
        WARMUP.as_secs()
    );
    println!(
        "| path | p50 / p99 / p99.9 at {RATE:.0} req/s (ms) | added p50 / p99 (ms) | saturation req/s | req/s per gateway core |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| direct | {:.3} / {:.3} / {:.3} | | {:.0} | |",
        direct.latency.latency_ms(0.5),
        direct.latency.latency_ms(0.99),
        direct.latency.latency_ms(0.999),
        direct.saturation.rate()
    );
    for (mode, _, _, r) in &rows {
        let cores = r.saturation_gateway_cpu.as_secs_f64() / r.saturation.elapsed.as_secs_f64();
        println!(
            "| {mode} gateway pair | {:.3} / {:.3} / {:.3} | {:+.3} / {:+.3} | {:.0} | {:.0} |",
            r.latency.latency_ms(0.5),
            r.latency.latency_ms(0.99),
            r.latency.latency_ms(0.999),
            r.latency.latency_ms(0.5) - direct.latency.latency_ms(0.5),
            r.latency.latency_ms(0.99) - direct.latency.latency_ms(0.99),
            r.saturation.rate(),
            r.saturation.rate() / cores,
        );
    }
    println!();
    println!(
        "| transport | tunnel setup mean / p50 / p99 (ms) | bulk MB/s | bulk MB per gateway CPU-second |"
    );
    println!("|---|---|---|---|");
    for (mode, setup, bulk, _) in &rows {
        println!(
            "| {mode} | {:.2} / {:.2} / {:.2} | {:.0} | {:.0} |",
            ms(setup.mean),
            ms(setup.p50),
            ms(setup.p99),
            bulk.mb_per_s,
            bulk.mb_per_gateway_cpu_s
        );
    }
}
