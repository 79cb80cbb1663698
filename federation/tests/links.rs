//! The link reconciler and mirroring against two dev clusters, west (where the controller runs)
//! and east (the linked cluster), each a real Kubernetes-compatible API server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use mesh_api::crd::{Link, LinkGateway, LinkProbe, LinkSpec};
use mesh_api::labels;
use mesh_federation::cache::Cache;
use mesh_federation::link::{ValidLink, condition};
use mesh_federation::links::{LinkMetrics, Links, LinksConfig};
use mesh_federation::mirror::{MirrorSettings, MirrorWriter, endpoint_ready};
use mesh_federation::probe::{GatewayHealth, GatewayHealthSource, ProbeHandle};
use mesh_trust::TrustDomain;
use mesh_trust::ca::CertificateAuthority;
use serde_json::json;
use std::sync::Arc;
use support::{cluster as dev_cluster, create_namespace, eventually, put_credentials};
use tokio::sync::oneshot;
use tokio::time::Instant;

const GATEWAY: &str = "10.0.0.50";

/// A dev cluster with the endpoints controller, the CRDs and the `mesh` and `shop` namespaces.
async fn cluster(name: &str) -> (mesh_e2e::devcluster::DevCluster, Client) {
    dev_cluster(name, &["mesh", "shop"], true).await
}

fn east_root_pem() -> String {
    CertificateAuthority::create_root(
        &TrustDomain::new("east.local").unwrap(),
        Duration::from_secs(3600),
    )
    .unwrap()
    .certificate_pem()
}

fn link(bundle: &str) -> Link {
    let mut link = Link::new(
        "east",
        LinkSpec {
            cluster_name: "east".into(),
            trust_domain: "east.local".into(),
            cluster_domain: "cluster.local".into(),
            gateway: LinkGateway {
                addresses: vec!["127.0.0.1".into()],
                port: 4180,
                identity: "spiffe://east.local/ns/mesh/sa/mesh-gateway".into(),
            },
            credentials_secret: "east-credentials".into(),
            trust_bundle: bundle.into(),
            trust_bundle_config_map: "mesh-trust-bundle".into(),
            export_selector: serde_json::from_value(
                json!({"matchLabels": {"mesh.io/exported": "true"}}),
            )
            .unwrap(),
            probe: LinkProbe::default(),
        },
    );
    link.metadata.namespace = Some("mesh".into());
    link
}

/// East's `web` Service in `shop`, exported, with one ready pod.
async fn export_web(east: &Client) {
    let services: Api<Service> = Api::namespaced(east.clone(), "shop");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop",
            "labels": {"app": "web", "mesh.io/exported": "true"},
            "annotations": {"team": "storefront"}},
        "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(east.clone(), "shop");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // Status is written through its subresource, as the kubelet does.
    pods.patch_status(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "10.2.0.7",
            "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
}

/// Creates a Link in west's mesh namespace.
async fn create_link(west: &Client, link: &Link) {
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    links.create(&PostParams::default(), link).await.unwrap();
}

/// Creates the Service `namespace/name` with `labels` and one port, 80.
async fn create_service(client: &Client, namespace: &str, name: &str, labels: serde_json::Value) {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
}

/// The controller's link reconciler on west, until the returned sender is dropped or fired.
fn start_controller(west: &Client) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    start_controller_probing(west, None, LinkMetrics::default())
}

/// The same, with the mirror writer's settings of the test.
fn start_controller_with(
    west: &Client,
    settings: MirrorSettings,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    start_controller_full(west, None, LinkMetrics::default(), settings)
}

/// Gateway health the test decides: what probes would report.
#[derive(Debug)]
struct Switch(tokio::sync::watch::Sender<GatewayHealth>);

impl GatewayHealthSource for Switch {
    fn probe(&self, _link: &ValidLink) -> ProbeHandle {
        ProbeHandle {
            health: self.0.subscribe(),
            guard: None,
        }
    }
}

fn start_controller_probing(
    west: &Client,
    probes: Option<Arc<dyn GatewayHealthSource>>,
    metrics: LinkMetrics,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    start_controller_full(west, probes, metrics, MirrorSettings::default())
}

