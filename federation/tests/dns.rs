//! The controller's DNS server against a dev cluster, queried over UDP and TCP with hickory's
//! client (and with `dig` when it is installed): per-cluster, per-pod, SRV and clusterset names,
//! negative answers, refusals, hostile datagrams, truncation, and answers that follow the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mesh_api::crd::TrafficSplit;
use mesh_api::labels;
use mesh_e2e::devcluster::DevCluster;
use mesh_federation::MIRROR_SLICE_MANAGER;
use mesh_federation::cache::Cache;
use mesh_federation::dns::{DnsConfig, DnsError, DnsMetrics, DnsServer};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::runtime::{TokioRuntimeProvider, TokioTime};
use hickory_proto::tcp::TcpClientStream;
use hickory_proto::udp::UdpClientStream;
use hickory_proto::xfer::{DnsExchange, DnsHandle, DnsMultiplexer, DnsRequest, DnsRequestOptions};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long anything may take to show up.
const WAIT: Duration = Duration::from_secs(10);
/// How long one DNS exchange may take.
const EXCHANGE: Duration = Duration::from_secs(3);
const NS: &str = "prod";

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

const BOTH: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// A dev cluster named `west` (its endpoints controller on), the cache, and a DNS server on
/// 127.0.0.1.
struct Harness {
    _cluster: DevCluster,
    client: Client,
    addr: SocketAddr,
    metrics: DnsMetrics,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), DnsError>>>,
}

impl Harness {
    async fn start() -> Self {
        let (cluster, client) = support::cluster("west", &[NS], true).await;

        let cache = Cache::start(&client);
        tokio::time::timeout(WAIT, cache.wait_ready())
            .await
            .expect("the cache lists every kind");
        let mut config = DnsConfig::new("west");
        config.listen = "127.0.0.1:0".parse().unwrap();
        let metrics = DnsMetrics::default();
        let server = DnsServer::bind(config, cache, metrics.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            _cluster: cluster,
            client,
            addr,
            metrics,
            stop: Some(stop),
            server: Some(server),
        }
    }

