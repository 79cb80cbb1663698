//! TLS 1.3 mutual handshakes between two trust domains with separate roots.

use std::collections::BTreeSet;

use mesh_trust::PeerPolicy;
use mesh_trust::ca::Validity;
use mesh_trust::tls::{self, WorkloadCredentials};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::support::*;

#[tokio::test]
async fn succeeds_across_domains_when_each_trusts_the_other() {
    let west = Domain::new("west");
    let east = Domain::new("east");
    let both = bundles(&[&west, &east]);
    let out = handshake(
        server(&both, PeerPolicy::AnyDomain, east.creds("api")),
        client(
            &both,
            PeerPolicy::Exactly(east.id("api")),
            west.creds("web"),
        ),
    )
    .await;
    assert_eq!(out.server.as_ref().unwrap(), &west.id("web"));
    assert_eq!(out.client.as_ref().unwrap(), &east.id("api"));
}

#[tokio::test]
async fn fails_when_the_peers_root_is_missing() {
    let west = Domain::new("west");
    let east = Domain::new("east");
    // The server (east) knows only its own domain; the client trusts both.
    let out = handshake(
        server(&bundles(&[&east]), PeerPolicy::AnyDomain, east.creds("api")),
        client(
            &bundles(&[&west, &east]),
            PeerPolicy::AnyDomain,
            west.creds("web"),
        ),
    )
    .await;
    let err = out.server_err();
    assert!(
        err.contains("no trust bundle for trust domain west"),
        "{err}"
    );
    assert!(
        out.client.is_err(),
        "the client must see the refusal: {out:?}"
    );
}

/// A leaf signed by east's issuer that claims a west identity, as a compromised or malicious
/// east CA would make it.
fn forged_west_leaf_signed_by_east(
    east: &Domain,
    west_id: &mesh_trust::SpiffeId,
) -> WorkloadCredentials {
    let issuer_key = KeyPair::from_pem(&east.issuer.private_key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_der(east.issuer.certificate(), issuer_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(west_id.as_str().try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let leaf = mesh_trust::ca::IssuedLeaf {
        leaf: cert.der().clone(),
        intermediates: vec![east.issuer.certificate().clone()],
        validity: Validity::starting_now(std::time::Duration::from_secs(3600)),
    };
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    WorkloadCredentials::new(west_id.clone(), leaf, key_der).unwrap()
}

#[tokio::test]
async fn an_east_root_never_vouches_for_a_west_identity() {
    let west = Domain::new("west");
    let east = Domain::new("east");
    let both = bundles(&[&west, &east]);
    let forged = forged_west_leaf_signed_by_east(&east, &west.id("web"));
    let out = handshake(
        server(&both, PeerPolicy::AnyDomain, west.creds("api")),
        client(&both, PeerPolicy::AnyDomain, forged),
    )
    .await;
    let err = out.server_err();
    assert!(
        err.contains("does not chain to any root of trust domain west"),
        "{err}"
    );
    // Same forgery presented by a server: the client refuses it too.
    let forged = forged_west_leaf_signed_by_east(&east, &west.id("api"));
    let out = handshake(
        server(&both, PeerPolicy::AnyDomain, forged),
        client(
            &both,
            PeerPolicy::Exactly(west.id("api")),
            west.creds("web"),
        ),
    )
    .await;
    let err = out.client_err();
    assert!(
        err.contains("does not chain to any root of trust domain west"),
        "{err}"
    );
}

#[tokio::test]
async fn fails_when_the_leaf_has_expired() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    let stale = west.creds_with(&west.id("web"), expired());
    let out = handshake(
        server(&b, PeerPolicy::AnyDomain, west.creds("api")),
        raw_client(&b, stale),
    )
    .await;
    let err = out.server_err();
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn fails_when_the_leaf_is_not_yet_valid() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    let early = west.creds_with(&west.id("api"), not_yet_valid());
    let out = handshake(
        raw_server(early),
        client(&b, PeerPolicy::AnyDomain, west.creds("web")),
    )
    .await;
    let err = out.client_err();
    assert!(err.contains("certificate not valid yet"), "{err}");
}

#[tokio::test]
async fn fails_when_the_identity_differs_from_the_expected_one() {
    let west = Domain::new("west");
    let east = Domain::new("east");
    let both = bundles(&[&west, &east]);
    let out = handshake(
        server(&both, PeerPolicy::AnyDomain, east.creds("db")),
        client(
            &both,
            PeerPolicy::Exactly(east.id("api")),
            west.creds("web"),
        ),
    )
    .await;
    let err = out.client_err();
    assert!(
        err.contains("peer is spiffe://east/ns/default/sa/db, but spiffe://east/ns/default/sa/api was expected"),
        "{err}"
    );
}

#[tokio::test]
async fn fails_when_the_peer_is_outside_the_allowed_domains() {
    let west = Domain::new("west");
    let east = Domain::new("east");
    let both = bundles(&[&west, &east]);
    let only_east = PeerPolicy::TrustDomains(BTreeSet::from([east.td.clone()]));
    let out = handshake(
        server(&both, only_east, east.creds("gateway")),
        client(&both, PeerPolicy::AnyDomain, west.creds("web")),
    )
    .await;
    let err = out.server_err();
    assert!(
        err.contains("is not of an allowed trust domain (east)"),
        "{err}"
    );
}

#[tokio::test]
async fn fails_when_the_intermediate_is_missing() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    let mut creds = west.creds("api");
    creds.chain.truncate(1); // the leaf alone: no path to the root
    let out = handshake(
        server(&b, PeerPolicy::AnyDomain, creds),
        client(&b, PeerPolicy::AnyDomain, west.creds("web")),
    )
    .await;
    let err = out.client_err();
    assert!(err.contains("unknown issuer"), "{err}");
    assert!(err.contains("an intermediate is missing"), "{err}");
}

#[tokio::test]
async fn fails_when_the_peer_offers_only_tls12() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    // A client built outside mesh-trust that speaks only TLS 1.2.
    let provider = std::sync::Arc::new(tls::provider());
    let verifier = std::sync::Arc::new(mesh_trust::verify::MeshServerVerifier::new(
        b.clone(),
        PeerPolicy::AnyDomain,
    ));
    let creds = west.creds("web");
    let tls12_client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap();
    let out = handshake(
        server(&b, PeerPolicy::AnyDomain, west.creds("api")),
        tls12_client,
    )
    .await;
    let err = out.server_err();
    assert!(
        err.contains("ProtocolVersion") || err.contains("peer is incompatible"),
        "{err}"
    );

    // And the other way round: a TLS 1.2-only server refuses a mesh client.
    let creds = west.creds("api");
    let tls12_server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap();
    let out = handshake(
        tls12_server,
        client(&b, PeerPolicy::AnyDomain, west.creds("web")),
    )
    .await;
    let err = out.client_err();
    assert!(
        err.contains("ProtocolVersion") || err.contains("peer is incompatible"),
        "{err}"
    );
}

