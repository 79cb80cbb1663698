//! Mirrors of a linked cluster's exported Services: what they should be ([`desired`], plain
//! data) and how they are written to the local API ([`MirrorWriter`]).
//!
//! A remote Service `<svc>` in `<ns>` becomes the local Service `<svc>-<cluster>` in `<ns>`
//! (see the crate doc for the contract with discovery and DNS):
//! - labels and annotations are copied, except those of [`copied_key`]'s rule: never the keys
//!   in the `kubernetes.io` and `k8s.io` domains and their subdomains (they steer this
//!   cluster's own controllers, which the remote cluster must not do), save the descriptive
//!   `app.kubernetes.io/` ones; never the export label; never the configured exclusions. The
//!   mirror labels ([`labels::MIRRORED_SERVICE`], [`labels::CLUSTER_NAME`]) and the
//!   [`labels::REMOTE_SVC_FQ_NAME`] annotation are added;
//! - ports are copied by name, number and protocol; the mirror's EndpointSlices carry the remote
//!   endpoints' port for each (what the caller's proxy names in its transport header, so that
//!   the remote endpoint's proxy delivers to the right port);
//! - a headless remote Service gives a headless mirror; an `ExternalName` Service is not
//!   mirrored (it has no endpoints to lead to);
//! - EndpointSlices managed by [`MIRROR_SLICE_MANAGER`] and owned by the mirror Service (so
//!   they go with it): a ClusterIP mirror has one, of the mirror's name, with the local
//!   gateway's egress address as its one endpoint; a headless mirror has one per remote slice
//!   ([`slice_name`]), of the remote slice's address type, with one endpoint per remote
//!   endpoint and its hostname, so that per-pod DNS names exist and neither dual-stack Services
//!   nor Services of more than one slice's worth of endpoints are refused. An endpoint is ready
//!   only while its remote counterpart (or, for ClusterIP mirrors, any remote endpoint) is
//!   ready and the remote gateway answers probes.
//!
//! The writer only ever touches objects it owns: a Service of the mirror's name without the
//! mirror labels of this cluster, or an EndpointSlice of a mirror slice's name not managed by
//! [`MIRROR_SLICE_MANAGER`] for that mirror, belongs to someone else and is reported as a
//! conflict, never overwritten. Its own objects it writes with server-side apply, as their only
//! manager, and deletes with a uid precondition (so an object replaced meanwhile is left
//! alone). Every API call has [`WRITE_TIMEOUT`] to answer, so one hung request cannot stall a
//! link's mirroring; a call that times out is a failed write, retried like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use mesh_api::labels;

use crate::MIRROR_SLICE_MANAGER;
use crate::link::{MAX_LABEL, ValidLink};

/// The field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "mesh-controller";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming an EndpointSlice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// How long one API call of a [`MirrorWriter`] may take before it counts as failed (kube's own
/// read timeout is close to five minutes, which would stall a link's mirroring that long).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest object name the API accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

/// Labels and annotations never copied to mirrors, besides the configured ones and the
/// Kubernetes domains (see [`copied_key`]).
const ALWAYS_EXCLUDED: &[&str] = &[labels::EXPORTED];

/// The key prefix of the descriptive Kubernetes labels, which mirrors keep.
const DESCRIPTIVE_PREFIX: &str = "app.kubernetes.io";

/// What the operator configured about mirrors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorSettings {
    /// The local gateway's egress address: the endpoint of every ClusterIP mirror. Without it,
    /// ClusterIP mirrors have no endpoints.
    pub gateway_egress: Option<IpAddr>,
    /// Label keys not copied; a key ending in `/` excludes that whole prefix.
    pub exclude_labels: Vec<String>,
    /// Annotation keys not copied; a key ending in `/` excludes that whole prefix.
    pub exclude_annotations: Vec<String>,
    /// Create a mirror's namespace when it does not exist locally (otherwise the mirror is not
    /// made and the Link says why).
    pub create_namespaces: bool,
}

/// A mirror Service and its EndpointSlices.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// The mirror Service.
    pub service: Service,
    /// Its endpoints: one slice for a ClusterIP mirror, one per remote slice for a headless
    /// one, sorted by name.
    pub slices: Vec<EndpointSlice>,
}

impl Mirror {
    /// The mirror's namespace and name.
    pub fn key(&self) -> (String, String) {
        (
            self.service.namespace().unwrap_or_default(),
            self.service.name_any(),
        )
    }
}

/// Why a remote Service is not mirrored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MirrorProblem {
    /// `<svc>-<cluster>` is longer than a DNS label.
    #[error("{namespace}/{service}: the mirror name {name:?} is longer than 63 characters")]
    NameTooLong {
        /// The remote namespace.
        namespace: String,
        /// The remote Service.
        service: String,
        /// The mirror name it would get.
        name: String,
    },
    /// The remote Service is an `ExternalName` Service: a DNS alias with no endpoints, which a
    /// ClusterIP or headless mirror cannot stand for.
    #[error(
        "{namespace}/{service}: ExternalName services are not mirrored; export the Service the name points to instead"
    )]
    ExternalName {
        /// The remote namespace.
        namespace: String,
        /// The remote Service.
        service: String,
    },
    /// A local Service of the mirror's name is not this link's mirror.
    #[error(
        "{namespace}/{name} exists and is not a mirror of cluster {cluster:?}; it is left alone: rename it or stop exporting the remote service"
    )]
    NotOurs {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
        /// The linked cluster.
        cluster: String,
    },
    /// A local EndpointSlice of a mirror slice's name is not managed by the controller for
    /// that mirror.
    #[error(
        "EndpointSlice {namespace}/{name} exists and is not managed by {MIRROR_SLICE_MANAGER} for the mirror {mirror}; it is left alone: delete or rename it"
    )]
    SliceNotOurs {
        /// The namespace.
        namespace: String,
        /// The slice's name.
        name: String,
        /// The mirror Service it would belong to.
        mirror: String,
    },
    /// The namespace does not exist here and namespaces are not created.
    #[error(
        "namespace {0:?} does not exist in this cluster: create it, or run the controller with --create-namespaces"
    )]
    NoNamespace(String),
    /// The API did not answer a call in time.
    #[error("{namespace}/{name}: the API did not answer a {action} within {after:?}; retrying")]
    Timeout {
        /// The namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// What was asked (`"apply of the Service"`, ...).
        action: &'static str,
        /// How long the call had.
        after: Duration,
    },
    /// The API refused a write.
    #[error("{namespace}/{name}: {reason}")]
    Api {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
        /// The API's answer.
        reason: String,
    },
}

