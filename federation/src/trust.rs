//! The trust bridge: this cluster's roots out, linked clusters' roots in, the merged set served.
//!
//! Every cluster keeps its own root and trust domain; links exchange bundles, SPIFFE-federation
//! style, and keep them fresh, so a root rotation in one cluster needs no change elsewhere:
//!
//! 1. [`publish_own`] writes this cluster's roots to the ConfigMap
//!    [`DEFAULT_TRUST_BUNDLE_CONFIG_MAP`] in the mesh namespace (keys
//!    [`TRUST_BUNDLE_CONFIG_MAP_KEY`] and [`TRUST_DOMAIN_CONFIG_MAP_KEY`]). Linked clusters read
//!    it through their Link's credentials ([`crate::remote`]).
//! 2. The link reconciler keeps each linked cluster's current bundle ([`Links::bundles`]). The
//!    leader runs [`run_linked_writer`], which keeps the ConfigMap [`LINKED_BUNDLES_CONFIG_MAP`]
//!    in the mesh namespace equal to them: one key `<trust-domain>.pem` per linked domain.
//! 3. Every replica runs a [`BundleSet`], which watches that ConfigMap (and the Links) and
//!    merges this cluster's roots with the linked ones; [`TrustBundleService`] streams the
//!    merged set to proxies and gateways (`TrustBundles.Watch`), which apply it live.
//!
//! The ConfigMap between the leader and the replicas makes every replica serve the same set
//! without each of them watching every linked cluster, and lets an operator see what is trusted
//! with `kubectl get configmap`.
//!
//! Failure rules, chosen so that a control-plane fault never takes trust away from the data
//! plane:
//! - The writer removes only the keys of domains no Link names. A linked domain the link
//!   reconciler has not reported yet (just after a controller restart) keeps the value the
//!   ConfigMap holds.
//! - The reader takes only keys of domains a Link of the mesh namespace names: writing the
//!   ConfigMap alone cannot make the mesh trust a new domain.
//! - The reader skips a key that does not parse, names this cluster's own domain, or holds only
//!   expired roots, with a warning; the domain keeps its last good roots (if it had any). Only
//!   a removed key, or a removed Link, drops a domain. A deleted ConfigMap changes nothing:
//!   unlinking removes keys, and the writer recreates the ConfigMap.
//! - Nothing is served before the ConfigMap has been read once, so a restarted controller never
//!   sends its own roots alone to proxies that trust linked domains.
//!
//! [`Links::bundles`]: crate::links::Links::bundles

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use mesh_api::crd::{
    DEFAULT_TRUST_BUNDLE_CONFIG_MAP, Link, TRUST_BUNDLE_CONFIG_MAP_KEY, TRUST_DOMAIN_CONFIG_MAP_KEY,
};
use mesh_api::discovery::trust_bundles_server::{TrustBundles, TrustBundlesServer};
use mesh_api::discovery::{self as proto, TrustDomainBundle, WatchTrustBundles};
use mesh_trust::{TrustBundleSet, TrustDomain};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::cache::WatchProgress;
use crate::link;
use crate::links::LinkedBundles;
use crate::mirror::FIELD_MANAGER;

/// The ConfigMap, in the mesh namespace, holding every linked domain's current roots.
pub const LINKED_BUNDLES_CONFIG_MAP: &str = "mesh-linked-trust-bundles";
/// The suffix of a key of [`LINKED_BUNDLES_CONFIG_MAP`]: `<trust-domain>.pem`.
pub const PEM_KEY_SUFFIX: &str = ".pem";
/// The first retry delay of a failed write.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Why a trust bundle ConfigMap could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// There is no root of the domain to publish.
    #[error(
        "no root certificate of trust domain {0} to publish; give the cluster's root CA certificate"
    )]
    NoRoots(TrustDomain),
    /// The API refused the write.
    #[error("writing ConfigMap {namespace}/{name}: {source}")]
    Api {
        /// The mesh namespace.
        namespace: String,
        /// The ConfigMap.
        name: &'static str,
        /// What the API said.
        source: kube::Error,
    },
}

