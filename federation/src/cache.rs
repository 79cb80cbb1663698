//! One shared watch per resource kind, however many readers.
//!
//! The controller's readers (discovery streams, DNS, the mirror and failover reconcilers) never
//! watch the API themselves: they read [`Cache`]'s reflector stores and wait on
//! [`Cache::changes`], a counter that grows after every applied watch event. A reader that wakes
//! re-reads the stores, so a burst of events costs it one recomputation, not one per event.
//!
//! Each kind is watched across all namespaces with kube-runtime's watcher (relists after
//! `410 Gone`, backs off on errors). A kind that cannot be watched (its CRD is not installed, the
//! service account lacks the permission, the API is down) is logged and retried; the other kinds
//! carry on, and [`Cache::ready`] stays false until every kind has listed once. The watch loop
//! itself (`watch_into_store`) is the one the link workers run on linked clusters too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use mesh_api::crd::{Link, TrafficSplit};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How many kinds the cache watches.
const KINDS: usize = 5;

/// Reflector stores of the local cluster's Services, EndpointSlices, Pods, TrafficSplits and
/// Links, with a change counter. Cloning is cheap; the watches stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Cache {
    /// Every Service.
    pub services: Store<Service>,
    /// Every EndpointSlice.
    pub slices: Store<EndpointSlice>,
    /// Every Pod.
    pub pods: Store<Pod>,
    /// Every TrafficSplit.
    pub splits: Store<TrafficSplit>,
    /// Every Link.
    pub links: Store<Link>,
    changes: watch::Receiver<u64>,
    listed: Arc<AtomicUsize>,
    _tasks: Arc<JoinSet<()>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("pods", &self.pods.len())
            .field("splits", &self.splits.len())
            .field("links", &self.links.len())
            .field("generation", &*self.changes.borrow())
            .finish()
    }
}

