//! One linked cluster, watched through its Link's credentials, mirrored here.
//!
//! A [`LinkWorker`] runs while its Link is valid and its credentials unchanged (the link
//! reconciler replaces it when either changes, and drops it when the Link goes). It watches, in
//! the remote cluster, the Services its export selector picks, every EndpointSlice (for
//! readiness and per-pod names) and the ConfigMap that publishes the remote trust bundle, each
//! with kube-runtime's watcher (relist after 410, backoff on errors).
//!
//! After any change, remote or local, or a change of the remote gateway's probe state, it
//! computes every mirror ([`mirror::desired`]) and writes those that differ from the local
//! cache, then deletes this cluster's mirrors that are no longer wanted. Nothing is computed
//! before both remote lists have completed once, so a slow or unreachable remote API never
//! looks like "nothing is exported": while the remote cannot be reached the last lists stay in
//! force and the mirrors are kept, and [`RemoteState::reachable`] says why.
//!
//! Writes go through a bounded, deduplicating work queue: one entry per mirror, at most
//! [`CONCURRENCY`] writes at a time, and a mirror whose write failed is retried after a
//! doubling delay (up to [`MAX_RETRY_DELAY`]) while the others carry on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use mesh_trust::TrustBundleSet;
use mesh_trust::bundle::RootInfo;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::link::{self, ValidLink};
use crate::mirror::{self, Mirror, MirrorProblem, MirrorWriter, SERVICE_NAME_LABEL};
use crate::probe::GatewayHealth;

/// Mirror writes in flight at once, per link.
pub const CONCURRENCY: usize = 16;
/// The first retry delay of a failed write.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How often the remote API is asked whether it is there.
pub const CHECK_PERIOD: Duration = Duration::from_secs(2);
/// How long the remote API has to answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How many problems a state keeps (the rest are counted).
const MAX_PROBLEMS: usize = 10;
/// The key of the PEM roots in a trust bundle ConfigMap.
pub const BUNDLE_KEY: &str = mesh_api::crd::TRUST_BUNDLE_CONFIG_MAP_KEY;

/// What the worker knows of its remote cluster, published after every pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemoteState {
    /// `None` until the remote API answered or failed; then whether it is reachable, and why
    /// not.
    pub reachable: Option<Result<(), RemoteError>>,
    /// Whether both remote lists (Services and EndpointSlices) have completed once: until then
    /// nothing is mirrored or removed.
    pub synced: bool,
    /// Mirrors that exist and are current.
    pub mirrored: u32,
    /// Remote Services that are exported but not mirrored, and why (the first few).
    pub problems: Vec<String>,
    /// How many problems there are in all.
    pub problem_count: usize,
    /// The remote bundle from its ConfigMap: `None` while none was read (the Link's own bundle
    /// stands), else the parsed roots or why they were refused.
    pub bundle: Option<Result<(TrustBundleSet, Vec<RootInfo>), String>>,
}

/// Why the remote API could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The remote API refused the credentials (401 or 403).
    #[error("the remote API refused the link's credentials: {0}")]
    Credentials(String),
    /// The remote API did not answer, or failed.
    #[error("the remote API is unreachable: {0}")]
    Unreachable(String),
}

impl RemoteError {
    fn from_watch(error: &watcher::Error) -> Self {
        let api_code = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
            watcher::Error::WatchError(status) => Some(status.code),
            _ => None,
        };
        match api_code {
            Some(401 | 403) => Self::Credentials(error.to_string()),
            _ => Self::Unreachable(error.to_string()),
        }
    }
}

/// A running worker; dropping it stops every task it started.
#[derive(Debug)]
pub struct LinkWorker {
    state: watch::Receiver<RemoteState>,
    _tasks: JoinSet<()>,
}

impl LinkWorker {
    /// The worker's published state.
    pub fn state(&self) -> watch::Receiver<RemoteState> {
        self.state.clone()
    }

