//! What discovery costs: `cargo bench -p mesh-federation --bench discovery`.
//!
//! Two push scenarios, each on its own dev cluster (with its endpoints controller) and its own
//! discovery server on loopback, both in this process:
//! - one target: 1,000 `Destination.Get` streams on one Service of 10 endpoints;
//! - spread: the same 1,000 streams over 100 Services (10 each), which all select the same 10
//!   pods, so that one pod's readiness changes 100 EndpointSlices at once.
//!
//! The streams are opened with the raw generated client over 20 HTTP/2 connections (as 20
//! proxies with 50 targets each would). A pod's readiness is then flipped `MESH_BENCH_CHANGES`
//! times (default 20) through the API; for every change and every stream, the time from just
//! before the API write to the stream's receipt of the Update that shows the change is recorded.
//! That path is the whole control plane: the dev cluster's endpoints controller rewrites the
//! slices, the cache's watch applies them, the index is rebuilt, each stream resolves and sends.
//!
//! A third measurement rebuilds the index from 10,000 Services (30,000 endpoints) in memory, as
//! the controller does at each change (build, then carry over unchanged entries), to show what
//! one rebuild costs at the size the controller must handle, and what resolving one target
//! costs a stream.
//!
//! The output is a set of lines, then the same figures as markdown tables for BENCHMARKS.md.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use mesh_api::crd::{Link, TrafficSplit};
use mesh_api::discovery::destination_client::DestinationClient;
use mesh_api::discovery::{GetDestination, Update, get_destination};
use mesh_e2e::devcluster::{DevCluster, DevClusterConfig};
use mesh_federation::cache::Cache;
use mesh_federation::discovery::target::socket_addr;
use mesh_federation::discovery::{
    DiscoveryConfig, DiscoveryMetrics, DiscoveryService, Index, Objects, Target,
};
use mesh_trust::TrustDomain;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};

type BoxError = Box<dyn Error + Send + Sync>;

/// Streams in each push scenario.
const STREAMS: usize = 1_000;
/// HTTP/2 connections the streams share.
const CONNECTIONS: usize = 20;
/// Pods behind every Service; the first one's readiness is flipped.
const PODS: usize = 10;
/// Readiness flips per scenario, unless `MESH_BENCH_CHANGES` says otherwise.
const DEFAULT_CHANGES: usize = 20;
/// Services in the index build measurement.
const INDEX_SERVICES: usize = 10_000;
/// The longest one change may take to reach every stream before the run is abandoned.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let changes = match std::env::var("MESH_BENCH_CHANGES") {
        Ok(value) => value
            .parse()
            .map_err(|e| format!("MESH_BENCH_CHANGES={value:?}: {e}"))?,
        Err(_) => DEFAULT_CHANGES,
    };
    let mut pushes = Vec::new();
    for (name, targets) in [("one target", 1), ("spread", 100)] {
        println!("{name}: {STREAMS} streams over {targets} target(s), {changes} changes ...");
        let push = push_scenario(name, targets, changes).await?;
        println!(
            "  p50 {}  p99 {}  max {}  total {}  ({} deliveries, {:.2} updates per stream per change)",
            ms(push.percentile(0.50)),
            ms(push.percentile(0.99)),
            ms(push.max()),
            ms(push.total),
            push.latencies.len(),
            push.updates_per_delivery(),
        );
        pushes.push(push);
    }
    println!("index build: {INDEX_SERVICES} Services ...");
    let build = index_build(INDEX_SERVICES)?;
    println!(
        "  rebuild {} (median of {}), resolve {:.1} µs per target",
        ms(build.build),
        build.runs,
        build.resolve.as_secs_f64() * 1e6
    );

    println!();
    println!(
        "| scenario | streams | targets | changes | p50 | p99 | max | total | updates per stream per change |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for push in &pushes {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            push.name,
            STREAMS,
            push.targets,
            push.changes,
            ms(push.percentile(0.50)),
            ms(push.percentile(0.99)),
            ms(push.max()),
            ms(push.total),
            push.updates_per_delivery(),
        );
    }
    println!();
    println!("| Services | endpoints | index rebuild (median) | resolve per target |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {:.1} µs |",
        build.services,
        build.endpoints,
        ms(build.build),
        build.resolve.as_secs_f64() * 1e6
    );
    Ok(())
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

// === push scenarios ===

/// The figures of one push scenario.
struct Push {
    name: &'static str,
    targets: usize,
    changes: usize,
    /// One per stream per change, sorted.
    latencies: Vec<Duration>,
    /// From the first API write to the last receipt.
    total: Duration,
    /// Updates the server sent during the changes.
    updates: u64,
}

impl Push {
    fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank.
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    fn updates_per_delivery(&self) -> f64 {
        self.updates as f64 / self.latencies.len().max(1) as f64
    }
}