impl Cache {
    /// Starts one watch per kind on `client`'s cluster. Must be called inside a tokio runtime.
    pub fn start(client: &Client) -> Self {
        let (tx, changes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let listed = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let services = reflect::<Service>(client, &mut tasks, &tx, &listed);
        let slices = reflect::<EndpointSlice>(client, &mut tasks, &tx, &listed);
        let pods = reflect::<Pod>(client, &mut tasks, &tx, &listed);
        let splits = reflect::<TrafficSplit>(client, &mut tasks, &tx, &listed);
        let links = reflect::<Link>(client, &mut tasks, &tx, &listed);
        Self {
            services,
            slices,
            pods,
            splits,
            links,
            changes,
            listed,
            _tasks: Arc::new(tasks),
        }
    }

    /// A receiver of the change counter: it changes after every applied event of any kind.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether every kind has been listed once (the stores are complete).
    pub fn ready(&self) -> bool {
        self.listed.load(Ordering::Acquire) >= KINDS
    }

    /// Waits until [`Cache::ready`].
    pub async fn wait_ready(&self) {
        let mut changes = self.changes();
        while !self.ready() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Starts the watch of one kind into a new store.
fn reflect<K>(
    client: &Client,
    tasks: &mut JoinSet<()>,
    changes: &Arc<watch::Sender<u64>>,
    listed: &Arc<AtomicUsize>,
) -> Store<K>
where
    K: Cached,
{
    let kind = K::kind(&()).into_owned();
    let (changes, listed) = (changes.clone(), listed.clone());
    let mut first_list = true;
    let mut last_error: Option<String> = None;
    watch_into_store(
        tasks,
        Api::all(client.clone()),
        watcher::Config::default(),
        move |progress| match progress {
            WatchProgress::Listing => {}
            WatchProgress::Listed | WatchProgress::Changed => {
                if first_list && matches!(progress, WatchProgress::Listed) {
                    first_list = false;
                    listed.fetch_add(1, Ordering::AcqRel);
                }
                last_error = None;
                changes.send_modify(|generation| *generation += 1);
            }
            WatchProgress::Failed(error) => {
                // Said once per distinct error, not at every retry.
                let text = error.to_string();
                if last_error.as_deref() != Some(&text) {
                    let missing = matches!(
                        error,
                        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
                    );
                    if missing {
                        tracing::warn!(%kind, "the API does not serve {kind}: install the mesh CRDs (`mesh crds | kubectl apply -f -`); retrying");
                    } else {
                        tracing::warn!(%kind, error = %text, "watch failed; retrying");
                    }
                    last_error = Some(text);
                }
            }
        },
    )
}

/// A kind the controller keeps in reflector stores, and what of its objects it keeps.
///
/// Stores hold every object of their kind for as long as the controller runs, so each object
/// is trimmed as it arrives to what some reader of the controller uses: managedFields (the
/// bulk of an object written by server-side apply) and kubectl's last-applied-configuration
/// annotation (a second copy of the object) are never read, and a kind may drop more.
pub(crate) trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// Drops what no reader uses; the default drops what no reader of any kind uses.
    fn trim(&mut self) {
        trim_meta(self.meta_mut());
    }
}

/// Drops what no reader uses of any object's metadata.
fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// The annotation `kubectl apply` keeps its last input in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl Cached for Service {}
impl Cached for EndpointSlice {}
impl Cached for ConfigMap {}
impl Cached for TrafficSplit {}
impl Cached for Link {}

/// Of a Pod, discovery reads its uid and labels, the names of its containers (the restart
/// policy too, of init containers: a native sidecar is an init container that keeps running)
/// and its service account. The rest of the spec (images, environment, volumes, probes) and
/// the status are most of a Pod, and are dropped.
impl Cached for Pod {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        self.status = None;
        if let Some(spec) = self.spec.take() {
            let named = |container: Container| Container {
                name: container.name,
                restart_policy: container.restart_policy,
                ..Container::default()
            };
            self.spec = Some(PodSpec {
                containers: spec.containers.into_iter().map(named).collect(),
                init_containers: spec
                    .init_containers
                    .map(|containers| containers.into_iter().map(named).collect()),
                service_account_name: spec.service_account_name,
                service_account: spec.service_account,
                ..PodSpec::default()
            });
        }
    }
}

/// What a watch tells its owner, besides keeping its store.
#[derive(Debug)]
pub(crate) enum WatchProgress<'a> {
    /// A list (the first, or one after `410 Gone` or a failure) is under way: the API answers,
    /// and the store is not complete yet.
    Listing,
    /// A list completed: the store holds every object.
    Listed,
    /// An object was added, changed or deleted after a list.
    Changed,
    /// The watch failed; it is retried after a backoff.
    Failed(&'a watcher::Error),
}

/// Watches `api` with kube-runtime's watcher (relists after `410 Gone`, backs off on errors)
/// into a new store, in a task of `tasks`, telling `progress` of every step: the one watcher
/// loop of the controller, for the local cache and the linked clusters alike.
pub(crate) fn watch_into_store<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    mut progress: impl FnMut(WatchProgress<'_>) + Send + 'static,
) -> Store<K>
where
    K: Cached,
{
    let (reader, writer) = reflector::store::<K>();
    tasks.spawn(async move {
        let events = reflector::reflector(writer, watcher(api, config).modify(Cached::trim))
            .default_backoff();
        futures_util::pin_mut!(events);
        while let Some(event) = events.next().await {
            progress(match &event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => WatchProgress::Listing,
                Ok(watcher::Event::InitDone) => WatchProgress::Listed,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => WatchProgress::Changed,
                Err(error) => WatchProgress::Failed(error),
            });
        }
    });
    reader
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stores_keep_what_readers_use_and_drop_the_rest() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web"},
                "annotations": {LAST_APPLIED: "{\"big\": true}", "team": "shop"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "serviceAccountName": "web",
                "containers": [
                    {"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}]},
                    {"name": "mesh-proxy", "image": "proxy:1"}
                ],
                "initContainers": [{"name": "sidecar", "image": "s:1", "restartPolicy": "Always"}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            },
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        }))
        .unwrap();
        pod.trim();

        assert_eq!(pod.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.get("team").map(String::as_str), Some("shop"));
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert!(pod.metadata.managed_fields.is_none());
        assert!(pod.status.is_none());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "mesh-proxy"]);
        assert!(
            spec.containers
                .iter()
                .all(|c| c.image.is_none() && c.env.is_none())
        );
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            (init.name.as_str(), init.restart_policy.as_deref()),
            ("sidecar", Some("Always"))
        );
        assert!(spec.volumes.is_none());

        let mut service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop",
                "annotations": {LAST_APPLIED: "{}", "mesh.io/opaque-ports": "5432"}},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        service.trim();
        let annotations = service.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1);
        assert_eq!(annotations["mesh.io/opaque-ports"], "5432");
        assert!(service.spec.is_some());
    }
}
