//! The index every discovery stream reads: the cluster's Services, their endpoints and splits,
//! arranged for lookups by name and by address.
//!
//! It is rebuilt whole, once per change of the [`Cache`], by one task, and shared as an
//! `Arc<Index>`: however many streams are open, each change costs one pass over the cluster's
//! objects, and each stream then answers from the index in time proportional to its own
//! Service (see [`super::resolve`]). Everything that can be decided once per object is decided
//! here: which slice ports exist, which endpoints are meshed and with what identity, how a
//! mirror is reached through the gateway, a split's priorities, a Service's opaque ports.
//!
//! A Service whose entry is the same as in the previous index keeps the previous entry's `Arc`
//! ([`Index::reuse_unchanged`]), so a stream can tell in one pointer comparison that its answer
//! cannot have changed, and a change to one Service wakes every stream but costs work only to
//! the streams of that Service.
//!
//! Objects the index cannot use as written (an opaque-ports item that is not a port, a mirror
//! without a Link, a split listing its primary twice) are skipped in part or whole and reported
//! as [`Problem`]s, which the caller logs when they change.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use mesh_api::crd::{Link, TrafficSplit};
use mesh_api::labels::{
    CLUSTER_NAME, MIRRORED_SERVICE, OPAQUE_PORTS, PROXY_CONTAINER, REMOTE_SVC_FQ_NAME, TRUE,
};
use mesh_trust::TrustDomain;
use mesh_trust::spiffe::SpiffeIdError;

use super::config::Settings;
use super::opaque::OpaquePorts;
use super::split::{self, Backend};
use crate::cache::Cache;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The objects an index is built from. [`Index::from_cache`] takes them from the [`Cache`];
/// tests and benchmarks may build them by hand.
pub struct Objects<'a> {
    /// Every Service.
    pub services: &'a [Arc<Service>],
    /// Every EndpointSlice.
    pub slices: &'a [Arc<EndpointSlice>],
    /// Every TrafficSplit.
    pub splits: &'a [Arc<TrafficSplit>],
    /// Every Link.
    pub links: &'a [Arc<Link>],
    /// The Pod with a namespace and a name, if known.
    pub pod: &'a (dyn Fn(&str, &str) -> Option<Arc<Pod>> + Sync),
}

