//! Certificate inspection with x509-parser: identity, validity window, issuer, fingerprint, key type.
//!
//! Used by the CLI's `mesh trust inspect`, by the CA when it loads its own certificate, and by the
//! verifiers to find the SPIFFE ID a peer claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use x509_parser::extensions::GeneralName;

use crate::ca::Validity;
use crate::spiffe::SpiffeId;

/// What a certificate says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// Every URI SAN, as written.
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    /// The URI SANs that are valid SPIFFE IDs.
    #[serde(skip)]
    pub spiffe_ids: Vec<SpiffeId>,
    pub serial: String,
    #[serde(serialize_with = "serialize_rfc3339")]
    pub not_before: SystemTime,
    #[serde(serialize_with = "serialize_rfc3339")]
    pub not_after: SystemTime,
    #[serde(skip)]
    pub validity: Validity,
    pub is_ca: bool,
    /// The basicConstraints path length limit of a CA.
    pub path_len: Option<u32>,
    /// Subject and issuer are the same name: a root.
    pub self_issued: bool,
    pub key_type: String,
    /// SHA-256 of the DER certificate, lower-case hex with colons.
    pub fingerprint_sha256: String,
    /// The SubjectPublicKeyInfo DER.
    #[serde(skip)]
    pub spki_der: Vec<u8>,
}

impl CertificateInfo {
    /// The single SPIFFE ID of an X509-SVID, if the certificate has exactly one URI SAN and it is
    /// a valid SPIFFE ID.
    pub fn svid_identity(&self) -> Option<&SpiffeId> {
        match (self.uris.len(), self.spiffe_ids.as_slice()) {
            (1, [id]) => Some(id),
            _ => None,
        }
    }
}

/// Parses one DER certificate. The error is x509-parser's reason, as text.
pub fn parse(der: &[u8]) -> Result<CertificateInfo, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        ));
    }
    let (uris, dns_names) = sans(&cert);
    let spiffe_ids = uris
        .iter()
        .filter_map(|u| SpiffeId::parse(u).ok())
        .collect();
    let (is_ca, path_len) = match cert.basic_constraints() {
        Ok(Some(bc)) => (bc.value.ca, bc.value.path_len_constraint),
        _ => (false, None),
    };
    let not_before = to_system_time(cert.validity().not_before.timestamp());
    let not_after = to_system_time(cert.validity().not_after.timestamp());
    let spki = cert.public_key();
    let key_type = spki_key_type(spki);
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        uris,
        dns_names,
        spiffe_ids,
        serial: cert.raw_serial_as_string(),
        not_before,
        not_after,
        validity: Validity {
            not_before,
            not_after,
        },
        is_ca,
        path_len,
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        key_type,
        fingerprint_sha256: fingerprint_sha256(der),
        spki_der: spki.raw.to_vec(),
    })
}

/// Whether a certificate's signature verifies with its own public key.
pub fn is_self_signed(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.verify_signature(None).is_ok())
        .unwrap_or(false)
}

/// Only the URI SANs of a certificate: what a handshake needs, without the rest of [`parse`].
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(sans(&cert).0)
}

/// The URI and DNS names of a certificate's subjectAltName.
fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    (uris, dns_names)
}

/// A readable key type of a SubjectPublicKeyInfo: "ECDSA P-256", "RSA 2048", ...
pub(crate) fn spki_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() {
        return format!("RSA {}", rsa.key_size());
    }
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    key_type_name(&key_oid, curve.as_deref())
}

/// SHA-256 of `der`, lower-case hex with colons (as `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A readable name for a SubjectPublicKeyInfo algorithm (and curve, for EC keys).
pub(crate) fn key_type_name(key_oid: &str, curve: Option<&str>) -> String {
    match (key_oid, curve) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "ECDSA P-256".into(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "ECDSA P-384".into(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => "ECDSA P-521".into(),
        ("1.2.840.10045.2.1", other) => format!("ECDSA (curve {})", other.unwrap_or("unknown")),
        ("1.2.840.113549.1.1.1", _) => "RSA".into(),
        ("1.3.101.112", _) => "Ed25519".into(),
        (oid, _) => format!("unknown ({oid})"),
    }
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("@{secs}"),
    }
}

fn serialize_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_fingerprints() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        let fp = fingerprint_sha256(b"");
        assert!(fp.starts_with("e3:b0:c4:42"), "{fp}");
        assert_eq!(fp.len(), 95);
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"\x30\x80garbage").is_err());
        assert!(parse(b"").is_err());
    }
}
