//! Updates built from objects, without an API server: the index and resolution together.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_api::common::ProtocolHint;
use mesh_api::crd::{Link, TrafficSplit};
use mesh_api::discovery::{Endpoint, SplitBackend, Update};
use mesh_trust::TrustDomain;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::target::{proto_addr, socket_addr};
use super::{DiscoveryConfig, Index, Objects, Problem, Target};

const GATEWAY: &str = "10.9.0.1:4181";

#[derive(Default)]
struct World {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    pods: HashMap<(String, String), Arc<Pod>>,
    splits: Vec<Arc<TrafficSplit>>,
    links: Vec<Arc<Link>>,
    gateway: bool,
}

fn object<T: DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

impl World {
    fn new() -> Self {
        Self {
            gateway: true,
            ..Self::default()
        }
    }

    fn service(&mut self, name: &str, cluster_ip: &str, ports: Value, meta: Value) -> &mut Self {
        let mut metadata = json!({"name": name, "namespace": "default"});
        merge(&mut metadata, meta);
        self.services.push(object(json!({
            "metadata": metadata,
            "spec": {"clusterIP": cluster_ip, "ports": ports},
        })));
        self
    }

    fn slice(&mut self, name: &str, service: &str, ports: Value, endpoints: Value) -> &mut Self {
        self.slices.push(object(json!({
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        })));
        self
    }

    fn pod(&mut self, name: &str, account: Option<&str>, containers: &[&str]) -> &mut Self {
        let containers: Vec<Value> = containers.iter().map(|c| json!({"name": c})).collect();
        let pod: Arc<Pod> = object(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": "web", "pod": name}},
            "spec": {"containers": containers, "serviceAccountName": account},
        }));
        self.pods.insert(("default".into(), name.into()), pod);
        self
    }

    fn link(&mut self, cluster: &str, trust_domain: &str) -> &mut Self {
        self.links.push(object(json!({
            "apiVersion": "multicluster.mesh.io/v1alpha1", "kind": "Link",
            "metadata": {"name": cluster, "namespace": "mesh"},
            "spec": {"clusterName": cluster, "trustDomain": trust_domain,
                "gateway": {"addresses": ["192.0.2.1"], "identity": "spiffe://east/ns/mesh/sa/mesh-gateway"},
                "credentialsSecret": "creds", "trustBundle": ""},
        })));
        self
    }

    fn split(&mut self, name: &str, service: &str, backends: Value, meta: Value) -> &mut Self {
        let mut metadata = json!({"name": name, "namespace": "default"});
        merge(&mut metadata, meta);
        self.splits.push(object(json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": metadata,
            "spec": {"service": service, "backends": backends},
        })));
        self
    }

    fn build(&self) -> (Index, Vec<Problem>) {
        let mut config = DiscoveryConfig::new("west", TrustDomain::new("west").unwrap());
        if self.gateway {
            config.gateway_egress = Some(GATEWAY.parse().unwrap());
        }
        let pods = &self.pods;
        let pod = |namespace: &str, name: &str| {
            pods.get(&(namespace.to_owned(), name.to_owned())).cloned()
        };
        Index::build(
            Arc::new(config.validate().unwrap()),
            &Objects {
                services: &self.services,
                slices: &self.slices,
                splits: &self.splits,
                links: &self.links,
                pod: &pod,
            },
        )
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn authority(input: &str) -> Target {
    Target::parse_authority(input, "cluster.local").unwrap()
}

fn addr(input: &str) -> Target {
    Target::Addr(input.parse().unwrap())
}

fn addrs(update: &Update) -> Vec<SocketAddr> {
    update
        .endpoints
        .iter()
        .map(|e| socket_addr(e.addr.as_ref().unwrap()).unwrap())
        .collect()
}

/// The proxy's own decoder keeps every entry of `update`.
fn assert_accepted_by_the_proxy(update: &Update) {
    let (decoded, rejections) = mesh_proxy::discovery::Destination::from_update(update.clone());
    assert!(rejections.is_empty(), "{rejections:?}");
    assert_eq!(decoded.endpoints.len(), update.endpoints.len());
    assert_eq!(decoded.split.len(), update.split_backends.len());
}

fn endpoint<'a>(update: &'a Update, at: &str) -> &'a Endpoint {
    let at = proto_addr(at.parse().unwrap());
    update
        .endpoints
        .iter()
        .find(|e| e.addr.as_ref() == Some(&at))
        .unwrap_or_else(|| panic!("no endpoint {at:?} in {update:?}"))
}