/// The local name of `service`'s mirror for `cluster`, if it fits in a DNS label.
pub fn mirror_name(service: &str, cluster: &str) -> Option<String> {
    let name = format!("{service}-{cluster}");
    (name.len() <= MAX_LABEL).then_some(name)
}

/// The name of the local slice of the mirror `mirror` that mirrors the remote slice
/// `remote_slice` (headless mirrors): `<mirror>-<remote slice>`, which stays the same while
/// the remote slice exists; when that is too long for an object name, the remote slice's name
/// is replaced by its 64-bit FNV-1a hash in hex.
pub fn slice_name(mirror: &str, remote_slice: &str) -> String {
    let name = format!("{mirror}-{remote_slice}");
    if name.len() <= MAX_NAME {
        name
    } else {
        format!("{mirror}-{:016x}", fnv1a64(remote_slice.as_bytes()))
    }
}

/// Whether `service` is a mirror this controller made for `cluster`.
pub fn is_mirror_of(service: &Service, cluster: &str) -> bool {
    let labels = service.labels();
    labels.get(labels::MIRRORED_SERVICE).map(String::as_str) == Some(labels::TRUE)
        && labels.get(labels::CLUSTER_NAME).map(String::as_str) == Some(cluster)
}

/// Whether `slice` is one of the controller's slices of the mirror `mirror` of `cluster`: it
/// is labelled with that Service, managed by [`MIRROR_SLICE_MANAGER`] and that cluster.
pub fn is_slice_of(slice: &EndpointSlice, mirror: &str, cluster: &str) -> bool {
    let labels = slice.labels();
    labels.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(mirror)
        && labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MIRROR_SLICE_MANAGER)
        && labels.get(labels::CLUSTER_NAME).map(String::as_str) == Some(cluster)
}

/// Whether a Service is headless.
pub fn is_headless(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.cluster_ip.as_deref())
        == Some("None")
}

/// Whether a Service is an `ExternalName` Service.
pub fn is_external_name(service: &Service) -> bool {
    service.spec.as_ref().and_then(|spec| spec.type_.as_deref()) == Some("ExternalName")
}

/// Whether a remote label or annotation key is copied to mirrors, `exclusions` being the
/// configured ones (a rule ending in `/` excludes that prefix).
///
/// Keys whose prefix is `kubernetes.io` or `k8s.io`, or a subdomain of either
/// (`service.kubernetes.io/headless`, `external-dns.alpha.kubernetes.io/hostname`,
/// `kubectl.kubernetes.io/last-applied-configuration`, ...), are never copied: local
/// controllers act on them, and what a remote cluster exports must not steer this cluster's
/// proxies, DNS or load balancers. The `app.kubernetes.io/` labels are the exception: they only
/// describe the application. The export label is never copied either (a mirror is not itself
/// exported).
pub fn copied_key(key: &str, exclusions: &[String]) -> bool {
    let kubernetes_domain = key.split_once('/').is_some_and(|(prefix, _)| {
        prefix != DESCRIPTIVE_PREFIX
            && ["kubernetes.io", "k8s.io"].iter().any(|domain| {
                prefix == *domain
                    || prefix
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.'))
            })
    });
    !kubernetes_domain
        && !ALWAYS_EXCLUDED.contains(&key)
        && !exclusions.iter().any(|rule| {
            if rule.ends_with('/') {
                key.starts_with(rule.as_str())
            } else {
                key == rule
            }
        })
}

