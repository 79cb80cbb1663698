//! Conformance of the dev cluster, through kube-rs exactly as the product uses it: CRUD on core
//! types and a CRD, conflicts, finalizers, selectors, watches with 410 recovery, and auth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config, CustomResourceExt, Resource, ResourceExt};
use mesh_api::crd::Link;
use mesh_e2e::devcluster::{DevCluster, DevClusterConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn client_for(kubeconfig: &str) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn start(config: DevClusterConfig) -> (DevCluster, Client) {
    let cluster = DevCluster::start(config).await.unwrap();
    let client = client_for(cluster.kubeconfig()).await;
    (cluster, client)
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn configmap(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
    .unwrap()
}

#[tokio::test]
async fn configmap_and_service_crud() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = cms
        .create(
            &PostParams::default(),
            &configmap("a", json!({"app": "web"})),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let (code, reason) = api_code(
        cms.create(&PostParams::default(), &configmap("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let mut generated = configmap("", json!({"app": "db"}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = cms
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(generated.name_any().starts_with("gen-"));

    // Replace with the current version, then with the stale one: 409 Conflict.
    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "v2".to_string())].into());
    let replaced = cms
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version(), created.resource_version());
    let (code, reason) = api_code(
        cms.replace("a", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Merge patch and JSON patch.
    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["extra"], "1");
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/k", "value": "v3"}]))
            .unwrap();
    let patched = cms
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["k"], "v3");

    // Label and field selectors.
    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items
            .iter()
            .map(|c| c.name_any())
            .collect::<BTreeSet<_>>()
    };
    let web = cms
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(names(web), BTreeSet::from(["a".to_string()]));
    let not_web = cms
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(names(not_web), BTreeSet::from([generated.name_any()]));
    let set = cms
        .list(&ListParams::default().labels("app in (web,db)"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 2);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=a"))
        .await
        .unwrap();
    assert_eq!(names(by_name), BTreeSet::from(["a".to_string()]));
    let (code, _) = api_code(
        cms.list(&ListParams::default().labels("app in web"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);

    // Paging.
    let first = cms.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(first.items.len(), 1);
    let token = first.metadata.continue_.clone().unwrap();
    let second = cms
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_ne!(first.items[0].name_any(), second.items[0].name_any());

    // Delete with and without finalizers.
    let mut held = configmap("held", json!({}));
    held.metadata.finalizers = Some(vec!["mesh.io/test".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let terminating = cms.get("held").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(cms.get("a").await.unwrap_err()).0, 404);

    // Services, and a namespace that does not exist.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    assert_eq!(svc.metadata.generation, Some(1));
    let svc = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 8080}]}})),
        )
        .await
        .unwrap();
    assert_eq!(svc.metadata.generation, Some(2));
    let missing: Api<Service> = Api::namespaced(client, "nowhere");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(
        api_code(
            missing
                .create(&PostParams::default(), &svc)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn crd_becomes_servable_with_status_subresource() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Link::crd())
        .await
        .unwrap();
    let crd = crds.get(Link::crd_name()).await.unwrap();
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);

    let links: Api<Link> = Api::namespaced(client.clone(), "default");
    let link: Link = serde_json::from_value(json!({
        "apiVersion": "multicluster.mesh.io/v1alpha1", "kind": "Link",
        "metadata": {"name": "east"},
        "spec": {
            "clusterName": "east", "trustDomain": "east",
            "gateway": {"addresses": ["10.0.0.1"], "identity": "spiffe://east/ns/mesh/sa/gateway"},
            "credentialsSecret": "east-kubeconfig", "trustBundle": "pem"
        }
    }))
    .unwrap();
    let created = links.create(&PostParams::default(), &link).await.unwrap();
    assert_eq!(created.spec.cluster_name, "east");
    assert_eq!(created.metadata.generation, Some(1));

    // Status only through the subresource; it does not bump generation.
    let with_status = links
        .patch_status(
            "east",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"mirroredServices": 3, "observedGeneration": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(with_status.status.as_ref().unwrap().mirrored_services, 3);
    assert_eq!(with_status.metadata.generation, Some(1));
    let spec_change = links
        .patch(
            "east",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"trustBundle": "pem2"}, "status": {"mirroredServices": 9}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(spec_change.metadata.generation, Some(2));
    assert_eq!(spec_change.status.unwrap().mirrored_services, 3);

    assert_eq!(
        links
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    links
        .delete("east", &DeleteParams::default())
        .await
        .unwrap();
    assert!(links.get_opt("east").await.unwrap().is_none());

    // Deleting the CRD stops serving its resource.
    crds.delete(Link::crd_name(), &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_code(links.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );
}

#[tokio::test]
async fn watch_from_expired_version_is_gone() {
    let (_cluster, client) = start(DevClusterConfig {
        history_limit: 3,
        ..Default::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = cms
        .create(&PostParams::default(), &configmap("c0", json!({})))
        .await
        .unwrap();
    for i in 1..6 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("c{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut stream = cms
        .watch(
            &WatchParams::default().timeout(5),
            &first.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    match event {
        // As from a real API server: 200, then an ERROR event carrying the 410 Status.
        Some(Ok(kube::api::WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_and_reflector_converge_across_410() {
    let (_cluster, client) = start(DevClusterConfig {
        history_limit: 4,
        // No bookmarks: the watcher's version stays at its last matching event.
        bookmark_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let inits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&inits);
    let config = watcher::Config::default().labels("app=watched").timeout(1);
    let stream = reflector(writer, watcher(cms.clone(), config)).default_backoff();
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Init) = event {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let names = |reader: &reflector::Store<ConfigMap>| {
        reader
            .state()
            .iter()
            .map(|c| c.name_any())
            .collect::<BTreeSet<_>>()
    };
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    for name in ["w1", "w2"] {
        cms.create(
            &PostParams::default(),
            &configmap(name, json!({"app": "watched"})),
        )
        .await
        .unwrap();
    }
    eventually("the first two objects", || names(&reader).len() == 2).await;
    assert_eq!(inits.load(Ordering::SeqCst), 1);

    // Churn that the selector hides pushes the watcher's version out of the history; when its
    // watch times out and resumes, the server answers 410 and the watcher relists.
    for i in 0..8 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("other{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    eventually("a relist after 410", || inits.load(Ordering::SeqCst) >= 2).await;

    cms.create(
        &PostParams::default(),
        &configmap("w3", json!({"app": "watched"})),
    )
    .await
    .unwrap();
    cms.delete("w1", &DeleteParams::default()).await.unwrap();
    let expected = BTreeSet::from(["w2".to_string(), "w3".to_string()]);
    eventually("w2 and w3 only", || names(&reader) == expected).await;
    driver.abort();
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let cluster = DevCluster::start(DevClusterConfig::default())
        .await
        .unwrap();
    let bad = cluster
        .kubeconfig()
        .replace(cluster.admin_token(), "wrong-token");
    let client = client_for(&bad).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let (code, reason) = api_code(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn bad_input_gets_status_errors() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let send = |method: &str, path: &str, content_type: &str, body: Vec<u8>| {
        let client = client.clone();
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        async move { client.request_text(request).await }
    };
    let code = |r: Result<String, kube::Error>| api_code(r.unwrap_err()).0;
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_eq!(
        code(send("POST", cms, "application/json", b"{nope".to_vec()).await),
        400
    );
    assert_eq!(
        code(send("POST", cms, "application/json", b"[1]".to_vec()).await),
        422
    );
    assert_eq!(
        code(send("POST", cms, "application/json", vec![b' '; 4 * 1024 * 1024]).await),
        413
    );
    assert_eq!(
        code(send("GET", "/api/v1/widgets", "application/json", vec![]).await),
        404
    );
    assert_eq!(
        code(send("GET", "/apis/nope.io/v1/things", "application/json", vec![]).await),
        404
    );
    assert_eq!(
        code(send("GET", "/nowhere", "application/json", vec![]).await),
        404
    );
    // ConfigMaps have no status subresource: 404 even for one that exists.
    send(
        "POST",
        cms,
        "application/json",
        br#"{"metadata":{"name":"s"}}"#.to_vec(),
    )
    .await
    .unwrap();
    assert!(
        send("GET", &format!("{cms}/s"), "application/json", vec![])
            .await
            .is_ok()
    );
    assert_eq!(
        code(
            send(
                "GET",
                &format!("{cms}/s/status"),
                "application/json",
                vec![]
            )
            .await
        ),
        404
    );
    assert_eq!(
        code(
            send(
                "GET",
                &format!("{cms}?labelSelector=a%20in%20x"),
                "application/json",
                vec![]
            )
            .await
        ),
        400
    );
    // The server still serves after all of that.
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.has_group("coordination.k8s.io"));
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn owner_references_and_namespaces_are_collected() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": "gc"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "gc");
    let owner = cms
        .create(&PostParams::default(), &configmap("owner", json!({})))
        .await
        .unwrap();
    let mut child = configmap("child", json!({}));
    child.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    cms.create(&PostParams::default(), &child).await.unwrap();
    let mut held = configmap("held", json!({}));
    held.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    held.metadata.finalizers = Some(vec!["mesh.io/test".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("child").await.unwrap().is_none());
    let held = cms.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "finalizers hold the dependent"
    );

    namespaces
        .delete("gc", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        cms.get_opt("held").await.unwrap().is_some(),
        "still held by its finalizer"
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn filtered_watch_reports_objects_leaving_and_entering_the_selection() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = cms
        .create(
            &PostParams::default(),
            &configmap("m", json!({"app": "in"})),
        )
        .await
        .unwrap();
    let mut stream = cms
        .watch(
            &WatchParams::default().labels("app=in").timeout(5),
            &created.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let relabel = |value: &'static str| {
        let cms = cms.clone();
        async move {
            cms.patch(
                "m",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": value}}})),
            )
            .await
            .unwrap();
        }
    };
    relabel("out").await;
    relabel("in").await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            Some(Ok(kube::api::WatchEvent::Deleted(_))) => kinds.push("DELETED"),
            Some(Ok(kube::api::WatchEvent::Added(_))) => kinds.push("ADDED"),
            Some(Ok(kube::api::WatchEvent::Bookmark(_))) => {}
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    assert_eq!(kinds, ["DELETED", "ADDED"]);
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |manager: &'static str, force: bool, data: serde_json::Value| {
        let cms = cms.clone();
        async move {
            let mut params = PatchParams::apply(manager);
            params.force = force;
            cms.patch(
                "applied",
                &params,
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "applied"}, "data": data})),
            )
            .await
        }
    };
    let data = |cm: ConfigMap| cm.data.unwrap_or_default().into_iter().collect::<Vec<_>>();

    let created = apply("one", false, json!({"a": "1", "b": "2"}))
        .await
        .unwrap();
    assert_eq!(data(created.clone()).len(), 2);
    let managers: Vec<_> = created
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert_eq!(managers, [(Some("one".into()), Some("Apply".into()))]);

    // Re-applying without `b` removes it.
    let trimmed = apply("one", false, json!({"a": "1"})).await.unwrap();
    assert_eq!(data(trimmed), [("a".to_string(), "1".to_string())]);

    // Another manager changing `a` conflicts, unless it forces.
    let (code, reason) = api_code(apply("two", false, json!({"a": "x"})).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let forced = apply("two", true, json!({"a": "x"})).await.unwrap();
    assert_eq!(data(forced), [("a".to_string(), "x".to_string())]);
    // `one` no longer owns `a`; dropping it from its configuration leaves `two`'s value.
    let after = apply("one", false, json!({"c": "3"})).await.unwrap();
    assert_eq!(
        data(after),
        [
            ("a".to_string(), "x".to_string()),
            ("c".to_string(), "3".to_string())
        ]
    );

    // Apply without a field manager is refused.
    let raw = cms
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}}),
            ),
        )
        .await;
    assert_eq!(api_code(raw.unwrap_err()).0, 400);
}

#[tokio::test]
async fn plain_http_serves_the_same_api() {
    let (cluster, client) = start(DevClusterConfig {
        tls: false,
        ..Default::default()
    })
    .await;
    assert!(cluster.ca_pem().is_none());
    assert!(cluster.kubeconfig().contains("http://127.0.0.1:"));
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &configmap("p", json!({})))
        .await
        .unwrap();
    assert_eq!(cms.get("p").await.unwrap().name_any(), "p");
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn rules_give_403_and_token_review_answers_for_issued_tokens() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use mesh_e2e::devcluster::{Rule, User};

    let tokens = [
        ("admin-token".to_string(), User::admin("admin")),
        (
            "reader-token".to_string(),
            User::restricted(
                "reader",
                vec![Rule::new(&["get", "list"], &["configmaps"], &["default"])],
            ),
        ),
    ]
    .into();
    let (cluster, admin) = start(DevClusterConfig {
        tokens,
        ..Default::default()
    })
    .await;
    assert!(cluster.kubeconfig().contains("admin-token"));

    let reader = client_for(&cluster.kubeconfig().replace("admin-token", "reader-token")).await;
    let read_cms: Api<ConfigMap> = Api::namespaced(reader.clone(), "default");
    assert!(read_cms.list(&ListParams::default()).await.is_ok());
    let (code, reason) = api_code(
        read_cms
            .create(&PostParams::default(), &configmap("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    let elsewhere: Api<ConfigMap> = Api::namespaced(reader.clone(), "kube-system");
    assert_eq!(
        api_code(elsewhere.list(&ListParams::default()).await.unwrap_err()).0,
        403
    );

    // A service-account token, issued through the token subresource, passes TokenReview and
    // authenticates requests; a made-up one does not.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let sa = serde_json::from_value(json!({"metadata": {"name": "proxy"}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["mesh"]}})).unwrap();
    let issued = accounts
        .create_token_request("proxy", &PostParams::default(), &request)
        .await
        .unwrap();
    let token = issued.status.unwrap().token;

    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review = |token: String| {
        let reviews = reviews.clone();
        async move {
            let review: TokenReview =
                serde_json::from_value(json!({"spec": {"token": token}})).unwrap();
            reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap()
        }
    };
    let status = review(token.clone()).await;
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:proxy")
    );
    assert_eq!(review("made-up".into()).await.authenticated, Some(false));
    let as_sa = client_for(&cluster.kubeconfig().replace("admin-token", &token)).await;
    let sa_cms: Api<ConfigMap> = Api::namespaced(as_sa.clone(), "default");
    assert!(sa_cms.list(&ListParams::default()).await.is_ok());

    // Deleting the account revokes its tokens.
    accounts
        .delete("proxy", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(review(token).await.authenticated, Some(false));
    assert_eq!(
        api_code(sa_cms.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
}

#[tokio::test]
async fn endpoints_controller_follows_pod_readiness() {
    use k8s_openapi::api::core::v1::{Endpoints, Pod};
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    let (_cluster, client) = start(DevClusterConfig {
        endpoints_controller: true,
        ..Default::default()
    })
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    for (name, ip) in [("web-1", "10.1.0.1"), ("web-2", "10.1.0.2")] {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    }
    let ready_ips = || async {
        let e = endpoints.get_opt("web").await.unwrap();
        e.and_then(|e| e.subsets)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.addresses.clone().unwrap_or_default())
            .map(|a| a.ip)
            .collect::<BTreeSet<_>>()
    };
    let wait_for = |want: Vec<&'static str>| async move {
        let want: BTreeSet<String> = want.into_iter().map(String::from).collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = ready_ips().await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "endpoints {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(vec!["10.1.0.1", "10.1.0.2"]).await;
    let slice = slices.get("web").await.unwrap();
    assert_eq!(slice.endpoints.len(), 2);
    assert_eq!(slice.ports.unwrap()[0].port, Some(8080));

    // Not ready, then killed.
    pods.patch_status(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    wait_for(vec!["10.1.0.2"]).await;
    pods.delete("web-2", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(vec![]).await;

    // The Service's Endpoints and slices go with it.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(endpoints.get_opt("web").await.unwrap().is_none());
    assert!(
        slices
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn snapshot_survives_a_restart_and_the_watcher_converges() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.json");
    let config = DevClusterConfig {
        snapshot: Some(snapshot.clone()),
        ..Default::default()
    };
    let (first, client) = start(config.clone()).await;
    let address = first.address();
    let kubeconfig = first.kubeconfig().to_string();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Link::crd())
        .await
        .unwrap();

    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let names = |reader: &reflector::Store<ConfigMap>| {
        reader
            .state()
            .iter()
            .map(|c| c.name_any())
            .collect::<BTreeSet<_>>()
    };
    let converge = |want: &'static [&'static str]| {
        let reader = reader.clone();
        async move {
            let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
            let deadline = tokio::time::Instant::now() + WAIT;
            while names(&reader) != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "reflector never reached {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let a = cms
        .create(&PostParams::default(), &configmap("a", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &configmap("b", json!({})))
        .await
        .unwrap();
    converge(&["a", "b"]).await;

    first.shutdown().await.unwrap();
    let second = DevCluster::start(DevClusterConfig {
        listen: address,
        ..config
    })
    .await
    .unwrap();
    assert_eq!(
        second.kubeconfig(),
        kubeconfig,
        "same CA, token and address"
    );

    // The same client reaches the restarted cluster; objects kept their identity; the CRD's
    // resource is served again.
    assert_eq!(cms.get("a").await.unwrap().metadata.uid, a.metadata.uid);
    let links: Api<Link> = Api::namespaced(client.clone(), "default");
    assert!(
        links
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    cms.create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    converge(&["b", "c"]).await;
    driver.abort();
    second.shutdown().await.unwrap();
}

/// kubectl, when one is installed: get, create, apply (client- and server-side) and delete.
#[tokio::test]
async fn kubectl_gets_and_applies() {
    let Ok(version) = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    else {
        println!("skipped: no kubectl binary on PATH");
        return;
    };
    if !version.status.success() {
        println!("skipped: `kubectl version --client` failed");
        return;
    }
    let cluster = DevCluster::start(DevClusterConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig()).unwrap();
    let manifest = dir.path().join("cm.yaml");
    let kubectl = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let output = tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(&args)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "kubectl {args:?} failed: {stderr}");
            stdout
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let namespaces = kubectl(args(&["get", "namespaces", "-o", "name"])).await;
    assert!(namespaces.contains("namespace/default"), "{namespaces}");
    let table = kubectl(args(&["get", "namespaces"])).await;
    assert!(table.contains("default"), "{table}");
    let write = |value: &str| {
        std::fs::write(
            &manifest,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-kubectl\n  labels:\n    app: web\ndata:\n  k: {value}\n"),
        )
        .unwrap()
    };
    let file = manifest.to_string_lossy().into_owned();
    write("one");
    kubectl(args(&["apply", "--validate=false", "-f", &file])).await;
    write("two");
    kubectl(args(&["apply", "--validate=false", "-f", &file])).await;
    let value = kubectl(args(&[
        "get",
        "configmap",
        "from-kubectl",
        "-o",
        "jsonpath={.data.k}",
    ]))
    .await;
    assert_eq!(value, "two");
    write("three");
    kubectl(args(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--validate=false",
        "-f",
        &file,
    ]))
    .await;
    let listed = kubectl(args(&[
        "get",
        "configmaps",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].data.k}",
    ]))
    .await;
    assert_eq!(listed, "three");
    kubectl(args(&["delete", "configmap", "from-kubectl"])).await;
    let left = kubectl(args(&["get", "configmaps", "-o", "name"])).await;
    assert!(left.trim().is_empty(), "{left}");
}

/// The official Python `kubernetes` client (installed by `.ci/run`), when importable: list,
/// watch, create, patch, delete. See `tests/python/client.py`.
#[tokio::test]
async fn python_client_lists_watches_creates_and_patches() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!(
            "skipped: python3 with the `kubernetes` package is not available (pip install kubernetes)"
        );
        return;
    }
    let cluster = DevCluster::start(DevClusterConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(&kubeconfig)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Random methods, paths, content types and bodies: every one gets an answer, and the server
/// keeps serving.
#[tokio::test]
async fn random_requests_never_break_the_server() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let pick = |items: &[&'static str]| items[rand::random_range(0..items.len())];
    for _ in 0..300 {
        let path: String = (0..rand::random_range(1..7))
            .map(|_| {
                pick(&[
                    "/api",
                    "/apis",
                    "/v1",
                    "/namespaces",
                    "/default",
                    "/configmaps",
                    "/x",
                    "/status",
                    "/token",
                    "/apiextensions.k8s.io",
                    "/customresourcedefinitions",
                    "/serviceaccounts",
                    "/%zz",
                    "/..",
                ])
            })
            .collect();
        let query = pick(&[
            "",
            "?watch=1&timeoutSeconds=0",
            "?labelSelector=a%20in",
            "?limit=x",
            "?continue=zz",
            "?resourceVersion=abc&watch=true",
            "?fieldManager=m&force=true",
        ]);
        let body = pick(&[
            "",
            "{",
            "[]",
            "null",
            "{\"metadata\":{\"name\":\"n\"}}",
            "{\"metadata\":7}",
            "[{\"op\":\"add\",\"path\":\"/x\",\"value\":1}]",
            "a: [",
            "{\"spec\":{\"token\":1}}",
        ]);
        let request = http::Request::builder()
            .method(pick(&["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
            .uri(format!("{path}{query}"))
            .header(
                "content-type",
                pick(&[
                    "application/json",
                    "application/merge-patch+json",
                    "application/json-patch+json",
                    "application/apply-patch+yaml",
                    "text/plain",
                ]),
            )
            .body(body.as_bytes().to_vec())
            .unwrap();
        match tokio::time::timeout(WAIT, client.request_text(request)).await {
            Ok(Ok(_)) | Ok(Err(kube::Error::Api(_))) => {}
            Ok(Err(other)) => panic!("{path}{query}: not an API answer: {other:?}"),
            Err(_) => panic!("{path}{query}: no answer"),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.list(&ListParams::default()).await.unwrap();
}

/// HTTP/2 by ALPN, verified against the CA the cluster wrote into its kubeconfig.
#[tokio::test]
async fn serves_http2_over_tls_with_its_own_ca() {
    use http_body_util::{BodyExt, Empty};
    use rustls_pki_types::pem::PemObject;

    let cluster = DevCluster::start(DevClusterConfig::default())
        .await
        .unwrap();
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(cluster.ca_pem().unwrap().as_bytes())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(cluster.address())
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("https://{}/api/v1/namespaces", cluster.address()))
        .header("authorization", format!("Bearer {}", cluster.admin_token()))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["kind"], "NamespaceList");
}

#[tokio::test]
async fn delete_propagation_orphan_and_foreground() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let owned = |name: &str, owner: &ConfigMap, finalizer: bool| {
        let mut cm = configmap(name, json!({}));
        cm.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
        if finalizer {
            cm.metadata.finalizers = Some(vec!["mesh.io/test".into()]);
        }
        cm
    };

    // Orphan: the dependent stays, without its reference.
    let owner = cms
        .create(&PostParams::default(), &configmap("o1", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned("kept", &owner, false))
        .await
        .unwrap();
    cms.delete("o1", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Foreground: the owner waits (deletionTimestamp, foregroundDeletion) for its dependents.
    let owner = cms
        .create(&PostParams::default(), &configmap("o2", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned("slow", &owner, true))
        .await
        .unwrap();
    cms.delete("o2", &DeleteParams::foreground()).await.unwrap();
    let waiting = cms.get("o2").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers.unwrap_or_default(),
        ["foregroundDeletion"]
    );
    assert!(
        cms.get("slow")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "slow",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("slow").await.unwrap().is_none());
    assert!(cms.get_opt("o2").await.unwrap().is_none());
}

#[tokio::test]
async fn watcher_with_streaming_lists_converges() {
    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &configmap("before", json!({})))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().streaming_lists()),
    )
    .default_backoff()
    .applied_objects();
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    cms.create(&PostParams::default(), &configmap("after", json!({})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reader.state().len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector never saw both objects"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    driver.abort();
}

#[tokio::test]
async fn run_serves_until_shutdown_and_writes_the_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let written = path.clone();
    let running = tokio::spawn(mesh_e2e::devcluster::run(
        DevClusterConfig::default(),
        async move {
            let _ = stopped.await;
        },
        move |cluster| cluster.write_kubeconfig(&written).unwrap(),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no kubeconfig written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = client_for(&std::fs::read_to_string(&path).unwrap()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.list(&ListParams::default()).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the kubeconfig holds a token: owner-only");
    }
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn cluster_scoped_crd_is_discovered_and_served() {
    use kube::core::{DynamicObject, GroupVersionKind};
    use kube::discovery;

    let (_cluster, client) = start(DevClusterConfig::default()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();

    let gvk = GroupVersionKind::gvk("example.io", "v1", "Widget");
    let (resource, capabilities) = discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(resource.plural, "widgets");
    assert_eq!(capabilities.scope, discovery::Scope::Cluster);

    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.io/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}
    }))
    .unwrap();
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap();
    let got = widgets.get("w").await.unwrap();
    assert_eq!(got.data["spec"]["size"], 3);
    assert!(got.metadata.namespace.is_none());
    // A namespaced path to a cluster-scoped resource is not found.
    let namespaced: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    assert_eq!(api_code(namespaced.get("w").await.unwrap_err()).0, 404);
}

/// Creates, reads, lists and deletes one object of kind `K` in `default` through kube-rs.
async fn round_trip<K>(client: &Client, object: serde_json::Value)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), "default");
    let object: K = serde_json::from_value(object).unwrap();
    let name = object.meta().name.clone().unwrap();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let created = api.create(&PostParams::default(), &object).await.unwrap();
    assert!(created.meta().uid.is_some(), "{kind}: no uid");
    assert!(
        created.meta().resource_version.is_some(),
        "{kind}: no resourceVersion"
    );
    assert_eq!(
        api.get(&name).await.unwrap().meta().name,
        Some(name.clone())
    );
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|o| o.meta().name.as_deref() == Some(name.as_str())),
        "{kind}: not listed"
    );
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(api.get(&name).await.unwrap_err()).0, 404, "{kind}");
}

#[tokio::test]
async fn every_resource_the_mesh_needs_is_served() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Endpoints, Event, Pod, Secret, ServiceAccount};
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    let (cluster, client) = start(DevClusterConfig::default()).await;
    round_trip::<Lease>(
        &client,
        json!({"metadata": {"name": "mesh-controller"},
               "spec": {"holderIdentity": "replica-1", "leaseDurationSeconds": 15}}),
    )
    .await;
    round_trip::<Secret>(
        &client,
        json!({"metadata": {"name": "link-east"}, "type": "Opaque",
               "data": {"kubeconfig": "YXBpVmVyc2lvbjogdjE="}}),
    )
    .await;
    round_trip::<ServiceAccount>(&client, json!({"metadata": {"name": "remote-reader"}})).await;
    round_trip::<Pod>(
        &client,
        json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "web", "image": "web:1"}]}}),
    )
    .await;
    round_trip::<Endpoints>(
        &client,
        json!({"metadata": {"name": "web"},
               "subsets": [{"addresses": [{"ip": "10.0.0.7"}], "ports": [{"port": 80}]}]}),
    )
    .await;
    round_trip::<EndpointSlice>(
        &client,
        json!({"metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": true}}],
               "ports": [{"port": 80}]}),
    )
    .await;
    round_trip::<Event>(
        &client,
        json!({"metadata": {"name": "web.failover"},
               "involvedObject": {"kind": "TrafficSplit", "name": "web", "namespace": "default"},
               "reason": "FailedOver", "message": "to web-east", "type": "Normal"}),
    )
    .await;
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn kube_rs_discovery_finds_every_group_the_mesh_uses() {
    let (cluster, client) = start(DevClusterConfig::default()).await;
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    let groups: BTreeSet<String> = discovery.groups().map(|g| g.name().to_owned()).collect();
    for group in [
        "",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "apiextensions.k8s.io",
        "authentication.k8s.io",
    ] {
        assert!(groups.contains(group), "{group:?} missing from {groups:?}");
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_watch_ends_at_its_timeout() {
    let (cluster, client) = start(DevClusterConfig::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    // The server closes the watch after one second; a stream that outlived it would hang here.
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("the watch ended at its timeoutSeconds");
    assert!(events.iter().all(Result::is_ok), "{events:?}");
    cluster.shutdown().await.unwrap();
}
