//! Authentication and authorization of the dev cluster: bearer tokens name users, each with an
//! optional rule list (verbs x resources x namespaces), and service-account tokens issued through
//! the `serviceaccounts/<name>/token` subresource, which TokenReview answers for.

use std::collections::HashMap;

/// Who a bearer token authenticates as, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name, e.g. `admin` or `system:serviceaccount:ns:name`.
    pub name: String,
    /// Group memberships reported by TokenReview.
    pub groups: Vec<String>,
    /// What the user may do; `None` allows everything.
    pub rules: Option<Vec<Rule>>,
}

impl User {
    /// A user allowed everything.
    pub fn admin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            rules: None,
        }
    }

    /// A user allowed only what `rules` grant.
    pub fn restricted(name: &str, rules: Vec<Rule>) -> Self {
        Self {
            name: name.to_string(),
            groups: vec!["system:authenticated".into()],
            rules: Some(rules),
        }
    }

    /// Whether the user may perform `verb` on `resource` (plural, or `plural/subresource`) in
    /// `namespace` (`""` for cluster-scoped resources and all-namespace lists).
    pub fn allows(&self, verb: &str, resource: &str, namespace: &str) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        rules
            .iter()
            .any(|rule| rule.allows(verb, resource, namespace))
    }
}

/// One grant: every listed verb on every listed resource in every listed namespace. `*` matches
/// anything; a namespace list of `*` also covers cluster-scoped resources and all-namespace lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or `*`.
    pub verbs: Vec<String>,
    /// Plural resource names (`configmaps`, `pods/status`), or `*`.
    pub resources: Vec<String>,
    /// Namespaces, or `*`.
    pub namespaces: Vec<String>,
}

impl Rule {
    /// Builds a rule from string slices.
    pub fn new(verbs: &[&str], resources: &[&str], namespaces: &[&str]) -> Self {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            verbs: own(verbs),
            resources: own(resources),
            namespaces: own(namespaces),
        }
    }

    fn allows(&self, verb: &str, resource: &str, namespace: &str) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|x| x == "*" || x == value);
        any(&self.verbs, verb) && any(&self.resources, resource) && any(&self.namespaces, namespace)
    }
}

/// A service-account token this cluster issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountToken {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub name: String,
    /// The service account's uid when the token was issued; a recreated account invalidates it.
    pub uid: String,
}

impl ServiceAccountToken {
    /// The user the token authenticates as.
    pub fn user(&self) -> User {
        User {
            name: format!("system:serviceaccount:{}:{}", self.namespace, self.name),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".into(),
            ],
            rules: None,
        }
    }
}

/// The tokens a cluster accepts.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Configured tokens.
    pub users: HashMap<String, User>,
    /// Issued service-account tokens.
    pub service_accounts: HashMap<String, ServiceAccountToken>,
}

/// A fresh random token (192 bits, hex).
pub fn random_token() -> String {
    let token: [u8; 24] = rand::random();
    token.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_grant_only_what_they_list() {
        let user = User::restricted(
            "reader",
            vec![
                Rule::new(&["get", "list", "watch"], &["configmaps"], &["app"]),
                Rule::new(&["*"], &["leases"], &["*"]),
            ],
        );
        assert!(user.allows("list", "configmaps", "app"));
        assert!(!user.allows("list", "configmaps", "other"));
        assert!(!user.allows("list", "configmaps", ""), "all-namespace list");
        assert!(!user.allows("create", "configmaps", "app"));
        assert!(!user.allows("get", "secrets", "app"));
        assert!(user.allows("update", "leases", "kube-system"));
        assert!(User::admin("a").allows("delete", "anything", ""));
    }
}