/// The PEM key of `domain` in [`LINKED_BUNDLES_CONFIG_MAP`].
pub fn pem_key(domain: &TrustDomain) -> String {
    format!("{domain}{PEM_KEY_SUFFIX}")
}

/// A ConfigMap of `data`, as server-side apply takes it.
fn config_map(namespace: &str, name: &str, data: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "data": data,
    })
}

// === publish_own ===

/// Publishes this cluster's roots of `trust_domain` (from `roots`) for linked clusters: a
/// server-side apply, as [`FIELD_MANAGER`], of the ConfigMap
/// [`DEFAULT_TRUST_BUNDLE_CONFIG_MAP`] in `namespace`. During a root rotation, publish the old
/// and the new root together, then the new one alone once every leaf is reissued.
///
/// # Errors
///
/// `roots` holds no root of `trust_domain`, or the API refused the write.
pub async fn publish_own(
    client: &Client,
    namespace: &str,
    trust_domain: &TrustDomain,
    roots: &TrustBundleSet,
) -> Result<(), TrustError> {
    let pem = roots
        .to_pem(trust_domain)
        .ok_or_else(|| TrustError::NoRoots(trust_domain.clone()))?;
    let data = BTreeMap::from([
        (TRUST_BUNDLE_CONFIG_MAP_KEY.to_owned(), pem),
        (
            TRUST_DOMAIN_CONFIG_MAP_KEY.to_owned(),
            trust_domain.to_string(),
        ),
    ]);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        DEFAULT_TRUST_BUNDLE_CONFIG_MAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(config_map(
            namespace,
            DEFAULT_TRUST_BUNDLE_CONFIG_MAP,
            &data,
        )),
    )
    .await
    .map_err(|source| TrustError::Api {
        namespace: namespace.to_owned(),
        name: DEFAULT_TRUST_BUNDLE_CONFIG_MAP,
        source,
    })?;
    let roots = roots.roots(trust_domain).count();
    tracing::info!(%trust_domain, roots, "published this cluster's trust bundle");
    Ok(())
}

// === the leader's writer ===

/// The data [`LINKED_BUNDLES_CONFIG_MAP`] should hold: one `<domain>.pem` key per domain in
/// `linked` (the trust domains current Links name). Its value is the domain's roots from
/// `bundles` (the link reconciler's view, roots of one domain merged if several Links name it)
/// or, for a domain the reconciler has not reported yet, the value in `current`. Keys of other
/// domains are left out, so that they are removed.
pub fn linked_data(
    linked: &BTreeSet<TrustDomain>,
    bundles: &BTreeMap<String, (TrustDomain, TrustBundleSet)>,
    current: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut reported = TrustBundleSet::new();
    for (domain, set) in bundles.values() {
        if linked.contains(domain) {
            reported.merge(set);
        }
    }
    let mut data = BTreeMap::new();
    for domain in linked {
        let key = pem_key(domain);
        let value = reported
            .to_pem(domain)
            .or_else(|| current.get(&key).cloned());
        if let Some(value) = value {
            data.insert(key, value);
        }
    }
    data
}

/// The trust domains the Links in `links` name (ones that do not parse name none).
fn linked_domains(links: &[Arc<Link>]) -> BTreeSet<TrustDomain> {
    links
        .iter()
        .filter_map(|link| TrustDomain::new(&link.spec.trust_domain).ok())
        .collect()
}

