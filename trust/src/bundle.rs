//! Trust bundle sets: which roots vouch for which trust domain.
//!
//! A [`TrustBundleSet`] maps each trust domain to its set of root certificates (several during a
//! rotation). It is stored and exchanged in two forms: PEM, one file per domain, and SPIFFE bundle
//! JSON (a JWK set whose `x509-svid` keys carry the root in `x5c`), which SPIRE and other SPIFFE
//! implementations read and write. Sets merge (the union of roots) and diff (what a newer set adds
//! and removes), which is what the trust bridge needs to apply and log bundle updates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::pem::{self, PemError};
use crate::spiffe::{SpiffeIdError, TrustDomain};
use crate::x509::{self, CertificateInfo};

/// The `use` of JWKs that carry X.509 roots, per the SPIFFE trust domain and bundle spec.
const USE_X509_SVID: &str = "x509-svid";

/// Why bundle input was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("root for trust domain {domain} is not valid X.509: {reason}")]
    BadCertificate { domain: TrustDomain, reason: String },
    #[error("certificate {fingerprint} added for trust domain {domain} is not a CA certificate")]
    NotACa {
        domain: TrustDomain,
        fingerprint: String,
    },
    #[error(
        "root {fingerprint} names trust domain {named} in its URI SAN but was given for {domain}"
    )]
    WrongDomain {
        domain: TrustDomain,
        named: String,
        fingerprint: String,
    },
    #[error(
        "root {fingerprint} has no spiffe:// URI SAN, so its trust domain is unknown; name it explicitly"
    )]
    UnknownDomain { fingerprint: String },
    #[error("not a SPIFFE bundle: {0}")]
    Json(#[from] serde_json::Error),
    #[error("SPIFFE bundle key #{index}: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("SPIFFE bundle for {domain} has no x509-svid keys")]
    NoX509Keys { domain: TrustDomain },
    #[error("invalid trust domain {name:?}: {source}")]
    BadDomain { name: String, source: SpiffeIdError },
    #[error("root {fingerprint} of {domain} has a {key_type} key, which a JWK here cannot carry")]
    UnsupportedKey {
        domain: TrustDomain,
        fingerprint: String,
        key_type: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Trust domain -> set of root certificates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustBundleSet {
    // Roots as DER bytes: ordered and deduplicated, so equal sets compare equal.
    domains: BTreeMap<TrustDomain, BTreeSet<Vec<u8>>>,
}

/// What a newer set adds to and removes from an older one, by root fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleDiff {
    pub added: BTreeMap<TrustDomain, Vec<String>>,
    pub removed: BTreeMap<TrustDomain, Vec<String>>,
}

/// A root that has passed the checks of [`TrustBundleSet::insert`].
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct RootInfo {
    pub domain: TrustDomain,
    pub fingerprint_sha256: String,
    pub not_after: SystemTime,
}

// === impl TrustBundleSet ===

impl TrustBundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a root to `domain`. The certificate must be a CA; if it names a trust domain in its
    /// URI SAN, it must be `domain` (a root of `east` is never filed under `west`).
    pub fn insert(
        &mut self,
        domain: &TrustDomain,
        root: &CertificateDer<'_>,
    ) -> Result<bool, BundleError> {
        check_root(domain, root)?;
        Ok(self
            .domains
            .entry(domain.clone())
            .or_default()
            .insert(root.as_ref().to_vec()))
    }

    /// Adds every root in a PEM input to `domain`; returns how many were new. All or nothing: a
    /// bad root leaves the set as it was.
    pub fn insert_pem(
        &mut self,
        domain: &TrustDomain,
        pem_input: &[u8],
    ) -> Result<usize, BundleError> {
        let roots = pem::parse_certificates(pem_input)?;
        for root in &roots {
            check_root(domain, root)?;
        }
        Ok(self.add_checked(domain, &roots))
    }

    // Adds roots that passed `check_root`; returns how many were new.
    fn add_checked(&mut self, domain: &TrustDomain, roots: &[CertificateDer<'_>]) -> usize {
        let entry = self.domains.entry(domain.clone()).or_default();
        roots
            .iter()
            .filter(|r| entry.insert(r.as_ref().to_vec()))
            .count()
    }

    /// Adds roots that name their own trust domain in a `spiffe://<domain>` URI SAN (as the roots
    /// `mesh trust create-root` makes do); returns how many were new.
    pub fn insert_self_describing_pem(&mut self, pem_input: &[u8]) -> Result<usize, BundleError> {
        let mut added = 0;
        for (index, root) in pem::parse_certificates(pem_input)?.into_iter().enumerate() {
            let info = x509::parse(&root)
                .map_err(|reason| BundleError::Pem(PemError::BadCertificate { index, reason }))?;
            let domain = match info.spiffe_ids.as_slice() {
                [id] if id.path().is_empty() => id.trust_domain(),
                _ => {
                    return Err(BundleError::UnknownDomain {
                        fingerprint: info.fingerprint_sha256,
                    });
                }
            };
            added += usize::from(self.insert(&domain, &root)?);
        }
        Ok(added)
    }

    /// Replaces the roots of one domain whole (what a bundle update from a linked cluster does).
    pub fn replace_domain<'a>(
        &mut self,
        domain: &TrustDomain,
        roots: impl IntoIterator<Item = &'a CertificateDer<'a>>,
    ) -> Result<(), BundleError> {
        let mut fresh = BTreeSet::new();
        for root in roots {
            check_root(domain, root)?;
            fresh.insert(root.as_ref().to_vec());
        }
        if fresh.is_empty() {
            self.domains.remove(domain);
        } else {
            self.domains.insert(domain.clone(), fresh);
        }
        Ok(())
    }

    pub fn remove_domain(&mut self, domain: &TrustDomain) -> bool {
        self.domains.remove(domain).is_some()
    }

    pub fn domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.domains.keys()
    }

    pub fn contains_domain(&self, domain: &TrustDomain) -> bool {
        self.domains.contains_key(domain)
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The roots of `domain` (none if the domain is unknown).
    pub fn roots<'a>(
        &'a self,
        domain: &TrustDomain,
    ) -> impl Iterator<Item = CertificateDer<'a>> + 'a {
        self.domains
            .get(domain)
            .into_iter()
            .flatten()
            .map(|der| CertificateDer::from(der.as_slice()))
    }

    /// Every root with its domain, fingerprint and expiry.
    pub fn root_infos(&self) -> Vec<RootInfo> {
        let mut out = Vec::new();
        for (domain, roots) in &self.domains {
            for der in roots {
                // Roots were parsed on the way in, so this only skips on a broken invariant.
                if let Ok(info) = x509::parse(der) {
                    out.push(RootInfo {
                        domain: domain.clone(),
                        fingerprint_sha256: info.fingerprint_sha256,
                        not_after: info.not_after,
                    });
                }
            }
        }
        out
    }

    /// Roots that have expired at `now`.
    pub fn expired_roots(&self, now: SystemTime) -> Vec<RootInfo> {
        self.root_infos()
            .into_iter()
            .filter(|r| r.not_after <= now)
            .collect()
    }

    /// The union: every root of `other` is added to this set.
    pub fn merge(&mut self, other: &TrustBundleSet) {
        for (domain, roots) in &other.domains {
            self.domains
                .entry(domain.clone())
                .or_default()
                .extend(roots.iter().cloned());
        }
    }

    /// What `newer` adds to and removes from this set.
    pub fn diff(&self, newer: &TrustBundleSet) -> BundleDiff {
        let empty = BTreeSet::new();
        let mut diff = BundleDiff::default();
        let all: BTreeSet<&TrustDomain> = self.domains.keys().chain(newer.domains.keys()).collect();
        for domain in all {
            let old = self.domains.get(domain).unwrap_or(&empty);
            let new = newer.domains.get(domain).unwrap_or(&empty);
            let added: Vec<String> = new
                .difference(old)
                .map(|d| x509::fingerprint_sha256(d))
                .collect();
            let removed: Vec<String> = old
                .difference(new)
                .map(|d| x509::fingerprint_sha256(d))
                .collect();
            if !added.is_empty() {
                diff.added.insert(domain.clone(), added);
            }
            if !removed.is_empty() {
                diff.removed.insert(domain.clone(), removed);
            }
        }
        diff
    }

    // --- PEM ---

    /// The roots of one domain as PEM.
    pub fn to_pem(&self, domain: &TrustDomain) -> Option<String> {
        let roots = self.domains.get(domain)?;
        let ders: Vec<CertificateDer<'_>> = roots
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        Some(pem::encode_certificates(ders.iter()))
    }

    /// Writes `<domain>.pem` for every domain into `dir`.
    pub fn save_pem_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
        let mut written = Vec::new();
        for domain in self.domains.keys() {
            let path = dir.join(format!("{domain}.pem"));
            let body = self.to_pem(domain).unwrap_or_default();
            std::fs::write(&path, body).map_err(|source| BundleError::Io {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Reads every `<domain>.pem` file of `dir`.
    pub fn load_pem_dir(dir: &Path) -> Result<Self, BundleError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BundleError::Io { path, source }
        };
        let mut set = Self::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "pem"))
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let domain = TrustDomain::new(&name).map_err(|source| BundleError::BadDomain {
                name: name.clone(),
                source,
            })?;
            let body = std::fs::read(&path).map_err(io(&path))?;
            set.insert_pem(&domain, &body)?;
        }
        Ok(set)
    }

    // --- SPIFFE bundle JSON ---

    /// One domain's roots as a SPIFFE bundle document.
    pub fn to_spiffe_bundle(
        &self,
        domain: &TrustDomain,
        sequence: Option<u64>,
    ) -> Result<SpiffeBundle, BundleError> {
        let mut keys = Vec::new();
        for der in self.domains.get(domain).into_iter().flatten() {
            keys.push(jwk_for_root(domain, der)?);
        }
        Ok(SpiffeBundle {
            keys,
            spiffe_sequence: sequence,
            spiffe_refresh_hint: None,
        })
    }

    /// One domain's roots as SPIFFE bundle JSON.
    pub fn to_spiffe_json(&self, domain: &TrustDomain) -> Result<String, BundleError> {
        Ok(serde_json::to_string_pretty(
            &self.to_spiffe_bundle(domain, None)?,
        )?)
    }

    /// Adds the roots of a SPIFFE bundle document for `domain`; all or nothing.
    ///
    /// Per the SPIFFE trust domain and bundle spec (section 6.2), keys of other uses (`jwt-svid`)
    /// and `x509-svid` keys without a certificate are ignored, and of several certificates in
    /// `x5c` the first is the key's. A certificate that is present must be a valid root.
    pub fn insert_spiffe_json(
        &mut self,
        domain: &TrustDomain,
        json: &[u8],
    ) -> Result<usize, BundleError> {
        let doc: SpiffeBundle = serde_json::from_slice(json)?;
        let mut roots = Vec::new();
        for (index, key) in doc.keys.iter().enumerate() {
            if key.key_use.as_deref() != Some(USE_X509_SVID) {
                continue;
            }
            let Some(cert_b64) = key.x5c.as_deref().and_then(<[String]>::first) else {
                continue;
            };
            let der = STANDARD.decode(cert_b64).map_err(|e| BundleError::BadKey {
                index,
                reason: format!("x5c is not base64: {e}"),
            })?;
            let root = CertificateDer::from(der);
            check_root(domain, &root)?;
            roots.push(root);
        }
        if roots.is_empty() {
            return Err(BundleError::NoX509Keys {
                domain: domain.clone(),
            });
        }
        Ok(self.add_checked(domain, &roots))
    }

    /// The whole set as one JSON object, `{"<domain>": <SPIFFE bundle>, ...}`.
    pub fn to_spiffe_json_map(&self) -> Result<String, BundleError> {
        let mut map = BTreeMap::new();
        for domain in self.domains.keys() {
            map.insert(domain.as_str(), self.to_spiffe_bundle(domain, None)?);
        }
        Ok(serde_json::to_string_pretty(&map)?)
    }

    /// Reads the form written by [`Self::to_spiffe_json_map`].
    pub fn from_spiffe_json_map(json: &[u8]) -> Result<Self, BundleError> {
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json)?;
        let mut set = Self::new();
        for (name, doc) in map {
            let domain = TrustDomain::new(&name).map_err(|source| BundleError::BadDomain {
                name: name.clone(),
                source,
            })?;
            set.insert_spiffe_json(&domain, doc.to_string().as_bytes())?;
        }
        Ok(set)
    }
}

