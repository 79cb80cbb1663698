//! Live rotation of a workload's leaf certificate.
//!
//! A [`Rotator`] holds the workload's [`CertResolver`]: it obtains the first leaf, then renews it at
//! 70 % of its lifetime (with jitter, so that a fleet started together does not renew together),
//! retries failures with capped exponential backoff, and swaps each new leaf into the resolver.
//! Listeners and client configs keep the same resolver, so new handshakes present the new leaf
//! and established connections carry on. Time is tokio's, so tests run it under a paused clock.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::ca::{self, CaError, CertificateAuthority, IssuedLeaf, Validity};
use crate::spiffe::SpiffeId;
use crate::tls::{CertResolver, TlsError, WorkloadCredentials};

/// Why a leaf could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    #[error("the issuer refused: {0}")]
    Refused(String),
    #[error("the issuer is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Something that signs a CSR for an identity: the local CA, or the identity service.
pub trait LeafIssuer: Send + Sync + 'static {
    fn certify(
        &self,
        identity: &SpiffeId,
        csr_der: Vec<u8>,
    ) -> impl Future<Output = Result<IssuedLeaf, IssueError>> + Send;
}

/// Signs with a CA held in this process (the controller's own identity, tests, the demo).
#[derive(Debug, Clone)]
pub struct LocalIssuer {
    ca: Arc<CertificateAuthority>,
    lifetime: Duration,
}

impl LocalIssuer {
    pub fn new(ca: Arc<CertificateAuthority>, lifetime: Duration) -> Self {
        Self { ca, lifetime }
    }
}

impl LeafIssuer for LocalIssuer {
    async fn certify(
        &self,
        identity: &SpiffeId,
        csr_der: Vec<u8>,
    ) -> Result<IssuedLeaf, IssueError> {
        Ok(self
            .ca
            .sign_csr(identity, &csr_der, Validity::starting_now(self.lifetime))?)
    }
}

