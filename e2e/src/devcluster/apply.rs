//! Server-side apply, approximated closely enough for kube-rs controllers.
//!
//! Each applying field manager owns the set of fields it last applied, recorded in
//! `metadata.managedFields` (operation `Apply`, `FieldsV1` format). Applying again merges the new
//! configuration into the object and removes the fields the manager applied before but no longer
//! does, unless another manager also owns them. A manager that sets a field owned by another
//! applier to a different value gets 409 Conflict, unless it forces, which takes ownership.
//! Lists are owned as a whole (no associative list keys); updates through PUT or PATCH are not
//! tracked as owners.

use serde_json::{Map, Value, json};

use super::patch::merge_patch;

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The configuration is not an object.
    #[error("the applied configuration must be an object")]
    NotAnObject,
    /// Fields owned by other managers would change.
    #[error(
        "Apply failed with {} conflict(s): {}; apply with force to take ownership",
        .0.len(),
        .0.join(", ")
    )]
    Conflicts(Vec<String>),
}

/// Metadata fields the server owns; never part of a manager's field set.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The leaf paths of an applied configuration (lists are leaves).
pub fn leaf_paths(applied: &Value) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    if let Value::Object(map) = applied {
        for (key, value) in map {
            if key == "apiVersion" || key == "kind" {
                continue;
            }
            if key == "metadata" {
                if let Value::Object(meta) = value {
                    for (mkey, mvalue) in meta {
                        if !SERVER_METADATA.contains(&mkey.as_str()) {
                            walk(mvalue, vec!["metadata".into(), mkey.clone()], &mut paths);
                        }
                    }
                }
                continue;
            }
            walk(value, vec![key.clone()], &mut paths);
        }
    }
    paths
}

fn walk(value: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let mut next = path.clone();
                next.push(key.clone());
                walk(child, next, out);
            }
        }
        _ => out.push(path),
    }
}

/// Leaf paths as a `FieldsV1` document (`{"f:spec": {"f:replicas": {}}}`).
pub fn fields_v1(paths: &[Vec<String>]) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            let entry = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            match entry {
                Value::Object(map) => node = map,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

/// The leaf paths of a `FieldsV1` document.
pub fn paths_of(fields: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    fn go(node: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        let children: Vec<_> = node
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| k.strip_prefix("f:").map(|k| (k.to_string(), v)))
                    .collect()
            })
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.push(path);
            }
            return;
        }
        for (key, child) in children {
            let mut next = path.clone();
            next.push(key);
            go(child, next, out);
        }
    }
    go(fields, Vec::new(), &mut out);
    out
}

fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Whether `set` owns `path`: the path itself, a descendant, or an ancestor that is a list or
/// scalar in `object` (owned whole). An empty map owns the map, not its keys.
fn owns(set: &[Vec<String>], path: &[String], object: &Value) -> bool {
    set.iter().any(|owned| {
        owned.starts_with(path)
            || (path.starts_with(owned)
                && !object
                    .pointer(&pointer(owned))
                    .is_some_and(Value::is_object))
    })
}

fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(map)) = object.pointer_mut(&pointer(parent)) {
        map.remove(last);
    }
}

