//! The endpoints controller of the dev cluster (optional per instance): keeps `Endpoints` and
//! `EndpointSlice`s in step with the Pods that match each Service's selector, so a test can "kill
//! a pod" by deleting it or marking it not ready.
//!
//! Only Services with a non-empty selector are managed; Endpoints and slices of selector-less
//! Services (such as mirrored services) belong to whoever writes them. Both objects carry an
//! owner reference to their Service, so garbage collection removes them with it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::selector::labels_of;
use super::store::{Gvr, ListOptions, Store};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label that names the slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The manager value of the slices this controller writes, as the real controller's.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

fn services() -> Gvr {
    Gvr::new("", "v1", "services")
}
fn pods() -> Gvr {
    Gvr::new("", "v1", "pods")
}
fn endpoints() -> Gvr {
    Gvr::new("", "v1", "endpoints")
}
fn slices() -> Gvr {
    Gvr::new("discovery.k8s.io", "v1", "endpointslices")
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether a pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The service ports resolved against one pod (named target ports through its container ports).
fn resolved_ports(service: &Value, pod: &Value) -> Vec<Value> {
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    ports
        .iter()
        .filter_map(|port| {
            let target = match port.get("targetPort") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(name)) => pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|c| {
                        c.get("ports")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                    })
                    .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                    .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                    .or_else(|| name.parse().ok()),
                _ => port.get("port").and_then(Value::as_u64),
            }?;
            let mut resolved = json!({
                "port": target,
                "protocol": port.get("protocol").cloned().unwrap_or_else(|| json!("TCP")),
            });
            if let Some(name) = port.get("name") {
                resolved["name"] = name.clone();
            }
            Some(resolved)
        })
        .collect()
}

/// The Endpoints and EndpointSlices a Service should have, given the pods of its namespace.
pub fn desired(service: &Value, pods: &[Value]) -> (Value, Vec<Value>) {
    let name = text(service, "/metadata/name");
    let namespace = text(service, "/metadata/namespace");
    let owner = json!([{
        "apiVersion": "v1", "kind": "Service", "name": name,
        "uid": text(service, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true,
    }]);
    let selector: BTreeMap<String, String> = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    // Pods grouped by their resolved port list: one subset and one slice per group.
    let mut groups: BTreeMap<String, PortGroup> = BTreeMap::new();
    for pod in pods {
        let labels = labels_of(pod);
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            continue;
        }
        let ip = text(pod, "/status/podIP");
        if ip.is_empty() {
            continue;
        }
        let ports = resolved_ports(service, pod);
        let key = Value::Array(ports.clone()).to_string();
        let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
        let ready = pod_ready(pod) && !terminating;
        let target = json!({"kind": "Pod", "name": text(pod, "/metadata/name"),
            "namespace": namespace, "uid": text(pod, "/metadata/uid")});
        let mut address = json!({"ip": ip, "targetRef": target});
        let mut endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": pod_ready(pod), "terminating": terminating},
            "targetRef": target,
        });
        if let Some(node) = pod.pointer("/spec/nodeName") {
            address["nodeName"] = node.clone();
            endpoint["nodeName"] = node.clone();
        }
        let group = groups.entry(key).or_insert_with(|| PortGroup {
            ports,
            ..PortGroup::default()
        });
        if ready {
            group.ready.push(address);
        } else if !terminating {
            group.not_ready.push(address);
        }
        group.slice_endpoints.push(endpoint);
    }
    let mut subsets = Vec::new();
    let mut slice_list = Vec::new();
    for (index, group) in groups.into_values().enumerate() {
        let PortGroup {
            ports,
            ready,
            not_ready,
            slice_endpoints: endpoints,
        } = group;
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        if !ready.is_empty() || !not_ready.is_empty() {
            subsets.push(subset);
        }
        let slice_name = if index == 0 {
            name.to_string()
        } else {
            format!("{name}-{index}")
        };
        slice_list.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": namespace, "ownerReferences": owner,
                "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }));
    }
    if slice_list.is_empty() {
        slice_list.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": owner,
                "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}},
            "addressType": "IPv4", "endpoints": [], "ports": resolved_ports(service, &json!({})),
        }));
    }
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": owner,
            "labels": service.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({}))},
        "subsets": subsets,
    });
    (endpoints, slice_list)
}

/// The pods of a Service that resolve its ports the same way.
#[derive(Debug, Default)]
struct PortGroup {
    ports: Vec<Value>,
    /// Endpoints addresses of ready pods.
    ready: Vec<Value>,
    /// Endpoints addresses of pods not ready (and not terminating).
    not_ready: Vec<Value>,
    /// EndpointSlice endpoints of every pod, with conditions.
    slice_endpoints: Vec<Value>,
}