/// When to renew and how to retry.
#[derive(Debug, Clone, Copy)]
pub struct RotationOptions {
    /// The fraction of the lifetime after which to renew.
    pub renew_at: f64,
    /// Up to this fraction of the lifetime is added to or taken from the renewal time.
    pub jitter: f64,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RotationOptions {
    fn default() -> Self {
        Self {
            renew_at: 0.7,
            jitter: 0.05,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Generates a fresh key and CSR and has `issuer` certify it.
pub async fn obtain<I: LeafIssuer>(
    identity: &SpiffeId,
    issuer: &I,
) -> Result<WorkloadCredentials, IssueError> {
    let (key, csr) = ca::generate_key_and_csr(identity)?;
    let leaf = issuer.certify(identity, csr).await?;
    Ok(WorkloadCredentials::new(identity.clone(), leaf, key)?)
}

/// How long to wait from `now` until renewing a leaf valid for `validity`.
///
/// `jitter_sample` is in `[-1, 1]`; it moves the renewal time by up to `options.jitter` of the
/// lifetime, and the result never passes 95 % of the lifetime.
pub fn renewal_delay(
    validity: Validity,
    now: SystemTime,
    options: &RotationOptions,
    jitter_sample: f64,
) -> Duration {
    let lifetime = validity.lifetime().as_secs_f64();
    let fraction =
        (options.renew_at + options.jitter * jitter_sample.clamp(-1.0, 1.0)).clamp(0.0, 0.95);
    let target = validity.not_before + Duration::from_secs_f64(lifetime * fraction);
    target.duration_since(now).unwrap_or(Duration::ZERO)
}

/// Keeps one workload identity's leaf fresh.
#[derive(Debug)]
pub struct Rotator<I> {
    identity: SpiffeId,
    issuer: I,
    resolver: Arc<CertResolver>,
    options: RotationOptions,
    renewed: watch::Sender<u64>,
}

impl<I: LeafIssuer> Rotator<I> {
    /// Obtains the first leaf (one attempt: the caller decides whether to retry start-up) and
    /// returns the resolver to build TLS configs from.
    pub async fn start(
        identity: SpiffeId,
        issuer: I,
        options: RotationOptions,
    ) -> Result<(Arc<CertResolver>, Self), IssueError> {
        let credentials = obtain(&identity, &issuer).await?;
        let resolver = Arc::new(CertResolver::new(credentials)?);
        let (renewed, _) = watch::channel(0);
        let rotator = Self {
            identity,
            issuer,
            resolver: resolver.clone(),
            options,
            renewed,
        };
        Ok((resolver, rotator))
    }

    /// Counts renewals; changes each time a new leaf is swapped in.
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewed.subscribe()
    }

    /// Renews until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.renew_forever() => {}
        }
    }

    async fn renew_forever(&self) {
        loop {
            let validity = self.resolver.credentials().validity;
            let delay = renewal_delay(
                validity,
                SystemTime::now(),
                &self.options,
                rand::random_range(-1.0..=1.0),
            );
            tracing::debug!(identity = %self.identity, ?delay, "next leaf renewal");
            // Never less than the first backoff: a leaf that is already due must not make this
            // loop spin.
            tokio::time::sleep(delay.max(self.options.initial_backoff)).await;
            self.renew_with_retries().await;
        }
    }

    async fn renew_with_retries(&self) {
        let mut backoff = self.options.initial_backoff;
        loop {
            match obtain(&self.identity, &self.issuer).await {
                Ok(credentials) => {
                    let validity = credentials.validity;
                    match self.resolver.swap(credentials) {
                        Ok(()) => {
                            self.renewed.send_modify(|n| *n += 1);
                            let next =
                                renewal_delay(validity, SystemTime::now(), &self.options, 0.0);
                            if !next.is_zero() {
                                tracing::info!(identity = %self.identity, "renewed leaf certificate");
                                return;
                            }
                            // Served, since it beats an older one, but already due: keep trying
                            // with backoff rather than renewing in a tight loop.
                            tracing::warn!(identity = %self.identity, "renewed leaf is already due for renewal; is the issuer expiring?");
                        }
                        Err(error) => {
                            tracing::warn!(identity = %self.identity, %error, "renewed leaf unusable")
                        }
                    }
                }
                Err(error) => {
                    let expired =
                        self.resolver.credentials().validity.not_after <= SystemTime::now();
                    if expired {
                        tracing::error!(identity = %self.identity, %error, "leaf expired and renewal failed; retrying");
                    } else {
                        tracing::warn!(identity = %self.identity, %error, ?backoff, "leaf renewal failed; retrying");
                    }
                }
            }
            // Full jitter between half and all of the backoff spreads retries from many workloads.
            let wait = backoff.mul_f64(rand::random_range(0.5..=1.0));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_within_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let validity = Validity {
            not_before: start,
            not_after: start + Duration::from_secs(1000),
        };
        let options = RotationOptions::default();
        assert_eq!(
            renewal_delay(validity, start, &options, 0.0),
            Duration::from_secs(700)
        );
        assert_eq!(
            renewal_delay(validity, start, &options, 1.0),
            Duration::from_secs(750)
        );
        assert_eq!(
            renewal_delay(validity, start, &options, -1.0),
            Duration::from_secs(650)
        );
        // Measured from now, and never negative.
        let later = start + Duration::from_secs(600);
        assert_eq!(
            renewal_delay(validity, later, &options, 0.0),
            Duration::from_secs(100)
        );
        let past = start + Duration::from_secs(900);
        assert_eq!(renewal_delay(validity, past, &options, 0.0), Duration::ZERO);
        // Out-of-range samples and options cannot push renewal past 95 % of the lifetime.
        let wild = RotationOptions {
            renew_at: 0.9,
            jitter: 0.5,
            ..options
        };
        assert_eq!(
            renewal_delay(validity, start, &wild, 7.0),
            Duration::from_secs(950)
        );
    }
}