impl fmt::Debug for TrustBundleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.domains.iter().map(|(d, r)| (d.as_str(), r.len())))
            .finish()
    }
}

// === impl BundleDiff ===

impl BundleDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl fmt::Display for BundleDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (domain, fps) in &self.added {
            for fp in fps {
                writeln!(f, "+ {domain} {fp}")?;
            }
        }
        for (domain, fps) in &self.removed {
            for fp in fps {
                writeln!(f, "- {domain} {fp}")?;
            }
        }
        Ok(())
    }
}

/// A SPIFFE bundle document: a JWK set with SPIFFE's extra members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpiffeBundle {
    pub keys: Vec<Jwk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_refresh_hint: Option<u64>,
}

/// The JWK members a SPIFFE bundle uses. Unknown members are ignored on input.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Jwk {
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

fn check_root(
    domain: &TrustDomain,
    root: &CertificateDer<'_>,
) -> Result<CertificateInfo, BundleError> {
    let info = x509::parse(root).map_err(|reason| BundleError::BadCertificate {
        domain: domain.clone(),
        reason,
    })?;
    if !info.is_ca {
        return Err(BundleError::NotACa {
            domain: domain.clone(),
            fingerprint: info.fingerprint_sha256,
        });
    }
    if let Some(named) = info
        .spiffe_ids
        .iter()
        .find(|id| id.trust_domain_str() != domain.as_str())
    {
        return Err(BundleError::WrongDomain {
            domain: domain.clone(),
            named: named.trust_domain_str().to_owned(),
            fingerprint: info.fingerprint_sha256,
        });
    }
    Ok(info)
}

