//! The conventions that carry HTTP/1 across the `mesh.h2` hop and back.
//!
//! Between two proxies every request rides on one multiplexed HTTP/2 connection, whatever the
//! application spoke. The application on the far side must still see what the caller sent, so:
//!
//! - Outbound, [`h1_to_h2`] turns an HTTP/1.x request into an HTTP/2 one: the target becomes
//!   the absolute URI `http://<Host><path>` (so `Host` travels as `:authority`), the hop-by-hop
//!   headers of RFC 9110 §7.6.1 are removed ([`remove_hop_by_hop`]), and [`ORIG_PROTO`] says
//!   which version it was (`HTTP/1.1` or `HTTP/1.0`).
//! - Inbound, [`h2_to_h1`] sees [`ORIG_PROTO`], removes it and gives the request back its
//!   version and `Host`. A request without it was HTTP/2 at the caller (gRPC, say) and stays
//!   HTTP/2 all the way to the application.
//! - An HTTP/1.1 `Upgrade` (WebSocket) travels as an RFC 8441 extended CONNECT whose
//!   `:protocol` is the upgrade token ([`upgrade_protocol`], [`h1_upgrade_to_connect`]); the
//!   inbound side turns it back into `GET` with `Connection: upgrade` and `Upgrade: <token>`.
//!   The answer to the CONNECT carries the application's real status in [`UPGRADE_STATUS`],
//!   because HTTP/2 has no `101`.
//!
//! These are plain functions over `http` types; the hop's two ends call them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};

/// Request header: the HTTP/1 version a request had at the caller, `HTTP/1.1` or `HTTP/1.0`.
/// Absent on requests that were HTTP/2 at the caller.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("mesh-orig-proto");

/// Response header on the answer to an extended CONNECT that stands for an HTTP/1.1 upgrade:
/// the status the application really answered (`101` when it switched protocols).
pub const UPGRADE_STATUS: HeaderName = HeaderName::from_static("mesh-upgrade-status");

const HTTP_11: &str = "HTTP/1.1";
const HTTP_10: &str = "HTTP/1.0";

/// Hop-by-hop headers that are always removed (RFC 9110 §7.6.1, plus the non-standard
/// `Proxy-Connection` and `Keep-Alive` that HTTP/1.0 clients send). `TE` is handled apart:
/// `TE: trailers` is end to end in HTTP/2 (gRPC needs it).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Why a request could not be carried across the hop. The request fails alone: the caller
/// answers `400 Bad Request`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrigProtoError {
    #[error("{0:?} is not an HTTP/1 version")]
    NotHttp1(Version),
    #[error("the Host header is not a valid authority")]
    BadHost,
    #[error("no authority: the request has neither an absolute URI nor a Host header")]
    NoAuthority,
    #[error("the request target is not a path")]
    BadTarget,
    #[error("{ORIG_PROTO} must be {HTTP_11:?} or {HTTP_10:?}")]
    BadOrigProto,
    #[error("upgrade token {0:?} cannot be an HTTP/2 :protocol")]
    BadUpgradeToken(String),
}

/// Removes the hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` unless it is exactly
/// `trailers` (what remains of a `TE` list is `trailers` when it was listed).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case("trailers"));
    if headers.remove(header::TE).is_some() && trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The upgrade an HTTP/1.1 request asks for, to be carried as an extended CONNECT: a `GET` with
/// `Connection: upgrade` and an `Upgrade` token other than `h2c` (which upgrades the connection
/// itself and means nothing past this hop). The first token is taken: HTTP/2 carries one.
///
/// Other requests that mention `Upgrade` (another method, HTTP/1.0) are ordinary requests: the
/// headers are hop-by-hop and are dropped, which a server may treat as no upgrade asked.
pub fn upgrade_protocol<B>(req: &Request<B>) -> Option<String> {
    if req.version() != Version::HTTP_11 || req.method() != Method::GET {
        return None;
    }
    let wants_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !wants_upgrade {
        return None;
    }
    let token = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(tokens)
        .next()?;
    (!token.eq_ignore_ascii_case("h2c")).then_some(token)
}