impl fmt::Debug for Objects<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects")
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("splits", &self.splits.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// Something in the cluster's objects that discovery could not use as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    /// The object, as `Kind namespace/name`.
    pub object: String,
    /// What is wrong and what discovery did about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The cluster's Services arranged for discovery; see the module documentation.
#[derive(Debug)]
pub struct Index {
    /// Whether the cache had listed every kind when this was built; streams wait for it.
    pub(super) ready: bool,
    pub(super) settings: Arc<Settings>,
    pub(super) services: Vec<Arc<ServiceEntry>>,
    /// Namespace -> name -> position in `services`.
    by_name: HashMap<String, HashMap<String, usize>>,
    /// Cluster IP and Service port -> position in `services`.
    pub(super) by_cluster_ip: HashMap<SocketAddr, usize>,
    /// Endpoint address -> position in `services` and the Service port it serves.
    pub(super) by_endpoint: HashMap<SocketAddr, (usize, u16)>,
    /// Linked cluster name -> its Link's trust domain.
    links: HashMap<String, TrustDomain>,
}

/// One Service: everything its answers depend on.
#[derive(Debug, PartialEq)]
pub(super) struct ServiceEntry {
    pub(super) name: String,
    pub(super) namespace: String,
    /// Its TCP ports.
    pub(super) ports: Vec<ServicePort>,
    pub(super) opaque: OpaquePorts,
    /// The cluster its endpoints run in: this one, or the mirrored Service's.
    pub(super) cluster: Arc<str>,
    pub(super) mirror: bool,
    /// How to reach a mirror's endpoints; `None` for local Services.
    pub(super) tunnel: Option<TunnelBase>,
    /// Sorted by IP, then slice name; empty for a mirror that cannot be reached.
    pub(super) endpoints: Vec<EndpointEntry>,
    /// The backends of the TrafficSplit whose root is this Service.
    pub(super) split: Vec<Backend>,
}

/// A TCP port of a Service.
#[derive(Debug, PartialEq)]
pub(super) struct ServicePort {
    pub(super) port: u16,
    /// Empty for an unnamed port.
    pub(super) name: String,
}

/// One endpoint of a slice. Strings repeated across endpoints (zones, identities) are shared;
/// the labels are ready to clone into an answer, which every stream of the Service does.
#[derive(Debug, PartialEq)]
pub(super) struct EndpointEntry {
    pub(super) ip: IpAddr,
    /// The TCP ports of its slice.
    pub(super) ports: Arc<[SlicePort]>,
    pub(super) ready: bool,
    pub(super) zone: Arc<str>,
    pub(super) hostname: String,
    /// Empty when the pod runs no proxy.
    pub(super) identity: Arc<str>,
    /// The pod's labels; empty when the endpoint names no pod.
    pub(super) labels: HashMap<String, String>,
}

/// A TCP port of a slice.
#[derive(Debug, PartialEq)]
pub(super) struct SlicePort {
    /// Empty for an unnamed port; matches the Service port of the same name.
    pub(super) name: String,
    pub(super) port: u16,
}

/// The tunnel metadata shared by a mirror's endpoints; the port is added per request.
#[derive(Debug, PartialEq)]
pub(super) struct TunnelBase {
    /// The remote Service's fully qualified name.
    pub(super) remote_name: String,
    pub(super) gateway: SocketAddr,
    pub(super) gateway_identity: String,
    pub(super) remote_trust_domain: String,
}

// === impl Index ===

impl Index {
    /// An index of nothing, not ready: what streams see before the first build.
    pub fn empty(settings: Arc<Settings>) -> Self {
        Self {
            ready: false,
            settings,
            services: Vec::new(),
            by_name: HashMap::new(),
            by_cluster_ip: HashMap::new(),
            by_endpoint: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// Builds the index from the cache's current stores; it is ready when the cache is.
    pub fn from_cache(settings: Arc<Settings>, cache: &Cache) -> (Self, Vec<Problem>) {
        let ready = cache.ready();
        let services = cache.services.state();
        let slices = cache.slices.state();
        let splits = cache.splits.state();
        let links = cache.links.state();
        let pods = &cache.pods;
        let pod = |namespace: &str, name: &str| pods.get(&ObjectRef::new(name).within(namespace));
        let (mut index, problems) = Self::build(
            settings,
            &Objects {
                services: &services,
                slices: &slices,
                splits: &splits,
                links: &links,
                pod: &pod,
            },
        );
        index.ready = ready;
        (index, problems)
    }

    /// Builds a (ready) index from `objects`.
    pub fn build(settings: Arc<Settings>, objects: &Objects<'_>) -> (Self, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut index = Self::empty(settings);
        index.ready = true;
        index.links = index_links(objects.links, &mut problems);

        // Slices by Service, each Service's in name order so that duplicates resolve the same
        // way at every build.
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in objects.slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(namespace), Some(service)) = (slice.metadata.namespace.as_deref(), service)
            {
                slices
                    .entry((namespace, service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        for list in slices.values_mut() {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }

        let mut shared = Shared::new(objects.pod, &index.settings.cluster);
        let mut entries = Vec::with_capacity(objects.services.len());
        for service in objects.services {
            let Some(namespace) = service.metadata.namespace.as_deref() else {
                continue;
            };
            let name = service.name_any();
            let own = slices
                .get(&(namespace, name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(entry) = index.service_entry(service, own, &mut shared, &mut problems) {
                index.insert(entries.len(), &entry, service);
                entries.push(entry);
            }
        }

        index.by_endpoint = index_endpoints(&entries);
        index.attach_splits(&mut entries, objects.splits, &mut problems);
        index.services = entries.into_iter().map(Arc::new).collect();
        (index, problems)
    }

    /// Takes over the entries of `previous` for the Services whose entry is unchanged, so that
    /// streams of those Services see the same `Arc` and know their answer stands.
    pub fn reuse_unchanged(&mut self, previous: &Index) {
        for entry in &mut self.services {
            let Some(position) = previous.lookup(&entry.namespace, &entry.name) else {
                continue;
            };
            let old = &previous.services[position];
            if old == entry {
                *entry = old.clone();
            }
        }
    }

    /// Whether the cache had listed every kind when this index was built.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// How many Services the index holds.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the index holds no Service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The position of a Service, by namespace and name.
    pub(super) fn lookup(&self, namespace: &str, name: &str) -> Option<usize> {
        self.by_name.get(namespace)?.get(name).copied()
    }

    /// Builds one Service's entry; `None` for what discovery does not serve.
    fn service_entry(
        &self,
        service: &Service,
        slices: &[&EndpointSlice],
        shared: &mut Shared<'_>,
        problems: &mut Vec<Problem>,
    ) -> Option<ServiceEntry> {
        let spec = service.spec.as_ref()?;
        // An ExternalName Service is a DNS alias with no endpoints: not meshed, so it does not
        // exist for discovery and proxies forward to whatever the name resolves to.
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let name = service.name_any();
        let namespace = service.namespace().unwrap_or_default();
        let object = || format!("Service {namespace}/{name}");
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| is_tcp(p.protocol.as_deref()))
            .filter_map(|p| {
                Some(ServicePort {
                    port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                    name: p.name.clone().unwrap_or_default(),
                })
            })
            .collect();

        let annotations = service.metadata.annotations.as_ref();
        let opaque = match annotations.and_then(|a| a.get(OPAQUE_PORTS)) {
            Some(value) => {
                let (opaque, invalid) = OpaquePorts::parse(value);
                problems.extend(invalid.into_iter().map(|e| Problem {
                    object: object(),
                    message: format!("{OPAQUE_PORTS}: {e}"),
                }));
                opaque
            }
            None => OpaquePorts::default(),
        };

        let labels = service.metadata.labels.as_ref();
        let mirror = labels
            .and_then(|l| l.get(MIRRORED_SERVICE))
            .is_some_and(|v| v == TRUE);
        let (cluster, tunnel) = if mirror {
            let cluster = labels
                .and_then(|l| l.get(CLUSTER_NAME))
                .cloned()
                .unwrap_or_default();
            let remote_name = annotations
                .and_then(|a| a.get(REMOTE_SVC_FQ_NAME))
                .cloned()
                .unwrap_or_default();
            match self.tunnel(&cluster, remote_name) {
                Ok(tunnel) => (Arc::from(cluster), Some(tunnel)),
                Err(message) => {
                    problems.push(Problem {
                        object: object(),
                        message: format!("{message}; the mirror's endpoints are not served"),
                    });
                    (Arc::from(cluster), None)
                }
            }
        } else {
            (shared.cluster.clone(), None)
        };

        // A mirror that cannot be reached has no endpoints rather than endpoints that would
        // send traffic nowhere.
        let endpoints = if mirror && tunnel.is_none() {
            Vec::new()
        } else {
            self.endpoints(slices, !mirror, shared, problems)
        };

        Some(ServiceEntry {
            name,
            namespace,
            ports,
            opaque,
            cluster,
            mirror,
            tunnel,
            endpoints,
            split: Vec::new(),
        })
    }

    /// The tunnel metadata of a mirror of `cluster`, or why it has none.
    fn tunnel(&self, cluster: &str, remote_name: String) -> Result<TunnelBase, String> {
        if cluster.is_empty() {
            return Err(format!("the mirror has no {CLUSTER_NAME} label"));
        }
        if remote_name.is_empty() {
            return Err(format!("the mirror has no {REMOTE_SVC_FQ_NAME} annotation"));
        }
        let Some((gateway, gateway_identity)) = &self.settings.gateway else {
            return Err("no local gateway egress address is configured".to_owned());
        };
        let Some(remote_trust_domain) = self.links.get(cluster) else {
            return Err(format!("no Link has clusterName {cluster:?}"));
        };
        Ok(TunnelBase {
            remote_name,
            gateway: *gateway,
            gateway_identity: gateway_identity.clone(),
            remote_trust_domain: remote_trust_domain.as_str().to_owned(),
        })
    }

    /// The endpoints of a Service's slices, sorted by IP; with pod labels and identities when
    /// `local` (a mirror's endpoints are in another cluster, whose gateway reports identities).
    fn endpoints(
        &self,
        slices: &[&EndpointSlice],
        local: bool,
        shared: &mut Shared<'_>,
        problems: &mut Vec<Problem>,
    ) -> Vec<EndpointEntry> {
        let mut entries = Vec::new();
        for slice in slices {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
            let object = || {
                format!(
                    "EndpointSlice {namespace}/{}",
                    slice.metadata.name.as_deref().unwrap_or_default()
                )
            };
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                problems.push(Problem {
                    object: object(),
                    message: format!(
                        "addressType {} is not served; only IPv4 and IPv6 endpoints are",
                        slice.address_type
                    ),
                });
                continue;
            }
            let ports: Arc<[SlicePort]> = slice
                .ports
                .iter()
                .flatten()
                .filter(|p| is_tcp(p.protocol.as_deref()))
                .filter_map(|p| {
                    Some(SlicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: p
                            .port
                            .and_then(|p| u16::try_from(p).ok())
                            .filter(|p| *p != 0)?,
                    })
                })
                .collect();
            for endpoint in &slice.endpoints {
                // Only the first address has a meaning (the API leaves the others undefined).
                let Some(address) = endpoint.addresses.first() else {
                    continue;
                };
                let Ok(ip) = address.parse::<IpAddr>() else {
                    problems.push(Problem {
                        object: object(),
                        message: format!("endpoint address {address:?} is not an IP; skipped"),
                    });
                    continue;
                };
                let mut entry = EndpointEntry {
                    ip: ip.to_canonical(),
                    ports: ports.clone(),
                    ready: endpoint
                        .conditions
                        .as_ref()
                        .and_then(|c| c.ready)
                        .unwrap_or(true),
                    zone: shared.zone(endpoint.zone.as_deref().unwrap_or_default()),
                    hostname: endpoint.hostname.clone().unwrap_or_default(),
                    identity: shared.empty.clone(),
                    labels: HashMap::new(),
                };
                let target = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| local && r.kind.as_deref() == Some("Pod"));
                if let Some(target) = target {
                    let pod_namespace = target.namespace.as_deref().unwrap_or(namespace);
                    let pod_name = target.name.as_deref().unwrap_or_default();
                    // An endpoint whose pod is not (or no longer) known is left out until the
                    // pod's watch catches up: guessing "no proxy" could send plain text to a
                    // meshed pod.
                    let Some(pod) = (shared.pod)(pod_namespace, pod_name) else {
                        continue;
                    };
                    if target.uid.is_some() && target.uid != pod.metadata.uid {
                        continue;
                    }
                    if runs_proxy(&pod) {
                        let account = service_account(&pod);
                        match shared.identity(&self.settings.trust_domain, pod_namespace, account) {
                            Ok(identity) => entry.identity = identity,
                            Err(error) => {
                                problems.push(Problem {
                                    object: format!("Pod {pod_namespace}/{pod_name}"),
                                    message: format!(
                                        "service account {account:?} makes no identity ({error}); \
                                         endpoint skipped"
                                    ),
                                });
                                continue;
                            }
                        }
                    }
                    entry.labels = pod
                        .metadata
                        .labels
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                }
                entries.push(entry);
            }
        }
        // Stable: equal IPs keep slice-name order.
        entries.sort_by_key(|e| e.ip);
        entries
    }

    /// Indexes the Service at `position` by name and by cluster IP.
    fn insert(&mut self, position: usize, entry: &ServiceEntry, service: &Service) {
        if let Some(spec) = &service.spec {
            let ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse::<IpAddr>().ok());
            for ip in ips {
                for port in &entry.ports {
                    self.by_cluster_ip
                        .insert(SocketAddr::new(ip.to_canonical(), port.port), position);
                }
            }
        }
        self.by_name
            .entry(entry.namespace.clone())
            .or_default()
            .insert(entry.name.clone(), position);
    }

    /// Gives each root Service the backends of its TrafficSplit (the first by name when several
    /// name the same root).
    fn attach_splits(
        &self,
        entries: &mut [ServiceEntry],
        splits: &[Arc<TrafficSplit>],
        problems: &mut Vec<Problem>,
    ) {
        let mut sorted: Vec<&TrafficSplit> = splits.iter().map(AsRef::as_ref).collect();
        sorted.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut claimed: HashMap<usize, String> = HashMap::new();
        for split in sorted {
            let namespace = split.namespace().unwrap_or_default();
            let name = split.name_any();
            let object = format!("TrafficSplit {namespace}/{name}");
            let Some(root) = self.lookup(&namespace, &split.spec.service) else {
                problems.push(Problem {
                    object,
                    message: format!(
                        "its root Service {:?} does not exist; not applied",
                        split.spec.service
                    ),
                });
                continue;
            };
            if let Some(first) = claimed.get(&root) {
                problems.push(Problem {
                    object,
                    message: format!(
                        "TrafficSplit {first} already splits Service {:?}; ignored",
                        split.spec.service
                    ),
                });
                continue;
            }
            let (backends, found) = split::backends(split);
            problems.extend(found.into_iter().map(|message| Problem {
                object: object.clone(),
                message,
            }));
            entries[root].split = backends;
            claimed.insert(root, name);
        }
    }
}

/// Every endpoint address, under the Service port it serves. An address that serves several
/// Services goes to a local one before a mirror, then to the first by namespace, name and port,
/// so that the answer does not depend on the order of the stores.
fn index_endpoints(entries: &[ServiceEntry]) -> HashMap<SocketAddr, (usize, u16)> {
    fn rank(entries: &[ServiceEntry], (position, port): (usize, u16)) -> (bool, &str, &str, u16) {
        let s = &entries[position];
        (s.mirror, &s.namespace, &s.name, port)
    }
    let mut by_endpoint: HashMap<SocketAddr, (usize, u16)> = HashMap::new();
    for (position, service) in entries.iter().enumerate() {
        for port in &service.ports {
            for endpoint in &service.endpoints {
                let Some(slice_port) = endpoint.ports.iter().find(|p| p.name == port.name) else {
                    continue;
                };
                let candidate = (position, port.port);
                match by_endpoint.entry(SocketAddr::new(endpoint.ip, slice_port.port)) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(candidate);
                    }
                    Entry::Occupied(mut occupied) => {
                        if rank(entries, candidate) < rank(entries, *occupied.get()) {
                            occupied.insert(candidate);
                        }
                    }
                }
            }
        }
    }
    by_endpoint
}

