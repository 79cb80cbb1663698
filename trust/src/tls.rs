//! rustls configurations for mesh TLS: TLS 1.3 only, mutual, ring as the one crypto provider.
//!
//! A workload's own certificate comes from a [`CertResolver`], which the rotation task swaps in
//! place, so listeners and pooled configs never need rebuilding when a leaf is renewed.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::{IssuedLeaf, Validity};
use crate::spiffe::SpiffeId;
use crate::verify::{
    MeshClientVerifier, MeshServerVerifier, PeerPolicy, PeerVerifyError, SharedTrustBundles,
};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("private key refused: {0}")]
    Key(rustls::Error),
    #[error("TLS configuration refused: {0}")]
    Config(rustls::Error),
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the leaf does not carry a usable SPIFFE ID: {0}")]
    Identity(#[from] PeerVerifyError),
    #[error("the leaf is for {found}, not {expected}")]
    WrongIdentity { expected: SpiffeId, found: SpiffeId },
    #[error("the leaf's public key does not match the private key: {0}")]
    KeyMismatch(rustls::Error),
    #[error("the leaf is not valid now (valid {not_before} to {not_after})")]
    NotCurrent {
        not_before: String,
        not_after: String,
    },
}

/// The crypto provider of the whole workspace: ring. Every TLS config is built from this one.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The provider's signature verification algorithms, built once.
pub fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    static ALGS: std::sync::OnceLock<rustls::crypto::WebPkiSupportedAlgorithms> =
        std::sync::OnceLock::new();
    *ALGS.get_or_init(|| provider().signature_verification_algorithms)
}

/// A workload's certificate chain (leaf first) and private key.
#[derive(Clone)]
pub struct WorkloadCredentials {
    pub identity: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub validity: Validity,
}

impl WorkloadCredentials {
    /// Pairs an issued leaf with the key its CSR was made from, checking the leaf's identity.
    pub fn new(
        identity: SpiffeId,
        leaf: IssuedLeaf,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let found = crate::verify::peer_identity(&leaf.leaf)?;
        if found != identity {
            return Err(TlsError::WrongIdentity {
                expected: identity,
                found,
            });
        }
        Ok(Self {
            identity,
            validity: leaf.validity,
            chain: leaf.chain(),
            key: Arc::new(key),
        })
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        if self.chain.is_empty() {
            return Err(TlsError::EmptyChain);
        }
        let now = std::time::SystemTime::now();
        if !(self.validity.not_before <= now && now < self.validity.not_after) {
            return Err(TlsError::NotCurrent {
                not_before: crate::x509::rfc3339(self.validity.not_before),
                not_after: crate::x509::rfc3339(self.validity.not_after),
            });
        }
        let signing_key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(TlsError::Key)?;
        let key = CertifiedKey::new(self.chain.clone(), signing_key);
        // An issuer that answered with a leaf for another key would break every handshake
        // until the next renewal; refuse it here, before it is served.
        key.keys_match().map_err(TlsError::KeyMismatch)?;
        Ok(Arc::new(key))
    }
}

impl std::fmt::Debug for WorkloadCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("WorkloadCredentials")
            .field("identity", &self.identity)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// Serves the current certificate to rustls, on both the server and the client side.
pub struct CertResolver {
    current: RwLock<Current>,
}

struct Current {
    key: Arc<CertifiedKey>,
    credentials: WorkloadCredentials,
}

// === impl CertResolver ===

impl CertResolver {
    pub fn new(credentials: WorkloadCredentials) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Current {
                key: credentials.certified_key()?,
                credentials,
            }),
        })
    }

    /// Replaces the certificate; the next handshake presents the new one.
    pub fn swap(&self, credentials: WorkloadCredentials) -> Result<(), TlsError> {
        let key = credentials.certified_key()?;
        let next = Current { key, credentials };
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    /// The credentials being served now.
    pub fn credentials(&self) -> WorkloadCredentials {
        match self.current.read() {
            Ok(guard) => guard.credentials.clone(),
            Err(poisoned) => poisoned.into_inner().credentials.clone(),
        }
    }

    fn key(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => guard.key.clone(),
            Err(poisoned) => poisoned.into_inner().key.clone(),
        }
    }
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("credentials", &self.credentials())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A mesh server: TLS 1.3, client certificates required and checked against `policy`.
///
/// Session resumption is off. A resumed TLS 1.3 handshake skips certificate verification, so a
/// peer could keep resuming after its domain was unlinked, its root dropped or its leaf expired.
/// Meshed HTTP rides pooled, long-lived connections, so full handshakes are rare anyway.
pub fn server_config(
    bundles: SharedTrustBundles,
    policy: PeerPolicy,
    certs: Arc<CertResolver>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier::new(bundles, policy)))
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A mesh client: TLS 1.3, presents the workload certificate, checks the server against `policy`.
///
/// Session resumption is off, for the reason given at [`server_config`].
pub fn client_config(
    bundles: SharedTrustBundles,
    policy: PeerPolicy,
    certs: Option<Arc<CertResolver>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(bundles, policy)));
    let mut config = match certs {
        Some(certs) => builder.with_client_cert_resolver(certs),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The SPIFFE ID the peer of an established connection presented.
pub fn connection_peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    crate::verify::peer_identity(leaf).ok()
}
