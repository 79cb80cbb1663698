//! The trust bundle set the proxy verifies peers with, from two sources kept live:
//! - `--trust-bundle`: a file or directory, re-read when it changes;
//! - the controller's `TrustBundles.Watch` stream (with `--discovery-addr`), which pushes the
//!   merged set of this cluster and every linked one.
//!
//! The set in force is the union of the two: the file holds the anchors an operator pinned (and
//! what verifies the controller itself before its stream is up), the stream adds and retires the
//! linked domains. A source that breaks (a half-written file, a controller that went away, an
//! update with a bad root) keeps its last good set, so a control-plane outage never takes trust
//! away from the data plane.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_api::discovery::WatchTrustBundles;
use mesh_api::discovery::trust_bundles_client::TrustBundlesClient;
use mesh_trust::bundle::BundleError;
use mesh_trust::{SharedTrustBundles, TrustBundleSet, TrustDomain};
use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;

use super::Health;
use crate::discovery::ReconnectBackoff;
use crate::discovery::backoff::Backoff;

/// How long a stream must have lived for its end to reset the reconnect backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);

/// Why `--trust-bundle` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Bundle { path: PathBuf, source: BundleError },
    #[error("{}: {source}", path.display())]
    Domain { path: PathBuf, source: BundleError },
    #[error(
        "{} holds no roots; give a directory of <domain>.pem or <domain>.json files, a PEM file of \
         roots that name their trust domain, or a bundle-set JSON map",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// Reads a trust bundle set from `path`: a directory of `<domain>.pem` and `<domain>.json`
/// (SPIFFE bundle) files, a PEM file of roots that name their own domain, or a bundle-set JSON
/// map, as `mesh trust bundle` writes each of them.
pub fn load(path: &Path) -> Result<TrustBundleSet, BundleFileError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| BundleFileError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let bundle = |p: &Path| {
        let path = p.to_owned();
        move |source| BundleFileError::Bundle { path, source }
    };
    let metadata = std::fs::metadata(path).map_err(|source| BundleFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut set = TrustBundleSet::new();
    if metadata.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| BundleFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Kubernetes volumes hold `..data` and timestamped directories beside the files.
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        files.sort();
        for file in files {
            let (Some(stem), Some(ext)) = (
                file.file_stem().and_then(|s| s.to_str()),
                file.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if ext != "pem" && ext != "json" {
                continue;
            }
            let domain = TrustDomain::new(stem).map_err(|source| BundleFileError::Domain {
                path: file.clone(),
                source: BundleError::BadDomain {
                    name: stem.to_owned(),
                    source,
                },
            })?;
            let body = read(&file)?;
            if ext == "pem" {
                set.insert_pem(&domain, &body).map_err(bundle(&file))?;
            } else {
                set.insert_spiffe_json(&domain, &body)
                    .map_err(bundle(&file))?;
            }
        }
    } else {
        let body = read(path)?;
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            set = TrustBundleSet::from_spiffe_json_map(&body).map_err(bundle(path))?;
        } else {
            set.insert_self_describing_pem(&body)
                .map_err(bundle(path))?;
        }
    }
    if set.is_empty() {
        return Err(BundleFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(set)
}

/// The bundle set in force and the sources it is made of.
#[derive(Debug)]
pub(super) struct TrustState {
    shared: SharedTrustBundles,
    sources: Mutex<Sources>,
    health: Arc<Health>,
}

#[derive(Debug, Default)]
struct Sources {
    file: Option<TrustBundleSet>,
    stream: Option<TrustBundleSet>,
}

// === impl TrustState ===

impl TrustState {
    pub(super) fn new(file: Option<TrustBundleSet>, health: Arc<Health>) -> Self {
        let state = Self {
            shared: SharedTrustBundles::new(TrustBundleSet::new()),
            sources: Mutex::new(Sources::default()),
            health,
        };
        if let Some(file) = file {
            state.set(|s| s.file = Some(file));
        }
        state
    }

    /// What the verifiers read; updated in place.
    pub(super) fn shared(&self) -> SharedTrustBundles {
        self.shared.clone()
    }

    /// The set read from the bundle file, replacing the file's part of the merged set.
    pub(super) fn set_file(&self, set: TrustBundleSet) {
        self.set(|s| {
            if s.file.as_ref() != Some(&set) {
                s.file = Some(set);
            }
        });
    }

    fn set(&self, change: impl FnOnce(&mut Sources)) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut sources);
        let mut merged = TrustBundleSet::new();
        for set in [&sources.file, &sources.stream].into_iter().flatten() {
            merged.merge(set);
        }
        let current = self.shared.get();
        if merged != current {
            let diff = current.diff(&merged);
            let domains: Vec<&str> = merged.domains().map(TrustDomain::as_str).collect();
            let changes = diff.to_string().trim_end().replace('\n', "; ");
            tracing::info!(?domains, %changes, "trust bundles updated");
            self.shared.update(merged.clone());
        }
        let usable = !merged.is_empty();
        self.health.update(|c| c.bundles = usable);
    }
}

