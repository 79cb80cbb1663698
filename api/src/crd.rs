//! The Kubernetes custom resources the mesh reads and writes.
//!
//! - [`Link`] (`multicluster.mesh.io/v1alpha1`): one linked remote cluster, its gateway, its
//!   credentials and its trust bundle. Written by `mesh link`, reconciled by the controller.
//! - [`TrafficSplit`] (`split.smi-spec.io/v1alpha2`): a root service and weighted backends, in
//!   the SMI shape, so that TrafficSplits written for Linkerd parse unchanged.
//!
//! Only types and defaults live here; validation and behaviour belong to the controller. Every
//! default is a serde default (so a minimal object deserializes) and, through schemars, a schema
//! default (so the API server fills it in and `kubectl get -o yaml` shows it).

use std::collections::BTreeMap;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector},
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{labels, ports};

/// Default [`LinkSpec::cluster_domain`].
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Default [`LinkSpec::trust_bundle_config_map`].
pub const DEFAULT_TRUST_BUNDLE_CONFIG_MAP: &str = "mesh-trust-bundle";
/// The key of the PEM root certificates in a trust bundle ConfigMap (this cluster's, published
/// by its controller, and the one a Link's [`LinkSpec::trust_bundle_config_map`] names).
pub const TRUST_BUNDLE_CONFIG_MAP_KEY: &str = "roots.pem";
/// The key of the trust domain's name in a trust bundle ConfigMap.
pub const TRUST_DOMAIN_CONFIG_MAP_KEY: &str = "trustDomain";
/// The key of the kubeconfig in the Secret named by [`LinkSpec::credentials_secret`].
pub const CREDENTIALS_SECRET_KEY: &str = "kubeconfig";
/// Default [`LinkProbe::period_seconds`].
pub const DEFAULT_PROBE_PERIOD_SECONDS: u32 = 3;
/// Default [`LinkProbe::timeout_seconds`].
pub const DEFAULT_PROBE_TIMEOUT_SECONDS: u32 = 1;
/// Default [`LinkProbe::failure_threshold`].
pub const DEFAULT_PROBE_FAILURE_THRESHOLD: u32 = 3;

/// A link to a remote cluster: how to reach its gateway, its API and its trust domain.
// clippy reads the repeated `type_ = "integer"` of two printer columns as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.mesh.io",
    version = "v1alpha1",
    kind = "Link",
    namespaced,
    status = "LinkStatus",
    shortname = "link",
    derive = "PartialEq",
    doc = "A link to a remote cluster: its gateway, API credentials and trust bundle.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        description = "The remote cluster's name",
        json_path = ".spec.clusterName"
    ),
    printcolumn(
        name = "Alive",
        type_ = "boolean",
        description = "Whether the remote gateway answers probes",
        json_path = ".status.gateway.alive"
    ),
    printcolumn(
        name = "Latency",
        type_ = "integer",
        description = "Probe round trip to the remote gateway, in milliseconds",
        json_path = ".status.gateway.latencyMs"
    ),
    printcolumn(
        name = "Mirrored",
        type_ = "integer",
        description = "Remote services mirrored into this cluster",
        json_path = ".status.mirroredServices"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// The remote cluster's name. Mirrors are named `<service>-<clusterName>`.
    pub cluster_name: String,

    /// The remote cluster's trust domain: identities of its workloads are
    /// `spiffe://<trustDomain>/...`.
    pub trust_domain: String,

    /// The remote cluster's DNS domain, used to build remote service names.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,

    /// Where the remote gateway listens, and who it is.
    pub gateway: LinkGateway,

    /// The name of a Secret in the Link's namespace holding a kubeconfig for the remote API under
    /// the key `kubeconfig`.
    pub credentials_secret: String,

    /// PEM root certificates of the remote trust domain, as known when the link was made. The
    /// controller keeps it current from `trustBundleConfigMap`.
    pub trust_bundle: String,

    /// The ConfigMap, in the remote cluster, that publishes its trust bundle; watched so that a
    /// root rotation there reaches this cluster without a new link.
    #[serde(default = "default_trust_bundle_config_map")]
    pub trust_bundle_config_map: String,

    /// Which remote Services are mirrored here.
    #[serde(default = "default_export_selector")]
    pub export_selector: LabelSelector,

    /// How the remote gateway is probed.
    #[serde(default)]
    pub probe: LinkProbe,
}