/// Keeps [`LINKED_BUNDLES_CONFIG_MAP`] in `namespace` equal to [`linked_data`] of the Links of
/// `namespace` and `bundles`, until `shutdown` resolves. Run by the leader only.
///
/// It watches the Links and the ConfigMap itself, so a change by anyone else (an edit, a
/// deletion) is undone at once. Writes are server-side applies with force as
/// [`FIELD_MANAGER`]; keys another manager added are removed with a merge patch. A failed write
/// is retried after a doubling delay ([`FIRST_RETRY_DELAY`] to [`MAX_RETRY_DELAY`]).
pub async fn run_linked_writer(
    client: Client,
    namespace: String,
    mut bundles: LinkedBundles,
    shutdown: impl Future<Output = ()>,
) {
    let wake = Arc::new(Notify::new());
    let (_tasks, links, maps) = watch_linked(&client, &namespace, &wake);
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    tokio::pin!(shutdown);
    let listed = async {
        let _ = links.wait_until_ready().await;
        let _ = maps.wait_until_ready().await;
    };
    tokio::select! {
        () = listed => {}
        () = &mut shutdown => return,
    }

    let mut delay = FIRST_RETRY_DELAY;
    let mut retry_at: Option<Instant> = None;
    let mut following = true;
    loop {
        let current = maps
            .state()
            .first()
            .and_then(|map| map.data.clone())
            .unwrap_or_default();
        let desired = linked_data(
            &linked_domains(&links.state()),
            &bundles.borrow_and_update(),
            &current,
        );
        let exists = !maps.is_empty();
        if (!exists || desired != current) && retry_at.is_none_or(|at| at <= Instant::now()) {
            match write_linked(&api, &namespace, &desired).await {
                Ok(()) => {
                    let domains: Vec<&str> = desired
                        .keys()
                        .map(|k| k.trim_end_matches(PEM_KEY_SUFFIX))
                        .collect();
                    tracing::info!(?domains, "linked trust bundles written");
                    delay = FIRST_RETRY_DELAY;
                    retry_at = None;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?delay, "linked trust bundles not written; retrying");
                    retry_at = Some(Instant::now() + delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = wake.notified() => {}
            changed = bundles.changed(), if following => following = changed.is_ok(),
            () = sleep_until(retry_at) => retry_at = None,
        }
    }
}

/// Applies `data` to [`LINKED_BUNDLES_CONFIG_MAP`], then removes keys other managers hold.
async fn write_linked(
    api: &Api<ConfigMap>,
    namespace: &str,
    data: &BTreeMap<String, String>,
) -> Result<(), TrustError> {
    let failed = |source| TrustError::Api {
        namespace: namespace.to_owned(),
        name: LINKED_BUNDLES_CONFIG_MAP,
        source,
    };
    let written = api
        .patch(
            LINKED_BUNDLES_CONFIG_MAP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(config_map(namespace, LINKED_BUNDLES_CONFIG_MAP, data)),
        )
        .await
        .map_err(failed)?;
    let foreign: serde_json::Map<String, serde_json::Value> = written
        .data
        .unwrap_or_default()
        .into_keys()
        .filter(|key| !data.contains_key(key))
        .map(|key| (key, serde_json::Value::Null))
        .collect();
    if !foreign.is_empty() {
        let keys: Vec<&String> = foreign.keys().collect();
        tracing::info!(?keys, "removing keys no Link accounts for");
        api.patch(
            LINKED_BUNDLES_CONFIG_MAP,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(serde_json::json!({ "data": foreign })),
        )
        .await
        .map_err(failed)?;
    }
    Ok(())
}

/// Watches the Links of `namespace` and its linked-bundles ConfigMap, waking `wake` at every
/// change; the watches stop when the returned set is dropped.
fn watch_linked(
    client: &Client,
    namespace: &str,
    wake: &Arc<Notify>,
) -> (JoinSet<()>, Store<Link>, Store<ConfigMap>) {
    let mut tasks = JoinSet::new();
    let links = reflect(
        &mut tasks,
        Api::namespaced(client.clone(), namespace),
        watcher::Config::default(),
        wake,
    );
    let maps = reflect(
        &mut tasks,
        Api::namespaced(client.clone(), namespace),
        watcher::Config::default().fields(&format!("metadata.name={LINKED_BUNDLES_CONFIG_MAP}")),
        wake,
    );
    (tasks, links, maps)
}

/// Starts a watch into a new store (the controller's one watcher loop); every event but those of
/// a (re)list in progress wakes `wake`.
fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    wake: &Arc<Notify>,
) -> Store<K>
where
    K: crate::cache::Cached,
{
    let wake = wake.clone();
    let kind = K::kind(&()).into_owned();
    crate::cache::watch_into_store(tasks, api, config, move |progress| match progress {
        WatchProgress::Listing => {}
        WatchProgress::Listed | WatchProgress::Changed => wake.notify_one(),
        WatchProgress::Failed(error) => tracing::warn!(%kind, %error, "watch failed; retrying"),
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// === every replica's reader ===

/// The merged bundle set as served, with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSnapshot {
    /// Grows by one at every change of `set`. 0 until the linked ConfigMap has been read once:
    /// `set` then holds this cluster's roots alone and is not served.
    pub sequence: u64,
    /// This cluster's roots and every linked domain's.
    pub set: TrustBundleSet,
}

/// Why a key of the linked ConfigMap was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SkippedKey {
    /// The key is not `<trust-domain>.pem`.
    #[error("key {0:?} is not <trust-domain>.pem")]
    BadKey(String),
    /// The key names this cluster's own domain, whose roots come from its own CA only.
    #[error(
        "key {0:?} names this cluster's own trust domain; its roots are never taken from a link"
    )]
    OwnDomain(String),
    /// No Link names the key's domain.
    #[error("key {0:?} names a trust domain no Link names; link the cluster first")]
    NotLinked(String),
    /// The roots do not parse, are not CAs of the domain, or have all expired.
    #[error("key {key:?}: {problem}")]
    BadRoots {
        /// The key.
        key: String,
        /// What is wrong.
        problem: link::LinkProblem,
    },
}