/// Re-reads `path` every `interval` and hands every valid set read to `apply` (which compares
/// it with what it holds); a file that does not load is logged once and the last good set kept.
///
/// `mesh-proxy` and `mesh-gateway` both run this for `--trust-bundle`.
pub async fn reload_file(
    path: PathBuf,
    apply: impl FnMut(TrustBundleSet) + Send,
    interval: Duration,
) {
    reload("trust bundle", path, load, apply, interval).await;
}

/// Re-reads `path` with `load` (on a blocking thread) every `interval` and hands every value
/// read to `apply`, which compares it with what it holds. A file that does not load is logged
/// once per distinct problem, and the last good value stays in force. `what` names the file in
/// logs.
pub async fn reload<T, E>(
    what: &'static str,
    path: PathBuf,
    load: fn(&Path) -> Result<T, E>,
    mut apply: impl FnMut(T) + Send,
    interval: Duration,
) where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut problem: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        let read_path = path.clone();
        let loaded = match tokio::task::spawn_blocking(move || load(&read_path)).await {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::error!(file = what, %error, "reading the file failed");
                continue;
            }
        };
        match loaded {
            Ok(value) => {
                problem = None;
                apply(value);
            }
            Err(error) => {
                let text = error.to_string();
                if problem.as_deref() != Some(&text) {
                    tracing::warn!(file = what, error = %text, "keeping the last good file");
                    problem = Some(text);
                }
            }
        }
    }
}

/// Follows the controller's `TrustBundles.Watch` stream forever, reconnecting with backoff.
/// Marks discovery as reached once the controller has answered.
pub(super) async fn follow_controller(
    channel: Channel,
    caller_identity: String,
    state: Arc<TrustState>,
) {
    let mut client = TrustBundlesClient::new(channel);
    let mut backoff = Backoff::new(ReconnectBackoff::default());
    loop {
        let request = WatchTrustBundles {
            caller_identity: caller_identity.clone(),
        };
        match client.watch(request).await {
            Ok(response) => {
                state.health.update(|c| c.discovery = true);
                let opened = tokio::time::Instant::now();
                let mut stream = response.into_inner();
                let mut delivered = false;
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            delivered = true;
                            apply_update(&state, update);
                        }
                        Ok(None) => {
                            tracing::info!(
                                "the controller ended the trust bundle stream; keeping the last set"
                            );
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), message = status.message(), "the trust bundle stream failed; keeping the last set");
                            break;
                        }
                    }
                }
                if delivered && opened.elapsed() >= HEALTHY_STREAM {
                    backoff.reset();
                }
            }
            Err(status) => {
                // Anything but Unavailable came from the controller itself: it is reachable.
                if status.code() != tonic::Code::Unavailable {
                    state.health.update(|c| c.discovery = true);
                }
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch the controller's trust bundles; keeping the last set");
            }
        }
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

fn apply_update(state: &TrustState, update: mesh_api::discovery::TrustBundleSet) {
    let sequence = update.sequence;
    match from_update(update) {
        Ok(set) => {
            tracing::debug!(sequence, "trust bundle update from the controller");
            state.set(|s| s.stream = Some(set));
        }
        Err(error) => {
            tracing::warn!(sequence, %error, "refused a trust bundle update from the controller; keeping the last set");
        }
    }
}

