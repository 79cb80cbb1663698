//! The Link reconciler: a kube-runtime `Controller` over the Links of the mesh namespace.
//!
//! For each Link, level-triggered (a change of the Link or of its credentials Secret, a change of
//! its worker's state or of its gateway's health, which asks the Controller for a reconcile after
//! [`STATUS_DEBOUNCE`], and every [`RESYNC`] anyway; reconciles of one Link never overlap):
//! 1. A finalizer ([`FINALIZER`]) is added; on deletion the Link's worker and probes stop, every
//!    mirror of its cluster is deleted, and the finalizer is removed.
//! 2. The Link is validated ([`link::validate`]); a bad one gets its condition and nothing runs
//!    for it (its mirrors are kept until it is fixed or deleted).
//! 3. The credentials Secret is read and its kubeconfig parsed; a missing Secret, a missing key
//!    or a broken kubeconfig is a `CredentialsValid=False` condition.
//! 4. A [`LinkWorker`] runs for the Link with a client for the remote API; it is replaced when
//!    the Link's spec or the Secret's contents change (so new credentials take effect at once),
//!    and probing of the remote gateway runs beside it.
//! 5. The status is written from what the worker and the probes report: conditions,
//!    the gateway's health, the mirror count and the remote roots' expiry.
//!
//! At start, once the cache is complete, mirrors whose cluster no Link names any more are
//! deleted (orphans of a Link removed while no controller ran).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use mesh_api::crd::{
    CREDENTIALS_SECRET_KEY, Link, LinkGatewayStatus, LinkStatus, LinkTrustBundleStatus,
    TrustDomainStatus, TrustRootStatus,
};
use mesh_api::labels;
use mesh_trust::bundle::RootInfo;
use mesh_trust::{TrustBundleSet, TrustDomain};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};

use crate::cache::Cache;
use crate::link::{self, LinkProblem, ValidLink, condition};
use crate::mirror::MirrorWriter;
use crate::probe::{GatewayHealthSource, ProbeHandle};
use crate::remote::{LinkWorker, RemoteError, RemoteState};

/// The finalizer on every Link the controller has acted on.
pub const FINALIZER: &str = "multicluster.mesh.io/mirrors";
/// How often a Link is reconciled without any change.
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long a worker's or a probe's change waits for others before the status is written.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(50);

/// What the link reconciler needs to know about this cluster.
#[derive(Clone, Debug)]
pub struct LinksConfig {
    /// The namespace whose Links are served (the mesh namespace).
    pub namespace: String,
    /// This cluster's name.
    pub cluster: String,
    /// This cluster's trust domain.
    pub trust_domain: TrustDomain,
    /// Where the per-link gauges go.
    pub metrics: LinkMetrics,
}

/// Per linked cluster: whether its API answers, how many of its Services are mirrored, and
/// whether its Link is ready. Series of a deleted Link are removed.
#[derive(Clone, Debug, Default)]
pub struct LinkMetrics {
    remote_reachable: Family<ClusterLabel, Gauge>,
    mirrored: Family<ClusterLabel, Gauge>,
    ready: Family<ClusterLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    target_cluster: String,
}