/// `web`: port 80 named http -> 8080, port 9090 named admin -> 9091; three pods, one without
/// the proxy, one not ready, one (listed by two slices) in another zone.
fn web() -> World {
    let mut world = World::new();
    world
        .service(
            "web",
            "10.96.0.10",
            json!([{"name": "http", "port": 80, "targetPort": "http"},
                   {"name": "admin", "port": 9090, "targetPort": 9091},
                   {"name": "dns", "port": 53, "protocol": "UDP"}]),
            json!({}),
        )
        .slice(
            "web-a",
            "web",
            json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9091}]),
            json!([
                {"addresses": ["10.1.0.1"], "zone": "zone-a", "hostname": "web-0",
                 "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "default", "uid": "uid-web-0"}},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}, "zone": "zone-a",
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}},
                {"addresses": ["10.1.0.3"], "conditions": {"ready": false}, "zone": "zone-b",
                 "targetRef": {"kind": "Pod", "name": "plain", "namespace": "default"}},
            ]),
        )
        .slice(
            "web-b",
            "web",
            json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9091}]),
            json!([
                {"addresses": ["10.1.0.3"], "conditions": {"ready": true}, "zone": "zone-b",
                 "targetRef": {"kind": "Pod", "name": "plain", "namespace": "default"}},
            ]),
        )
        .pod("web-0", Some("web"), &["app", "mesh-proxy"])
        .pod("web-1", None, &["app", "mesh-proxy"])
        .pod("plain", Some("web"), &["app"]);
    world
}

#[test]
fn a_local_service_lists_its_endpoints_with_identities() {
    let (index, problems) = web().build();
    assert!(problems.is_empty(), "{problems:?}");
    let update = index.resolve(&authority("web.default.svc.cluster.local:80"));
    assert!(update.exists);
    assert_eq!(update.authority, "web.default.svc.cluster.local:80");
    assert_eq!(
        addrs(&update),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
            .map(|a| a.parse::<SocketAddr>().unwrap())
    );

    let meshed = endpoint(&update, "10.1.0.1:8080");
    assert_eq!(meshed.identity, "spiffe://west/ns/default/sa/web");
    assert_eq!(
        (
            meshed.cluster.as_str(),
            meshed.zone.as_str(),
            meshed.hostname.as_str()
        ),
        ("west", "zone-a", "web-0")
    );
    assert!(meshed.ready);
    assert_eq!(meshed.weight, 1);
    assert_eq!(meshed.labels["pod"], "web-0");
    assert!(meshed.tunnel.is_none());

    let default_account = endpoint(&update, "10.1.0.2:8080");
    assert_eq!(
        default_account.identity,
        "spiffe://west/ns/default/sa/default"
    );
    assert!(!default_account.ready);

    // No proxy: plain text. Listed by two slices, not ready in one: sent once, ready.
    let plain = endpoint(&update, "10.1.0.3:8080");
    assert_eq!(plain.identity, "");
    assert!(plain.ready);
    assert_eq!(plain.labels["pod"], "plain");

    assert_eq!(update.protocol_hint, ProtocolHint::Unknown as i32);
    assert!(update.split_backends.is_empty() && update.opaque_ports.is_empty());
    assert_accepted_by_the_proxy(&update);

    // The other port resolves through its own slice port; a UDP port is not served.
    let admin = index.resolve(&authority("web.default:9090"));
    assert_eq!(admin.authority, "web.default.svc.cluster.local:9090");
    assert_eq!(addrs(&admin)[0], "10.1.0.1:9091".parse().unwrap());
    assert!(!index.resolve(&authority("web.default:53")).exists);
    assert!(!index.resolve(&authority("web.default:81")).exists);
    assert!(!index.resolve(&authority("api.default:80")).exists);
}

