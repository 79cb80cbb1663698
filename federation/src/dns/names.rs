//! What a query name means: the pure mapping from a DNS name to a mesh name.
//!
//! The server is authoritative for two zones (see [`Zones`]):
//!
//! | name | meaning |
//! |---|---|
//! | `<zone>` | the per-cluster zone's apex (SOA, NS) |
//! | `<cluster>.<zone>`, `svc.<cluster>.<zone>` | branches of one cluster |
//! | `<ns>.svc.<cluster>.<zone>` | the branch of one namespace in one cluster |
//! | `<svc>.<ns>.svc.<cluster>.<zone>` | Service `<svc>` as seen in `<cluster>` |
//! | `<hostname>.<svc>.<ns>.svc.<cluster>.<zone>` | one endpoint of a headless Service |
//! | `_<proto>.<svc>.<ns>.svc.<cluster>.<zone>` | the branch of the SRV names of one protocol |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<cluster>.<zone>` | SRV for a named port |
//! | `<clusterset zone>` | the clusterset zone's apex |
//! | `svc.<clusterset zone>`, `<ns>.svc.<clusterset zone>` | branches |
//! | `<svc>.<ns>.svc.<clusterset zone>` | the MCS clusterset name of `<svc>` |
//! | `_<proto>.<svc>.<ns>.svc.<clusterset zone>`, `_<port>._<proto>.…` | as above |
//!
//! Labels are compared without regard to ASCII case and come out lowercased (Kubernetes names
//! are lowercase). A label that cannot be part of a Kubernetes name (anything but ASCII letters,
//! digits and `-`, or a leading `_` where none belongs) and a name deeper than every form are
//! [`MeshName::Unknown`]: inside a zone, yet naming nothing. Whether a well-formed name exists
//! is for the data to say, not this module.
//!
//! The mapping is a plain function over names, so it is unit-tested and fuzzed without sockets.

use hickory_proto::ProtoError;
use hickory_proto::rr::Name;

/// The label between a namespace and the cluster (or clusterset zone), as in Kubernetes DNS.
const SVC: &[u8] = b"svc";

/// The two zones the DNS server is authoritative for, lowercased and fully qualified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zones {
    cluster: Name,
    clusterset: Name,
}

/// A zone the server cannot serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    /// The zone is not a valid DNS name.
    #[error(
        "DNS zone {zone:?} is not a valid domain name ({reason}); use a name such as mesh.local"
    )]
    Invalid {
        /// The zone as configured.
        zone: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The zone is the root, which would make the server answer for every name.
    #[error("DNS zone {0:?} is the root; the mesh DNS server only answers for its own zones")]
    Root(String),
    /// Both zones are the same name.
    #[error(
        "the per-cluster DNS zone and the clusterset DNS zone are both {0:?}; give them different names"
    )]
    Same(String),
}

/// Which of the two zones a name is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneKind {
    /// The per-cluster zone (`mesh.local` by default).
    Cluster,
    /// The MCS clusterset zone (`clusterset.local` by default).
    Clusterset,
}

/// Where a query name falls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// Outside both zones: the server refuses it.
    Outside,
    /// Inside one of the zones.
    Inside(ZoneKind, MeshName),
}

/// Which Service a name means: `<service>` in `<namespace>`, as seen from `scope`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    /// The Service's name as clients use it (the remote name for a mirror, not `<svc>-<cluster>`).
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Whose copy of the Service the name means.
    pub scope: Scope,
}

/// Whose copy of a Service a name means.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The copy in one cluster (the local Service, or a mirror of a remote one).
    Cluster(String),
    /// Every cluster's copy, local first (the MCS clusterset name).
    Clusterset,
}

/// The transport protocol of an SRV name (`_tcp`, `_udp`, `_sctp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `_tcp`
    Tcp,
    /// `_udp`
    Udp,
    /// `_sctp`
    Sctp,
}

/// A branch of a zone's tree: a name that owns no records but exists while names below it do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Branch {
    /// `<cluster>.<zone>` and `svc.<cluster>.<zone>`.
    Cluster(String),
    /// `svc.<clusterset zone>`.
    Clusterset,
    /// `<ns>.svc.<cluster>.<zone>` or `<ns>.svc.<clusterset zone>`.
    Namespace {
        /// The namespace.
        namespace: String,
        /// The cluster, or the clusterset.
        scope: Scope,
    },
    /// `_<proto>.<svc>.<ns>.svc.…`: the SRV names of one protocol of a Service.
    Protocol {
        /// The protocol.
        protocol: Protocol,
        /// The Service.
        service: ServiceName,
    },
}

