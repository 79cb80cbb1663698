//! The trust bridge against dev clusters, west (where the controller under test runs) and east
//! (the linked cluster, whose controller side only publishes its roots), each a real
//! Kubernetes-compatible API server on loopback.
//!
//! The bundle set west serves is read with the proxy's own parser of `TrustBundles.Watch`
//! updates, and, end to end, by a real `mesh-proxy` following west's stream: an east workload
//! is "trusted" when its meshed connection to that proxy reaches the echo app behind it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::{PATIENCE, eventually};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use mesh_api::common::ProtocolHint;
use mesh_api::crd::{
    DEFAULT_TRUST_BUNDLE_CONFIG_MAP, Link, LinkGateway, LinkProbe, LinkSpec,
    TRUST_BUNDLE_CONFIG_MAP_KEY, TRUST_DOMAIN_CONFIG_MAP_KEY,
};
use mesh_api::discovery::WatchTrustBundles;
use mesh_api::discovery::trust_bundles_client::TrustBundlesClient;
use mesh_api::ports::ALPN_OPAQUE;
use mesh_e2e::devcluster::DevCluster;
use mesh_federation::cache::Cache;
use mesh_federation::links::{Links, LinksConfig};
use mesh_federation::mirror::{MirrorSettings, MirrorWriter};
use mesh_federation::trust::{
    BundleSet, LINKED_BUNDLES_CONFIG_MAP, pem_key, publish_own, run_linked_writer,
};
use mesh_proxy::run::bundles::from_update;
use mesh_proxy::run::{
    ControllerAddr, DiscoverySource, IdentitySource, Proxy, ProxyConfig, Running,
};
use mesh_proxy::tcp::connect_meshed;
use mesh_proxy::transport_header::MeshTransportHeader;
use mesh_test_support::apps::echo_app;
use mesh_test_support::pki::{Domain, bundles, write_identity_dir};
use mesh_trust::ca::{CertificateAuthority, Validity};
use mesh_trust::tls::{CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId, TrustBundleSet, TrustDomain};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Streaming;

// === dev clusters ===

/// A dev cluster with the CRDs and the `mesh` namespace.
async fn cluster(name: &str) -> (DevCluster, Client) {
    support::cluster(name, &["mesh"], false).await
}

async fn config_map_data(client: &Client, name: &str) -> Option<BTreeMap<String, String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "mesh");
    maps.get_opt(name)
        .await
        .unwrap()
        .map(|map| map.data.unwrap_or_default())
}

fn roots_of(domains: &[&Domain]) -> TrustBundleSet {
    let mut set = TrustBundleSet::new();
    for domain in domains {
        set.merge(&domain.bundle());
    }
    set
}

fn pem_set(domain: &TrustDomain, pem: &str) -> TrustBundleSet {
    let mut set = TrustBundleSet::new();
    set.insert_pem(domain, pem.as_bytes()).unwrap();
    set
}

// === west's controller ===

/// West's controller parts under test, until dropped.
struct Controller {
    addr: SocketAddr,
    linked: mesh_federation::links::LinkedBundles,
    _stop: Vec<oneshot::Sender<()>>,
    _tasks: Vec<JoinHandle<()>>,
}

/// The link reconciler, the linked writer, the bundle set and its gRPC service on west.
async fn start_controller(west: &Client, own: &Domain) -> Controller {
    let cache = Cache::start(west);
    let writer = MirrorWriter::new(west.clone(), MirrorSettings::default());
    let links = Links::new(
        west.clone(),
        cache,
        LinksConfig {
            namespace: "mesh".into(),
            cluster: "west".into(),
            trust_domain: own.td.clone(),
            metrics: Default::default(),
        },
        writer,
        None,
    );
    let linked = links.bundles();
    let (stop_links, links_stopped) = oneshot::channel::<()>();
    let (stop_writer, writer_stopped) = oneshot::channel::<()>();
    let links_task = tokio::spawn(links.run(async {
        let _ = links_stopped.await;
    }));
    let writer_task = tokio::spawn(run_linked_writer(
        west.clone(),
        "mesh".into(),
        linked.clone(),
        async {
            let _ = writer_stopped.await;
        },
    ));
    let (addr, serve_task) = serve(west, own).await;
    Controller {
        addr,
        linked,
        _stop: vec![stop_links, stop_writer],
        _tasks: vec![links_task, writer_task, serve_task],
    }
}

