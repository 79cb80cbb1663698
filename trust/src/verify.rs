//! Peer verification for mesh TLS: a certificate is trusted only by the roots of its own domain.
//!
//! The peer's leaf names its identity in its single URI SAN. The chain is then checked against the
//! roots of *that identity's* trust domain and no others, so a root of `east` can never vouch for
//! `spiffe://west/...`, whatever else the bundle set holds. On top of the chain, a [`PeerPolicy`]
//! may require one exact identity or a set of allowed trust domains.
//!
//! The verifiers read the bundle set through [`SharedTrustBundles`], so an update (a linked
//! cluster's root rotation) applies to the next handshake without rebuilding any TLS config.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::bundle::TrustBundleSet;
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
use crate::x509;

/// Which peers are acceptable, beyond having a chain to their own domain's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any identity of any domain in the bundle set.
    AnyDomain,
    /// Any identity of one of these domains (a gateway accepts only its own workloads, say).
    TrustDomains(BTreeSet<TrustDomain>),
    /// Exactly this identity (a proxy dialing an endpoint whose identity discovery named).
    Exactly(SpiffeId),
}

/// Why a peer's certificate was refused.
///
/// `Debug` prints the message: rustls shows a custom certificate error with `{:?}`, and the
/// operator reading a handshake failure should see the reason, not a struct.
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerVerifyError {
    #[error("peer certificate is not valid X.509: {0}")]
    Malformed(String),
    #[error("peer certificate has no URI SAN, so it carries no SPIFFE ID")]
    NoIdentity,
    #[error("peer certificate has {count} URI SANs; an X509-SVID has exactly one")]
    SeveralUris { count: usize },
    #[error(
        "peer certificate names {0}, a trust domain, not a workload; an X509-SVID's ID has a path"
    )]
    TrustDomainOnly(SpiffeId),
    #[error("peer certificate's URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    BadIdentity { uri: String, source: SpiffeIdError },
    #[error(
        "no trust bundle for trust domain {domain} (peer {identity}); link that cluster or add its roots"
    )]
    UnknownTrustDomain {
        identity: SpiffeId,
        domain: TrustDomain,
    },
    #[error(
        "certificate of {identity} does not chain to any root of trust domain {domain}: {reason}"
    )]
    UntrustedChain {
        identity: SpiffeId,
        domain: TrustDomain,
        reason: String,
    },
    #[error("certificate of {identity} expired at {} (now {})", unix_rfc3339(*not_after), unix_rfc3339(*now))]
    Expired {
        identity: SpiffeId,
        not_after: UnixTime,
        now: UnixTime,
    },
    #[error("certificate of {identity} is not valid until {} (now {})", unix_rfc3339(*not_before), unix_rfc3339(*now))]
    NotYetValid {
        identity: SpiffeId,
        not_before: UnixTime,
        now: UnixTime,
    },
    #[error("peer {identity} is not of an allowed trust domain ({allowed})")]
    DomainNotAllowed { identity: SpiffeId, allowed: String },
    #[error("peer is {found}, but {expected} was expected")]
    UnexpectedIdentity { expected: SpiffeId, found: SpiffeId },
}

impl std::fmt::Debug for PeerVerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The bundle set the verifiers read, shared and swappable.
#[derive(Clone)]
pub struct SharedTrustBundles {
    current: Arc<RwLock<Arc<CompiledBundles>>>,
}

/// A bundle set with its roots already parsed into trust anchors, so a handshake does no parsing.
struct CompiledBundles {
    set: TrustBundleSet,
    anchors: HashMap<TrustDomain, Vec<TrustAnchor<'static>>>,
}

// === impl SharedTrustBundles ===

impl SharedTrustBundles {
    pub fn new(set: TrustBundleSet) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(CompiledBundles::compile(set)))),
        }
    }

    /// Replaces the set; the next handshake uses it.
    pub fn update(&self, set: TrustBundleSet) {
        let compiled = Arc::new(CompiledBundles::compile(set));
        match self.current.write() {
            Ok(mut guard) => *guard = compiled,
            // A writer panicked mid-swap; the value is a whole Arc either way, so replace it.
            Err(poisoned) => *poisoned.into_inner() = compiled,
        }
    }

    /// The set in force now.
    pub fn get(&self) -> TrustBundleSet {
        self.snapshot().set.clone()
    }

    fn snapshot(&self) -> Arc<CompiledBundles> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Verifies a peer chain for `usage` (server or client auth) and returns its identity.
    pub fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        policy: &PeerPolicy,
    ) -> Result<SpiffeId, PeerVerifyError> {
        self.snapshot()
            .verify(end_entity, intermediates, now, usage, policy)
    }
}

impl std::fmt::Debug for SharedTrustBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedTrustBundles")
            .field(&self.snapshot().set)
            .finish()
    }
}

// === impl CompiledBundles ===

