//! Certificate authorities: a cluster's root, its issuer (intermediate), and leaf issuance.
//!
//! Each cluster has its own root and trust domain. The root signs an issuer; the issuer signs
//! workload leaves from CSRs. A leaf is built from scratch: only the public key is taken from the
//! CSR (after its signature proves the requester holds the private key), and the identity is the one
//! the caller was authorized to certify, never one the CSR asks for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::FromDer;

use crate::pem::{self, PemError};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509;

/// Leaves live a day unless told otherwise.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Issuers live a year unless told otherwise.
pub const DEFAULT_ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Roots live ten years unless told otherwise.
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Certificates start this long before they are made, so that a peer whose clock is a little
/// behind does not refuse a fresh certificate as not yet valid.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// The longest lifetime accepted: a hundred years.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// X.509 dates end at 9999-12-31T23:59:59Z.
const LATEST_X509_TIME: Duration = Duration::from_secs(253_402_300_799);

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_PRIME256V1: &str = "1.2.840.10045.3.1.7";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("could not generate a key pair: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("could not sign the certificate: {0}")]
    Signing(rcgen::Error),
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    WrongTrustDomain {
        identity: SpiffeId,
        trust_domain: TrustDomain,
    },
    #[error("certificate signing request refused: {0}")]
    Csr(#[from] CsrError),
    #[error("CA certificate refused: {0}")]
    BadCaCertificate(String),
    #[error("CA private key refused: {0}")]
    BadCaKey(String),
    #[error("the CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("validity window is empty: notBefore is not before notAfter")]
    EmptyValidity,
    #[error("validity ends after 9999-12-31, which X.509 cannot express")]
    ValidityTooLong,
    #[error("the signing CA expired at {0}; rotate it (mesh trust create-issuer) before issuing")]
    CaExpired(String),
    #[error("the signing CA expires at {0}, too soon for the requested lifetime; rotate it first")]
    CaExpiring(String),
    #[error("{0} names a trust domain, not a workload; a leaf's SPIFFE ID needs a path")]
    NotAWorkloadId(SpiffeId),
    #[error("only a root may sign issuers: an issuer's path length is 0")]
    NotARoot,
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("not a DER PKCS#10 certificate signing request: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the certificate signing request")]
    TrailingBytes(usize),
    #[error("the request's signature does not verify with its own public key")]
    BadSignature,
    #[error("unsupported key type {found}; workload keys must be ECDSA P-256")]
    UnsupportedKey { found: String },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A leaf certificate and the intermediates a peer needs to chain it to a root.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub leaf: CertificateDer<'static>,
    /// From the leaf's issuer up to, not including, the root.
    pub intermediates: Vec<CertificateDer<'static>>,
    pub validity: Validity,
}

/// A root or an issuer, able to sign certificates in one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    certificate: CertificateDer<'static>,
    // Certificates above this CA, up to and not including the root (empty for a root).
    chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    validity: Validity,
    is_root: bool,
}

// === impl Validity ===

impl Validity {
    /// From a little before now (see [`CLOCK_SKEW_ALLOWANCE`]) for `lifetime`, at most
    /// [`MAX_LIFETIME`].
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + lifetime.min(MAX_LIFETIME),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    fn check(&self) -> Result<(), CaError> {
        if self.not_before >= self.not_after {
            return Err(CaError::EmptyValidity);
        }
        if self.not_after > UNIX_EPOCH + LATEST_X509_TIME {
            return Err(CaError::ValidityTooLong);
        }
        Ok(())
    }
}

// === impl IssuedLeaf ===

