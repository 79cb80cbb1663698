//! What the DNS server costs with 10,000 Services, on one core.
//!
//! `cargo bench -p mesh-federation --bench dns` prints a Markdown table for BENCHMARKS.md: the
//! time to rebuild the index after a change (every Service with one EndpointSlice of three
//! endpoints, a third of them mirrors, a failover TrafficSplit per mirrored Service) and the
//! time to answer a question of each kind from it, without sockets.
// A synchronous benchmark: std's clock is the right one here.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_api::crd::TrafficSplit;
use mesh_api::labels;
use mesh_federation::dns::{Authority, DnsConfig, Snapshot};
use serde_json::json;

const SERVICES: usize = 10_000;
const RUN_FOR: Duration = Duration::from_secs(2);

fn main() {
    let (services, slices, splits) = objects();
    let authority = Arc::new(Authority::new(&DnsConfig::new("west")).unwrap());
    let build = || Snapshot::build(authority.clone(), &services, &slices, &splits, 1, true);
    let (per_build, _) = measure(|| {
        black_box(build());
    });
    let snapshot = build();

    println!("| {SERVICES} Services | time |");
    println!("|---|---|");
    println!(
        "| index rebuild | {:.1} ms |",
        per_build.as_secs_f64() * 1e3
    );
    for (what, name, qtype) in [
        (
            "A, per-cluster",
            "svc-42.ns-4.svc.west.mesh.local.",
            RecordType::A,
        ),
        (
            "A, mirror",
            "svc-42.ns-4.svc.east.mesh.local.",
            RecordType::A,
        ),
        (
            "A, headless",
            "svc-44.ns-4.svc.west.mesh.local.",
            RecordType::A,
        ),
        (
            "A, per-pod",
            "pod-1.svc-44.ns-4.svc.west.mesh.local.",
            RecordType::A,
        ),
        (
            "SRV, headless",
            "_http._tcp.svc-44.ns-4.svc.west.mesh.local.",
            RecordType::SRV,
        ),
        (
            "A, clusterset",
            "svc-42.ns-4.svc.clusterset.local.",
            RecordType::A,
        ),
        (
            "SRV, clusterset",
            "_http._tcp.svc-42.ns-4.svc.clusterset.local.",
            RecordType::SRV,
        ),
        (
            "NXDOMAIN",
            "nothing.ns-4.svc.west.mesh.local.",
            RecordType::A,
        ),
        ("REFUSED", "example.com.", RecordType::A),
    ] {
        let query = Query::query(Name::from_ascii(name).unwrap(), qtype);
        let answer = snapshot.answer(&query);
        assert!(
            matches!(
                answer.rcode,
                ResponseCode::NoError | ResponseCode::NXDomain | ResponseCode::Refused
            ),
            "{name}: {:?}",
            answer.rcode
        );
        let (per_answer, _) = measure(|| {
            black_box(snapshot.answer(black_box(&query)));
        });
        println!(
            "| answer: {what} ({} records) | {:.2} µs |",
            answer.answers.len(),
            per_answer.as_secs_f64() * 1e6
        );
    }
}

/// Runs `f` for [`RUN_FOR`]; the mean time per call and the number of calls.
fn measure(mut f: impl FnMut()) -> (Duration, u32) {
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < RUN_FOR || calls < 3 {
        f();
        calls += 1;
    }
    (start.elapsed() / calls, calls)
}

/// `svc-<i>` in namespace `ns-<i / 10>`: one in three is a mirror `svc-<i-1>-east` of the
/// Service before it, one in three (the next) is headless with hostnames.
fn objects() -> (Vec<Service>, Vec<EndpointSlice>, Vec<TrafficSplit>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut splits = Vec::new();
    for i in 0..SERVICES {
        let namespace = format!("ns-{}", i / 10);
        let (name, labels, ip) = match i % 3 {
            1 => (
                format!("svc-{}-east", i - 1),
                json!({labels::MIRRORED_SERVICE: "true", labels::CLUSTER_NAME: "east"}),
                format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256),
            ),
            2 => (format!("svc-{i}"), json!({}), "None".to_owned()),
            _ => (
                format!("svc-{i}"),
                json!({}),
                format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256),
            ),
        };
        services.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
            }))
            .unwrap(),
        );
        let endpoints: Vec<_> = (0..3)
            .map(|e| {
                json!({"addresses": [format!("172.16.{}.{}", i % 250, e + 1)],
                    "hostname": format!("pod-{e}")})
            })
            .collect();
        slices.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-x"), "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080}]
            }))
            .unwrap(),
        );
        if i % 3 == 1 {
            splits.push(
                serde_json::from_value(json!({
                    "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
                    "metadata": {"name": format!("svc-{}", i - 1), "namespace": namespace,
                        "labels": {labels::FAILOVER_CONTROLLED_BY: "mesh"},
                        "annotations": {
                            labels::FAILOVER_PRIMARY_SERVICE: format!("svc-{}", i - 1),
                            labels::FAILOVER_FALLBACK_ORDER: name}},
                    "spec": {"service": format!("svc-{}", i - 1), "backends": []}
                }))
                .unwrap(),
            );
        }
    }
    (services, slices, splits)
}
