//! Answering one question from a [`Snapshot`]: the records of each section and the response
//! code, with no I/O, so the whole decision is unit-tested and fuzzed.
//!
//! - A name that exists answers NOERROR; when it owns no record of the asked type the answer
//!   section is empty and the zone's SOA goes in the authority section (RFC 2308 "NODATA").
//! - A name inside a zone that does not exist answers NXDOMAIN with the zone's SOA, whose
//!   minimum and TTL are the configured TTL, so resolvers cache the denial that long.
//! - A name outside both zones, a class other than IN and zone transfers are REFUSED.
//! - Until the cache has listed every kind, in-zone questions answer SERVFAIL: an empty store
//!   must not deny names that exist.
//! - Answer and SRV owner names are the question's name, with its case.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::names::{Branch, Classified, MeshName, Protocol, Scope, ServiceName, ZoneKind};
use super::snapshot::{Candidate, Snapshot};

/// SOA timers. Nothing transfers these zones; the values are those Kubernetes DNS uses.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// What to send back for one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code.
    pub rcode: ResponseCode,
    /// Whether the answer is authoritative (the name is in one of the zones).
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the zone's SOA on negative answers).
    pub authority: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

/// What a name resolved to, before it becomes sections.
enum Found {
    /// The name exists: these records (possibly none of the asked type).
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name does not exist.
    NoName,
}

/// One SRV record to be: its target and the addresses that go with it.
struct SrvTarget {
    priority: u16,
    port: u16,
    target: Name,
    addresses: Vec<IpAddr>,
}

// === impl Answer ===