/// A `BundleSet` on west and its `TrustBundles` service on loopback.
async fn serve(west: &Client, own: &Domain) -> (SocketAddr, JoinHandle<()>) {
    let set = BundleSet::start(west.clone(), "mesh", own.td.clone(), own.bundle());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(set.service())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, task)
}

/// A `TrustBundles.Watch` stream from `addr`.
async fn watch_bundles(addr: SocketAddr) -> Streaming<mesh_api::discovery::TrustBundleSet> {
    let mut client = TrustBundlesClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .watch(WatchTrustBundles {
            caller_identity: "spiffe://west.local/ns/default/sa/test".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads updates until one, parsed as the proxy parses them, satisfies `wanted`; its sequence
/// and set. Sequences must grow.
async fn until(
    stream: &mut Streaming<mesh_api::discovery::TrustBundleSet>,
    last: &mut u64,
    what: &str,
    wanted: impl Fn(&TrustBundleSet) -> bool,
) -> TrustBundleSet {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let update = timeout(deadline - Instant::now(), stream.message())
            .await
            .unwrap_or_else(|_| panic!("never served: {what}"))
            .unwrap()
            .expect("the stream stays open");
        assert!(
            update.sequence > *last,
            "sequences grow: {} after {last}",
            update.sequence
        );
        *last = update.sequence;
        let set = from_update(update).expect("the proxy accepts every update");
        if wanted(&set) {
            return set;
        }
    }
}

// === the link from west to east ===

/// A Link to `cluster`, of trust domain `<cluster>.local`, made with `bundle`.
fn link(cluster: &str, bundle: &str) -> Link {
    let mut link = Link::new(
        cluster,
        LinkSpec {
            cluster_name: cluster.into(),
            trust_domain: format!("{cluster}.local"),
            cluster_domain: "cluster.local".into(),
            gateway: LinkGateway {
                addresses: vec!["127.0.0.1".into()],
                port: 4180,
                identity: format!("spiffe://{cluster}.local/ns/mesh/sa/mesh-gateway"),
            },
            credentials_secret: format!("{cluster}-credentials"),
            trust_bundle: bundle.into(),
            trust_bundle_config_map: DEFAULT_TRUST_BUNDLE_CONFIG_MAP.into(),
            export_selector: Default::default(),
            probe: LinkProbe::default(),
        },
    );
    link.metadata.namespace = Some("mesh".into());
    link
}

/// East's kubeconfig in west's Secret, its context in east's mesh namespace (where east
/// publishes its bundle), as a link kubeconfig is.
async fn put_credentials(west: &Client, east_kubeconfig: &str) {
    assert!(east_kubeconfig.contains("namespace: default"));
    let kubeconfig = east_kubeconfig.replace("namespace: default", "namespace: mesh");
    support::put_credentials(west, &kubeconfig).await;
}

// === a proxy following west's stream ===

struct RunningProxy {
    running: Running,
    identity: SpiffeId,
    /// What a client trusts to verify the proxy.
    trust: SharedTrustBundles,
    app: SocketAddr,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start_proxy(west: &Domain, controller: SocketAddr) -> RunningProxy {
    let app = echo_app().await;
    let dir = tempfile::tempdir().unwrap();
    let identity_dir = dir.path().join("identity");
    write_identity_dir(&identity_dir, &west.creds("web"));
    let identity = IdentitySource::Dir {
        dir: identity_dir,
        expected: Some(west.id("web")),
    };
    let discovery = DiscoverySource::Controller {
        addr: ControllerAddr::parse(&format!("http://{controller}"), 0).unwrap(),
    };
    let mut config = ProxyConfig::new(identity, discovery);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    config.inbound_addr = any;
    config.outbound_addr = any;
    config.admin_addr = any;
    config.tap_addr = any;
    config.shutdown_grace = Duration::from_millis(200);
    let proxy = Proxy::bind(config).await.unwrap();
    let running = proxy.running().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy.serve(async {
        let _ = stopped.await;
    }));
    RunningProxy {
        running,
        identity: west.id("web"),
        trust: bundles(&[west]),
        app,
        _stop: stop,
        _dir: dir,
    }
}

impl RunningProxy {
    /// Whether a meshed connection as `client` reaches the app behind the proxy and back.
    async fn trusts(&self, client: &WorkloadCredentials) -> bool {
        let config = mesh_trust::tls::client_config(
            self.trust.clone(),
            PeerPolicy::Exactly(self.identity.clone()),
            Some(Arc::new(CertResolver::new(client.clone()).unwrap())),
            &[ALPN_OPAQUE],
        )
        .unwrap();
        let header = MeshTransportHeader {
            port: self.app.port(),
            authority: None,
            protocol: ProtocolHint::Opaque,
        };
        let exchange = async {
            let mut tls = connect_meshed(
                self.running.inbound,
                &self.identity,
                Arc::new(config),
                &header,
                Duration::from_secs(2),
            )
            .await
            .ok()?;
            tls.write_all(b"ping").await.ok()?;
            let mut echoed = [0; 4];
            tls.read_exact(&mut echoed).await.ok()?;
            (&echoed == b"ping").then_some(())
        };
        timeout(Duration::from_secs(3), exchange)
            .await
            .ok()
            .flatten()
            .is_some()
    }

    async fn eventually_trusts(&self, what: &str, client: &WorkloadCredentials, trusted: bool) {
        eventually(what, || async {
            (self.trusts(client).await == trusted).then_some(())
        })
        .await;
    }
}

/// Two roots of east in turn (a rotation): each with its issuer and a workload of its own.
fn east_roots() -> (Domain, Domain) {
    (Domain::new("east.local"), Domain::new("east.local"))
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_in_east_reaches_what_west_serves_without_a_new_link() {
    let (_west_cluster, west) = cluster("west").await;
    let (east_cluster, east) = cluster("east").await;
    let west_pki = Domain::new("west.local");
    let (old, new) = east_roots();
    let east_td = old.td.clone();

    // Each cluster publishes its own bundle; east's is readable as linked clusters read it.
    publish_own(&west, "mesh", &west_pki.td, &west_pki.bundle())
        .await
        .unwrap();
    publish_own(&east, "mesh", &east_td, &old.bundle())
        .await
        .unwrap();
    let published = config_map_data(&east, DEFAULT_TRUST_BUNDLE_CONFIG_MAP)
        .await
        .expect("east's bundle ConfigMap");
    assert_eq!(published[TRUST_DOMAIN_CONFIG_MAP_KEY], "east.local");
    assert_eq!(
        pem_set(&east_td, &published[TRUST_BUNDLE_CONFIG_MAP_KEY]),
        old.bundle()
    );
    let maps: Api<ConfigMap> = Api::namespaced(east.clone(), "mesh");
    let owner = maps.get(DEFAULT_TRUST_BUNDLE_CONFIG_MAP).await.unwrap();
    assert!(
        owner
            .managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("mesh-controller")),
        "written by server-side apply as mesh-controller"
    );

    // West links east with east's old root, and serves west and east.
    put_credentials(&west, east_cluster.kubeconfig()).await;
    let controller = start_controller(&west, &west_pki).await;
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    links
        .create(
            &PostParams::default(),
            &link("east", &old.root.certificate_pem()),
        )
        .await
        .unwrap();
    let link_uid = links.get("east").await.unwrap().uid();
    let mut stream = watch_bundles(controller.addr).await;
    let mut sequence = 0;
    let served = until(&mut stream, &mut sequence, "east linked", |set| {
        set.contains_domain(&east_td)
    })
    .await;
    assert_eq!(served, roots_of(&[&west_pki, &old]));

    // The linked ConfigMap holds what the link reconciler reports, one key per domain.
    let linked = eventually("the linked ConfigMap", || async {
        config_map_data(&west, LINKED_BUNDLES_CONFIG_MAP)
            .await
            .filter(|data| data.contains_key(&pem_key(&east_td)))
    })
    .await;
    assert_eq!(linked.len(), 1, "{:?}", linked.keys());
    let reported = controller.linked.borrow()["east"].clone();
    assert_eq!(reported.0, east_td);
    assert_eq!(pem_set(&east_td, &linked[&pem_key(&east_td)]), reported.1);

    // A proxy following west's stream trusts east's workloads.
    let proxy = start_proxy(&west_pki, controller.addr).await;
    let (old_client, new_client) = (old.creds("client"), new.creds("client"));
    proxy
        .eventually_trusts("an east workload of the old root", &old_client, true)
        .await;
    assert!(
        !proxy.trusts(&new_client).await,
        "the new root is not known yet"
    );

    // East rotates: both roots, then the new one alone. West follows without a new Link.
    let mut both = old.bundle();
    both.merge(&new.bundle());
    publish_own(&east, "mesh", &east_td, &both).await.unwrap();
    let served = until(&mut stream, &mut sequence, "both east roots", |set| {
        set.roots(&east_td).count() == 2
    })
    .await;
    assert_eq!(served, roots_of(&[&west_pki, &old, &new]));
    proxy
        .eventually_trusts("an east workload of the new root", &new_client, true)
        .await;
    assert!(
        proxy.trusts(&old_client).await,
        "both roots during the overlap"
    );

    publish_own(&east, "mesh", &east_td, &new.bundle())
        .await
        .unwrap();
    let served = until(
        &mut stream,
        &mut sequence,
        "the new east root alone",
        |set| set.roots(&east_td).count() == 1 && set.contains_domain(&east_td),
    )
    .await;
    assert_eq!(served, roots_of(&[&west_pki, &new]));
    proxy
        .eventually_trusts("the old root retired", &old_client, false)
        .await;
    assert!(proxy.trusts(&new_client).await);
    let after = links.get("east").await.unwrap();
    assert_eq!(after.uid(), link_uid, "the same Link");
    assert_eq!(
        after.spec.trust_bundle,
        old.root.certificate_pem(),
        "its spec still names the old root"
    );

    // Someone edits the linked ConfigMap: a broken value for east and a domain no Link names.
    // The writer puts it back; the set served meanwhile neither lost east's current root nor
    // took the other domain.
    let west_maps: Api<ConfigMap> = Api::namespaced(west.clone(), "mesh");
    west_maps
        .patch(
            LINKED_BUNDLES_CONFIG_MAP,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {
                pem_key(&east_td): "-----BEGIN CERTIFICATE-----\ngarbage",
                "evil.local.pem": Domain::new("evil.local").root.certificate_pem(),
            }})),
        )
        .await
        .unwrap();
    eventually("the writer undoes the edit", || async {
        let data = config_map_data(&west, LINKED_BUNDLES_CONFIG_MAP).await?;
        let restored = data.len() == 1
            && data
                .get(&pem_key(&east_td))
                .is_some_and(|pem| pem_set(&east_td, pem) == new.bundle());
        restored.then_some(())
    })
    .await;
    assert!(proxy.trusts(&new_client).await, "east stayed trusted");
    let evil = TrustDomain::new("evil.local").unwrap();
    while let Ok(update) = timeout(Duration::from_millis(300), stream.message()).await {
        let update = update.unwrap().expect("the stream stays open");
        sequence = update.sequence;
        let set = from_update(update).unwrap();
        assert!(
            !set.contains_domain(&evil),
            "a domain no Link names is served"
        );
        assert_eq!(set, roots_of(&[&west_pki, &new]));
    }

    // The Link goes: its key, then east's roots, go.
    links
        .delete("east", &DeleteParams::default())
        .await
        .unwrap();
    let served = until(&mut stream, &mut sequence, "east unlinked", |set| {
        !set.contains_domain(&east_td)
    })
    .await;
    assert_eq!(served, west_pki.bundle());
    // The reader drops the domain as soon as its Link goes; the writer empties the ConfigMap
    // when the reconciler's cleanup reaches it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while config_map_data(&west, LINKED_BUNDLES_CONFIG_MAP).await != Some(BTreeMap::new()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the linked bundles ConfigMap still names east"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
        .eventually_trusts("east no longer trusted", &new_client, false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_key_keeps_its_domains_last_good_roots_and_expired_roots_are_refused() {
    let (_west_cluster, west) = cluster("west").await;
    let west_pki = Domain::new("west.local");
    let (east, north) = (Domain::new("east.local"), Domain::new("north.local"));
    // Links naming east, north and south (nobody reconciles them here: the reader only needs
    // to know which domains are linked).
    let links: Api<Link> = Api::namespaced(west.clone(), "mesh");
    for cluster in ["east", "north", "south"] {
        links
            .create(&PostParams::default(), &link(cluster, ""))
            .await
            .unwrap();
    }
    let (addr, _serving) = serve(&west, &west_pki).await;
    let mut stream = watch_bundles(addr).await;
    let mut sequence = 0;

    // No linked ConfigMap yet: once it is known there is none, this cluster's roots alone.
    let served = until(&mut stream, &mut sequence, "the own roots", |_| true).await;
    assert_eq!(served, west_pki.bundle());
    assert_eq!(sequence, 1);

    let maps: Api<ConfigMap> = Api::namespaced(west.clone(), "mesh");
    let apply = |data: serde_json::Value| {
        let maps = maps.clone();
        async move {
            maps.patch(
                LINKED_BUNDLES_CONFIG_MAP,
                &PatchParams::apply("test").force(),
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": LINKED_BUNDLES_CONFIG_MAP, "namespace": "mesh"},
                    "data": data,
                })),
            )
            .await
            .unwrap();
        }
    };
    apply(json!({ pem_key(&east.td): east.root.certificate_pem() })).await;
    let served = until(&mut stream, &mut sequence, "east", |set| {
        set.contains_domain(&east.td)
    })
    .await;
    assert_eq!(served, roots_of(&[&west_pki, &east]));

    // East's value breaks; north comes; south has only an expired root; a key claims west's
    // own domain with a root of someone else's; another names a domain no Link names. East
    // keeps its last good roots, north is added, the rest is skipped.
    let south_td = TrustDomain::new("south.local").unwrap();
    let now = std::time::SystemTime::now();
    let expired = CertificateAuthority::create_root_with(
        &south_td,
        Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
    )
    .unwrap();
    let impostor = Domain::new("west.local");
    apply(json!({
        pem_key(&east.td): "-----BEGIN CERTIFICATE-----\ngarbage",
        pem_key(&north.td): north.root.certificate_pem(),
        pem_key(&south_td): expired.certificate_pem(),
        pem_key(&west_pki.td): impostor.root.certificate_pem(),
        "evil.local.pem": Domain::new("evil.local").root.certificate_pem(),
    }))
    .await;
    let served = until(&mut stream, &mut sequence, "north", |set| {
        set.contains_domain(&north.td)
    })
    .await;
    assert_eq!(
        served,
        roots_of(&[&west_pki, &east, &north]),
        "east's last good roots kept; south's expired, west's foreign and evil's unlinked roots refused"
    );

    // East's key is removed: east goes, whatever it had.
    apply(json!({ pem_key(&north.td): north.root.certificate_pem() })).await;
    let served = until(&mut stream, &mut sequence, "east gone", |set| {
        !set.contains_domain(&east.td)
    })
    .await;
    assert_eq!(served, roots_of(&[&west_pki, &north]));

    // North's Link goes: north goes, though its key stays.
    links
        .delete("north", &DeleteParams::default())
        .await
        .unwrap();
    let served = until(&mut stream, &mut sequence, "north unlinked", |set| {
        !set.contains_domain(&north.td)
    })
    .await;
    assert_eq!(served, west_pki.bundle());
}