impl IssuedLeaf {
    /// The chain a server or client presents: the leaf, then its intermediates.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.leaf.clone())
            .chain(self.intermediates.iter().cloned())
            .collect()
    }
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Creates a new self-signed root for `trust_domain`, valid for `lifetime`.
    pub fn create_root(trust_domain: &TrustDomain, lifetime: Duration) -> Result<Self, CaError> {
        Self::create_root_with(trust_domain, Validity::starting_now(lifetime))
    }

    pub fn create_root_with(
        trust_domain: &TrustDomain,
        validity: Validity,
    ) -> Result<Self, CaError> {
        validity.check()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGeneration)?;
        let params = ca_params(
            trust_domain,
            "root CA",
            IsCa::Ca(BasicConstraints::Unconstrained),
            validity,
        )?;
        let cert = params.self_signed(&key).map_err(CaError::Signing)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            certificate: cert.der().clone(),
            chain: Vec::new(),
            issuer: Issuer::new(params, key),
            validity,
            is_root: true,
        })
    }

    /// Creates an issuer (intermediate CA) signed by this CA, valid for `lifetime` (clamped to this
    /// CA's own expiry). Issuers may only sign leaves.
    pub fn create_issuer(&self, lifetime: Duration) -> Result<Self, CaError> {
        self.create_issuer_with(Validity::starting_now(lifetime))
    }

    pub fn create_issuer_with(&self, validity: Validity) -> Result<Self, CaError> {
        if !self.is_root {
            return Err(CaError::NotARoot);
        }
        let validity = self.fit(validity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGeneration)?;
        let params = ca_params(
            &self.trust_domain,
            "issuer CA",
            IsCa::Ca(BasicConstraints::Constrained(0)),
            validity,
        )?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Signing)?;
        Ok(Self {
            trust_domain: self.trust_domain.clone(),
            certificate: cert.der().clone(),
            chain: self.chain_for_children(),
            issuer: Issuer::new(params, key),
            validity,
            is_root: false,
        })
    }

    /// Loads a CA from its certificate (optionally followed by the chain above it, excluding the
    /// root) and its PKCS#8 private key, both PEM.
    pub fn from_pem(certificates_pem: &[u8], key_pem: &[u8]) -> Result<Self, CaError> {
        let mut certs = pem::parse_certificates(certificates_pem)?.into_iter();
        let certificate = certs.next().ok_or(CaError::Pem(PemError::Missing {
            expected: "CERTIFICATE",
        }))?;
        let chain: Vec<_> = certs.collect();
        let key_der = pem::parse_private_key(key_pem)?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CaError::BadCaKey(e.to_string()))?;

        let info = x509::parse(&certificate).map_err(CaError::BadCaCertificate)?;
        if !info.is_ca {
            return Err(CaError::BadCaCertificate(
                "it is not a CA certificate (basicConstraints CA is not set)".into(),
            ));
        }
        let trust_domain = match info.spiffe_ids.as_slice() {
            [id] if id.path().is_empty() => id.trust_domain(),
            [] => {
                return Err(CaError::BadCaCertificate(
                    "it carries no spiffe://<trust-domain> URI SAN, so its trust domain is unknown"
                        .into(),
                ));
            }
            _ => {
                return Err(CaError::BadCaCertificate(
                    "it must carry exactly one URI SAN, the trust domain ID spiffe://<trust-domain>"
                        .into(),
                ));
            }
        };
        if key.subject_public_key_info() != info.spki_der {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&certificate, key)
            .map_err(|e| CaError::BadCaCertificate(e.to_string()))?;
        // A root signs itself: the same name on both sides is not enough.
        let is_root = info.self_issued && x509::is_self_signed(&certificate);
        Ok(Self {
            trust_domain,
            is_root,
            certificate,
            chain,
            issuer,
            validity: info.validity,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    pub fn is_root(&self) -> bool {
        self.is_root
    }

    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// The CA certificate followed by the chain above it, as PEM.
    pub fn certificate_pem(&self) -> String {
        pem::encode_certificates(std::iter::once(&self.certificate).chain(self.chain.iter()))
    }

    /// The CA private key, PKCS#8 PEM. Write it with mode 0600.
    pub fn private_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a leaf for `identity` with the public key of a DER PKCS#10 CSR.
    ///
    /// The caller has already decided that the requester may hold `identity`; the CSR only proves
    /// possession of its key. Everything else in the CSR (subject, SANs, extensions) is ignored.
    pub fn sign_csr(
        &self,
        identity: &SpiffeId,
        csr_der: &[u8],
        validity: Validity,
    ) -> Result<IssuedLeaf, CaError> {
        let public_key = CsrPublicKey::from_der(csr_der)?;
        self.sign_leaf(identity, &public_key, validity)
    }

    /// Signs a leaf for `identity` with a public key the caller already holds.
    pub fn sign_leaf(
        &self,
        identity: &SpiffeId,
        public_key: &impl PublicKeyData,
        validity: Validity,
    ) -> Result<IssuedLeaf, CaError> {
        if identity.trust_domain_str() != self.trust_domain.as_str() {
            return Err(CaError::WrongTrustDomain {
                identity: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if identity.path().is_empty() {
            return Err(CaError::NotAWorkloadId(identity.clone()));
        }
        let validity = self.fit(validity)?;
        let mut params = CertificateParams::default();
        // SPIFFE X509-SVIDs identify by URI SAN alone; an empty subject makes rcgen mark the SAN
        // critical, as RFC 5280 requires.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(identity.as_str())?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::Signing)?;
        Ok(IssuedLeaf {
            leaf: cert.der().clone(),
            intermediates: self.chain_for_children(),
            validity,
        })
    }

    // What a certificate this CA signs presents above itself: this CA and the chain above it,
    // never the root (peers have the root in their bundle).
    fn chain_for_children(&self) -> Vec<CertificateDer<'static>> {
        if self.is_root {
            return Vec::new();
        }
        std::iter::once(self.certificate.clone())
            .chain(self.chain.iter().cloned())
            .collect()
    }

    // A certificate cannot usefully outlive the CA that signed it, so its end is cut to the CA's.
    // If that leaves under a tenth of what was asked for, the CA is about to expire and the
    // caller would renew in a loop: better to say so.
    fn fit(&self, mut validity: Validity) -> Result<Validity, CaError> {
        let now = SystemTime::now();
        let ca_end = self.validity.not_after;
        if ca_end <= now {
            return Err(CaError::CaExpired(x509::rfc3339(ca_end)));
        }
        if validity.not_after > ca_end {
            let asked = validity.not_after.duration_since(now).unwrap_or_default();
            let left = ca_end.duration_since(now).unwrap_or_default();
            if left < asked / 10 {
                return Err(CaError::CaExpiring(x509::rfc3339(ca_end)));
            }
            validity.not_after = ca_end;
        }
        validity.check()?;
        Ok(validity)
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("is_root", &self.is_root)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// A fresh ECDSA P-256 key and a CSR for `identity` signed with it, as a workload makes them.
pub fn generate_key_and_csr(
    identity: &SpiffeId,
) -> Result<(PrivateKeyDer<'static>, Vec<u8>), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(identity.as_str())?];
    let csr = params.serialize_request(&key).map_err(CaError::Signing)?;
    let csr_der = csr.der().to_vec();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((key_der, csr_der))
}

/// The public key of a CSR whose signature has been verified.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    raw: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl CsrPublicKey {
    /// Parses a DER CSR, checks that it is signed by its own key, and keeps only that key.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der)
                .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingBytes(rest.len()));
        }
        let spki = &csr.certification_request_info.subject_pki;
        let key_oid = spki.algorithm.algorithm.to_id_string();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.to_id_string());
        if key_oid != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_PRIME256V1) {
            return Err(CsrError::UnsupportedKey {
                found: x509::key_type_name(&key_oid, curve.as_deref()),
            });
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        Ok(Self {
            raw: spki.subject_public_key.data.to_vec(),
            algorithm: &PKCS_ECDSA_P256_SHA256,
        })
    }
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

fn ca_params(
    trust_domain: &TrustDomain,
    role: &str,
    is_ca: IsCa,
    validity: Validity,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    dn.push(DnType::CommonName, format!("{trust_domain} {role}"));
    params.distinguished_name = dn;
    // The trust domain ID in the CA's URI SAN lets tools (and `TrustBundleSet`) tell which domain
    // a root belongs to without being told.
    params.subject_alt_names = vec![uri_san(trust_domain.id().as_str())?];
    params.is_ca = is_ca;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    // A validated SPIFFE ID is ASCII, so this only fails if that invariant is broken.
    rcgen::string::Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(CaError::Signing)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as RFC 5280 asks of serial numbers.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("trust domain")
    }

    #[test]
    fn issues_leaf_from_csr_with_only_the_csr_key() {
        let root =
            CertificateAuthority::create_root(&td("west"), DEFAULT_ROOT_LIFETIME).expect("root");
        let issuer = root.create_issuer(DEFAULT_ISSUER_LIFETIME).expect("issuer");
        // The CSR asks for another identity; the leaf must carry the one it was told to certify.
        let asked = SpiffeId::parse("spiffe://west/ns/kube-system/sa/admin").expect("id");
        let granted = SpiffeId::parse("spiffe://west/ns/default/sa/web").expect("id");
        let (_key, csr) = generate_key_and_csr(&asked).expect("csr");
        let leaf = issuer
            .sign_csr(
                &granted,
                &csr,
                Validity::starting_now(DEFAULT_LEAF_LIFETIME),
            )
            .expect("leaf");
        let info = x509::parse(&leaf.leaf).expect("parse");
        assert_eq!(info.spiffe_ids, vec![granted]);
        assert!(!info.is_ca);
        assert_eq!(leaf.intermediates, vec![issuer.certificate().clone()]);
        let lifetime = leaf.validity.lifetime();
        assert!(
            lifetime >= DEFAULT_LEAF_LIFETIME
                && lifetime <= DEFAULT_LEAF_LIFETIME + CLOCK_SKEW_ALLOWANCE
        );
    }

    #[test]
    fn refuses_identity_of_another_trust_domain() {
        let root =
            CertificateAuthority::create_root(&td("east"), DEFAULT_ROOT_LIFETIME).expect("root");
        let west = SpiffeId::parse("spiffe://west/ns/default/sa/web").expect("id");
        let (_key, csr) = generate_key_and_csr(&west).expect("csr");
        let err = root
            .sign_csr(&west, &csr, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
            .expect_err("must refuse");
        assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err}");
    }

    #[test]
    fn refuses_garbage_and_tampered_csrs() {
        assert!(matches!(
            CsrPublicKey::from_der(b"not der"),
            Err(CsrError::Malformed(_))
        ));
        let id = SpiffeId::parse("spiffe://west/ns/a/sa/b").expect("id");
        let (_key, mut csr) = generate_key_and_csr(&id).expect("csr");
        let mut padded = csr.clone();
        padded.push(0);
        assert_eq!(
            CsrPublicKey::from_der(&padded).err(),
            Some(CsrError::TrailingBytes(1))
        );
        // Flip a byte inside the signed request info: the signature no longer verifies.
        let n = csr.len();
        csr[n / 2] ^= 0x01;
        assert!(CsrPublicKey::from_der(&csr).is_err());
    }

    #[test]
    fn round_trips_through_pem_and_checks_the_key() {
        let root =
            CertificateAuthority::create_root(&td("west"), DEFAULT_ROOT_LIFETIME).expect("root");
        let issuer = root.create_issuer(DEFAULT_ISSUER_LIFETIME).expect("issuer");
        let loaded = CertificateAuthority::from_pem(
            issuer.certificate_pem().as_bytes(),
            issuer.private_key_pem().as_bytes(),
        )
        .expect("load");
        assert_eq!(loaded.trust_domain().as_str(), "west");
        assert!(!loaded.is_root());
        let loaded_root = CertificateAuthority::from_pem(
            root.certificate_pem().as_bytes(),
            root.private_key_pem().as_bytes(),
        )
        .expect("load root");
        assert!(loaded_root.is_root());
        let err = CertificateAuthority::from_pem(
            issuer.certificate_pem().as_bytes(),
            root.private_key_pem().as_bytes(),
        )
        .expect_err("mismatched key");
        assert!(matches!(err, CaError::KeyMismatch));
    }

    #[test]
    fn refuses_trust_domain_ids_expiring_cas_and_issuers_of_issuers() {
        let root =
            CertificateAuthority::create_root(&td("west"), DEFAULT_ROOT_LIFETIME).expect("root");
        let domain_id = td("west").id();
        let (_key, csr) = generate_key_and_csr(&domain_id).expect("csr");
        let err = root
            .sign_csr(
                &domain_id,
                &csr,
                Validity::starting_now(DEFAULT_LEAF_LIFETIME),
            )
            .expect_err("a trust domain ID is not a workload");
        assert!(matches!(err, CaError::NotAWorkloadId(_)), "{err}");

        let issuer = root.create_issuer(DEFAULT_ISSUER_LIFETIME).expect("issuer");
        let err = issuer
            .create_issuer(DEFAULT_ISSUER_LIFETIME)
            .expect_err("path length 0");
        assert!(matches!(err, CaError::NotARoot), "{err}");

        // A CA with two minutes left cannot sign a day-long leaf: the caller would renew in a loop.
        let short =
            CertificateAuthority::create_root(&td("west"), Duration::from_secs(120)).expect("root");
        let id = SpiffeId::parse("spiffe://west/ns/a/sa/b").expect("id");
        let (_key, csr) = generate_key_and_csr(&id).expect("csr");
        let err = short
            .sign_csr(&id, &csr, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
            .expect_err("expiring CA");
        assert!(matches!(err, CaError::CaExpiring(_)), "{err}");

        let now = SystemTime::now();
        let expired = CertificateAuthority::create_root_with(
            &td("west"),
            Validity {
                not_before: now - Duration::from_secs(7200),
                not_after: now - Duration::from_secs(3600),
            },
        )
        .expect("an expired root can be made, for tests");
        let err = expired
            .sign_csr(&id, &csr, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
            .expect_err("expired CA");
        assert!(err.to_string().contains("expired at"), "{err}");
    }

    #[test]
    fn huge_lifetimes_are_capped_not_a_panic() {
        let root =
            CertificateAuthority::create_root(&td("west"), Duration::from_secs(u64::MAX / 4))
                .expect("capped at MAX_LIFETIME");
        assert!(root.validity().lifetime() <= MAX_LIFETIME + CLOCK_SKEW_ALLOWANCE);
        let err = CertificateAuthority::create_root_with(
            &td("west"),
            Validity {
                not_before: SystemTime::now(),
                not_after: UNIX_EPOCH + LATEST_X509_TIME + Duration::from_secs(1),
            },
        )
        .expect_err("past 9999");
        assert!(matches!(err, CaError::ValidityTooLong), "{err}");
    }

    #[test]
    fn leaf_never_outlives_its_issuer() {
        let root = CertificateAuthority::create_root(&td("west"), Duration::from_secs(20 * 3600))
            .expect("root");
        let id = SpiffeId::parse("spiffe://west/ns/a/sa/b").expect("id");
        let (_key, csr) = generate_key_and_csr(&id).expect("csr");
        let leaf = root
            .sign_csr(&id, &csr, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
            .expect("leaf");
        assert!(leaf.validity.not_after <= root.validity().not_after);
    }
}