impl CompiledBundles {
    fn compile(set: TrustBundleSet) -> Self {
        let mut anchors = HashMap::new();
        for domain in set.domains() {
            let list: Vec<TrustAnchor<'static>> = set
                .roots(domain)
                // Roots were checked on insertion; one webpki cannot use is simply not an anchor.
                .filter_map(|root| {
                    webpki::anchor_from_trusted_cert(&root)
                        .ok()
                        .map(|a| a.to_owned())
                })
                .collect();
            anchors.insert(domain.clone(), list);
        }
        Self { set, anchors }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        policy: &PeerPolicy,
    ) -> Result<SpiffeId, PeerVerifyError> {
        let identity = peer_identity(end_entity)?;
        let domain = identity.trust_domain();

        // Cheap policy checks first: a peer of a domain we would refuse costs no signature checks.
        match policy {
            PeerPolicy::AnyDomain => {}
            PeerPolicy::TrustDomains(allowed) if allowed.contains(&domain) => {}
            PeerPolicy::TrustDomains(allowed) => {
                return Err(PeerVerifyError::DomainNotAllowed {
                    identity,
                    allowed: allowed
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            PeerPolicy::Exactly(expected) if *expected == identity => {}
            PeerPolicy::Exactly(expected) => {
                return Err(PeerVerifyError::UnexpectedIdentity {
                    expected: expected.clone(),
                    found: identity,
                });
            }
        }

        let anchors = match self.anchors.get(&domain) {
            Some(anchors) if !anchors.is_empty() => anchors,
            _ => return Err(PeerVerifyError::UnknownTrustDomain { identity, domain }),
        };
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| PeerVerifyError::Malformed(format!("{e:?}")))?;
        let algs = crate::tls::signature_algorithms();
        match cert.verify_for_usage(algs.all, anchors, intermediates, now, usage, None, None) {
            Ok(_) => Ok(identity),
            Err(webpki::Error::CertExpired { time, not_after }) => Err(PeerVerifyError::Expired {
                identity,
                not_after,
                now: time,
            }),
            Err(webpki::Error::CertNotValidYet { time, not_before }) => {
                Err(PeerVerifyError::NotYetValid {
                    identity,
                    not_before,
                    now: time,
                })
            }
            Err(e) => Err(PeerVerifyError::UntrustedChain {
                identity,
                domain,
                reason: describe_chain_error(&e),
            }),
        }
    }
}

/// The SPIFFE ID of an X509-SVID: its one URI SAN.
pub fn peer_identity(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, PeerVerifyError> {
    let uris = x509::uri_sans(end_entity).map_err(PeerVerifyError::Malformed)?;
    match uris.as_slice() {
        [] => Err(PeerVerifyError::NoIdentity),
        [uri] => {
            let id = SpiffeId::parse(uri).map_err(|source| PeerVerifyError::BadIdentity {
                uri: uri.clone(),
                source,
            })?;
            if id.path().is_empty() {
                return Err(PeerVerifyError::TrustDomainOnly(id));
            }
            Ok(id)
        }
        many => Err(PeerVerifyError::SeveralUris { count: many.len() }),
    }
}

fn describe_chain_error(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => {
            "unknown issuer (signed by another domain's CA, or an intermediate is missing from the chain)"
                .into()
        }
        webpki::Error::InvalidSignatureForPublicKey => "a signature in the chain is invalid".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => "the certificate is not allowed for this use (extended key usage)".into(),
        other => format!("{other:?}"),
    }
}

fn unix_rfc3339(t: UnixTime) -> String {
    x509::rfc3339(UNIX_EPOCH + Duration::from_secs(t.as_secs()))
}

impl From<PeerVerifyError> for rustls::Error {
    fn from(e: PeerVerifyError) -> Self {
        // Expiry keeps rustls's own variants so the peer receives the certificate_expired alert;
        // the rest carry our error so the log says which identity and domain failed and why.
        rustls::Error::InvalidCertificate(match e {
            PeerVerifyError::Expired { now, not_after, .. } => CertificateError::ExpiredContext {
                time: now,
                not_after,
            },
            PeerVerifyError::NotYetValid {
                now, not_before, ..
            } => CertificateError::NotValidYetContext {
                time: now,
                not_before,
            },
            other => CertificateError::Other(OtherError(Arc::new(other))),
        })
    }
}

/// A rustls server-certificate verifier for mesh TLS (the client side of a handshake).
#[derive(Debug)]
pub struct MeshServerVerifier {
    bundles: SharedTrustBundles,
    policy: PeerPolicy,
    algs: WebPkiSupportedAlgorithms,
}

/// A rustls client-certificate verifier for mesh TLS (the server side of a handshake).
#[derive(Debug)]
pub struct MeshClientVerifier {
    bundles: SharedTrustBundles,
    policy: PeerPolicy,
    algs: WebPkiSupportedAlgorithms,
}

// === impl MeshServerVerifier ===

impl MeshServerVerifier {
    pub fn new(bundles: SharedTrustBundles, policy: PeerPolicy) -> Self {
        Self {
            bundles,
            policy,
            algs: crate::tls::signature_algorithms(),
        }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // Mesh peers are named by SPIFFE ID, not DNS: the server name is only SNI.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.bundles.verify_peer(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &self.policy,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// === impl MeshClientVerifier ===

impl MeshClientVerifier {
    pub fn new(bundles: SharedTrustBundles, policy: PeerPolicy) -> Self {
        Self {
            bundles,
            policy,
            algs: crate::tls::signature_algorithms(),
        }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to list every linked domain's roots; mesh clients have one identity.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundles.verify_peer(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            &self.policy,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn tls12_refused() -> rustls::Error {
    // Unreachable through configs built by `tls`, which offer TLS 1.3 only; kept as a refusal for
    // anyone who plugs these verifiers into a config that also allows TLS 1.2.
    rustls::Error::General("mesh TLS is TLS 1.3 only; a TLS 1.2 signature was offered".into())
}