impl LinkMetrics {
    /// Registers `link_remote_reachable`, `link_mirrored_services` and `link_ready`, each
    /// labelled `target_cluster`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "link_remote_reachable",
            "Whether the linked cluster's API answered the last watch or check (1) or not (0)",
            self.remote_reachable.clone(),
        );
        registry.register(
            "link_mirrored_services",
            "Services of the linked cluster mirrored here",
            self.mirrored.clone(),
        );
        registry.register(
            "link_ready",
            "Whether the Link's Ready condition is True (1) or not (0)",
            self.ready.clone(),
        );
    }

    fn set(&self, cluster: &str, reachable: Option<bool>, mirrored: u32, ready: bool) {
        let label = ClusterLabel {
            target_cluster: cluster.to_owned(),
        };
        if let Some(reachable) = reachable {
            self.remote_reachable
                .get_or_create(&label)
                .set(i64::from(reachable));
        }
        self.mirrored.get_or_create(&label).set(i64::from(mirrored));
        self.ready.get_or_create(&label).set(i64::from(ready));
    }

    fn remove(&self, cluster: &str) {
        let label = ClusterLabel {
            target_cluster: cluster.to_owned(),
        };
        self.remote_reachable.remove(&label);
        self.mirrored.remove(&label);
        self.ready.remove(&label);
    }
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API refused a read or a write.
    #[error("{0}")]
    Api(#[from] kube::Error),
    /// A mirror could not be deleted on cleanup.
    #[error("{0}")]
    Cleanup(String),
    /// The finalizer could not be handled.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// A Link's current bundle, per cluster, for the trust bridge.
pub type LinkedBundles =
    tokio::sync::watch::Receiver<BTreeMap<String, (TrustDomain, TrustBundleSet)>>;

/// The state shared by every reconcile.
struct Context {
    client: Client,
    cache: Cache,
    config: LinksConfig,
    writer: MirrorWriter,
    probes: Option<Arc<dyn GatewayHealthSource>>,
    running: Mutex<HashMap<String, Running>>,
    /// Failed reconciles in a row, per Link: the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Asks the Controller to reconcile a Link again (its worker's state or its gateway's health
    /// changed), so that reconciles of one Link never overlap.
    wake: mpsc::UnboundedSender<ObjectRef<Link>>,
    /// The Controller's Links, once it runs.
    links: std::sync::OnceLock<Store<Link>>,
    bundles: tokio::sync::watch::Sender<BTreeMap<String, (TrustDomain, TrustBundleSet)>>,
}

/// What runs for one Link.
struct Running {
    /// The digest of the Link spec and Secret data the worker was started with.
    digest: u64,
    cluster: String,
    worker: LinkWorker,
    probe: ProbeHandle,
    _forward: tokio::task::JoinHandle<()>,
    /// The last good remote bundle and its roots.
    bundle: (TrustBundleSet, Vec<RootInfo>),
    /// Whether that bundle came from the remote cluster (not from the Link).
    remote_bundle: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self._forward.abort();
    }
}

/// The link reconciler and the trust bundles of linked domains it keeps current.
pub struct Links {
    context: Arc<Context>,
    wake: mpsc::UnboundedReceiver<ObjectRef<Link>>,
    bundles: LinkedBundles,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("config", &self.context.config)
            .finish_non_exhaustive()
    }
}

impl Links {
    /// A reconciler writing through `client`, reading `cache`, mirroring through `writer`, and
    /// probing gateways through `probes` (none: every gateway counts as alive).
    pub fn new(
        client: Client,
        cache: Cache,
        config: LinksConfig,
        writer: MirrorWriter,
        probes: Option<Arc<dyn GatewayHealthSource>>,
    ) -> Self {
        let (bundles_tx, bundles) = tokio::sync::watch::channel(BTreeMap::new());
        let (wake_tx, wake) = mpsc::unbounded_channel();
        Self {
            context: Arc::new(Context {
                client,
                cache,
                config,
                writer,
                probes,
                running: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
                wake: wake_tx,
                links: std::sync::OnceLock::new(),
                bundles: bundles_tx,
            }),
            wake,
            bundles,
        }
    }

    /// The current bundle of every linked cluster (cluster -> domain and roots), as the Links
    /// and the remote ConfigMaps say, refused bundles excepted.
    pub fn bundles(&self) -> LinkedBundles {
        self.bundles.clone()
    }

    /// Runs until `shutdown` resolves; then stops every worker.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ) {
        let Self { context, wake, .. } = self;
        // Losing the lead (or shutting down) during start-up ends start-up too.
        let shutdown = shutdown.shared();
        let started = async {
            context.cache.wait_ready().await;
            collect_orphans(&context).await;
        };
        tokio::select! {
            () = shutdown.clone() => return,
            () = started => {}
        }

        let namespace = context.config.namespace.clone();
        let links: Api<Link> = Api::namespaced(context.client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
        let controller = Controller::new(links, watcher::Config::default());
        let store = controller.store();
        let _ = context.links.set(store.clone());
        let wake = tokio_stream::wrappers::UnboundedReceiverStream::new(wake);
        controller
            .watches(
                secrets,
                watcher::Config::default(),
                move |secret: Secret| {
                    let name = secret.name_any();
                    store
                        .state()
                        .into_iter()
                        .filter(|link| link.spec.credentials_secret == name)
                        .map(|link| ObjectRef::from_obj(&*link))
                        .collect::<Vec<_>>()
                },
            )
            .reconcile_on(wake)
            .graceful_shutdown_on(shutdown)
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "link reconcile");
                }
            })
            .await;
        context
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The first retry delay of a failed reconcile, doubled at each failure in a row of that Link.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// How long to wait after the `failures`-th failure in a row: doubling from [`FIRST_RETRY`],
/// capped at [`MAX_RETRY`].
fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

