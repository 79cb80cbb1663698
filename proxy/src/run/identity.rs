//! The workload's certificate: read from `--identity-dir` and re-read when it changes, or obtained
//! from the controller's identity service and renewed by [`Rotator`].
//!
//! Either way the listeners and client configs hold one [`CertResolver`], and a new leaf is
//! swapped into it: new handshakes present the new leaf, established connections carry on.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_trust::ca::IssuedLeaf;
use mesh_trust::identity::{IdentityClient, TokenSource};
use mesh_trust::pem::{self, PemError};
use mesh_trust::rotation::{RotationOptions, Rotator};
use mesh_trust::tls::{CertResolver, TlsError, WorkloadCredentials};
use mesh_trust::verify::{PeerVerifyError, peer_identity};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId, x509};
use rustls_pki_types::ServerName;

use super::config::ControllerAddr;
use crate::discovery::ReconnectBackoff;
use crate::discovery::backoff::Backoff;

/// The leaf and its issuer, PEM, leaf first.
pub const LEAF_CRT: &str = "leaf.crt";
/// The leaf's PKCS#8 private key, PEM.
pub const LEAF_KEY: &str = "leaf.key";

/// Why the files in `--identity-dir` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Certificates { path: PathBuf, source: PemError },
    /// What is wrong with the key file, never its contents.
    #[error("{} is not one PEM PKCS#8 private key: {problem}", path.display())]
    Key {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("the leaf in {} is not valid X.509: {reason}", path.display())]
    BadLeaf { path: PathBuf, reason: String },
    #[error("the leaf in {} carries no usable SPIFFE ID: {source}", path.display())]
    NoIdentity {
        path: PathBuf,
        source: PeerVerifyError,
    },
    #[error("the leaf in {} is for {found}, but this proxy is {expected}", path.display())]
    WrongIdentity {
        path: PathBuf,
        expected: SpiffeId,
        found: SpiffeId,
    },
    #[error("{} and {}: {source}", dir.join(LEAF_CRT).display(), dir.join(LEAF_KEY).display())]
    Unusable { dir: PathBuf, source: TlsError },
}

/// The bytes of the two files, to tell whether they changed.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    leaf: Vec<u8>,
    key: Vec<u8>,
}

impl fmt::Debug for IdentityFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("IdentityFiles")
            .field("leaf_len", &self.leaf.len())
            .finish_non_exhaustive()
    }
}

// === impl IdentityFiles ===

impl IdentityFiles {
    /// Reads `dir/leaf.crt` and `dir/leaf.key`.
    pub async fn read(dir: &Path) -> Result<Self, IdentityFileError> {
        let read = |name: &str| {
            let path = dir.join(name);
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| IdentityFileError::Read { path, source })
            }
        };
        Ok(Self {
            leaf: read(LEAF_CRT).await?,
            key: read(LEAF_KEY).await?,
        })
    }

    /// The credentials the files hold, checked: a SPIFFE leaf (for `expected`, when given),
    /// currently valid, whose public key matches the private key.
    pub fn credentials(
        &self,
        dir: &Path,
        expected: Option<&SpiffeId>,
    ) -> Result<WorkloadCredentials, IdentityFileError> {
        let leaf_path = dir.join(LEAF_CRT);
        let mut chain = pem::parse_certificates(&self.leaf).map_err(|source| {
            IdentityFileError::Certificates {
                path: leaf_path.clone(),
                source,
            }
        })?;
        // parse_certificates refuses input without a certificate, so the chain has a leaf.
        let leaf = chain.remove(0);
        let info = x509::parse(&leaf).map_err(|reason| IdentityFileError::BadLeaf {
            path: leaf_path.clone(),
            reason,
        })?;
        let identity = peer_identity(&leaf).map_err(|source| IdentityFileError::NoIdentity {
            path: leaf_path.clone(),
            source,
        })?;
        if let Some(expected) = expected
            && *expected != identity
        {
            return Err(IdentityFileError::WrongIdentity {
                path: leaf_path,
                expected: expected.clone(),
                found: identity,
            });
        }
        let key = pem::parse_private_key(&self.key).map_err(|error| IdentityFileError::Key {
            path: dir.join(LEAF_KEY),
            problem: key_problem(&error),
        })?;
        let issued = IssuedLeaf {
            leaf,
            intermediates: chain,
            validity: info.validity,
        };
        let unusable = |source| IdentityFileError::Unusable {
            dir: dir.to_owned(),
            source,
        };
        let credentials = WorkloadCredentials::new(identity, issued, key).map_err(unusable)?;
        // Builds the signing key once, to refuse a mismatched or expired pair here rather than in
        // the first handshake.
        CertResolver::new(credentials.clone()).map_err(unusable)?;
        Ok(credentials)
    }
}

/// What is wrong with a key file, in words that cannot carry any of its bytes.
fn key_problem(error: &PemError) -> &'static str {
    match error {
        PemError::Malformed(_) => "malformed PEM",
        PemError::Missing { .. } => "no PRIVATE KEY block",
        PemError::UnexpectedTag { .. } => "the block is not a PKCS#8 PRIVATE KEY",
        PemError::TooMany { .. } => "more than one PEM block",
        _ => "unreadable",
    }
}

