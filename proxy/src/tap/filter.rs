//! Which events a watcher asked for: the validated form of an `ObserveRequest`.
//!
//! The request comes from whoever reaches the tap port, so every field is checked before a
//! subscription is made, and a field that could never match anything the proxy publishes (a
//! prefix with a query string, an authority with user info) is refused with a message that says
//! how to write it, rather than silently streaming nothing.

use std::num::NonZeroU32;

use mesh_api::tap::{Direction as ProtoDirection, ObserveRequest};
use tonic::Status;

use super::RequestEvent;
use crate::metrics::Direction;

/// The longest authority a filter may name: a 255-byte host name and `:65535`.
pub const MAX_AUTHORITY_LEN: usize = 261;
/// The longest path prefix a filter may name.
pub const MAX_PATH_PREFIX_LEN: usize = 1024;
/// The largest `limit` a watcher may ask for; 0 asks for no limit at all.
pub const MAX_LIMIT: u32 = 1_000_000;

/// A watcher's filter and limit. The default matches every request and never ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapFilter {
    authority: Option<String>,
    path_prefix: Option<String>,
    direction: Option<Direction>,
    limit: Option<NonZeroU32>,
}

/// Why an `ObserveRequest` was refused. Each message says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidFilter {
    #[error("authority is {len} bytes long; name one of at most {MAX_AUTHORITY_LEN} bytes")]
    AuthorityTooLong { len: usize },
    #[error(
        "authority {authority:?} is not a request authority; write host or host:port \
         (e.g. web.default.svc.cluster.local:80), without scheme, user info or path"
    )]
    Authority { authority: String },
    #[error("path_prefix is {len} bytes long; use a prefix of at most {MAX_PATH_PREFIX_LEN} bytes")]
    PathPrefixTooLong { len: usize },
    #[error(
        "path_prefix {prefix:?} must start with '/' (e.g. /api), or be empty to match any path"
    )]
    PathPrefixNotAbsolute { prefix: String },
    #[error(
        "path_prefix {prefix:?} holds a query or fragment; drop everything from '?' or '#': \
         the tap publishes paths without them"
    )]
    PathPrefixQuery { prefix: String },
    #[error(
        "path_prefix {prefix:?} holds spaces, control or non-ASCII characters; percent-encode \
         them as they appear on the wire"
    )]
    PathPrefixCharacters { prefix: String },
    #[error("limit {limit} is above the maximum of {MAX_LIMIT}; use 0 to stream with no limit")]
    LimitTooLarge { limit: u32 },
    #[error(
        "direction {value} is not a known direction; use DIRECTION_INBOUND, DIRECTION_OUTBOUND, \
         or DIRECTION_UNSPECIFIED for both"
    )]
    Direction { value: i32 },
}

// === impl TapFilter ===

impl TapFilter {
    /// Validates a watcher's request.
    pub fn from_request(request: &ObserveRequest) -> Result<Self, InvalidFilter> {
        Ok(Self {
            authority: parse_authority(&request.authority)?,
            path_prefix: parse_path_prefix(&request.path_prefix)?,
            direction: parse_direction(request.direction)?,
            limit: parse_limit(request.limit)?,
        })
    }

    /// Whether `event` is one the watcher asked for.
    ///
    /// The authority is compared without regard to ASCII case, as host names are; the path
    /// prefix is a plain string prefix (`/api` matches `/api/users` and `/apis`).
    pub fn matches(&self, event: &RequestEvent) -> bool {
        self.direction.is_none_or(|d| d == event.direction)
            && self
                .authority
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case(&event.authority))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| event.path.starts_with(p))
    }

    /// The authority requests must name, if the watcher chose one.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The prefix paths must start with, if the watcher chose one.
    pub fn path_prefix(&self) -> Option<&str> {
        self.path_prefix.as_deref()
    }

    /// The direction requests must flow, if the watcher chose one.
    pub fn direction(&self) -> Option<Direction> {
        self.direction
    }

    /// How many request events the watcher wants before the stream ends; `None` for no end.
    pub fn limit(&self) -> Option<NonZeroU32> {
        self.limit
    }
}

fn parse_authority(authority: &str) -> Result<Option<String>, InvalidFilter> {
    if authority.is_empty() {
        return Ok(None);
    }
    if authority.len() > MAX_AUTHORITY_LEN {
        return Err(InvalidFilter::AuthorityTooLong {
            len: authority.len(),
        });
    }
    if !is_request_authority(authority) {
        return Err(InvalidFilter::Authority {
            authority: authority.to_owned(),
        });
    }
    Ok(Some(authority.to_owned()))
}