/// What the entries of one build share: the pod lookup, and strings that repeat across
/// endpoints (zones, identities), each allocated once.
struct Shared<'a> {
    pod: &'a (dyn Fn(&str, &str) -> Option<Arc<Pod>> + Sync),
    cluster: Arc<str>,
    empty: Arc<str>,
    zones: HashMap<String, Arc<str>>,
    /// Namespace -> service account -> SPIFFE ID.
    identities: HashMap<String, HashMap<String, Arc<str>>>,
}

impl<'a> Shared<'a> {
    fn new(pod: &'a (dyn Fn(&str, &str) -> Option<Arc<Pod>> + Sync), cluster: &str) -> Self {
        Self {
            pod,
            cluster: Arc::from(cluster),
            empty: Arc::from(""),
            zones: HashMap::new(),
            identities: HashMap::new(),
        }
    }

    fn zone(&mut self, zone: &str) -> Arc<str> {
        if zone.is_empty() {
            return self.empty.clone();
        }
        if let Some(shared) = self.zones.get(zone) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(zone);
        self.zones.insert(zone.to_owned(), shared.clone());
        shared
    }

    /// The identity of a service account, `spiffe://<domain>/ns/<namespace>/sa/<account>`.
    fn identity(
        &mut self,
        domain: &TrustDomain,
        namespace: &str,
        account: &str,
    ) -> Result<Arc<str>, SpiffeIdError> {
        if let Some(id) = self.identities.get(namespace).and_then(|a| a.get(account)) {
            return Ok(id.clone());
        }
        let id: Arc<str> = Arc::from(domain.workload(namespace, account)?.as_str());
        self.identities
            .entry(namespace.to_owned())
            .or_default()
            .insert(account.to_owned(), id.clone());
        Ok(id)
    }
}

