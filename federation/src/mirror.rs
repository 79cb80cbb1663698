//! Mirrors of a linked cluster's exported Services: what they should be ([`desired`], plain
//! data) and how they are written to the local API ([`MirrorWriter`]).
//!
//! A remote Service `<svc>` in `<ns>` becomes the local Service `<svc>-<cluster>` in `<ns>`
//! (see the crate doc for the contract with discovery and DNS):
//! - labels and annotations are copied, except those matched by the configured exclusions and
//!   the export label itself; the mirror labels ([`labels::MIRRORED_SERVICE`],
//!   [`labels::CLUSTER_NAME`]) and the [`labels::REMOTE_SVC_FQ_NAME`] annotation are added;
//! - ports are copied by name, number and protocol; the mirror's EndpointSlice carries the remote
//!   endpoints' port for each (what the caller's proxy names in its transport header, so that
//!   the remote endpoint's proxy delivers to the right port);
//! - a headless remote Service gives a headless mirror;
//! - one EndpointSlice of the same name, managed by [`MIRROR_SLICE_MANAGER`] and owned by the
//!   mirror Service (so it goes with it): a ClusterIP mirror has the local gateway's egress
//!   address as its one endpoint; a headless mirror has one endpoint per remote endpoint, with
//!   its hostname, so that per-pod DNS names exist. An endpoint is ready only while its remote
//!   counterpart (or, for ClusterIP mirrors, any remote endpoint) is ready and the remote
//!   gateway answers probes.
//!
//! The writer only ever touches objects it owns: a Service of the mirror's name without the
//! mirror labels of this cluster belongs to someone else and is reported as a conflict, never
//! overwritten. Its own objects it writes with server-side apply, force on, as their only
//! manager.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams};
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

/// Labels and annotations never copied to mirrors, besides the configured ones.
const ALWAYS_EXCLUDED: &[&str] = &[
    labels::EXPORTED,
    "kubectl.kubernetes.io/last-applied-configuration",
];

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

/// A mirror Service and its EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// The mirror Service.
    pub service: Service,
    /// Its endpoints.
    pub slice: EndpointSlice,
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
    /// The namespace does not exist here and namespaces are not created.
    #[error(
        "namespace {0:?} does not exist in this cluster: create it, or run the controller with --create-namespaces"
    )]
    NoNamespace(String),
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

/// Whether `service` is a mirror this controller made for `cluster`.
pub fn is_mirror_of(service: &Service, cluster: &str) -> bool {
    let labels = service.labels();
    labels.get(labels::MIRRORED_SERVICE).map(String::as_str) == Some(labels::TRUE)
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

fn excluded(key: &str, exclusions: &[String]) -> bool {
    ALWAYS_EXCLUDED.contains(&key)
        || exclusions.iter().any(|rule| {
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
        .filter(|(key, _)| !excluded(key, exclusions))
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
/// When the mirror's name would not fit in a DNS label.
pub fn desired(
    link: &ValidLink,
    remote: &Service,
    slices: &[&EndpointSlice],
    settings: &MirrorSettings,
    gateway_alive: bool,
) -> Result<Mirror, MirrorProblem> {
    let namespace = remote.namespace().unwrap_or_default();
    let remote_name = remote.name_any();
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

    let remote_endpoints = slices
        .iter()
        .flat_map(|slice| slice.endpoints.iter())
        .collect::<Vec<_>>();
    let (address_type, endpoints) = if headless {
        let endpoints = remote_endpoints
            .iter()
            .map(|endpoint| Endpoint {
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
            })
            .collect::<Vec<_>>();
        let ipv6 = slices
            .first()
            .is_some_and(|slice| slice.address_type == "IPv6");
        (if ipv6 { "IPv6" } else { "IPv4" }, endpoints)
    } else {
        let remote_ready = remote_endpoints.iter().any(|e| endpoint_ready(e));
        match settings.gateway_egress {
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
        }
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                (SERVICE_NAME_LABEL.to_owned(), name),
                (MANAGED_BY_LABEL.to_owned(), MIRROR_SLICE_MANAGER.to_owned()),
                (labels::CLUSTER_NAME.to_owned(), link.cluster.clone()),
            ])),
            ..ObjectMeta::default()
        },
        address_type: address_type.to_owned(),
        endpoints,
        ports: Some(
            remote_ports
                .iter()
                .map(|port| EndpointPort {
                    name: port.name.clone(),
                    port: Some(target_port(port, slices)),
                    protocol: port.protocol.clone(),
                    app_protocol: port.app_protocol.clone(),
                })
                .collect(),
        ),
    };
    Ok(Mirror { service, slice })
}