/// What a name inside one of the zones means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshName {
    /// The zone's apex.
    Apex,
    /// A branch: no records of its own.
    Branch(Branch),
    /// A Service's address name.
    Service(ServiceName),
    /// One endpoint of a headless Service, by hostname (per-cluster zone only).
    Pod {
        /// The endpoint's hostname (or its dashed address when it has none).
        hostname: String,
        /// The Service.
        service: ServiceName,
    },
    /// SRV name of a named port.
    Port {
        /// The port's name, without the leading `_`.
        port: String,
        /// The port's protocol.
        protocol: Protocol,
        /// The Service.
        service: ServiceName,
    },
    /// Inside a zone, but no name of this shape can exist.
    Unknown,
}

// === impl Zones ===

impl Zones {
    /// Validates both zone names (`mesh.local`, `clusterset.local.`: the trailing dot is
    /// optional) and keeps them lowercased.
    ///
    /// # Errors
    ///
    /// When a zone is not a domain name, is the root, or both are the same name.
    pub fn new(cluster_zone: &str, clusterset_zone: &str) -> Result<Self, ZoneError> {
        let cluster = zone_name(cluster_zone)?;
        let clusterset = zone_name(clusterset_zone)?;
        if cluster == clusterset {
            return Err(ZoneError::Same(cluster.to_ascii()));
        }
        Ok(Self {
            cluster,
            clusterset,
        })
    }

    /// The per-cluster zone.
    pub fn cluster_zone(&self) -> &Name {
        &self.cluster
    }

    /// The clusterset zone.
    pub fn clusterset_zone(&self) -> &Name {
        &self.clusterset
    }

    /// The zone named by `kind`.
    pub fn zone(&self, kind: ZoneKind) -> &Name {
        match kind {
            ZoneKind::Cluster => &self.cluster,
            ZoneKind::Clusterset => &self.clusterset,
        }
    }

    /// Maps a name to its meaning. A name is taken as absolute whether or not it is marked
    /// fully qualified. When one zone lies inside the other, the deeper zone wins.
    pub fn classify(&self, name: &Name) -> Classified {
        let labels: Vec<&[u8]> = name.iter().collect();
        let (first, second) = if self.cluster.num_labels() >= self.clusterset.num_labels() {
            (ZoneKind::Cluster, ZoneKind::Clusterset)
        } else {
            (ZoneKind::Clusterset, ZoneKind::Cluster)
        };
        for kind in [first, second] {
            if let Some(rest) = strip_zone(&labels, self.zone(kind)) {
                let meaning = match kind {
                    ZoneKind::Cluster => cluster_name(rest),
                    ZoneKind::Clusterset => clusterset_name(rest),
                };
                return Classified::Inside(kind, meaning.unwrap_or(MeshName::Unknown));
            }
        }
        Classified::Outside
    }

    /// The canonical (lowercase, fully qualified) name of `meaning` in the zone `kind`: the
    /// inverse of [`Zones::classify`]. `None` for [`MeshName::Unknown`], for a pod name in the
    /// clusterset zone, for a scope that does not belong to `kind`, and when the name would be
    /// longer than DNS allows.
    pub fn name_of(&self, kind: ZoneKind, meaning: &MeshName) -> Option<Name> {
        let mut labels: Vec<String> = Vec::new();
        let scope_labels = |scope: &Scope, labels: &mut Vec<String>| -> Option<()> {
            match (kind, scope) {
                (ZoneKind::Cluster, Scope::Cluster(cluster)) => {
                    labels.push("svc".to_owned());
                    labels.push(cluster.clone());
                    Some(())
                }
                (ZoneKind::Clusterset, Scope::Clusterset) => {
                    labels.push("svc".to_owned());
                    Some(())
                }
                _ => None,
            }
        };
        let service_labels = |service: &ServiceName, labels: &mut Vec<String>| {
            labels.push(service.service.clone());
            labels.push(service.namespace.clone());
            scope_labels(&service.scope, labels)
        };
        match meaning {
            MeshName::Apex => {}
            MeshName::Unknown => return None,
            MeshName::Branch(Branch::Cluster(cluster)) => {
                if kind != ZoneKind::Cluster {
                    return None;
                }
                labels.push(cluster.clone());
            }
            MeshName::Branch(Branch::Clusterset) => {
                if kind != ZoneKind::Clusterset {
                    return None;
                }
                labels.push("svc".to_owned());
            }
            MeshName::Branch(Branch::Namespace { namespace, scope }) => {
                labels.push(namespace.clone());
                scope_labels(scope, &mut labels)?;
            }
            MeshName::Branch(Branch::Protocol { protocol, service }) => {
                labels.push(protocol.label().to_owned());
                service_labels(service, &mut labels)?;
            }
            MeshName::Service(service) => service_labels(service, &mut labels)?,
            MeshName::Pod { hostname, service } => {
                if kind != ZoneKind::Cluster {
                    return None;
                }
                labels.push(hostname.clone());
                service_labels(service, &mut labels)?;
            }
            MeshName::Port {
                port,
                protocol,
                service,
            } => {
                labels.push(format!("_{port}"));
                labels.push(protocol.label().to_owned());
                service_labels(service, &mut labels)?;
            }
        }
        let relative = Name::from_labels(labels.iter().map(String::as_bytes)).ok()?;
        relative.append_domain(self.zone(kind)).ok()
    }
}