fn copied(
    from: Option<&BTreeMap<String, String>>,
    exclusions: &[String],
) -> BTreeMap<String, String> {
    from.into_iter()
        .flatten()
        .filter(|(key, _)| copied_key(key, exclusions))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether an endpoint is ready: `conditions.ready` absent counts as ready, as in Kubernetes.
pub fn endpoint_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// The mirror of `remote` (with its EndpointSlices `slices`) for `link`, given whether the
/// remote gateway is alive.
///
/// # Errors
///
/// When the mirror's name would not fit in a DNS label, or `remote` is an `ExternalName`
/// Service.
pub fn desired(
    link: &ValidLink,
    remote: &Service,
    slices: &[&EndpointSlice],
    settings: &MirrorSettings,
    gateway_alive: bool,
) -> Result<Mirror, MirrorProblem> {
    let namespace = remote.namespace().unwrap_or_default();
    let remote_name = remote.name_any();
    if is_external_name(remote) {
        return Err(MirrorProblem::ExternalName {
            namespace,
            service: remote_name,
        });
    }
    let name =
        mirror_name(&remote_name, &link.cluster).ok_or_else(|| MirrorProblem::NameTooLong {
            namespace: namespace.clone(),
            service: remote_name.clone(),
            name: format!("{remote_name}-{}", link.cluster),
        })?;
    let mut service_labels = copied(remote.metadata.labels.as_ref(), &settings.exclude_labels);
    service_labels.insert(labels::MIRRORED_SERVICE.into(), labels::TRUE.into());
    service_labels.insert(labels::CLUSTER_NAME.into(), link.cluster.clone());
    let mut annotations = copied(
        remote.metadata.annotations.as_ref(),
        &settings.exclude_annotations,
    );
    annotations.insert(
        labels::REMOTE_SVC_FQ_NAME.into(),
        format!("{remote_name}.{namespace}.svc.{}", link.cluster_domain),
    );
    let headless = is_headless(remote);
    let remote_ports = remote
        .spec
        .as_ref()
        .and_then(|spec| spec.ports.clone())
        .unwrap_or_default();
    let ports: Vec<ServicePort> = remote_ports
        .iter()
        .map(|port| ServicePort {
            name: port.name.clone(),
            port: port.port,
            protocol: port.protocol.clone(),
            app_protocol: port.app_protocol.clone(),
            ..ServicePort::default()
        })
        .collect();
    let mut service = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(service_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_owned()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    stamp(&mut service);

    // The store's order is arbitrary: by name, so that the result is the same every pass.
    let mut slices = slices.to_vec();
    slices.sort_by_key(|slice| slice.name_any());
    let slice_meta = |slice_name: String| ObjectMeta {
        name: Some(slice_name),
        namespace: Some(namespace.clone()),
        labels: Some(BTreeMap::from([
            (SERVICE_NAME_LABEL.to_owned(), name.clone()),
            (MANAGED_BY_LABEL.to_owned(), MIRROR_SLICE_MANAGER.to_owned()),
            (labels::CLUSTER_NAME.to_owned(), link.cluster.clone()),
        ])),
        ..ObjectMeta::default()
    };
    let slice_ports = |from: &[&EndpointSlice]| {
        remote_ports
            .iter()
            .map(|port| EndpointPort {
                name: port.name.clone(),
                port: Some(target_port(port, from)),
                protocol: port.protocol.clone(),
                app_protocol: port.app_protocol.clone(),
            })
            .collect::<Vec<_>>()
    };
    let mirror_slices = if headless {
        slices
            .iter()
            .map(|slice| EndpointSlice {
                metadata: slice_meta(slice_name(&name, &slice.name_any())),
                address_type: slice.address_type.clone(),
                endpoints: slice
                    .endpoints
                    .iter()
                    .map(|endpoint| headless_endpoint(endpoint, gateway_alive))
                    .collect(),
                ports: Some(slice_ports(&[slice])),
            })
            .collect()
    } else {
        let remote_ready = slices
            .iter()
            .flat_map(|slice| slice.endpoints.iter())
            .any(endpoint_ready);
        let (address_type, endpoints) = match settings.gateway_egress {
            Some(gateway) => (
                if gateway.is_ipv6() { "IPv6" } else { "IPv4" },
                vec![Endpoint {
                    addresses: vec![gateway.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(gateway_alive && remote_ready),
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                }],
            ),
            None => ("IPv4", Vec::new()),
        };
        vec![EndpointSlice {
            metadata: slice_meta(name.clone()),
            address_type: address_type.to_owned(),
            endpoints,
            ports: Some(slice_ports(&slices)),
        }]
    };
    Ok(Mirror {
        service,
        slices: mirror_slices,
    })
}

/// A remote endpoint as a headless mirror's endpoint: its addresses, its hostname (else its
/// pod's name, so that per-pod DNS names exist) and zone, ready while it is and the remote
/// gateway is alive.
fn headless_endpoint(endpoint: &Endpoint, gateway_alive: bool) -> Endpoint {
    Endpoint {
        addresses: endpoint.addresses.clone(),
        hostname: endpoint.hostname.clone().or_else(|| {
            endpoint
                .target_ref
                .as_ref()
                .and_then(|target| target.name.clone())
        }),
        conditions: Some(EndpointConditions {
            ready: Some(gateway_alive && endpoint_ready(endpoint)),
            ..EndpointConditions::default()
        }),
        zone: endpoint.zone.clone(),
        ..Endpoint::default()
    }
}

/// The annotation holding a digest of what the controller last applied to a mirror Service.
pub const MIRROR_DIGEST: &str = "mesh.io/mirror-digest";

/// The 64-bit FNV-1a hash of `bytes`: fixed by its definition, so a digest written by one
/// build of the controller is understood by every later one (the standard library's hasher
/// may change between Rust releases, which would rewrite every mirror after an upgrade).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// A digest of `service` as the controller wants it (labels, annotations, spec): the FNV-1a
/// hash of their JSON (maps in key order, fields in declaration order, absent fields left out).
fn digest(service: &Service) -> String {
    let json = serde_json::to_vec(&(
        &service.metadata.labels,
        &service.metadata.annotations,
        &service.spec,
    ))
    .unwrap_or_default();
    format!("{:016x}", fnv1a64(&json))
}

/// Stamps `mirror`'s Service with the digest of what it says, so that a later pass can tell
/// whether the local object is what the controller last wanted (a label the remote dropped
/// must be dropped here too, which comparing the wanted fields alone cannot see).
fn stamp(service: &mut Service) {
    let digest = digest(service);
    service
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_DIGEST.into(), digest);
}

/// Whether the local `existing` mirror is what `wanted` (a [`desired`] Service) says.
///
/// Its digest annotation must match (what the controller last applied is what it wants now),
/// and the parts the controller sets must still say what they said (a hand edit that left the
/// digest alone is repaired): every wanted label and annotation with its value, the type,
/// headlessness and the ports (name, number, protocol defaulting to TCP, application
/// protocol). What the API server adds (a cluster IP, target ports, session affinity) does not
/// make a mirror stale.
pub fn service_current(existing: &Service, wanted: &Service) -> bool {
    fn includes(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
        want.iter().all(|(key, value)| have.get(key) == Some(value))
    }
    fn service_type(service: &Service) -> &str {
        service
            .spec
            .as_ref()
            .and_then(|spec| spec.type_.as_deref())
            .unwrap_or("ClusterIP")
    }
    fn ports(service: &Service) -> Vec<(Option<&str>, i32, &str, Option<&str>)> {
        service
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|port| {
                (
                    port.name.as_deref(),
                    port.port,
                    port.protocol.as_deref().unwrap_or("TCP"),
                    port.app_protocol.as_deref(),
                )
            })
            .collect()
    }
    wanted.annotations().contains_key(MIRROR_DIGEST)
        && includes(existing.annotations(), wanted.annotations())
        && includes(existing.labels(), wanted.labels())
        && is_headless(existing) == is_headless(wanted)
        && service_type(existing) == service_type(wanted)
        && ports(existing) == ports(wanted)
}

/// The port a remote Service port leads to on its endpoints: the remote slices' port of the same
/// name, else a numeric `targetPort`, else the port itself. The caller's proxy names it in the
/// transport header, and the remote endpoint's proxy delivers to it.
fn target_port(port: &ServicePort, slices: &[&EndpointSlice]) -> i32 {
    slices
        .iter()
        .flat_map(|slice| slice.ports.iter().flatten())
        .find(|p| p.name == port.name)
        .and_then(|p| p.port)
        .or(match &port.target_port {
            Some(IntOrString::Int(n)) => Some(*n),
            _ => None,
        })
        .unwrap_or(port.port)
}

/// Whether the local `existing` slice already says what `wanted` says (its owner included).
pub fn slice_current(existing: &EndpointSlice, wanted: &EndpointSlice) -> bool {
    existing.endpoints == wanted.endpoints
        && existing.ports == wanted.ports
        && existing.address_type == wanted.address_type
        && existing.labels() == wanted.labels()
        && existing.metadata.owner_references == wanted.metadata.owner_references
}

/// Writes mirrors to the local API.
#[derive(Clone)]
pub struct MirrorWriter {
    client: Client,
    settings: MirrorSettings,
    timeout: Duration,
}

impl std::fmt::Debug for MirrorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorWriter")
            .field("settings", &self.settings)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What one API call of the writer came to, when the API answered in time.
type Answer<T> = Result<T, kube::Error>;

impl MirrorWriter {
    /// A writer on `client`'s cluster; each API call has [`WRITE_TIMEOUT`].
    pub fn new(client: Client, settings: MirrorSettings) -> Self {
        Self {
            client,
            settings,
            timeout: WRITE_TIMEOUT,
        }
    }

    /// The same writer, giving each API call `timeout` instead of [`WRITE_TIMEOUT`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The settings mirrors are made with.
    pub fn settings(&self) -> &MirrorSettings {
        &self.settings
    }

    /// Makes `mirror` true in the API and returns whether anything was written.
    ///
    /// `existing` is the local Service of its name, if any, and `existing_slices` the local
    /// EndpointSlices labelled with its name or named as one of its slices (both from the
    /// cache). When the Service is current ([`service_current`]), only the slices that differ
    /// are applied, owned by the cached Service's uid: a readiness change costs one request.
    /// Otherwise the Service is read first (the cache may lag), checked to be this cluster's
    /// mirror, recreated with its slices when its headlessness must change (the API never
    /// changes a Service's cluster IP), and applied. Then each wanted slice is applied unless
    /// current or someone else's, and the mirror's slices no longer wanted are deleted.
    ///
    /// # Errors
    ///
    /// The Service or a slice belongs to someone else, the namespace is missing, the API
    /// refused or did not answer in time. Slices that could be written are written even when
    /// another is someone else's.
    pub async fn apply(
        &self,
        mirror: &Mirror,
        cluster: &str,
        existing: Option<&Service>,
        existing_slices: &[&EndpointSlice],
    ) -> Result<bool, MirrorProblem> {
        let cached_uid = existing
            .filter(|service| service_current(service, &mirror.service))
            .and_then(|service| service.uid());
        let (uid, service_written) = match cached_uid {
            Some(uid) => (uid, false),
            None => (
                self.write_service(mirror, cluster, existing_slices).await?,
                true,
            ),
        };
        let slices_written = self
            .write_slices(mirror, cluster, &uid, existing_slices)
            .await?;
        Ok(service_written || slices_written)
    }

    /// Reads, checks and applies the mirror's Service (recreating it when its headlessness
    /// changes); returns its uid.
    async fn write_service(
        &self,
        mirror: &Mirror,
        cluster: &str,
        existing_slices: &[&EndpointSlice],
    ) -> Result<String, MirrorProblem> {
        let (namespace, name) = mirror.key();
        let services: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let current = self
            .call(
                &namespace,
                &name,
                "read of the Service",
                services.get_opt(&name),
            )
            .await?;
        match &current {
            Some(current) if !is_mirror_of(current, cluster) => {
                return Err(MirrorProblem::NotOurs {
                    namespace,
                    name,
                    cluster: cluster.to_owned(),
                });
            }
            Some(current) if is_headless(current) != is_headless(&mirror.service) => {
                tracing::info!(
                    %namespace, %name, headless = is_headless(&mirror.service),
                    "the remote service changed between headless and ClusterIP; recreating its mirror"
                );
                if !self.delete_service(current).await? {
                    return Err(MirrorProblem::Api {
                        namespace,
                        name,
                        reason: "the mirror is being deleted to change between headless and ClusterIP; it is recreated once it is gone".into(),
                    });
                }
                for slice in existing_slices
                    .iter()
                    .filter(|slice| is_slice_of(slice, &name, cluster))
                {
                    self.delete_slice(slice).await?;
                }
            }
            Some(_) => {}
            None => self.ensure_namespace(&namespace).await?,
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = self
            .call(
                &namespace,
                &name,
                "apply of the Service",
                services.patch(&name, &params, &Patch::Apply(&typed(&mirror.service))),
            )
            .await?;
        written.uid().ok_or_else(|| MirrorProblem::Api {
            namespace,
            name,
            reason: "the API answered the apply with a Service without a uid".into(),
        })
    }

    /// Applies the wanted slices that differ, owned by the Service `uid`, and deletes the
    /// mirror's slices no longer wanted; returns whether anything was written.
    async fn write_slices(
        &self,
        mirror: &Mirror,
        cluster: &str,
        uid: &str,
        existing: &[&EndpointSlice],
    ) -> Result<bool, MirrorProblem> {
        let (namespace, name) = mirror.key();
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: name.clone(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut written = false;
        let mut first_problem = None;
        for wanted in &mirror.slices {
            let slice_name = wanted.name_any();
            let mut slice = wanted.clone();
            slice.metadata.owner_references = Some(vec![owner.clone()]);
            let current = existing.iter().find(|e| {
                e.name_any() == slice_name && e.namespace().as_deref() == Some(&namespace)
            });
            let force = match current {
                // Absent as far as the cache knows: a plain apply, which an object someone
                // else made meanwhile refuses (a conflict) rather than hands over.
                None => false,
                Some(current) if !is_slice_of(current, &name, cluster) => {
                    first_problem.get_or_insert(MirrorProblem::SliceNotOurs {
                        namespace: namespace.clone(),
                        name: slice_name,
                        mirror: name.clone(),
                    });
                    continue;
                }
                Some(current) if slice_current(current, &slice) => continue,
                Some(_) => true,
            };
            let mut params = PatchParams::apply(FIELD_MANAGER);
            params.force = force;
            let result = self
                .call(
                    &namespace,
                    &slice_name,
                    "apply of the EndpointSlice",
                    api.patch(&slice_name, &params, &Patch::Apply(&typed(&slice))),
                )
                .await;
            match result {
                Ok(_) => written = true,
                Err(problem) => {
                    first_problem.get_or_insert(problem);
                }
            }
        }
        let wanted: BTreeSet<String> = mirror.slices.iter().map(ResourceExt::name_any).collect();
        for stale in existing
            .iter()
            .filter(|slice| is_slice_of(slice, &name, cluster))
            .filter(|slice| !wanted.contains(&slice.name_any()))
        {
            match self.delete_slice(stale).await {
                Ok(deleted) => written |= deleted,
                Err(problem) => {
                    first_problem.get_or_insert(problem);
                }
            }
        }
        match first_problem {
            Some(problem) => Err(problem),
            None => Ok(written),
        }
    }

    /// Deletes the mirror `namespace/name` of `cluster`, if it is still one (re-read first),
    /// and its slices (listed from the API), each with a uid precondition.
    ///
    /// # Errors
    ///
    /// When the API refused or did not answer in time, or an object was replaced between the
    /// read and the delete.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        cluster: &str,
    ) -> Result<bool, MirrorProblem> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let current = self
            .call(
                namespace,
                name,
                "read of the Service",
                services.get_opt(name),
            )
            .await?;
        match current {
            Some(current) if is_mirror_of(&current, cluster) => {
                self.delete_service(&current).await?;
            }
            _ => return Ok(false),
        }
        // The slices go with their owner; delete them too where no garbage collector runs.
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let selector =
            format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MIRROR_SLICE_MANAGER}");
        let list = self
            .call(
                namespace,
                name,
                "list of the EndpointSlices",
                slices.list(&ListParams::default().labels(&selector)),
            )
            .await?;
        for slice in list.items.iter().filter(|s| is_slice_of(s, name, cluster)) {
            self.delete_slice(slice).await?;
        }
        Ok(true)
    }

    /// Deletes `service` if it still has its uid; returns whether it is gone (not merely
    /// being deleted).
    async fn delete_service(&self, service: &Service) -> Result<bool, MirrorProblem> {
        self.delete_object(service, "delete of the Service").await
    }

    /// Deletes `slice` if it still has its uid; returns whether it is gone.
    async fn delete_slice(&self, slice: &EndpointSlice) -> Result<bool, MirrorProblem> {
        self.delete_object(slice, "delete of the EndpointSlice")
            .await
    }

    async fn delete_object<K>(
        &self,
        object: &K,
        action: &'static str,
    ) -> Result<bool, MirrorProblem>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams::default().preconditions(Preconditions {
            uid: object.uid(),
            resource_version: None,
        });
        match self
            .call_raw(&namespace, &name, action, api.delete(&name, &params))
            .await?
        {
            Ok(either) => Ok(either.is_right()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(MirrorProblem::Api {
                namespace,
                name,
                reason: "replaced since it was read; left alone until the next pass".into(),
            }),
            Err(error) => Err(api_problem(&namespace, &name, &error)),
        }
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), MirrorProblem> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if self
            .call(
                namespace,
                namespace,
                "read of the Namespace",
                namespaces.get_opt(namespace),
            )
            .await?
            .is_some()
        {
            return Ok(());
        }
        if !self.settings.create_namespaces {
            return Err(MirrorProblem::NoNamespace(namespace.to_owned()));
        }
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let params = PatchParams::apply(FIELD_MANAGER);
        self.call(
            namespace,
            namespace,
            "apply of the Namespace",
            namespaces.patch(namespace, &params, &Patch::Apply(&typed(&object))),
        )
        .await?;
        Ok(())
    }

    /// One API call about `namespace/name`, bounded by the writer's timeout; the API's errors
    /// become [`MirrorProblem::Api`].
    async fn call<T>(
        &self,
        namespace: &str,
        name: &str,
        action: &'static str,
        request: impl Future<Output = Answer<T>>,
    ) -> Result<T, MirrorProblem> {
        self.call_raw(namespace, name, action, request)
            .await?
            .map_err(|error| api_problem(namespace, name, &error))
    }

    /// One API call bounded by the writer's timeout, the API's answer left to the caller.
    async fn call_raw<T>(
        &self,
        namespace: &str,
        name: &str,
        action: &'static str,
        request: impl Future<Output = Answer<T>>,
    ) -> Result<Answer<T>, MirrorProblem> {
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| MirrorProblem::Timeout {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                action,
                after: self.timeout,
            })
    }
}

