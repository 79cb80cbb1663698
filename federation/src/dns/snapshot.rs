//! The zones' data at one instant: the cache's Services, EndpointSlices and TrafficSplits,
//! indexed for the lookups DNS makes.
//!
//! A [`Snapshot`] is built from the stores after they change (at most a few times a second, see
//! the server) and shared by every query until the next one, so a query costs hash lookups
//! whatever the number of Services. Building reads each object once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_api::crd::TrafficSplit;
use mesh_api::labels;

use super::names::{Protocol, Scope, ServiceName, Zones, kubernetes_label};
use super::{DnsConfig, DnsError};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the server answers for, validated: its zones, its cluster and its TTL.
#[derive(Clone, Debug)]
pub struct Authority {
    zones: Zones,
    cluster: String,
    ttl: u32,
    /// The SOA MNAME and RNAME of the per-cluster zone, then of the clusterset zone.
    soa_names: [(Name, Name); 2],
}

/// The zones' data at one instant, indexed. See the module documentation.
#[derive(Debug)]
pub struct Snapshot {
    pub(super) authority: Arc<Authority>,
    /// The SOA serial: it changes whenever the data may have.
    pub(super) serial: u32,
    /// Whether the cache had listed every kind: until then, absence proves nothing.
    pub(super) complete: bool,
    /// namespace -> Service name -> Service.
    services: HashMap<String, HashMap<String, ServiceEntry>>,
    /// namespace -> remote Service name -> its mirrors, by cluster name.
    mirrors: HashMap<String, HashMap<String, Vec<Mirror>>>,
    /// namespace -> primary Service -> the fallback order of its failover TrafficSplit.
    failover: HashMap<String, HashMap<String, Vec<String>>>,
    /// The clusters with names in the per-cluster zone: this one and every mirror's.
    clusters: HashSet<String>,
    /// (cluster, namespace) pairs with at least one Service.
    namespaces: HashSet<(String, String)>,
}

/// One Service, as DNS sees it.
#[derive(Debug)]
pub(super) struct ServiceEntry {
    /// The mirror's cluster; `None` for a local Service.
    pub(super) mirror_of: Option<String>,
    /// `clusterIP: None`.
    pub(super) headless: bool,
    /// Its ClusterIPs, IPv4 and IPv6, in spec order.
    pub(super) cluster_ips: Vec<IpAddr>,
    pub(super) ports: Vec<PortEntry>,
    pub(super) endpoints: Vec<EndpointEntry>,
}

/// A named port of a Service or an EndpointSlice.
#[derive(Debug)]
pub(super) struct PortEntry {
    pub(super) name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub(super) protocol: String,
    pub(super) port: u16,
}

/// One endpoint of a Service.
#[derive(Debug)]
pub(super) struct EndpointEntry {
    pub(super) addresses: Vec<IpAddr>,
    pub(super) ready: bool,
    /// The first label of its per-pod name: its hostname, or its first address with `-` for
    /// `.` and `:` when it has none.
    pub(super) label: String,
    /// The ports of its slice.
    pub(super) ports: Arc<[PortEntry]>,
}

/// A mirror of a remote Service.
#[derive(Debug)]
struct Mirror {
    cluster: String,
    /// `<service>-<cluster>`.
    service: String,
}

/// A copy of a Service that a clusterset name may answer with.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate<'a> {
    /// The cluster it lives in.
    pub(super) cluster: &'a str,
    pub(super) entry: &'a ServiceEntry,
}

// === impl Authority ===

impl Authority {
    /// Validates the zones and the cluster name of `config`.
    ///
    /// # Errors
    ///
    /// When a zone is invalid, the zones are the same, or the cluster name is not a DNS label.
    pub fn new(config: &DnsConfig) -> Result<Self, DnsError> {
        let zones = Zones::new(&config.zone, &config.clusterset_zone)?;
        let cluster = kubernetes_label(config.cluster.as_bytes())
            .ok_or_else(|| DnsError::ClusterName(config.cluster.clone()))?;
        let soa = |zone: &Name| -> Result<(Name, Name), DnsError> {
            let too_long = |error: hickory_proto::ProtoError| {
                DnsError::Zone(super::names::ZoneError::Invalid {
                    zone: zone.to_ascii(),
                    reason: error.to_string(),
                })
            };
            let mname = Name::from_labels(["ns", "dns"])
                .and_then(|name| name.append_domain(zone))
                .map_err(too_long)?;
            let rname = Name::from_labels(["hostmaster"])
                .and_then(|name| name.append_domain(zone))
                .map_err(too_long)?;
            Ok((mname, rname))
        };
        let soa_names = [soa(zones.cluster_zone())?, soa(zones.clusterset_zone())?];
        Ok(Self {
            zones,
            cluster,
            ttl: config.ttl,
            soa_names,
        })
    }