/// Re-reads `dir` every `interval` and swaps a changed, valid leaf into `resolver`. A change that
/// does not load (half-written, for another identity, mismatched key) is logged once and the
/// current leaf kept. `on_expiry(true)` is called once the current leaf has expired (and
/// `on_expiry(false)` once a valid one is back), so the caller can clear its readiness.
///
/// `mesh-proxy` and `mesh-gateway` both run this for `--identity-dir`.
pub async fn reload_dir(
    dir: PathBuf,
    mut last: IdentityFiles,
    resolver: Arc<CertResolver>,
    interval: Duration,
    on_expiry: impl Fn(bool) + Send,
) {
    let identity = resolver.credentials().identity;
    let mut problem: Option<String> = None;
    let mut expired = false;
    loop {
        tokio::time::sleep(interval).await;
        let read = IdentityFiles::read(&dir).await;
        let outcome = match read {
            Ok(files) if files == last => Ok(()),
            Ok(files) => {
                let loaded = files.credentials(&dir, Some(&identity));
                // Remembered either way: a bad change is reported once, not at every poll.
                last = files;
                loaded.and_then(|credentials| {
                    let serial = credentials
                        .chain
                        .first()
                        .and_then(|leaf| x509::parse(leaf).ok())
                        .map(|info| info.serial)
                        .unwrap_or_default();
                    let not_after = x509::rfc3339(credentials.validity.not_after);
                    resolver
                        .swap(credentials)
                        .map_err(|source| IdentityFileError::Unusable {
                            dir: dir.clone(),
                            source,
                        })?;
                    tracing::info!(%identity, %serial, %not_after, "reloaded the leaf certificate");
                    Ok(())
                })
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => problem = None,
            Err(error) => {
                let text = error.to_string();
                if problem.as_deref() != Some(&text) {
                    tracing::warn!(error = %text, "keeping the current leaf certificate");
                    problem = Some(text);
                }
            }
        }
        let now_expired = resolver.credentials().validity.not_after <= SystemTime::now();
        if now_expired != expired {
            expired = now_expired;
            if expired {
                tracing::error!(%identity, dir = %dir.display(), "the leaf certificate has expired and no valid replacement was found");
            }
            on_expiry(expired);
        }
    }
}

/// The identity service's client for `addr`, checking that the service is `controller`.
fn identity_client(
    addr: std::net::SocketAddr,
    host: &str,
    controller: &SpiffeId,
    bundles: &SharedTrustBundles,
    token_file: &Path,
) -> Result<IdentityClient, String> {
    let tls = mesh_trust::tls::client_config(
        bundles.clone(),
        PeerPolicy::Exactly(controller.clone()),
        None,
        &[],
    )
    .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    IdentityClient::new(
        addr,
        tls,
        server_name,
        TokenSource::File(token_file.to_owned()),
    )
    .map_err(|e| e.to_string())
}

/// Obtains the first leaf from the identity service, retrying (address resolution included) with
/// backoff until it succeeds; the caller races this against shutdown.
pub(super) async fn obtain(
    addr: &ControllerAddr,
    identity: &SpiffeId,
    controller: &SpiffeId,
    token_file: &Path,
    bundles: &SharedTrustBundles,
    options: RotationOptions,
) -> (Arc<CertResolver>, Rotator<IdentityClient>) {
    let mut backoff = Backoff::new(ReconnectBackoff {
        initial: options.initial_backoff,
        max: options.max_backoff,
    });
    loop {
        let attempt = async {
            let resolved = tokio::net::lookup_host((addr.host.as_str(), addr.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", addr.host))?
                .next()
                .ok_or_else(|| format!("{} resolves to no address", addr.host))?;
            let client = identity_client(resolved, &addr.host, controller, bundles, token_file)?;
            Rotator::start(identity.clone(), client, options)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(started) => {
                let credentials = started.0.credentials();
                tracing::info!(
                    %identity,
                    not_after = %x509::rfc3339(credentials.validity.not_after),
                    "obtained a leaf certificate from the identity service"
                );
                return started;
            }
            Err(error) => {
                let delay = backoff.next_delay(&mut rand::rng());
                tracing::warn!(%identity, service = %addr, %error, ?delay, "cannot obtain a leaf certificate yet; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_test_support::pki::Domain;

    fn files(creds: &WorkloadCredentials) -> IdentityFiles {
        IdentityFiles {
            leaf: pem::encode_certificates(creds.chain.iter()).into_bytes(),
            key: pem::encode_private_key(&creds.key).into_bytes(),
        }
    }

    #[test]
    fn loads_a_leaf_and_checks_it() {
        let west = Domain::new("west");
        let web = west.creds("web");
        let dir = Path::new("/id");
        let loaded = files(&web).credentials(dir, Some(&west.id("web"))).unwrap();
        assert_eq!(loaded.identity, west.id("web"));
        assert_eq!(loaded.chain.len(), 2, "leaf and issuer");

        let err = files(&web)
            .credentials(dir, Some(&west.id("db")))
            .unwrap_err();
        assert!(
            matches!(err, IdentityFileError::WrongIdentity { .. }),
            "{err}"
        );

        let other = west.creds("web");
        let mismatched = IdentityFiles {
            leaf: files(&web).leaf,
            key: files(&other).key,
        };
        let err = mismatched.credentials(dir, None).unwrap_err();
        assert!(matches!(err, IdentityFileError::Unusable { .. }), "{err}");

        let garbage = IdentityFiles {
            leaf: files(&web).leaf,
            key: b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n".to_vec(),
        };
        let err = garbage.credentials(dir, None).unwrap_err().to_string();
        assert!(
            err.contains("/id/leaf.key") && !err.contains("base64!"),
            "{err}"
        );
    }
}