/// Applies `applied` for `manager` to `current` (the stored object), returning the new object
/// with its `managedFields` updated.
pub fn apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::NotAnObject);
    }
    let entries: Vec<Value> = current
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_paths = leaf_paths(applied);
    let mut previous = Vec::new();
    let mut others: Vec<(Value, Vec<Vec<String>>)> = Vec::new();
    for entry in entries {
        let paths = paths_of(entry.get("fieldsV1").unwrap_or(&Value::Null));
        if entry.get("manager").and_then(Value::as_str) == Some(manager)
            && entry.get("operation").and_then(Value::as_str) == Some("Apply")
        {
            previous = paths;
        } else {
            others.push((entry, paths));
        }
    }
    // Conflicts: another manager's field that this apply sets to a different value.
    let mut conflicts = Vec::new();
    for (entry, paths) in &mut others {
        let name = entry
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let mut taken = Vec::new();
        for path in &new_paths {
            let p = pointer(path);
            // An (empty) map merges; only lists and scalars can conflict.
            if applied.pointer(&p).is_some_and(Value::is_object) || !owns(paths, path, current) {
                continue;
            }
            if current.pointer(&p) != applied.pointer(&p) {
                taken.push(path.clone());
                conflicts.push(format!("{} (owned by {name:?})", path.join(".")));
            }
        }
        if force {
            paths.retain(|owned| {
                !taken
                    .iter()
                    .any(|t| owned.starts_with(t) || t.starts_with(owned))
            });
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let mut result = current.clone();
    for path in &previous {
        let still_applied = owns(&new_paths, path, applied);
        let owned_elsewhere = others.iter().any(|(_, paths)| owns(paths, path, current));
        if !still_applied && !owned_elsewhere {
            remove_path(&mut result, path);
        }
    }
    let mut patch = applied.clone();
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            meta.remove(*field);
        }
    }
    merge_patch(&mut result, &patch);
    let mut managed: Vec<Value> = others
        .into_iter()
        .filter(|(_, paths)| !paths.is_empty())
        .map(|(mut entry, paths)| {
            entry["fieldsV1"] = fields_v1(&paths);
            entry
        })
        .collect();
    managed.push(json!({
        "manager": manager, "operation": "Apply", "apiVersion": api_version, "time": now,
        "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&new_paths),
    }));
    if let Some(meta) = result.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), Value::Array(managed));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(
        current: &Value,
        applied: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        apply(
            current,
            &applied,
            manager,
            force,
            "v1",
            "2026-01-01T00:00:00Z",
        )
    }

    #[test]
    fn fields_round_trip() {
        let paths = leaf_paths(
            &json!({"apiVersion": "v1", "metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"n": 1, "l": [1], "e": {}}}),
        );
        let fields = fields_v1(&paths);
        assert_eq!(
            fields,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:n": {}, "f:l": {}, "f:e": {}}})
        );
        let mut back = paths_of(&fields);
        back.sort();
        let mut paths = paths;
        paths.sort();
        assert_eq!(back, paths);
    }

    #[test]
    fn reapply_removes_fields_no_longer_applied() {
        let current = json!({"metadata": {"name": "x"}, "data": {"keep": "0"}});
        let first = run(&current, json!({"data": {"a": "1", "b": "2"}}), "m", false).unwrap();
        let second = run(&first, json!({"data": {"a": "1"}}), "m", false).unwrap();
        assert_eq!(second["data"], json!({"keep": "0", "a": "1"}));
        assert_eq!(second["metadata"]["managedFields"][0]["manager"], "m");
        assert_eq!(
            second["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:a": {}}})
        );
    }

    #[test]
    fn other_managers_conflict_unless_forced() {
        let current = json!({"metadata": {"name": "x"}});
        let a = run(
            &current,
            json!({"data": {"shared": "a", "mine": "a"}}),
            "a",
            false,
        )
        .unwrap();
        // Same value: shared ownership, no conflict.
        let b = run(&a, json!({"data": {"shared": "a"}}), "b", false).unwrap();
        let err = run(&b, json!({"data": {"shared": "b"}}), "b", false).unwrap_err();
        assert!(
            matches!(err, ApplyError::Conflicts(ref c) if c.len() == 1),
            "{err}"
        );
        let forced = run(&b, json!({"data": {"shared": "b"}}), "b", true).unwrap();
        assert_eq!(forced["data"]["shared"], "b");
        // a lost "shared"; when a stops applying "mine", it goes, "shared" stays (b owns it).
        let a_again = run(&forced, json!({"data": {}}), "a", false).unwrap();
        assert_eq!(a_again["data"], json!({"shared": "b"}));
        assert!(run(&current, json!([1]), "a", false).is_err());
    }
}