/// Parses a configured zone.
fn zone_name(zone: &str) -> Result<Name, ZoneError> {
    let invalid = |reason: ProtoError| ZoneError::Invalid {
        zone: zone.to_owned(),
        reason: reason.to_string(),
    };
    let mut name = Name::from_ascii(zone).map_err(invalid)?;
    name.set_fqdn(true);
    if name.is_root() {
        return Err(ZoneError::Root(zone.to_owned()));
    }
    if let Some(label) = name.iter().find(|label| kubernetes_label(label).is_none()) {
        return Err(ZoneError::Invalid {
            zone: zone.to_owned(),
            reason: format!(
                "label {:?} is not made of letters, digits and '-'",
                String::from_utf8_lossy(label)
            ),
        });
    }
    Ok(name.to_lowercase())
}

/// The labels of `labels` above `zone` (most specific first), when `labels` ends with `zone`.
fn strip_zone<'a, 'n>(labels: &'a [&'n [u8]], zone: &Name) -> Option<&'a [&'n [u8]]> {
    let depth = usize::from(zone.num_labels());
    let split = labels.len().checked_sub(depth)?;
    let (rest, tail) = labels.split_at(split);
    tail.iter()
        .zip(zone.iter())
        .all(|(label, zone_label)| label.eq_ignore_ascii_case(zone_label))
        .then_some(rest)
}

/// A name in the per-cluster zone; `rest` is most specific first.
fn cluster_name(rest: &[&[u8]]) -> Option<MeshName> {
    let meaning = match rest {
        [] => MeshName::Apex,
        [cluster] => MeshName::Branch(Branch::Cluster(kubernetes_label(cluster)?)),
        [svc, cluster] if is_svc(svc) => {
            MeshName::Branch(Branch::Cluster(kubernetes_label(cluster)?))
        }
        [namespace, svc, cluster] if is_svc(svc) => MeshName::Branch(Branch::Namespace {
            namespace: kubernetes_label(namespace)?,
            scope: Scope::Cluster(kubernetes_label(cluster)?),
        }),
        [service, namespace, svc, cluster] if is_svc(svc) => {
            MeshName::Service(service_name(service, namespace, cluster_scope(cluster)?)?)
        }
        [first, service, namespace, svc, cluster] if is_svc(svc) => {
            let service = service_name(service, namespace, cluster_scope(cluster)?)?;
            if first.starts_with(b"_") {
                MeshName::Branch(Branch::Protocol {
                    protocol: Protocol::from_label(first)?,
                    service,
                })
            } else {
                MeshName::Pod {
                    hostname: kubernetes_label(first)?,
                    service,
                }
            }
        }
        [port, protocol, service, namespace, svc, cluster] if is_svc(svc) => MeshName::Port {
            port: port_label(port)?,
            protocol: Protocol::from_label(protocol)?,
            service: service_name(service, namespace, cluster_scope(cluster)?)?,
        },
        _ => return None,
    };
    Some(meaning)
}

