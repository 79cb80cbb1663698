//! The discovery server against a dev cluster, through the proxy's own client
//! (`mesh_proxy::discovery::GrpcDiscovery`) and the raw generated tonic client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use mesh_api::common::{ProtocolHint, SocketAddr as ProtoSocketAddr};
use mesh_api::crd::{Link, TrafficSplit};
use mesh_api::discovery::destination_client::DestinationClient;
use mesh_api::discovery::{GetDestination, Update, get_destination};
use mesh_e2e::devcluster::{DevCluster, DevClusterConfig};
use mesh_federation::cache::Cache;
use mesh_federation::discovery::{DiscoveryConfig, DiscoveryMetrics, DiscoveryService};
use mesh_proxy::discovery::{
    Destination, DestinationWatch, GrpcDiscovery, GrpcDiscoveryOptions, Resolve, Target,
};
use mesh_trust::TrustDomain;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(10);
const GATEWAY: &str = "10.9.0.1:4181";
const WEB: &str = "web.default.svc.cluster.local:80";

// === the harness ===

/// Watch requests the controller's client made, by path.
type WatchCounts = Arc<Mutex<BTreeMap<String, usize>>>;

struct Harness {
    cluster: DevCluster,
    client: Client,
    cache: Cache,
    service: DiscoveryService,
    metrics: DiscoveryMetrics,
    channel: Channel,
    watches: WatchCounts,
}

/// A dev cluster with the endpoints controller and the CRDs, a cache of it, and the discovery
/// server on a loopback port.
async fn harness(gateway: Option<SocketAddr>) -> Harness {
    let cluster = DevCluster::start(DevClusterConfig {
        endpoints_controller: true,
        ..DevClusterConfig::default()
    })
    .await
    .unwrap();
    let config = support::config_for(cluster.kubeconfig()).await;
    let watches = WatchCounts::default();
    let counting = watches.clone();
    let client = ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&tower::layer::layer_fn(move |inner| CountWatches {
            inner,
            counts: counting.clone(),
        }))
        .build();
    support::install_crds(&client).await;

    let cache = Cache::start(&client);
    timeout(WAIT, cache.wait_ready())
        .await
        .expect("cache ready");
    let mut config = DiscoveryConfig::new("west", TrustDomain::new("west").unwrap());
    config.gateway_egress = gateway;
    let metrics = DiscoveryMetrics::default();
    let service = DiscoveryService::new(config, cache.clone(), metrics.clone()).unwrap();
    let channel = serve(&service).await;
    Harness {
        cluster,
        client,
        cache,
        service,
        metrics,
        channel,
        watches,
    }
}

/// Serves `service` on a loopback port; returns a channel to it.
async fn serve(service: &DiscoveryService) -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Server::builder().add_service(service.clone().into_server());
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

impl Harness {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create<K>(&self, value: Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(value).unwrap();
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap()
    }

    /// A pod labelled `app`, with a container port `http` 8080, the proxy when `meshed`, and
    /// the given IP and readiness.
    async fn pod(&self, name: &str, app: &str, ip: &str, meshed: bool, account: Option<&str>) {
        let mut containers = vec![json!({"name": "app", "image": "app",
            "ports": [{"name": "http", "containerPort": 8080}]})];
        if meshed {
            containers.push(json!({"name": "mesh-proxy", "image": "mesh-proxy"}));
        }
        let _: Pod = self
            .create(json!({
                "metadata": {"name": name, "labels": {"app": app, "pod": name}},
                "spec": {"containers": containers, "serviceAccountName": account},
            }))
            .await;
        self.api::<Pod>()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True"}]}})),
            )
            .await
            .unwrap();
    }

    async fn set_ready(&self, pod: &str, ready: bool) {
        let status = if ready { "True" } else { "False" };
        self.api::<Pod>()
            .patch_status(
                pod,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"conditions": [{"type": "Ready", "status": status}]}}),
                ),
            )
            .await
            .unwrap();
    }

    /// A Service selecting `app`, port 80 (`http`) to the container port named `http`.
    async fn service(&self, name: &str, app: &str, cluster_ip: &str, annotations: Value) {
        let _: Service = self
            .create(json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": {"selector": {"app": app}, "clusterIP": cluster_ip,
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                              {"name": "mysql", "port": 3306, "targetPort": 3306}]},
            }))
            .await;
    }

    fn resolver(&self) -> GrpcDiscovery {
        GrpcDiscovery::new(
            self.channel.clone(),
            GrpcDiscoveryOptions {
                caller_identity: "spiffe://west/ns/default/sa/client".into(),
                ..GrpcDiscoveryOptions::default()
            },
        )
    }

    async fn raw(
        &self,
        target: get_destination::Target,
    ) -> Result<Streaming<Update>, tonic::Status> {
        DestinationClient::new(self.channel.clone())
            .get(GetDestination {
                target: Some(target),
                caller_identity: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    fn watch_counts(&self) -> BTreeMap<String, usize> {
        self.watches.lock().unwrap().clone()
    }
}

/// Counts watch requests by path: the proof that streams share the cache's watches.
#[derive(Clone)]
struct CountWatches<S> {
    inner: S,
    counts: WatchCounts,
}

impl<S, B> tower::Service<http::Request<B>> for CountWatches<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true"))
        {
            *self
                .counts
                .lock()
                .unwrap()
                .entry(request.uri().path().to_owned())
                .or_default() += 1;
        }
        self.inner.call(request)
    }
}

