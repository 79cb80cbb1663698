//! Destinations from a JSON file, for tests and demos: the same [`Resolve`] interface as the
//! controller, with answers that never change.
//!
//! This is an addition to [`GrpcDiscovery`](super::GrpcDiscovery), never a replacement: the
//! binary chooses one by flag. A file goes through the very same validation as a controller
//! update (it is turned into an `Update` and decoded by [`Destination::from_update`]), but where
//! the controller's bad entries are dropped, a file's are errors: a person wrote it and is there
//! to fix it. Every error names the file, the JSON path and the problem.
//!
//! # Format
//!
//! One object mapping each target to its destination. A key is a service authority
//! (`host:port`, matched case-insensitively) or an address (`ip:port`, IPv6 in brackets); the
//! optional `addresses` list makes the same destination answer watches of those `ip:port`s too,
//! as the controller does for a service's cluster IP. Targets not in the file are answered "not
//! found" (`exists: false`), as the controller would answer an unknown service.
//!
//! The fields mirror the `Update` message, with addresses written as `"ip:port"` strings. All are
//! optional except `endpoints[].addr`; unknown fields are errors, so a typo is never ignored.
//!
//! ```json
//! {
//!   "web.default.svc.cluster.local:80": {
//!     "addresses": ["10.96.0.10:80"],
//!     "exists": true,
//!     "authority": "web.default.svc.cluster.local:80",
//!     "protocol_hint": "http",
//!     "opaque_ports": [3306],
//!     "endpoints": [
//!       { "addr": "10.1.0.1:8080", "identity": "spiffe://east.local/ns/default/sa/web",
//!         "cluster": "east", "zone": "z1", "weight": 1, "ready": true,
//!         "labels": { "pod": "web-0" }, "hostname": "web-0" },
//!       { "addr": "10.2.0.1:8080", "identity": "spiffe://west.local/ns/default/sa/web",
//!         "cluster": "west",
//!         "tunnel": { "cluster": "west", "authority": "web.default.svc.cluster.local:80",
//!                     "gateway": "10.9.0.1:4143",
//!                     "gateway_identity": "spiffe://east.local/ns/mesh/sa/gateway",
//!                     "remote_trust_domain": "west.local" } }
//!     ],
//!     "split_backends": [
//!       { "authority": "web-west.default.svc.cluster.local:80", "weight": 1, "priority": 1 }
//!     ]
//!   }
//! }
//! ```
//!
//! Defaults: `exists` is true; `authority` is the key when the key is an authority (else empty);
//! `protocol_hint` (`"unknown"`, `"http"` or `"opaque"`) is `"unknown"`; an endpoint's `weight`
//! is 1 and `ready` is true, since a listed endpoint is meant to take traffic; an empty
//! `identity` means plain text.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_api::common::ProtocolHint;
use mesh_api::discovery::{Endpoint, SplitBackend, TunnelTarget, Update};
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::destination::RejectReason;
use super::target::{InvalidTarget, proto_addr};
use super::{Destination, DestinationWatch, Resolve, Target};

/// Destinations read once from a JSON file.
///
/// Keep it alive while its watches are in use: dropping it closes them (their values stay).
#[derive(Debug)]
pub struct StaticDiscovery {
    file: PathBuf,
    destinations: HashMap<Target, Publisher>,
    /// Shared by every target the file does not list.
    not_found: Publisher,
}

type Publisher = watch::Sender<Option<Arc<Destination>>>;

/// Why a discovery file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StaticDiscoveryError {
    /// The file cannot be read.
    #[error("cannot read discovery file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("discovery file {} is not valid JSON: {source}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// The file is JSON but not a valid set of destinations.
    #[error("discovery file {}, at {path}: {problem}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Where in the document, e.g. `$["web:80"].endpoints[0].addr`.
        path: String,
        /// What is wrong there.
        problem: FileProblem,
    },
}