/// `host` or `host:port`, as a request names it. `http::uri::Authority` alone is not enough: it
/// accepts user info and does not check that a port is a number.
fn is_request_authority(authority: &str) -> bool {
    if authority.contains('@') || !authority.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let Ok(parsed) = http::uri::Authority::try_from(authority) else {
        return false;
    };
    match authority[parsed.host().len()..].strip_prefix(':') {
        None => parsed.host().len() == authority.len(),
        Some(port) => port.parse::<u16>().is_ok(),
    }
}

fn parse_path_prefix(prefix: &str) -> Result<Option<String>, InvalidFilter> {
    if prefix.is_empty() {
        return Ok(None);
    }
    if prefix.len() > MAX_PATH_PREFIX_LEN {
        return Err(InvalidFilter::PathPrefixTooLong { len: prefix.len() });
    }
    if !prefix.starts_with('/') {
        return Err(InvalidFilter::PathPrefixNotAbsolute {
            prefix: prefix.to_owned(),
        });
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidFilter::PathPrefixCharacters {
            prefix: prefix.to_owned(),
        });
    }
    if prefix.contains(['?', '#']) {
        return Err(InvalidFilter::PathPrefixQuery {
            prefix: prefix.to_owned(),
        });
    }
    Ok(Some(prefix.to_owned()))
}

fn parse_direction(value: i32) -> Result<Option<Direction>, InvalidFilter> {
    match ProtoDirection::try_from(value) {
        Ok(ProtoDirection::Unspecified) => Ok(None),
        Ok(ProtoDirection::Inbound) => Ok(Some(Direction::Inbound)),
        Ok(ProtoDirection::Outbound) => Ok(Some(Direction::Outbound)),
        Err(_) => Err(InvalidFilter::Direction { value }),
    }
}

fn parse_limit(limit: u32) -> Result<Option<NonZeroU32>, InvalidFilter> {
    if limit > MAX_LIMIT {
        return Err(InvalidFilter::LimitTooLarge { limit });
    }
    Ok(NonZeroU32::new(limit))
}

// === impl InvalidFilter ===

impl From<InvalidFilter> for Status {
    fn from(error: InvalidFilter) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use super::*;

    fn event(direction: Direction, authority: &str, path: &str) -> RequestEvent {
        crate::tap::test_event(direction, authority, path)
    }

    fn filter(authority: &str, path_prefix: &str, direction: ProtoDirection) -> TapFilter {
        TapFilter::from_request(&ObserveRequest {
            authority: authority.to_owned(),
            path_prefix: path_prefix.to_owned(),
            limit: 0,
            direction: direction.into(),
        })
        .unwrap()
    }

    const WEB: &str = "web.default.svc.cluster.local:80";

    #[test]
    fn an_empty_request_matches_everything_forever() {
        let any = TapFilter::from_request(&ObserveRequest::default()).unwrap();
        assert_eq!(any, TapFilter::default());
        assert_eq!(any.limit(), None);
        assert!(any.matches(&event(Direction::Inbound, WEB, "/")));
        assert!(any.matches(&event(Direction::Outbound, "other:8080", "/x")));
        assert!(any.matches(&event(Direction::Outbound, "", "")));
    }

    #[test]
    fn authority_matches_exactly_but_without_regard_to_case() {
        let f = filter(WEB, "", ProtoDirection::Unspecified);
        assert_eq!(f.authority(), Some(WEB));
        assert!(f.matches(&event(Direction::Inbound, WEB, "/")));
        assert!(f.matches(&event(
            Direction::Inbound,
            "Web.Default.svc.cluster.local:80",
            "/"
        )));
        // Neither a longer, a shorter, nor another port's authority is the same one.
        assert!(!f.matches(&event(
            Direction::Inbound,
            "web.default.svc.cluster.local:8080",
            "/"
        )));
        assert!(!f.matches(&event(
            Direction::Inbound,
            "web.default.svc.cluster.local",
            "/"
        )));
        assert!(!f.matches(&event(
            Direction::Inbound,
            "xweb.default.svc.cluster.local:80",
            "/"
        )));
    }

    #[test]
    fn path_prefix_is_a_plain_prefix() {
        let f = filter("", "/api", ProtoDirection::Unspecified);
        assert_eq!(f.path_prefix(), Some("/api"));
        assert!(f.matches(&event(Direction::Inbound, WEB, "/api")));
        assert!(f.matches(&event(Direction::Inbound, WEB, "/api/users/7")));
        assert!(f.matches(&event(Direction::Inbound, WEB, "/apis")));
        assert!(!f.matches(&event(Direction::Inbound, WEB, "/ap")));
        assert!(!f.matches(&event(Direction::Inbound, WEB, "/v1/api")));
        assert!(!f.matches(&event(Direction::Inbound, WEB, "/API")));
    }