fn error_policy(link: Arc<Link>, error: &ReconcileError, context: Arc<Context>) -> Action {
    let name = link.name_any();
    let failures = {
        let mut failures = context
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(name.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = retry_delay(failures);
    tracing::warn!(link = %name, %error, failures, ?delay, "link reconcile failed; retrying");
    Action::requeue(delay)
}

async fn reconcile(link: Arc<Link>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = link.name_any();
    tracing::debug!(link = %name, "reconciling");
    let api: Api<Link> = Api::namespaced(context.client.clone(), &context.config.namespace);
    let result = finalizer::finalizer(&api, FINALIZER, link, |event| async {
        match event {
            Finalizer::Apply(link) => apply(&link, &context).await,
            Finalizer::Cleanup(link) => cleanup(&link, &context).await,
        }
    })
    .await
    .map_err(|error| match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        other => ReconcileError::Finalizer(other.to_string()),
    });
    if result.is_ok() {
        context
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
    }
    result
}

/// A Link's spec and Secret as the worker was started with them.
fn digest(link: &Link, secret: &[u8]) -> u64 {
    let mut bytes = serde_json::to_vec(&link.spec).unwrap_or_default();
    bytes.push(0);
    bytes.extend_from_slice(secret);
    crate::mirror::fnv1a64(&bytes)
}

/// The kubeconfig in the Link's credentials Secret, or why there is none.
async fn read_credentials(context: &Context, valid: &ValidLink) -> Result<Vec<u8>, String> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &valid.namespace);
    let secret = secrets
        .get_opt(&valid.credentials_secret)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", valid.credentials_secret))?
        .ok_or_else(|| {
            format!(
                "Secret {} does not exist in namespace {}: create it with the remote cluster's kubeconfig under the key {CREDENTIALS_SECRET_KEY:?}",
                valid.credentials_secret, valid.namespace
            )
        })?;
    let data = secret
        .data
        .as_ref()
        .and_then(|data| data.get(CREDENTIALS_SECRET_KEY))
        .map(|bytes| bytes.0.clone())
        .ok_or_else(|| {
            format!(
                "Secret {} has no {CREDENTIALS_SECRET_KEY:?} key",
                valid.credentials_secret
            )
        })?;
    Ok(data)
}

/// A client of the remote API from the Secret's kubeconfig `data`, or why it cannot be used.
async fn remote_client(valid: &ValidLink, data: &[u8]) -> Result<Client, String> {
    let text = std::str::from_utf8(data).map_err(|_| {
        format!(
            "Secret {}: the kubeconfig is not UTF-8",
            valid.credentials_secret
        )
    })?;
    // A parse error can quote the input: say where, never what.
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|_| {
        format!(
            "Secret {}: the kubeconfig is not valid YAML of a kubeconfig",
            valid.credentials_secret
        )
    })?;
    check_kubeconfig(&kubeconfig)
        .map_err(|reason| format!("Secret {}: {reason}", valid.credentials_secret))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| {
            format!(
                "Secret {}: the kubeconfig is unusable: {}",
                valid.credentials_secret,
                first_line(&e)
            )
        })?;
    Client::try_from(config).map_err(|e| {
        format!(
            "Secret {}: no client from the kubeconfig: {e}",
            valid.credentials_secret
        )
    })
}

