//! Mirroring by one link worker against two dev clusters, west (where mirrors are written) and
//! east (the linked cluster), each a real Kubernetes-compatible API server on loopback. The
//! remote Services are selector-less and their EndpointSlices written by the tests, so that
//! every endpoint, address type and readiness is the test's to decide. The writer's requests
//! to west are recorded, so that the tests can tell what the controller asked of the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{config_for, eventually};

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::client::{Body, ClientBuilder};
use kube::{Api, Client, Config, ResourceExt};
use mesh_api::labels;
use mesh_e2e::devcluster::DevCluster;
use mesh_federation::MIRROR_SLICE_MANAGER;
use mesh_federation::cache::Cache;
use mesh_federation::link::ValidLink;
use mesh_federation::mirror::{
    self, MirrorProblem, MirrorSettings, MirrorWriter, endpoint_ready, is_headless,
};
use mesh_federation::probe::GatewayHealth;
use mesh_federation::remote::{LinkWorker, RemoteState};
use mesh_trust::{SpiffeId, TrustBundleSet, TrustDomain};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

const GATEWAY: &str = "10.0.0.50";

// === dev clusters ===

/// A dev cluster with the CRDs and the `mesh` and `shop` namespaces (no endpoints controller:
/// the tests write remote slices themselves).
async fn cluster(name: &str) -> (DevCluster, Client) {
    support::cluster(name, &["mesh", "shop"], false).await
}

// === the writer's requests ===

/// One request the writer sent: method, path and body.
#[derive(Clone, Debug)]
struct Sent {
    method: String,
    path: String,
    body: String,
}

/// A tower layer that records every request of a client.
#[derive(Clone, Debug, Default)]
struct Requests(Arc<Mutex<Vec<Sent>>>);

impl Requests {
    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Clone, Debug)]
struct Recorded<S> {
    inner: S,
    log: Requests,
}

impl<S> tower::Layer<S> for Requests {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            log: self.clone(),
        }
    }
}

impl<S> tower::Service<http::Request<Body>> for Recorded<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // kube's request bodies are whole buffers: cloned and read at once.
        let body = request
            .body()
            .try_clone()
            .and_then(|body| body.collect_bytes().now_or_never())
            .and_then(Result::ok)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        self.log.0.lock().unwrap().push(Sent {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            body,
        });
        self.inner.call(request)
    }
}

async fn recorded_client(kubeconfig: &str, requests: &Requests) -> Client {
    ClientBuilder::try_from(config_for(kubeconfig).await)
        .unwrap()
        .with_layer(requests)
        .build()
}

// === the worker ===

fn valid_link() -> ValidLink {
    ValidLink {
        namespace: "mesh".into(),
        name: "east".into(),
        cluster: "east".into(),
        trust_domain: TrustDomain::new("east.local").unwrap(),
        cluster_domain: "cluster.local".into(),
        gateway_addresses: vec!["127.0.0.1".into()],
        gateway_port: 4180,
        gateway_identity: SpiffeId::parse("spiffe://east.local/ns/mesh/sa/mesh-gateway").unwrap(),
        credentials_secret: "east-credentials".into(),
        bundle: TrustBundleSet::new(),
        bundle_config_map: "mesh-trust-bundle".into(),
        export_selector: kube::core::Selector::from_iter([(labels::EXPORTED, labels::TRUE)]),
        probe_period: Duration::from_secs(3),
        probe_timeout: Duration::from_secs(1),
        probe_failure_threshold: 3,
    }
}

fn settings() -> MirrorSettings {
    MirrorSettings {
        gateway_egress: Some(GATEWAY.parse().unwrap()),
        ..MirrorSettings::default()
    }
}

/// A worker mirroring east into west, west's writes through `west_writes`.
struct Running {
    worker: LinkWorker,
    _health: watch::Sender<GatewayHealth>,
    _cache: Cache,
}

fn start_worker(west: &Client, west_writes: Client, east: &Client) -> Running {
    let cache = Cache::start(west);
    let (health, alive) = watch::channel(GatewayHealth::default());
    let worker = LinkWorker::spawn(
        valid_link(),
        east.clone(),
        MirrorWriter::new(west_writes, settings()),
        cache.clone(),
        alive,
        Arc::new(Notify::new()),
    );
    Running {
        worker,
        _health: health,
        _cache: cache,
    }
}