    /// The zones.
    pub fn zones(&self) -> &Zones {
        &self.zones
    }

    /// This cluster's name, lowercased.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The TTL of every record, and the negative-caching TTL.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The SOA MNAME (`ns.dns.<zone>`) and RNAME (`hostmaster.<zone>`) of a zone.
    pub(super) fn soa_names(&self, kind: super::names::ZoneKind) -> &(Name, Name) {
        match kind {
            super::names::ZoneKind::Cluster => &self.soa_names[0],
            super::names::ZoneKind::Clusterset => &self.soa_names[1],
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Indexes the objects. `serial` becomes the zones' SOA serial; `complete` says whether the
    /// objects are the whole cluster (while not, in-zone queries fail with SERVFAIL rather than
    /// deny names that may exist).
    pub fn build<'a>(
        authority: Arc<Authority>,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        splits: impl IntoIterator<Item = &'a TrafficSplit>,
        serial: u32,
        complete: bool,
    ) -> Self {
        let mut snapshot = Self {
            clusters: HashSet::from([authority.cluster.clone()]),
            authority,
            serial,
            complete,
            services: HashMap::new(),
            mirrors: HashMap::new(),
            failover: HashMap::new(),
            namespaces: HashSet::new(),
        };
        for service in services {
            snapshot.add_service(service);
        }
        for slice in slices {
            snapshot.add_slice(slice);
        }
        snapshot.index_mirrors();
        snapshot.index_failover(splits);
        snapshot
    }

    fn add_service(&mut self, service: &Service) {
        let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
        else {
            return;
        };
        let label = |key: &str| {
            service
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(key))
        };
        let mirror_of = if label(labels::MIRRORED_SERVICE).map(String::as_str) == Some(labels::TRUE)
        {
            // A mirror without its cluster cannot be named: it answers for nothing.
            match label(labels::CLUSTER_NAME).and_then(|c| kubernetes_label(c.as_bytes())) {
                Some(cluster) => Some(cluster),
                None => return,
            }
        } else {
            None
        };
        let spec = service.spec.as_ref();
        let ips: Vec<&String> = match spec.and_then(|s| s.cluster_ips.as_ref()) {
            Some(ips) if !ips.is_empty() => ips.iter().collect(),
            _ => spec
                .and_then(|s| s.cluster_ip.as_ref())
                .into_iter()
                .collect(),
        };
        let headless = ips.iter().any(|ip| ip.as_str() == "None");
        let cluster_ips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|port| {
                PortEntry::new(
                    port.name.as_deref(),
                    port.protocol.as_deref(),
                    Some(port.port),
                )
            })
            .collect();
        let cluster = mirror_of.as_ref().unwrap_or(&self.authority.cluster);
        self.clusters.insert(cluster.clone());
        self.namespaces.insert((cluster.clone(), namespace.clone()));
        self.services.entry(namespace.clone()).or_default().insert(
            name.clone(),
            ServiceEntry {
                mirror_of,
                headless,
                cluster_ips,
                ports,
                endpoints: Vec::new(),
            },
        );
    }

    fn add_slice(&mut self, slice: &EndpointSlice) {
        let Some(namespace) = &slice.metadata.namespace else {
            return;
        };
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        else {
            return;
        };
        let Some(entry) = self
            .services
            .get_mut(namespace)
            .and_then(|services| services.get_mut(service))
        else {
            return;
        };
        let ports: Arc<[PortEntry]> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                PortEntry::new(port.name.as_deref(), port.protocol.as_deref(), port.port)
            })
            .collect();
        for endpoint in &slice.endpoints {
            let addresses: Vec<IpAddr> = endpoint
                .addresses
                .iter()
                .filter_map(|address| address.parse().ok())
                .collect();
            let Some(first) = addresses.first() else {
                continue;
            };
            let label = endpoint
                .hostname
                .as_deref()
                .and_then(|hostname| kubernetes_label(hostname.as_bytes()))
                .unwrap_or_else(|| dashed(*first));
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                .unwrap_or(true);
            entry.endpoints.push(EndpointEntry {
                addresses,
                ready,
                label,
                ports: ports.clone(),
            });
        }
    }

    /// Groups mirrors by the remote Service they copy: `<svc>-<cluster>` labelled `<cluster>`.
    fn index_mirrors(&mut self) {
        for (namespace, services) in &self.services {
            for (name, entry) in services {
                let Some(cluster) = &entry.mirror_of else {
                    continue;
                };
                let Some(remote) = name
                    .strip_suffix(cluster.as_str())
                    .and_then(|rest| rest.strip_suffix('-'))
                    .filter(|remote| !remote.is_empty())
                else {
                    continue;
                };
                self.mirrors
                    .entry(namespace.clone())
                    .or_default()
                    .entry(remote.to_owned())
                    .or_default()
                    .push(Mirror {
                        cluster: cluster.clone(),
                        service: name.clone(),
                    });
            }
        }
        for mirrors in self.mirrors.values_mut().flat_map(HashMap::values_mut) {
            mirrors.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        }
    }

    /// The fallback order of each failover TrafficSplit, by namespace and primary Service. When
    /// several name the same primary, the first by name wins, so the answer is deterministic.
    fn index_failover<'a>(&mut self, splits: impl IntoIterator<Item = &'a TrafficSplit>) {
        let mut chosen: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
        for split in splits {
            let metadata = &split.metadata;
            let controlled = metadata
                .labels
                .as_ref()
                .is_some_and(|labels| labels.contains_key(labels::FAILOVER_CONTROLLED_BY));
            let annotations = metadata.annotations.as_ref();
            let annotation = |key: &str| annotations.and_then(|a| a.get(key));
            let (true, Some(namespace), Some(name), Some(primary)) = (
                controlled,
                &metadata.namespace,
                &metadata.name,
                annotation(labels::FAILOVER_PRIMARY_SERVICE),
            ) else {
                continue;
            };
            let order = annotation(labels::FAILOVER_FALLBACK_ORDER)
                .map(|order| {
                    order
                        .split(',')
                        .map(str::trim)
                        .filter(|service| !service.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let key = (namespace.clone(), primary.trim().to_owned());
            match chosen.get(&key) {
                Some((first, _)) if first <= name => {}
                _ => {
                    chosen.insert(key, (name.clone(), order));
                }
            }
        }
        for ((namespace, primary), (_, order)) in chosen {
            self.failover
                .entry(namespace)
                .or_default()
                .insert(primary, order);
        }
    }

    /// The Service `name` in `namespace`.
    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(namespace)?.get(name)
    }

    /// The copy of a per-cluster Service name: the local Service (never a mirror) when the
    /// scope is this cluster, else the mirror `<svc>-<cluster>` of that cluster.
    pub(super) fn in_cluster(&self, name: &ServiceName) -> Option<Candidate<'_>> {
        let Scope::Cluster(cluster) = &name.scope else {
            return None;
        };
        if *cluster == self.authority.cluster {
            let entry = self
                .service(&name.namespace, &name.service)
                .filter(|entry| entry.mirror_of.is_none())?;
            Some(Candidate {
                cluster: &self.authority.cluster,
                entry,
            })
        } else {
            let mirror = format!("{}-{cluster}", name.service);
            let entry = self.service(&name.namespace, &mirror)?;
            let mirror_of = entry.mirror_of.as_deref().filter(|of| of == cluster)?;
            Some(Candidate {
                cluster: mirror_of,
                entry,
            })
        }
    }

    /// The copies a clusterset name may answer with, in preference order: the local Service,
    /// then its mirrors in the failover order of its failover TrafficSplit (mirrors it does not
    /// list follow, by cluster name), or by cluster name without one.
    pub(super) fn candidates(&self, namespace: &str, service: &str) -> Vec<Candidate<'_>> {
        let mut candidates = Vec::new();
        if let Some(entry) = self
            .service(namespace, service)
            .filter(|entry| entry.mirror_of.is_none())
        {
            candidates.push(Candidate {
                cluster: &self.authority.cluster,
                entry,
            });
        }
        let Some(mirrors) = self
            .mirrors
            .get(namespace)
            .and_then(|mirrors| mirrors.get(service))
        else {
            return candidates;
        };
        let order = self
            .failover
            .get(namespace)
            .and_then(|splits| splits.get(service))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut taken = vec![false; mirrors.len()];
        let listed = order
            .iter()
            .filter_map(|name| mirrors.iter().position(|m| m.service == *name));
        let unlisted = 0..mirrors.len();
        for index in listed.chain(unlisted) {
            if std::mem::replace(&mut taken[index], true) {
                continue;
            }
            let mirror = &mirrors[index];
            if let Some(entry) = self.service(namespace, &mirror.service) {
                candidates.push(Candidate {
                    cluster: &mirror.cluster,
                    entry,
                });
            }
        }
        candidates
    }

    /// Whether `<cluster>.<zone>` exists.
    pub(super) fn has_cluster(&self, cluster: &str) -> bool {
        self.clusters.contains(cluster)
    }

    /// Whether `<namespace>.svc.<cluster>.<zone>` (or the clusterset's) exists.
    pub(super) fn has_namespace(&self, namespace: &str, scope: &Scope) -> bool {
        match scope {
            Scope::Cluster(cluster) => self
                .namespaces
                .contains(&(cluster.clone(), namespace.to_owned())),
            Scope::Clusterset => {
                self.services.get(namespace).is_some_and(|services| {
                    services.values().any(|entry| entry.mirror_of.is_none())
                }) || self.mirrors.contains_key(namespace)
            }
        }
    }
}