/// A name in the clusterset zone; `rest` is most specific first.
fn clusterset_name(rest: &[&[u8]]) -> Option<MeshName> {
    let meaning = match rest {
        [] => MeshName::Apex,
        [svc] if is_svc(svc) => MeshName::Branch(Branch::Clusterset),
        [namespace, svc] if is_svc(svc) => MeshName::Branch(Branch::Namespace {
            namespace: kubernetes_label(namespace)?,
            scope: Scope::Clusterset,
        }),
        [service, namespace, svc] if is_svc(svc) => {
            MeshName::Service(service_name(service, namespace, Scope::Clusterset)?)
        }
        [protocol, service, namespace, svc] if is_svc(svc) => MeshName::Branch(Branch::Protocol {
            protocol: Protocol::from_label(protocol)?,
            service: service_name(service, namespace, Scope::Clusterset)?,
        }),
        [port, protocol, service, namespace, svc] if is_svc(svc) => MeshName::Port {
            port: port_label(port)?,
            protocol: Protocol::from_label(protocol)?,
            service: service_name(service, namespace, Scope::Clusterset)?,
        },
        _ => return None,
    };
    Some(meaning)
}

fn is_svc(label: &[u8]) -> bool {
    label.eq_ignore_ascii_case(SVC)
}

fn cluster_scope(cluster: &[u8]) -> Option<Scope> {
    kubernetes_label(cluster).map(Scope::Cluster)
}

fn service_name(service: &[u8], namespace: &[u8], scope: Scope) -> Option<ServiceName> {
    Some(ServiceName {
        service: kubernetes_label(service)?,
        namespace: kubernetes_label(namespace)?,
        scope,
    })
}

/// A label that can be (part of) a Kubernetes name: 1 to 63 ASCII letters, digits and `-`,
/// lowercased.
pub fn kubernetes_label(label: &[u8]) -> Option<String> {
    let valid = !label.is_empty()
        && label.len() <= 63
        && label
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-');
    // Every byte is ASCII, so this is the lowercase label as UTF-8.
    valid.then(|| {
        label
            .iter()
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect()
    })
}

/// `_<port name>`: the port name, lowercased.
fn port_label(label: &[u8]) -> Option<String> {
    kubernetes_label(label.strip_prefix(b"_")?)
}

// === impl Protocol ===

impl Protocol {
    /// `_tcp`, `_udp` or `_sctp`, any case.
    pub fn from_label(label: &[u8]) -> Option<Self> {
        [Self::Tcp, Self::Udp, Self::Sctp]
            .into_iter()
            .find(|protocol| label.eq_ignore_ascii_case(protocol.label().as_bytes()))
    }