#[test]
fn refuses_leaves_without_exactly_one_spiffe_uri() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    let key = KeyPair::generate().unwrap();
    let issuer_key = KeyPair::from_pem(&west.issuer.private_key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_der(west.issuer.certificate(), issuer_key).unwrap();
    let now = rustls_pki_types::UnixTime::now();
    let cases: [(Vec<SanType>, &str); 4] = [
        (
            vec![SanType::URI("spiffe://west".try_into().unwrap())],
            "a trust domain, not a workload",
        ),
        (
            vec![SanType::DnsName("web.default.svc".try_into().unwrap())],
            "no URI SAN",
        ),
        (
            vec![
                SanType::URI("spiffe://west/ns/a/sa/b".try_into().unwrap()),
                SanType::URI("spiffe://west/ns/a/sa/c".try_into().unwrap()),
            ],
            "has 2 URI SANs",
        ),
        (
            vec![SanType::URI("spiffe://west/ns/%61".try_into().unwrap())],
            "not a valid SPIFFE ID",
        ),
    ];
    for (sans, want) in cases {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let cert: CertificateDer<'static> = params.signed_by(&key, &issuer).unwrap().der().clone();
        let err = b
            .verify_peer(
                &cert,
                &[west.issuer.certificate().clone()],
                now,
                webpki::KeyUsage::client_auth(),
                &PeerPolicy::AnyDomain,
            )
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err} should say {want}");
    }
}

#[test]
fn credentials_whose_key_does_not_match_or_that_expired_are_never_served() {
    let west = Domain::new("west");
    let mut creds = west.creds("web");
    let other = west.creds("web");
    creds.key = other.key.clone();
    let err = tls::CertResolver::new(creds).unwrap_err();
    assert!(
        err.to_string().contains("does not match the private key"),
        "{err}"
    );

    let resolver = tls::CertResolver::new(west.creds("web")).unwrap();
    let stale = west.creds_with(&west.id("web"), expired());
    let err = resolver.swap(stale).unwrap_err();
    assert!(err.to_string().contains("is not valid now"), "{err}");
}