/// Outbound: an HTTP/1.x request as the HTTP/2 request that stands for it on the hop.
///
/// The authority is the absolute URI's, else the `Host` header's, else `fallback` (an
/// HTTP/1.0 request may have neither). `Host` itself is removed: `:authority` carries it and
/// [`h2_to_h1`] restores it.
pub fn h1_to_h2<B>(
    mut req: Request<B>,
    fallback: Option<&Authority>,
) -> Result<Request<B>, OrigProtoError> {
    let orig = match req.version() {
        Version::HTTP_11 => HTTP_11,
        Version::HTTP_10 => HTTP_10,
        other => return Err(OrigProtoError::NotHttp1(other)),
    };
    *req.uri_mut() = absolute_uri(&req, fallback)?;
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.insert(ORIG_PROTO, HeaderValue::from_static(orig));
    *req.version_mut() = Version::HTTP_2;
    Ok(req)
}

/// Outbound: an HTTP/1.1 upgrade request (see [`upgrade_protocol`]) as an extended CONNECT
/// (RFC 8441) with `:protocol` = `protocol`, the original path and authority, and the
/// end-to-end headers. The body is the caller's to replace: a CONNECT carries the upgraded
/// stream, not a request body.
pub fn h1_upgrade_to_connect<B>(
    req: Request<B>,
    protocol: &str,
    fallback: Option<&Authority>,
) -> Result<Request<B>, OrigProtoError> {
    // A token is visible ASCII without separators; anything else cannot be a :protocol.
    if protocol.is_empty() || !protocol.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(OrigProtoError::BadUpgradeToken(protocol.to_owned()));
    }
    let mut req = h1_to_h2(req, fallback)?;
    *req.method_mut() = Method::CONNECT;
    req.headers_mut().remove(header::CONTENT_LENGTH);
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from(protocol));
    Ok(req)
}

/// The version a hop request had at the caller, from [`ORIG_PROTO`]: `None` when it was HTTP/2.
pub fn orig_version(headers: &HeaderMap) -> Result<Option<Version>, OrigProtoError> {
    let mut values = headers.get_all(ORIG_PROTO).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OrigProtoError::BadOrigProto);
    }
    match value.as_bytes() {
        b"HTTP/1.1" => Ok(Some(Version::HTTP_11)),
        b"HTTP/1.0" => Ok(Some(Version::HTTP_10)),
        _ => Err(OrigProtoError::BadOrigProto),
    }
}

/// Inbound: a request from the hop as the application must see it. With [`ORIG_PROTO`], it
/// becomes HTTP/1.x again: that version, `Host` from `:authority`, and an extended CONNECT
/// becomes `GET` with `Connection: upgrade` and `Upgrade: <:protocol>`. Without it, it stays
/// HTTP/2. The URI stays absolute: the client towards the application sends origin-form on
/// HTTP/1 connections.
pub fn h2_to_h1<B>(mut req: Request<B>) -> Result<Request<B>, OrigProtoError> {
    let version = orig_version(req.headers())?;
    req.headers_mut().remove(ORIG_PROTO);
    let Some(version) = version else {
        return Ok(req);
    };
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or(OrigProtoError::NoAuthority)?;
    let host =
        HeaderValue::from_str(authority.as_str()).map_err(|_| OrigProtoError::NoAuthority)?;
    // An HTTP/2 request may not carry hop-by-hop headers; a peer that sent some anyway must not
    // steer the application's connection with them.
    remove_hop_by_hop(req.headers_mut());
    req.headers_mut().insert(header::HOST, host);
    *req.version_mut() = version;
    let protocol = req.extensions_mut().remove::<hyper::ext::Protocol>();
    if let (true, Some(protocol)) = (req.method() == Method::CONNECT, protocol) {
        let upgrade = HeaderValue::from_str(protocol.as_str())
            .map_err(|_| OrigProtoError::BadUpgradeToken(protocol.as_str().to_owned()))?;
        *req.method_mut() = Method::GET;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
    Ok(req)
}

/// `http://<authority><path>` for an HTTP/1 request: its own absolute URI if it has one.
fn absolute_uri<B>(req: &Request<B>, fallback: Option<&Authority>) -> Result<Uri, OrigProtoError> {
    let uri = req.uri();
    let authority = match uri.authority() {
        Some(authority) => authority.clone(),
        None => match req.headers().get(header::HOST) {
            Some(host) => {
                Authority::try_from(host.as_bytes()).map_err(|_| OrigProtoError::BadHost)?
            }
            None => fallback.cloned().ok_or(OrigProtoError::NoAuthority)?,
        },
    };
    let path = match uri.path_and_query() {
        // An asterisk-form target (`OPTIONS *`) cannot be an HTTP/2 :path with scheme http.
        Some(path) if path.as_str().starts_with('/') => path.clone(),
        Some(_) => return Err(OrigProtoError::BadTarget),
        None => PathAndQuery::from_static("/"),
    };
    Uri::builder()
        .scheme(uri.scheme().cloned().unwrap_or(Scheme::HTTP))
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| OrigProtoError::BadTarget)
}

