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
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
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
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    tasks.spawn(async move {
        // managedFields are the bulk of an object written by server-side apply, and nothing
        // here reads them: stores keep objects without.
        let events = reflector::reflector(
            writer,
            watcher(api, config).modify(|object: &mut K| object.meta_mut().managed_fields = None),
        )
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