/// Whether two objects agree on everything the controller writes.
fn same(current: &Value, desired: &Value, fields: &[&str]) -> bool {
    fields.iter().all(|f| current.get(*f) == desired.get(*f))
        && current.pointer("/metadata/labels") == desired.pointer("/metadata/labels")
        && current.pointer("/metadata/ownerReferences")
            == desired.pointer("/metadata/ownerReferences")
}

/// Brings every managed Service's Endpoints and EndpointSlices in line with its pods. Returns
/// whether anything was written.
pub fn reconcile(store: &mut Store) -> bool {
    let all = ListOptions::default();
    let Ok(services) = store.list(&services(), None, &all) else {
        return false;
    };
    let Ok(pods) = store.list(&pods(), None, &all) else {
        return false;
    };
    let mut pods_by_namespace: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for pod in &pods.items {
        pods_by_namespace
            .entry(text(pod, "/metadata/namespace"))
            .or_default()
            .push(pod.clone());
    }
    let mut wrote = false;
    for service in &services.items {
        let has_selector = service
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty());
        if !has_selector || service.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let namespace = text(service, "/metadata/namespace");
        let name = text(service, "/metadata/name");
        let pods = pods_by_namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (want_endpoints, want_slices) = desired(service, pods);
        wrote |= put(store, &endpoints(), namespace, want_endpoints, &["subsets"]);
        let mut keep = Vec::new();
        for slice in want_slices {
            keep.push(text(&slice, "/metadata/name").to_string());
            wrote |= put(
                store,
                &slices(),
                namespace,
                slice,
                &["addressType", "endpoints", "ports"],
            );
        }
        // Slices this controller wrote for the Service that are no longer wanted.
        let mut ours = ListOptions::default();
        if let Ok(selector) = super::selector::LabelSelector::parse(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )) {
            ours.labels = selector;
            if let Ok(page) = store.list(&slices(), Some(namespace), &ours) {
                for stale in page
                    .items
                    .iter()
                    .map(|s| text(s, "/metadata/name"))
                    .filter(|n| !keep.iter().any(|k| k == n))
                {
                    wrote |= store.delete(&slices(), namespace, stale, None).is_ok();
                }
            }
        }
    }
    wrote
}

/// Creates or replaces one object when it differs from what is stored.
fn put(store: &mut Store, gvr: &Gvr, namespace: &str, desired: Value, fields: &[&str]) -> bool {
    let name = text(&desired, "/metadata/name").to_string();
    match store.get(gvr, namespace, &name) {
        Ok(current) if same(&current, &desired, fields) => false,
        Ok(current) => {
            let mut next = current;
            for field in fields {
                match desired.get(*field) {
                    Some(v) => next[*field] = v.clone(),
                    None => {
                        if let Some(map) = next.as_object_mut() {
                            map.remove(*field);
                        }
                    }
                }
            }
            next["metadata"]["labels"] = desired["metadata"]["labels"].clone();
            next["metadata"]["ownerReferences"] = desired["metadata"]["ownerReferences"].clone();
            store.replace(gvr, namespace, &name, next).is_ok()
        }
        Err(_) => store.create(gvr, namespace, desired).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(name: &str, app: &str, ip: &str, ready: bool) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    #[test]
    fn desired_endpoints_follow_selector_and_readiness() {
        let service = json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        });
        let pods = [
            pod("a", "web", "10.0.0.1", true),
            pod("b", "web", "10.0.0.2", false),
            pod("c", "db", "10.0.0.3", true),
            pod("d", "web", "", true),
        ];
        let (endpoints, slices) = desired(&service, &pods);
        let subset = &endpoints["subsets"][0];
        assert_eq!(subset["addresses"][0]["ip"], "10.0.0.1");
        assert_eq!(subset["notReadyAddresses"][0]["ip"], "10.0.0.2");
        assert_eq!(
            subset["ports"][0]["port"], 8080,
            "named target port resolved"
        );
        assert_eq!(endpoints["subsets"].as_array().unwrap().len(), 1);
        assert_eq!(slices.len(), 1);
        let eps = slices[0]["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["conditions"]["ready"], true);
        assert_eq!(eps[1]["conditions"]["ready"], false);
        assert_eq!(slices[0]["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(
            slices[0]["metadata"]["ownerReferences"][0]["uid"],
            "svc-uid"
        );
    }
}
