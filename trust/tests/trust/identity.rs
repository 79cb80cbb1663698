//! The identity service: it signs only what the token proves, and refuses garbage.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::identity::CertifyRequest;
use mesh_trust::ca::{self, DEFAULT_LEAF_LIFETIME};
use mesh_trust::identity::{self, IdentityClient, IdentityService, StaticTokens, TokenSource};
use mesh_trust::rotation::{IssueError, RotationOptions, Rotator};
use mesh_trust::{PeerPolicy, SpiffeId, tls};
use tokio::net::TcpListener;

use super::support::*;

fn service(west: &Domain) -> IdentityService<StaticTokens> {
    let tokens = StaticTokens::new().with("web-token", "default", "web");
    IdentityService::new(west.issuer.clone(), tokens, DEFAULT_LEAF_LIFETIME)
}

fn request(identity: &str, token: &str, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        identity: identity.into(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr,
    }
}

#[tokio::test]
async fn signs_the_identity_the_token_proves() {
    let west = Domain::new("west");
    let id = west.id("web");
    let (_key, csr) = ca::generate_key_and_csr(&id).unwrap();
    let resp = service(&west)
        .certify_request(&request(id.as_str(), "web-token", csr))
        .await
        .unwrap();
    let info = mesh_trust::x509::parse(&resp.leaf_certificate).unwrap();
    assert_eq!(info.svid_identity(), Some(&id));
    assert_eq!(
        resp.intermediate_certificates,
        vec![west.issuer.certificate().to_vec()]
    );
    assert!(resp.valid_until_unix > 0);
}

#[tokio::test]
async fn refuses_an_identity_the_token_does_not_prove() {
    let west = Domain::new("west");
    let svc = service(&west);
    let admin = west.td.workload("kube-system", "admin").unwrap();
    let (_key, csr) = ca::generate_key_and_csr(&admin).unwrap();
    let status: tonic::Status = svc
        .certify_request(&request(admin.as_str(), "web-token", csr.clone()))
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("proves service account default/web"),
        "{}",
        status.message()
    );

    // An unknown token proves nothing at all.
    let status: tonic::Status = svc
        .certify_request(&request(admin.as_str(), "forged", csr.clone()))
        .await
        .unwrap_err()
        .into();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // Another trust domain, or a non-workload ID, is refused before the token is looked at.
    for bad in [
        "spiffe://east/ns/default/sa/web",
        "spiffe://west/gateway",
        "not-an-id",
    ] {
        let status: tonic::Status = svc
            .certify_request(&request(bad, "web-token", csr.clone()))
            .await
            .unwrap_err()
            .into();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{bad}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn refuses_garbage_der() {
    let west = Domain::new("west");
    let svc = service(&west);
    for garbage in [
        Vec::new(),
        b"garbage".to_vec(),
        vec![0x30, 0x82, 0xff, 0xff, 0x00],
    ] {
        let status: tonic::Status = svc
            .certify_request(&request(west.id("web").as_str(), "web-token", garbage))
            .await
            .unwrap_err()
            .into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("not a DER PKCS#10"),
            "{}",
            status.message()
        );
    }
}

#[tokio::test]
async fn workloads_rotate_through_the_service_over_tls() {
    let west = Domain::new("west");
    let b = bundles(&[&west]);
    // The controller serves with its own identity; workloads verify it before sending a token.
    let controller = west.td.workload("mesh-system", "mesh-controller").unwrap();
    let controller_creds = west.creds_with(
        &controller,
        ca::Validity::starting_now(DEFAULT_LEAF_LIFETIME),
    );
    let server_tls = rustls::ServerConfig::builder_with_provider(Arc::new(tls::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(tls::CertResolver::new(controller_creds).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(identity::serve(
        listener,
        server_tls,
        service(&west),
        async move {
            let _ = stopped.await;
        },
    ));

    let client_tls = |expected: SpiffeId| {
        tls::client_config(b.clone(), PeerPolicy::Exactly(expected), None, &[]).unwrap()
    };
    let name = rustls_pki_types::ServerName::try_from("identity.mesh-system.svc").unwrap();
    let client = IdentityClient::new(
        addr,
        client_tls(controller.clone()),
        name.clone(),
        TokenSource::Static(b"web-token".to_vec()),
    )
    .unwrap();
    let (resolver, _rotator) = Rotator::start(west.id("web"), client, RotationOptions::default())
        .await
        .unwrap();
    assert_eq!(resolver.credentials().identity, west.id("web"));

    // A client that asks for an identity its token does not prove gets a refusal, not a leaf.
    let client = IdentityClient::new(
        addr,
        client_tls(controller.clone()),
        name.clone(),
        TokenSource::Static(b"web-token".to_vec()),
    )
    .unwrap();
    let err = Rotator::start(west.id("db"), client, RotationOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IssueError::Refused(m) if m.contains("PermissionDenied")),
        "{err}"
    );

    // A client expecting another controller identity never sends its token.
    let imposter_check = west.td.workload("mesh-system", "someone-else").unwrap();
    let client = IdentityClient::new(
        addr,
        client_tls(imposter_check),
        name,
        TokenSource::Static(b"web-token".to_vec()),
    )
    .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        Rotator::start(west.id("web"), client, RotationOptions::default()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, IssueError::Unavailable(_)), "{err}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