impl Answer {
    /// A response with no records and `rcode`, not authoritative.
    pub fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Answers one question.
    pub fn answer(&self, query: &Query) -> Answer {
        if query.query_class() != DNSClass::IN {
            return Answer::error(ResponseCode::Refused);
        }
        let Classified::Inside(kind, meaning) = self.authority.zones().classify(query.name())
        else {
            return Answer::error(ResponseCode::Refused);
        };
        if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
            return Answer::error(ResponseCode::Refused);
        }
        if !self.complete {
            return Answer::error(ResponseCode::ServFail);
        }
        let found = self.find(kind, &meaning, query.name(), query.query_type());
        let negative = |rcode| Answer {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authority: vec![self.soa(kind, self.authority.zones().zone(kind).clone())],
            additionals: Vec::new(),
        };
        match found {
            Found::NoName => negative(ResponseCode::NXDomain),
            Found::Records { answers, .. } if answers.is_empty() => negative(ResponseCode::NoError),
            Found::Records {
                answers,
                additionals,
            } => Answer {
                rcode: ResponseCode::NoError,
                authoritative: true,
                answers,
                authority: Vec::new(),
                additionals,
            },
        }
    }

    fn find(&self, kind: ZoneKind, meaning: &MeshName, owner: &Name, qtype: RecordType) -> Found {
        let exists = |exists: bool| {
            if exists {
                Found::Records {
                    answers: Vec::new(),
                    additionals: Vec::new(),
                }
            } else {
                Found::NoName
            }
        };
        match meaning {
            MeshName::Apex => {
                let mut answers = Vec::new();
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    answers.push(self.soa(kind, owner.clone()));
                }
                if matches!(qtype, RecordType::NS | RecordType::ANY) {
                    let ns = self.authority.soa_names(kind).0.clone();
                    answers.push(self.record(owner.clone(), RData::NS(NS(ns))));
                }
                Found::Records {
                    answers,
                    additionals: Vec::new(),
                }
            }
            MeshName::Branch(branch) => exists(self.branch_exists(branch)),
            MeshName::Unknown => Found::NoName,
            MeshName::Service(service) => match self.service_addresses(service) {
                Some(addresses) => Found::Records {
                    answers: self.address_records(owner, &addresses, qtype),
                    additionals: Vec::new(),
                },
                None => Found::NoName,
            },
            MeshName::Pod { hostname, service } => {
                let Some(candidate) = self.in_cluster(service).filter(|c| c.entry.headless) else {
                    return Found::NoName;
                };
                let addresses = endpoint_addresses(candidate, hostname);
                if addresses.is_empty() {
                    return Found::NoName;
                }
                Found::Records {
                    answers: self.address_records(owner, &addresses, qtype),
                    additionals: Vec::new(),
                }
            }
            MeshName::Port {
                port,
                protocol,
                service,
            } => match self.srv_targets(port, *protocol, service, owner) {
                Some(targets) if matches!(qtype, RecordType::SRV | RecordType::ANY) => {
                    self.srv_records(owner, targets)
                }
                Some(_) => exists(true),
                None => Found::NoName,
            },
        }
    }

    fn branch_exists(&self, branch: &Branch) -> bool {
        match branch {
            Branch::Cluster(cluster) => self.has_cluster(cluster),
            Branch::Clusterset => true,
            Branch::Namespace { namespace, scope } => self.has_namespace(namespace, scope),
            Branch::Protocol { protocol, service } => match service.scope {
                Scope::Cluster(_) => self
                    .in_cluster(service)
                    .is_some_and(|c| c.entry.has_protocol(*protocol)),
                Scope::Clusterset => self
                    .candidates(&service.namespace, &service.service)
                    .iter()
                    .any(|c| c.entry.has_protocol(*protocol)),
            },
        }
    }

    /// The copies of a Service a name answers with, or `None` when the name does not exist. A
    /// clusterset name answers with its ready copies in order, or with all of them when none is
    /// ready (rather than with nothing).
    fn chosen(&self, service: &ServiceName) -> Option<Vec<Candidate<'_>>> {
        match service.scope {
            Scope::Cluster(_) => self.in_cluster(service).map(|c| vec![c]),
            Scope::Clusterset => {
                let candidates = self.candidates(&service.namespace, &service.service);
                if candidates.is_empty() {
                    return None;
                }
                let ready: Vec<Candidate<'_>> = candidates
                    .iter()
                    .copied()
                    .filter(|c| c.entry.is_ready())
                    .collect();
                Some(if ready.is_empty() { candidates } else { ready })
            }
        }
    }

    fn service_addresses(&self, service: &ServiceName) -> Option<Vec<IpAddr>> {
        let mut seen = HashSet::new();
        let addresses = self
            .chosen(service)?
            .iter()
            .flat_map(|c| c.entry.addresses())
            .filter(|address| seen.insert(*address))
            .collect();
        Some(addresses)
    }

    /// The SRV targets of a named port, or `None` when no copy of the Service has that port.
    fn srv_targets(
        &self,
        port: &str,
        protocol: Protocol,
        service: &ServiceName,
        owner: &Name,
    ) -> Option<Vec<SrvTarget>> {
        match service.scope {
            Scope::Cluster(_) => {
                let candidate = self.in_cluster(service)?;
                candidate.entry.ports(port, protocol).next()?;
                // `_<port>._<proto>.<rest>`: the targets hang off `<rest>`, in the query's case.
                let base = Name::from_labels(owner.iter().skip(2)).ok()?;
                Some(targets(candidate, port, protocol, &base, 0))
            }
            Scope::Clusterset => {
                let has_port = |c: &Candidate<'_>| c.entry.ports(port, protocol).next().is_some();
                let candidates = self.candidates(&service.namespace, &service.service);
                if !candidates.iter().any(has_port) {
                    return None;
                }
                // `_<port>._<proto>.<svc>.<ns>.svc`, then the clusterset zone.
                let service_labels: Vec<&[u8]> = owner.iter().skip(2).take(3).collect();
                let zone = self.authority.zones().cluster_zone();
                let chosen = self.chosen(service)?;
                let mut all = Vec::new();
                for (priority, candidate) in chosen.iter().filter(|c| has_port(c)).enumerate() {
                    let labels = service_labels
                        .iter()
                        .copied()
                        .chain([candidate.cluster.as_bytes()]);
                    let Ok(base) = Name::from_labels(labels).and_then(|n| n.append_domain(zone))
                    else {
                        continue;
                    };
                    let priority = u16::try_from(priority).unwrap_or(u16::MAX);
                    all.extend(targets(*candidate, port, protocol, &base, priority));
                }
                Some(all)
            }
        }
    }

    fn srv_records(&self, owner: &Name, targets: Vec<SrvTarget>) -> Found {
        let mut answers = Vec::with_capacity(targets.len());
        let mut additionals = Vec::new();
        let mut glued = HashSet::new();
        for target in targets {
            let srv = SRV::new(target.priority, 1, target.port, target.target.clone());
            answers.push(self.record(owner.clone(), RData::SRV(srv)));
            if glued.insert(target.target.clone()) {
                additionals.extend(self.address_records(
                    &target.target,
                    &target.addresses,
                    RecordType::ANY,
                ));
            }
        }
        Found::Records {
            answers,
            additionals,
        }
    }

    /// A and AAAA records of `addresses` as `qtype` asks (both for ANY; none for other types).
    fn address_records(
        &self,
        owner: &Name,
        addresses: &[IpAddr],
        qtype: RecordType,
    ) -> Vec<Record> {
        addresses
            .iter()
            .filter_map(|address| match (address, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                    Some(RData::AAAA(AAAA(*v6)))
                }
                _ => None,
            })
            .map(|rdata| self.record(owner.clone(), rdata))
            .collect()
    }

    /// The SOA of a zone, owned by `owner`.
    fn soa(&self, kind: ZoneKind, owner: Name) -> Record {
        let (mname, rname) = self.authority.soa_names(kind).clone();
        let ttl = self.authority.ttl();
        let soa = SOA::new(
            mname,
            rname,
            self.serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            ttl,
        );
        self.record(owner, RData::SOA(soa))
    }

    fn record(&self, owner: Name, rdata: RData) -> Record {
        Record::from_rdata(owner, self.authority.ttl(), rdata)
    }
}