    /// Starts watching `remote` for `link` and mirroring through `writer`; `alive` is the remote
    /// gateway's health from probes, `cache` the local cluster. `changed` is notified whenever the state
    /// changes, so the Link's status can follow.
    pub fn spawn(
        link: ValidLink,
        remote: Client,
        writer: MirrorWriter,
        cache: Cache,
        alive: watch::Receiver<GatewayHealth>,
        changed: Arc<Notify>,
    ) -> Self {
        let (state_tx, state) = watch::channel(RemoteState::default());
        let wake = Arc::new(Notify::new());
        let reach = Arc::new(Reach::default());
        let mut tasks = JoinSet::new();

        let selector = link.export_selector.to_string();
        let services = watch_remote::<Service>(
            &mut tasks,
            Api::all(remote.clone()),
            watcher::Config::default().labels(&selector),
            &wake,
            &reach,
        );
        let slices = watch_remote::<EndpointSlice>(
            &mut tasks,
            Api::all(remote.clone()),
            watcher::Config::default(),
            &wake,
            &reach,
        );
        let bundle_fields = format!("metadata.name={}", link.bundle_config_map);
        let remote_check = remote.clone();
        // The remote controller publishes its bundle in its mesh namespace, named as ours.
        let bundles = watch_remote::<ConfigMap>(
            &mut tasks,
            Api::namespaced(remote, &link.namespace),
            watcher::Config::default().fields(&bundle_fields),
            &wake,
            &reach,
        );
        tasks.spawn(check_remote(remote_check, wake.clone(), reach.clone()));
        let pass = Pass {
            link,
            writer,
            cache,
            alive,
            services,
            slices,
            bundles,
            reach,
            retries: HashMap::new(),
        };
        tasks.spawn(pass.run(wake, state_tx, changed));
        Self {
            state,
            _tasks: tasks,
        }
    }
}

/// Whether each remote watch has listed once, and the last error of any.
#[derive(Debug, Default)]
struct Reach {
    inner: std::sync::Mutex<ReachState>,
}

#[derive(Debug, Default)]
struct ReachState {
    listed: BTreeSet<&'static str>,
    /// The last error of each source (a watch, or the periodic check) that has not answered
    /// since.
    errors: BTreeMap<&'static str, RemoteError>,
    answered: bool,
}

impl Reach {
    fn update(&self, change: impl FnOnce(&mut ReachState)) {
        let mut state = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut state);
    }

    fn snapshot(&self) -> (BTreeSet<&'static str>, Option<Result<(), RemoteError>>) {
        let state = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reachable = match (state.errors.values().next(), state.answered) {
            (Some(error), _) => Some(Err(error.clone())),
            (None, true) => Some(Ok(())),
            (None, false) => None,
        };
        (state.listed.clone(), reachable)
    }
}

/// Asks the remote API for its version every [`CHECK_PERIOD`]: a watch can sit on a
/// connection that no longer leads anywhere (a partition sends no reset), and this notices.
async fn check_remote(remote: Client, wake: Arc<Notify>, reach: Arc<Reach>) {
    const SOURCE: &str = "API";
    loop {
        tokio::time::sleep(CHECK_PERIOD).await;
        let answer = tokio::time::timeout(CHECK_TIMEOUT, remote.apiserver_version()).await;
        let error = match answer {
            Ok(Ok(_)) => None,
            Ok(Err(kube::Error::Api(status))) if matches!(status.code, 401 | 403) => {
                Some(RemoteError::Credentials(status.message))
            }
            Ok(Err(error)) => Some(RemoteError::Unreachable(error.to_string())),
            Err(_) => Some(RemoteError::Unreachable(format!(
                "no answer to a version request within {CHECK_TIMEOUT:?}"
            ))),
        };
        let mut changed = false;
        reach.update(|state| {
            changed = state.errors.get(SOURCE) != error.as_ref();
            match error {
                Some(error) => {
                    state.errors.insert(SOURCE, error);
                }
                None => {
                    state.answered = true;
                    state.errors.remove(SOURCE);
                }
            }
        });
        if changed {
            wake.notify_one();
        }
    }
}