// === impl ServiceEntry ===

impl ServiceEntry {
    /// Its ready endpoints.
    pub(super) fn ready_endpoints(&self) -> impl Iterator<Item = &EndpointEntry> {
        self.endpoints.iter().filter(|endpoint| endpoint.ready)
    }

    /// Whether at least one endpoint is ready.
    pub(super) fn is_ready(&self) -> bool {
        self.ready_endpoints().next().is_some()
    }

    /// Its addresses: the ClusterIPs, or the ready endpoints' addresses when headless.
    pub(super) fn addresses(&self) -> Vec<IpAddr> {
        if self.headless {
            let mut seen = HashSet::new();
            self.ready_endpoints()
                .flat_map(|endpoint| endpoint.addresses.iter().copied())
                .filter(|address| seen.insert(*address))
                .collect()
        } else {
            self.cluster_ips.clone()
        }
    }

    /// Its ports named `name` with `protocol`.
    pub(super) fn ports<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = &'a PortEntry> + 'a {
        self.ports
            .iter()
            .filter(move |port| port.matches(name, protocol))
    }

    /// Whether it has a named port with `protocol`.
    pub(super) fn has_protocol(&self, protocol: Protocol) -> bool {
        self.ports
            .iter()
            .any(|port| port.protocol == protocol.kubernetes())
    }
}