/// The annotation holding a digest of what the controller last applied to a mirror Service.
pub const MIRROR_DIGEST: &str = "mesh.io/mirror-digest";

/// A digest of `service` as the controller wants it (labels, annotations, spec).
fn digest(service: &Service) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&(
        &service.metadata.labels,
        &service.metadata.annotations,
        &service.spec,
    ))
    .unwrap_or_default()
    .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Stamps `mirror`'s Service with the digest of what it says, so that a later pass can tell,
/// without comparing field by field, whether the local object is current (a label the remote
/// dropped must be dropped here too, which a field comparison cannot see).
fn stamp(service: &mut Service) {
    let digest = digest(service);
    service
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_DIGEST.into(), digest);
}

/// Whether the local `existing` mirror is what `wanted` (a [`desired`] Service) says: its
/// digest annotation matches.
pub fn service_current(existing: &Service, wanted: &Service) -> bool {
    let want = wanted.annotations().get(MIRROR_DIGEST);
    want.is_some() && existing.annotations().get(MIRROR_DIGEST) == want
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

/// Whether the local `existing` slice already says what `wanted` says.
pub fn slice_current(existing: &EndpointSlice, wanted: &EndpointSlice) -> bool {
    existing.endpoints == wanted.endpoints
        && existing.ports == wanted.ports
        && existing.address_type == wanted.address_type
        && existing.labels() == wanted.labels()
}

/// Writes mirrors to the local API.
#[derive(Clone)]
pub struct MirrorWriter {
    client: Client,
    settings: MirrorSettings,
}

impl std::fmt::Debug for MirrorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorWriter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MirrorWriter {
    /// A writer on `client`'s cluster.
    pub fn new(client: Client, settings: MirrorSettings) -> Self {
        Self { client, settings }
    }

    /// The settings mirrors are made with.
    pub fn settings(&self) -> &MirrorSettings {
        &self.settings
    }

    /// Makes `mirror` true in the API. `existing` is the local Service of its name, if any (from
    /// the cache); `existing_slice` its slice. Nothing is written when both are current.
    ///
    /// # Errors
    ///
    /// The Service belongs to someone else, its namespace is missing, or the API refused.
    pub async fn apply(
        &self,
        mirror: &Mirror,
        cluster: &str,
        existing: Option<&Service>,
        existing_slice: Option<&EndpointSlice>,
    ) -> Result<bool, MirrorProblem> {
        let (namespace, name) = mirror.key();
        let api_error = |error: kube::Error| MirrorProblem::Api {
            namespace: namespace.clone(),
            name: name.clone(),
            reason: error.to_string(),
        };
        let services: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let service_fresh = existing.is_some_and(|e| service_current(e, &mirror.service));
        let slice_fresh = existing_slice.is_some_and(|e| slice_current(e, &mirror.slice));
        if service_fresh && slice_fresh {
            return Ok(false);
        }
        // The cache may lag: read the Service itself before deciding it is ours to write.
        let current = services.get_opt(&name).await.map_err(api_error)?;
        if let Some(current) = &current
            && !is_mirror_of(current, cluster)
        {
            return Err(MirrorProblem::NotOurs {
                namespace,
                name,
                cluster: cluster.to_owned(),
            });
        }
        if current.is_none() {
            self.ensure_namespace(&namespace).await?;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = services
            .patch(&name, &params, &Patch::Apply(&typed(&mirror.service)))
            .await
            .map_err(api_error)?;
        let mut slice = mirror.slice.clone();
        slice.metadata.owner_references = written.uid().map(|uid| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: name.clone(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        });
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
        slices
            .patch(&name, &params, &Patch::Apply(&typed(&slice)))
            .await
            .map_err(api_error)?;
        Ok(true)
    }

    /// Deletes the mirror `namespace/name` of `cluster`, if it is still one (re-read first).
    ///
    /// # Errors
    ///
    /// When the API refused.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        cluster: &str,
    ) -> Result<bool, MirrorProblem> {
        let api_error = |error: kube::Error| MirrorProblem::Api {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            reason: error.to_string(),
        };
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        match services.get_opt(name).await.map_err(api_error)? {
            Some(current) if is_mirror_of(&current, cluster) => {}
            _ => return Ok(false),
        }
        match services.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
            Err(error) => return Err(api_error(error)),
        }
        // The slice goes with its owner; delete it too where no garbage collector runs.
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        match slices.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(true),
            Err(error) => Err(api_error(error)),
        }
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), MirrorProblem> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let api_error = |error: kube::Error| MirrorProblem::Api {
            namespace: namespace.to_owned(),
            name: namespace.to_owned(),
            reason: error.to_string(),
        };
        if namespaces
            .get_opt(namespace)
            .await
            .map_err(api_error)?
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
        namespaces
            .patch(namespace, &params, &Patch::Apply(&typed(&object)))
            .await
            .map_err(api_error)?;
        Ok(())
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
            metadata: ObjectMeta::default(),
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
        assert_eq!(mirror.slice.endpoints.len(), 1);
        assert_eq!(mirror.slice.endpoints[0].addresses, vec!["10.1.0.9"]);
        // The remote endpoints' port (the targetPort here), not the Service port.
        assert_eq!(mirror.slice.ports.as_ref().unwrap()[0].port, Some(8080));
        let mut named = s.clone();
        named.ports = Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8443),
            ..EndpointPort::default()
        }]);
        let m = desired(&link(), &remote(false), &[&named], &settings(), true).unwrap();
        assert_eq!(m.slice.ports.as_ref().unwrap()[0].port, Some(8443));
        assert!(endpoint_ready(&mirror.slice.endpoints[0]));
        assert_eq!(
            mirror.slice.labels().get(MANAGED_BY_LABEL).unwrap(),
            MIRROR_SLICE_MANAGER
        );

        // Not ready when no remote endpoint is, or when the gateway is down.
        let none_ready = slice(&[(false, "web-0")]);
        let m = desired(&link(), &remote(false), &[&none_ready], &settings(), true).unwrap();
        assert!(!endpoint_ready(&m.slice.endpoints[0]));
        let m = desired(&link(), &remote(false), &[&s], &settings(), false).unwrap();
        assert!(!endpoint_ready(&m.slice.endpoints[0]));
    }

    #[test]
    fn a_headless_mirror_keeps_per_pod_names() {
        let s = slice(&[(true, "web-0"), (false, "web-1")]);
        let mirror = desired(&link(), &remote(true), &[&s], &settings(), true).unwrap();
        assert!(is_headless(&mirror.service));
        let hosts: Vec<_> = mirror
            .slice
            .endpoints
            .iter()
            .map(|e| (e.hostname.clone().unwrap(), endpoint_ready(e)))
            .collect();
        assert_eq!(
            hosts,
            vec![("web-0".to_owned(), true), ("web-1".to_owned(), false)]
        );
        let down = desired(&link(), &remote(true), &[&s], &settings(), false).unwrap();
        assert!(down.slice.endpoints.iter().all(|e| !endpoint_ready(e)));
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
}