/// Starts one remote watch into a store; every event wakes the pass.
fn watch_remote<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    wake: &Arc<Notify>,
    reach: &Arc<Reach>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let kind: &'static str = match K::kind(&()).as_ref() {
        "Service" => "Service",
        "EndpointSlice" => "EndpointSlice",
        _ => "ConfigMap",
    };
    let (wake, reach) = (wake.clone(), reach.clone());
    tasks.spawn(async move {
        let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
        futures_util::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let listed = matches!(event, watcher::Event::InitDone);
                    reach.update(|state| {
                        state.answered = true;
                        state.errors.remove(kind);
                        if listed {
                            state.listed.insert(kind);
                        }
                    });
                    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        wake.notify_one();
                    }
                }
                Err(error) => {
                    let error = RemoteError::from_watch(&error);
                    tracing::debug!(kind, %error, "remote watch failed; retrying");
                    reach.update(|state| {
                        state.errors.insert(kind, error);
                    });
                    wake.notify_one();
                }
            }
        }
    });
    reader
}

/// The pass: remote lists in, mirrors out.
struct Pass {
    link: ValidLink,
    writer: MirrorWriter,
    cache: Cache,
    alive: watch::Receiver<GatewayHealth>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    bundles: Store<ConfigMap>,
    reach: Arc<Reach>,
    /// Mirrors whose last write failed: attempts so far and when to try again.
    retries: HashMap<(String, String), (u32, Instant)>,
}

impl Pass {
    async fn run(
        mut self,
        wake: Arc<Notify>,
        state: watch::Sender<RemoteState>,
        changed: Arc<Notify>,
    ) {
        let mut local = self.cache.changes();
        // A probe source that stopped (or never probed) leaves its last word in force.
        let mut probing = true;
        loop {
            let published = self.once().await;
            if state.send_if_modified(|current| {
                let differs = *current != published;
                *current = published;
                differs
            }) {
                changed.notify_one();
            }
            let retry_at = self.retries.values().map(|(_, at)| *at).min();
            tokio::select! {
                () = wake.notified() => {}
                changed = local.changed() => if changed.is_err() { return },
                changed = self.alive.changed(), if probing => probing = changed.is_ok(),
                () = sleep_until(retry_at) => {}
            }
        }
    }

    /// One pass; the state it leaves.
    async fn once(&mut self) -> RemoteState {
        let (listed, reachable) = self.reach.snapshot();
        let mut state = RemoteState {
            reachable,
            bundle: self.bundle(),
            ..RemoteState::default()
        };
        if !(listed.contains("Service") && listed.contains("EndpointSlice")) {
            tracing::debug!(cluster = %self.link.cluster, ?listed, "waiting for the remote lists");
            return state;
        }
        state.synced = true;
        let alive = self.alive.borrow_and_update().alive;
        let mut slices_by_service: HashMap<(String, String), Vec<Arc<EndpointSlice>>> =
            HashMap::new();
        for slice in self.slices.state() {
            if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
                let key = (slice.namespace().unwrap_or_default(), service.clone());
                slices_by_service.entry(key).or_default().push(slice);
            }
        }
        let mut wanted: BTreeMap<(String, String), Mirror> = BTreeMap::new();
        let mut problems = Vec::new();
        for service in self.services.state() {
            let key = (service.namespace().unwrap_or_default(), service.name_any());
            let slices = slices_by_service.get(&key).cloned().unwrap_or_default();
            let slices: Vec<&EndpointSlice> = slices.iter().map(AsRef::as_ref).collect();
            match mirror::desired(&self.link, &service, &slices, self.writer.settings(), alive) {
                Ok(mirror) => {
                    wanted.insert(mirror.key(), mirror);
                }
                Err(problem) => problems.push(problem),
            }
        }