#[test]
fn addresses_resolve_to_services_and_endpoints() {
    let (index, _) = web().build();
    let by_ip = index.resolve(&addr("10.96.0.10:80"));
    assert_eq!(by_ip, index.resolve(&authority("web.default:80")));

    let one = index.resolve(&addr("10.1.0.1:8080"));
    assert!(one.exists);
    assert_eq!(one.authority, "web.default.svc.cluster.local:80");
    assert_eq!(
        addrs(&one),
        ["10.1.0.1:8080".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(one.endpoints[0].identity, "spiffe://west/ns/default/sa/web");

    let admin = index.resolve(&addr("10.1.0.1:9091"));
    assert_eq!(admin.authority, "web.default.svc.cluster.local:9090");

    for unknown in ["10.96.0.10:81", "10.1.0.1:80", "10.1.0.9:8080"] {
        assert_eq!(index.resolve(&addr(unknown)), super::resolve::not_found());
    }
}

#[test]
fn endpoints_of_unknown_pods_wait_for_them() {
    let mut world = web();
    world
        .pods
        .remove(&("default".to_owned(), "web-1".to_owned()));
    // A pod recreated under the same name is not the one the slice lists.
    let mut recreated = (*world.pods[&("default".to_owned(), "web-0".to_owned())]).clone();
    recreated.metadata.uid = Some("another".into());
    world
        .pods
        .insert(("default".into(), "web-0".into()), Arc::new(recreated));
    let (index, _) = world.build();
    let update = index.resolve(&authority("web.default:80"));
    assert_eq!(
        addrs(&update),
        ["10.1.0.3:8080".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn a_native_sidecar_proxy_makes_a_meshed_pod() {
    let mut world = web();
    let pod: Arc<Pod> = object(json!({
        "metadata": {"name": "plain", "namespace": "default"},
        "spec": {"containers": [{"name": "app"}],
                 "initContainers": [{"name": "mesh-proxy", "restartPolicy": "Always"}]},
    }));
    world.pods.insert(("default".into(), "plain".into()), pod);
    let (index, _) = world.build();
    let update = index.resolve(&authority("web.default:80"));
    assert_eq!(
        endpoint(&update, "10.1.0.3:8080").identity,
        "spiffe://west/ns/default/sa/default"
    );
}

fn mirror(world: &mut World) {
    world
        .service(
            "api-east",
            "10.96.0.20",
            json!([{"name": "http", "port": 8080}]),
            json!({"labels": {"mesh.io/mirrored-service": "true", "mesh.io/cluster-name": "east"},
                   "annotations": {"mesh.io/remote-svc-fq-name": "api.default.svc.east.local"}}),
        )
        .slice(
            "api-east",
            "api-east",
            json!([{"name": "http", "port": 4181}]),
            json!([{"addresses": ["10.9.0.1"], "conditions": {"ready": true}}]),
        );
}

#[test]
fn a_mirror_is_reached_through_the_gateway() {
    let mut world = World::new();
    mirror(&mut world);
    world.link("east", "east.example");
    let (index, problems) = world.build();
    assert!(problems.is_empty(), "{problems:?}");
    let update = index.resolve(&authority("api-east.default.svc.cluster.local:8080"));
    assert_eq!(update.endpoints.len(), 1);
    let endpoint = &update.endpoints[0];
    assert_eq!(endpoint.cluster, "east");
    assert_eq!(endpoint.identity, "");
    let tunnel = endpoint.tunnel.as_ref().unwrap();
    assert_eq!(tunnel.cluster, "east");
    assert_eq!(tunnel.authority, "api.default.svc.east.local:8080");
    assert_eq!(
        socket_addr(tunnel.gateway.as_ref().unwrap()).unwrap(),
        GATEWAY.parse().unwrap()
    );
    assert_eq!(
        tunnel.gateway_identity,
        "spiffe://west/ns/mesh/sa/mesh-gateway"
    );
    assert_eq!(tunnel.remote_trust_domain, "east.example");

    assert_accepted_by_the_proxy(&update);
}

#[test]
fn a_mirror_without_link_or_gateway_has_no_endpoints() {
    let mut without_link = World::new();
    mirror(&mut without_link);
    let mut without_gateway = World::new();
    mirror(&mut without_gateway);
    without_gateway.link("east", "east");
    without_gateway.gateway = false;
    for (world, expected) in [
        (without_link, "no Link has clusterName \"east\""),
        (
            without_gateway,
            "no local gateway egress address is configured",
        ),
    ] {
        let (index, problems) = world.build();
        let update = index.resolve(&authority("api-east.default:8080"));
        assert!(update.exists);
        assert!(update.endpoints.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "Service default/api-east");
        assert!(problems[0].message.starts_with(expected), "{problems:?}");
    }
}

#[test]
fn a_failover_split_sends_backends_in_priority_order() {
    let mut world = web();
    world.split(
        "web-failover",
        "web",
        json!([{"service": "web", "weight": 0}, {"service": "web-east", "weight": 1},
               {"service": "web-north", "weight": 0}]),
        json!({"labels": {"failover.mesh.io/controlled-by": "mesh"},
               "annotations": {"failover.mesh.io/primary-service": "web",
                               "failover.mesh.io/fallback-order": "web-north,web-east"}}),
    );
    // A second split of the same root is ignored, and reported.
    world.split(
        "web-zz",
        "web",
        json!([{"service": "other", "weight": 1}]),
        json!({}),
    );
    let (index, problems) = world.build();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let update = index.resolve(&authority("web.default:80"));
    let backend = |service: &str, priority| SplitBackend {
        authority: format!("{service}.default.svc.cluster.local:80"),
        weight: 1,
        priority,
    };
    assert_eq!(
        update.split_backends,
        [
            backend("web", 0),
            backend("web-east", 2),
            backend("web-north", 1)
        ]
    );
    assert_accepted_by_the_proxy(&update);
    // An address of one endpoint carries no split: the connection already chose its pod.
    assert!(
        index
            .resolve(&addr("10.1.0.1:8080"))
            .split_backends
            .is_empty()
    );
}

#[test]
fn an_ordinary_split_keeps_spec_weights() {
    let mut world = web();
    world.split(
        "canary",
        "web",
        json!([{"service": "web-v1", "weight": 900}, {"service": "web-v2", "weight": 100}]),
        json!({}),
    );
    let (index, _) = world.build();
    let update = index.resolve(&authority("web.default:9090"));
    let weights: Vec<_> = update
        .split_backends
        .iter()
        .map(|b| (b.authority.as_str(), b.weight, b.priority))
        .collect();
    assert_eq!(
        weights,
        [
            ("web-v1.default.svc.cluster.local:9090", 900, 0),
            ("web-v2.default.svc.cluster.local:9090", 100, 0),
        ]
    );
}

#[test]
fn opaque_ports_set_the_hint() {
    let mut world = World::new();
    world.service(
        "db",
        "None",
        json!([{"name": "mysql", "port": 3306}, {"name": "http", "port": 8080}]),
        json!({"annotations": {"config.mesh.io/opaque-ports": "3306,5000-5002,bogus"}}),
    );
    let (index, problems) = world.build();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("\"bogus\""), "{problems:?}");
    let mysql = index.resolve(&authority("db.default:3306"));
    assert_eq!(mysql.protocol_hint, ProtocolHint::Opaque as i32);
    assert_eq!(mysql.opaque_ports, [3306, 5000, 5001, 5002]);
    let http = index.resolve(&authority("db.default:8080"));
    assert_eq!(http.protocol_hint, ProtocolHint::Unknown as i32);
    assert_eq!(http.opaque_ports, [3306, 5000, 5001, 5002]);
    // A headless Service has no cluster IP to be found by.
    assert!(index.by_cluster_ip.is_empty());
}

#[test]
fn external_name_services_do_not_exist() {
    let mut world = World::new();
    world.services.push(object(json!({
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.com",
                 "ports": [{"port": 443}]},
    })));
    let (index, _) = world.build();
    assert!(!index.resolve(&authority("ext.default:443")).exists);
}

#[test]
fn the_answer_does_not_depend_on_store_order() {
    let world = web();
    let mut reversed = web();
    reversed.slices.reverse();
    reversed.services.reverse();
    let target = authority("web.default:80");
    assert_eq!(
        world.build().0.resolve(&target),
        reversed.build().0.resolve(&target)
    );
}

#[test]
fn unchanged_services_keep_their_entry_across_builds() {
    let mut world = web();
    world.service(
        "api",
        "10.96.0.11",
        json!([{"name": "http", "port": 80}]),
        json!({}),
    );
    let (first, _) = world.build();
    let web_target = authority("web.default:80");
    let api_target = authority("api.default:80");

    // Rebuilt from the same objects: every entry is carried over.
    let (mut second, _) = world.build();
    second.reuse_unchanged(&first);
    assert!(first.basis(&web_target).same_as(&second.basis(&web_target)));
    assert!(first.basis(&api_target).same_as(&second.basis(&api_target)));

    // A pod of web gets a new label: web's entry is new, api's is carried over.
    let mut relabelled = (*world.pods[&("default".to_owned(), "plain".to_owned())]).clone();
    relabelled
        .metadata
        .labels
        .get_or_insert_default()
        .insert("version".into(), "v2".into());
    world
        .pods
        .insert(("default".into(), "plain".into()), Arc::new(relabelled));
    let (mut third, _) = world.build();
    third.reuse_unchanged(&second);
    assert!(!second.basis(&web_target).same_as(&third.basis(&web_target)));
    assert!(second.basis(&api_target).same_as(&third.basis(&api_target)));
    let update = third.resolve(&web_target);
    assert_eq!(endpoint(&update, "10.1.0.3:8080").labels["version"], "v2");

    // Unknown targets are always the same nothing; a port the Service lacks is nothing too.
    let missing = authority("web.default:81");
    assert!(
        second
            .basis(&missing)
            .same_as(&third.basis(&authority("nope.default:80")))
    );
}
