//! What the federation controller costs: `cargo bench -p mesh-cli --bench controller`.
//!
//! Real processes, as an operator runs them: two `mesh devcluster` API servers (west and east),
//! a Link in west to east, and west's `mesh controller`. The bench process is the client that
//! changes east and watches west.
//!
//! 1. Latency, one service at a time (`LATENCY_SERVICES`): from the create of an exported
//!    Service in east to (a) its mirror `<svc>-east` appearing in west (seen by a watch of
//!    west) and (b) west's DNS answering `<svc>.<ns>.svc.east.mesh.local` with an address.
//! 2. Scale (`SCALE_SERVICES` exported Services on the one Link): the time until every mirror
//!    exists, and the controller process's resident memory (`VmRSS`, peak `VmHWM`) and CPU time
//!    meanwhile, read from `/proc`.
//!
//! The output ends with a markdown table for BENCHMARKS.md. `MESH_BENCH_SERVICES` overrides the
//! scale phase's count (for a quick check of the harness itself).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use mesh_api::crd::Link;
use serde_json::json;
use tokio::time::Instant;

use support::{MESH, Process, create_issuer, create_root, devcluster, dns_a, free_port};

const LATENCY_SERVICES: usize = 100;
const SCALE_SERVICES: usize = 10_000;
/// Creates in flight at once in the scale phase.
const CREATES_IN_FLIGHT: usize = 32;

async fn client(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn prepare(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in mesh_api::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in ["mesh", "shop"] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
}

fn exported(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop",
            "labels": {"app": name, "mesh.io/exported": "true"}},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap()
}

/// Whether west's DNS answers `name` (type A) with at least one address.
fn dns_answers(port: u16, name: &str) -> bool {
    dns_a(port, name).is_some_and(|m| {
        m.response_code() == hickory_proto::op::ResponseCode::NoError && !m.answers().is_empty()
    })
}