/// The SRV targets of one copy of a Service: its per-cluster name, or for a headless Service
/// one per-pod name per ready endpoint (with the endpoint's own port).
fn targets(
    candidate: Candidate<'_>,
    port: &str,
    protocol: Protocol,
    base: &Name,
    priority: u16,
) -> Vec<SrvTarget> {
    let entry = candidate.entry;
    let mut targets = Vec::new();
    for service_port in entry.ports(port, protocol) {
        if !entry.headless {
            targets.push(SrvTarget {
                priority,
                port: service_port.port,
                target: base.clone(),
                addresses: entry.cluster_ips.clone(),
            });
            continue;
        }
        // One target per per-pod name, with every address of that name (one endpoint per
        // family on a dual-stack Service), in endpoint order.
        let mut by_label: HashMap<&str, usize> = HashMap::new();
        for endpoint in entry.ready_endpoints() {
            if let Some(&index) = by_label.get(endpoint.label.as_str()) {
                let addresses: &mut Vec<IpAddr> = &mut targets[index].addresses;
                for address in &endpoint.addresses {
                    if !addresses.contains(address) {
                        addresses.push(*address);
                    }
                }
                continue;
            }
            let Ok(target) =
                Name::from_labels([endpoint.label.as_bytes()].into_iter().chain(base.iter()))
            else {
                continue;
            };
            let endpoint_port = endpoint
                .ports
                .iter()
                .find(|p| p.matches(port, protocol))
                .map_or(service_port.port, |p| p.port);
            by_label.insert(&endpoint.label, targets.len());
            targets.push(SrvTarget {
                priority,
                port: endpoint_port,
                target,
                addresses: endpoint.addresses.clone(),
            });
        }
    }
    targets
}