/// The remote cluster's gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkGateway {
    /// IP addresses or host names of the gateway; host names are re-resolved, so a load
    /// balancer's changing addresses are followed.
    pub addresses: Vec<String>,

    /// The gateway's QUIC port (UDP).
    #[serde(default = "default_gateway_port")]
    pub port: u16,

    /// The SPIFFE ID the remote gateway must present.
    pub identity: String,
}

/// How the remote gateway is probed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkProbe {
    /// Seconds between probes.
    #[serde(default = "default_probe_period_seconds")]
    pub period_seconds: u32,

    /// Seconds to wait for a probe's answer.
    #[serde(default = "default_probe_timeout_seconds")]
    pub timeout_seconds: u32,

    /// Consecutive failed probes after which the gateway is considered down.
    #[serde(default = "default_probe_failure_threshold")]
    pub failure_threshold: u32,
}

/// What the controller observed of a Link.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// Standard conditions, one per `type`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The remote gateway's health as seen by probes.
    #[serde(default)]
    pub gateway: LinkGatewayStatus,

    /// How many remote services are mirrored into this cluster.
    #[serde(default)]
    pub mirrored_services: u32,

    /// The remote trust bundle in use.
    #[serde(default)]
    pub trust_bundle: LinkTrustBundleStatus,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The remote gateway's health as seen by probes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkGatewayStatus {
    /// Whether the gateway answers probes (false after `failureThreshold` failures in a row).
    #[serde(default)]
    pub alive: bool,

    /// The last successful probe's round trip, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,

    /// When the last probe was sent, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<String>,
}

/// The trust bundle in use for a Link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkTrustBundleStatus {
    /// The roots of each trust domain in the bundle.
    #[serde(default)]
    pub domains: Vec<TrustDomainStatus>,
}

/// The roots of one trust domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustDomainStatus {
    /// The trust domain, e.g. `east`.
    pub trust_domain: String,

    /// Its root certificates; several during a rotation.
    #[serde(default)]
    pub roots: Vec<TrustRootStatus>,
}

/// One root certificate, summarized.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustRootStatus {
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,

    /// The certificate's notAfter, RFC 3339.
    pub not_after: String,
}

/// An SMI TrafficSplit: traffic for `service` is spread over `backends` by weight.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha2",
    kind = "TrafficSplit",
    namespaced,
    shortname = "ts",
    derive = "PartialEq",
    doc = "An SMI TrafficSplit: traffic for a root service spread over weighted backends."
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitSpec {
    /// The root service clients address.
    pub service: String,

    /// The services that actually receive the traffic.
    pub backends: Vec<TrafficSplitBackend>,
}

/// One backend of a TrafficSplit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplitBackend {
    /// The backend service, in the TrafficSplit's namespace.
    pub service: String,

    /// Its share of traffic, relative to the other backends' weights.
    pub weight: i64,
}

/// The CustomResourceDefinitions of [`Link`] and [`TrafficSplit`].
#[must_use]
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Link::crd(), TrafficSplit::crd()]
}

/// [`crds`] as a multi-document YAML stream, ready for `kubectl apply -f -`.
///
/// # Errors
///
/// When serde_yaml fails to serialize a CRD, which would be a bug in a schema.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

// === defaults ===

fn default_cluster_domain() -> String {
    DEFAULT_CLUSTER_DOMAIN.to_owned()
}

fn default_trust_bundle_config_map() -> String {
    DEFAULT_TRUST_BUNDLE_CONFIG_MAP.to_owned()
}

fn default_gateway_port() -> u16 {
    ports::GATEWAY_QUIC
}

