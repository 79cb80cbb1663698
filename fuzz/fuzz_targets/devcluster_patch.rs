//! Arbitrary JSON as merge patches, JSON patches and server-side apply bodies against an object:
//! the dev cluster applies what clients send. Never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "web", "namespace": "default", "labels": { "app": "web" } },
        "data": { "a": "1", "list": "x" }
    });
    let mut merged = object.clone();
    mesh_e2e::devcluster::patch::merge_patch(&mut merged, &patch);
    let mut patched = object.clone();
    let _ = mesh_e2e::devcluster::patch::json_patch(&mut patched, &patch);
    let _ = mesh_e2e::devcluster::apply::apply(
        &object,
        &patch,
        "fuzz",
        false,
        "v1",
        "2026-01-01T00:00:00Z",
    );
});