/// The comma-separated tokens of one header value, trimmed; an invalid value has none.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = String> + '_ {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h1(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().version(version).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn an_http11_request_becomes_http2_with_its_version_and_host_recorded() {
        let req = h1(
            Version::HTTP_11,
            "/api/v1?q=1",
            &[
                ("host", "web.default:8080"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "gone"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("te", "trailers, deflate"),
                ("upgrade", "foo"),
                ("x-end-to-end", "kept"),
            ],
        );
        let req = h1_to_h2(req, None).unwrap();
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://web.default:8080/api/v1?q=1");
        let h = req.headers();
        assert_eq!(h[&ORIG_PROTO], "HTTP/1.1");
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["te"], "trailers");
        for gone in [
            "host",
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn te_without_trailers_is_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn http10_keeps_its_version_and_may_fall_back_to_the_endpoint_authority() {
        let fallback = Authority::from_static("web.default.svc.cluster.local:80");
        let req = h1(Version::HTTP_10, "/", &[]);
        assert_eq!(
            h1_to_h2(req, None).unwrap_err(),
            OrigProtoError::NoAuthority
        );
        let req = h1_to_h2(h1(Version::HTTP_10, "/old", &[]), Some(&fallback)).unwrap();
        assert_eq!(req.headers()[&ORIG_PROTO], "HTTP/1.0");
        assert_eq!(req.uri(), "http://web.default.svc.cluster.local:80/old");
    }

    #[test]
    fn an_absolute_form_target_keeps_its_own_authority() {
        let req = h1(
            Version::HTTP_11,
            "http://a.example/x",
            &[("host", "b.example")],
        );
        assert_eq!(h1_to_h2(req, None).unwrap().uri(), "http://a.example/x");
    }

    #[test]
    fn bad_hosts_and_targets_are_refused() {
        let req = h1(Version::HTTP_11, "/", &[("host", "bad host")]);
        assert_eq!(h1_to_h2(req, None).unwrap_err(), OrigProtoError::BadHost);
        let req = h1(Version::HTTP_11, "*", &[("host", "a")]);
        assert_eq!(h1_to_h2(req, None).unwrap_err(), OrigProtoError::BadTarget);
        let req = h1(Version::HTTP_2, "http://a/", &[]);
        assert_eq!(
            h1_to_h2(req, None).unwrap_err(),
            OrigProtoError::NotHttp1(Version::HTTP_2)
        );
    }

    #[test]
    fn the_round_trip_gives_the_app_the_callers_version_and_host() {
        for version in [Version::HTTP_10, Version::HTTP_11] {
            let req = h1(
                version,
                "/p?x=1",
                &[("host", "Web.Example:81"), ("x-a", "1")],
            );
            let hop = h1_to_h2(req, None).unwrap();
            let app = h2_to_h1(hop).unwrap();
            assert_eq!(app.version(), version);
            assert_eq!(app.headers()["host"], "Web.Example:81");
            assert_eq!(app.headers()["x-a"], "1");
            assert!(!app.headers().contains_key(ORIG_PROTO));
            assert_eq!(app.uri().path_and_query().unwrap(), "/p?x=1");
        }
    }

    #[test]
    fn without_orig_proto_a_request_stays_http2() {
        let req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://grpc.default:50051/pkg.Svc/Call")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let app = h2_to_h1(req).unwrap();
        assert_eq!(app.version(), Version::HTTP_2);
        assert!(!app.headers().contains_key("host"));
        assert_eq!(app.headers()["te"], "trailers");
    }

    #[test]
    fn a_bad_or_repeated_orig_proto_is_refused() {
        for values in [&["HTTP/2"][..], &["HTTP/1.1", "HTTP/1.1"], &["http/1.1"]] {
            let mut req = Request::builder().version(Version::HTTP_2).uri("http://a/");
            for v in values {
                req = req.header(ORIG_PROTO, *v);
            }
            let req = req.body(()).unwrap();
            assert_eq!(
                h2_to_h1(req).unwrap_err(),
                OrigProtoError::BadOrigProto,
                "{values:?}"
            );
        }
    }

    #[test]
    fn upgrades_are_recognised_only_where_they_can_be_carried() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert_eq!(
            upgrade_protocol(&h1(Version::HTTP_11, "/ws", &ws)).as_deref(),
            Some("websocket")
        );
        assert_eq!(upgrade_protocol(&h1(Version::HTTP_10, "/ws", &ws)), None);
        let mut post = h1(Version::HTTP_11, "/ws", &ws);
        *post.method_mut() = Method::POST;
        assert_eq!(upgrade_protocol(&post), None);
        let no_conn = [("upgrade", "websocket")];
        assert_eq!(upgrade_protocol(&h1(Version::HTTP_11, "/", &no_conn)), None);
        let h2c = [
            ("connection", "upgrade, http2-settings"),
            ("upgrade", "h2c"),
        ];
        assert_eq!(upgrade_protocol(&h1(Version::HTTP_11, "/", &h2c)), None);
    }

    #[test]
    fn an_upgrade_round_trips_as_extended_connect() {
        let req = h1(
            Version::HTTP_11,
            "/chat?room=1",
            &[
                ("host", "chat:80"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("content-length", "0"),
            ],
        );
        let protocol = upgrade_protocol(&req).unwrap();
        let connect = h1_upgrade_to_connect(req, &protocol, None).unwrap();
        assert_eq!(connect.method(), Method::CONNECT);
        assert_eq!(connect.version(), Version::HTTP_2);
        assert_eq!(connect.uri(), "http://chat:80/chat?room=1");
        assert_eq!(
            connect
                .extensions()
                .get::<hyper::ext::Protocol>()
                .unwrap()
                .as_str(),
            "websocket"
        );
        let h = connect.headers();
        assert!(!h.contains_key("upgrade") && !h.contains_key("connection"));
        assert!(!h.contains_key("content-length"));
        assert_eq!(h["sec-websocket-version"], "13");

        let app = h2_to_h1(connect).unwrap();
        assert_eq!(app.method(), Method::GET);
        assert_eq!(app.version(), Version::HTTP_11);
        assert_eq!(app.uri().path_and_query().unwrap(), "/chat?room=1");
        let h = app.headers();
        assert_eq!(h["host"], "chat:80");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn an_upgrade_token_that_is_not_a_token_is_refused() {
        let req = h1(Version::HTTP_11, "/", &[("host", "a")]);
        assert!(matches!(
            h1_upgrade_to_connect(req, "web socket", None),
            Err(OrigProtoError::BadUpgradeToken(_))
        ));
    }
}