fn jwk_for_root(domain: &TrustDomain, der: &[u8]) -> Result<Jwk, BundleError> {
    use x509_parser::public_key::PublicKey;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| BundleError::BadCertificate {
            domain: domain.clone(),
            reason: e.to_string(),
        })?;
    let spki = cert.public_key();
    let key_type = x509::spki_key_type(spki);
    let unsupported = || BundleError::UnsupportedKey {
        domain: domain.clone(),
        fingerprint: x509::fingerprint_sha256(der),
        key_type: key_type.clone(),
    };
    let mut jwk = Jwk {
        key_use: Some(USE_X509_SVID.into()),
        x5c: Some(vec![STANDARD.encode(der)]),
        ..Jwk::default()
    };
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let (crv, coord_len) = match key_type.as_str() {
                "ECDSA P-256" => ("P-256", 32),
                "ECDSA P-384" => ("P-384", 48),
                "ECDSA P-521" => ("P-521", 66),
                _ => return Err(unsupported()),
            };
            // An uncompressed point: 0x04 || X || Y.
            let data = point.data();
            if data.len() != 1 + 2 * coord_len || data[0] != 0x04 {
                return Err(unsupported());
            }
            jwk.kty = Some("EC".into());
            jwk.crv = Some(crv.into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(&data[1..1 + coord_len]));
            jwk.y = Some(URL_SAFE_NO_PAD.encode(&data[1 + coord_len..]));
        }
        Ok(PublicKey::RSA(rsa)) => {
            jwk.kty = Some("RSA".into());
            jwk.n = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus)));
            jwk.e = Some(URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent)));
        }
        _ => return Err(unsupported()),
    }
    Ok(jwk)
}