/// The link reconciler with the given probes, metrics and writer settings; mirrors lead to
/// the gateway at [`GATEWAY`].
fn start_controller_full(
    west: &Client,
    probes: Option<Arc<dyn GatewayHealthSource>>,
    metrics: LinkMetrics,
    settings: MirrorSettings,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let cache = Cache::start(west);
    let writer = MirrorWriter::new(
        west.clone(),
        MirrorSettings {
            gateway_egress: Some(GATEWAY.parse().unwrap()),
            ..settings
        },
    );
    let links = Links::new(
        west.clone(),
        cache,
        LinksConfig {
            namespace: "mesh".into(),
            cluster: "west".into(),
            trust_domain: TrustDomain::new("west.local").unwrap(),
            metrics,
        },
        writer,
        probes,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(links.run(async {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn mirror(west: &Client, name: &str) -> Option<Service> {
    let services: Api<Service> = Api::namespaced(west.clone(), "shop");
    services.get_opt(name).await.unwrap()
}

/// The condition `type_` of the Link `east`: its status and message.
async fn link_condition(west: &Client, type_: &str) -> Option<(String, String)> {
    condition_of(west, "east", type_).await
}

/// Waits until the Link `name`'s condition `type_` has `status` and a message containing
/// `part`, and returns the message.
async fn wait_condition(
    west: &Client,
    name: &str,
    type_: &str,
    status: &str,
    part: &str,
) -> String {
    let what = format!("Link {name}: {type_} {status}, saying {part:?}");
    let (_, message) = eventually(&what, || async {
        condition_of(west, name, type_)
            .await
            .filter(|(s, m)| s == status && m.contains(part))
    })
    .await;
    message
}

/// The condition `type_` of the Link `name`: its status and message.
async fn condition_of(west: &Client, name: &str, type_: &str) -> Option<(String, String)> {
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    let link = links.get_opt(name).await.unwrap()?;
    let condition = link
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((condition.status, condition.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_mirrors_exported_services_and_follows_the_remote() {
    let (_west_cluster, west) = cluster("west").await;
    let (east_cluster, east) = cluster("east").await;
    put_credentials(&west, east_cluster.kubeconfig()).await;
    let (_stop, _task) = start_controller(&west);

    let exported = Instant::now();
    export_web(&east).await;
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    create_link(&west, &link(&east_root_pem())).await;

    // The mirror, with its labels, annotations, ports and an endpoint at the gateway.
    let service = eventually("web-east is mirrored", || mirror(&west, "web-east")).await;
    eprintln!("mirror after {:?}", exported.elapsed());
    let labels = service.labels();
    assert_eq!(labels.get(labels::MIRRORED_SERVICE).unwrap(), "true");
    assert_eq!(labels.get(labels::CLUSTER_NAME).unwrap(), "east");
    assert_eq!(labels.get("app").unwrap(), "web");
    assert!(!labels.contains_key(labels::EXPORTED));
    assert_eq!(
        service
            .annotations()
            .get(labels::REMOTE_SVC_FQ_NAME)
            .unwrap(),
        "web.shop.svc.cluster.local"
    );
    assert_eq!(service.annotations().get("team").unwrap(), "storefront");
    let spec = service.spec.unwrap();
    assert!(spec.cluster_ip.is_some_and(|ip| ip.starts_with("10.96.")));
    assert_eq!(spec.ports.unwrap()[0].port, 80);
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    let slice = eventually("the mirror's slice is ready", || {
        let slices = slices.clone();
        async move {
            let slice = slices.get_opt("web-east").await.unwrap()?;
            (slice.endpoints.len() == 1 && endpoint_ready(&slice.endpoints[0])).then_some(slice)
        }
    })
    .await;
    assert_eq!(slice.endpoints[0].addresses, vec![GATEWAY]);

    // The status says so.
    let (ready, message) = eventually("the link is ready", || async {
        link_condition(&west, condition::READY)
            .await
            .filter(|(status, _)| status == "True")
    })
    .await;
    assert_eq!(ready, "True", "{message}");
    let status = links.get("east").await.unwrap().status.unwrap();
    assert_eq!(status.mirrored_services, 1);
    assert_eq!(status.trust_bundle.domains[0].trust_domain, "east.local");
    assert_eq!(status.trust_bundle.domains[0].roots.len(), 1);
    // The root's expiry, an hour from its creation (RFC 3339 in UTC sorts as time does).
    let not_after = status.trust_bundle.domains[0].roots[0].not_after.as_str();
    let after_now =
        |secs| mesh_trust::x509::rfc3339(std::time::SystemTime::now() + Duration::from_secs(secs));
    assert!(
        after_now(3000).as_str() < not_after && not_after <= after_now(3601).as_str(),
        "{not_after}"
    );

    // East's pod stops being ready: the mirror's endpoint follows.
    let pods: Api<Pod> = Api::namespaced(east.clone(), "shop");
    pods.patch_status(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    eventually("the mirror's endpoint is not ready", || {
        let slices = slices.clone();
        async move {
            let slice = slices.get_opt("web-east").await.unwrap()?;
            slice
                .endpoints
                .first()
                .is_some_and(|e| !endpoint_ready(e))
                .then_some(())
        }
    })
    .await;

    // Unexported: the mirror goes.
    let services: Api<Service> = Api::namespaced(east.clone(), "shop");
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"mesh.io/exported": null}}})),
        )
        .await
        .unwrap();
    eventually("the unexported mirror is removed", || async {
        mirror(&west, "web-east").await.is_none().then_some(())
    })
    .await;

    // Exported again, then deleted in east: the mirror comes back, then goes.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"mesh.io/exported": "true"}}})),
        )
        .await
        .unwrap();
    eventually("re-exported", || mirror(&west, "web-east")).await;
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted service's mirror is removed", || async {
        mirror(&west, "web-east").await.is_none().then_some(())
    })
    .await;

    // Deleting the Link removes its mirrors and then the Link itself.
    export_web_again(&east).await;
    eventually("mirrored again", || mirror(&west, "web-east")).await;
    links
        .delete("east", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the link and its mirrors are gone", || async {
        let gone = mirror(&west, "web-east").await.is_none()
            && links.get_opt("east").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
}

async fn export_web_again(east: &Client) {
    let services: Api<Service> = Api::namespaced(east.clone(), "shop");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop",
            "labels": {"app": "web", "mesh.io/exported": "true"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_links_and_bad_credentials_get_conditions() {
    let (_west_cluster, west) = cluster("west").await;
    let (_stop, _task) = start_controller(&west);
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");

    // A garbage trust bundle.
    links
        .create(
            &PostParams::default(),
            &link("-----BEGIN CERTIFICATE-----\ngarbage"),
        )
        .await
        .unwrap();
    let (status, message) = eventually("a bundle condition", || {
        link_condition(&west, condition::TRUST_BUNDLE_VALID)
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("spec.trustBundle"), "{message}");

    // A good bundle but no Secret.
    links
        .patch(
            "east",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"trustBundle": east_root_pem()}})),
        )
        .await
        .unwrap();
    let message = wait_condition(&west, "east", condition::CREDENTIALS_VALID, "False", "").await;
    assert!(message.contains("east-credentials"), "{message}");
    assert!(message.contains("does not exist"), "{message}");

    // A Secret whose kubeconfig is broken: named, without its contents.
    put_credentials(&west, "this: is: not: a kubeconfig: [").await;
    let message = wait_condition(
        &west,
        "east",
        condition::CREDENTIALS_VALID,
        "False",
        "kubeconfig",
    )
    .await;
    assert!(!message.contains("not: a kubeconfig"), "{message}");

    // A bad gateway address.
    links
        .patch(
            "east",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gateway": {"addresses": ["no such host!"]}}})),
        )
        .await
        .unwrap();
    let message = wait_condition(&west, "east", condition::VALID, "False", "").await;
    assert!(message.contains("no such host!"), "{message}");

    // A kubeconfig that would run a command in the controller: refused, named.
    links
        .patch(
            "east",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gateway": {"addresses": ["127.0.0.1"]}}})),
        )
        .await
        .unwrap();
    let exec = "apiVersion: v1\nkind: Config\nclusters:\n- name: e\n  cluster: {server: 'https://127.0.0.1:1'}\ncontexts:\n- name: e\n  context: {cluster: e, user: e}\ncurrent-context: e\nusers:\n- name: e\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/touch, args: [/tmp/pwned]}\n";
    put_credentials(&west, exec).await;
    let message =
        wait_condition(&west, "east", condition::CREDENTIALS_VALID, "False", "exec").await;
    assert!(message.contains("inline token"), "{message}");

    // A second Link of the same cluster: the older one is served, the newer one refused.
    let mut twin = link(&east_root_pem());
    twin.metadata.name = Some("east-again".into());
    create_link(&west, &twin).await;
    let message = wait_condition(&west, "east-again", condition::VALID, "False", "").await;
    assert!(
        message.contains("Link east already links cluster east"),
        "{message}"
    );
    // A cluster whose name ends with "-east": its mirrors could take east's names.
    let mut suffix = link(&east_root_pem());
    suffix.metadata.name = Some("web-east-link".into());
    suffix.spec.cluster_name = "web-east".into();
    create_link(&west, &suffix).await;
    let message = wait_condition(&west, "web-east-link", condition::VALID, "False", "").await;
    assert!(message.contains("rename one of the clusters"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_keeps_the_mirrors_and_a_restart_neither_duplicates_nor_loses() {
    let (_west_cluster, west) = cluster("west").await;
    let (east_cluster, east) = cluster("east").await;
    put_credentials(&west, east_cluster.kubeconfig()).await;
    export_web(&east).await;
    create_link(&west, &link(&east_root_pem())).await;
    let (stop, task) = start_controller(&west);
    eventually("mirrored", || mirror(&west, "web-east")).await;

    // A user's Service in the way of a mirror is left alone and reported.
    let services: Api<Service> = Api::namespaced(west.clone(), "shop");
    let theirs: Service = serde_json::from_value(json!({
        "metadata": {"name": "api-east", "namespace": "shop", "labels": {"owner": "someone"}},
        "spec": {"ports": [{"port": 9999}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let east_services: Api<Service> = Api::namespaced(east.clone(), "shop");
    let api: Service = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "shop", "labels": {"mesh.io/exported": "true"}},
        "spec": {"ports": [{"port": 8443}]}
    }))
    .unwrap();
    east_services
        .create(&PostParams::default(), &api)
        .await
        .unwrap();
    let message = wait_condition(&west, "east", condition::MIRRORED, "False", "api-east").await;
    assert!(message.contains("shop/api-east"), "{message}");
    let still_theirs = mirror(&west, "api-east").await.unwrap();
    assert_eq!(still_theirs.labels().get("owner").unwrap(), "someone");
    assert_eq!(still_theirs.spec.unwrap().ports.unwrap()[0].port, 9999);

    // A controller restart: the same mirror (same uid), no duplicates; an orphan of a cluster
    // no Link names is collected.
    let before = mirror(&west, "web-east").await.unwrap();
    let _ = stop.send(());
    task.await.unwrap();
    let orphan: Service = serde_json::from_value(json!({
        "metadata": {"name": "old-gone", "namespace": "shop",
            "labels": {"mesh.io/mirrored-service": "true", "mesh.io/cluster-name": "gone"}},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let metrics = LinkMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let (_stop, _task) = start_controller_probing(&west, None, metrics);
    eventually("the orphan is collected", || async {
        mirror(&west, "old-gone").await.is_none().then_some(())
    })
    .await;
    let after = mirror(&west, "web-east").await.unwrap();
    assert_eq!(
        before.uid(),
        after.uid(),
        "the mirror was kept, not recreated"
    );
    let mirrors = services
        .list(&kube::api::ListParams::default().labels("mesh.io/cluster-name=east"))
        .await
        .unwrap();
    assert_eq!(mirrors.items.len(), 1, "one mirror of east: web-east");

    // East's API goes away: the mirror stays, and the Link says why.
    east_cluster.shutdown().await.unwrap();
    let message = wait_condition(
        &west,
        "east",
        condition::REMOTE_REACHABLE,
        "False",
        "unreachable",
    )
    .await;
    assert!(message.contains("mirrors are kept"), "{message}");
    assert!(mirror(&west, "web-east").await.is_some());
    // And the metrics say so.
    let text = eventually("the reachability gauge", || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        std::future::ready(
            text.contains(r#"link_remote_reachable{target_cluster="east"} 0"#)
                .then_some(text),
        )
    })
    .await;
    assert!(
        text.contains(r#"link_mirrored_services{target_cluster="east"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"link_ready{target_cluster="east"} 0"#),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(mirror(&west, "web-east").await.is_some());
}

/// Probes say the remote gateway is down: the Link says so and every mirror of that cluster is
/// marked not ready; when probes succeed again, the mirrors are ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_gateway_marks_its_mirrors_not_ready_until_it_answers_again() {
    let (_west_cluster, west) = cluster("west").await;
    let (east_cluster, east) = cluster("east").await;
    put_credentials(&west, east_cluster.kubeconfig()).await;
    export_web(&east).await;
    let (health, _) = tokio::sync::watch::channel(GatewayHealth::default());
    let switch = Arc::new(Switch(health));
    let (_stop, _task) =
        start_controller_probing(&west, Some(switch.clone()), LinkMetrics::default());
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    create_link(&west, &link(&east_root_pem())).await;
    let slices: Api<EndpointSlice> = Api::namespaced(west.clone(), "shop");
    let ready = |want: bool| {
        let slices = slices.clone();
        async move {
            let slice = slices.get_opt("web-east").await.unwrap()?;
            let endpoint = slice.endpoints.first()?;
            (endpoint_ready(endpoint) == want).then_some(())
        }
    };
    eventually("the mirror is ready", || ready(true)).await;

    switch.0.send_replace(GatewayHealth {
        alive: false,
        latency: None,
        last_probe: Some(std::time::SystemTime::now()),
        last_error: Some("3 probes in a row failed: timed out".into()),
    });
    eventually("the mirror is not ready", || ready(false)).await;
    let message = wait_condition(&west, "east", condition::GATEWAY_ALIVE, "False", "").await;
    assert!(message.contains("timed out"), "{message}");
    let status = links.get("east").await.unwrap().status.unwrap();
    assert!(!status.gateway.alive);

    switch.0.send_replace(GatewayHealth {
        alive: true,
        latency: Some(Duration::from_millis(12)),
        last_probe: Some(std::time::SystemTime::now()),
        last_error: None,
    });
    eventually("the mirror is ready again", || ready(true)).await;
    let status = eventually("the link shows the probe latency", || async {
        let status = links.get("east").await.unwrap().status?;
        (status.gateway.alive && status.gateway.latency_ms == Some(12)).then_some(status)
    })
    .await;
    assert!(status.gateway.last_probe_time.is_some());
}

/// The Link's Secret changes to another cluster's credentials: the link's watchers restart with
/// them, so the new cluster's exports are mirrored and the old one's mirrors removed. A remote
/// namespace that does not exist here is named in the Link's status, with what to do, unless
/// the controller creates namespaces; then the mirror is written in the new namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_credentials_restart_the_link_and_missing_namespaces_are_named_or_created() {
    let (_west_cluster, west) = cluster("west").await;
    let (east_cluster, east) = cluster("east").await;
    let (north_cluster, north) = cluster("north").await;
    create_service(&north, "shop", "api", json!({"mesh.io/exported": "true"})).await;
    export_web(&east).await;
    create_namespace(&east, "billing").await;
    create_service(
        &east,
        "billing",
        "invoices",
        json!({"mesh.io/exported": "true"}),
    )
    .await;

    // First the Secret holds north's credentials.
    put_credentials(&west, north_cluster.kubeconfig()).await;
    create_link(&west, &link(&east_root_pem())).await;
    let (stop, task) = start_controller(&west);
    eventually("north's api is mirrored", || mirror(&west, "api-east")).await;

    // Then east's: east's exports replace north's.
    put_credentials(&west, east_cluster.kubeconfig()).await;
    eventually("east's web is mirrored", || mirror(&west, "web-east")).await;
    eventually("north's api mirror is removed", || async {
        mirror(&west, "api-east").await.is_none().then_some(())
    })
    .await;

    // East's billing namespace does not exist in west: named, with what to do.
    let message = wait_condition(&west, "east", condition::MIRRORED, "False", "billing").await;
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("--create-namespaces"), "{message}");
    let billing: Api<Service> = Api::namespaced(west.clone(), "billing");
    assert!(billing.get_opt("invoices-east").await.unwrap().is_none());

    // A controller that creates namespaces writes the mirror there.
    let _ = stop.send(());
    task.await.unwrap();
    let (_stop, _task) = start_controller_with(
        &west,
        MirrorSettings {
            create_namespaces: true,
            ..MirrorSettings::default()
        },
    );
    eventually(
        "invoices is mirrored in a new billing namespace",
        || async { billing.get_opt("invoices-east").await.unwrap() },
    )
    .await;
    wait_condition(&west, "east", condition::MIRRORED, "True", "").await;
}

/// A Link's own export selector decides what is mirrored: a Service it selects is mirrored
/// without the default label, and one with only the default label is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_mirrors_what_its_export_selector_selects() {
    let (_west_cluster, west) = cluster("west").await;
    let (east_cluster, east) = cluster("east").await;
    put_credentials(&west, east_cluster.kubeconfig()).await;
    create_service(&east, "shop", "public", json!({"tier": "public"})).await;
    create_service(
        &east,
        "shop",
        "default-label",
        json!({"mesh.io/exported": "true"}),
    )
    .await;
    let mut link = link(&east_root_pem());
    link.spec.export_selector =
        serde_json::from_value(json!({"matchLabels": {"tier": "public"}})).unwrap();
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    create_link(&west, &link).await;
    let (_stop, _task) = start_controller(&west);

    eventually("the selected service is mirrored", || {
        mirror(&west, "public-east")
    })
    .await;
    wait_condition(&west, "east", condition::MIRRORED, "True", "").await;
    assert!(mirror(&west, "default-label-east").await.is_none());
    let status = links.get("east").await.unwrap().status.unwrap();
    assert_eq!(status.mirrored_services, 1);
}