/// Why an update from the controller was refused whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleUpdateError {
    #[error("invalid trust domain {name:?}: {source}")]
    Domain {
        name: String,
        source: mesh_trust::spiffe::SpiffeIdError,
    },
    #[error("a root of {domain}: {source}")]
    Root {
        domain: TrustDomain,
        source: BundleError,
    },
    /// Applying it would make every peer untrusted: a controller bug, not a policy.
    #[error("the set is empty")]
    Empty,
}

/// The set an update carries. All or nothing: a bad root refuses the update, since applying the
/// rest could silently drop a domain that is still linked.
pub fn from_update(
    update: mesh_api::discovery::TrustBundleSet,
) -> Result<TrustBundleSet, BundleUpdateError> {
    let mut set = TrustBundleSet::new();
    for bundle in update.domains {
        let domain =
            TrustDomain::new(&bundle.trust_domain).map_err(|source| BundleUpdateError::Domain {
                name: bundle.trust_domain.chars().take(256).collect(),
                source,
            })?;
        for root in bundle.roots {
            set.insert(&domain, &CertificateDer::from(root))
                .map_err(|source| BundleUpdateError::Root {
                    domain: domain.clone(),
                    source,
                })?;
        }
    }
    if set.is_empty() {
        return Err(BundleUpdateError::Empty);
    }
    Ok(set)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_api::discovery::TrustDomainBundle;
    use mesh_test_support::pki::Domain;

    #[test]
    fn loads_every_form_mesh_trust_bundle_writes() {
        let (west, east) = (Domain::new("west"), Domain::new("east"));
        let mut both = west.bundle();
        both.merge(&east.bundle());
        let tmp = tempfile::tempdir().unwrap();

        let pem_dir = tmp.path().join("pem");
        std::fs::create_dir(&pem_dir).unwrap();
        both.save_pem_dir(&pem_dir).unwrap();
        std::fs::create_dir(pem_dir.join("..data")).unwrap();
        std::fs::write(pem_dir.join("README"), "not a bundle").unwrap();
        assert_eq!(load(&pem_dir).unwrap(), both);

        let json_dir = tmp.path().join("json");
        std::fs::create_dir(&json_dir).unwrap();
        for domain in both.domains() {
            let json = both.to_spiffe_json(domain).unwrap();
            std::fs::write(json_dir.join(format!("{domain}.json")), json).unwrap();
        }
        assert_eq!(load(&json_dir).unwrap(), both);

        let map = tmp.path().join("bundle.json");
        std::fs::write(&map, both.to_spiffe_json_map().unwrap()).unwrap();
        assert_eq!(load(&map).unwrap(), both);

        let roots = tmp.path().join("roots.pem");
        let pem = format!(
            "# trust domain: west\n{}# trust domain: east\n{}",
            both.to_pem(&west.td).unwrap(),
            both.to_pem(&east.td).unwrap()
        );
        std::fs::write(&roots, pem).unwrap();
        assert_eq!(load(&roots).unwrap(), both);

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(load(&empty), Err(BundleFileError::Empty { .. })));
        let missing = load(&tmp.path().join("missing")).unwrap_err().to_string();
        assert!(missing.contains("missing"), "{missing}");
    }

    #[test]
    fn updates_are_all_or_nothing() {
        let (west, east) = (Domain::new("west"), Domain::new("east"));
        let bundle = |name: &str, root: &Domain| TrustDomainBundle {
            trust_domain: name.into(),
            roots: vec![root.root.certificate().to_vec()],
        };
        let good = mesh_api::discovery::TrustBundleSet {
            domains: vec![bundle("west", &west), bundle("east", &east)],
            sequence: 1,
        };
        let set = from_update(good).unwrap();
        assert_eq!(set.domains().count(), 2);

        // East's root filed under west: refused whole, west's good root included.
        let crossed = mesh_api::discovery::TrustBundleSet {
            domains: vec![bundle("west", &west), bundle("west", &east)],
            sequence: 2,
        };
        assert!(matches!(
            from_update(crossed),
            Err(BundleUpdateError::Root { .. })
        ));
        let empty = mesh_api::discovery::TrustBundleSet::default();
        assert!(matches!(from_update(empty), Err(BundleUpdateError::Empty)));
    }
}