/// Waits for a state of the worker that `check` accepts.
async fn state_where(
    worker: &LinkWorker,
    what: &str,
    check: impl Fn(&RemoteState) -> bool,
) -> RemoteState {
    let state = worker.state();
    eventually(what, || {
        let current = state.borrow().clone();
        std::future::ready(check(&current).then_some(current))
    })
    .await
}

// === objects ===

/// Creates east's exported Service `name` in `shop` from `spec`.
async fn export(east: &Client, name: &str, spec: Value) {
    let services: Api<Service> = Api::namespaced(east.clone(), "shop");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop",
            "labels": {"app": name, labels::EXPORTED: labels::TRUE}},
        "spec": spec,
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
}

fn http_port() -> Value {
    json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}])
}

/// Creates a remote slice `name` of Service `service` with `endpoints` (address, ready).
async fn put_slice(
    client: &Client,
    service: &str,
    name: &str,
    address_type: &str,
    endpoints: &[(&str, bool)],
) {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop",
            "labels": {mirror::SERVICE_NAME_LABEL: service}},
        "addressType": address_type,
        "endpoints": endpoints.iter().enumerate().map(|(i, (address, ready))| json!({
            "addresses": [address], "hostname": format!("{service}-{i}"),
            "conditions": {"ready": ready}
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
}

async fn local_service(west: &Client, name: &str) -> Option<Service> {
    let services: Api<Service> = Api::namespaced(west.clone(), "shop");
    services.get_opt(name).await.unwrap()
}

async fn local_slice(west: &Client, name: &str) -> Option<EndpointSlice> {
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    slices.get_opt(name).await.unwrap()
}

/// The local slices of the mirror `mirror`, by name.
async fn slices_of(west: &Client, mirror: &str) -> Vec<EndpointSlice> {
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    let selector = format!("{}={mirror}", mirror::SERVICE_NAME_LABEL);
    let mut list = slices
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    list.sort_by_key(ResourceExt::name_any);
    list
}

fn names(slices: &[EndpointSlice]) -> Vec<String> {
    slices.iter().map(ResourceExt::name_any).collect()
}

async fn merge_patch<K>(api: &Api<K>, name: &str, patch: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

// === tests ===

/// A readiness flip of a current mirror costs one request, the slice's apply (the Service is
/// neither read nor applied); a hand edit of the mirror's ports or its remote-name annotation
/// that leaves the digest alone is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_flip_writes_only_the_slice_and_hand_edits_are_repaired() {
    let (west_cluster, west) = cluster("west").await;
    let (_east_cluster, east) = cluster("east").await;
    export(&east, "web", json!({"ports": http_port()})).await;
    put_slice(&east, "web", "web-1", "IPv4", &[("10.2.0.7", true)]).await;
    let requests = Requests::default();
    let writes = recorded_client(west_cluster.kubeconfig(), &requests).await;
    let running = start_worker(&west, writes, &east);

    let ready = |want: bool| {
        let west = west.clone();
        async move {
            let slice = local_slice(&west, "web-east").await?;
            let endpoint = slice.endpoints.first()?;
            (endpoint.addresses == [GATEWAY] && endpoint_ready(endpoint) == want).then_some(())
        }
    };
    eventually("the mirror is ready", || ready(true)).await;
    state_where(&running.worker, "one mirror, no problem", |s| {
        s.mirrored == 1 && s.problem_count == 0
    })
    .await;
    // The local cache has seen what was written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    requests.take();

    let remote_slices: Api<EndpointSlice> = Api::namespaced(east.clone(), "shop");
    merge_patch(
        &remote_slices,
        "web-1",
        json!({"endpoints": [{"addresses": ["10.2.0.7"], "conditions": {"ready": false}}]}),
    )
    .await;
    eventually("the mirror is not ready", || ready(false)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = requests.take();
    assert!(!sent.is_empty());
    for request in &sent {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            (
                "PATCH",
                "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/web-east"
            ),
            "a readiness flip only applies the slice: {sent:?}"
        );
    }

    // Hand edits that leave the digest annotation alone.
    let services: Api<Service> = Api::namespaced(west.clone(), "shop");
    let digest = local_service(&west, "web-east")
        .await
        .unwrap()
        .annotations()
        .get(mirror::MIRROR_DIGEST)
        .cloned()
        .unwrap();
    merge_patch(
        &services,
        "web-east",
        json!({"spec": {"ports": [{"name": "http", "port": 81, "protocol": "TCP"}]}}),
    )
    .await;
    let repaired = eventually("the port is repaired", || async {
        let service = local_service(&west, "web-east").await?;
        (service.spec.as_ref()?.ports.as_ref()?[0].port == 80).then_some(service)
    })
    .await;
    assert_eq!(
        repaired.annotations().get(mirror::MIRROR_DIGEST),
        Some(&digest)
    );
    merge_patch(
        &services,
        "web-east",
        json!({"metadata": {"annotations": {labels::REMOTE_SVC_FQ_NAME: "elsewhere.shop.svc.cluster.local"}}}),
    )
    .await;
    eventually("the remote name is repaired", || async {
        let service = local_service(&west, "web-east").await?;
        (service.annotations().get(labels::REMOTE_SVC_FQ_NAME)? == "web.shop.svc.cluster.local")
            .then_some(())
    })
    .await;
}

/// The API never changes a Service's cluster IP: a remote Service that turns from headless to
/// ClusterIP and back gets a new mirror each time (a new uid), with the slices of its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_turning_headless_or_cluster_ip_gets_a_new_mirror() {
    let (_west_cluster, west) = cluster("west").await;
    let (_east_cluster, east) = cluster("east").await;
    export(
        &east,
        "web",
        json!({"clusterIP": "None", "ports": http_port()}),
    )
    .await;
    put_slice(&east, "web", "web-1", "IPv4", &[("10.2.0.7", true)]).await;
    let running = start_worker(&west, west.clone(), &east);

    let headless = eventually("a headless mirror with its slice", || async {
        let service = local_service(&west, "web-east").await?;
        let slices = slices_of(&west, "web-east").await;
        (is_headless(&service) && names(&slices) == ["web-east-web-1"]).then_some(service)
    })
    .await;

    let remote_services: Api<Service> = Api::namespaced(east.clone(), "shop");
    merge_patch(
        &remote_services,
        "web",
        json!({"spec": {"clusterIP": null}}),
    )
    .await;
    let cluster_ip = eventually("a ClusterIP mirror with its slice", || async {
        let service = local_service(&west, "web-east").await?;
        let slices = slices_of(&west, "web-east").await;
        (!is_headless(&service) && names(&slices) == ["web-east"]).then_some(service)
    })
    .await;
    assert_ne!(cluster_ip.uid(), headless.uid(), "the mirror was recreated");
    let ip = cluster_ip.spec.as_ref().unwrap().cluster_ip.clone();
    assert!(
        ip.is_some_and(|ip| ip.starts_with("10.96.")),
        "{cluster_ip:?}"
    );
    let slice = local_slice(&west, "web-east").await.unwrap();
    assert_eq!(slice.endpoints[0].addresses, [GATEWAY]);
    assert_eq!(
        slice.metadata.owner_references.unwrap()[0].uid,
        cluster_ip.uid().unwrap()
    );

    merge_patch(
        &remote_services,
        "web",
        json!({"spec": {"clusterIP": "None"}}),
    )
    .await;
    let again = eventually("a headless mirror again", || async {
        let service = local_service(&west, "web-east").await?;
        let slices = slices_of(&west, "web-east").await;
        (is_headless(&service) && names(&slices) == ["web-east-web-1"]).then_some(service)
    })
    .await;
    assert_ne!(again.uid(), cluster_ip.uid(), "the mirror was recreated");
    state_where(&running.worker, "no problem", |s| {
        s.mirrored == 1 && s.problem_count == 0
    })
    .await;
}

/// A dual-stack headless Service gets one local slice per remote slice, each of its address
/// type; a remote slice that goes takes its local slice with it. Deletes carry the uid read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_mirror_has_a_slice_per_remote_slice_and_deletes_name_the_uid() {
    let (west_cluster, west) = cluster("west").await;
    let (_east_cluster, east) = cluster("east").await;
    export(
        &east,
        "web",
        json!({"clusterIP": "None", "ports": http_port()}),
    )
    .await;
    put_slice(
        &east,
        "web",
        "web-v4",
        "IPv4",
        &[("10.2.0.7", true), ("10.2.0.8", false)],
    )
    .await;
    put_slice(&east, "web", "web-v6", "IPv6", &[("fd00::7", true)]).await;
    let requests = Requests::default();
    let writes = recorded_client(west_cluster.kubeconfig(), &requests).await;
    let running = start_worker(&west, writes, &east);

    let slices = eventually("two slices", || async {
        let slices = slices_of(&west, "web-east").await;
        (slices.len() == 2).then_some(slices)
    })
    .await;
    let summary: Vec<_> = slices
        .iter()
        .map(|s| {
            (
                s.name_any(),
                s.address_type.clone(),
                s.endpoints
                    .iter()
                    .map(|e| (e.addresses[0].clone(), endpoint_ready(e)))
                    .collect::<Vec<_>>(),
                s.labels().get(mirror::MANAGED_BY_LABEL).cloned(),
            )
        })
        .collect();
    let managed = Some(MIRROR_SLICE_MANAGER.to_owned());
    assert_eq!(
        summary,
        vec![
            (
                "web-east-web-v4".to_owned(),
                "IPv4".to_owned(),
                vec![
                    ("10.2.0.7".to_owned(), true),
                    ("10.2.0.8".to_owned(), false)
                ],
                managed.clone()
            ),
            (
                "web-east-web-v6".to_owned(),
                "IPv6".to_owned(),
                vec![("fd00::7".to_owned(), true)],
                managed
            ),
        ]
    );
    state_where(&running.worker, "one mirror", |s| {
        s.mirrored == 1 && s.problem_count == 0
    })
    .await;

    // The IPv6 slice goes in east: its mirror slice goes, by a delete naming its uid.
    let v6_uid = slices[1].uid().unwrap();
    let remote_slices: Api<EndpointSlice> = Api::namespaced(east.clone(), "shop");
    remote_slices
        .delete("web-v6", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the IPv6 mirror slice is gone", || async {
        (names(&slices_of(&west, "web-east").await) == ["web-east-web-v4"]).then_some(())
    })
    .await;
    let sent = requests.take();
    let delete = sent
        .iter()
        .find(|r| r.method == "DELETE" && r.path.ends_with("/endpointslices/web-east-web-v6"))
        .unwrap_or_else(|| panic!("no delete of the slice: {sent:?}"));
    let body: Value = serde_json::from_str(&delete.body).unwrap();
    assert_eq!(body["preconditions"]["uid"], v6_uid.as_str(), "{body}");

    // Unexported: the mirror goes, by a delete naming its uid, and its slices with it.
    let mirror_uid = local_service(&west, "web-east")
        .await
        .unwrap()
        .uid()
        .unwrap();
    let remote_services: Api<Service> = Api::namespaced(east.clone(), "shop");
    merge_patch(
        &remote_services,
        "web",
        json!({"metadata": {"labels": {labels::EXPORTED: null}}}),
    )
    .await;
    eventually("the mirror and its slices are gone", || async {
        (local_service(&west, "web-east").await.is_none()
            && slices_of(&west, "web-east").await.is_empty())
        .then_some(())
    })
    .await;
    let sent = requests.take();
    let delete = sent
        .iter()
        .find(|r| r.method == "DELETE" && r.path.ends_with("/services/web-east"))
        .unwrap_or_else(|| panic!("no delete of the mirror: {sent:?}"));
    let body: Value = serde_json::from_str(&delete.body).unwrap();
    assert_eq!(body["preconditions"]["uid"], mirror_uid.as_str(), "{body}");
}

