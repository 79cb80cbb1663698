//! The identity service's token check against the Kubernetes API: a workload's service-account
//! token is sent to the API server in a `TokenReview`, and only an authenticated
//! `system:serviceaccount:<namespace>:<name>` user proves an identity. Everything else (a user
//! token, a node, an expired or forged token) is refused; an API server that cannot be asked
//! makes the check unavailable, not passed.
//!
//! The token may be bound to audiences: [`TokenReviewValidator::audiences`] are sent along, and
//! the answer must name at least one of them in `status.audiences` (an authenticator that
//! ignores audiences answers with none, and such a token is refused: it was not made for the
//! mesh). Without configured audiences the API server's default audience applies.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use mesh_trust::identity::{ServiceAccount, TokenError, TokenValidator};

/// The prefix of a service account's user name.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Checks tokens with `TokenReview`s on `client`'s cluster.
#[derive(Clone)]
pub struct TokenReviewValidator {
    client: Client,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReviewValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewValidator")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenReviewValidator {
    /// A validator asking `client`'s API server; `audiences` (may be empty: the API server's
    /// default) are the audiences a token must be bound to.
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        Self { client, audiences }
    }

    /// The audiences tokens must be bound to.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }
}

/// The service account an authenticated user name is, if it is one.
pub fn service_account_of(username: &str) -> Option<ServiceAccount> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    let valid = |s: &str| crate::link::is_dns_subdomain(s);
    (valid(namespace) && valid(name)).then(|| ServiceAccount {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// With `configured` audiences, the review must grant at least one of them.
///
/// # Errors
///
/// When none of the configured audiences was granted.
pub fn check_audiences(
    configured: &[String],
    granted: Option<&[String]>,
) -> Result<(), TokenError> {
    if configured.is_empty() {
        return Ok(());
    }
    if granted
        .unwrap_or_default()
        .iter()
        .any(|a| configured.contains(a))
    {
        return Ok(());
    }
    Err(TokenError::Invalid(format!(
        "the token is not bound to any of the audiences {configured:?}: mount a projected service-account token with one of them"
    )))
}

impl TokenValidator for TokenReviewValidator {
    async fn validate(&self, token: &[u8]) -> Result<ServiceAccount, TokenError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| TokenError::Invalid("the token is not UTF-8".into()))?;
        if token.is_empty() {
            return Err(TokenError::Invalid("the token is empty".into()));
        }
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            status: None,
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| TokenError::Unavailable(format!("TokenReview failed: {error}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate the token".into());
            return Err(TokenError::Invalid(reason));
        }
        check_audiences(&self.audiences, status.audiences.as_deref())?;
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&username).ok_or_else(|| {
            TokenError::Invalid(format!(
                "{username:?} is not a service account: only workloads get identities"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_audience_must_be_granted() {
        let mesh = vec!["identity.mesh.io".to_owned()];
        assert!(check_audiences(&[], None).is_ok());
        assert!(check_audiences(&mesh, Some(&mesh)).is_ok());
        // An authenticator that ignores audiences grants none: refused.
        assert!(check_audiences(&mesh, None).is_err());
        assert!(check_audiences(&mesh, Some(&[])).is_err());
        assert!(
            check_audiences(&mesh, Some(&["https://kubernetes.default.svc".to_owned()])).is_err()
        );
    }

    #[test]
    fn only_service_accounts_are_identities() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:web"),
            Some(ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            })
        );
        assert_eq!(service_account_of("admin"), None);
        assert_eq!(service_account_of("system:node:worker-1"), None);
        assert_eq!(service_account_of("system:serviceaccount:shop"), None);
        assert_eq!(service_account_of("system:serviceaccount:Shop:web"), None);
        assert_eq!(service_account_of("system:serviceaccount:shop:web:x"), None);
    }
}