/// The linked domains' roots that `data` (the linked ConfigMap) gives at `now`, and the keys it
/// skipped. Only domains in `linked` (those current Links name) are taken. A domain whose roots
/// are refused keeps its roots from `last_good`, if any; a domain without a key is dropped.
pub fn read_linked(
    data: &BTreeMap<String, String>,
    own: &TrustDomain,
    linked: &BTreeSet<TrustDomain>,
    last_good: &BTreeMap<TrustDomain, TrustBundleSet>,
    now: SystemTime,
) -> (BTreeMap<TrustDomain, TrustBundleSet>, Vec<SkippedKey>) {
    let named = linked;
    let mut linked = BTreeMap::new();
    let mut skipped = Vec::new();
    for (key, pem) in data {
        let Some(domain) = key
            .strip_suffix(PEM_KEY_SUFFIX)
            .and_then(|name| TrustDomain::new(name).ok())
        else {
            skipped.push(SkippedKey::BadKey(key.chars().take(300).collect()));
            continue;
        };
        if &domain == own {
            skipped.push(SkippedKey::OwnDomain(key.clone()));
            continue;
        }
        if !named.contains(&domain) {
            skipped.push(SkippedKey::NotLinked(key.clone()));
            continue;
        }
        match link::parse_bundle(&domain, pem, now) {
            Ok((set, _)) => {
                linked.insert(domain, set);
            }
            Err(problem) => {
                skipped.push(SkippedKey::BadRoots {
                    key: key.clone(),
                    problem,
                });
                if let Some(set) = last_good.get(&domain) {
                    linked.insert(domain, set.clone());
                }
            }
        }
    }
    (linked, skipped)
}

/// The merged trust bundle set this replica serves: this cluster's roots and the linked
/// domains' from [`LINKED_BUNDLES_CONFIG_MAP`], kept current. Cheap to clone; the watch stops
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct BundleSet {
    inner: Arc<ReaderInner>,
}