/// A local slice of a mirror slice's name that the controller does not manage is left alone
/// and reported; so are a Service in a mirror's way and an ExternalName Service. Every such
/// problem is reported in every pass, in the same order, not only in the passes that retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_are_left_alone_and_problems_stay_reported_between_retries() {
    let (_west_cluster, west) = cluster("west").await;
    let (_east_cluster, east) = cluster("east").await;
    let local_slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    let theirs: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-east", "namespace": "shop",
            "labels": {mirror::SERVICE_NAME_LABEL: "web-east",
                mirror::MANAGED_BY_LABEL: "someone-else.example.com"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.9.9.9"]}]
    }))
    .unwrap();
    local_slices
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let local_services: Api<Service> = Api::namespaced(west.clone(), "shop");
    for (name, owner) in [("api-east", "someone"), ("other", "test")] {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"owner": owner}},
            "spec": {"ports": [{"port": 9999}]}
        }))
        .unwrap();
        local_services
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
    }
    export(&east, "web", json!({"ports": http_port()})).await;
    put_slice(&east, "web", "web-1", "IPv4", &[("10.2.0.7", true)]).await;
    export(&east, "api", json!({"ports": [{"port": 8443}]})).await;
    export(
        &east,
        "ext",
        json!({"type": "ExternalName", "externalName": "db.example.com"}),
    )
    .await;
    let running = start_worker(&west, west.clone(), &east);

    let first = state_where(&running.worker, "three problems", |s| s.problem_count == 3).await;
    let mut sorted = first.problems.clone();
    sorted.sort();
    assert_eq!(first.problems, sorted);
    let all = first.problems.join("\n");
    assert!(
        all.contains("shop/api-east exists and is not a mirror"),
        "{all}"
    );
    assert!(
        all.contains("EndpointSlice shop/web-east exists and is not managed"),
        "{all}"
    );
    assert!(
        all.contains("ExternalName services are not mirrored"),
        "{all}"
    );
    let slice = local_slice(&west, "web-east").await.unwrap();
    assert_eq!(slice.endpoints[0].addresses, ["10.9.9.9"], "left alone");
    assert_eq!(
        slice.labels().get(mirror::MANAGED_BY_LABEL).unwrap(),
        "someone-else.example.com"
    );
    assert!(local_service(&west, "ext-east").await.is_none());
    assert_eq!(
        local_service(&west, "api-east")
            .await
            .unwrap()
            .labels()
            .get("owner")
            .unwrap(),
        "someone"
    );

    // Passes between the retries (woken by local changes) report the same problems.
    let mut state = running.worker.state();
    state.borrow_and_update();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, state.changed()).await {
            seen.push(state.borrow_and_update().clone());
        }
        seen
    });
    for i in 0..15 {
        merge_patch(
            &local_services,
            "other",
            json!({"metadata": {"labels": {"touched": i.to_string()}}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for state in seen.await.unwrap() {
        assert_eq!(state.problem_count, 3, "{state:?}");
        assert_eq!(state.problems, first.problems);
    }
}

/// A local API that accepts connections and never answers: each write fails after the
/// writer's timeout, and the worker reports it and tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_an_answer_times_out_and_is_retried() {
    let (_east_cluster, east) = cluster("east").await;
    export(&east, "web", json!({"ports": http_port()})).await;

    let (writes, connections) = black_hole().await;
    let writer =
        MirrorWriter::new(writes.clone(), settings()).with_timeout(Duration::from_millis(300));
    let remote: Service = Api::namespaced(east.clone(), "shop")
        .get("web")
        .await
        .unwrap();
    let wanted = mirror::desired(&valid_link(), &remote, &[], &settings(), true).unwrap();
    let started = Instant::now();
    let problem = writer.apply(&wanted, "east", None, &[]).await.unwrap_err();
    assert!(
        matches!(problem, MirrorProblem::Timeout { .. }),
        "{problem}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let problem = writer.delete("shop", "web-east", "east").await.unwrap_err();
    assert!(
        matches!(problem, MirrorProblem::Timeout { .. }),
        "{problem}"
    );

    // The worker reads a complete local cache (it writes nothing before one), and writes
    // through the writer that never gets an answer.
    let (_west_cluster, west) = cluster("west").await;
    let cache = Cache::start(&west);
    let (_health, alive) = watch::channel(GatewayHealth::default());
    let before = connections.load(std::sync::atomic::Ordering::SeqCst);
    let worker = LinkWorker::spawn(
        valid_link(),
        east.clone(),
        writer,
        cache,
        alive,
        Arc::new(Notify::new()),
    );
    let state = state_where(&worker, "a timeout is reported", |s| s.problem_count == 1).await;
    assert!(state.problems[0].contains("did not answer"), "{state:?}");
    // Tried again after the backoff: another request, on another connection.
    eventually("a retry", || {
        let now = connections.load(std::sync::atomic::Ordering::SeqCst);
        std::future::ready((now >= before + 2).then_some(()))
    })
    .await;
    assert_eq!(worker.state().borrow().problem_count, 1);
}

/// A client of a server that accepts connections, reads and never answers; and how many
/// connections it accepted.
async fn black_hole() -> (Client, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
            });
        }
    });
    let config = Config::new(format!("http://{address}").parse().unwrap());
    (Client::try_from(config).unwrap(), connections)
}
