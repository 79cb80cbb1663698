//! What a `Link` must say before the controller acts on it, checked as plain data.
//!
//! [`validate`] turns a Link into a [`ValidLink`] or names the first problem as a
//! [`LinkProblem`], which carries the status condition it sets: a Link that does not validate
//! gets a condition and nothing else (no watchers start, existing mirrors are kept), so fixing
//! the Link is all an operator has to do.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use kube::core::Selector;
use mesh_api::crd::Link;
use mesh_trust::bundle::RootInfo;
use mesh_trust::{SpiffeId, TrustBundleSet, TrustDomain};

/// The longest DNS label, and so the longest name of a mirror or a cluster.
pub const MAX_LABEL: usize = 63;

/// A Link that passed every check, in the types the controller works with.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidLink {
    /// The Link's namespace (the mesh namespace).
    pub namespace: String,
    /// The Link's name.
    pub name: String,
    /// The remote cluster's name.
    pub cluster: String,
    /// The remote trust domain.
    pub trust_domain: TrustDomain,
    /// The remote cluster's DNS domain.
    pub cluster_domain: String,
    /// The remote gateway's addresses (IPs or host names).
    pub gateway_addresses: Vec<String>,
    /// The remote gateway's QUIC port.
    pub gateway_port: u16,
    /// The identity the remote gateway must present.
    pub gateway_identity: SpiffeId,
    /// The Secret in [`ValidLink::namespace`] holding the remote kubeconfig.
    pub credentials_secret: String,
    /// The remote roots the Link was made with (expired ones dropped).
    pub bundle: TrustBundleSet,
    /// The remote ConfigMap that publishes the remote bundle.
    pub bundle_config_map: String,
    /// Which remote Services are exported, as an API label selector.
    pub export_selector: Selector,
    /// Probe period.
    pub probe_period: Duration,
    /// Probe timeout.
    pub probe_timeout: Duration,
    /// Consecutive failures before the gateway counts as down.
    pub probe_failure_threshold: u32,
}

/// The condition types the controller sets on a Link.
pub mod condition {
    /// The spec is usable: names, addresses, identity.
    pub const VALID: &str = "Valid";
    /// The credentials Secret holds a usable kubeconfig.
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    /// The remote API answered the last list or watch.
    pub const REMOTE_REACHABLE: &str = "RemoteReachable";
    /// The remote trust bundle parses, belongs to the remote domain and has a root in date.
    pub const TRUST_BUNDLE_VALID: &str = "TrustBundleValid";
    /// The remote gateway answers probes.
    pub const GATEWAY_ALIVE: &str = "GatewayAlive";
    /// Every remote exported Service is mirrored.
    pub const MIRRORED: &str = "Mirrored";
    /// All of the above.
    pub const READY: &str = "Ready";
}

/// Why a Link is not acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkProblem {
    /// A field of the spec is unusable.
    #[error("spec.{field}: {reason}")]
    Spec {
        /// The field, as in the YAML.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A gateway address is neither an IP address nor a host name.
    #[error("spec.gateway.addresses: {0:?} is neither an IP address nor a DNS name")]
    GatewayAddress(String),
    /// The trust bundle does not parse or does not belong to the remote domain.
    #[error("spec.trustBundle: {0}")]
    TrustBundle(String),
    /// Every root of the trust bundle has expired.
    #[error(
        "spec.trustBundle: every root has expired (the last on {0}); link again with the remote cluster's current bundle"
    )]
    TrustBundleExpired(String),
}

impl LinkProblem {
    /// The condition this problem sets to `False`, and its reason.
    pub fn condition(&self) -> (&'static str, &'static str) {
        match self {
            Self::Spec { .. } => (condition::VALID, "InvalidSpec"),
            Self::GatewayAddress(_) => (condition::VALID, "InvalidGatewayAddress"),
            Self::TrustBundle(_) => (condition::TRUST_BUNDLE_VALID, "InvalidTrustBundle"),
            Self::TrustBundleExpired(_) => (condition::TRUST_BUNDLE_VALID, "TrustBundleExpired"),
        }
    }
}