/// The first line of an error about a usable kubeconfig (a bad server URL, a bad certificate),
/// at most 200 characters.
fn first_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// Refuses the parts of a kubeconfig a link must not use. A Link's credentials come from
/// whoever can write Secrets in the mesh namespace, and the controller holds the issuer's key:
/// an `exec` plugin or `auth-provider` would run code in it, a `tokenFile` or a certificate path
/// would read its files (its own service-account token, to a server of the writer's choosing),
/// and a proxy or `insecure-skip-tls-verify` would hand the connection to someone else. Only
/// inline credentials (a token, or a client certificate and key) and an inline CA are accepted.
pub fn check_kubeconfig(kubeconfig: &Kubeconfig) -> Result<(), String> {
    for named in &kubeconfig.auth_infos {
        let Some(auth) = &named.auth_info else {
            continue;
        };
        let refused = [
            ("exec", auth.exec.is_some()),
            ("auth-provider", auth.auth_provider.is_some()),
            ("tokenFile", auth.token_file.is_some()),
            (
                "client-certificate (a file)",
                auth.client_certificate.is_some(),
            ),
            ("client-key (a file)", auth.client_key.is_some()),
            (
                "username/password",
                auth.username.is_some() || auth.password.is_some(),
            ),
            (
                "impersonation",
                auth.impersonate.is_some()
                    || auth.impersonate_uid.is_some()
                    || auth.impersonate_groups.is_some(),
            ),
        ];
        if let Some((what, _)) = refused.iter().find(|(_, present)| *present) {
            return Err(format!(
                "user {:?} uses {what}, which a link may not: use an inline token or client-certificate-data",
                named.name
            ));
        }
    }
    for named in &kubeconfig.clusters {
        let Some(cluster) = &named.cluster else {
            continue;
        };
        let refused = [
            (
                "certificate-authority (a file)",
                cluster.certificate_authority.is_some(),
            ),
            ("proxy-url", cluster.proxy_url.is_some()),
            (
                "insecure-skip-tls-verify",
                cluster.insecure_skip_tls_verify == Some(true),
            ),
        ];
        if let Some((what, _)) = refused.iter().find(|(_, present)| *present) {
            return Err(format!(
                "cluster {:?} uses {what}, which a link may not: use certificate-authority-data and a direct server URL",
                named.name
            ));
        }
    }
    Ok(())
}