/// The addresses of a headless Service's ready endpoints whose per-pod label is `label`
/// (several when the Service is dual-stack: one slice per family).
fn endpoint_addresses(candidate: Candidate<'_>, label: &str) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    candidate
        .entry
        .ready_endpoints()
        .filter(|endpoint| endpoint.label == label)
        .flat_map(|endpoint| endpoint.addresses.iter().copied())
        .filter(|address| seen.insert(*address))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use hickory_proto::rr::rdata::SRV;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use mesh_api::labels;
    use serde_json::{Value, json};

    use super::*;
    use crate::dns::{Authority, DnsConfig};

    fn service(name: &str, mirror_of: Option<&str>, ips: Value, ports: Value) -> Service {
        let labels = match mirror_of {
            Some(cluster) => {
                json!({labels::MIRRORED_SERVICE: "true", labels::CLUSTER_NAME: cluster})
            }
            None => json!({}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "labels": labels},
            "spec": {"clusterIPs": ips, "ports": ports}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, family: &str, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    fn http() -> Value {
        json!([{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}])
    }

    /// west (local): web (ready), db (headless, dual-stack), idle (no endpoints);
    /// mirrors web-east (ready) and web-north (not ready), idle-east (not ready).
    fn snapshot(complete: bool) -> Snapshot {
        let services = [
            service("web", None, json!(["10.0.0.1", "fd00::1"]), http()),
            service("db", None, json!(["None"]), http()),
            service("idle", None, json!(["10.0.0.9"]), http()),
            service("web-east", Some("east"), json!(["10.0.1.1"]), http()),
            service("web-north", Some("north"), json!(["10.0.2.1"]), http()),
            service("idle-east", Some("east"), json!(["10.0.1.9"]), http()),
        ];
        let ready = json!({"ready": true});
        let slices = [
            slice("web", "web", "IPv4", json!([{"addresses": ["10.1.0.1"]}])),
            slice(
                "db-v4",
                "db",
                "IPv4",
                json!([
                    {"addresses": ["10.1.0.2"], "hostname": "db-0", "conditions": ready},
                    {"addresses": ["10.1.0.3"], "hostname": "db-1", "conditions": {"ready": false}},
                    {"addresses": ["10.1.0.4"]},
                ]),
            ),
            slice(
                "db-v6",
                "db",
                "IPv6",
                json!([{"addresses": ["fd00::2"], "hostname": "db-0"}]),
            ),
            slice(
                "web-east",
                "web-east",
                "IPv4",
                json!([{"addresses": ["10.9.0.1"]}]),
            ),
            slice(
                "web-north",
                "web-north",
                "IPv4",
                json!([{"addresses": ["10.9.0.2"], "conditions": {"ready": false}}]),
            ),
        ];
        let authority = Arc::new(Authority::new(&DnsConfig::new("west")).unwrap());
        Snapshot::build(authority, &services, &slices, [], 7, complete)
    }

    fn ask(snapshot: &Snapshot, name: &str, qtype: RecordType) -> Answer {
        snapshot.answer(&Query::query(Name::from_ascii(name).unwrap(), qtype))
    }

    fn addresses(answer: &Answer) -> Vec<String> {
        answer
            .answers
            .iter()
            .map(|record| record.data().to_string())
            .collect()
    }

    fn srvs(answer: &Answer) -> Vec<(u16, u16, String)> {
        answer
            .answers
            .iter()
            .map(|record| {
                let srv: &SRV = match record.data() {
                    RData::SRV(srv) => srv,
                    other => panic!("not SRV: {other:?}"),
                };
                (srv.priority(), srv.port(), srv.target().to_ascii())
            })
            .collect()
    }

    fn assert_negative(answer: &Answer, rcode: ResponseCode, zone: &str) {
        assert_eq!(answer.rcode, rcode);
        assert!(answer.authoritative);
        assert!(answer.answers.is_empty());
        assert_eq!(answer.authority.len(), 1);
        let soa = &answer.authority[0];
        assert_eq!(soa.name().to_ascii(), zone);
        let RData::SOA(data) = soa.data() else {
            panic!("not an SOA: {soa:?}");
        };
        assert_eq!((data.serial(), data.minimum(), soa.ttl()), (7, 5, 5));
    }

    #[test]
    fn per_cluster_addresses() {
        let s = snapshot(true);
        let local = "web.prod.svc.west.mesh.local.";
        assert_eq!(addresses(&ask(&s, local, RecordType::A)), ["10.0.0.1"]);
        assert_eq!(addresses(&ask(&s, local, RecordType::AAAA)), ["fd00::1"]);
        assert_eq!(addresses(&ask(&s, local, RecordType::ANY)).len(), 2);
        let east = ask(&s, "web.prod.svc.east.mesh.local.", RecordType::A);
        assert_eq!(addresses(&east), ["10.0.1.1"]);
        assert!(east.authoritative);
        // Headless: ready endpoints, absent readiness counting as ready.
        let db = ask(&s, "db.prod.svc.west.mesh.local.", RecordType::A);
        assert_eq!(addresses(&db), ["10.1.0.2", "10.1.0.4"]);
        let db = ask(&s, "db.prod.svc.west.mesh.local.", RecordType::AAAA);
        assert_eq!(addresses(&db), ["fd00::2"]);
    }

    #[test]
    fn answers_keep_the_question_case() {
        let s = snapshot(true);
        let answer = ask(&s, "WEB.Prod.svc.West.MESH.local.", RecordType::A);
        assert_eq!(
            answer.answers[0].name().to_ascii(),
            "WEB.Prod.svc.West.MESH.local."
        );
    }

    #[test]
    fn per_pod_names() {
        let s = snapshot(true);
        let pod = "db-0.db.prod.svc.west.mesh.local.";
        assert_eq!(addresses(&ask(&s, pod, RecordType::A)), ["10.1.0.2"]);
        assert_eq!(addresses(&ask(&s, pod, RecordType::AAAA)), ["fd00::2"]);
        let dashed = "10-1-0-4.db.prod.svc.west.mesh.local.";
        assert_eq!(addresses(&ask(&s, dashed, RecordType::A)), ["10.1.0.4"]);
        // Not ready, unknown, or not headless: no such name.
        for name in [
            "db-1.db.prod.svc.west.mesh.local.",
            "db-9.db.prod.svc.west.mesh.local.",
            "web-0.web.prod.svc.west.mesh.local.",
        ] {
            let answer = ask(&s, name, RecordType::A);
            assert_negative(&answer, ResponseCode::NXDomain, "mesh.local.");
        }
    }

    #[test]
    fn srv_records_and_glue() {
        let s = snapshot(true);
        let answer = ask(
            &s,
            "_http._tcp.web.prod.svc.west.mesh.local.",
            RecordType::SRV,
        );
        assert_eq!(
            srvs(&answer),
            [(0, 80, "web.prod.svc.west.mesh.local.".to_owned())]
        );
        assert_eq!(answer.additionals.len(), 2, "A and AAAA of the target");
        let answer = ask(
            &s,
            "_dns._udp.web.prod.svc.east.mesh.local.",
            RecordType::SRV,
        );
        assert_eq!(
            srvs(&answer),
            [(0, 53, "web.prod.svc.east.mesh.local.".to_owned())]
        );
        // Headless: one per ready endpoint, with the endpoint's port.
        let answer = ask(
            &s,
            "_http._tcp.db.prod.svc.west.mesh.local.",
            RecordType::SRV,
        );
        assert_eq!(
            srvs(&answer),
            [
                (0, 8080, "db-0.db.prod.svc.west.mesh.local.".to_owned()),
                (0, 8080, "10-1-0-4.db.prod.svc.west.mesh.local.".to_owned()),
            ]
        );
        let glue: Vec<String> = answer
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name(), r.data()))
            .collect();
        assert_eq!(
            glue,
            [
                "db-0.db.prod.svc.west.mesh.local. 10.1.0.2",
                "db-0.db.prod.svc.west.mesh.local. fd00::2",
                "10-1-0-4.db.prod.svc.west.mesh.local. 10.1.0.4",
            ]
        );
        // The port exists, the type does not: no data. Wrong protocol: no name.
        let answer = ask(
            &s,
            "_http._tcp.web.prod.svc.west.mesh.local.",
            RecordType::A,
        );
        assert_negative(&answer, ResponseCode::NoError, "mesh.local.");
        let answer = ask(
            &s,
            "_http._udp.web.prod.svc.west.mesh.local.",
            RecordType::SRV,
        );
        assert_negative(&answer, ResponseCode::NXDomain, "mesh.local.");
    }

    #[test]
    fn clusterset_order_readiness_and_srv() {
        let s = snapshot(true);
        // local (ready), east (ready), north (not ready: skipped).
        let answer = ask(&s, "web.prod.svc.clusterset.local.", RecordType::A);
        assert_eq!(addresses(&answer), ["10.0.0.1", "10.0.1.1"]);
        // None ready: every copy, in order.
        let answer = ask(&s, "idle.prod.svc.clusterset.local.", RecordType::A);
        assert_eq!(addresses(&answer), ["10.0.0.9", "10.0.1.9"]);
        let answer = ask(
            &s,
            "_http._tcp.web.prod.svc.clusterset.local.",
            RecordType::SRV,
        );
        assert_eq!(
            srvs(&answer),
            [
                (0, 80, "web.prod.svc.west.mesh.local.".to_owned()),
                (1, 80, "web.prod.svc.east.mesh.local.".to_owned()),
            ]
        );
        let answer = ask(&s, "nothing.prod.svc.clusterset.local.", RecordType::A);
        assert_negative(&answer, ResponseCode::NXDomain, "clusterset.local.");
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let s = snapshot(true);
        for (name, qtype, rcode) in [
            (
                "nothing.prod.svc.west.mesh.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "web.prod.svc.south.mesh.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "web.dev.svc.west.mesh.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "dev.svc.west.mesh.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            ("south.mesh.local.", RecordType::A, ResponseCode::NXDomain),
            (
                "a.b.c.d.e.f.g.mesh.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "web.prod.svc.west.mesh.local.",
                RecordType::MX,
                ResponseCode::NoError,
            ),
            (
                "web.prod.svc.east.mesh.local.",
                RecordType::AAAA,
                ResponseCode::NoError,
            ),
            (
                "prod.svc.west.mesh.local.",
                RecordType::A,
                ResponseCode::NoError,
            ),
            ("svc.east.mesh.local.", RecordType::A, ResponseCode::NoError),
            (
                "_tcp.web.prod.svc.west.mesh.local.",
                RecordType::A,
                ResponseCode::NoError,
            ),
            ("mesh.local.", RecordType::A, ResponseCode::NoError),
        ] {
            let answer = ask(&s, name, qtype);
            assert_negative(&answer, rcode, "mesh.local.");
        }
    }

    #[test]
    fn apex_soa_and_ns() {
        let s = snapshot(true);
        let soa = ask(&s, "Mesh.Local.", RecordType::SOA);
        assert_eq!(soa.rcode, ResponseCode::NoError);
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(soa.answers[0].name().to_ascii(), "Mesh.Local.");
        let ns = ask(&s, "clusterset.local.", RecordType::NS);
        assert_eq!(addresses(&ns), ["ns.dns.clusterset.local."]);
    }

    #[test]
    fn refused_outside_zones_other_classes_and_transfers() {
        let s = snapshot(true);
        let refused = Answer::error(ResponseCode::Refused);
        assert_eq!(ask(&s, "example.com.", RecordType::A), refused);
        assert_eq!(ask(&s, "local.", RecordType::SOA), refused);
        assert_eq!(ask(&s, "mesh.local.", RecordType::AXFR), refused);
        let mut chaos = Query::query(Name::from_ascii("mesh.local.").unwrap(), RecordType::TXT);
        chaos.set_query_class(DNSClass::CH);
        assert_eq!(s.answer(&chaos), refused);
    }

    #[test]
    fn incomplete_cache_fails_rather_than_denies() {
        let s = snapshot(false);
        let answer = ask(&s, "web.prod.svc.west.mesh.local.", RecordType::A);
        assert_eq!(answer, Answer::error(ResponseCode::ServFail));
        let answer = ask(&s, "example.com.", RecordType::A);
        assert_eq!(answer.rcode, ResponseCode::Refused);
    }
}