/// Linked cluster name -> trust domain, from the Links (the first by namespace and name when
/// two name the same cluster).
fn index_links(links: &[Arc<Link>], problems: &mut Vec<Problem>) -> HashMap<String, TrustDomain> {
    let sorted: BTreeMap<(String, String), &Link> = links
        .iter()
        .map(|l| {
            (
                (l.namespace().unwrap_or_default(), l.name_any()),
                l.as_ref(),
            )
        })
        .collect();
    let mut by_cluster = HashMap::new();
    for ((namespace, name), link) in sorted {
        let object = format!("Link {namespace}/{name}");
        let cluster = &link.spec.cluster_name;
        let trust_domain = match TrustDomain::new(&link.spec.trust_domain) {
            Ok(domain) => domain,
            Err(error) => {
                problems.push(Problem {
                    object,
                    message: format!(
                        "trustDomain {:?} is not a trust domain ({error}); its mirrors are not served",
                        link.spec.trust_domain
                    ),
                });
                continue;
            }
        };
        match by_cluster.entry(cluster.clone()) {
            Entry::Vacant(vacant) => {
                vacant.insert(trust_domain);
            }
            Entry::Occupied(_) => problems.push(Problem {
                object,
                message: format!("another Link already names cluster {cluster:?}; ignored"),
            }),
        }
    }
    by_cluster
}

/// Whether a port protocol is TCP (the default).
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

/// Whether the pod runs the mesh proxy: as a container, or as a native sidecar (an init
/// container that keeps running).
fn runs_proxy(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == PROXY_CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always"))
}

/// The pod's service account, `default` when unset.
fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .as_deref()
                .or(s.service_account.as_deref())
        })
        .filter(|a| !a.is_empty())
        .unwrap_or("default")
}
