//! The identity service with the TokenReview check, against a dev cluster: a service-account
//! token gets exactly its own workload identity; other users' tokens, forged tokens and other
//! identities are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount as K8sServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};
use mesh_api::identity::CertifyRequest;
use mesh_e2e::devcluster::DevCluster;
use mesh_federation::identity::TokenReviewValidator;
use mesh_trust::TrustDomain;
use mesh_trust::ca::{self, CertificateAuthority};
use mesh_trust::identity::{IdentityService, ServiceAccount, TokenError, TokenValidator};

async fn cluster() -> (DevCluster, Client) {
    let (cluster, client) = support::cluster("dev", &["shop"], false).await;
    let accounts: Api<K8sServiceAccount> = Api::namespaced(client.clone(), "shop");
    let web: K8sServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web"}})).unwrap();
    accounts.create(&PostParams::default(), &web).await.unwrap();
    (cluster, client)
}

#[tokio::test]
async fn a_service_account_token_proves_its_own_identity_and_nothing_else() {
    let (cluster, client) = cluster().await;
    let token = cluster
        .cluster()
        .issue_service_account_token("shop", "web")
        .unwrap();
    let validator = TokenReviewValidator::new(client.clone(), Vec::new());
    assert_eq!(
        validator.validate(token.as_bytes()).await.unwrap(),
        ServiceAccount {
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    // The admin user is authenticated, but is no workload.
    let admin = validator
        .validate(cluster.admin_token().as_bytes())
        .await
        .unwrap_err();
    assert!(
        matches!(&admin, TokenError::Invalid(m) if m.contains("not a service account")),
        "{admin}"
    );
    for forged in ["forged", "", "\u{0}"] {
        let error = validator.validate(forged.as_bytes()).await.unwrap_err();
        assert!(matches!(error, TokenError::Invalid(_)), "{error}");
    }
    assert!(matches!(
        validator.validate(&[0xff, 0xfe]).await.unwrap_err(),
        TokenError::Invalid(_)
    ));

    // Bound to the mesh's audience: the API server grants it, and the token proves the same.
    let bound = TokenReviewValidator::new(client.clone(), vec!["identity.mesh.io".into()]);
    assert_eq!(bound.validate(token.as_bytes()).await.unwrap().name, "web");

    // Through the identity service: the token's own identity is signed, another is refused.
    let west = TrustDomain::new("west.local").unwrap();
    let root = CertificateAuthority::create_root(&west, Duration::from_secs(3600)).unwrap();
    let issuer = Arc::new(root.create_issuer(Duration::from_secs(1800)).unwrap());
    let service = IdentityService::new(issuer, validator, Duration::from_secs(600));
    let request = |identity: &str| {
        let id = mesh_trust::SpiffeId::parse(identity).unwrap();
        let (_key, csr) = ca::generate_key_and_csr(&id).unwrap();
        CertifyRequest {
            identity: identity.into(),
            token: token.as_bytes().to_vec(),
            certificate_signing_request: csr,
        }
    };
    let signed = service
        .certify_request(&request("spiffe://west.local/ns/shop/sa/web"))
        .await
        .unwrap();
    let info = mesh_trust::x509::parse(&signed.leaf_certificate).unwrap();
    assert_eq!(
        info.svid_identity().map(|id| id.as_str().to_owned()),
        Some("spiffe://west.local/ns/shop/sa/web".to_owned())
    );
    let refused: tonic::Status = service
        .certify_request(&request("spiffe://west.local/ns/kube-system/sa/admin"))
        .await
        .unwrap_err()
        .into();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // The API server gone: the check is unavailable, never passed.
    drop(cluster);
    let error = service
        .certify_request(&request("spiffe://west.local/ns/shop/sa/web"))
        .await
        .unwrap_err();
    let status: tonic::Status = error.into();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
}
