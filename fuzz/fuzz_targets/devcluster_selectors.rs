//! Arbitrary text into the dev cluster's label and field selector parsers, which read query
//! parameters from any client. Never a panic; a selector that parses can match any object.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let object = serde_json::json!({
        "metadata": { "name": "web", "namespace": "default", "labels": { "app": "web", "tier": "front" } }
    });
    if let Ok(selector) = mesh_e2e::devcluster::selector::LabelSelector::parse(text) {
        let _ = selector.matches_object(&object);
    }
    if let Ok(selector) = mesh_e2e::devcluster::selector::FieldSelector::parse(text) {
        let _ = selector.matches_object(&object);
    }
});