async fn apply(link: &Link, context: &Arc<Context>) -> Result<Action, ReconcileError> {
    let name = link.name_any();
    let mut conditions = Conditions::new(link);
    // The remote bundle the running worker accepted, if any: it outlives the Link's own.
    let current = context
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&name)
        .filter(|running| running.remote_bundle)
        .map(|running| running.bundle.0.clone());
    let valid = match link::validate_with(
        link,
        &context.config.cluster,
        &context.config.trust_domain,
        SystemTime::now(),
        current.as_ref(),
    ) {
        Ok(valid) => valid,
        Err(problem) => {
            stop(context, &name);
            conditions.problem(&problem);
            write_status(context, link, conditions.finish()).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    if let Some((older, theirs)) =
        older_conflicting_link(context, link, &valid.cluster, ambiguous_cluster_names)
    {
        stop(context, &name);
        conditions.set(
            condition::VALID,
            false,
            "AmbiguousClusterName",
            &format!(
                "Link {older} links cluster {theirs:?}, and mirrors of {theirs:?} and {:?} can share names (service \"a\" of \"b-c\" and service \"a-b\" of \"c\" are both mirrored as \"a-b-c\"): rename one of the clusters",
                valid.cluster
            ),
        );
        write_status(context, link, conditions.finish()).await?;
        return Ok(Action::requeue(RESYNC));
    }
    if let Some((older, _)) = older_conflicting_link(context, link, &valid.cluster, |a, b| a == b) {
        stop(context, &name);
        conditions.set(
            condition::VALID,
            false,
            "DuplicateCluster",
            &format!(
                "Link {older} already links cluster {}: delete one of the two",
                valid.cluster
            ),
        );
        write_status(context, link, conditions.finish()).await?;
        return Ok(Action::requeue(RESYNC));
    }
    conditions.set(condition::VALID, true, "Valid", "the link's spec is usable");

    // A Link that now names another cluster: the old cluster's mirrors and trust go.
    let previous = context
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&name)
        .map(|running| running.cluster.clone());
    if let Some(old) = previous.filter(|old| *old != valid.cluster) {
        stop(context, &name);
        let removed = delete_mirrors_of(context, &old).await?;
        tracing::info!(link = %name, %old, new = %valid.cluster, removed, "the link names another cluster; the old cluster's mirrors are removed");
    }

    // The Secret is read at every reconcile; a client is built only when it (or the spec)
    // changed, since a worker runs with it already otherwise.
    let fresh = match read_credentials(context, &valid).await {
        Ok(secret) => {
            let digest = digest(link, &secret);
            let current = context
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .is_some_and(|r| r.digest == digest);
            if current {
                Ok((digest, None))
            } else {
                remote_client(&valid, &secret)
                    .await
                    .map(|client| (digest, Some(client)))
            }
        }
        Err(reason) => Err(reason),
    };
    let (digest, client) = match fresh {
        Ok(fresh) => fresh,
        Err(reason) => {
            stop(context, &name);
            conditions.set(
                condition::CREDENTIALS_VALID,
                false,
                "InvalidCredentials",
                &reason,
            );
            write_status(context, link, conditions.finish()).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    let (state, health, bundle) = {
        let mut running = context
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = client {
            tracing::info!(link = %name, cluster = %valid.cluster, "starting the link's remote watches");
            running.remove(&name);
            running.insert(name.clone(), start(context, link, &valid, client, digest));
        }
        let Some(entry) = running.get_mut(&name) else {
            return Ok(Action::requeue(RESYNC));
        };
        let state = entry.worker.state().borrow().clone();
        // A valid bundle from the remote ConfigMap replaces the last good one; a bad one is
        // reported and the last good one kept.
        if let Some(Ok((set, roots))) = &state.bundle {
            entry.bundle = (set.clone(), roots.clone());
            entry.remote_bundle = true;
        }
        let health = entry.probe.health.borrow().clone();
        (state, health, entry.bundle.clone())
    };
    context.bundles.send_if_modified(|bundles| {
        let wanted = (valid.trust_domain.clone(), bundle.0.clone());
        if bundles.get(&valid.cluster) == Some(&wanted) {
            return false;
        }
        bundles.insert(valid.cluster.clone(), wanted);
        true
    });

    describe_remote(&mut conditions, &state, &health);
    let gateway = LinkGatewayStatus {
        alive: health.alive,
        latency_ms: health
            .latency
            .map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
        last_probe_time: health.last_probe.map(mesh_trust::x509::rfc3339),
    };
    let mut status = conditions.finish();
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::READY && c.status == "True");
    context.config.metrics.set(
        &valid.cluster,
        state.reachable.as_ref().map(Result::is_ok),
        state.mirrored,
        ready,
    );
    status.gateway = gateway;
    status.mirrored_services = state.mirrored;
    status.trust_bundle = LinkTrustBundleStatus {
        domains: vec![TrustDomainStatus {
            trust_domain: valid.trust_domain.to_string(),
            roots: bundle
                .1
                .iter()
                .map(|root| TrustRootStatus {
                    fingerprint_sha256: root.fingerprint_sha256.clone(),
                    not_after: mesh_trust::x509::rfc3339(root.not_after),
                })
                .collect(),
        }],
    };
    write_status(context, link, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// Sets the conditions the worker's state and the probes decide.
fn describe_remote(
    conditions: &mut Conditions,
    state: &RemoteState,
    health: &crate::probe::GatewayHealth,
) {
    // (credentials usable, reason, message) and (remote reachable, reason, message).
    let parsed = (true, "Parsed", "the kubeconfig is usable".to_owned());
    let (credentials, reachable) = match &state.reachable {
        Some(Err(error @ RemoteError::Credentials(_))) => (
            (false, "Refused", error.to_string()),
            (
                true,
                "Answered",
                "the remote API answered, refusing the credentials".to_owned(),
            ),
        ),
        Some(Err(error @ RemoteError::Unreachable(_))) => (
            parsed,
            (
                false,
                "Unreachable",
                format!("{error}; mirrors are kept as they were"),
            ),
        ),
        Some(Ok(())) => (
            (
                true,
                "Accepted",
                "the remote API accepted the credentials".to_owned(),
            ),
            (true, "Answered", "the remote API answered".to_owned()),
        ),
        None => (
            parsed,
            (
                false,
                "Connecting",
                "waiting for the remote API's first answer".to_owned(),
            ),
        ),
    };
    conditions.set(
        condition::CREDENTIALS_VALID,
        credentials.0,
        credentials.1,
        &credentials.2,
    );
    conditions.set(
        condition::REMOTE_REACHABLE,
        reachable.0,
        reachable.1,
        &reachable.2,
    );
    match &state.bundle {
        Some(Err(reason)) => conditions.set(
            condition::TRUST_BUNDLE_VALID,
            false,
            "InvalidRemoteTrustBundle",
            &format!("{reason}; the last good bundle is kept"),
        ),
        Some(Ok(_)) => conditions.set(
            condition::TRUST_BUNDLE_VALID,
            true,
            "Current",
            "the remote cluster's published bundle is in use",
        ),
        None => conditions.set(
            condition::TRUST_BUNDLE_VALID,
            true,
            "FromLink",
            "the link's bundle is in use (the remote cluster publishes none yet)",
        ),
    }
    if health.alive {
        conditions.set(
            condition::GATEWAY_ALIVE,
            true,
            "Alive",
            "the remote gateway answers probes",
        );
    } else {
        let reason = health.last_error.as_deref().unwrap_or("probes failed");
        conditions.set(
            condition::GATEWAY_ALIVE,
            false,
            "ProbesFailing",
            &format!("{reason}; this cluster's mirrors are marked not ready"),
        );
    }
    if !state.synced {
        conditions.set(
            condition::MIRRORED,
            false,
            "Syncing",
            "waiting for the remote Services and EndpointSlices to be listed",
        );
    } else if state.problem_count == 0 {
        conditions.set(
            condition::MIRRORED,
            true,
            "Mirrored",
            &format!("{} services mirrored", state.mirrored),
        );
    } else {
        conditions.set(
            condition::MIRRORED,
            false,
            "NotAllMirrored",
            &format!(
                "{} not mirrored: {}",
                state.problem_count,
                state.problems.join("; ")
            ),
        );
    }
}

/// Starts a Link's worker and probes, and forwards their changes to the reconciler.
fn start(
    context: &Arc<Context>,
    link: &Link,
    valid: &ValidLink,
    client: Client,
    digest: u64,
) -> Running {
    let probe = match &context.probes {
        Some(source) => source.probe(valid),
        None => ProbeHandle::always_alive(),
    };
    let changed = Arc::new(Notify::new());
    let worker = LinkWorker::spawn(
        valid.clone(),
        client,
        context.writer.clone(),
        context.cache.clone(),
        probe.health.clone(),
        changed.clone(),
    );
    let reference = ObjectRef::from_obj(link);
    let (wake, mut health) = (context.wake.clone(), probe.health.clone());
    let forward = tokio::spawn(async move {
        let mut probing = true;
        loop {
            tokio::select! {
                () = changed.notified() => {}
                result = health.changed(), if probing => probing = result.is_ok(),
            }
            // Bursts of changes become one reconcile.
            tokio::time::sleep(STATUS_DEBOUNCE).await;
            if wake.send(reference.clone()).is_err() {
                return;
            }
        }
    });
    Running {
        digest,
        cluster: valid.cluster.clone(),
        worker,
        probe,
        _forward: forward,
        bundle: (valid.bundle.clone(), valid.bundle.root_infos()),
        remote_bundle: false,
    }
}

/// Whether mirrors of clusters `a` and `b` could share a name: `<svc>-<a>` equals
/// `<svc'>-<b>` when one cluster name ends with `-` and the other.
pub fn ambiguous_cluster_names(a: &str, b: &str) -> bool {
    a != b && (a.ends_with(&format!("-{b}")) || b.ends_with(&format!("-{a}")))
}

/// The oldest Link created before `link` (by creation time, then name) whose cluster
/// `conflicts` with `cluster`, and that cluster: the older Link is served, the newer refused.
fn older_conflicting_link(
    context: &Context,
    link: &Link,
    cluster: &str,
    conflicts: impl Fn(&str, &str) -> bool,
) -> Option<(String, String)> {
    let store = context.links.get()?;
    let key = |l: &Link| {
        (
            l.metadata.creation_timestamp.clone().map(|t| t.0),
            l.name_any(),
        )
    };
    let mine = key(link);
    store
        .state()
        .into_iter()
        .filter(|other| other.metadata.deletion_timestamp.is_none())
        .filter(|other| conflicts(&other.spec.cluster_name, cluster))
        .filter(|other| key(other) < mine)
        .map(|other| (other.name_any(), other.spec.cluster_name.clone()))
        .min()
}

/// Stops whatever runs for the Link `name`, and stops trusting its domain: a Link that is not
/// valid links nothing (its mirrors are kept until it is fixed or deleted).
fn stop(context: &Context, name: &str) {
    let removed = context
        .running
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(name);
    if let Some(running) = removed {
        tracing::info!(link = %name, cluster = %running.cluster, "stopped the link's remote watches");
        forget(context, &running.cluster);
    }
}

/// Drops a cluster's trust bundle and gauges.
fn forget(context: &Context, cluster: &str) {
    context.config.metrics.remove(cluster);
    context
        .bundles
        .send_if_modified(|bundles| bundles.remove(cluster).is_some());
}

async fn cleanup(link: &Link, context: &Arc<Context>) -> Result<Action, ReconcileError> {
    let name = link.name_any();
    stop(context, &name);
    let cluster = link.spec.cluster_name.clone();
    forget(context, &cluster);
    let removed = delete_mirrors_of(context, &cluster).await?;
    tracing::info!(link = %name, %cluster, removed, "link deleted; its mirrors are removed");
    Ok(Action::await_change())
}

/// Deletes every mirror of `cluster` (listed from the API, not the cache, so none is missed).
async fn delete_mirrors_of(context: &Context, cluster: &str) -> Result<usize, ReconcileError> {
    let services: Api<Service> = Api::all(context.client.clone());
    let selector = format!(
        "{}={},{}={cluster}",
        labels::MIRRORED_SERVICE,
        labels::TRUE,
        labels::CLUSTER_NAME
    );
    let list = services
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    let mut removed = 0;
    for service in list {
        let namespace = service.namespace().unwrap_or_default();
        match context
            .writer
            .delete(&namespace, &service.name_any(), cluster)
            .await
        {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(problem) => return Err(ReconcileError::Cleanup(problem.to_string())),
        }
    }
    Ok(removed)
}

/// Deletes mirrors whose cluster no Link names.
async fn collect_orphans(context: &Context) {
    let clusters: Vec<String> = context
        .cache
        .links
        .state()
        .iter()
        .filter(|link| link.namespace().as_deref() == Some(context.config.namespace.as_str()))
        .map(|link| link.spec.cluster_name.clone())
        .collect();
    let orphaned: std::collections::BTreeSet<String> = context
        .cache
        .services
        .state()
        .iter()
        .filter(|s| {
            s.labels().get(labels::MIRRORED_SERVICE).map(String::as_str) == Some(labels::TRUE)
        })
        .filter_map(|s| s.labels().get(labels::CLUSTER_NAME).cloned())
        .filter(|cluster| !clusters.contains(cluster))
        .collect();
    for cluster in orphaned {
        match delete_mirrors_of(context, &cluster).await {
            Ok(removed) => {
                tracing::info!(%cluster, removed, "removed the mirrors of a cluster no Link names")
            }
            Err(error) => tracing::warn!(%cluster, %error, "orphaned mirrors not removed"),
        }
    }
}

/// Conditions being built for one status write; transition times are kept for unchanged ones.
struct Conditions {
    previous: Vec<Condition>,
    generation: Option<i64>,
    next: Vec<Condition>,
}

impl Conditions {
    fn new(link: &Link) -> Self {
        Self {
            previous: link
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            generation: link.metadata.generation,
            next: Vec::new(),
        }
    }

    fn set(&mut self, type_: &str, ok: bool, reason: &str, message: &str) {
        let status = if ok { "True" } else { "False" };
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        self.next.retain(|c| c.type_ != type_);
        self.next.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: since,
            observed_generation: self.generation,
        });
    }

    fn problem(&mut self, problem: &LinkProblem) {
        let (type_, reason) = problem.condition();
        if type_ != condition::VALID {
            self.set(condition::VALID, true, "Valid", "the link's spec is usable");
        }
        self.set(type_, false, reason, &problem.to_string());
    }

    /// The status with a `Ready` condition summing the others up.
    fn finish(mut self) -> LinkStatus {
        let failing: Vec<String> = self
            .next
            .iter()
            .filter(|c| c.status != "True")
            .map(|c| format!("{}: {}", c.type_, c.message))
            .collect();
        if failing.is_empty() {
            self.set(condition::READY, true, "Ready", "the link is working");
        } else {
            self.set(condition::READY, false, "NotReady", &failing.join("; "));
        }
        LinkStatus {
            conditions: self.next,
            observed_generation: self.generation,
            ..LinkStatus::default()
        }
    }
}

/// Writes `status` if it differs from the Link's, with server-side apply: fields the controller
/// wrote before and no longer sets (a probe latency that is gone) are removed, which a merge
/// patch would leave in place.
async fn write_status(
    context: &Context,
    link: &Link,
    status: LinkStatus,
) -> Result<(), ReconcileError> {
    if link.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Link> = Api::namespaced(context.client.clone(), &context.config.namespace);
    let patch = serde_json::json!({
        "apiVersion": "multicluster.mesh.io/v1alpha1",
        "kind": "Link",
        "status": status,
    });
    api.patch_status(
        &link.name_any(),
        &PatchParams::apply(crate::mirror::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_that_could_make_the_same_mirror_name_are_ambiguous() {
        assert!(ambiguous_cluster_names("c", "b-c"));
        assert!(ambiguous_cluster_names("b-c", "c"));
        assert!(!ambiguous_cluster_names("east", "west"));
        assert!(!ambiguous_cluster_names("east", "east"));
        assert!(!ambiguous_cluster_names("c", "bc"));
    }

    #[test]
    fn failed_reconciles_back_off() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(20), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn kubeconfigs_that_run_code_read_files_or_skip_tls_are_refused() {
        let base = |user: &str, cluster: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster:\n    server: https://10.0.0.1:6443\n{cluster}contexts:\n- name: east\n  context: {{cluster: east, user: east}}\ncurrent-context: east\nusers:\n- name: east\n  user:\n{user}"
            )
        };
        let ok = base("    token: abc\n", "    certificate-authority-data: AAAA\n");
        assert_eq!(
            check_kubeconfig(&Kubeconfig::from_yaml(&ok).unwrap()),
            Ok(())
        );
        for (user, cluster, named) in [
            (
                "    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}\n",
                "",
                "exec",
            ),
            (
                "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
                "",
                "tokenFile",
            ),
            (
                "    client-certificate: /etc/passwd\n    client-key: /etc/passwd\n",
                "",
                "client-certificate",
            ),
            ("    token: abc\n    as: admin\n", "", "impersonation"),
            (
                "    token: abc\n",
                "    insecure-skip-tls-verify: true\n",
                "insecure-skip-tls-verify",
            ),
            (
                "    token: abc\n",
                "    proxy-url: http://10.9.9.9:3128\n",
                "proxy-url",
            ),
            (
                "    token: abc\n",
                "    certificate-authority: /etc/ssl/ca.pem\n",
                "certificate-authority",
            ),
        ] {
            let kubeconfig = Kubeconfig::from_yaml(&base(user, cluster)).unwrap();
            let refused = check_kubeconfig(&kubeconfig).unwrap_err();
            assert!(refused.contains(named), "{named}: {refused}");
        }
    }

    #[test]
    fn ready_sums_up_and_transition_times_are_kept() {
        let mut link = Link::new(
            "east",
            serde_json::from_value(serde_json::json!({
                "clusterName": "east", "trustDomain": "east.local",
                "gateway": {"addresses": ["10.0.0.1"], "identity": "spiffe://east.local/ns/mesh/sa/mesh-gateway"},
                "credentialsSecret": "east", "trustBundle": ""
            }))
            .unwrap(),
        );
        let mut conditions = Conditions::new(&link);
        conditions.set(condition::VALID, true, "Valid", "ok");
        conditions.set(condition::GATEWAY_ALIVE, false, "ProbesFailing", "down");
        let status = conditions.finish();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .unwrap();
        assert_eq!(ready.status, "False");
        assert!(
            ready.message.contains("GatewayAlive: down"),
            "{}",
            ready.message
        );

        let old = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut previous = status.clone();
        for c in &mut previous.conditions {
            c.last_transition_time = old.clone();
        }
        link.status = Some(previous);
        let mut conditions = Conditions::new(&link);
        conditions.set(condition::VALID, true, "Valid", "ok");
        conditions.set(condition::GATEWAY_ALIVE, true, "Alive", "up");
        let status = conditions.finish();
        let valid = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::VALID)
            .unwrap();
        assert_eq!(
            valid.last_transition_time, old,
            "unchanged: the old transition time"
        );
        let alive = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::GATEWAY_ALIVE)
            .unwrap();
        assert_ne!(
            alive.last_transition_time, old,
            "changed: a new transition time"
        );
    }
}