    async fn create<K>(&self, object: Value) -> K
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), NS);
        let object: K = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap()
    }

    /// A local Service with a selector `app=<name>`; `ips` are its ClusterIPs.
    async fn local_service(&self, name: &str, ips: &[&str]) {
        self.create::<Service>(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "clusterIP": ips[0], "clusterIPs": ips,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                          {"name": "metrics", "port": 9090, "protocol": "UDP"}]}
        }))
        .await;
    }

    /// A pod of app `app`, ready or not.
    async fn pod(&self, name: &str, app: &str, ip: &str, ready: bool) {
        self.create::<Pod>(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "app", "image": "app",
                "ports": [{"containerPort": 8080}]}]},
        }))
        .await;
        self.set_pod_ready(name, ip, ready).await;
    }

    async fn set_pod_ready(&self, name: &str, ip: &str, ready: bool) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let status = if ready { "True" } else { "False" };
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"podIP": ip,
                "conditions": [{"type": "Ready", "status": status}]}})),
        )
        .await
        .unwrap();
    }

    /// A mirror of remote Service `service` of `cluster`, as the mirror reconciler writes it,
    /// with one endpoint (the local gateway) ready or not.
    async fn mirror(&self, service: &str, cluster: &str, ip: &str, ready: bool) {
        let name = format!("{service}-{cluster}");
        self.create::<Service>(json!({
            "metadata": {"name": name, "labels": {
                labels::MIRRORED_SERVICE: labels::TRUE, labels::CLUSTER_NAME: cluster},
                "annotations": {labels::REMOTE_SVC_FQ_NAME:
                    format!("{service}.{NS}.svc.cluster.local")}},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        }))
        .await;
        self.create::<EndpointSlice>(json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": MIRROR_SLICE_MANAGER}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["172.18.0.2"], "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": 4181, "protocol": "TCP"}]
        }))
        .await;
    }

    /// A headless Service without a selector, and one slice of `endpoints`
    /// (`(hostname, address, ready)`).
    async fn headless(&self, name: &str, endpoints: &[(Option<&str>, &str, Option<bool>)]) {
        self.create::<Service>(json!({
            "metadata": {"name": name},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                "ports": [{"name": "peer", "port": 7000}]}
        }))
        .await;
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|(hostname, address, ready)| {
                let mut endpoint = json!({"addresses": [address]});
                if let Some(hostname) = hostname {
                    endpoint["hostname"] = json!(hostname);
                }
                if let Some(ready) = ready {
                    endpoint["conditions"] = json!({"ready": ready});
                }
                endpoint
            })
            .collect();
        self.create::<EndpointSlice>(json!({
            "metadata": {"name": format!("{name}-abc"), "labels": {
                "kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "peer", "port": 7001, "protocol": "TCP"}]
        }))
        .await;
    }

    async fn ask(&self, transport: Transport, name: &str, qtype: RecordType) -> Message {
        ask(self.addr, transport, name, qtype).await
    }

    /// Asks, and asserts the answer is NXDOMAIN with the SOA of `mesh.local.`.
    async fn assert_nxdomain(&self, transport: Transport, name: &str, qtype: RecordType) {
        let response = self.ask(transport, name, qtype).await;
        assert_negative(&response, ResponseCode::NXDomain, "mesh.local.");
    }

    /// Asks until the answer's record data is `want`, in order.
    async fn wait_for(
        &self,
        transport: Transport,
        name: &str,
        qtype: RecordType,
        want: &[&str],
    ) -> Message {
        let deadline = Instant::now() + WAIT;
        loop {
            let response = self.ask(transport, name, qtype).await;
            if data(&response) == want {
                return response;
            }
            assert!(
                Instant::now() < deadline,
                "{name} {qtype} over {transport:?}: want {want:?}, last answer {response}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let server = self.server.take().unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("the server stops when asked")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// One question, with hickory's UDP or TCP client.
async fn ask(addr: SocketAddr, transport: Transport, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new();
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.set_recursion_desired(true);
    exchange(addr, transport, message).await
}

async fn exchange(addr: SocketAddr, transport: Transport, message: Message) -> Message {
    let request = DnsRequest::new(message, DnsRequestOptions::default());
    let provider = TokioRuntimeProvider::new();
    let response = match transport {
        Transport::Udp => {
            let connect = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(EXCHANGE))
                .build();
            let (exchange, background) = DnsExchange::connect::<_, _, TokioTime>(connect)
                .await
                .unwrap();
            let background = tokio::spawn(background);
            let response = exchange.send(request).next().await;
            background.abort();
            response
        }
        Transport::Tcp => {
            let (stream, sender) = TcpClientStream::new(addr, None, Some(EXCHANGE), provider);
            let multiplexer = DnsMultiplexer::with_timeout(stream, sender, EXCHANGE, None);
            let (exchange, background) = DnsExchange::connect::<_, _, TokioTime>(multiplexer)
                .await
                .unwrap();
            let background = tokio::spawn(background);
            let response = exchange.send(request).next().await;
            background.abort();
            response
        }
    };
    response
        .expect("a response")
        .expect("a valid response")
        .into_message()
}

/// The answer section's record data, as text.
fn data(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .map(|record| record.data().to_string())
        .collect()
}

fn assert_negative(message: &Message, rcode: ResponseCode, zone: &str) {
    assert_eq!(message.response_code(), rcode, "{message}");
    assert!(message.authoritative(), "{message}");
    assert!(!message.recursion_available());
    assert!(message.answers().is_empty(), "{message}");
    let soa = message
        .name_servers()
        .iter()
        .find(|record| record.record_type() == RecordType::SOA)
        .unwrap_or_else(|| panic!("no SOA in {message}"));
    assert_eq!(soa.name().to_ascii(), zone);
    let RData::SOA(data) = soa.data() else {
        panic!("not an SOA")
    };
    assert_eq!(
        data.minimum(),
        5,
        "the negative-caching TTL is the record TTL"
    );
}

#[tokio::test]
async fn per_cluster_names_over_udp_and_tcp() {
    let h = Harness::start().await;
    h.local_service("web", &["10.96.0.10", "fd00::10"]).await;
    h.pod("web-1", "web", "10.1.0.1", true).await;
    h.mirror("web", "east", "10.96.1.10", true).await;

    for transport in BOTH {
        let local = "web.prod.svc.west.mesh.local.";
        let response = h
            .wait_for(transport, local, RecordType::A, &["10.96.0.10"])
            .await;
        assert!(response.authoritative());
        assert!(!response.recursion_available());
        assert_eq!(response.answers()[0].ttl(), 5);
        h.wait_for(transport, local, RecordType::AAAA, &["fd00::10"])
            .await;
        // The mirror, by its remote name and cluster.
        h.wait_for(
            transport,
            "web.prod.svc.east.mesh.local.",
            RecordType::A,
            &["10.96.1.10"],
        )
        .await;
        // Case-insensitive, and the answer keeps the question's case.
        let response = h
            .wait_for(
                transport,
                "Web.PROD.svc.West.Mesh.Local.",
                RecordType::A,
                &["10.96.0.10"],
            )
            .await;
        assert_eq!(
            response.answers()[0].name().to_ascii(),
            "Web.PROD.svc.West.Mesh.Local."
        );
        // A mirror is never this cluster's Service.
        h.assert_nxdomain(
            transport,
            "web-east.prod.svc.west.mesh.local.",
            RecordType::A,
        )
        .await;

        // SRV for the named ports, with the target's addresses as glue.
        let response = h
            .wait_for(
                transport,
                "_http._tcp.web.prod.svc.west.mesh.local.",
                RecordType::SRV,
                &["0 1 80 web.prod.svc.west.mesh.local."],
            )
            .await;
        let mut glue: Vec<String> = response
            .additionals()
            .iter()
            .map(|record| format!("{} {}", record.name(), record.data()))
            .collect();
        glue.sort();
        assert_eq!(
            glue,
            [
                "web.prod.svc.west.mesh.local. 10.96.0.10",
                "web.prod.svc.west.mesh.local. fd00::10"
            ]
        );
        h.wait_for(
            transport,
            "_metrics._udp.web.prod.svc.west.mesh.local.",
            RecordType::SRV,
            &["0 1 9090 web.prod.svc.west.mesh.local."],
        )
        .await;
        h.wait_for(
            transport,
            "_http._tcp.web.prod.svc.east.mesh.local.",
            RecordType::SRV,
            &["0 1 80 web.prod.svc.east.mesh.local."],
        )
        .await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn headless_services_answer_endpoints_and_per_pod_names() {
    let h = Harness::start().await;
    h.headless(
        "db",
        &[
            (Some("db-0"), "10.2.0.1", Some(true)),
            (Some("db-1"), "10.2.0.2", None),
            (Some("db-2"), "10.2.0.3", Some(false)),
            (None, "10.2.0.4", Some(true)),
        ],
    )
    .await;
    for transport in BOTH {
        h.wait_for(
            transport,
            "db.prod.svc.west.mesh.local.",
            RecordType::A,
            &["10.2.0.1", "10.2.0.2", "10.2.0.4"],
        )
        .await;
        h.wait_for(
            transport,
            "db-1.db.prod.svc.west.mesh.local.",
            RecordType::A,
            &["10.2.0.2"],
        )
        .await;
        h.wait_for(
            transport,
            "10-2-0-4.db.prod.svc.west.mesh.local.",
            RecordType::A,
            &["10.2.0.4"],
        )
        .await;
        // Not ready: no per-pod name.
        h.assert_nxdomain(
            transport,
            "db-2.db.prod.svc.west.mesh.local.",
            RecordType::A,
        )
        .await;
        // Exists, but IPv4 only.
        let response = h
            .ask(
                transport,
                "db-0.db.prod.svc.west.mesh.local.",
                RecordType::AAAA,
            )
            .await;
        assert_negative(&response, ResponseCode::NoError, "mesh.local.");

        let response = h
            .wait_for(
                transport,
                "_peer._tcp.db.prod.svc.west.mesh.local.",
                RecordType::SRV,
                &[
                    "0 1 7001 db-0.db.prod.svc.west.mesh.local.",
                    "0 1 7001 db-1.db.prod.svc.west.mesh.local.",
                    "0 1 7001 10-2-0-4.db.prod.svc.west.mesh.local.",
                ],
            )
            .await;
        let glue: Vec<String> = response
            .additionals()
            .iter()
            .map(|record| format!("{} {}", record.name(), record.data()))
            .collect();
        assert_eq!(
            glue,
            [
                "db-0.db.prod.svc.west.mesh.local. 10.2.0.1",
                "db-1.db.prod.svc.west.mesh.local. 10.2.0.2",
                "10-2-0-4.db.prod.svc.west.mesh.local. 10.2.0.4",
            ]
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn clusterset_names_follow_readiness_and_failover_order() {
    let h = Harness::start().await;
    h.local_service("web", &["10.96.0.10"]).await;
    h.pod("web-1", "web", "10.1.0.1", true).await;
    h.mirror("web", "east", "10.96.1.10", true).await;
    h.mirror("web", "north", "10.96.2.10", true).await;
    h.mirror("web", "south", "10.96.3.10", false).await;
    let name = "web.prod.svc.clusterset.local.";

    // Local first, then mirrors by cluster name; south has no ready endpoint.
    for transport in BOTH {
        h.wait_for(
            transport,
            name,
            RecordType::A,
            &["10.96.0.10", "10.96.1.10", "10.96.2.10"],
        )
        .await;
    }

    // A failover TrafficSplit puts north before east.
    h.create::<TrafficSplit>(json!({
        "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
        "metadata": {"name": "web-failover",
            "labels": {labels::FAILOVER_CONTROLLED_BY: "mesh-controller"},
            "annotations": {labels::FAILOVER_PRIMARY_SERVICE: "web",
                labels::FAILOVER_FALLBACK_ORDER: "web-south, web-north,web-east"}},
        "spec": {"service": "web", "backends": [
            {"service": "web", "weight": 100}, {"service": "web-north", "weight": 0},
            {"service": "web-east", "weight": 0}, {"service": "web-south", "weight": 0}]}
    }))
    .await;
    for transport in BOTH {
        h.wait_for(
            transport,
            name,
            RecordType::A,
            &["10.96.0.10", "10.96.2.10", "10.96.1.10"],
        )
        .await;
    }
    let response = h
        .wait_for(
            Transport::Udp,
            "_http._tcp.web.prod.svc.clusterset.local.",
            RecordType::SRV,
            &[
                "0 1 80 web.prod.svc.west.mesh.local.",
                "1 1 80 web.prod.svc.north.mesh.local.",
                "2 1 80 web.prod.svc.east.mesh.local.",
            ],
        )
        .await;
    assert_eq!(response.additionals().len(), 3);

    // The local pod goes not ready: the local Service is skipped.
    h.set_pod_ready("web-1", "10.1.0.1", false).await;
    for transport in BOTH {
        h.wait_for(
            transport,
            name,
            RecordType::A,
            &["10.96.2.10", "10.96.1.10"],
        )
        .await;
    }

    // Nothing ready anywhere: every copy, in order, rather than nothing.
    let slices: Api<EndpointSlice> = Api::namespaced(h.client.clone(), NS);
    for mirror in ["web-east", "web-north"] {
        slices
            .patch(
                mirror,
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": [{"addresses": ["172.18.0.2"],
                    "conditions": {"ready": false}}]})),
            )
            .await
            .unwrap();
    }
    h.wait_for(
        Transport::Udp,
        name,
        RecordType::A,
        &["10.96.0.10", "10.96.3.10", "10.96.2.10", "10.96.1.10"],
    )
    .await;

    let response = h
        .ask(
            Transport::Udp,
            "nothing.prod.svc.clusterset.local.",
            RecordType::A,
        )
        .await;
    assert_negative(&response, ResponseCode::NXDomain, "clusterset.local.");
    h.shutdown().await;
}

#[tokio::test]
async fn negative_answers_refusals_and_metrics() {
    let h = Harness::start().await;
    let mut registry = Registry::default();
    h.metrics.register(&mut registry);
    h.local_service("web", &["10.96.0.10"]).await;
    h.wait_for(
        Transport::Udp,
        "web.prod.svc.west.mesh.local.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;

    let counts = |registry: &Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let count = |labels: &str| -> u64 {
            let prefix = format!("dns_queries_total{{{labels}}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .map_or(0, |value| value.parse().unwrap())
        };
        [
            count(r#"rcode="NXDOMAIN",transport="udp""#),
            count(r#"rcode="NXDOMAIN",transport="tcp""#),
            count(r#"rcode="REFUSED",transport="udp""#),
            count(r#"rcode="REFUSED",transport="tcp""#),
        ]
    };
    let before = counts(&registry);

    for transport in BOTH {
        for name in [
            "nothing.prod.svc.west.mesh.local.",
            "web.prod.svc.nowhere.mesh.local.",
            "web.other.svc.west.mesh.local.",
            "a.b.c.d.e.f.g.h.mesh.local.",
            "_http._udp.web.prod.svc.west.mesh.local.",
        ] {
            let response = h.ask(transport, name, RecordType::A).await;
            assert_negative(&response, ResponseCode::NXDomain, "mesh.local.");
        }
        for (name, qtype) in [
            ("web.prod.svc.west.mesh.local.", RecordType::AAAA),
            ("web.prod.svc.west.mesh.local.", RecordType::TXT),
            ("prod.svc.west.mesh.local.", RecordType::A),
            ("mesh.local.", RecordType::A),
        ] {
            let response = h.ask(transport, name, qtype).await;
            assert_negative(&response, ResponseCode::NoError, "mesh.local.");
        }
        let response = h
            .ask(transport, "svc.clusterset.local.", RecordType::A)
            .await;
        assert_negative(&response, ResponseCode::NoError, "clusterset.local.");

        let response = h.ask(transport, "mesh.local.", RecordType::SOA).await;
        assert_eq!(response.response_code(), ResponseCode::NoError);
        assert!(response.authoritative());
        let RData::SOA(soa) = response.answers()[0].data() else {
            panic!("not an SOA: {response}")
        };
        assert_eq!(soa.mname().to_ascii(), "ns.dns.mesh.local.");
        let response = h.ask(transport, "clusterset.local.", RecordType::NS).await;
        assert_eq!(data(&response), ["ns.dns.clusterset.local."]);

        for name in ["example.com.", "local.", "web.prod.svc.cluster.local."] {
            let response = h.ask(transport, name, RecordType::A).await;
            assert_eq!(response.response_code(), ResponseCode::Refused, "{name}");
            assert!(!response.authoritative());
            assert!(!response.recursion_available());
            assert!(response.answers().is_empty());
        }
        let response = h.ask(transport, "mesh.local.", RecordType::AXFR).await;
        assert_eq!(response.response_code(), ResponseCode::Refused);
    }

    let after = counts(&registry);
    let asked: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(asked, [5, 5, 4, 4], "NXDOMAIN udp, tcp; REFUSED udp, tcp");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("dns_snapshot_builds_total"), "{text}");
    h.shutdown().await;
}

#[tokio::test]
async fn hostile_messages_cost_nothing_but_themselves() {
    let h = Harness::start().await;
    h.local_service("web", &["10.96.0.10"]).await;
    h.wait_for(
        Transport::Udp,
        "web.prod.svc.west.mesh.local.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(h.addr).await.unwrap();
    let receive = |id: u16| {
        let socket = &socket;
        async move {
            let mut buffer = vec![0; 4096];
            loop {
                let len = tokio::time::timeout(EXCHANGE, socket.recv(&mut buffer))
                    .await
                    .expect("a response")
                    .unwrap();
                let message = Message::from_vec(&buffer[..len]).unwrap();
                if message.id() == id {
                    return message;
                }
            }
        }
    };
    // Garbage, a lone byte, a header that promises a question it lacks, a question whose name
    // is a compression loop, and a response (which must not be answered).
    socket.send(b"\x00").await.unwrap();
    socket.send(&[0xff; 300]).await.unwrap();
    let header_only = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    socket.send(&header_only).await.unwrap();
    let formerr = receive(0x1234).await;
    assert_eq!(formerr.response_code(), ResponseCode::FormErr);
    let looped = [
        0x12, 0x35, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01,
    ];
    socket.send(&looped).await.unwrap();
    assert_eq!(receive(0x1235).await.response_code(), ResponseCode::FormErr);
    let mut response = Message::new();
    response
        .set_id(0x1236)
        .set_message_type(MessageType::Response);
    socket.send(&response.to_vec().unwrap()).await.unwrap();

    // Other opcodes, a future EDNS version, two questions.
    let question = || {
        Query::query(
            Name::from_ascii("web.prod.svc.west.mesh.local.").unwrap(),
            RecordType::A,
        )
    };
    let mut notify = Message::new();
    notify
        .set_id(0x2000)
        .set_op_code(OpCode::Notify)
        .add_query(question());
    socket.send(&notify.to_vec().unwrap()).await.unwrap();
    assert_eq!(receive(0x2000).await.response_code(), ResponseCode::NotImp);
    let mut future = Message::new();
    let mut edns = Edns::new();
    edns.set_version(1);
    future.set_id(0x2001).add_query(question()).set_edns(edns);
    socket.send(&future.to_vec().unwrap()).await.unwrap();
    // BADVERS and BADSIG share the code 16 (RFC 6891, RFC 8945).
    let badvers = receive(0x2001).await;
    assert_eq!(
        u16::from(badvers.response_code()),
        u16::from(ResponseCode::BADVERS)
    );
    assert!(
        badvers.extensions().is_some(),
        "BADVERS comes with an OPT record"
    );
    let mut two = Message::new();
    two.set_id(0x2002)
        .add_query(question())
        .add_query(question());
    socket.send(&two.to_vec().unwrap()).await.unwrap();
    assert_eq!(receive(0x2002).await.response_code(), ResponseCode::FormErr);

    // A good question on the same socket is answered.
    let mut good = Message::new();
    good.set_id(0x3000).add_query(question());
    socket.send(&good.to_vec().unwrap()).await.unwrap();
    let answer = receive(0x3000).await;
    assert_eq!(answer.response_code(), ResponseCode::NoError);
    assert_eq!(data(&answer), ["10.96.0.10"]);
    // The response sent as a request got nothing back.
    let mut buffer = vec![0; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buffer))
            .await
            .is_err(),
        "nothing more arrives"
    );

    // A TCP connection that sends a garbage frame costs only itself.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(EXCHANGE, tcp.read_to_end(&mut sink)).await;
    }
    for transport in BOTH {
        h.wait_for(
            transport,
            "web.prod.svc.west.mesh.local.",
            RecordType::A,
            &["10.96.0.10"],
        )
        .await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn long_udp_answers_are_truncated_and_complete_over_tcp() {
    let h = Harness::start().await;
    let endpoints: Vec<(Option<&str>, String, Option<bool>)> = (0..150)
        .map(|i| (None, format!("10.3.{}.{}", i / 200, i % 200 + 1), None))
        .collect();
    let endpoints: Vec<(Option<&str>, &str, Option<bool>)> = endpoints
        .iter()
        .map(|(h, a, r)| (*h, a.as_str(), *r))
        .collect();
    h.headless("big", &endpoints).await;
    let name = "big.prod.svc.west.mesh.local.";
    let deadline = Instant::now() + WAIT;
    let tcp = loop {
        let response = h.ask(Transport::Tcp, name, RecordType::A).await;
        if response.answers().len() == 150 {
            break response;
        }
        assert!(Instant::now() < deadline, "last answer: {response}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!tcp.truncated());
    let udp = h.ask(Transport::Udp, name, RecordType::A).await;
    assert!(udp.truncated(), "150 A records do not fit in 512 bytes");
    assert!(udp.answers().len() < 150);
    assert_eq!(udp.response_code(), ResponseCode::NoError);

    // With EDNS, the answer may be larger, but no larger than 1232 bytes, whatever is offered.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(h.addr).await.unwrap();
    let mut question = Message::new();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    question
        .set_id(7)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A))
        .set_edns(edns);
    socket.send(&question.to_vec().unwrap()).await.unwrap();
    let mut buffer = vec![0; 65536];
    let len = tokio::time::timeout(EXCHANGE, socket.recv(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(len <= 1232 && len > 512, "{len} bytes");
    let edns_answer = Message::from_vec(&buffer[..len]).unwrap();
    assert!(edns_answer.truncated());
    assert!(edns_answer.answers().len() > udp.answers().len());
    h.shutdown().await;
}

#[tokio::test]
async fn answers_follow_the_api() {
    let h = Harness::start().await;
    h.local_service("web", &["10.96.0.10"]).await;
    let name = "web.prod.svc.west.mesh.local.";
    h.wait_for(Transport::Udp, name, RecordType::A, &["10.96.0.10"])
        .await;

    let services: Api<Service> = Api::namespaced(h.client.clone(), NS);
    let changed = Instant::now();
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": "10.96.0.20",
                "clusterIPs": ["10.96.0.20"]}})),
        )
        .await
        .unwrap();
    h.wait_for(Transport::Udp, name, RecordType::A, &["10.96.0.20"])
        .await;
    eprintln!(
        "a changed ClusterIP was answered {:?} after the API call",
        changed.elapsed()
    );

    let deleted = Instant::now();
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let response = h.ask(Transport::Udp, name, RecordType::A).await;
        if response.response_code() == ResponseCode::NXDomain {
            assert_negative(&response, ResponseCode::NXDomain, "mesh.local.");
            break;
        }
        assert!(Instant::now() < deadline, "still answered: {response}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a deleted Service was denied {:?} after the API call",
        deleted.elapsed()
    );
    h.shutdown().await;
}

/// Runs `dig @127.0.0.1 -p PORT ARGS...` and returns its output.
async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let mut command = std::process::Command::new("dig");
    command
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("dig runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn dig_agrees() {
    let available = std::process::Command::new("dig").arg("-v").output().is_ok();
    if !available {
        let required = std::env::var("MESH_DIG_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "MESH_DIG_REQUIRED=1 but `dig` is not installed (Debian: apt-get install dnsutils)"
        );
        eprintln!("skipping: `dig` is not installed (Debian: apt-get install dnsutils)");
        return;
    }
    let h = Harness::start().await;
    h.local_service("web", &["10.96.0.10"]).await;
    h.wait_for(
        Transport::Udp,
        "web.prod.svc.west.mesh.local.",
        RecordType::A,
        &["10.96.0.10"],
    )
    .await;

    let short = dig(h.addr, &["+short", "web.prod.svc.west.mesh.local", "A"]).await;
    assert_eq!(short.trim(), "10.96.0.10");
    let short = dig(
        h.addr,
        &["+tcp", "+short", "web.prod.svc.west.mesh.local", "A"],
    )
    .await;
    assert_eq!(short.trim(), "10.96.0.10");
    let short = dig(
        h.addr,
        &["+short", "_http._tcp.web.prod.svc.west.mesh.local", "SRV"],
    )
    .await;
    assert_eq!(short.trim(), "0 1 80 web.prod.svc.west.mesh.local.");

    let full = dig(h.addr, &["nothing.prod.svc.west.mesh.local", "A"]).await;
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(full.contains(" aa"), "authoritative: {full}");
    assert!(full.contains("AUTHORITY: 1"), "{full}");
    assert!(
        full.contains("SOA\tns.dns.mesh.local. hostmaster.mesh.local."),
        "{full}"
    );
    let full = dig(h.addr, &["example.com", "A"]).await;
    assert!(full.contains("status: REFUSED"), "{full}");
    h.shutdown().await;
}