    #[test]
    fn direction_selects_one_side_and_unspecified_both() {
        let inbound = filter("", "", ProtoDirection::Inbound);
        let outbound = filter("", "", ProtoDirection::Outbound);
        let both = filter("", "", ProtoDirection::Unspecified);
        assert_eq!(inbound.direction(), Some(Direction::Inbound));
        assert_eq!(both.direction(), None);
        let ev_in = event(Direction::Inbound, WEB, "/");
        let ev_out = event(Direction::Outbound, WEB, "/");
        assert!(inbound.matches(&ev_in) && !inbound.matches(&ev_out));
        assert!(outbound.matches(&ev_out) && !outbound.matches(&ev_in));
        assert!(both.matches(&ev_in) && both.matches(&ev_out));
    }

    #[test]
    fn every_condition_must_hold() {
        let f = filter(WEB, "/api", ProtoDirection::Outbound);
        assert!(f.matches(&event(Direction::Outbound, WEB, "/api/x")));
        assert!(!f.matches(&event(Direction::Inbound, WEB, "/api/x")));
        assert!(!f.matches(&event(Direction::Outbound, "other:80", "/api/x")));
        assert!(!f.matches(&event(Direction::Outbound, WEB, "/web")));
    }

    #[test]
    fn limit_zero_is_none_and_the_maximum_is_accepted() {
        let limited = |limit| {
            TapFilter::from_request(&ObserveRequest {
                limit,
                ..Default::default()
            })
        };
        assert_eq!(limited(0).unwrap().limit(), None);
        assert_eq!(limited(3).unwrap().limit(), NonZeroU32::new(3));
        assert_eq!(
            limited(MAX_LIMIT).unwrap().limit(),
            NonZeroU32::new(MAX_LIMIT)
        );
        assert_eq!(
            limited(MAX_LIMIT + 1).unwrap_err(),
            InvalidFilter::LimitTooLarge {
                limit: MAX_LIMIT + 1
            }
        );
    }

    fn refused(request: ObserveRequest) -> InvalidFilter {
        TapFilter::from_request(&request).unwrap_err()
    }

    fn with_prefix(prefix: &str) -> ObserveRequest {
        ObserveRequest {
            path_prefix: prefix.to_owned(),
            ..Default::default()
        }
    }

    fn with_authority(authority: &str) -> ObserveRequest {
        ObserveRequest {
            authority: authority.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_path_prefixes_are_refused_with_what_to_fix() {
        assert!(matches!(
            refused(with_prefix("api")),
            InvalidFilter::PathPrefixNotAbsolute { .. }
        ));
        assert!(matches!(
            refused(with_prefix("/search?q=x")),
            InvalidFilter::PathPrefixQuery { .. }
        ));
        assert!(matches!(
            refused(with_prefix("/page#top")),
            InvalidFilter::PathPrefixQuery { .. }
        ));
        assert!(matches!(
            refused(with_prefix("/a b")),
            InvalidFilter::PathPrefixCharacters { .. }
        ));
        assert!(matches!(
            refused(with_prefix("/caf\u{e9}")),
            InvalidFilter::PathPrefixCharacters { .. }
        ));
        let long = format!("/{}", "a".repeat(MAX_PATH_PREFIX_LEN));
        assert_eq!(
            refused(with_prefix(&long)),
            InvalidFilter::PathPrefixTooLong {
                len: MAX_PATH_PREFIX_LEN + 1
            }
        );
        let longest = format!("/{}", "a".repeat(MAX_PATH_PREFIX_LEN - 1));
        assert!(TapFilter::from_request(&with_prefix(&longest)).is_ok());

        let message = refused(with_prefix("api")).to_string();
        assert!(message.contains("must start with '/'"), "{message}");
    }

    #[test]
    fn bad_authorities_are_refused_with_what_to_fix() {
        for bad in [
            "http://web:80",
            "user@web:80",
            "web:80/path",
            "web :80",
            "web:port",
            "web:99999",
            "web:",
        ] {
            assert!(
                matches!(
                    refused(with_authority(bad)),
                    InvalidFilter::Authority { .. }
                ),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_AUTHORITY_LEN + 1);
        assert_eq!(
            refused(with_authority(&long)),
            InvalidFilter::AuthorityTooLong {
                len: MAX_AUTHORITY_LEN + 1
            }
        );
        for good in [WEB, "web", "10.0.0.1:8080", "[::1]:80"] {
            assert!(
                TapFilter::from_request(&with_authority(good)).is_ok(),
                "{good}"
            );
        }
        let message = refused(with_authority("user@web:80")).to_string();
        assert!(message.contains("host:port"), "{message}");
    }

    #[test]
    fn unknown_directions_are_refused() {
        let error = refused(ObserveRequest {
            direction: 7,
            ..Default::default()
        });
        assert_eq!(error, InvalidFilter::Direction { value: 7 });
        assert!(error.to_string().contains("DIRECTION_INBOUND"));
    }

    #[test]
    fn refusals_become_invalid_argument() {
        let status = Status::from(refused(with_prefix("api")));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("must start with '/'"));
    }
}