/// Whether `name` is a DNS-1123 label: lower-case letters, digits and `-`, at most 63,
/// starting and ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a DNS-1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A bundle's roots that are in date at `now`, or why there are none.
///
/// # Errors
///
/// The PEM does not parse, holds no root, a root is not a CA of `domain`, or every root has
/// expired.
pub fn parse_bundle(
    domain: &TrustDomain,
    pem: &str,
    now: SystemTime,
) -> Result<(TrustBundleSet, Vec<RootInfo>), LinkProblem> {
    let mut set = TrustBundleSet::new();
    let added = set
        .insert_pem(domain, pem.as_bytes())
        .map_err(|e| LinkProblem::TrustBundle(e.to_string()))?;
    if added == 0 {
        return Err(LinkProblem::TrustBundle(format!(
            "no root certificate for trust domain {domain}"
        )));
    }
    let infos = set.root_infos();
    let expired = set.expired_roots(now);
    if expired.len() == infos.len() {
        let last = infos
            .iter()
            .map(|r| r.not_after)
            .max()
            .map(mesh_trust::x509::rfc3339)
            .unwrap_or_default();
        return Err(LinkProblem::TrustBundleExpired(last));
    }
    if !expired.is_empty() {
        // Rotation leftovers: keep only the roots that can still vouch for anyone.
        let mut current = TrustBundleSet::new();
        for der in set.roots(domain) {
            let in_date = mesh_trust::x509::parse(&der).is_ok_and(|info| info.not_after > now);
            if in_date {
                current
                    .insert(domain, &der)
                    .map_err(|e| LinkProblem::TrustBundle(e.to_string()))?;
            }
        }
        set = current;
    }
    Ok((set, infos))
}

/// Checks `link` against this cluster (`own_cluster`, `own_domain`) at `now`.
///
/// # Errors
///
/// The first problem found, with the condition it sets.
pub fn validate(
    link: &Link,
    own_cluster: &str,
    own_domain: &TrustDomain,
    now: SystemTime,
) -> Result<ValidLink, LinkProblem> {
    validate_with(link, own_cluster, own_domain, now, None)
}

