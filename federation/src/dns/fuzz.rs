//! Fuzzing entry points (`fuzz/fuzz_targets/dns_names.rs`); unit tests run them on hostile
//! seeds too.
//!
//! - [`names`]: any bytes, read as a name in text, as raw labels and in wire format, map to a
//!   meaning without panicking; a meaning's canonical name maps back to the same meaning; case
//!   never changes a meaning.
//! - [`message`]: any bytes that decode as a DNS message get, for each question, an answer from a
//!   fixed snapshot that keeps the response rules (refusals carry nothing, negative answers carry
//!   the SOA, answers are owned by the question's name) and that encodes and decodes again.

use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_api::crd::TrafficSplit;
use mesh_api::labels;
use serde_json::{Value, json};

use super::names::{Classified, Zones};
use super::{Authority, DnsConfig, Snapshot};

/// Checks the name mapping on `data`.
pub fn names(data: &[u8]) {
    let zones = &fixture().0;
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(name) = Name::from_ascii(text) {
            check_name(zones, &name);
        }
        if let Ok(name) = Name::from_utf8(text) {
            check_name(zones, &name);
        }
    }
    if let Ok(name) = Name::from_labels(data.split(|byte| *byte == b'.')) {
        check_name(zones, &name);
    }
    if let Ok(name) = Name::read(&mut BinDecoder::new(data)) {
        check_name(zones, &name);
    }
}

fn check_name(zones: &Zones, name: &Name) {
    let classified = zones.classify(name);
    assert_eq!(
        zones.classify(&name.to_lowercase()),
        classified,
        "case changed the meaning of {name}"
    );
    if let Classified::Inside(kind, meaning) = &classified {
        if let Some(canonical) = zones.name_of(*kind, meaning) {
            assert_eq!(
                zones.classify(&canonical),
                classified,
                "{canonical}, the canonical name of {name}, means something else"
            );
        }
    }
}

/// Checks the answers to the questions of the message in `data`.
pub fn message(data: &[u8]) {
    let Ok(request) = Message::from_vec(data) else {
        return;
    };
    let snapshot = &fixture().1;
    for query in request.queries() {
        let answer = snapshot.answer(query);
        match answer.rcode {
            ResponseCode::Refused | ResponseCode::ServFail => {
                assert!(!answer.authoritative);
                assert!(answer.answers.is_empty() && answer.authority.is_empty());
            }
            ResponseCode::NXDomain => {
                assert!(answer.answers.is_empty());
                assert_eq!(answer.authority.len(), 1);
                assert_eq!(answer.authority[0].record_type(), RecordType::SOA);
            }
            ResponseCode::NoError => {
                assert!(answer.authoritative);
                if answer.answers.is_empty() {
                    assert_eq!(answer.authority.len(), 1);
                }
            }
            other => panic!("unexpected response code {other}"),
        }
        for record in &answer.answers {
            assert_eq!(record.name(), query.name());
        }

        let mut header = Header::response_from_request(request.header());
        header
            .set_message_type(MessageType::Response)
            .set_response_code(answer.rcode)
            .set_authoritative(answer.authoritative);
        let mut response = Message::new();
        response
            .set_header(header)
            .add_query(query.clone())
            .add_answers(answer.answers.iter().cloned())
            .add_name_servers(answer.authority.iter().cloned())
            .add_additionals(answer.additionals.iter().cloned());
        let bytes = response
            .to_vec()
            .unwrap_or_else(|error| panic!("the answer to {query} does not encode: {error}"));
        let decoded = Message::from_vec(&bytes)
            .unwrap_or_else(|error| panic!("the answer to {query} does not decode: {error}"));
        assert_eq!(decoded.answers().len(), answer.answers.len());
        assert_eq!(decoded.additionals().len(), answer.additionals.len());
    }
}