/// What is wrong at one place in a discovery file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileProblem {
    /// The value has the wrong JSON type or range.
    #[error("expected {expected}")]
    Type {
        /// What was expected there.
        expected: &'static str,
    },
    /// The field is not part of the format (a typo, or a field of another version).
    #[error("unknown field")]
    UnknownField,
    /// A key is not a target.
    #[error("{0}")]
    Target(#[from] InvalidTarget),
    /// An address is not `ip:port`.
    #[error("{value:?} is not an ip:port address")]
    Addr {
        /// The string as written.
        value: String,
    },
    /// A protocol hint is not one of the known names.
    #[error("{value:?} is not a protocol hint; expected \"unknown\", \"http\" or \"opaque\"")]
    ProtocolHint {
        /// The string as written.
        value: String,
    },
    /// Two destinations answer for the same target.
    #[error("target {0} is already given by another destination")]
    DuplicateTarget(Target),
    /// The value fails the same validation as a controller update.
    #[error("{0}")]
    Rejected(#[from] RejectReason),
}

/// A problem and where it is; the file name is added by the caller.
type Located<T> = Result<T, (String, FileProblem)>;

// === impl StaticDiscovery ===

impl StaticDiscovery {
    /// Reads and validates `file`.
    pub async fn load(file: impl AsRef<Path>) -> Result<Self, StaticDiscoveryError> {
        let file = file.as_ref();
        let json =
            tokio::fs::read_to_string(file)
                .await
                .map_err(|source| StaticDiscoveryError::Read {
                    file: file.to_owned(),
                    source,
                })?;
        Self::from_json(file, &json)
    }

    /// Validates a document; `file` only names it in errors.
    pub fn from_json(file: impl Into<PathBuf>, json: &str) -> Result<Self, StaticDiscoveryError> {
        let file = file.into();
        let document: Value = match serde_json::from_str(json) {
            Ok(document) => document,
            Err(source) => return Err(StaticDiscoveryError::Syntax { file, source }),
        };
        let destinations = match read_document(&document) {
            Ok(destinations) => destinations,
            Err((path, problem)) => {
                return Err(StaticDiscoveryError::Invalid {
                    file,
                    path,
                    problem,
                });
            }
        };
        Ok(Self {
            file,
            destinations,
            not_found: watch::Sender::new(Some(Arc::new(Destination::not_found()))),
        })
    }

    /// The file the destinations were read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The answer for `target`, without watching.
    pub fn get(&self, target: &Target) -> Arc<Destination> {
        let publisher = self.destinations.get(target).unwrap_or(&self.not_found);
        let current = publisher.borrow().clone();
        current.unwrap_or_else(|| Arc::new(Destination::not_found()))
    }
}

impl Resolve for StaticDiscovery {
    fn watch(&self, target: Target) -> DestinationWatch {
        self.destinations
            .get(&target)
            .unwrap_or(&self.not_found)
            .subscribe()
    }
}

// === reading the document ===

const DESTINATION_FIELDS: &[&str] = &[
    "addresses",
    "exists",
    "authority",
    "endpoints",
    "split_backends",
    "protocol_hint",
    "opaque_ports",
];
const ENDPOINT_FIELDS: &[&str] = &[
    "addr", "identity", "cluster", "zone", "weight", "ready", "labels", "tunnel", "hostname",
];
const TUNNEL_FIELDS: &[&str] = &[
    "cluster",
    "authority",
    "gateway",
    "gateway_identity",
    "remote_trust_domain",
];
const SPLIT_BACKEND_FIELDS: &[&str] = &["authority", "weight", "priority"];

fn read_document(document: &Value) -> Located<HashMap<Target, Publisher>> {
    let root = document.as_object().ok_or_else(|| {
        (
            "$".to_owned(),
            FileProblem::Type {
                expected: "an object mapping targets to destinations",
            },
        )
    })?;
    let mut destinations = HashMap::new();
    for (key, value) in root {
        let path = format!("$[{key:?}]");
        let target = Target::parse(key).map_err(|e| (path.clone(), e.into()))?;
        let fields = Fields::new(value, path.clone(), DESTINATION_FIELDS)?;
        let (destination, rejections) = Destination::from_update(read_update(&fields, &target)?);
        // The rejection's path uses the proto's field names, which are the file's too.
        if let Some(rejection) = rejections.into_iter().next() {
            return Err((
                format!("{path}.{}", rejection.path),
                rejection.reason.into(),
            ));
        }
        let publisher = watch::Sender::new(Some(Arc::new(destination)));

        let mut targets = vec![(path, target)];
        for (path, value) in fields.array("addresses")? {
            let addr = socket_addr(&path, value)?;
            targets.push((path, Target::from(addr)));
        }
        for (path, target) in targets {
            if destinations.contains_key(&target) {
                return Err((path, FileProblem::DuplicateTarget(target)));
            }
            destinations.insert(target, publisher.clone());
        }
    }
    Ok(destinations)
}

fn read_update(fields: &Fields<'_>, target: &Target) -> Located<Update> {
    let default_authority = match target {
        Target::Authority(authority) => authority.as_str(),
        _ => "",
    };
    let mut endpoints = Vec::new();
    for (path, value) in fields.array("endpoints")? {
        endpoints.push(read_endpoint(&Fields::new(value, path, ENDPOINT_FIELDS)?)?);
    }
    let mut split_backends = Vec::new();
    for (path, value) in fields.array("split_backends")? {
        let backend = Fields::new(value, path, SPLIT_BACKEND_FIELDS)?;
        split_backends.push(SplitBackend {
            authority: backend.string("authority")?.to_owned(),
            weight: backend.u32("weight")?.unwrap_or(0),
            priority: backend.u32("priority")?.unwrap_or(0),
        });
    }
    let mut opaque_ports = Vec::new();
    for (path, value) in fields.array("opaque_ports")? {
        opaque_ports.push(as_u32(&path, value)?);
    }
    Ok(Update {
        exists: fields.bool("exists")?.unwrap_or(true),
        authority: match fields.get("authority") {
            Some(_) => fields.string("authority")?.to_owned(),
            None => default_authority.to_owned(),
        },
        endpoints,
        split_backends,
        protocol_hint: read_protocol_hint(fields)?.into(),
        opaque_ports,
    })
}

fn read_endpoint(fields: &Fields<'_>) -> Located<Endpoint> {
    let addr = match fields.get("addr") {
        Some(value) => Some(proto_addr(socket_addr(&fields.at("addr"), value)?)),
        // Left to `Destination::from_update`, which reports it like the controller's.
        None => None,
    };
    let tunnel = match fields.get("tunnel") {
        Some(value) => Some(read_tunnel(&Fields::new(
            value,
            fields.at("tunnel"),
            TUNNEL_FIELDS,
        )?)?),
        None => None,
    };
    let mut labels = std::collections::HashMap::new();
    if let Some(value) = fields.get("labels") {
        let path = fields.at("labels");
        let map = value.as_object().ok_or_else(|| {
            (
                path.clone(),
                FileProblem::Type {
                    expected: "an object of strings",
                },
            )
        })?;
        for (name, value) in map {
            let value = value.as_str().ok_or_else(|| {
                (
                    format!("{path}[{name:?}]"),
                    FileProblem::Type {
                        expected: "a string",
                    },
                )
            })?;
            labels.insert(name.clone(), value.to_owned());
        }
    }
    Ok(Endpoint {
        addr,
        identity: fields.string("identity")?.to_owned(),
        cluster: fields.string("cluster")?.to_owned(),
        zone: fields.string("zone")?.to_owned(),
        weight: fields.u32("weight")?.unwrap_or(1),
        ready: fields.bool("ready")?.unwrap_or(true),
        labels,
        tunnel,
        hostname: fields.string("hostname")?.to_owned(),
    })
}

fn read_tunnel(fields: &Fields<'_>) -> Located<TunnelTarget> {
    let gateway = match fields.get("gateway") {
        Some(value) => Some(proto_addr(socket_addr(&fields.at("gateway"), value)?)),
        None => None,
    };
    Ok(TunnelTarget {
        cluster: fields.string("cluster")?.to_owned(),
        authority: fields.string("authority")?.to_owned(),
        gateway,
        gateway_identity: fields.string("gateway_identity")?.to_owned(),
        remote_trust_domain: fields.string("remote_trust_domain")?.to_owned(),
    })
}

fn read_protocol_hint(fields: &Fields<'_>) -> Located<ProtocolHint> {
    match fields.get("protocol_hint") {
        None => Ok(ProtocolHint::Unknown),
        Some(_) => match fields.string("protocol_hint")? {
            "unknown" => Ok(ProtocolHint::Unknown),
            "http" => Ok(ProtocolHint::Http),
            "opaque" => Ok(ProtocolHint::Opaque),
            other => Err((
                fields.at("protocol_hint"),
                FileProblem::ProtocolHint {
                    value: other.to_owned(),
                },
            )),
        },
    }
}

fn socket_addr(path: &str, value: &Value) -> Located<SocketAddr> {
    let text = value.as_str().ok_or_else(|| {
        (
            path.to_owned(),
            FileProblem::Type {
                expected: "an \"ip:port\" string",
            },
        )
    })?;
    text.parse().map_err(|_| {
        (
            path.to_owned(),
            FileProblem::Addr {
                value: text.to_owned(),
            },
        )
    })
}

fn as_u32(path: &str, value: &Value) -> Located<u32> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            (
                path.to_owned(),
                FileProblem::Type {
                    expected: "an integer from 0 to 4294967295",
                },
            )
        })
}

