//! The built-in resources the mesh uses, CRD registration, and the discovery documents built from
//! whatever the store serves.

use serde_json::{Value, json};

use super::store::{Gvr, ResourceInfo, Store};

/// (group, version, plural, kind, namespaced, status subresource, short names)
const BUILTIN: &[(&str, &str, &str, &str, bool, bool)] = &[
    ("", "v1", "namespaces", "Namespace", false, true),
    ("", "v1", "services", "Service", true, true),
    ("", "v1", "endpoints", "Endpoints", true, false),
    ("", "v1", "pods", "Pod", true, true),
    ("", "v1", "secrets", "Secret", true, false),
    ("", "v1", "configmaps", "ConfigMap", true, false),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, false),
    ("", "v1", "events", "Event", true, false),
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    ("events.k8s.io", "v1", "events", "Event", true, false),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
];

/// The resource of CustomResourceDefinitions.
pub fn crd_gvr() -> Gvr {
    Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")
}

/// Registers every built-in resource.
pub fn register_builtins(store: &mut Store) {
    for (group, version, plural, kind, namespaced, status) in BUILTIN {
        store.register(
            Gvr::new(group, version, plural),
            ResourceInfo {
                kind: kind.to_string(),
                namespaced: *namespaced,
                status_subresource: *status,
            },
        );
    }
}

/// The resources a CRD object declares: one per served version.
pub fn crd_resources(crd: &Value) -> Vec<(Gvr, ResourceInfo)> {
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let group = s("/spec/group");
    let plural = s("/spec/names/plural");
    let kind = s("/spec/names/kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let namespaced = s("/spec/scope") != "Cluster";
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|versions| {
            versions
                .iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|v| {
                    let name = v.get("name")?.as_str()?;
                    Some((
                        Gvr::new(group, name, plural),
                        ResourceInfo {
                            kind: kind.to_string(),
                            namespaced,
                            status_subresource: v.pointer("/subresources/status").is_some(),
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The status a real API server gives an accepted CRD: names accepted and established.
pub fn crd_status(crd: &Value) -> Value {
    let now = super::store::now_rfc3339();
    let condition = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
    json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({})),
        "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
        "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array).map(|vs| {
            vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()
        }).unwrap_or_default(),
    })
}

/// The group and version of TokenReview.
const TOKEN_REVIEW_GV: (&str, &str) = ("authentication.k8s.io", "v1");

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `APIResourceList` for one group/version, or `None` when nothing is served there.
pub fn resource_list(store: &Store, group: &str, version: &str) -> Option<Value> {
    let mut resources: Vec<_> = store
        .resources()
        .filter(|(g, _)| g.group == group && g.version == version)
        .collect();
    if (group, version) == TOKEN_REVIEW_GV {
        // TokenReview is not stored: it is answered, never listed.
        return Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "authentication.k8s.io/v1", "resources": [{
                "name": "tokenreviews", "singularName": "tokenreview", "namespaced": false,
                "kind": "TokenReview", "verbs": ["create"]}]}));
    }
    if resources.is_empty() {
        return None;
    }
    resources.sort_by(|a, b| a.0.resource.cmp(&b.0.resource));
    let mut list = Vec::new();
    for (gvr, info) in resources {
        let singular = info.kind.to_lowercase();
        list.push(json!({
            "name": gvr.resource, "singularName": singular, "namespaced": info.namespaced,
            "kind": info.kind, "verbs": VERBS,
        }));
        if gvr.resource == "serviceaccounts" && gvr.group.is_empty() {
            list.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"],
            }));
        }
        if info.status_subresource {
            list.push(json!({
                "name": format!("{}/status", gvr.resource), "singularName": "", "namespaced": info.namespaced,
                "kind": info.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = Gvr::new(group, version, "").api_version();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// The `APIGroup` documents of every non-core group, sorted by name.
pub fn groups(store: &Store) -> Vec<Value> {
    let mut by_group: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    by_group.insert(TOKEN_REVIEW_GV.0, vec![TOKEN_REVIEW_GV.1]);
    for (gvr, _) in store.resources() {
        if !gvr.group.is_empty() {
            let versions = by_group.entry(&gvr.group).or_default();
            if !versions.contains(&gvr.version.as_str()) {
                versions.push(&gvr.version);
            }
        }
    }
    by_group
        .into_iter()
        .map(|(group, mut versions)| {
            versions.sort_by(|a, b| b.cmp(a));
            let entries: Vec<_> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            let preferred = entries.first().cloned().unwrap_or_else(|| json!({}));
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries, "preferredVersion": preferred})
        })
        .collect()
}