/// `mesh.io/exported: "true"`.
fn default_export_selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            labels::EXPORTED.to_owned(),
            labels::TRUE.to_owned(),
        )])),
        match_expressions: None,
    }
}

fn default_probe_period_seconds() -> u32 {
    DEFAULT_PROBE_PERIOD_SECONDS
}

fn default_probe_timeout_seconds() -> u32 {
    DEFAULT_PROBE_TIMEOUT_SECONDS
}

fn default_probe_failure_threshold() -> u32 {
    DEFAULT_PROBE_FAILURE_THRESHOLD
}

impl Default for LinkProbe {
    fn default() -> Self {
        Self {
            period_seconds: DEFAULT_PROBE_PERIOD_SECONDS,
            timeout_seconds: DEFAULT_PROBE_TIMEOUT_SECONDS,
            failure_threshold: DEFAULT_PROBE_FAILURE_THRESHOLD,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    use serde::Deserialize as _;

    use super::*;

    fn parse_stream(yaml: &str) -> Vec<CustomResourceDefinition> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CRD document"))
            .collect()
    }

    fn spec_property<'a>(crd: &'a CustomResourceDefinition, path: &[&str]) -> &'a JSONSchemaProps {
        let mut schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("a schema");
        for name in path {
            schema = schema
                .properties
                .as_ref()
                .and_then(|p| p.get(*name))
                .unwrap_or_else(|| panic!("no property {name} in {path:?}"));
        }
        schema
    }

    #[test]
    fn crd_yaml_parses_back() {
        let yaml = crds_yaml().unwrap();
        let crds = parse_stream(&yaml);
        assert_eq!(crds.len(), 2);
        assert_eq!(crds, super::crds());

        let link = &crds[0];
        assert_eq!(
            link.metadata.name.as_deref(),
            Some("links.multicluster.mesh.io")
        );
        assert_eq!(link.spec.group, "multicluster.mesh.io");
        assert_eq!(link.spec.names.kind, "Link");
        assert_eq!(link.spec.names.short_names, Some(vec!["link".to_owned()]));
        assert_eq!(link.spec.scope, "Namespaced");
        let version = &link.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Cluster", ".spec.clusterName"),
                ("Alive", ".status.gateway.alive"),
                ("Latency", ".status.gateway.latencyMs"),
                ("Mirrored", ".status.mirroredServices"),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );

        let split = &crds[1];
        assert_eq!(
            split.metadata.name.as_deref(),
            Some("trafficsplits.split.smi-spec.io")
        );
        assert_eq!(split.spec.group, "split.smi-spec.io");
        assert_eq!(split.spec.names.kind, "TrafficSplit");
        assert_eq!(split.spec.names.short_names, Some(vec!["ts".to_owned()]));
        assert_eq!(split.spec.scope, "Namespaced");
        assert_eq!(split.spec.versions[0].name, "v1alpha2");
        assert!(split.spec.versions[0].subresources.is_none());
    }

    #[test]
    fn defaults_are_in_the_schema() {
        let link = Link::crd();
        let default = |path: &[&str]| {
            spec_property(&link, path)
                .default
                .as_ref()
                .map(|d| d.0.clone())
        };
        assert_eq!(
            default(&["spec", "clusterDomain"]),
            Some(serde_json::json!("cluster.local"))
        );
        assert_eq!(
            default(&["spec", "trustBundleConfigMap"]),
            Some(serde_json::json!("mesh-trust-bundle"))
        );
        assert_eq!(
            default(&["spec", "gateway", "port"]),
            Some(serde_json::json!(4180))
        );
        assert_eq!(
            default(&["spec", "exportSelector"]),
            Some(serde_json::json!({ "matchLabels": { "mesh.io/exported": "true" } }))
        );
        assert_eq!(
            default(&["spec", "probe"]),
            Some(
                serde_json::json!({ "periodSeconds": 3, "timeoutSeconds": 1, "failureThreshold": 3 })
            )
        );
        assert_eq!(
            default(&["spec", "probe", "periodSeconds"]),
            Some(serde_json::json!(3))
        );

        let required = spec_property(&link, &["spec"])
            .required
            .clone()
            .unwrap_or_default();
        for field in [
            "clusterName",
            "trustDomain",
            "gateway",
            "credentialsSecret",
            "trustBundle",
        ] {
            assert!(
                required.iter().any(|r| r == field),
                "{field} should be required"
            );
        }
        for field in [
            "clusterDomain",
            "trustBundleConfigMap",
            "exportSelector",
            "probe",
        ] {
            assert!(
                !required.iter().any(|r| r == field),
                "{field} should be optional"
            );
        }
    }

    #[test]
    fn minimal_link_gets_defaults() {
        let link: Link = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.mesh.io/v1alpha1",
            "kind": "Link",
            "metadata": { "name": "east", "namespace": "mesh-system" },
            "spec": {
                "clusterName": "east",
                "trustDomain": "east",
                "gateway": {
                    "addresses": ["203.0.113.7", "gw.east.example.com"],
                    "identity": "spiffe://east/ns/mesh-system/sa/mesh-gateway",
                },
                "credentialsSecret": "east-credentials",
                "trustBundle": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
            },
        }))
        .unwrap();

        let spec = &link.spec;
        assert_eq!(spec.cluster_name, "east");
        assert_eq!(spec.cluster_domain, "cluster.local");
        assert_eq!(
            spec.gateway.addresses,
            ["203.0.113.7", "gw.east.example.com"]
        );
        assert_eq!(spec.gateway.port, 4180);
        assert_eq!(spec.trust_bundle_config_map, "mesh-trust-bundle");
        assert_eq!(spec.export_selector, default_export_selector());
        assert_eq!(
            spec.probe,
            LinkProbe {
                period_seconds: 3,
                timeout_seconds: 1,
                failure_threshold: 3
            }
        );
        assert_eq!(link.status, None);

        // And it serializes with camelCase names.
        let json = serde_json::to_value(&link).unwrap();
        assert_eq!(json["spec"]["clusterDomain"], "cluster.local");
        assert_eq!(
            json["spec"]["exportSelector"]["matchLabels"]["mesh.io/exported"],
            "true"
        );
    }

    #[test]
    fn link_status_round_trips() {
        let status: LinkStatus = serde_json::from_value(serde_json::json!({
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "GatewayAlive",
                "message": "",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
                "observedGeneration": 2,
            }],
            "gateway": { "alive": true, "latencyMs": 12, "lastProbeTime": "2025-01-01T00:00:03Z" },
            "mirroredServices": 4,
            "trustBundle": { "domains": [{
                "trustDomain": "east",
                "roots": [{ "fingerprintSha256": "ab12", "notAfter": "2035-01-01T00:00:00Z" }],
            }]},
            "observedGeneration": 2,
        }))
        .unwrap();
        assert!(status.gateway.alive);
        assert_eq!(status.gateway.latency_ms, Some(12));
        assert_eq!(
            status.trust_bundle.domains[0].roots[0].fingerprint_sha256,
            "ab12"
        );
        let back: LinkStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(back, status);

        // A status written by an older controller, or not at all yet, still parses.
        let empty: LinkStatus = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, LinkStatus::default());
    }

    #[test]
    fn linkerd_traffic_split_parses() {
        let yaml = r"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: sample-svc
  namespace: sample
  labels:
    app.kubernetes.io/managed-by: linkerd-failover
    failover.linkerd.io/controlled-by: linkerd-failover
  annotations:
    failover.linkerd.io/primary-service: sample-svc
spec:
  service: sample-svc
  backends:
    - service: sample-svc
      weight: 1
    - service: sample-svc-east
      weight: 0
";
        let split: TrafficSplit = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(split.metadata.name.as_deref(), Some("sample-svc"));
        assert_eq!(split.spec.service, "sample-svc");
        assert_eq!(
            split.spec.backends,
            [
                TrafficSplitBackend {
                    service: "sample-svc".into(),
                    weight: 1
                },
                TrafficSplitBackend {
                    service: "sample-svc-east".into(),
                    weight: 0
                },
            ]
        );
    }
}
