//! Patches: JSON merge patch (RFC 7386, also used for strategic merge on the types the mesh uses)
//! and JSON patch (RFC 6902).

use serde_json::Value;

/// Why a JSON patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The patch document is not a JSON array of operations.
    #[error("a JSON patch must be an array of operations")]
    NotAnArray,
    /// An operation is malformed.
    #[error("JSON patch operation {index}: {reason}")]
    BadOperation {
        /// The operation's index in the patch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A `test` operation failed.
    #[error("JSON patch operation {index}: test failed at {path:?}")]
    TestFailed {
        /// The operation's index in the patch.
        index: usize,
        /// The tested path.
        path: String,
    },
}

/// Applies a JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(target) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a JSON patch (add, remove, replace, move, copy, test) atomically: on error the
/// target is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch.as_array().ok_or(PatchError::NotAnArray)?;
    let mut work = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let bad = |reason: &str| PatchError::BadOperation {
            index,
            reason: reason.to_string(),
        };
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing \"op\""))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing \"path\""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad("missing \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing \"from\""))
        };
        match name {
            "add" => add(&mut work, path, value()?).map_err(|r| bad(&r))?,
            "remove" => {
                remove(&mut work, path).map_err(|r| bad(&r))?;
            }
            "replace" => {
                let slot = work
                    .pointer_mut(path)
                    .ok_or_else(|| bad(&format!("path {path:?} does not exist")))?;
                *slot = value()?;
            }
            "move" => {
                let from = from()?;
                if path.starts_with(from) && path[from.len()..].starts_with('/') {
                    return Err(bad("cannot move a value into itself"));
                }
                let moved = remove(&mut work, from).map_err(|r| bad(&r))?;
                add(&mut work, path, moved).map_err(|r| bad(&r))?;
            }
            "copy" => {
                let copied = work
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| bad("\"from\" does not exist"))?;
                add(&mut work, path, copied).map_err(|r| bad(&r))?;
            }
            "test" => {
                // As the API server's JSON patch: a missing member tests equal to null (kube-rs's
                // finalizer helper relies on it to add the first finalizer).
                let expected = value()?;
                let found = work.pointer(path).unwrap_or(&Value::Null);
                if *found != expected {
                    return Err(PatchError::TestFailed {
                        index,
                        path: path.to_string(),
                    });
                }
            }
            other => return Err(bad(&format!("unknown op {other:?}"))),
        }
    }
    *target = work;
    Ok(())
}

fn split_parent(path: &str) -> Result<(&str, String), String> {
    let pos = path
        .rfind('/')
        .ok_or_else(|| format!("path {path:?} must start with '/'"))?;
    let last = path[pos + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..pos], last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_parent(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            if last == "-" {
                items.push(value);
                return Ok(());
            }
            let index: usize = last
                .parse()
                .map_err(|_| format!("{last:?} is not an array index"))?;
            if index > items.len() {
                return Err(format!("index {index} is out of bounds"));
            }
            items.insert(index, value);
            Ok(())
        }
        Some(_) => Err(format!("the parent of {path:?} is not a container")),
        None => Err(format!("the parent of {path:?} does not exist")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_parent(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Some(Value::Array(items)) => {
            let index: usize = last
                .parse()
                .map_err(|_| format!("{last:?} is not an array index"))?;
            if index >= items.len() {
                return Err(format!("index {index} is out of bounds"));
            }
            Ok(items.remove(index))
        }
        _ => Err(format!("path {path:?} does not exist")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
        merge_patch(&mut v, &json!(7));
        assert_eq!(v, json!(7));
    }

    #[test]
    fn json_patch_operations() {
        let mut v = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/a/1", "value": 9},
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "copy", "from": "/b", "path": "/x"},
                {"op": "move", "from": "/x/c", "path": "/y"},
                {"op": "remove", "path": "/a/0"},
                {"op": "test", "path": "/y", "value": 2},
                {"op": "test", "path": "/absent", "value": null},
                {"op": "add", "path": "/m~1n", "value": true}
            ]),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"a": [9, 2, 3], "b": {"c": 2}, "x": {}, "y": 2, "m/n": true})
        );
    }

    #[test]
    fn json_patch_errors_leave_target_unchanged() {
        let original = json!({"a": 1});
        for patch in [
            json!({"op": "add"}),
            json!([{"op": "replace", "path": "/nope", "value": 1}]),
            json!([{"op": "remove", "path": "/a"}, {"op": "test", "path": "/a", "value": 1}]),
            json!([{"op": "test", "path": "/missing", "value": 0}]),
            json!([{"op": "frob", "path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
            json!([{"op": "add", "path": "/a/b/c", "value": 1}]),
            json!([{"op": "move", "from": "", "path": "/a/b"}]),
            json!([1]),
        ] {
            let mut v = original.clone();
            assert!(json_patch(&mut v, &patch).is_err(), "{patch}");
            assert_eq!(v, original);
        }
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use serde_json::json;

    /// A small random JSON value built from a seed stream.
    fn value(depth: u32) -> Value {
        match rand::random_range(0..if depth > 3 { 4 } else { 7 }) {
            0 => Value::Null,
            1 => json!(rand::random_range(-3i64..5)),
            2 => json!(["a", "b", "-", "0", "1", "~1", ""][rand::random_range(0..7)]),
            3 => json!(rand::random::<bool>()),
            4 | 5 => Value::Object(
                (0..rand::random_range(0..4))
                    .map(|_| {
                        let key = ["a", "b", "0", "-", "~", "/"][rand::random_range(0..6)];
                        (key.to_string(), value(depth + 1))
                    })
                    .collect(),
            ),
            _ => Value::Array(
                (0..rand::random_range(0..4))
                    .map(|_| value(depth + 1))
                    .collect(),
            ),
        }
    }

    fn path() -> String {
        (0..rand::random_range(0..4))
            .map(|_| {
                [
                    "/a",
                    "/b",
                    "/0",
                    "/1",
                    "/-",
                    "/~1",
                    "/~0",
                    "/",
                    "a",
                    "/9999999999999999999999",
                ][rand::random_range(0..10)]
            })
            .collect()
    }

    #[test]
    fn random_patches_never_panic() {
        for _ in 0..5000 {
            let mut target = value(0);
            let ops: Vec<Value> = (0..rand::random_range(0..4))
                .map(|_| {
                    let op = ["add", "remove", "replace", "move", "copy", "test", "x"]
                        [rand::random_range(0..7)];
                    json!({"op": op, "path": path(), "from": path(), "value": value(2)})
                })
                .collect();
            let _ = json_patch(&mut target, &Value::Array(ops));
            merge_patch(&mut target, &value(0));
        }
    }
}