fn strip_leading_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        if rest.is_empty() {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// Fuzzing entry point: bundle JSON never panics, and an accepted set survives a round trip.
#[doc(hidden)]
pub fn fuzz_spiffe_json(data: &[u8]) {
    let Ok(domain) = TrustDomain::new("fuzz") else {
        return;
    };
    let mut set = TrustBundleSet::new();
    if set.insert_spiffe_json(&domain, data).is_ok() {
        if let Ok(json) = set.to_spiffe_json(&domain) {
            let mut again = TrustBundleSet::new();
            let reparsed = again.insert_spiffe_json(&domain, json.as_bytes());
            assert!(reparsed.is_ok(), "a written bundle must read back");
            assert_eq!(again, set, "a bundle must survive a round trip");
        }
    }
    let _ = TrustBundleSet::from_spiffe_json_map(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertificateAuthority, DEFAULT_ROOT_LIFETIME};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).expect("trust domain")
    }

    fn root(name: &str) -> CertificateAuthority {
        CertificateAuthority::create_root(&td(name), DEFAULT_ROOT_LIFETIME).expect("root")
    }

    #[test]
    fn refuses_roots_of_another_domain_and_non_cas() {
        let east = root("east");
        let mut set = TrustBundleSet::new();
        let err = set
            .insert(&td("west"), east.certificate())
            .expect_err("wrong domain");
        assert!(
            err.to_string()
                .contains("names trust domain east in its URI SAN but was given for west"),
            "{err}"
        );

        let id = crate::SpiffeId::parse("spiffe://east/ns/a/sa/b").expect("id");
        let (_key, csr) = crate::ca::generate_key_and_csr(&id).expect("csr");
        let leaf = east
            .sign_csr(
                &id,
                &csr,
                crate::ca::Validity::starting_now(std::time::Duration::from_secs(60)),
            )
            .expect("leaf");
        let err = set
            .insert(&td("east"), &leaf.leaf)
            .expect_err("leaf is not a CA");
        assert!(matches!(err, BundleError::NotACa { .. }), "{err}");
        assert!(set.is_empty());
    }

    #[test]
    fn spiffe_json_round_trips_and_has_the_spec_shape() {
        let west = root("west");
        let mut set = TrustBundleSet::new();
        set.insert(&td("west"), west.certificate()).expect("insert");
        let json = set.to_spiffe_json(&td("west")).expect("json");
        let doc: serde_json::Value = serde_json::from_str(&json).expect("parse");
        let key = &doc["keys"][0];
        assert_eq!(key["use"], "x509-svid");
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["x"].as_str().map(str::len), Some(43)); // 32 bytes, base64url without padding
        assert_eq!(
            STANDARD
                .decode(key["x5c"][0].as_str().expect("x5c"))
                .expect("b64"),
            west.certificate().to_vec()
        );
        let mut back = TrustBundleSet::new();
        assert_eq!(
            back.insert_spiffe_json(&td("west"), json.as_bytes())
                .expect("read"),
            1
        );
        assert_eq!(back, set);
    }

    #[test]
    fn reads_spire_style_bundles_and_refuses_malformed_ones() {
        let west = root("west");
        let x5c = STANDARD.encode(west.certificate());
        // A JWT key and unknown members are skipped; the x509-svid key is read.
        let spire = format!(
            r#"{{"keys":[{{"use":"jwt-svid","kty":"EC","kid":"k1","crv":"P-256","x":"a","y":"b"}},
               {{"use":"x509-svid","kty":"EC","crv":"P-256","x":"a","y":"b","x5c":["{x5c}"],"extra":1}}],
               "spiffe_sequence":7,"spiffe_refresh_hint":300}}"#
        );
        let mut set = TrustBundleSet::new();
        assert_eq!(
            set.insert_spiffe_json(&td("west"), spire.as_bytes())
                .expect("read"),
            1
        );

        let cases: &[(&str, &str)] = &[
            ("not json", "not a SPIFFE bundle"),
            (r#"{"keys":[]}"#, "has no x509-svid keys"),
            (
                r#"{"keys":[{"use":"x509-svid","x5c":[]}]}"#,
                "has no x509-svid keys",
            ),
            (
                r#"{"keys":[{"use":"x509-svid","x5c":["!!"]}]}"#,
                "x5c is not base64",
            ),
            (
                r#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#,
                "is not valid X.509",
            ),
        ];
        for (input, want) in cases {
            let err = TrustBundleSet::new()
                .insert_spiffe_json(&td("west"), input.as_bytes())
                .expect_err(input);
            assert!(err.to_string().contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn follows_spec_6_2_and_is_all_or_nothing() {
        let (west1, west2) = (root("west"), root("west"));
        let (b1, b2) = (
            STANDARD.encode(west1.certificate()),
            STANDARD.encode(west2.certificate()),
        );
        // An x509-svid key without a certificate is ignored; of several, the first is the key's.
        let json = format!(
            r#"{{"keys":[{{"use":"x509-svid"}},{{"use":"x509-svid","x5c":[]}},{{"use":"x509-svid","x5c":["{b1}","{b2}"]}}]}}"#
        );
        let mut set = TrustBundleSet::new();
        assert_eq!(
            set.insert_spiffe_json(&td("west"), json.as_bytes())
                .expect("read"),
            1
        );
        assert_eq!(
            set.roots(&td("west")).next().map(|c| c.to_vec()),
            Some(west1.certificate().to_vec())
        );

        // One bad root in a document: nothing of it is added.
        let east = root("east");
        let bad = format!(
            r#"{{"keys":[{{"use":"x509-svid","x5c":["{b2}"]}},{{"use":"x509-svid","x5c":["{}"]}}]}}"#,
            STANDARD.encode(east.certificate())
        );
        let before = set.clone();
        assert!(set.insert_spiffe_json(&td("west"), bad.as_bytes()).is_err());
        assert_eq!(set, before);
        let pem = format!("{}{}", west2.certificate_pem(), east.certificate_pem());
        assert!(set.insert_pem(&td("west"), pem.as_bytes()).is_err());
        assert_eq!(set, before);
    }

    #[test]
    fn merges_diffs_and_round_trips_as_pem_files_and_json_maps() {
        let (west1, west2, east) = (root("west"), root("west"), root("east"));
        let mut old = TrustBundleSet::new();
        old.insert(&td("west"), west1.certificate())
            .expect("insert");
        let mut new = TrustBundleSet::new();
        new.insert(&td("west"), west2.certificate())
            .expect("insert");
        new.insert(&td("east"), east.certificate()).expect("insert");

        let diff = old.diff(&new);
        assert_eq!(diff.added.get(&td("east")).map(Vec::len), Some(1));
        assert_eq!(diff.added.get(&td("west")).map(Vec::len), Some(1));
        assert_eq!(diff.removed.get(&td("west")).map(Vec::len), Some(1));
        assert!(old.diff(&old).is_empty());

        let mut merged = old.clone();
        merged.merge(&new);
        assert_eq!(merged.roots(&td("west")).count(), 2);
        assert!(merged.diff(&new).added.is_empty());

        let dir = tempfile::tempdir().expect("tempdir");
        merged.save_pem_dir(dir.path()).expect("save");
        assert_eq!(
            TrustBundleSet::load_pem_dir(dir.path()).expect("load"),
            merged
        );

        let map = merged.to_spiffe_json_map().expect("map");
        assert_eq!(
            TrustBundleSet::from_spiffe_json_map(map.as_bytes()).expect("read"),
            merged
        );

        let mut described = TrustBundleSet::new();
        let pem = format!("{}{}", west1.certificate_pem(), east.certificate_pem());
        assert_eq!(
            described
                .insert_self_describing_pem(pem.as_bytes())
                .expect("pem"),
            2
        );
        assert_eq!(described.domains().count(), 2);

        merged
            .replace_domain(&td("west"), [west2.certificate()])
            .expect("replace");
        assert_eq!(merged.roots(&td("west")).count(), 1);
    }

    #[test]
    fn fuzz_entry_survives_hostile_seeds() {
        for seed in [
            &b"{}"[..],
            b"[]",
            b"{\"keys\":null}",
            b"{\"a\":{\"keys\":[]}}",
            b"\xff",
        ] {
            fuzz_spiffe_json(seed);
        }
    }
}
