//! Rotation: overlapping roots, live bundle updates, and leaf renewal under a paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_trust::ca::{CertificateAuthority, DEFAULT_LEAF_LIFETIME, IssuedLeaf};
use mesh_trust::rotation::{IssueError, LeafIssuer, LocalIssuer, RotationOptions, Rotator};
use mesh_trust::tls;
use mesh_trust::{PeerPolicy, SpiffeId, TrustBundleSet};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::support::*;

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_leaves_from_both() {
    let west_old = Domain::new("west");
    // A second, independent root of the same domain: the rotation overlap.
    let west_new = {
        let root =
            CertificateAuthority::create_root(&west_old.td, mesh_trust::ca::DEFAULT_ROOT_LIFETIME)
                .unwrap();
        let issuer = Arc::new(
            root.create_issuer(mesh_trust::ca::DEFAULT_ISSUER_LIFETIME)
                .unwrap(),
        );
        Domain {
            td: west_old.td.clone(),
            root,
            issuer,
        }
    };
    let overlap = bundles(&[&west_old, &west_new]);
    assert_eq!(overlap.get().roots(&west_old.td).count(), 2);

    for (server_domain, client_domain) in [(&west_old, &west_new), (&west_new, &west_old)] {
        let out = handshake(
            server(&overlap, PeerPolicy::AnyDomain, server_domain.creds("api")),
            client(&overlap, PeerPolicy::AnyDomain, client_domain.creds("web")),
        )
        .await;
        assert!(out.server.is_ok() && out.client.is_ok(), "{out:?}");
    }

    // Once the old root is dropped, its leaves are refused.
    let new_only = bundles(&[&west_new]);
    let out = handshake(
        server(&new_only, PeerPolicy::AnyDomain, west_new.creds("api")),
        client(&overlap, PeerPolicy::AnyDomain, west_old.creds("web")),
    )
    .await;
    assert!(
        out.server_err()
            .contains("does not chain to any root of trust domain west")
    );
}

#[tokio::test]
async fn a_bundle_update_applies_to_the_next_handshake() {
    let west = Domain::new("west");
    let east = Domain::new("east");
    let server_bundles = bundles(&[&east]);
    let server_config = Arc::new(server(
        &server_bundles,
        PeerPolicy::AnyDomain,
        east.creds("api"),
    ));
    let client_bundles = bundles(&[&west, &east]);
    let client_config = client(&client_bundles, PeerPolicy::AnyDomain, west.creds("web"));

    let out = handshake((*server_config).clone(), client_config.clone()).await;
    assert!(
        out.server_err()
            .contains("no trust bundle for trust domain west")
    );

    // The same config objects, updated bundles: now west is known.
    let mut set = server_bundles.get();
    set.merge(&west.bundle());
    server_bundles.update(set);
    for _ in 0..2 {
        let out = handshake((*server_config).clone(), client_config.clone()).await;
        assert_eq!(out.server.unwrap(), west.id("web"));
    }

    // Unlinking west applies at once, even to a client that connected before: no session is
    // resumed past the bundle change.
    server_bundles.update(east.bundle());
    let out = handshake((*server_config).clone(), client_config.clone()).await;
    assert!(
        out.server_err()
            .contains("no trust bundle for trust domain west"),
        "{out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewed_leaf_is_served_without_restarting_the_listener() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    let id = west.id("api");
    let issuer = LocalIssuer::new(west.issuer.clone(), DEFAULT_LEAF_LIFETIME);
    let (resolver, rotator) = Rotator::start(id.clone(), issuer, RotationOptions::default())
        .await
        .unwrap();
    let first_leaf = resolver.credentials().chain[0].clone();

    // One listener for the whole test, built once from the resolver.
    let config =
        tls::server_config(b.clone(), PeerPolicy::AnyDomain, resolver.clone(), ALPN).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener_task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = serve_one(&acceptor, tcp).await;
        }
    });

    let client_config = || client(&b, PeerPolicy::Exactly(id.clone()), west.creds("web"));
    let leaf_served = |config: rustls::ClientConfig| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("mesh.internal").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    assert_eq!(leaf_served(client_config()).await, first_leaf);

    // Run the rotator; under the paused clock its ~17 h wait passes as soon as the runtime idles.
    let mut renewals = rotator.renewals();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rotation = tokio::spawn(rotator.run(async move {
        let _ = stopped.await;
    }));
    let before = tokio::time::Instant::now();
    renewals.changed().await.unwrap();
    let waited = before.elapsed();
    // 70 % of 24 h, give or take the 5 % jitter.
    assert!(
        waited >= Duration::from_secs(15 * 3600) && waited <= Duration::from_secs(18 * 3600),
        "{waited:?}"
    );
    // Stop renewing so that no further timer fires during the next handshake.
    stop.send(()).unwrap();
    rotation.await.unwrap();

    let renewed_leaf = resolver.credentials().chain[0].clone();
    assert_ne!(renewed_leaf, first_leaf);
    assert_eq!(leaf_served(client_config()).await, renewed_leaf);
    listener_task.abort();
}

/// An issuer that fails while `failures_left` is above zero, then delegates.
struct Flaky {
    inner: LocalIssuer,
    failures_left: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl LeafIssuer for Flaky {
    async fn certify(&self, identity: &SpiffeId, csr: Vec<u8>) -> Result<IssuedLeaf, IssueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(IssueError::Unavailable("identity service down".into()));
        }
        self.inner.certify(identity, csr).await
    }
}

#[tokio::test(start_paused = true)]
async fn renewal_retries_with_backoff_until_the_issuer_answers() {
    let west = Domain::new("west");
    let calls = Arc::new(AtomicUsize::new(0));
    let failures_left = Arc::new(AtomicUsize::new(0));
    let flaky = Flaky {
        inner: LocalIssuer::new(west.issuer.clone(), DEFAULT_LEAF_LIFETIME),
        failures_left: failures_left.clone(),
        calls: calls.clone(),
    };
    let (resolver, rotator) = Rotator::start(west.id("api"), flaky, RotationOptions::default())
        .await
        .unwrap();
    let first = resolver.credentials().chain[0].clone();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The next three renewal attempts fail; the fourth succeeds.
    failures_left.store(3, Ordering::SeqCst);
    let mut renewals = rotator.renewals();
    let rotation = tokio::spawn(rotator.run(std::future::pending()));
    let before = tokio::time::Instant::now();
    renewals.changed().await.unwrap();
    let waited = before.elapsed();
    rotation.abort();

    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "one start, three failures, one success"
    );
    assert_ne!(resolver.credentials().chain[0], first);
    // Renewal at 65-75 % of 24 h, then backoffs of 1 s, 2 s and 4 s, each with jitter down to half.
    let earliest = Duration::from_secs_f64(0.65 * 86_400.0 + 3.5);
    let latest = Duration::from_secs_f64(0.75 * 86_400.0 + 60.0 + 7.0);
    assert!(waited >= earliest && waited <= latest, "{waited:?}");
}

#[tokio::test]
async fn bundle_sets_round_trip_for_the_verifier() {
    let west = Domain::new("west");
    let json = west.bundle().to_spiffe_json(&west.td).unwrap();
    let mut set = TrustBundleSet::new();
    set.insert_spiffe_json(&west.td, json.as_bytes()).unwrap();
    let b = mesh_trust::SharedTrustBundles::new(set);
    let out = handshake(
        server(&b, PeerPolicy::AnyDomain, west.creds("api")),
        client(&b, PeerPolicy::AnyDomain, west.creds("web")),
    )
    .await;
    assert!(out.server.is_ok() && out.client.is_ok(), "{out:?}");
}
