//! One linked cluster, watched through its Link's credentials, mirrored here.
//!
//! A [`LinkWorker`] runs while its Link is valid and its credentials unchanged (the link
//! reconciler replaces it when either changes, and drops it when the Link goes). It watches, in
//! the remote cluster, the Services its export selector picks, every EndpointSlice (for
//! readiness and per-pod names) and the ConfigMap that publishes the remote trust bundle, each
//! with the watch loop the local cache uses (kube-runtime's watcher: relist after 410, backoff
//! on errors). A failed request means refused credentials on 401 and 403, an unreachable
//! remote otherwise, for watches and the periodic check alike.
//!
//! After any change, remote or local, or when the remote gateway starts or stops counting as
//! alive (not at every probe: the probes' times and latencies do not concern mirrors), it
//! computes every mirror ([`mirror::desired`]) and writes those that differ from the local
//! cache, then deletes this cluster's mirrors that are no longer wanted. Nothing is computed
//! before both remote lists and the local cache have completed once, so a slow or unreachable remote API never
//! looks like "nothing is exported": while the remote cannot be reached the last lists stay in
//! force and the mirrors are kept, and [`RemoteState::reachable`] says why.
//!
//! Writes go through a bounded, deduplicating work queue: one entry per mirror, at most
//! [`CONCURRENCY`] writes at a time, and a mirror whose write failed is retried after a
//! doubling delay (up to [`MAX_RETRY_DELAY`]) while the others carry on. A failed mirror's
//! last problem is reported in every pass until a write succeeds (sorted, so the same problems
//! read the same), so the Link's `Mirrored` condition does not flap between retries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use mesh_trust::TrustBundleSet;
use mesh_trust::bundle::RootInfo;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cache::{self, Cache, WatchProgress};
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
    /// The one classification of a failed request: 401 and 403 are the credentials' fault,
    /// anything else (no answer, a 5xx, a broken stream) counts as unreachability.
    fn classify(status_code: Option<u16>, message: String) -> Self {
        match status_code {
            Some(401 | 403) => Self::Credentials(message),
            _ => Self::Unreachable(message),
        }
    }

    fn status_code(error: &kube::Error) -> Option<u16> {
        match error {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        }
    }

    /// Why a request failed.
    fn from_kube(error: &kube::Error) -> Self {
        Self::classify(Self::status_code(error), error.to_string())
    }

    /// Why a watch failed.
    fn from_watch(error: &watcher::Error) -> Self {
        let status_code = match error {
            watcher::Error::InitialListFailed(error)
            | watcher::Error::WatchStartFailed(error)
            | watcher::Error::WatchFailed(error) => Self::status_code(error),
            watcher::Error::WatchError(status) => Some(status.code),
            watcher::Error::NoResourceVersion => None,
        };
        Self::classify(status_code, error.to_string())
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
            last_alive: true,
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
            Ok(Err(error)) => Some(RemoteError::from_kube(&error)),
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

/// Starts one remote watch into a store; every change, completed list and failure wakes the
/// pass.
fn watch_remote<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    wake: &Arc<Notify>,
    reach: &Arc<Reach>,
) -> Store<K>
where
    K: cache::Cached,
{
    let kind: &'static str = match K::kind(&()).as_ref() {
        "Service" => "Service",
        "EndpointSlice" => "EndpointSlice",
        _ => "ConfigMap",
    };
    let (wake, reach) = (wake.clone(), reach.clone());
    cache::watch_into_store(tasks, api, config, move |progress| match progress {
        WatchProgress::Listing | WatchProgress::Listed | WatchProgress::Changed => {
            let listed = matches!(progress, WatchProgress::Listed);
            reach.update(|state| {
                state.answered = true;
                state.errors.remove(kind);
                if listed {
                    state.listed.insert(kind);
                }
            });
            if !matches!(progress, WatchProgress::Listing) {
                wake.notify_one();
            }
        }
        WatchProgress::Failed(error) => {
            let error = RemoteError::from_watch(error);
            tracing::debug!(kind, %error, "remote watch failed; retrying");
            reach.update(|state| {
                state.errors.insert(kind, error);
            });
            wake.notify_one();
        }
    })
}

/// The pass: remote lists in, mirrors out.
struct Pass {
    link: ValidLink,
    writer: MirrorWriter,
    cache: Cache,
    alive: watch::Receiver<GatewayHealth>,
    /// Whether the remote gateway was alive in the last pass: only a change of it concerns the
    /// mirrors (every probe changes the rest of [`GatewayHealth`]).
    last_alive: bool,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    bundles: Store<ConfigMap>,
    reach: Arc<Reach>,
    /// Mirrors whose last write failed.
    retries: HashMap<(String, String), Retry>,
}

/// A mirror whose last write failed.
#[derive(Debug)]
struct Retry {
    /// Failed attempts so far.
    attempts: u32,
    /// When to try again.
    at: Instant,
    /// Why the last attempt failed: reported in every pass until a write succeeds, not only in
    /// the passes that retry.
    problem: MirrorProblem,
}

