//! Label and annotation names the mesh writes and reads on Kubernetes objects.
//!
//! They are part of the contract: the controller writes them, the CLI and operators select on
//! them, and renaming one orphans every object labelled with the old name.

/// Label on a Service in an exporting cluster: `"true"` makes it visible to linked clusters.
/// It is also the default `Link` export selector.
pub const EXPORTED: &str = "mesh.io/exported";

/// The value of [`EXPORTED`] (and of [`MIRRORED_SERVICE`]) that switches the behaviour on.
pub const TRUE: &str = "true";

/// Label on a local mirror of a remote Service, set to `"true"`; lets the controller find (and
/// garbage-collect) every mirror it owns.
pub const MIRRORED_SERVICE: &str = "mesh.io/mirrored-service";

/// Label on a mirror: the name of the linked cluster the mirrored Service lives in.
pub const CLUSTER_NAME: &str = "mesh.io/cluster-name";

/// Annotation on a mirror: the remote Service's fully qualified name,
/// `<service>.<namespace>.svc.<cluster-domain>`, in the remote cluster's own names.
pub const REMOTE_SVC_FQ_NAME: &str = "mesh.io/remote-svc-fq-name";

/// Label on a failover `TrafficSplit`: the controller that owns its weights.
pub const FAILOVER_CONTROLLED_BY: &str = "failover.mesh.io/controlled-by";

/// Annotation on a failover `TrafficSplit`: the backend that takes all traffic while it is ready.
pub const FAILOVER_PRIMARY_SERVICE: &str = "failover.mesh.io/primary-service";

/// Annotation on a failover `TrafficSplit`: the fallback backends, comma separated, most
/// preferred first.
pub const FAILOVER_FALLBACK_ORDER: &str = "failover.mesh.io/fallback-order";

/// The name of the proxy sidecar container `mesh inject` adds: a pod that runs it is meshed.
pub const PROXY_CONTAINER: &str = "mesh-proxy";

/// Annotation on a Service: ports (and ranges) that carry opaque TCP, comma separated, such as
/// `3306,5000-5100`. Proxies skip protocol detection on them.
pub const OPAQUE_PORTS: &str = "config.mesh.io/opaque-ports";
