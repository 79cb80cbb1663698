//! mesh-federation: the controller that links clusters.
//!
//! Everything it knows lives in the Kubernetes API of its own cluster (and, through each Link's
//! credentials, of the linked clusters): Links, Services, EndpointSlices, Pods, TrafficSplits and
//! the trust bundle ConfigMap. See ARCHITECTURE.md, "Control plane".
//!
//! # How the controller's parts meet
//!
//! All parts read the local cluster through one [`cache::Cache`] (one watch per kind). They agree
//! on these objects, written by the mirror reconciler and read by discovery and DNS:
//!
//! - **A mirror** of remote Service `<svc>` in namespace `<ns>` of linked cluster `<cluster>` is
//!   the local Service `<svc>-<cluster>` in `<ns>`, labelled [`mesh_api::labels::MIRRORED_SERVICE`]
//!   `=true` and [`mesh_api::labels::CLUSTER_NAME`]`=<cluster>`, annotated
//!   [`mesh_api::labels::REMOTE_SVC_FQ_NAME`]`=<svc>.<ns>.svc.<remote cluster domain>`. Its ports
//!   are the remote ports; it has no selector; it is headless (`clusterIP: None`) exactly when the
//!   remote Service is.
//! - **A mirror's endpoints** are the EndpointSlices labelled `kubernetes.io/service-name=<mirror>`
//!   and `endpointslice.kubernetes.io/managed-by=`[`MIRROR_SLICE_MANAGER`]. A ClusterIP mirror
//!   has one endpoint, the local gateway's egress address; a headless mirror has one endpoint per
//!   remote endpoint, with its `hostname`. An endpoint is `ready` only while the remote service
//!   has ready endpoints and the remote gateway answers probes.
//! - **The Link** of a mirror is the Link whose `spec.clusterName` is the mirror's cluster label;
//!   it gives the remote trust domain.
//! - **Tunnel metadata** for a mirror endpoint (discovery): the remote cluster, the remote
//!   authority `<remote fq name>:<port>`, the local gateway's egress address and identity
//!   (`spiffe://<own domain>/ns/<mesh namespace>/sa/mesh-gateway`), and the Link's trust domain.
//! - **A meshed pod** runs the injected container named [`mesh_api::labels::PROXY_CONTAINER`]; its
//!   identity is `spiffe://<own domain>/ns/<pod namespace>/sa/<service account or default>`.
//! - **Opaque ports** are listed by the annotation [`mesh_api::labels::OPAQUE_PORTS`] on a Service
//!   (ports and ranges, comma separated: `3306,5000-5100`).
//!
//! [`dns`] serves these objects as DNS names: per-cluster, per-pod, SRV and clusterset names.
//! [`discovery`] serves the `Destination` gRPC service to proxies and gateways from these objects.
//!
//! [`prober`] probes each linked gateway through the local gateway, for the link reconciler
//! ([`probe::GatewayHealthSource`]); [`trust`] publishes this cluster's roots, keeps the linked
//! domains' roots in a ConfigMap, and serves the merged set (`TrustBundles.Watch`).

pub mod cache;
pub mod controller;
pub mod discovery;
pub mod dns;
pub mod identity;
pub mod leader;
pub mod link;
pub mod links;
pub mod mirror;
pub mod probe;
pub mod prober;
pub mod remote;
pub mod trust;

/// The `endpointslice.kubernetes.io/managed-by` value of the EndpointSlices of mirrors.
pub const MIRROR_SLICE_MANAGER: &str = "mesh-controller.multicluster.mesh.io";
