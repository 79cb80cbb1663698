//! From the data path's [`RequestEvent`] to the `mesh.tap.v1` messages a watcher receives.
//!
//! The conversion copies what the event holds and nothing more: absent values become the
//! protobuf defaults (an empty identity, status 0), never a guess. It also cuts a query string
//! from the path, should a publisher have left one, so that a mistake elsewhere cannot send a
//! token in a URL to every watcher.

use std::time::{Duration, UNIX_EPOCH};

use mesh_api::tap::{self as proto, tap_event};

use super::RequestEvent;
use crate::metrics::Direction;

/// The message for one finished request.
pub fn request_event(event: &RequestEvent) -> proto::TapEvent {
    proto::TapEvent {
        kind: Some(tap_event::Kind::Request(proto::RequestEvent::from(event))),
    }
}

/// The notice that `count` events were discarded before the watcher read them.
pub fn events_lost(count: u64) -> proto::TapEvent {
    proto::TapEvent {
        kind: Some(tap_event::Kind::Lost(proto::EventsLost { count })),
    }
}

impl From<&RequestEvent> for proto::RequestEvent {
    fn from(event: &RequestEvent) -> Self {
        Self {
            direction: proto::Direction::from(event.direction).into(),
            method: event.method.as_str().to_owned(),
            authority: event.authority.clone(),
            path: without_query(&event.path).to_owned(),
            status_code: event.status.map_or(0, |status| u32::from(status.as_u16())),
            error: event.error.clone().unwrap_or_default(),
            latency_micros: micros(event.latency),
            // A clock set before 1970 has no meaningful start time to report.
            start_unix_micros: event.started.duration_since(UNIX_EPOCH).map_or(0, micros),
            client_identity: event
                .client_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            server_identity: event
                .server_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            peer_addr: event.peer.map(|peer| peer.to_string()).unwrap_or_default(),
        }
    }
}

impl From<Direction> for proto::Direction {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Inbound => Self::Inbound,
            Direction::Outbound => Self::Outbound,
        }
    }
}

fn without_query(path: &str) -> &str {
    path.split_once(['?', '#']).map_or(path, |(path, _)| path)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;
    use std::time::SystemTime;

    use mesh_trust::SpiffeId;

    use super::*;

    fn bare() -> RequestEvent {
        RequestEvent {
            direction: Direction::Inbound,
            method: http::Method::GET,
            authority: String::new(),
            path: String::new(),
            status: None,
            error: None,
            latency: Duration::ZERO,
            started: UNIX_EPOCH,
            client_id: None,
            server_id: None,
            peer: None,
        }
    }

    #[test]
    fn every_field_is_copied() {
        let client = SpiffeId::parse("spiffe://west/ns/default/sa/web").unwrap();
        let server = SpiffeId::parse("spiffe://east/ns/shop/sa/cart").unwrap();
        let peer: SocketAddr = "10.1.2.3:4143".parse().unwrap();
        let event = RequestEvent {
            direction: Direction::Outbound,
            method: http::Method::POST,
            authority: "cart.shop.svc.cluster.local:8080".to_owned(),
            path: "/v1/orders".to_owned(),
            status: Some(http::StatusCode::CREATED),
            error: None,
            latency: Duration::from_micros(1_234),
            started: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            client_id: Some(client),
            server_id: Some(server),
            peer: Some(peer),
        };
        assert_eq!(
            proto::RequestEvent::from(&event),
            proto::RequestEvent {
                direction: proto::Direction::Outbound.into(),
                method: "POST".to_owned(),
                authority: "cart.shop.svc.cluster.local:8080".to_owned(),
                path: "/v1/orders".to_owned(),
                status_code: 201,
                error: String::new(),
                latency_micros: 1_234,
                start_unix_micros: 1_700_000_000_123_456,
                client_identity: "spiffe://west/ns/default/sa/web".to_owned(),
                server_identity: "spiffe://east/ns/shop/sa/cart".to_owned(),
                peer_addr: "10.1.2.3:4143".to_owned(),
            }
        );
    }

    #[test]
    fn absent_values_stay_empty() {
        let converted = proto::RequestEvent::from(&bare());
        assert_eq!(
            converted,
            proto::RequestEvent {
                direction: proto::Direction::Inbound.into(),
                method: "GET".to_owned(),
                ..Default::default()
            }
        );
        assert!(converted.client_identity.is_empty());
        assert!(converted.server_identity.is_empty());
        assert!(converted.peer_addr.is_empty());
        assert_eq!(converted.status_code, 0);
    }

    #[test]
    fn a_failure_reports_its_error_and_no_status() {
        let event = RequestEvent {
            error: Some("connect refused".to_owned()),
            ..bare()
        };
        let converted = proto::RequestEvent::from(&event);
        assert_eq!(converted.status_code, 0);
        assert_eq!(converted.error, "connect refused");
    }

    #[test]
    fn a_query_left_by_a_publisher_is_cut() {
        for (path, published) in [
            ("/login?token=secret", "/login"),
            ("/page#frag", "/page"),
            ("/?", "/"),
            ("/plain", "/plain"),
        ] {
            let event = RequestEvent {
                path: path.to_owned(),
                ..bare()
            };
            assert_eq!(proto::RequestEvent::from(&event).path, published);
        }
    }

    #[test]
    fn times_out_of_range_saturate_or_fall_to_zero() {
        let event = RequestEvent {
            latency: Duration::MAX,
            started: UNIX_EPOCH - Duration::from_secs(1),
            ..bare()
        };
        let converted = proto::RequestEvent::from(&event);
        assert_eq!(converted.latency_micros, u64::MAX);
        assert_eq!(converted.start_unix_micros, 0);
        // And a real clock converts to whole microseconds since the epoch.
        let now = SystemTime::now();
        let expected = micros(now.duration_since(UNIX_EPOCH).unwrap());
        let converted = proto::RequestEvent::from(&RequestEvent {
            started: now,
            ..bare()
        });
        assert_eq!(converted.start_unix_micros, expected);
    }

    #[test]
    fn wrappers_say_which_kind_they_carry() {
        let lost = events_lost(9);
        assert_eq!(
            lost.kind,
            Some(tap_event::Kind::Lost(proto::EventsLost { count: 9 }))
        );
        let request = request_event(&bare());
        assert!(matches!(request.kind, Some(tap_event::Kind::Request(_))));
    }
}