#[derive(Debug)]
struct ReaderInner {
    own_domain: TrustDomain,
    state: Mutex<ReaderState>,
    snapshot: watch::Sender<BundleSnapshot>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ReaderInner {
    fn drop(&mut self) {
        let task = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

#[derive(Debug, Default)]
struct ReaderState {
    own: TrustBundleSet,
    /// The linked ConfigMap's data as last seen.
    data: BTreeMap<String, String>,
    linked: BTreeMap<TrustDomain, TrustBundleSet>,
    /// The keys skipped at the last read, so each problem is logged once.
    skipped: Vec<SkippedKey>,
    read: bool,
}

impl ReaderState {
    fn merged(&self) -> TrustBundleSet {
        let mut set = self.own.clone();
        for linked in self.linked.values() {
            set.merge(linked);
        }
        set
    }
}

impl BundleSet {
    /// Starts watching [`LINKED_BUNDLES_CONFIG_MAP`] and the Links in `namespace`; `own_roots`
    /// are this cluster's roots (of `own_domain`). Must be called inside a tokio runtime.
    pub fn start(
        client: Client,
        namespace: &str,
        own_domain: TrustDomain,
        own_roots: TrustBundleSet,
    ) -> Self {
        let (snapshot, _) = watch::channel(BundleSnapshot {
            sequence: 0,
            set: own_roots.clone(),
        });
        let inner = Arc::new(ReaderInner {
            own_domain,
            state: Mutex::new(ReaderState {
                own: own_roots,
                ..ReaderState::default()
            }),
            snapshot,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(follow_linked(
            Arc::downgrade(&inner),
            client,
            namespace.to_owned(),
        ));
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Self { inner }
    }

    /// The merged set now and at every change.
    pub fn subscribe(&self) -> watch::Receiver<BundleSnapshot> {
        self.inner.snapshot.subscribe()
    }

    /// The merged set now.
    pub fn current(&self) -> BundleSnapshot {
        self.inner.snapshot.borrow().clone()
    }

    /// Replaces this cluster's own roots (a rotation of its root CA).
    pub fn update_own(&self, roots: TrustBundleSet) {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.own = roots;
        self.inner.publish(&state);
    }

    /// The gRPC service streaming this set.
    pub fn service(&self) -> TrustBundlesServer<TrustBundleService> {
        TrustBundlesServer::new(TrustBundleService {
            bundles: self.clone(),
        })
    }
}

impl ReaderInner {
    /// Applies the linked ConfigMap's `data` (None: there is none, and its last data stands)
    /// for the domains in `linked`.
    fn read(&self, data: Option<&BTreeMap<String, String>>, linked: &BTreeSet<TrustDomain>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(data) = data {
            state.data.clone_from(data);
        }
        let (next, skipped) = read_linked(
            &state.data,
            &self.own_domain,
            linked,
            &state.linked,
            SystemTime::now(),
        );
        for problem in skipped.iter().filter(|p| !state.skipped.contains(p)) {
            tracing::warn!(
                config_map = LINKED_BUNDLES_CONFIG_MAP,
                %problem,
                "skipped a linked trust bundle; the domain keeps its last good roots"
            );
        }
        state.linked = next;
        state.skipped = skipped;
        state.read = true;
        self.publish(&state);
    }

    /// Publishes the merged set if it changed (or on the first read).
    fn publish(&self, state: &ReaderState) {
        let merged = state.merged();
        self.snapshot.send_if_modified(|snapshot| {
            if !state.read {
                let changed = snapshot.set != merged;
                snapshot.set = merged;
                return changed;
            }
            if snapshot.sequence > 0 && snapshot.set == merged {
                return false;
            }
            let diff = snapshot.set.diff(&merged);
            snapshot.sequence += 1;
            snapshot.set = merged;
            let domains: Vec<&str> = snapshot.set.domains().map(TrustDomain::as_str).collect();
            let changes = diff.to_string().trim_end().replace('\n', "; ");
            tracing::info!(sequence = snapshot.sequence, ?domains, %changes, "trust bundle set updated");
            true
        });
    }
}

/// Watches the linked ConfigMap and the Links, and feeds every change to the reader while it
/// exists. Nothing is read before both have been listed.
async fn follow_linked(inner: std::sync::Weak<ReaderInner>, client: Client, namespace: String) {
    let wake = Arc::new(Notify::new());
    let (_tasks, links, maps) = watch_linked(&client, &namespace, &wake);
    if links.wait_until_ready().await.is_err() || maps.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let map = maps.state().into_iter().next();
        let empty = BTreeMap::new();
        let data = map.as_ref().map(|map| map.data.as_ref().unwrap_or(&empty));
        inner.read(data, &linked_domains(&links.state()));
        drop(inner);
        wake.notified().await;
    }
}

// === the gRPC service ===

/// `TrustBundles.Watch` over a [`BundleSet`]: the merged set once it has been read, then at
/// every change.
#[derive(Clone, Debug)]
pub struct TrustBundleService {
    bundles: BundleSet,
}

/// The protobuf form of a snapshot.
pub fn to_proto(snapshot: &BundleSnapshot) -> proto::TrustBundleSet {
    proto::TrustBundleSet {
        domains: snapshot
            .set
            .domains()
            .map(|domain| TrustDomainBundle {
                trust_domain: domain.to_string(),
                roots: snapshot
                    .set
                    .roots(domain)
                    .map(|der| der.as_ref().to_vec())
                    .collect(),
            })
            .collect(),
        sequence: snapshot.sequence,
    }
}

#[tonic::async_trait]
impl TrustBundles for TrustBundleService {
    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<proto::TrustBundleSet, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<WatchTrustBundles>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller: String = request
            .into_inner()
            .caller_identity
            .chars()
            .take(300)
            .collect();
        tracing::debug!(%caller, "trust bundle watch");
        let updates = self.bundles.subscribe();
        let stream =
            futures_util::stream::unfold((updates, 0u64), |(mut updates, sent)| async move {
                loop {
                    let snapshot = updates.borrow_and_update().clone();
                    if snapshot.sequence > sent {
                        let sequence = snapshot.sequence;
                        return Some((Ok(to_proto(&snapshot)), (updates, sequence)));
                    }
                    // The set's owner went away: the controller is stopping.
                    updates.changed().await.ok()?;
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_trust::ca::{CertificateAuthority, Validity};

    fn domain(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn root(domain: &TrustDomain, validity: Validity) -> TrustBundleSet {
        let ca = CertificateAuthority::create_root_with(domain, validity).unwrap();
        let mut set = TrustBundleSet::new();
        set.insert(domain, ca.certificate()).unwrap();
        set
    }

    fn fresh(domain: &TrustDomain) -> TrustBundleSet {
        root(domain, Validity::starting_now(Duration::from_secs(3600)))
    }

    #[test]
    fn the_writer_keeps_linked_domains_and_drops_the_rest() {
        let (east, north, gone) = (domain("east"), domain("north"), domain("gone"));
        let (east_roots, north_roots) = (fresh(&east), fresh(&north));
        let bundles = BTreeMap::from([
            ("east".to_owned(), (east.clone(), east_roots.clone())),
            // Reported but its Link is gone: not written.
            ("gone".to_owned(), (gone.clone(), fresh(&gone))),
        ]);
        let current = BTreeMap::from([
            (pem_key(&east), "old east".to_owned()),
            (pem_key(&north), north_roots.to_pem(&north).unwrap()),
            (pem_key(&gone), "stale".to_owned()),
            ("notes.txt".to_owned(), "someone's".to_owned()),
        ]);
        let linked = BTreeSet::from([east.clone(), north.clone()]);
        let data = linked_data(&linked, &bundles, &current);
        assert_eq!(
            data,
            BTreeMap::from([
                (pem_key(&east), east_roots.to_pem(&east).unwrap()),
                // Linked, not reported yet: the ConfigMap's value stays.
                (pem_key(&north), north_roots.to_pem(&north).unwrap()),
            ])
        );
        assert!(linked_data(&BTreeSet::new(), &bundles, &current).is_empty());
    }

    #[test]
    fn two_links_of_one_domain_merge_their_roots() {
        let east = domain("east");
        let (a, b) = (fresh(&east), fresh(&east));
        let bundles = BTreeMap::from([
            ("east-1".to_owned(), (east.clone(), a.clone())),
            ("east-2".to_owned(), (east.clone(), b.clone())),
        ]);
        let data = linked_data(&BTreeSet::from([east.clone()]), &bundles, &BTreeMap::new());
        let (read, skipped) = read_linked(
            &data,
            &domain("west"),
            &BTreeSet::from([east.clone()]),
            &BTreeMap::new(),
            SystemTime::now(),
        );
        assert!(skipped.is_empty());
        let mut both = a;
        both.merge(&b);
        assert_eq!(read[&east], both);
    }

    #[test]
    fn the_reader_skips_bad_keys_and_keeps_the_last_good_roots() {
        let (west, east, north, south, evil) = (
            domain("west"),
            domain("east"),
            domain("north"),
            domain("south"),
            domain("evil"),
        );
        let now = SystemTime::now();
        let east_roots = fresh(&east);
        let last_good = BTreeMap::from([(east.clone(), east_roots.clone())]);
        let expired = root(
            &south,
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        );
        let north_roots = fresh(&north);
        let data = BTreeMap::from([
            (
                pem_key(&east),
                "-----BEGIN CERTIFICATE-----\ngarbage".to_owned(),
            ),
            (pem_key(&north), north_roots.to_pem(&north).unwrap()),
            (pem_key(&south), expired.to_pem(&south).unwrap()),
            (pem_key(&west), fresh(&west).to_pem(&west).unwrap()),
            (pem_key(&evil), fresh(&evil).to_pem(&evil).unwrap()),
            ("README".to_owned(), "hello".to_owned()),
            ("Not A Domain.pem".to_owned(), "x".to_owned()),
        ]);
        let named = BTreeSet::from([east.clone(), north.clone(), south.clone(), west.clone()]);
        let (linked, skipped) = read_linked(&data, &west, &named, &last_good, now);
        assert_eq!(
            linked,
            BTreeMap::from([
                (east.clone(), east_roots),
                (north.clone(), north_roots.clone())
            ]),
            "east keeps its last good roots, north is new, south, west and evil are refused"
        );
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        assert!(skipped.contains(&SkippedKey::OwnDomain(pem_key(&west))));
        assert!(skipped.contains(&SkippedKey::NotLinked(pem_key(&evil))));
        assert!(skipped.iter().any(|s| matches!(
            s,
            SkippedKey::BadRoots { key, problem: link::LinkProblem::TrustBundleExpired(_) } if key == &pem_key(&south)
        )));

        // A removed key drops the domain, whatever it had; so does a removed Link.
        let (after, _) = read_linked(&BTreeMap::new(), &west, &named, &linked, now);
        assert!(after.is_empty());
        let only_north = BTreeSet::from([north.clone()]);
        let (after, _) = read_linked(&data, &west, &only_north, &linked, now);
        assert_eq!(after, BTreeMap::from([(north, north_roots)]));
    }

    #[test]
    fn sequences_grow_only_when_the_set_changes_and_nothing_is_served_before_a_read() {
        let west = domain("west");
        let east = domain("east");
        let own = fresh(&west);
        let (snapshot, _) = watch::channel(BundleSnapshot {
            sequence: 0,
            set: own.clone(),
        });
        let inner = ReaderInner {
            own_domain: west.clone(),
            state: Mutex::new(ReaderState {
                own,
                ..ReaderState::default()
            }),
            snapshot,
            task: Mutex::new(None),
        };
        let east_roots = fresh(&east);
        let data = BTreeMap::from([(pem_key(&east), east_roots.to_pem(&east).unwrap())]);
        let linked = BTreeSet::from([east.clone()]);
        assert_eq!(inner.snapshot.borrow().sequence, 0);
        inner.read(None, &linked);
        assert_eq!(
            inner.snapshot.borrow().sequence,
            1,
            "read: served, own roots alone"
        );
        inner.read(Some(&data), &BTreeSet::new());
        assert_eq!(
            inner.snapshot.borrow().sequence,
            1,
            "no Link names east yet"
        );
        inner.read(None, &linked);
        assert_eq!(inner.snapshot.borrow().sequence, 2, "east's Link came");
        assert!(inner.snapshot.borrow().set.contains_domain(&east));
        inner.read(Some(&data), &linked);
        assert_eq!(inner.snapshot.borrow().sequence, 2, "unchanged");
        inner.read(None, &linked);
        assert_eq!(
            inner.snapshot.borrow().sequence,
            2,
            "a deleted ConfigMap changes nothing"
        );
        inner.read(Some(&BTreeMap::new()), &linked);
        assert_eq!(inner.snapshot.borrow().sequence, 3);
        assert!(!inner.snapshot.borrow().set.contains_domain(&east));
        let proto = to_proto(&inner.snapshot.borrow());
        assert_eq!(proto.sequence, 3);
        assert_eq!(proto.domains.len(), 1);
        assert_eq!(proto.domains[0].trust_domain, "west");
    }
}