    /// The SRV label: `_tcp`, `_udp`, `_sctp`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "_tcp",
            Self::Udp => "_udp",
            Self::Sctp => "_sctp",
        }
    }

    /// The protocol as a Service port spells it: `TCP`, `UDP`, `SCTP`.
    pub fn kubernetes(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn zones() -> Zones {
        Zones::new("mesh.local", "clusterset.local").unwrap()
    }

    fn classify(name: &str) -> Classified {
        zones().classify(&Name::from_ascii(name).unwrap())
    }

    fn inside(kind: ZoneKind, name: &str) -> MeshName {
        match classify(name) {
            Classified::Inside(k, meaning) if k == kind => meaning,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn service(service: &str, namespace: &str, scope: Scope) -> ServiceName {
        ServiceName {
            service: service.into(),
            namespace: namespace.into(),
            scope,
        }
    }

    fn east(svc: &str) -> ServiceName {
        service(svc, "prod", Scope::Cluster("east".into()))
    }

    #[test]
    fn per_cluster_forms() {
        let c = ZoneKind::Cluster;
        assert_eq!(inside(c, "mesh.local."), MeshName::Apex);
        assert_eq!(
            inside(c, "east.mesh.local."),
            MeshName::Branch(Branch::Cluster("east".into()))
        );
        assert_eq!(
            inside(c, "svc.east.mesh.local."),
            MeshName::Branch(Branch::Cluster("east".into()))
        );
        assert_eq!(
            inside(c, "prod.svc.east.mesh.local."),
            MeshName::Branch(Branch::Namespace {
                namespace: "prod".into(),
                scope: Scope::Cluster("east".into())
            })
        );
        assert_eq!(
            inside(c, "web.prod.svc.east.mesh.local."),
            MeshName::Service(east("web"))
        );
        assert_eq!(
            inside(c, "web-0.web.prod.svc.east.mesh.local."),
            MeshName::Pod {
                hostname: "web-0".into(),
                service: east("web")
            }
        );
        assert_eq!(
            inside(c, "_udp.web.prod.svc.east.mesh.local."),
            MeshName::Branch(Branch::Protocol {
                protocol: Protocol::Udp,
                service: east("web")
            })
        );
        assert_eq!(
            inside(c, "_http._tcp.web.prod.svc.east.mesh.local."),
            MeshName::Port {
                port: "http".into(),
                protocol: Protocol::Tcp,
                service: east("web")
            }
        );
        assert_eq!(
            inside(c, "_dns._sctp.web.prod.svc.east.mesh.local."),
            MeshName::Port {
                port: "dns".into(),
                protocol: Protocol::Sctp,
                service: east("web")
            }
        );
    }

    #[test]
    fn clusterset_forms() {
        let s = ZoneKind::Clusterset;
        let web = || service("web", "prod", Scope::Clusterset);
        assert_eq!(inside(s, "clusterset.local."), MeshName::Apex);
        assert_eq!(
            inside(s, "svc.clusterset.local."),
            MeshName::Branch(Branch::Clusterset)
        );
        assert_eq!(
            inside(s, "prod.svc.clusterset.local."),
            MeshName::Branch(Branch::Namespace {
                namespace: "prod".into(),
                scope: Scope::Clusterset
            })
        );
        assert_eq!(
            inside(s, "web.prod.svc.clusterset.local."),
            MeshName::Service(web())
        );
        assert_eq!(
            inside(s, "_tcp.web.prod.svc.clusterset.local."),
            MeshName::Branch(Branch::Protocol {
                protocol: Protocol::Tcp,
                service: web()
            })
        );
        assert_eq!(
            inside(s, "_grpc._tcp.web.prod.svc.clusterset.local."),
            MeshName::Port {
                port: "grpc".into(),
                protocol: Protocol::Tcp,
                service: web()
            }
        );
        // Per-pod names exist only per cluster.
        assert_eq!(
            inside(s, "web-0.web.prod.svc.clusterset.local."),
            MeshName::Unknown
        );
        assert_eq!(inside(s, "prod.clusterset.local."), MeshName::Unknown);
    }

    #[test]
    fn case_is_ignored_and_lowercased() {
        assert_eq!(
            inside(
                ZoneKind::Cluster,
                "_HTTP._Tcp.WeB.PROD.Svc.EAST.Mesh.LOCAL."
            ),
            MeshName::Port {
                port: "http".into(),
                protocol: Protocol::Tcp,
                service: east("web")
            }
        );
        assert_eq!(
            inside(ZoneKind::Clusterset, "Web.Prod.SVC.ClusterSet.Local."),
            MeshName::Service(service("web", "prod", Scope::Clusterset))
        );
        let upper = Zones::new("MESH.Local", "ClusterSet.LOCAL.").unwrap();
        assert_eq!(upper, zones());
    }

    #[test]
    fn trailing_dot_is_optional() {
        assert_eq!(
            classify("web.prod.svc.east.mesh.local"),
            classify("web.prod.svc.east.mesh.local.")
        );
        assert_eq!(
            Zones::new("mesh.local.", "clusterset.local").unwrap(),
            zones()
        );
    }

    #[test]
    fn outside_both_zones() {
        for name in [
            ".",
            "local.",
            "example.com.",
            "web.prod.svc.cluster.local.",
            "mesh.local.evil.com.",
            "xmesh.local.",
            "clusterset.local.mesh.",
        ] {
            assert_eq!(classify(name), Classified::Outside, "{name}");
        }
    }

    #[test]
    fn too_many_labels_and_misplaced_labels_name_nothing() {
        let c = ZoneKind::Cluster;
        for name in [
            "a._http._tcp.web.prod.svc.east.mesh.local.",
            "a.b.c.d.e.f.g.h.i.j.k.mesh.local.",
            "web.prod.notsvc.east.mesh.local.",
            "x.east.mesh.local.",
            "http._tcp.web.prod.svc.east.mesh.local.",
            "_http.tcp.web.prod.svc.east.mesh.local.",
            "_http._quic.web.prod.svc.east.mesh.local.",
            "__http._tcp.web.prod.svc.east.mesh.local.",
            "_._tcp.web.prod.svc.east.mesh.local.",
            "_web.prod.svc.east.mesh.local.",
            "_quic.web.prod.svc.east.mesh.local.",
            "*.prod.svc.east.mesh.local.",
        ] {
            assert_eq!(inside(c, name), MeshName::Unknown, "{name}");
        }
        let deep = format!("{}mesh.local.", "a.".repeat(120));
        assert_eq!(inside(c, &deep), MeshName::Unknown);
    }

    #[test]
    fn hostile_labels_name_nothing() {
        let c = ZoneKind::Cluster;
        let zone = zones();
        let raw = |labels: &[&[u8]]| {
            let name = Name::from_labels(labels.iter().copied()).unwrap();
            zone.classify(&name)
        };
        let hostile: [&[u8]; 6] = [
            b"we.b",
            b"w\0b",
            b"w b",
            "wéb".as_bytes(),
            b"w\xffb",
            b"w/b",
        ];
        for label in hostile {
            assert_eq!(
                raw(&[label, b"prod", b"svc", b"east", b"mesh", b"local"]),
                Classified::Inside(c, MeshName::Unknown),
                "{label:?}"
            );
            assert_eq!(
                raw(&[b"web", b"prod", b"svc", label, b"mesh", b"local"]),
                Classified::Inside(c, MeshName::Unknown),
                "{label:?}"
            );
        }
        let long = [b'a'; 63];
        assert!(matches!(
            raw(&[&long, b"prod", b"svc", b"east", b"mesh", b"local"]),
            Classified::Inside(_, MeshName::Service(_))
        ));
        // Case folding is for ASCII letters only: '-' (0x2d) is not '\r' (0x0d).
        let dashed = Zones::new("mesh-a.local", "clusterset.local").unwrap();
        let name = Name::from_labels([&b"mesh\ra"[..], b"local"]).unwrap();
        assert_eq!(dashed.classify(&name), Classified::Outside);
    }

    #[test]
    fn bad_zones_are_rejected() {
        assert!(matches!(Zones::new(".", "a.b"), Err(ZoneError::Root(_))));
        assert!(matches!(Zones::new("", "a.b"), Err(ZoneError::Root(_))));
        assert!(matches!(
            Zones::new("mesh.local", "MESH.local."),
            Err(ZoneError::Same(_))
        ));
        assert!(matches!(
            Zones::new("a..b", "c.d"),
            Err(ZoneError::Invalid { .. })
        ));
        assert!(matches!(
            Zones::new("a_b.c", "c.d"),
            Err(ZoneError::Invalid { .. })
        ));
        let long = format!("{}.local", "a".repeat(64));
        assert!(matches!(
            Zones::new(&long, "c.d"),
            Err(ZoneError::Invalid { .. })
        ));
    }

    #[test]
    fn nested_zones_prefer_the_deeper_one() {
        let zones = Zones::new("local", "clusterset.local").unwrap();
        let name = Name::from_ascii("web.prod.svc.clusterset.local.").unwrap();
        assert_eq!(
            zones.classify(&name),
            Classified::Inside(
                ZoneKind::Clusterset,
                MeshName::Service(service("web", "prod", Scope::Clusterset))
            )
        );
        let name = Name::from_ascii("web.prod.svc.east.local.").unwrap();
        assert_eq!(
            zones.classify(&name),
            Classified::Inside(ZoneKind::Cluster, MeshName::Service(east("web")))
        );
    }

    #[test]
    fn name_of_inverts_classify() {
        let zones = zones();
        for name in [
            "mesh.local.",
            "east.mesh.local.",
            "prod.svc.east.mesh.local.",
            "web.prod.svc.east.mesh.local.",
            "web-0.web.prod.svc.east.mesh.local.",
            "_tcp.web.prod.svc.east.mesh.local.",
            "_http._tcp.web.prod.svc.east.mesh.local.",
            "clusterset.local.",
            "svc.clusterset.local.",
            "prod.svc.clusterset.local.",
            "web.prod.svc.clusterset.local.",
            "_udp.web.prod.svc.clusterset.local.",
            "_dns._udp.web.prod.svc.clusterset.local.",
        ] {
            let parsed = Name::from_ascii(name).unwrap();
            let Classified::Inside(kind, meaning) = zones.classify(&parsed) else {
                panic!("{name}");
            };
            assert_eq!(zones.name_of(kind, &meaning), Some(parsed), "{name}");
        }
        assert_eq!(zones.name_of(ZoneKind::Cluster, &MeshName::Unknown), None);
        let clusterset = MeshName::Service(service("web", "prod", Scope::Clusterset));
        assert_eq!(zones.name_of(ZoneKind::Cluster, &clusterset), None);
    }
}