// === impl PortEntry ===

impl PortEntry {
    /// A named port; unnamed ports have no SRV name and are left out.
    fn new(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<Self> {
        let name = kubernetes_label(name?.as_bytes())?;
        let port = u16::try_from(port?).ok()?;
        Some(Self {
            name,
            protocol: protocol.unwrap_or("TCP").to_ascii_uppercase(),
            port,
        })
    }

    pub(super) fn matches(&self, name: &str, protocol: Protocol) -> bool {
        self.name == name && self.protocol == protocol.kubernetes()
    }
}

/// An address as a DNS label: `10.0.0.1` -> `10-0-0-1`, `fd00::1` -> `fd00--1`.
fn dashed(address: IpAddr) -> String {
    address.to_string().replace(['.', ':'], "-")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn authority() -> Arc<Authority> {
        Arc::new(Authority::new(&DnsConfig::new("west")).unwrap())
    }

    fn service(name: &str, cluster: Option<&str>, ip: &str) -> Service {
        let mut labels = json!({});
        if let Some(cluster) = cluster {
            labels = json!({labels::MIRRORED_SERVICE: "true", labels::CLUSTER_NAME: cluster});
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "labels": labels},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}, {"port": 81}]}
        }))
        .unwrap()
    }

    fn slice(service: &str, ready: Option<bool>) -> EndpointSlice {
        let mut conditions = json!({});
        if let Some(ready) = ready {
            conditions = json!({"ready": ready});
        }
        serde_json::from_value(json!({
            "metadata": {"name": service, "namespace": "prod",
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1"], "conditions": conditions}],
            "ports": [{"name": "http", "port": 8080}]
        }))
        .unwrap()
    }

    fn split(name: &str, primary: &str, order: &str) -> TrafficSplit {
        serde_json::from_value(json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": name, "namespace": "prod",
                "labels": {labels::FAILOVER_CONTROLLED_BY: "mesh"},
                "annotations": {labels::FAILOVER_PRIMARY_SERVICE: primary,
                    labels::FAILOVER_FALLBACK_ORDER: order}},
            "spec": {"service": primary, "backends": []}
        }))
        .unwrap()
    }

    fn clusters(snapshot: &Snapshot) -> Vec<&str> {
        snapshot
            .candidates("prod", "web")
            .iter()
            .map(|c| c.cluster)
            .collect()
    }

    #[test]
    fn candidates_are_local_then_failover_order_then_cluster_name() {
        let services = [
            service("web", None, "10.0.0.1"),
            service("web-north", Some("north"), "10.0.0.2"),
            service("web-east", Some("east"), "10.0.0.3"),
            service("web-south", Some("south"), "10.0.0.4"),
            // Named like a mirror, but not one: never a candidate of web.
            service("web-fake", None, "10.0.0.5"),
            // A mirror without its cluster label.
            service("web-x", Some(""), "10.0.0.6"),
        ];
        let build =
            |splits: &[TrafficSplit]| Snapshot::build(authority(), &services, [], splits, 1, true);
        assert_eq!(clusters(&build(&[])), ["west", "east", "north", "south"]);
        let ordered = [
            split("b", "web", "web-east"),
            split("a", "web", " web-south , unknown,web-north,web-south"),
        ];
        assert_eq!(
            clusters(&build(&ordered)),
            ["west", "south", "north", "east"]
        );
    }

    #[test]
    fn per_cluster_names_never_mean_a_mirror_locally() {
        let services = [
            service("web-east", Some("east"), "10.0.0.3"),
            service("db", None, "None"),
        ];
        let snapshot = Snapshot::build(authority(), &services, [], [], 1, true);
        let name = |service: &str, cluster: &str| ServiceName {
            service: service.into(),
            namespace: "prod".into(),
            scope: Scope::Cluster(cluster.into()),
        };
        assert!(snapshot.in_cluster(&name("web-east", "west")).is_none());
        assert!(snapshot.in_cluster(&name("web", "east")).is_some());
        assert!(snapshot.in_cluster(&name("web", "north")).is_none());
        assert!(
            snapshot
                .in_cluster(&name("db", "west"))
                .unwrap()
                .entry
                .headless
        );
        assert!(snapshot.has_cluster("east") && snapshot.has_cluster("west"));
        assert!(snapshot.has_namespace("prod", &Scope::Cluster("east".into())));
        assert!(!snapshot.has_namespace("dev", &Scope::Cluster("west".into())));
        assert!(snapshot.has_namespace("prod", &Scope::Clusterset));
    }

    #[test]
    fn readiness_absent_counts_as_ready() {
        let services = [
            service("a", None, "10.0.0.1"),
            service("b", None, "10.0.0.2"),
            service("c", None, "10.0.0.3"),
        ];
        let slices = [
            slice("a", None),
            slice("b", Some(false)),
            slice("c", Some(true)),
        ];
        let snapshot = Snapshot::build(authority(), &services, &slices, [], 1, true);
        let ready = |name: &str| snapshot.service("prod", name).unwrap().is_ready();
        assert!(ready("a"));
        assert!(!ready("b"));
        assert!(ready("c"));
        let entry = snapshot.service("prod", "a").unwrap();
        assert_eq!(entry.ports.len(), 1, "unnamed ports have no SRV name");
        assert_eq!(entry.endpoints[0].label, "10-1-0-1");
        assert_eq!(entry.endpoints[0].ports[0].port, 8080);
    }

    #[test]
    fn dashed_addresses() {
        assert_eq!(dashed("10.0.0.1".parse().unwrap()), "10-0-0-1");
        assert_eq!(dashed("fd00::1".parse().unwrap()), "fd00--1");
    }
}