/// Waits until the gateway's `alive` differs from `last`, ignoring every other change of its
/// health (each probe changes its time and latency; recomputing every mirror for that would
/// cost a pass per probe period). Fails when the probes' sender is gone.
async fn alive_flip(
    health: &mut watch::Receiver<GatewayHealth>,
    last: bool,
) -> Result<(), watch::error::RecvError> {
    loop {
        health.changed().await?;
        if health.borrow_and_update().alive != last {
            return Ok(());
        }
    }
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
            let retry_at = self.retries.values().map(|retry| retry.at).min();
            tokio::select! {
                () = wake.notified() => {}
                changed = local.changed() => if changed.is_err() { return },
                flipped = alive_flip(&mut self.alive, self.last_alive), if probing => {
                    probing = flipped.is_ok();
                }
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
            // Until the remote lists (a restart while the remote is down), the mirrors that
            // stand are the ones kept, and are counted as mirrored.
            if self.cache.ready() {
                state.mirrored = self.standing_mirrors();
            }
            return state;
        }
        // Which local objects exist, and whose they are, is read from the local cache: nothing
        // is written or removed before it is complete (a slice someone else made must be seen
        // before a mirror's slice of that name is written).
        if !self.cache.ready() {
            tracing::debug!(cluster = %self.link.cluster, "waiting for the local cache");
            return state;
        }
        state.synced = true;
        let alive = self.alive.borrow_and_update().alive;
        self.last_alive = alive;
        let slices_by_service = by_service(self.slices.state());
        let mut problems = Vec::new();
        // Each mirror is computed when its write is due and dropped once written, so a pass
        // holds CONCURRENCY mirrors at a time, not one per exported Service; only the keys of
        // every wanted mirror stay, to find the stale ones.
        let mut wanted_keys: BTreeSet<(String, String)> = BTreeSet::new();
        let mut waiting: Vec<(String, String)> = Vec::new();
        let now = Instant::now();
        let cluster = self.link.cluster.clone();
        let local_slices = by_service(self.cache.slices.state());
        let results: Vec<_> = futures_util::stream::iter(self.services.state())
            .filter_map(|service| {
                let remote = (service.namespace().unwrap_or_default(), service.name_any());
                let slices: Vec<&EndpointSlice> = slices_by_service
                    .get(&remote)
                    .into_iter()
                    .flatten()
                    .map(AsRef::as_ref)
                    .collect();
                let write = match mirror::desired(
                    &self.link,
                    &service,
                    &slices,
                    self.writer.settings(),
                    alive,
                ) {
                    Err(problem) => {
                        problems.push(problem);
                        None
                    }
                    Ok(mirror) => {
                        let key = mirror.key();
                        wanted_keys.insert(key.clone());
                        if self.retries.get(&key).is_some_and(|retry| retry.at > now) {
                            // Left for its retry.
                            waiting.push(key);
                            None
                        } else {
                            Some(self.write(mirror, key, &local_slices))
                        }
                    }
                };
                std::future::ready(write)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        tracing::debug!(
            cluster = %self.link.cluster,
            exported = wanted_keys.len(),
            problems = problems.len(),
            "mirror pass"
        );
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
                    let attempts = self.retries.get(&key).map_or(0, |retry| retry.attempts) + 1;
                    let delay = FIRST_RETRY_DELAY
                        .saturating_mul(1 << attempts.min(16))
                        .min(MAX_RETRY_DELAY);
                    tracing::warn!(cluster = %cluster, %problem, ?delay, "mirror not written; retrying");
                    self.retries.insert(
                        key,
                        Retry {
                            attempts,
                            at: Instant::now() + delay,
                            problem,
                        },
                    );
                }
            }
        }
        self.retries.retain(|key, _| wanted_keys.contains(key));
        // Every mirror whose last write failed is a problem in every pass, whether retried in
        // this one or waiting for its retry, so that the Link's condition does not flap.
        problems.extend(self.retries.values().map(|retry| retry.problem.clone()));
        // Mirrors waiting for their retry count as mirrored if they exist, as they stand.
        let standing = waiting
            .iter()
            .filter(|key| {
                self.cache
                    .services
                    .get(&ObjectRef::new(&key.1).within(&key.0))
                    .is_some_and(|s| mirror::is_mirror_of(&s, &cluster))
            })
            .count();
        mirrored = mirrored.saturating_add(u32::try_from(standing).unwrap_or(u32::MAX));

        // This cluster's mirrors nobody wants any more.
        let stale: Vec<(String, String)> = self
            .cache
            .services
            .state()
            .into_iter()
            .filter(|service| mirror::is_mirror_of(service, &cluster))
            .map(|service| (service.namespace().unwrap_or_default(), service.name_any()))
            .filter(|key| !wanted_keys.contains(key))
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
        // Sorted, so that the same problems read the same in every pass, whatever order the
        // writes finished in.
        let mut messages: Vec<String> = problems.iter().map(MirrorProblem::to_string).collect();
        messages.sort();
        messages.truncate(MAX_PROBLEMS);
        state.problems = messages;
        state
    }

    /// How many local Services are mirrors of this link's cluster.
    fn standing_mirrors(&self) -> u32 {
        let cluster = &self.link.cluster;
        let count = self
            .cache
            .services
            .state()
            .iter()
            .filter(|service| mirror::is_mirror_of(service, cluster))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// The write of one mirror, with the local objects it replaces: the mirror's slices, and
    /// whatever holds the names its slices want.
    fn write(
        &self,
        mirror: Mirror,
        key: (String, String),
        local_slices: &HashMap<(String, String), Vec<Arc<EndpointSlice>>>,
    ) -> impl Future<Output = ((String, String), Result<bool, MirrorProblem>)> + use<> {
        let existing = self
            .cache
            .services
            .get(&ObjectRef::new(&key.1).within(&key.0));
        let mut existing_slices = local_slices.get(&key).cloned().unwrap_or_default();
        for slice in &mirror.slices {
            let name = slice.name_any();
            if !existing_slices.iter().any(|s| s.name_any() == name)
                && let Some(found) = self.cache.slices.get(&ObjectRef::new(&name).within(&key.0))
            {
                existing_slices.push(found);
            }
        }
        let (writer, cluster) = (self.writer.clone(), self.link.cluster.clone());
        async move {
            let existing_slices: Vec<&EndpointSlice> =
                existing_slices.iter().map(AsRef::as_ref).collect();
            let result = writer
                .apply(&mirror, &cluster, existing.as_deref(), &existing_slices)
                .await;
            (key, result)
        }
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

/// EndpointSlices by the namespace and name of the Service they are labelled with.
fn by_service(
    slices: Vec<Arc<EndpointSlice>>,
) -> HashMap<(String, String), Vec<Arc<EndpointSlice>>> {
    let mut by_service: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for slice in slices {
        if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
            let key = (slice.namespace().unwrap_or_default(), service.clone());
            by_service.entry(key).or_default().push(slice);
        }
    }
    by_service
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn only_a_flip_of_alive_wakes_the_pass() {
        let (health, mut rx) = watch::channel(GatewayHealth::default());
        // Each probe changes the time and latency of the last probe: no wake.
        for millis in [10, 12, 11] {
            health.send_replace(GatewayHealth {
                alive: true,
                latency: Some(Duration::from_millis(millis)),
                last_probe: Some(SystemTime::now()),
                last_error: None,
            });
            assert!(alive_flip(&mut rx, true).now_or_never().is_none());
        }
        // A failed probe that leaves the gateway alive (below the threshold): no wake.
        health.send_replace(GatewayHealth {
            last_error: Some("timed out".into()),
            ..GatewayHealth::default()
        });
        assert!(alive_flip(&mut rx, true).now_or_never().is_none());
        // The gateway counts as down: a wake.
        health.send_replace(GatewayHealth {
            alive: false,
            last_error: Some("3 probes in a row failed".into()),
            ..GatewayHealth::default()
        });
        assert!(matches!(
            alive_flip(&mut rx, true).now_or_never(),
            Some(Ok(()))
        ));
        // Up and down again before the pass looked: nothing changed for the mirrors.
        let down = rx.borrow().clone();
        health.send_replace(GatewayHealth::default());
        health.send_replace(down);
        assert!(alive_flip(&mut rx, false).now_or_never().is_none());
        // Up: a wake.
        health.send_replace(GatewayHealth::default());
        assert!(matches!(
            alive_flip(&mut rx, false).now_or_never(),
            Some(Ok(()))
        ));
        // The probes stopped.
        drop(health);
        assert!(matches!(
            alive_flip(&mut rx, true).now_or_never(),
            Some(Err(_))
        ));
    }

    #[test]
    fn refusals_of_the_credentials_are_told_apart_the_same_way_for_watches_and_checks() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: format!("answered {code}"),
                ..kube::core::Status::default()
            }))
        };
        for code in [401, 403] {
            assert!(matches!(
                RemoteError::from_kube(&status(code)),
                RemoteError::Credentials(_)
            ));
            assert!(matches!(
                RemoteError::from_watch(&watcher::Error::InitialListFailed(status(code))),
                RemoteError::Credentials(_)
            ));
            assert!(matches!(
                RemoteError::from_watch(&watcher::Error::WatchFailed(status(code))),
                RemoteError::Credentials(_)
            ));
        }
        assert!(matches!(
            RemoteError::from_kube(&status(503)),
            RemoteError::Unreachable(_)
        ));
        assert!(matches!(
            RemoteError::from_watch(&watcher::Error::NoResourceVersion),
            RemoteError::Unreachable(_)
        ));
    }
}