/// The zones, and a snapshot of cluster `west` with every kind of name: a dual-stack Service,
/// a headless one with and without hostnames, mirrors (one not ready) and a failover split.
fn fixture() -> &'static (Zones, Snapshot) {
    static FIXTURE: OnceLock<(Zones, Snapshot)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = DnsConfig::new("west");
        let authority = match Authority::new(&config) {
            Ok(authority) => Arc::new(authority),
            Err(error) => panic!("the default configuration is valid: {error}"),
        };
        let ports = json!([{"name": "http", "port": 80}, {"name": "dns", "port": 53,
            "protocol": "UDP"}]);
        let service = |name: &str, cluster: Option<&str>, ips: Value| {
            let labels = cluster.map_or_else(|| json!({}), |cluster| {
                json!({labels::MIRRORED_SERVICE: labels::TRUE, labels::CLUSTER_NAME: cluster})
            });
            from_json::<Service>(json!({
                "metadata": {"name": name, "namespace": "prod", "labels": labels},
                "spec": {"clusterIPs": ips, "ports": ports}
            }))
        };
        let services = [
            service("web", None, json!(["10.0.0.1", "fd00::1"])),
            service("db", None, json!(["None"])),
            service("web-east", Some("east"), json!(["10.0.1.1"])),
            service("web-north", Some("north"), json!(["10.0.2.1"])),
        ];
        let slice = |service: &str, endpoints: Value| {
            from_json::<EndpointSlice>(json!({
                "metadata": {"name": service, "namespace": "prod",
                    "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080}]
            }))
        };
        let slices = [
            slice("web", json!([{"addresses": ["10.1.0.1"]}])),
            slice(
                "db",
                json!([{"addresses": ["10.1.0.2"], "hostname": "db-0"},
                    {"addresses": ["10.1.0.3"]}]),
            ),
            slice("web-east", json!([{"addresses": ["10.9.0.1"]}])),
            slice(
                "web-north",
                json!([{"addresses": ["10.9.0.1"], "conditions": {"ready": false}}]),
            ),
        ];
        let splits = [from_json::<TrafficSplit>(json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": "web", "namespace": "prod",
                "labels": {labels::FAILOVER_CONTROLLED_BY: "mesh"},
                "annotations": {labels::FAILOVER_PRIMARY_SERVICE: "web",
                    labels::FAILOVER_FALLBACK_ORDER: "web-north,web-east"}},
            "spec": {"service": "web", "backends": []}
        }))];
        let zones = authority.zones().clone();
        let snapshot = Snapshot::build(authority, &services, &slices, &splits, 1, true);
        (zones, snapshot)
    })
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(object) => object,
        Err(error) => panic!("the fixture is a valid object: {error}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hickory_proto::op::Query;

    use super::*;

    #[test]
    fn hostile_seeds() {
        let seeds: [&[u8]; 10] = [
            b"",
            b".",
            b"..",
            b"web.prod.svc.west.mesh.local",
            b"_http._tcp.DB.prod.svc.west.mesh.local.",
            b"db-0.db.prod.svc.west.MESH.local",
            b"\xff\x00.mesh.local",
            b"\x03web\x04prod\x03svc\x0aclusterset\x05local\x00",
            b"\xc0\x00",
            &[0x3f; 300],
        ];
        for seed in seeds {
            names(seed);
            message(seed);
        }
    }

    #[test]
    fn every_kind_of_question() {
        for name in [
            "web.prod.svc.west.mesh.local.",
            "web.prod.svc.east.mesh.local.",
            "db-0.db.prod.svc.west.mesh.local.",
            "10-1-0-3.db.prod.svc.west.mesh.local.",
            "_http._tcp.db.prod.svc.west.mesh.local.",
            "_http._tcp.web.prod.svc.clusterset.local.",
            "web.prod.svc.clusterset.local.",
            "nothing.prod.svc.clusterset.local.",
            "mesh.local.",
            "example.com.",
        ] {
            for qtype in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
                RecordType::ANY,
                RecordType::SOA,
                RecordType::NS,
            ] {
                let mut request = Message::new();
                request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
                message(&request.to_vec().unwrap());
            }
        }
    }
}
