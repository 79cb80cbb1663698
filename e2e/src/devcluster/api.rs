//! The Kubernetes REST API over the [`Store`]: routing, authentication, verbs, watches and
//! `Status` errors. Transport-independent: [`Cluster::handle`] maps one request to one response.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::apply;
use super::auth::{ServiceAccountToken, Tokens, User, random_token};
use super::patch;
use super::resources;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Gvr, ListOptions, Propagation, Store, StoreError, now_rfc3339};

/// The response body type of the server.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Requests larger than this are refused with 413, like the 3 MiB limit of a real API server.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The shared state of one dev cluster: its store, its users, and a signal for watches.
#[derive(Debug)]
pub struct Cluster {
    store: Mutex<Store>,
    pub(super) changed: watch::Sender<u64>,
    tokens: Mutex<Tokens>,
    pub(super) bookmark_interval: Duration,
    server_address: Mutex<String>,
}

/// The tunables of a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Bearer token -> user. Requests without a known token get 401; requests the user's rules
    /// do not allow get 403.
    pub tokens: HashMap<String, User>,
    /// Watch events kept per resource; a watch resuming from further back gets 410 Expired.
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// An error answered as a Kubernetes `Status`.
#[derive(Debug)]
pub(super) struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub(super) fn status(&self) -> Value {
        status_object(self.code, self.reason, &self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::UnknownResource(_) | StoreError::NotFound { .. } => {
                Self::not_found(message)
            }
            StoreError::AlreadyExists { .. } => {
                Self::new(StatusCode::CONFLICT, "AlreadyExists", message)
            }
            StoreError::Conflict { .. } => Self::new(StatusCode::CONFLICT, "Conflict", message),
            StoreError::Invalid(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
            }
            StoreError::Expired { .. } => Self::new(StatusCode::GONE, "Expired", message),
            StoreError::BadContinue => Self::bad_request(message),
        }
    }
}

fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A request's target, once its path is parsed.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) gvr: Gvr,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) subresource: Option<String>,
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cluster {
    /// A cluster with the built-in resources and the namespaces `default`, `kube-system` and
    /// `kube-public`.
    pub fn new(config: ClusterConfig) -> Arc<Self> {
        let mut store = Store::new(config.history_limit);
        resources::register_builtins(&mut store);
        let namespaces = Gvr::new("", "v1", "namespaces");
        for ns in ["default", "kube-system", "kube-public"] {
            // The store is empty and the names valid: creation cannot fail.
            let _ = store.create(
                &namespaces,
                "",
                json!({"metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
            );
        }
        let (changed, _) = watch::channel(store.revision());
        Arc::new(Self {
            store: Mutex::new(store),
            changed,
            tokens: Mutex::new(Tokens {
                users: config.tokens,
                service_accounts: HashMap::new(),
            }),
            bookmark_interval: config.bookmark_interval,
            server_address: Mutex::new(String::new()),
        })
    }

    /// Records the address clients reach the server at (for `/api` discovery).
    pub fn set_server_address(&self, address: String) {
        if let Ok(mut a) = self.server_address.lock() {
            *a = address;
        }
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        // A poisoned lock means a panic in a store call, which the store never does on input;
        // the data is still consistent per operation, so keep serving.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, revision: u64) {
        self.changed.send_replace(revision);
    }

    /// The cluster's objects and issued service-account tokens, as JSON (for a snapshot file).
    pub fn export(&self) -> Value {
        let store = self.store().export();
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let accounts: Vec<Value> = tokens
            .service_accounts
            .iter()
            .map(|(token, sa)| json!({"token": token, "namespace": sa.namespace, "name": sa.name, "uid": sa.uid}))
            .collect();
        json!({"store": store, "serviceAccountTokens": accounts})
    }

    /// Loads what [`Cluster::export`] wrote: CRDs first (so their resources are served), then
    /// every object, then the service-account tokens. Returns how many objects were skipped
    /// because their resource is unknown.
    pub fn import(&self, exported: &Value) -> Result<usize, StoreError> {
        let store_export = exported
            .get("store")
            .ok_or_else(|| StoreError::Invalid("snapshot: missing store".into()))?;
        let crd = resources::crd_gvr();
        let skipped = {
            let mut store = self.store();
            for entry in store_export
                .get("objects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let is_crd = entry.get("group").and_then(Value::as_str) == Some(&crd.group)
                    && entry.get("resource").and_then(Value::as_str) == Some(&crd.resource);
                if let Some(object) = entry.get("object").filter(|_| is_crd) {
                    for (gvr, info) in resources::crd_resources(object) {
                        store.register(gvr, info);
                    }
                }
            }
            let skipped = store.import(store_export)?;
            let revision = store.revision();
            drop(store);
            self.notify(revision);
            skipped
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        for sa in exported
            .get("serviceAccountTokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |f: &str| {
                sa.get(f)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            tokens.service_accounts.insert(
                field("token"),
                ServiceAccountToken {
                    namespace: field("namespace"),
                    name: field("name"),
                    uid: field("uid"),
                },
            );
        }
        Ok(skipped)
    }

    /// Runs the endpoints controller (see [`super::endpoints`]) until `shutdown` turns true:
    /// after every change, Endpoints and EndpointSlices are brought in line with the pods.
    pub async fn run_endpoints_controller(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changed = self.changed.subscribe();
        loop {
            let written = {
                let mut store = self.store();
                super::endpoints::reconcile(&mut store).then(|| {
                    store.collect_garbage();
                    store.revision()
                })
            };
            if let Some(revision) = written {
                self.notify(revision);
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Answers one HTTP request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_string();
        if matches!(
            path.as_str(),
            "/healthz" | "/readyz" | "/livez" | "/version"
        ) && parts.method == Method::GET
        {
            return if path == "/version" {
                json_response(
                    StatusCode::OK,
                    &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-mesh-devcluster",
                        "platform": "linux/amd64", "goVersion": "none", "compiler": "rustc"}),
                )
            } else {
                let mut r = Response::new(
                    Full::new(Bytes::from_static(b"ok"))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain"),
                );
                r
            };
        }
        let user = match self.authenticate(&parts.headers) {
            Ok(user) => user,
            Err(e) => return json_response(e.code, &e.status()),
        };
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let e = if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_request(format!("reading the request body: {e}"))
                };
                return json_response(e.code, &e.status());
            }
        };
        let query = query_params(parts.uri.query());
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        match self.route(&user, &parts.method, &path, &query, &content_type, body) {
            Ok(response) => response,
            Err(e) => json_response(e.code, &e.status()),
        }
    }

    fn authenticate(&self, headers: &http::HeaderMap) -> Result<User, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        self.review(token).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized: a valid bearer token is required",
            )
        })
    }

    /// The user a token authenticates as: a configured token, or a service-account token this
    /// cluster issued whose service account still exists (same uid).
    pub fn review(&self, token: &str) -> Option<User> {
        if token.is_empty() {
            return None;
        }
        let sa = {
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(user) = tokens.users.get(token) {
                return Some(user.clone());
            }
            tokens.service_accounts.get(token).cloned()?
        };
        let account = self
            .store()
            .get(
                &Gvr::new("", "v1", "serviceaccounts"),
                &sa.namespace,
                &sa.name,
            )
            .ok()?;
        (account.pointer("/metadata/uid").and_then(Value::as_str) == Some(sa.uid.as_str()))
            .then(|| sa.user())
    }

    /// Issues a bearer token for a service account (which must exist), as the
    /// `serviceaccounts/<name>/token` subresource does. The token is valid until the account is
    /// deleted.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<String, StoreError> {
        let account = self
            .store()
            .get(&Gvr::new("", "v1", "serviceaccounts"), namespace, name)?;
        let uid = account
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let token = random_token();
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .service_accounts
            .insert(
                token.clone(),
                ServiceAccountToken {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    uid,
                },
            );
        Ok(token)
    }

    fn token_review(&self, body: &Bytes) -> Result<Response<Body>, ApiError> {
        let review = parse_json(body)?;
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "spec.token: Required value",
                )
            })?;
        let status = match self.review(token) {
            Some(user) => json!({"authenticated": true,
                "user": {"username": user.name, "groups": user.groups},
                "audiences": review.pointer("/spec/audiences").cloned().unwrap_or_else(|| json!([]))}),
            None => {
                json!({"authenticated": false, "error": "the token is not valid for this cluster"})
            }
        };
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null}, "spec": review.get("spec"), "status": status}),
        ))
    }

    fn authorize(
        &self,
        user: &User,
        verb: &str,
        resource: &str,
        group: &str,
        namespace: &str,
    ) -> Result<(), ApiError> {
        if user.allows(verb, resource, namespace) {
            return Ok(());
        }
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {namespace:?}")
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{resource} is forbidden: User {:?} cannot {verb} resource {resource:?} in API group {group:?} {scope}",
                user.name
            ),
        ))
    }

    fn route(
        self: &Arc<Self>,
        user: &User,
        method: &Method,
        path: &str,
        query: &HashMap<String, String>,
        content_type: &str,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api"] => {
                let address = self
                    .server_address
                    .lock()
                    .map(|a| a.clone())
                    .unwrap_or_default();
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}),
                ));
            }
            ["apis"] => {
                let groups = resources::groups(&self.store());
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                ));
            }
            ["apis", group] => {
                let found = resources::groups(&self.store())
                    .into_iter()
                    .find(|g| g["name"] == *group);
                return match found {
                    Some(g) => Ok(json_response(StatusCode::OK, &g)),
                    None => Err(ApiError::not_found(format!(
                        "the server could not find the requested resource (group {group})"
                    ))),
                };
            }
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => {
                return Err(ApiError::not_found(format!(
                    "the server could not find the requested resource {path}"
                )));
            }
        };
        if rest.is_empty() {
            return match resources::resource_list(&self.store(), group, version) {
                Some(list) => Ok(json_response(StatusCode::OK, &list)),
                None => Err(ApiError::not_found(format!(
                    "the server could not find the requested resource {path}"
                ))),
            };
        }
        if (group, version, rest) == ("authentication.k8s.io", "v1", &["tokenreviews"][..]) {
            if method != Method::POST {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "tokenreviews only support create (POST)",
                ));
            }
            self.authorize(user, "create", "tokenreviews", group, "")?;
            return self.token_review(&body);
        }
        let target = self.target(group, version, rest, path)?;
        let namespace = target.namespace.clone().unwrap_or_default();
        let verb = match (method, &target.name) {
            (&Method::GET, None) => {
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                    "watch"
                } else {
                    "list"
                }
            }
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => "",
        };
        let resource = match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.gvr.resource),
            None => target.gvr.resource.clone(),
        };
        self.authorize(user, verb, &resource, group, &namespace)?;
        if target.subresource.as_deref() == Some("token") {
            return match (method, &target.name) {
                (&Method::POST, Some(name)) => {
                    let token = self.issue_service_account_token(&namespace, name)?;
                    Ok(json_response(
                        StatusCode::CREATED,
                        &json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": parse_json_or_empty(&body)?.get("spec").cloned().unwrap_or_else(|| json!({})),
                            "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}}),
                    ))
                }
                _ => Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "serviceaccounts/token only supports create (POST)",
                )),
            };
        }
        match (method, &target.name) {
            (&Method::GET, None) => {
                let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
                if watching {
                    self.watch(&target, query)
                } else {
                    self.list(&target, query)
                }
            }
            (&Method::GET, Some(name)) => {
                let object = self.store().get(&target.gvr, &namespace, name)?;
                Ok(json_response(StatusCode::OK, &object))
            }
            (&Method::POST, None) => {
                let object = parse_json(&body)?;
                self.create(&target, object)
            }
            (&Method::PUT, Some(name)) => {
                let object = parse_json(&body)?;
                self.write(&target, name, object)
            }
            (&Method::PATCH, Some(name)) => {
                let applying = content_type.starts_with("application/apply-patch");
                let apply_options = if applying {
                    let manager = query
                        .get("fieldManager")
                        .filter(|m| !m.is_empty())
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "fieldManager is required for apply requests (application/apply-patch+yaml)",
                            )
                        })?
                        .clone();
                    let force = matches!(query.get("force").map(String::as_str), Some("true"));
                    Some((manager, force))
                } else {
                    None
                };
                let current = self.store().get(&target.gvr, &namespace, name);
                let mut object = match (current, &apply_options) {
                    (Ok(object), _) => object,
                    (Err(StoreError::NotFound { .. }), Some((manager, force)))
                        if target.subresource.is_none() =>
                    {
                        return self.apply_create(&target, name, &body, manager, *force);
                    }
                    (Err(e), _) => return Err(e.into()),
                };
                let ct = content_type.split(';').next().unwrap_or_default().trim();
                match ct {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                        patch::merge_patch(&mut object, &parse_json(&body)?);
                    }
                    "application/json-patch+json" => {
                        patch::json_patch(&mut object, &parse_json(&body)?).map_err(|e| {
                            ApiError::new(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "Invalid",
                                e.to_string(),
                            )
                        })?;
                    }
                    "application/apply-patch+yaml" => {
                        let (manager, force) = apply_options.unwrap_or_default();
                        object = apply::apply(
                            &object,
                            &parse_yaml(&body)?,
                            &manager,
                            force,
                            &target.gvr.api_version(),
                            &now_rfc3339(),
                        )
                        .map_err(apply_error)?;
                    }
                    other => {
                        return Err(ApiError::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "UnsupportedMediaType",
                            format!(
                                "the body of the request was in an unknown format ({other}); use application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json or application/apply-patch+yaml"
                            ),
                        ));
                    }
                }
                self.write(&target, name, object)
            }
            (&Method::DELETE, Some(name)) => {
                let options = parse_json_or_empty(&body)?;
                let precondition = options
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(String::from);
                let policy = query
                    .get("propagationPolicy")
                    .map(String::as_str)
                    .or_else(|| options.get("propagationPolicy").and_then(Value::as_str));
                let propagation = match policy {
                    None | Some("Background") => Propagation::Background,
                    Some("Foreground") => Propagation::Foreground,
                    Some("Orphan") => Propagation::Orphan,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "propagationPolicy {other:?}: expected Background, Foreground or Orphan"
                        )));
                    }
                };
                let mut store = self.store();
                let (object, gone) = store.delete_with(
                    &target.gvr,
                    &namespace,
                    name,
                    precondition.as_deref(),
                    propagation,
                )?;
                if gone && target.gvr == resources::crd_gvr() {
                    for (gvr, _) in resources::crd_resources(&object) {
                        store.unregister(&gvr);
                    }
                }
                store.collect_garbage();
                let revision = store.revision();
                drop(store);
                self.notify(revision);
                Ok(json_response(StatusCode::OK, &object))
            }
            (&Method::DELETE, None) => {
                let options = list_options(query)?;
                let mut store = self.store();
                let page = store.list(&target.gvr, target.namespace.as_deref(), &options)?;
                for item in &page.items {
                    let ns = item
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let name = item
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    // An item removed meanwhile (by the garbage collector) is not an error.
                    match store.delete(&target.gvr, &ns, &name, None) {
                        Ok(_) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => {
                            let revision = store.revision();
                            drop(store);
                            self.notify(revision);
                            return Err(e.into());
                        }
                    }
                }
                store.collect_garbage();
                let revision = store.revision();
                drop(store);
                self.notify(revision);
                Ok(json_response(
                    StatusCode::OK,
                    &list_object(
                        &target.gvr,
                        self.kind(&target.gvr),
                        page.items,
                        revision,
                        None,
                    ),
                ))
            }
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {path}"),
            )),
        }
    }

    pub(super) fn kind(&self, gvr: &Gvr) -> String {
        self.store()
            .info(gvr)
            .map(|i| i.kind.clone())
            .unwrap_or_default()
    }

    fn target(
        &self,
        group: &str,
        version: &str,
        rest: &[&str],
        path: &str,
    ) -> Result<Target, ApiError> {
        let (namespace, rest) = match rest {
            ["namespaces", ns, tail @ ..]
                if !tail.is_empty() && !matches!(tail, ["status" | "finalize"]) =>
            {
                (Some(ns.to_string()), tail)
            }
            _ => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(name.to_string()), None),
            [resource, name, sub] => (*resource, Some(name.to_string()), Some(sub.to_string())),
            _ => {
                return Err(ApiError::not_found(format!(
                    "the server could not find the requested resource {path}"
                )));
            }
        };
        let gvr = Gvr::new(group, version, resource);
        let (namespaced, has_status) = match self.store().info(&gvr) {
            Some(info) => (info.namespaced, info.status_subresource),
            None => {
                return Err(ApiError::not_found(format!(
                    "the server could not find the requested resource {path}"
                )));
            }
        };
        if namespace.is_some() && !namespaced {
            return Err(ApiError::not_found(format!(
                "{resource} is cluster-scoped; use a path without /namespaces/"
            )));
        }
        if namespaced && namespace.is_none() && name.is_some() {
            return Err(ApiError::not_found(format!(
                "{resource} is namespaced; use /namespaces/<namespace>/{resource}/<name>"
            )));
        }
        match subresource.as_deref() {
            None => {}
            Some("status") if has_status => {}
            Some("token") if gvr == Gvr::new("", "v1", "serviceaccounts") => {}
            Some(other) => {
                return Err(ApiError::not_found(format!(
                    "the server does not serve the subresource {other:?} of {resource}"
                )));
            }
        }
        Ok(Target {
            gvr,
            namespace,
            name,
            subresource,
        })
    }

    fn ensure_namespace(&self, target: &Target) -> Result<(), ApiError> {
        if let Some(ns) = &target.namespace {
            let namespaces = Gvr::new("", "v1", "namespaces");
            let existing = self.store().get(&namespaces, "", ns);
            match existing {
                Ok(object) if object.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!("namespace {ns} is being terminated"),
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(ApiError::not_found(format!("namespaces {ns:?} not found")));
                }
            }
        }
        Ok(())
    }

    /// Marks a CRD accepted and established and starts serving its resources.
    fn established(&self, store: &mut Store, crd: Value) -> Result<Value, ApiError> {
        for (gvr, info) in resources::crd_resources(&crd) {
            store.register(gvr, info);
        }
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut with_status = crd.clone();
        with_status["status"] = resources::crd_status(&crd);
        Ok(store.replace_status(&resources::crd_gvr(), "", &name, with_status)?)
    }

    fn write(
        &self,
        target: &Target,
        name: &str,
        object: Value,
    ) -> Result<Response<Body>, ApiError> {
        let namespace = target.namespace.clone().unwrap_or_default();
        let mut store = self.store();
        let mut written = if target.subresource.as_deref() == Some("status") {
            store.replace_status(&target.gvr, &namespace, name, object)?
        } else {
            store.replace(&target.gvr, &namespace, name, object)?
        };
        if target.gvr == resources::crd_gvr() && target.subresource.is_none() {
            written = self.established(&mut store, written)?;
        }
        // A write that removed the last finalizer may have finished a deletion.
        store.collect_garbage();
        let revision = store.revision();
        drop(store);
        self.notify(revision);
        Ok(json_response(StatusCode::OK, &written))
    }

    /// Server-side apply of an object that does not exist yet: a create owned by `manager`.
    fn apply_create(
        &self,
        target: &Target,
        name: &str,
        body: &Bytes,
        manager: &str,
        force: bool,
    ) -> Result<Response<Body>, ApiError> {
        let mut object = apply::apply(
            &json!({"metadata": {}}),
            &parse_yaml(body)?,
            manager,
            force,
            &target.gvr.api_version(),
            &now_rfc3339(),
        )
        .map_err(apply_error)?;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), json!(name));
        }
        self.create(target, object)
    }

    /// Creates `object` in `target`'s namespace (which must exist); a created CRD is
    /// established at once. Answers `201` with the stored object.
    fn create(&self, target: &Target, object: Value) -> Result<Response<Body>, ApiError> {
        self.ensure_namespace(target)?;
        let namespace = target.namespace.clone().unwrap_or_default();
        let mut store = self.store();
        let mut created = store.create(&target.gvr, &namespace, object)?;
        if target.gvr == resources::crd_gvr() {
            created = self.established(&mut store, created)?;
        }
        let revision = store.revision();
        drop(store);
        self.notify(revision);
        Ok(json_response(StatusCode::CREATED, &created))
    }

    fn list(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let options = list_options(query)?;
        let store = self.store();
        let page = store.list(&target.gvr, target.namespace.as_deref(), &options)?;
        let kind = store
            .info(&target.gvr)
            .map(|i| i.kind.clone())
            .unwrap_or_default();
        Ok(json_response(
            StatusCode::OK,
            &list_object(
                &target.gvr,
                kind,
                page.items,
                page.resource_version,
                page.continue_token,
            ),
        ))
    }
}

fn list_object(
    gvr: &Gvr,
    kind: String,
    items: Vec<Value>,
    revision: u64,
    continue_token: Option<String>,
) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({"kind": format!("{kind}List"), "apiVersion": gvr.api_version(), "metadata": metadata, "items": items})
}

pub(super) fn list_options(query: &HashMap<String, String>) -> Result<ListOptions, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = match query.get("limit") {
        Some(l) if !l.is_empty() => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
        _ => 0,
    };
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

fn apply_error(e: apply::ApplyError) -> ApiError {
    match e {
        apply::ApplyError::Conflicts(_) => {
            ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
        }
        _ => ApiError::bad_request(e.to_string()),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn parse_json_or_empty(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(json!({}))
    } else {
        parse_json(body)
    }
}

fn parse_yaml(body: &Bytes) -> Result<Value, ApiError> {
    serde_yaml::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not valid YAML or JSON: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = query_params(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&x=%zz&y=%4",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "%4");
    }
}