/// What a stream saw: its index, whether the flipped pod was ready, and when.
type Receipt = (usize, bool, Instant);

async fn push_scenario(
    name: &'static str,
    targets: usize,
    changes: usize,
) -> Result<Push, BoxError> {
    let cluster = DevCluster::start(DevClusterConfig {
        endpoints_controller: true,
        ..DevClusterConfig::default()
    })
    .await?;
    let client = client_for(cluster.kubeconfig()).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in mesh_api::crds() {
        crds.create(&PostParams::default(), &crd).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..PODS {
        let name = format!("bench-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"serviceAccountName": "bench", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "mesh-proxy"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        set_pod(&pods, &name, Some(pod_ip(i)), true).await?;
    }
    for i in 0..targets {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}")},
            "spec": {"selector": {"app": "bench"},
                "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))?;
        services.create(&PostParams::default(), &service).await?;
    }

    let cache = Cache::start(&client);
    timeout(CHANGE_TIMEOUT, cache.wait_ready())
        .await
        .map_err(|_| "the cache did not list every kind in time")?;
    let metrics = DiscoveryMetrics::default();
    let discovery = DiscoveryService::new(
        DiscoveryConfig::new("bench", TrustDomain::new("bench")?),
        cache,
        metrics.clone(),
    )?;
    let addr = serve(&discovery).await?;
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }

    // Every stream reports each update it receives.
    let (receipts, mut received) = mpsc::unbounded_channel::<Receipt>();
    let flipped = SocketAddr::new(IpAddr::V4(pod_ip(0)), 8080);
    for stream_index in 0..STREAMS {
        let mut client = DestinationClient::new(channels[stream_index % CONNECTIONS].clone());
        let request = GetDestination {
            target: Some(get_destination::Target::Authority(format!(
                "svc-{}.default.svc.cluster.local:80",
                stream_index % targets
            ))),
            caller_identity: String::new(),
        };
        let mut stream = client.get(request).await?.into_inner();
        let receipts = receipts.clone();
        tokio::spawn(async move {
            while let Ok(Some(update)) = stream.message().await {
                let at = Instant::now();
                if let Some(ready) = ready_of(&update, flipped) {
                    if receipts.send((stream_index, ready, at)).is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(receipts);

    // Everyone starts from all pods ready.
    collect(&mut received, true, Instant::now(), None).await?;
    let before = metrics.updates_sent();

    let mut latencies = Vec::with_capacity(STREAMS * changes);
    let first_write = Instant::now();
    for change in 0..changes {
        let ready = change % 2 == 1;
        let written = Instant::now();
        set_pod(&pods, "bench-0", None, ready).await?;
        collect(&mut received, ready, written, Some(&mut latencies)).await?;
    }
    let total = first_write.elapsed();
    latencies.sort();
    Ok(Push {
        name,
        targets,
        changes,
        latencies,
        total,
        updates: metrics.updates_sent() - before,
    })
}

/// Waits until every stream has reported `ready` for the flipped pod; records each stream's
/// delay since `written`.
async fn collect(
    received: &mut mpsc::UnboundedReceiver<Receipt>,
    ready: bool,
    written: Instant,
    mut latencies: Option<&mut Vec<Duration>>,
) -> Result<(), BoxError> {
    let deadline = written + CHANGE_TIMEOUT;
    let mut done = HashSet::with_capacity(STREAMS);
    while done.len() < STREAMS {
        let (stream, seen, at) = tokio::time::timeout_at(deadline, received.recv())
            .await
            .map_err(|_| format!("only {} of {STREAMS} streams saw the change", done.len()))?
            .ok_or("every stream ended")?;
        if seen == ready && done.insert(stream) {
            if let Some(latencies) = latencies.as_deref_mut() {
                latencies.push(at.saturating_duration_since(written));
            }
        }
    }
    Ok(())
}

/// Whether the endpoint at `addr` is ready in `update`, if it is listed.
fn ready_of(update: &Update, addr: SocketAddr) -> Option<bool> {
    update
        .endpoints
        .iter()
        .find(|e| e.addr.as_ref().and_then(|a| socket_addr(a).ok()) == Some(addr))
        .map(|e| e.ready)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

async fn set_pod(
    pods: &Api<Pod>,
    name: &str,
    ip: Option<Ipv4Addr>,
    ready: bool,
) -> Result<(), BoxError> {
    let mut status = json!({"conditions": [{"type": "Ready",
        "status": if ready { "True" } else { "False" }}]});
    if let Some(ip) = ip {
        status["podIP"] = Value::String(ip.to_string());
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

async fn client_for(kubeconfig: &str) -> Result<Client, BoxError> {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn serve(service: &DiscoveryService) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Server::builder().add_service(service.clone().into_server());
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(addr)
}

// === index build ===

struct Build {
    services: usize,
    endpoints: usize,
    runs: usize,
    build: Duration,
    resolve: Duration,
}

/// Builds the index of `count` Services (3 meshed endpoints each, 1 in 100 a mirror, 1 in 100
/// the root of a split) several times; the median build, and the mean time to resolve each
/// Service once.
fn index_build(count: usize) -> Result<Build, BoxError> {
    const RUNS: usize = 5;
    let mut services = Vec::with_capacity(count);
    let mut slices = Vec::with_capacity(count);
    let mut pods = HashMap::with_capacity(count * 3);
    let mut splits = Vec::new();
    for i in 0..count {
        let namespace = format!("ns-{}", i % 100);
        let name = format!("svc-{i}");
        let mut labels = json!({});
        let mut annotations = json!({"config.mesh.io/opaque-ports": "3306"});
        if i % 100 == 1 {
            labels = json!({"mesh.io/mirrored-service": "true", "mesh.io/cluster-name": "east"});
            annotations["mesh.io/remote-svc-fq-name"] =
                json!(format!("{name}.{namespace}.svc.cluster.local"));
        }
        services.push(Arc::new(serde_json::from_value::<Service>(json!({
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                "annotations": annotations},
            "spec": {"clusterIP": format!("10.{}.{}.{}", 96 + i / 62_500, (i / 250) % 250, i % 250 + 1),
                "ports": [{"name": "http", "port": 80}, {"name": "mysql", "port": 3306}]},
        }))?));
        let mut endpoints = Vec::new();
        for e in 0..3 {
            let pod = format!("{name}-{e}");
            let n = i * 3 + e;
            let ip = format!("10.200.{}.{}", n / 250 % 250, n % 250 + 1);
            endpoints.push(json!({"addresses": [ip], "zone": format!("zone-{e}"),
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}}));
            pods.insert(
                (namespace.clone(), pod.clone()),
                Arc::new(serde_json::from_value::<Pod>(json!({
                    "metadata": {"name": pod, "namespace": namespace,
                        "labels": {"app": name, "pod-template-hash": "abc123"}},
                    "spec": {"serviceAccountName": name,
                        "containers": [{"name": "app"}, {"name": "mesh-proxy"}]},
                }))?),
            );
        }
        slices.push(Arc::new(serde_json::from_value::<EndpointSlice>(json!({
            "metadata": {"name": format!("{name}-abcde"), "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "mysql", "port": 3306}],
            "endpoints": endpoints,
        }))?));
        if i % 100 == 2 {
            splits.push(Arc::new(serde_json::from_value::<TrafficSplit>(json!({
                "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"service": name, "backends": [
                    {"service": format!("{name}-v1"), "weight": 90},
                    {"service": format!("{name}-v2"), "weight": 10}]},
            }))?));
        }
    }
    let links = vec![Arc::new(serde_json::from_value::<Link>(json!({
        "apiVersion": "multicluster.mesh.io/v1alpha1", "kind": "Link",
        "metadata": {"name": "east", "namespace": "mesh"},
        "spec": {"clusterName": "east", "trustDomain": "east",
            "gateway": {"addresses": ["192.0.2.1"], "identity": "spiffe://east/ns/mesh/sa/mesh-gateway"},
            "credentialsSecret": "east", "trustBundle": ""},
    }))?)];

    let mut config = DiscoveryConfig::new("bench", TrustDomain::new("bench")?);
    config.gateway_egress = Some("10.0.0.1:4181".parse()?);
    let settings = Arc::new(config.validate()?);
    let pod =
        |namespace: &str, name: &str| pods.get(&(namespace.to_owned(), name.to_owned())).cloned();
    let objects = Objects {
        services: &services,
        slices: &slices,
        splits: &splits,
        links: &links,
        pod: &pod,
    };

    // As the controller does at each change: build, then carry over the unchanged entries of
    // the previous index (all of them here, which is the most comparing there can be).
    let mut builds = Vec::with_capacity(RUNS);
    let mut index = Index::build(settings.clone(), &objects).0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let (mut built, _) = Index::build(settings.clone(), &objects);
        built.reuse_unchanged(&index);
        builds.push(started.elapsed());
        index = built;
    }
    builds.sort();

    let targets: Vec<Target> = (0..count)
        .map(|i| {
            Target::parse_authority(
                &format!("svc-{i}.ns-{}.svc.cluster.local:80", i % 100),
                "cluster.local",
            )
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut endpoints = 0;
    for target in &targets {
        endpoints += index.resolve(target).endpoints.len();
    }
    let resolve = started.elapsed() / u32::try_from(count)?;

    Ok(Build {
        services: count,
        endpoints,
        runs: RUNS,
        build: builds[RUNS / 2],
        resolve,
    })
}
