//! SPIFFE IDs and trust domains, parsed and validated per the SPIFFE ID specification.
//!
//! A workload identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. Parsing is
//! strict because identities are compared byte for byte when authorizing peers: two spellings of one
//! identity must not exist, so percent-encoding, dot segments, empty segments, upper-case trust
//! domains, ports, user info, queries and fragments are all refused with an error that names them.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE ID accepted, in bytes (the specification's limit for URIs).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a SPIFFE ID or trust domain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is {len} bytes long; at most {MAX_SPIFFE_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("SPIFFE ID must start with \"spiffe://\" (lower case)")]
    WrongScheme,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong { len: usize },
    #[error("trust domain must not contain a port")]
    Port,
    #[error("trust domain must not contain user info (\"@\")")]
    UserInfo,
    #[error(
        "trust domain contains {found:?}; only lower-case letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar { found: char },
    #[error("SPIFFE ID must not contain a query (\"?\")")]
    Query,
    #[error("SPIFFE ID must not contain a fragment (\"#\")")]
    Fragment,
    #[error("SPIFFE ID must not contain percent-encoded characters")]
    PercentEncoding,
    #[error("SPIFFE ID path has an empty segment (\"//\" or a trailing \"/\")")]
    EmptySegment,
    #[error("SPIFFE ID path has a \".\" or \"..\" segment")]
    DotSegment,
    #[error("expected a trust domain, but the SPIFFE ID has a path")]
    NotATrustDomain,
    #[error(
        "SPIFFE ID path contains {found:?}; only letters, digits, '.', '-' and '_' are allowed"
    )]
    PathChar { found: char },
}

/// A trust domain: the name of one cluster's identity namespace (`west`, `prod.example.com`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

/// A validated SPIFFE ID.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    // The whole ID, kept as given (it is already canonical once validated).
    uri: String,
    // Byte offset where the path starts (equal to uri.len() for a trust domain ID).
    path_start: usize,
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Validates a bare trust domain name (`west`), or accepts a trust domain ID (`spiffe://west`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.starts_with(SCHEME_PREFIX) {
            let id = SpiffeId::parse(name)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::NotATrustDomain);
            }
            return Ok(id.trust_domain());
        }
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, as carried by its CA certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME_PREFIX}{}", self.0),
            path_start: SCHEME_PREFIX.len() + self.0.len(),
        }
    }

    /// The mesh workload identity of a service account in this trust domain.
    pub fn workload(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        // A '/' would make a valid ID that is not of the workload form.
        if namespace.contains('/') || service_account.contains('/') {
            return Err(SpiffeIdError::PathChar { found: '/' });
        }
        SpiffeId::parse(&format!(
            "{SCHEME_PREFIX}{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        let rest = s
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        // Queries and fragments are named before anything else so that the error says what the
        // caller actually wrote, not that a '?' is a bad character somewhere.
        if s.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if s.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(domain)?;
        validate_path(path)?;
        Ok(Self {
            uri: s.to_owned(),
            path_start: SCHEME_PREFIX.len() + domain.len(),
        })
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.uri[SCHEME_PREFIX.len()..self.path_start].to_owned())
    }

    /// The trust domain name, without allocating.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len()..self.path_start]
    }

    /// The path, with its leading `/`; empty for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The namespace and service account, when the ID has the mesh's workload form
    /// `/ns/<namespace>/sa/<service-account>`.
    pub fn workload(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: domain.len() });
    }
    if domain.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if domain.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if domain.contains('%') {
        return Err(SpiffeIdError::PercentEncoding);
    }
    match domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(found) => Err(SpiffeIdError::TrustDomainChar { found }),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if segment.contains('%') {
            return Err(SpiffeIdError::PercentEncoding);
        }
        if let Some(found) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::PathChar { found });
        }
    }
    Ok(())
}