        tracing::debug!(
            cluster = %self.link.cluster,
            exported = wanted.len(),
            problems = problems.len(),
            "mirror pass"
        );
        // Writes, CONCURRENCY at a time; a mirror waiting for its retry is left for later.
        let now = Instant::now();
        let cluster = self.link.cluster.clone();
        let due: Vec<Mirror> = wanted
            .iter()
            .filter(|(key, _)| self.retries.get(*key).is_none_or(|(_, at)| *at <= now))
            .map(|(_, mirror)| mirror.clone())
            .collect();
        let results: Vec<_> = futures_util::stream::iter(due)
            .map(|mirror| {
                let key = mirror.key();
                let existing = self
                    .cache
                    .services
                    .get(&ObjectRef::new(&key.1).within(&key.0));
                let existing_slice = self
                    .cache
                    .slices
                    .get(&ObjectRef::new(&key.1).within(&key.0));
                let (writer, cluster) = (self.writer.clone(), cluster.clone());
                async move {
                    let result = writer
                        .apply(
                            &mirror,
                            &cluster,
                            existing.as_deref(),
                            existing_slice.as_deref(),
                        )
                        .await;
                    (key, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut mirrored = 0u32;
        for (key, result) in results {
            match result {
                Ok(written) => {
                    if written {
                        tracing::debug!(%cluster, namespace = %key.0, name = %key.1, "mirror written");
                    }
                    self.retries.remove(&key);
                    mirrored += 1;
                }
                Err(problem) => {
                    let attempts = self.retries.get(&key).map_or(0, |(n, _)| *n) + 1;
                    let delay = FIRST_RETRY_DELAY
                        .saturating_mul(1 << attempts.min(16))
                        .min(MAX_RETRY_DELAY);
                    tracing::warn!(cluster = %cluster, %problem, ?delay, "mirror not written; retrying");
                    self.retries.insert(key, (attempts, Instant::now() + delay));
                    problems.push(problem);
                }
            }
        }
        // Mirrors still waiting for a retry count as they stand.
        mirrored += u32::try_from(
            wanted
                .keys()
                .filter(|key| self.retries.get(*key).is_some_and(|(_, at)| *at > now))
                .filter(|key| {
                    self.cache
                        .services
                        .get(&ObjectRef::new(&key.1).within(&key.0))
                        .is_some_and(|s| mirror::is_mirror_of(&s, &cluster))
                })
                .count(),
        )
        .unwrap_or(u32::MAX);
        self.retries.retain(|key, _| wanted.contains_key(key));

        // This cluster's mirrors nobody wants any more.
        let stale: Vec<(String, String)> = self
            .cache
            .services
            .state()
            .into_iter()
            .filter(|service| mirror::is_mirror_of(service, &cluster))
            .map(|service| (service.namespace().unwrap_or_default(), service.name_any()))
            .filter(|key| !wanted.contains_key(key))
            .collect();
        for (namespace, name) in stale {
            match self.writer.delete(&namespace, &name, &cluster).await {
                Ok(true) => tracing::info!(%cluster, %namespace, %name, "mirror removed"),
                Ok(false) => {}
                Err(problem) => problems.push(problem),
            }
        }

        state.mirrored = mirrored;
        state.problem_count = problems.len();
        state.problems = problems
            .iter()
            .take(MAX_PROBLEMS)
            .map(MirrorProblem::to_string)
            .collect();
        state
    }

    /// The remote bundle from its ConfigMap, if one was read.
    fn bundle(&self) -> Option<Result<(TrustBundleSet, Vec<RootInfo>), String>> {
        let config_map = self.bundles.state().into_iter().next()?;
        let pem = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(BUNDLE_KEY));
        Some(match pem {
            None => Err(format!(
                "the remote ConfigMap {} has no {BUNDLE_KEY:?} key",
                self.link.bundle_config_map
            )),
            Some(pem) => link::parse_bundle(&self.link.trust_domain, pem, SystemTime::now())
                .map_err(|problem| {
                    format!(
                        "the remote ConfigMap {}: {problem}",
                        self.link.bundle_config_map
                    )
                }),
        })
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