/// An object of the document and its path, with typed accessors whose errors carry the path.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// `value` as an object with no fields outside `known`.
    fn new(value: &'a Value, path: String, known: &[&str]) -> Located<Self> {
        let Some(map) = value.as_object() else {
            return Err((
                path,
                FileProblem::Type {
                    expected: "an object",
                },
            ));
        };
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err((format!("{path}.{unknown}"), FileProblem::UnknownField));
        }
        Ok(Self { map, path })
    }

    fn at(&self, field: &str) -> String {
        format!("{}.{field}", self.path)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field)
    }

    /// A string field; absent is empty, as in proto3.
    fn string(&self, field: &str) -> Located<&'a str> {
        match self.get(field) {
            None => Ok(""),
            Some(value) => value.as_str().ok_or_else(|| {
                (
                    self.at(field),
                    FileProblem::Type {
                        expected: "a string",
                    },
                )
            }),
        }
    }

    fn u32(&self, field: &str) -> Located<Option<u32>> {
        self.get(field)
            .map(|value| as_u32(&self.at(field), value))
            .transpose()
    }

    fn bool(&self, field: &str) -> Located<Option<bool>> {
        self.get(field)
            .map(|value| {
                value.as_bool().ok_or_else(|| {
                    (
                        self.at(field),
                        FileProblem::Type {
                            expected: "true or false",
                        },
                    )
                })
            })
            .transpose()
    }

    /// An array field's items with their paths; absent is empty.
    fn array(&self, field: &str) -> Located<Vec<(String, &'a Value)>> {
        let Some(value) = self.get(field) else {
            return Ok(Vec::new());
        };
        let items = value.as_array().ok_or_else(|| {
            (
                self.at(field),
                FileProblem::Type {
                    expected: "an array",
                },
            )
        })?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(index, item)| (format!("{}.{field}[{index}]", self.path), item))
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::discovery::destination::InvalidAddr;

    fn invalid(json: &str) -> (String, FileProblem) {
        match StaticDiscovery::from_json("test.json", json) {
            Err(StaticDiscoveryError::Invalid { path, problem, .. }) => (path, problem),
            other => panic!("expected an invalid document, got {other:?}"),
        }
    }

    #[test]
    fn answers_authorities_addresses_and_unknowns() {
        let discovery = StaticDiscovery::from_json(
            "test.json",
            r#"{
                "Web.default.svc.cluster.local:80": {
                    "addresses": ["10.96.0.10:80"],
                    "protocol_hint": "http",
                    "endpoints": [{ "addr": "10.1.0.1:8080", "cluster": "east" }]
                },
                "10.96.0.11:5432": { "protocol_hint": "opaque" }
            }"#,
        )
        .unwrap();
        let by_name = discovery.get(&Target::parse("web.default.svc.cluster.local:80").unwrap());
        assert!(by_name.exists);
        assert_eq!(by_name.authority, "web.default.svc.cluster.local:80");
        assert_eq!(by_name.protocol_hint, ProtocolHint::Http);
        assert_eq!(by_name.endpoints[0].weight, 1);
        assert!(by_name.endpoints[0].ready);
        let by_ip = discovery.get(&Target::parse("10.96.0.10:80").unwrap());
        assert_eq!(by_ip, by_name);
        let db = discovery.get(&Target::parse("10.96.0.11:5432").unwrap());
        assert!(db.exists && db.authority.is_empty() && db.is_opaque(5432));
        assert!(!discovery.get(&Target::parse("other:80").unwrap()).exists);
    }

    #[test]
    fn errors_name_the_path_and_the_problem() {
        let cases: [(&str, &str, FileProblem); 8] = [
            (
                "[]",
                "$",
                FileProblem::Type {
                    expected: "an object mapping targets to destinations",
                },
            ),
            (
                r#"{"web": {}}"#,
                r#"$["web"]"#,
                FileProblem::Target(Target::parse("web").unwrap_err()),
            ),
            (
                r#"{"w:80": {"endpoint": []}}"#,
                r#"$["w:80"].endpoint"#,
                FileProblem::UnknownField,
            ),
            (
                r#"{"w:80": {"endpoints": [{"addr": "10.0.0.1"}]}}"#,
                r#"$["w:80"].endpoints[0].addr"#,
                FileProblem::Addr {
                    value: "10.0.0.1".into(),
                },
            ),
            (
                r#"{"w:80": {"endpoints": [{"addr": "10.0.0.1:1", "weight": -1}]}}"#,
                r#"$["w:80"].endpoints[0].weight"#,
                FileProblem::Type {
                    expected: "an integer from 0 to 4294967295",
                },
            ),
            (
                r#"{"w:80": {"endpoints": [{"addr": "0.0.0.0:1"}]}}"#,
                r#"$["w:80"].endpoints[0].addr"#,
                FileProblem::Rejected(RejectReason::Addr(InvalidAddr::Unspecified {
                    ip: "0.0.0.0".parse().unwrap(),
                })),
            ),
            (
                r#"{"w:80": {"protocol_hint": "grpc"}}"#,
                r#"$["w:80"].protocol_hint"#,
                FileProblem::ProtocolHint {
                    value: "grpc".into(),
                },
            ),
            (
                r#"{"w:80": {"addresses": ["10.0.0.1:80"]}, "10.0.0.1:80": {}}"#,
                r#"$["w:80"].addresses[0]"#,
                FileProblem::DuplicateTarget(Target::parse("10.0.0.1:80").unwrap()),
            ),
        ];
        for (json, path, problem) in cases {
            let (got_path, got_problem) = invalid(json);
            assert_eq!((got_path.as_str(), got_problem), (path, problem), "{json}");
        }
    }

    #[test]
    fn a_bad_identity_is_an_error_naming_its_field() {
        let (path, problem) = invalid(
            r#"{"w:80": {"endpoints": [{"addr": "10.0.0.1:1", "identity": "spiffe://a/b//c"}]}}"#,
        );
        assert_eq!(path, r#"$["w:80"].endpoints[0].identity"#);
        assert!(matches!(
            problem,
            FileProblem::Rejected(RejectReason::Identity { .. })
        ));
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let error = StaticDiscovery::from_json("/etc/mesh/discovery.json", "{").unwrap_err();
        assert!(matches!(error, StaticDiscoveryError::Syntax { .. }));
        assert!(error.to_string().contains("/etc/mesh/discovery.json"));
    }
}