/// Fuzzing entry point: parsing never panics, and a parsed ID prints back to itself.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        let again = SpiffeId::parse(id.as_str());
        assert_eq!(
            again.as_ref(),
            Ok(&id),
            "a parsed SPIFFE ID must reparse to itself"
        );
        assert_eq!(
            id.trust_domain().id().as_str(),
            format!("spiffe://{}", id.trust_domain_str())
        );
    }
    let _ = TrustDomain::new(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_identity() {
        let id = SpiffeId::parse("spiffe://west/ns/default/sa/web").expect("valid");
        assert_eq!(id.trust_domain().as_str(), "west");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.workload(), Some(("default", "web")));
        assert_eq!(id.to_string(), "spiffe://west/ns/default/sa/web");
    }

    #[test]
    fn trust_domain_id_has_empty_path() {
        let id = SpiffeId::parse("spiffe://prod.example-1_a").expect("valid");
        assert_eq!(id.path(), "");
        assert_eq!(id.workload(), None);
        assert_eq!(
            TrustDomain::new("spiffe://west").expect("td").as_str(),
            "west"
        );
        assert_eq!(
            TrustDomain::new("west").expect("td").id().as_str(),
            "spiffe://west"
        );
    }

    #[test]
    fn non_workload_paths_are_valid_ids_but_not_workloads() {
        let id = SpiffeId::parse("spiffe://west/gateway").expect("valid");
        assert_eq!(id.workload(), None);
        let id = SpiffeId::parse("spiffe://west/ns/a/sa/b/extra").expect("valid");
        assert_eq!(id.workload(), None);
    }

    #[test]
    fn refuses_bad_ids_with_named_reasons() {
        use SpiffeIdError::*;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://west/ns/a/sa/b", WrongScheme),
            ("SPIFFE://west/ns/a", WrongScheme),
            ("spiffe:/west", WrongScheme),
            ("spiffe:///ns/a", EmptyTrustDomain),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe://West/ns/a", TrustDomainChar { found: 'W' }),
            ("spiffe://we st", TrustDomainChar { found: ' ' }),
            ("spiffe://west:443/ns/a", Port),
            ("spiffe://user@west/ns/a", UserInfo),
            ("spiffe://west/ns/a?x=1", Query),
            ("spiffe://west/ns/a#frag", Fragment),
            ("spiffe://west/ns/%41", PercentEncoding),
            ("spiffe://we%41st/ns", PercentEncoding),
            ("spiffe://west/ns//a", EmptySegment),
            ("spiffe://west/ns/a/", EmptySegment),
            ("spiffe://west/", EmptySegment),
            ("spiffe://west/ns/./a", DotSegment),
            ("spiffe://west/ns/../a", DotSegment),
            ("spiffe://west/ns/a b", PathChar { found: ' ' }),
            ("spiffe://west/ns/é", PathChar { found: 'é' }),
        ];
        for (input, want) in cases {
            assert_eq!(
                SpiffeId::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn refuses_over_long_ids_and_domains() {
        let long_path = format!("spiffe://west/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(
            SpiffeId::parse(&long_path),
            Err(SpiffeIdError::TooLong { .. })
        ));
        let long_domain = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        assert!(matches!(
            SpiffeId::parse(&long_domain),
            Err(SpiffeIdError::TrustDomainTooLong { .. })
        ));
        let just_fits = format!("spiffe://{}", "a".repeat(MAX_TRUST_DOMAIN_LEN));
        assert!(SpiffeId::parse(&just_fits).is_ok());
    }

    #[test]
    fn trust_domain_refuses_workload_ids_and_bad_names() {
        assert_eq!(
            TrustDomain::new("spiffe://west/ns/a/sa/b"),
            Err(SpiffeIdError::NotATrustDomain)
        );
        assert_eq!(TrustDomain::new(""), Err(SpiffeIdError::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::new("East"),
            Err(SpiffeIdError::TrustDomainChar { found: 'E' })
        );
    }

    #[test]
    fn workload_constructor_validates_segments() {
        let td = TrustDomain::new("west").expect("td");
        assert_eq!(
            td.workload("default", "web").expect("valid").as_str(),
            "spiffe://west/ns/default/sa/web"
        );
        assert!(td.workload("", "web").is_err());
        assert_eq!(
            td.workload("a/b", "web"),
            Err(SpiffeIdError::PathChar { found: '/' })
        );
        assert!(td.workload("..", "web").is_err());
    }

    #[test]
    fn fuzz_entry_survives_hostile_seeds() {
        for seed in [
            &b""[..],
            b"spiffe://",
            b"spiffe://a/b/../c",
            b"\xff\xfe",
            b"spiffe://a/%zz",
            b"spiffe://a.b-c_d/e.f/g",
        ] {
            fuzz_parse(seed);
        }
    }
}