fn api_problem(namespace: &str, name: &str, error: &kube::Error) -> MirrorProblem {
    MirrorProblem::Api {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        reason: error.to_string(),
    }
}

/// `object` as JSON with its apiVersion and kind, as server-side apply requires.
fn typed<K>(object: &K) -> serde_json::Value
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    value
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use mesh_trust::{SpiffeId, TrustBundleSet, TrustDomain};
    use std::time::Duration;

    fn link() -> ValidLink {
        let trust_domain = TrustDomain::new("east.local").unwrap();
        ValidLink {
            namespace: "mesh".into(),
            name: "east".into(),
            cluster: "east".into(),
            gateway_identity: SpiffeId::parse("spiffe://east.local/ns/mesh/sa/mesh-gateway")
                .unwrap(),
            trust_domain,
            cluster_domain: "cluster.local".into(),
            gateway_addresses: vec!["10.0.0.1".into()],
            gateway_port: 4180,
            credentials_secret: "east".into(),
            bundle: TrustBundleSet::new(),
            bundle_config_map: "mesh-trust-bundle".into(),
            export_selector: kube::core::Selector::default(),
            probe_period: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(1),
            probe_failure_threshold: 3,
        }
    }

    fn remote(headless: bool) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "shop",
                "labels": {"app": "web", "mesh.io/exported": "true", "team.example.com/owner": "a"},
                "annotations": {"note": "x", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
            },
            "spec": {
                "clusterIP": if headless { "None" } else { "10.96.0.7" },
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
            }
        }))
        .unwrap()
    }

    fn slice(ready: &[(bool, &str)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-abcde".into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: ready
                .iter()
                .enumerate()
                .map(|(i, (ready, pod))| Endpoint {
                    addresses: vec![format!("10.2.0.{}", i + 1)],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    target_ref: Some(ObjectReference {
                        name: Some((*pod).into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn settings() -> MirrorSettings {
        MirrorSettings {
            gateway_egress: Some("10.1.0.9".parse().unwrap()),
            exclude_labels: vec!["team.example.com/".into()],
            ..MirrorSettings::default()
        }
    }

    #[test]
    fn a_cluster_ip_mirror_leads_to_the_gateway() {
        let s = slice(&[(false, "web-0"), (true, "web-1")]);
        let mirror = desired(&link(), &remote(false), &[&s], &settings(), true).unwrap();
        assert_eq!(mirror.key(), ("shop".into(), "web-east".into()));
        let labels = mirror.service.labels();
        assert_eq!(labels.get("app").unwrap(), "web");
        assert_eq!(labels.get(labels::MIRRORED_SERVICE).unwrap(), "true");
        assert_eq!(labels.get(labels::CLUSTER_NAME).unwrap(), "east");
        assert!(!labels.contains_key(labels::EXPORTED));
        assert!(!labels.contains_key("team.example.com/owner"));
        let annotations = mirror.service.annotations();
        assert_eq!(
            annotations.get(labels::REMOTE_SVC_FQ_NAME).unwrap(),
            "web.shop.svc.cluster.local"
        );
        assert!(!annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        let spec = mirror.service.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip, None);
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 80));
        assert_eq!(port.target_port, None);
        assert_eq!(mirror.slices[0].endpoints.len(), 1);
        assert_eq!(mirror.slices[0].endpoints[0].addresses, vec!["10.1.0.9"]);
        // The remote endpoints' port (the targetPort here), not the Service port.
        assert_eq!(mirror.slices[0].ports.as_ref().unwrap()[0].port, Some(8080));
        let mut named = s.clone();
        named.ports = Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8443),
            ..EndpointPort::default()
        }]);
        let m = desired(&link(), &remote(false), &[&named], &settings(), true).unwrap();
        assert_eq!(m.slices[0].ports.as_ref().unwrap()[0].port, Some(8443));
        assert!(endpoint_ready(&mirror.slices[0].endpoints[0]));
        assert_eq!(
            mirror.slices[0].labels().get(MANAGED_BY_LABEL).unwrap(),
            MIRROR_SLICE_MANAGER
        );

        // Not ready when no remote endpoint is, or when the gateway is down.
        let none_ready = slice(&[(false, "web-0")]);
        let m = desired(&link(), &remote(false), &[&none_ready], &settings(), true).unwrap();
        assert!(!endpoint_ready(&m.slices[0].endpoints[0]));
        let m = desired(&link(), &remote(false), &[&s], &settings(), false).unwrap();
        assert!(!endpoint_ready(&m.slices[0].endpoints[0]));
    }

    #[test]
    fn a_headless_mirror_keeps_per_pod_names() {
        let s = slice(&[(true, "web-0"), (false, "web-1")]);
        let mirror = desired(&link(), &remote(true), &[&s], &settings(), true).unwrap();
        assert!(is_headless(&mirror.service));
        assert_eq!(mirror.slices.len(), 1);
        assert_eq!(mirror.slices[0].name_any(), "web-east-web-abcde");
        let hosts: Vec<_> = mirror.slices[0]
            .endpoints
            .iter()
            .map(|e| (e.hostname.clone().unwrap(), endpoint_ready(e)))
            .collect();
        assert_eq!(
            hosts,
            vec![("web-0".to_owned(), true), ("web-1".to_owned(), false)]
        );
        let down = desired(&link(), &remote(true), &[&s], &settings(), false).unwrap();
        assert!(down.slices[0].endpoints.iter().all(|e| !endpoint_ready(e)));
    }

    #[test]
    fn long_names_are_refused_and_ownership_is_by_label() {
        let mut long = remote(false);
        long.metadata.name = Some("w".repeat(60));
        assert!(matches!(
            desired(&link(), &long, &[], &settings(), true),
            Err(MirrorProblem::NameTooLong { .. })
        ));
        let mirror = desired(&link(), &remote(false), &[], &settings(), true).unwrap();
        assert!(is_mirror_of(&mirror.service, "east"));
        assert!(!is_mirror_of(&mirror.service, "north"));
        assert!(!is_mirror_of(&remote(false), "east"));
    }

    #[test]
    fn currency_follows_the_digest() {
        let mirror = desired(&link(), &remote(false), &[], &settings(), true).unwrap();
        let mut existing = mirror.service.clone();
        // What the API server adds (a ClusterIP) does not make a mirror stale.
        existing.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.20".into());
        assert!(service_current(&existing, &mirror.service));
        // A label the remote dropped makes it stale.
        let mut changed = remote(false);
        changed.metadata.labels.as_mut().unwrap().remove("app");
        let wanted = desired(&link(), &changed, &[], &settings(), true).unwrap();
        assert!(!service_current(&existing, &wanted.service));
        // So does a changed port.
        let mut changed = remote(false);
        changed.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
        let wanted = desired(&link(), &changed, &[], &settings(), true).unwrap();
        assert!(!service_current(&existing, &wanted.service));
    }

    fn remote_slice(
        name: &str,
        address_type: &str,
        addresses: &[&str],
        port: i32,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            address_type: address_type.into(),
            endpoints: addresses
                .iter()
                .map(|address| Endpoint {
                    addresses: vec![(*address).into()],
                    hostname: Some(format!("h{}", address.replace([':', '.'], "-"))),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(port),
                ..EndpointPort::default()
            }]),
        }
    }

    #[test]
    fn a_headless_mirror_has_one_slice_per_remote_slice() {
        // Dual stack, listed in no particular order: one local slice per remote slice, each of
        // its remote slice's address type and ports.
        let v6 = remote_slice("web-v6", "IPv6", &["fd00::1"], 8443);
        let v4 = remote_slice("web-v4", "IPv4", &["10.2.0.1", "10.2.0.2"], 8080);
        let mirror = desired(&link(), &remote(true), &[&v6, &v4], &settings(), true).unwrap();
        let summary: Vec<_> = mirror
            .slices
            .iter()
            .map(|s| {
                (
                    s.name_any(),
                    s.address_type.clone(),
                    s.endpoints.len(),
                    s.ports.as_ref().unwrap()[0].port,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "web-east-web-v4".to_owned(),
                    "IPv4".to_owned(),
                    2,
                    Some(8080)
                ),
                (
                    "web-east-web-v6".to_owned(),
                    "IPv6".to_owned(),
                    1,
                    Some(8443)
                ),
            ]
        );
        for slice in &mirror.slices {
            assert_eq!(slice.labels().get(SERVICE_NAME_LABEL).unwrap(), "web-east");
            assert!(is_slice_of(slice, "web-east", "east"));
            assert!(!is_slice_of(slice, "web-east", "north"));
        }

        // More endpoints than one slice may hold: they stay in as many slices as the remote's.
        let many = |name: &str, n: usize, base: usize| {
            let addresses: Vec<String> = (base..base + n)
                .map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
                .collect();
            let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            remote_slice(name, "IPv4", &refs, 8080)
        };
        let (a, b) = (many("web-a", 1000, 0), many("web-b", 500, 1000));
        let mirror = desired(&link(), &remote(true), &[&a, &b], &settings(), true).unwrap();
        let sizes: Vec<usize> = mirror.slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![1000, 500]);

        // A remote slice name too long to prefix is hashed, the same way every time.
        let long = "s".repeat(250);
        let name = slice_name("web-east", &long);
        assert!(name.len() <= 253 && name.starts_with("web-east-"), "{name}");
        assert_eq!(name, slice_name("web-east", &long));
        assert_ne!(name, slice_name("web-east", &"t".repeat(250)));

        // No remote slices: no local slices (a ClusterIP mirror keeps its one slice).
        let empty = desired(&link(), &remote(true), &[], &settings(), true).unwrap();
        assert!(empty.slices.is_empty());
        let cluster_ip = desired(&link(), &remote(false), &[&v4, &v6], &settings(), true).unwrap();
        assert_eq!(cluster_ip.slices.len(), 1);
        assert_eq!(cluster_ip.slices[0].name_any(), "web-east");
    }

    #[test]
    fn external_name_services_are_not_mirrored() {
        let mut external = remote(false);
        let spec = external.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("db.example.com".into());
        spec.cluster_ip = None;
        spec.ports = None;
        let problem = desired(&link(), &external, &[], &settings(), true).unwrap_err();
        assert_eq!(
            problem,
            MirrorProblem::ExternalName {
                namespace: "shop".into(),
                service: "web".into()
            }
        );
        assert!(
            problem
                .to_string()
                .contains("ExternalName services are not mirrored"),
            "{problem}"
        );
    }

    #[test]
    fn kubernetes_domains_are_never_copied_but_app_labels_are() {
        let none: &[String] = &[];
        for key in [
            "kubernetes.io/service-name",
            "service.kubernetes.io/headless",
            "service.kubernetes.io/topology-mode",
            "external-dns.alpha.kubernetes.io/hostname",
            "kubectl.kubernetes.io/last-applied-configuration",
            "k8s.io/anything",
            "node.k8s.io/x",
            "endpointslice.kubernetes.io/managed-by",
            labels::EXPORTED,
        ] {
            assert!(!copied_key(key, none), "{key} must not be copied");
        }
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/part-of",
            "app",
            "team.example.com/owner",
            "notkubernetes.io/x",
            "kubernetes.io.example.com/x",
            labels::OPAQUE_PORTS,
        ] {
            assert!(copied_key(key, none), "{key} must be copied");
        }
        assert!(!copied_key(
            "team.example.com/owner",
            &["team.example.com/".to_owned()]
        ));
        assert!(!copied_key("note", &["note".to_owned()]));

        let mut remote = remote(false);
        remote.metadata.labels.as_mut().unwrap().extend([
            ("app.kubernetes.io/name".to_owned(), "web".to_owned()),
            ("service.kubernetes.io/headless".to_owned(), String::new()),
        ]);
        remote.metadata.annotations.as_mut().unwrap().insert(
            "external-dns.alpha.kubernetes.io/hostname".into(),
            "web.example.com".into(),
        );
        let mirror = desired(&link(), &remote, &[], &settings(), true).unwrap();
        assert!(
            mirror
                .service
                .labels()
                .contains_key("app.kubernetes.io/name")
        );
        assert!(
            !mirror
                .service
                .labels()
                .contains_key("service.kubernetes.io/headless")
        );
        assert!(
            !mirror
                .service
                .annotations()
                .contains_key("external-dns.alpha.kubernetes.io/hostname")
        );
    }

    #[test]
    fn the_digest_is_fixed_across_builds() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // What this build writes for a fixed Service: any later build must write the same, or
        // an upgrade would rewrite every mirror.
        let mirror = desired(&link(), &remote(false), &[], &settings(), true).unwrap();
        assert_eq!(
            mirror.service.annotations().get(MIRROR_DIGEST).unwrap(),
            "fc79de01a3ecdc17"
        );
    }

    #[test]
    fn hand_edits_that_keep_the_digest_are_seen() {
        let mut bare = remote(false);
        bare.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = None;
        let wanted = desired(&link(), &bare, &[], &settings(), true)
            .unwrap()
            .service;
        // What the API server and others add does not make a mirror stale.
        let mut existing = wanted.clone();
        let spec = existing.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.20".into());
        spec.cluster_ips = Some(vec!["10.96.0.20".into()]);
        spec.session_affinity = Some("None".into());
        spec.ip_families = Some(vec!["IPv4".into()]);
        let port = &mut spec.ports.as_mut().unwrap()[0];
        port.protocol = Some("TCP".into());
        port.target_port = Some(IntOrString::Int(80));
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by".into(), "someone".into());
        existing.metadata.uid = Some("u1".into());
        assert!(service_current(&existing, &wanted));

        let edited = |edit: &dyn Fn(&mut Service)| {
            let mut service = existing.clone();
            edit(&mut service);
            service_current(&service, &wanted)
        };
        fn spec_of(service: &mut Service) -> &mut ServiceSpec {
            service.spec.as_mut().unwrap()
        }
        assert!(!edited(&|s| spec_of(s).ports.as_mut().unwrap()[0].port = 81));
        assert!(!edited(
            &|s| spec_of(s).ports.as_mut().unwrap()[0].name = None
        ));
        assert!(!edited(&|s| spec_of(s).ports.as_mut().unwrap().push(
            ServicePort {
                port: 9090,
                ..ServicePort::default()
            }
        )));
        assert!(!edited(&|s| spec_of(s).cluster_ip = Some("None".into())));
        assert!(!edited(&|s| spec_of(s).type_ = Some("NodePort".into())));
        assert!(!edited(&|s| {
            s.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("app".into(), "other".into());
        }));
        assert!(!edited(&|s| {
            s.metadata
                .labels
                .as_mut()
                .unwrap()
                .remove(labels::MIRRORED_SERVICE);
        }));
        assert!(!edited(&|s| {
            s.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(labels::REMOTE_SVC_FQ_NAME.into(), "other.shop.svc".into());
        }));
    }
}
