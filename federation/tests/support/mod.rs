//! Dev clusters for the controller's tests: starting one, a client of it, the mesh's CRDs and
//! namespaces, a Link's credentials, and waiting for what the controller does. Each test file
//! uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use mesh_e2e::devcluster::{DevCluster, DevClusterConfig};
use serde_json::json;
use tokio::time::Instant;

/// How long a test waits for what it expects; only reached when it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The client configuration of a kubeconfig.
pub async fn config_for(kubeconfig: &str) -> Config {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig).unwrap();
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

/// A client of a kubeconfig's cluster.
pub async fn client_for(kubeconfig: &str) -> Client {
    Client::try_from(config_for(kubeconfig).await).unwrap()
}

/// A dev cluster named `name` (its endpoints controller on if `endpoints`), with the mesh's
/// CRDs and `namespaces`, and a client of it. Logs go to the test output (`RUST_LOG`).
pub async fn cluster(name: &str, namespaces: &[&str], endpoints: bool) -> (DevCluster, Client) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = DevCluster::start(DevClusterConfig {
        name: name.into(),
        endpoints_controller: endpoints,
        ..DevClusterConfig::default()
    })
    .await
    .unwrap();
    let client = client_for(cluster.kubeconfig()).await;
    install_crds(&client).await;
    for namespace in namespaces {
        create_namespace(&client, namespace).await;
    }
    (cluster, client)
}

/// What `mesh crds | kubectl apply -f -` does.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in mesh_api::crd::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
}

pub async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

/// Writes (or rewrites) the Secret `east-credentials` in west's mesh namespace holding
/// `kubeconfig`, as a Link's credentials.
pub async fn put_credentials(west: &Client, kubeconfig: &str) {
    let secrets: Api<Secret> = Api::namespaced(west.clone(), "mesh");
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "east-credentials", "namespace": "mesh"}
    }))
    .unwrap();
    secret.data = Some(std::collections::BTreeMap::from([(
        mesh_api::crd::CREDENTIALS_SECRET_KEY.to_owned(),
        k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec()),
    )]));
    secrets
        .patch(
            "east-credentials",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// Polls `check` until it gives a value.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