/// Resident and peak memory (KiB) and CPU seconds of a process, from /proc.
fn usage(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // `after` starts at field 3 (state): utime is field 14, so index 11.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (field("VmRSS:"), field("VmHWM:"), cpu)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let west_issuer = create_issuer(dir.path(), "west");
    let east_root_dir = create_root(dir.path(), "east");
    let east_root = std::fs::read_to_string(east_root_dir.join("root.crt")).unwrap();

    let (_west_cluster, west_kubeconfig) = devcluster(dir.path(), "west");
    let (_east_cluster, east_kubeconfig) = devcluster(dir.path(), "east");
    let west = client(&west_kubeconfig).await;
    let east = client(&east_kubeconfig).await;
    prepare(&west).await;
    prepare(&east).await;

    // The Link, as `mesh multicluster link` would write it.
    let secrets: Api<Secret> = Api::namespaced(west.clone(), "mesh");
    let kubeconfig = std::fs::read_to_string(&east_kubeconfig).unwrap();
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "east-credentials", "namespace": "mesh"}
    }))
    .unwrap();
    secret.data = Some(std::collections::BTreeMap::from([(
        mesh_api::crd::CREDENTIALS_SECRET_KEY.to_owned(),
        k8s_openapi::ByteString(kubeconfig.into_bytes()),
    )]));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let link: Link = serde_json::from_value(json!({
        "apiVersion": "multicluster.mesh.io/v1alpha1", "kind": "Link",
        "metadata": {"name": "east", "namespace": "mesh"},
        "spec": {"clusterName": "east", "trustDomain": "east",
            "gateway": {"addresses": ["127.0.0.1"], "identity": "spiffe://east/ns/mesh/sa/mesh-gateway"},
            "credentialsSecret": "east-credentials", "trustBundle": east_root}
    }))
    .unwrap();
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    links.create(&PostParams::default(), &link).await.unwrap();

    let dns_port = free_port();
    let admin = free_port();
    let controller = Process(
        Command::new(MESH)
            .args(["controller", "--cluster", "west", "--namespace", "mesh"])
            .arg("--kubeconfig")
            .arg(&west_kubeconfig)
            .arg("--issuer-dir")
            .arg(&west_issuer)
            .args(["--identity-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--discovery-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--dns-addr", &format!("127.0.0.1:{dns_port}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--gateway-egress", "10.0.0.50:4181"])
            .env("MESH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = controller.0.id();

    // Mirrors as west sees them: first-seen time per name.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let (seen, west) = (seen.clone(), west.clone());
        tokio::spawn(async move {
            let services: Api<Service> = Api::namespaced(west, "shop");
            let config = watcher::Config::default().labels("mesh.io/cluster-name=east");
            let events = watcher(services, config)
                .default_backoff()
                .applied_objects();
            futures_util::pin_mut!(events);
            while let Some(Ok(service)) = events.next().await {
                let name = service.metadata.name.unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        });
    }
    // The controller is up once it mirrors a first service.
    let east_services: Api<Service> = Api::namespaced(east.clone(), "shop");
    east_services
        .create(&PostParams::default(), &exported("warmup"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dns_answers(dns_port, "warmup.shop.svc.east.mesh.local") {
        assert!(
            Instant::now() < deadline,
            "the controller never mirrored warmup"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (idle_rss, _, _) = usage(pid);

    // 1. Latency, one at a time.
    let mut to_mirror = Vec::new();
    let mut to_dns = Vec::new();
    for i in 0..LATENCY_SERVICES {
        let name = format!("svc-{i}");
        let created = Instant::now();
        east_services
            .create(&PostParams::default(), &exported(&name))
            .await
            .unwrap();
        let dns_name = format!("{name}.shop.svc.east.mesh.local");
        let deadline = created + Duration::from_secs(30);
        while !dns_answers(dns_port, &dns_name) {
            assert!(Instant::now() < deadline, "{name} never answered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        to_dns.push(created.elapsed());
        let mirror = format!("{name}-east");
        loop {
            if let Some(at) = seen.lock().unwrap().get(&mirror) {
                to_mirror.push(at.saturating_duration_since(created));
                break;
            }
            assert!(Instant::now() < deadline, "{mirror} never seen");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    to_mirror.sort();
    to_dns.sort();

    // 2. Scale.
    let scale = std::env::var("MESH_BENCH_SERVICES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(SCALE_SERVICES);
    let (_, _, cpu_before) = usage(pid);
    let started = Instant::now();
    futures_util::stream::iter(0..scale)
        .for_each_concurrent(CREATES_IN_FLIGHT, |i| {
            let east_services = east_services.clone();
            async move {
                east_services
                    .create(&PostParams::default(), &exported(&format!("bulk-{i}")))
                    .await
                    .unwrap();
            }
        })
        .await;
    let created_all = started.elapsed();
    let mirrors: Api<Service> = Api::namespaced(west.clone(), "shop");
    let wanted = scale + LATENCY_SERVICES + 1;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut peak_rss = 0;
    loop {
        let (rss, _, _) = usage(pid);
        peak_rss = peak_rss.max(rss);
        let count = mirrors
            .list_metadata(&ListParams::default().labels("mesh.io/cluster-name=east"))
            .await
            .unwrap()
            .items
            .len();
        if count >= wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {count} of {wanted} mirrors"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mirrored_all = started.elapsed();
    let (_, _, cpu_after) = usage(pid);
    // Settled: a few seconds with nothing to do.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (settled_rss, hwm, _) = usage(pid);
    let dns_scale = format!("bulk-{}.shop.svc.east.mesh.local", scale - 1);
    assert!(
        dns_answers(dns_port, &dns_scale),
        "the last mirror has a DNS answer"
    );

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("\n| measure | {LATENCY_SERVICES} services, one at a time: p50 / p99 / max (ms) |");
    println!("|---|---|");
    println!(
        "| export to mirror in west | {:.1} / {:.1} / {:.1} |",
        percentile(&to_mirror, 0.5),
        percentile(&to_mirror, 0.99),
        percentile(&to_mirror, 1.0)
    );
    println!(
        "| export to DNS answer in west | {:.1} / {:.1} / {:.1} |",
        percentile(&to_dns, 0.5),
        percentile(&to_dns, 0.99),
        percentile(&to_dns, 1.0)
    );
    println!();
    println!("| {scale} exported services on one link | value |");
    println!("|---|---|");
    println!(
        "| created in east | {:.1} s ({CREATES_IN_FLIGHT} in flight) |",
        created_all.as_secs_f64()
    );
    println!(
        "| all mirrored in west, from the first create | {:.1} s |",
        mirrored_all.as_secs_f64()
    );
    println!(
        "| controller CPU meanwhile | {:.1} s |",
        cpu_after - cpu_before
    );
    println!(
        "| controller RSS idle (one service) | {:.1} MiB |",
        mib(idle_rss)
    );
    println!(
        "| controller RSS peak while mirroring | {:.1} MiB |",
        mib(peak_rss.max(hwm))
    );
    println!(
        "| controller RSS settled ({} mirrors) | {:.1} MiB |",
        wanted,
        mib(settled_rss)
    );
}