/// [`validate`], for a Link whose remote bundle has been kept current from the remote
/// cluster: once the roots the Link was made with have expired (the remote rotated), `current`
/// (the last good bundle the remote published) stands in for them, so a rotation never needs a
/// new Link.
///
/// # Errors
///
/// The first problem found, with the condition it sets.
pub fn validate_with(
    link: &Link,
    own_cluster: &str,
    own_domain: &TrustDomain,
    now: SystemTime,
    current: Option<&TrustBundleSet>,
) -> Result<ValidLink, LinkProblem> {
    let spec = &link.spec;
    let bad = |field: &'static str, reason: String| LinkProblem::Spec { field, reason };
    if !is_dns_label(&spec.cluster_name) {
        return Err(bad(
            "clusterName",
            format!(
                "{:?} is not a DNS label (lower-case letters, digits and '-', at most 63)",
                spec.cluster_name
            ),
        ));
    }
    if spec.cluster_name == own_cluster {
        return Err(bad(
            "clusterName",
            format!(
                "{own_cluster:?} is this cluster's own name; a cluster is not linked to itself"
            ),
        ));
    }
    let trust_domain =
        TrustDomain::new(&spec.trust_domain).map_err(|e| bad("trustDomain", e.to_string()))?;
    if &trust_domain == own_domain {
        return Err(bad(
            "trustDomain",
            format!(
                "{trust_domain} is this cluster's own trust domain; linked clusters keep their own"
            ),
        ));
    }
    if !is_dns_subdomain(&spec.cluster_domain) {
        return Err(bad(
            "clusterDomain",
            format!("{:?} is not a DNS name", spec.cluster_domain),
        ));
    }
    if spec.gateway.addresses.is_empty() {
        return Err(bad(
            "gateway.addresses",
            "no address: give the remote gateway's IP addresses or host name".into(),
        ));
    }
    for address in &spec.gateway.addresses {
        if address.parse::<IpAddr>().is_err() && !is_dns_subdomain(address) {
            return Err(LinkProblem::GatewayAddress(address.clone()));
        }
    }
    if spec.gateway.port == 0 {
        return Err(bad("gateway.port", "port 0 cannot be dialled".into()));
    }
    let gateway_identity = SpiffeId::parse(&spec.gateway.identity)
        .map_err(|e| bad("gateway.identity", e.to_string()))?;
    if gateway_identity.trust_domain() != trust_domain {
        return Err(bad(
            "gateway.identity",
            format!("{gateway_identity} is outside the link's trust domain {trust_domain}"),
        ));
    }
    if !is_dns_subdomain(&spec.credentials_secret) {
        return Err(bad(
            "credentialsSecret",
            format!("{:?} is not a Secret name", spec.credentials_secret),
        ));
    }
    if !is_dns_subdomain(&spec.trust_bundle_config_map) {
        return Err(bad(
            "trustBundleConfigMap",
            format!("{:?} is not a ConfigMap name", spec.trust_bundle_config_map),
        ));
    }
    let export_selector = Selector::try_from(spec.export_selector.clone())
        .map_err(|e| bad("exportSelector", e.to_string()))?;
    let probe = &spec.probe;
    if probe.period_seconds == 0 || probe.timeout_seconds == 0 || probe.failure_threshold == 0 {
        return Err(bad(
            "probe",
            "periodSeconds, timeoutSeconds and failureThreshold must be at least 1".into(),
        ));
    }
    let bundle = match (
        parse_bundle(&trust_domain, &spec.trust_bundle, now),
        current,
    ) {
        (Ok((bundle, _)), _) => bundle,
        (Err(LinkProblem::TrustBundleExpired(_)), Some(current))
            if current.expired_roots(now).len() < current.root_infos().len() =>
        {
            current.clone()
        }
        (Err(problem), _) => return Err(problem),
    };
    Ok(ValidLink {
        namespace: link.namespace().unwrap_or_default(),
        name: link.name_any(),
        cluster: spec.cluster_name.clone(),
        trust_domain,
        cluster_domain: spec.cluster_domain.clone(),
        gateway_addresses: spec.gateway.addresses.clone(),
        gateway_port: spec.gateway.port,
        gateway_identity,
        credentials_secret: spec.credentials_secret.clone(),
        bundle,
        bundle_config_map: spec.trust_bundle_config_map.clone(),
        export_selector,
        probe_period: Duration::from_secs(u64::from(probe.period_seconds)),
        probe_timeout: Duration::from_secs(u64::from(probe.timeout_seconds)),
        probe_failure_threshold: probe.failure_threshold,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_api::crd::{LinkGateway, LinkProbe, LinkSpec};
    use mesh_trust::ca::{CertificateAuthority, Validity};

    fn root_pem(domain: &TrustDomain, validity: Validity) -> String {
        CertificateAuthority::create_root_with(domain, validity)
            .unwrap()
            .certificate_pem()
    }

    fn link(pem: &str) -> Link {
        let mut link = Link::new(
            "east",
            LinkSpec {
                cluster_name: "east".into(),
                trust_domain: "east.local".into(),
                cluster_domain: "cluster.local".into(),
                gateway: LinkGateway {
                    addresses: vec!["10.1.0.5".into(), "gw.east.example.com".into()],
                    port: 4180,
                    identity: "spiffe://east.local/ns/mesh/sa/mesh-gateway".into(),
                },
                credentials_secret: "east-credentials".into(),
                trust_bundle: pem.into(),
                trust_bundle_config_map: "mesh-trust-bundle".into(),
                export_selector: Default::default(),
                probe: LinkProbe::default(),
            },
        );
        link.metadata.namespace = Some("mesh".into());
        link
    }

    fn west() -> TrustDomain {
        TrustDomain::new("west.local").unwrap()
    }

    fn east() -> TrustDomain {
        TrustDomain::new("east.local").unwrap()
    }

    #[test]
    fn a_good_link_validates() {
        let pem = root_pem(&east(), Validity::starting_now(Duration::from_secs(3600)));
        let valid = validate(&link(&pem), "west", &west(), SystemTime::now()).unwrap();
        assert_eq!(valid.cluster, "east");
        assert_eq!(valid.namespace, "mesh");
        assert_eq!(valid.gateway_addresses.len(), 2);
        assert_eq!(valid.bundle.root_infos().len(), 1);
        assert_eq!(valid.probe_period, Duration::from_secs(3));
    }

    #[test]
    fn every_bad_field_is_named_with_its_condition() {
        let pem = root_pem(&east(), Validity::starting_now(Duration::from_secs(3600)));
        let now = SystemTime::now();
        let check = |change: &dyn Fn(&mut Link), field: &str, cond: (&str, &str)| {
            let mut l = link(&pem);
            change(&mut l);
            let problem = validate(&l, "west", &west(), now).unwrap_err();
            assert!(problem.to_string().contains(field), "{problem}");
            assert_eq!(problem.condition(), cond, "{problem}");
        };
        let spec = (condition::VALID, "InvalidSpec");
        check(
            &|l| l.spec.cluster_name = "East_1".into(),
            "clusterName",
            spec,
        );
        check(
            &|l| l.spec.cluster_name = "west".into(),
            "clusterName",
            spec,
        );
        check(
            &|l| l.spec.trust_domain = "WEST!".into(),
            "trustDomain",
            spec,
        );
        check(
            &|l| l.spec.trust_domain = "west.local".into(),
            "trustDomain",
            spec,
        );
        check(
            &|l| l.spec.gateway.addresses.clear(),
            "gateway.addresses",
            spec,
        );
        check(
            &|l| l.spec.gateway.addresses = vec!["not an address!".into()],
            "gateway.addresses",
            (condition::VALID, "InvalidGatewayAddress"),
        );
        check(&|l| l.spec.gateway.port = 0, "gateway.port", spec);
        check(
            &|l| l.spec.gateway.identity = "spiffe://other.local/ns/mesh/sa/mesh-gateway".into(),
            "gateway.identity",
            spec,
        );
        check(
            &|l| l.spec.credentials_secret = String::new(),
            "credentialsSecret",
            spec,
        );
        check(&|l| l.spec.probe.period_seconds = 0, "probe", spec);
        let bundle = (condition::TRUST_BUNDLE_VALID, "InvalidTrustBundle");
        check(
            &|l| l.spec.trust_bundle = "garbage".into(),
            "trustBundle",
            bundle,
        );
        check(
            &|l| l.spec.trust_bundle = String::new(),
            "trustBundle",
            bundle,
        );
        // A root of another domain is not a root of east.
        let other = root_pem(
            &TrustDomain::new("other.local").unwrap(),
            Validity::starting_now(Duration::from_secs(3600)),
        );
        check(
            &|l| l.spec.trust_bundle = other.clone(),
            "trustBundle",
            bundle,
        );
    }

    #[test]
    fn an_expired_bundle_is_refused_and_expired_rotation_leftovers_are_dropped() {
        let now = SystemTime::now();
        let old = Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        };
        let expired = root_pem(&east(), old);
        let problem = validate(&link(&expired), "west", &west(), now).unwrap_err();
        assert_eq!(
            problem.condition(),
            (condition::TRUST_BUNDLE_VALID, "TrustBundleExpired")
        );
        let current = root_pem(&east(), Validity::starting_now(Duration::from_secs(3600)));
        let both = format!("{expired}{current}");
        let valid = validate(&link(&both), "west", &west(), now).unwrap();
        assert_eq!(valid.bundle.root_infos().len(), 1);
    }

    #[test]
    fn an_expired_link_bundle_is_replaced_by_the_current_remote_one() {
        let now = SystemTime::now();
        let old = Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        };
        let expired = root_pem(&east(), old);
        let rotated = root_pem(&east(), Validity::starting_now(Duration::from_secs(3600)));
        let (current, _) = parse_bundle(&east(), &rotated, now).unwrap();
        let valid = validate_with(&link(&expired), "west", &west(), now, Some(&current)).unwrap();
        assert_eq!(valid.bundle, current);
        // Without a current bundle, or with one that has expired too, it is refused.
        assert!(validate_with(&link(&expired), "west", &west(), now, None).is_err());
        let mut stale = TrustBundleSet::new();
        stale.insert_pem(&east(), expired.as_bytes()).unwrap();
        assert!(validate_with(&link(&expired), "west", &west(), now, Some(&stale)).is_err());
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_label("east-1"));
        assert!(!is_dns_label("-east"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("cluster.local"));
        assert!(!is_dns_subdomain("cluster..local"));
    }
}