/// Waits until the watched destination satisfies `ok`.
async fn until(
    watch: &mut DestinationWatch,
    what: &str,
    mut ok: impl FnMut(&Destination) -> bool,
) -> Arc<Destination> {
    let found = match timeout(WAIT, watch.wait_for(|d| d.as_deref().is_some_and(&mut ok))).await {
        Ok(Ok(destination)) => destination.clone(),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("timed out waiting for {what}; last: {:#?}", watch.borrow()))
}

async fn next(stream: &mut Streaming<Update>) -> Update {
    timeout(WAIT, stream.message())
        .await
        .expect("an update in time")
        .expect("a healthy stream")
        .expect("an open stream")
}

/// The first update that satisfies `ok`, skipping earlier states (a Service seen before its
/// slice, say).
async fn next_where(stream: &mut Streaming<Update>, mut ok: impl FnMut(&Update) -> bool) -> Update {
    loop {
        let update = next(stream).await;
        if ok(&update) {
            return update;
        }
    }
}

fn authority(authority: &str) -> get_destination::Target {
    get_destination::Target::Authority(authority.into())
}

fn target(input: &str) -> Target {
    Target::parse(input).unwrap()
}

fn addr_of(destination: &Destination) -> Vec<String> {
    destination
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

// === the tests ===

#[tokio::test]
async fn endpoints_carry_identity_zone_and_readiness() {
    let h = harness(None).await;
    h.service("web", "web", "10.96.0.10", json!({})).await;
    h.pod("web-0", "web", "10.1.0.1", true, Some("web")).await;
    h.pod("plain-0", "web", "10.1.0.2", false, None).await;

    let mut web = h.resolver().watch(target(WEB));
    let dest = until(&mut web, "two endpoints", |d| d.endpoints.len() == 2).await;
    assert!(dest.exists);
    assert_eq!(dest.authority, WEB);
    assert_eq!(addr_of(&dest), ["10.1.0.1:8080", "10.1.0.2:8080"]);
    let meshed = &dest.endpoints[0];
    assert_eq!(
        meshed.identity.as_ref().unwrap().as_str(),
        "spiffe://west/ns/default/sa/web"
    );
    assert_eq!((meshed.cluster.as_str(), meshed.ready), ("west", true));
    assert_eq!(meshed.labels["pod"], "web-0");
    assert!(meshed.tunnel.is_none());
    // No proxy container: plain text.
    assert_eq!(dest.endpoints[1].identity, None);

    // Not ready: still listed, marked so.
    h.set_ready("plain-0", false).await;
    let dest = until(&mut web, "plain-0 not ready", |d| {
        d.endpoints
            .iter()
            .any(|e| e.addr.port() == 8080 && !e.ready)
    })
    .await;
    assert!(dest.endpoints[0].ready && !dest.endpoints[1].ready);

    // Zones and hostnames come from the slice (here one written by hand, as for a Service
    // without a selector).
    let _: Service = h
        .create(json!({"metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}}))
        .await;
    let _: EndpointSlice = h
        .create(json!({
            "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "sql", "port": 5433}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "zone": "eu-west-1a", "hostname": "db-0",
                 "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "default"}},
                {"addresses": ["10.1.0.7"], "zone": "eu-west-1b", "conditions": {"ready": false}},
            ],
        }))
        .await;
    let mut db = h.raw(authority("db.default.svc:5432")).await.unwrap();
    let update = next_where(&mut db, |u| u.endpoints.len() == 2).await;
    assert_eq!(update.authority, "db.default.svc.cluster.local:5432");
    let zones: Vec<_> = update
        .endpoints
        .iter()
        .map(|e| {
            (
                e.zone.as_str(),
                e.hostname.as_str(),
                e.ready,
                e.identity.as_str(),
            )
        })
        .collect();
    assert_eq!(
        zones,
        [
            (
                "eu-west-1a",
                "db-0",
                true,
                "spiffe://west/ns/default/sa/web"
            ),
            ("eu-west-1b", "", false, ""),
        ]
    );
}

#[tokio::test]
async fn addresses_resolve_by_cluster_ip_and_by_pod_ip() {
    let h = harness(None).await;
    h.service("web", "web", "10.96.0.10", json!({})).await;
    h.pod("web-0", "web", "10.1.0.1", true, Some("web")).await;
    h.pod("web-1", "web", "10.1.0.2", true, Some("web")).await;
    let resolver = h.resolver();

    let mut by_ip = resolver.watch(Target::from("10.96.0.10:80".parse::<SocketAddr>().unwrap()));
    let dest = until(&mut by_ip, "the Service by cluster IP", |d| {
        d.endpoints.len() == 2
    })
    .await;
    assert_eq!(dest.authority, WEB);

    let mut by_pod = resolver.watch(Target::from("10.1.0.2:8080".parse::<SocketAddr>().unwrap()));
    let dest = until(&mut by_pod, "one endpoint", |d| d.exists).await;
    assert_eq!(dest.authority, WEB);
    assert_eq!(addr_of(&dest), ["10.1.0.2:8080"]);
    assert_eq!(
        dest.endpoints[0].identity.as_ref().unwrap().as_str(),
        "spiffe://west/ns/default/sa/web"
    );

    for unknown in ["10.96.0.10:81", "10.1.0.2:80", "192.0.2.1:443"] {
        let mut watch = resolver.watch(Target::from(unknown.parse::<SocketAddr>().unwrap()));
        let dest = until(&mut watch, unknown, |_| true).await;
        assert!(!dest.exists, "{unknown}");
        assert!(dest.endpoints.is_empty());
    }
}

#[tokio::test]
async fn an_unknown_service_appears_on_the_open_stream() {
    let h = harness(None).await;
    let mut stream = h
        .raw(authority("API.Default.svc.cluster.local.:80"))
        .await
        .unwrap();
    let first = next(&mut stream).await;
    assert!(!first.exists);
    assert!(first.endpoints.is_empty());

    h.service("api", "api", "10.96.0.11", json!({})).await;
    h.pod("api-0", "api", "10.1.0.5", true, None).await;
    // The Service appears first (with no endpoints, or already with its endpoint), then its
    // endpoint; the stream stays open throughout.
    let update = next(&mut stream).await;
    assert!(update.exists);
    assert_eq!(update.authority, "api.default.svc.cluster.local:80");
    let update = if update.endpoints.is_empty() {
        next_where(&mut stream, |u| !u.endpoints.is_empty()).await
    } else {
        update
    };
    assert_eq!(update.endpoints.len(), 1);
    assert_eq!(
        update.endpoints[0].identity,
        "spiffe://west/ns/default/sa/default"
    );
}

#[tokio::test]
async fn an_unrelated_change_sends_nothing() {
    let h = harness(None).await;
    h.service("web", "web", "10.96.0.10", json!({})).await;
    h.pod("web-0", "web", "10.1.0.1", true, None).await;
    let mut web = h.resolver().watch(target(WEB));
    until(&mut web, "the endpoint", |d| d.endpoints.len() == 1).await;
    let sent = h.metrics.updates_sent();

    h.service("other", "other", "10.96.0.12", json!({})).await;
    let deadline = Instant::now() + WAIT;
    while h.service.index().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the index never saw the new Service"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The index was rebuilt with the new Service; the web stream's answer did not change.
    assert_eq!(h.metrics.updates_sent(), sent);
    assert!(!web.has_changed().unwrap());
}

#[tokio::test]
async fn a_mirror_carries_tunnel_metadata() {
    let h = harness(Some(GATEWAY.parse().unwrap())).await;
    let _: Link = h
        .create(json!({
            "apiVersion": "multicluster.mesh.io/v1alpha1", "kind": "Link",
            "metadata": {"name": "east"},
            "spec": {"clusterName": "east", "trustDomain": "east.example",
                "gateway": {"addresses": ["192.0.2.1"], "identity": "spiffe://east.example/ns/mesh/sa/mesh-gateway"},
                "credentialsSecret": "east-kubeconfig", "trustBundle": ""},
        }))
        .await;
    for cluster in ["east", "north"] {
        let name = format!("api-{cluster}");
        let _: Service = h
            .create(json!({
                "metadata": {"name": name,
                    "labels": {"mesh.io/mirrored-service": "true", "mesh.io/cluster-name": cluster},
                    "annotations": {"mesh.io/remote-svc-fq-name": format!("api.default.svc.{cluster}.local")}},
                "spec": {"clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 8080}]},
            }))
            .await;
        let _: EndpointSlice = h
            .create(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": mesh_federation::MIRROR_SLICE_MANAGER}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 4181}],
                "endpoints": [{"addresses": ["10.9.0.1"], "conditions": {"ready": true}}],
            }))
            .await;
    }

    let resolver = h.resolver();
    let mut east = resolver.watch(target("api-east.default.svc.cluster.local:8080"));
    let dest = until(&mut east, "the mirror's endpoint", |d| {
        d.endpoints.len() == 1
    })
    .await;
    let endpoint = &dest.endpoints[0];
    assert_eq!(endpoint.cluster, "east");
    assert_eq!(endpoint.identity, None);
    let tunnel = endpoint.tunnel.as_ref().unwrap();
    assert_eq!(tunnel.cluster, "east");
    assert_eq!(tunnel.authority, "api.default.svc.east.local:8080");
    assert_eq!(tunnel.gateway, GATEWAY.parse().unwrap());
    assert_eq!(
        tunnel.gateway_identity.as_str(),
        "spiffe://west/ns/mesh/sa/mesh-gateway"
    );
    assert_eq!(tunnel.remote_trust_domain.as_str(), "east.example");

    // No Link for north: the mirror exists but has no endpoints, until its Link appears.
    let mut north = resolver.watch(target("api-north.default.svc.cluster.local:8080"));
    let dest = until(&mut north, "the unlinked mirror", |d| d.exists).await;
    assert!(dest.endpoints.is_empty());
    let _: Link = h
        .create(json!({
            "apiVersion": "multicluster.mesh.io/v1alpha1", "kind": "Link",
            "metadata": {"name": "north"},
            "spec": {"clusterName": "north", "trustDomain": "north",
                "gateway": {"addresses": ["192.0.2.2"], "identity": "spiffe://north/ns/mesh/sa/mesh-gateway"},
                "credentialsSecret": "north-kubeconfig", "trustBundle": ""},
        }))
        .await;
    let dest = until(&mut north, "the mirror once linked", |d| {
        d.endpoints.len() == 1
    })
    .await;
    assert_eq!(
        dest.endpoints[0]
            .tunnel
            .as_ref()
            .unwrap()
            .remote_trust_domain
            .as_str(),
        "north"
    );

    // A discovery server without a gateway (same cache) serves no mirror endpoints.
    let config = DiscoveryConfig::new("west", TrustDomain::new("west").unwrap());
    let without =
        DiscoveryService::new(config, h.cache.clone(), DiscoveryMetrics::default()).unwrap();
    let channel = serve(&without).await;
    let mut stream = DestinationClient::new(channel)
        .get(GetDestination {
            target: Some(authority("api-east.default:8080")),
            caller_identity: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let update = next(&mut stream).await;
    assert!(update.exists);
    assert!(update.endpoints.is_empty());
}

#[tokio::test]
async fn split_backends_carry_failover_priorities() {
    let h = harness(None).await;
    h.service("web", "web", "10.96.0.10", json!({})).await;
    let _: TrafficSplit = h
        .create(json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": "web-failover",
                "labels": {"failover.mesh.io/controlled-by": "mesh-failover"},
                "annotations": {"failover.mesh.io/primary-service": "web",
                    "failover.mesh.io/fallback-order": "web-east,web-north"}},
            "spec": {"service": "web", "backends": [
                {"service": "web-north", "weight": 0},
                {"service": "web", "weight": 0},
                {"service": "web-east", "weight": 1}]},
        }))
        .await;
    let mut web = h.resolver().watch(target(WEB));
    let dest = until(&mut web, "the split", |d| !d.split.is_empty()).await;
    let backends: Vec<_> = dest
        .split
        .backends()
        .iter()
        .map(|b| (b.authority.as_str(), b.weight, b.priority))
        .collect();
    assert_eq!(
        backends,
        [
            ("web.default.svc.cluster.local:80", 1, 0),
            ("web-east.default.svc.cluster.local:80", 1, 1),
            ("web-north.default.svc.cluster.local:80", 1, 2),
        ]
    );
}

#[tokio::test]
async fn opaque_ports_come_from_the_annotation() {
    let h = harness(None).await;
    h.service(
        "db",
        "db",
        "10.96.0.13",
        json!({"config.mesh.io/opaque-ports": "3306, 5000-5002, nonsense"}),
    )
    .await;
    let resolver = h.resolver();
    let mut mysql = resolver.watch(target("db.default.svc.cluster.local:3306"));
    let dest = until(&mut mysql, "the Service", |d| d.exists).await;
    assert_eq!(dest.protocol_hint, ProtocolHint::Opaque);
    assert_eq!(
        dest.opaque_ports.iter().copied().collect::<Vec<_>>(),
        [3306, 5000, 5001, 5002]
    );
    let mut http = resolver.watch(target("db.default.svc.cluster.local:80"));
    let dest = until(&mut http, "the Service", |d| d.exists).await;
    assert_eq!(dest.protocol_hint, ProtocolHint::Unknown);
    assert!(!dest.is_opaque(80) && dest.is_opaque(3306));
}

#[tokio::test]
async fn unreadable_targets_are_invalid_arguments() {
    let h = harness(None).await;
    let cases = [
        (None, "names no target"),
        (Some(authority("web")), "no port"),
        (Some(authority("web.default:0")), "not in 1..=65535"),
        (Some(authority("we b.default:80")), "may only hold"),
        (
            Some(get_destination::Target::Addr(ProtoSocketAddr {
                ip: vec![10, 0, 0],
                port: 80,
            })),
            "3 bytes long",
        ),
        (
            Some(get_destination::Target::Addr(ProtoSocketAddr {
                ip: vec![10, 0, 0, 1],
                port: 0,
            })),
            "port 0",
        ),
    ];
    for (target, message) in cases {
        let status = DestinationClient::new(h.channel.clone())
            .get(GetDestination {
                target: target.clone(),
                caller_identity: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{target:?}");
        assert!(
            status.message().contains(message),
            "{target:?}: {}",
            status.message()
        );
    }
    assert_eq!(h.metrics.open_streams(), 0);
}

#[tokio::test]
async fn subscribers_share_the_cache_watches() {
    let h = harness(None).await;
    h.service("web", "web", "10.96.0.10", json!({})).await;
    h.pod("web-0", "web", "10.1.0.1", true, None).await;
    // Let the cache see the pod before counting.
    let mut first = h.resolver().watch(target(WEB));
    until(&mut first, "the endpoint", |d| d.endpoints.len() == 1).await;
    let before = h.watch_counts();
    for kind in [
        "services",
        "endpointslices",
        "pods",
        "trafficsplits",
        "links",
    ] {
        let watches: usize = before
            .iter()
            .filter(|(path, _)| path.ends_with(kind))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(watches, 1, "{kind}: {before:?}");
    }

    // Two more subscribers of the same target, through two separate clients (two proxies).
    let mut second = h.resolver().watch(target(WEB));
    let mut third = h.raw(authority(WEB)).await.unwrap();
    until(&mut second, "the endpoint", |d| d.endpoints.len() == 1).await;
    assert_eq!(next(&mut third).await.endpoints.len(), 1);
    assert_eq!(h.metrics.open_streams(), 3);

    h.pod("web-1", "web", "10.1.0.2", true, None).await;
    until(&mut first, "two endpoints", |d| d.endpoints.len() == 2).await;
    until(&mut second, "two endpoints", |d| d.endpoints.len() == 2).await;
    next_where(&mut third, |u| u.endpoints.len() == 2).await;
    assert_eq!(h.watch_counts(), before, "subscribers must not add watches");

    drop(third);
    let deadline = Instant::now() + WAIT;
    while h.metrics.open_streams() != 2 {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_endpoint_change_reaches_a_stream_quickly() {
    let h = harness(None).await;
    h.service("web", "web", "10.96.0.10", json!({})).await;
    h.pod("web-0", "web", "10.1.0.1", true, Some("web")).await;
    let mut web = h.resolver().watch(target(WEB));
    until(&mut web, "the endpoint", |d| d.endpoints.len() == 1).await;

    let mut took = Vec::new();
    for change in 0..5 {
        let ready = change % 2 == 1;
        let start = Instant::now();
        h.set_ready("web-0", ready).await;
        until(&mut web, "the readiness change", |d| {
            d.endpoints.first().is_some_and(|e| e.ready == ready)
        })
        .await;
        let elapsed = start.elapsed();
        println!("change {change} (ready={ready}): {elapsed:?} from the API write to the stream");
        took.push(elapsed);
    }
    took.sort();
    let median = took[took.len() / 2];
    println!("median {median:?}");
    assert!(
        median <= Duration::from_millis(200),
        "median {median:?} over 200 ms: {took:?}"
    );
    drop(h.cluster);
}
