//! Tap: live request events, as they happen, for operators (`mesh tap`).
//!
//! The data path publishes one [`RequestEvent`] per HTTP request it finishes (method, authority,
//! path, status, latency, identities; never bodies, never headers) to a [`Tap`]. Publishing costs
//! one atomic load when nobody is watching. Watchers call `mesh.tap.v1.Tap/Observe` on the tap
//! port and get the events that match their filter:
//!
//! - [`filter`]: the validated filter ([`TapFilter`]) and what makes a request invalid.
//! - [`convert`]: [`RequestEvent`] to the protobuf messages watchers receive.
//! - [`service`]: the gRPC service ([`TapService`]); each call is an [`Observation`] stream.
//! - [`server`]: [`serve`], the tap port with its limits and drain.
//! - [`client`]: [`observe`], the watcher's side.
//!
//! # Security
//!
//! The tap shows who calls whom, on which paths, with which identities, to whoever can reach its
//! port, and it has no authentication of its own. The proxy binary therefore binds it to
//! [`DEFAULT_TAP_ADDR`] (`127.0.0.1:4190`): only processes in the pod's network namespace reach it,
//! and an operator reaches it with `kubectl port-forward pod/<pod> 4190`, which Kubernetes RBAC
//! already guards. The port is also excluded from the inbound redirect, so meshed traffic never
//! lands on it. Events never carry bodies or headers, and paths are published without their
//! query strings, which often hold tokens (the conversion cuts a query a publisher left, as a
//! second line of defence). Binding the tap to another address exposes this metadata to every
//! client that can reach it; the watcher cap and connection cap bound what such clients cost, not
//! what they see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_trust::SpiffeId;
use tokio::sync::broadcast;

use crate::metrics::Direction;

pub mod client;
pub mod convert;
pub mod filter;
pub mod server;
pub mod service;

pub use client::{ObserveError, observe};
pub use filter::{InvalidFilter, TapFilter};
pub use server::{DEFAULT_TAP_ADDR, TapServerConfig, serve};
pub use service::{Observation, TapService};

/// Events buffered per watcher; a watcher that falls further behind loses the oldest ones.
pub const DEFAULT_TAP_CAPACITY: usize = 1024;

/// One finished HTTP request, as the tap reports it.
#[derive(Clone, Debug)]
pub struct RequestEvent {
    pub direction: Direction,
    pub method: http::Method,
    /// The authority the request named (`:authority` or Host).
    pub authority: String,
    /// The path, without the query string (which may hold secrets).
    pub path: String,
    /// The response status; `None` when no response came (see `error`).
    pub status: Option<http::StatusCode>,
    /// Why the request failed without a response.
    pub error: Option<String>,
    /// From the request's arrival to the response headers (or the failure).
    pub latency: Duration,
    /// When the request arrived.
    pub started: SystemTime,
    pub client_id: Option<SpiffeId>,
    pub server_id: Option<SpiffeId>,
    /// The endpoint the request went to (outbound) or came from (inbound), when known.
    pub peer: Option<SocketAddr>,
}

/// Where the data path publishes request events. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tap {
    events: broadcast::Sender<Arc<RequestEvent>>,
}

impl Tap {
    /// A tap whose watchers each buffer up to `capacity` events.
    pub fn new(capacity: usize) -> Self {
        let (events, _) = broadcast::channel(capacity.max(1));
        Self { events }
    }

    /// Whether anyone is watching: callers skip building events when nobody is.
    pub fn is_active(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Publishes `event` to every watcher.
    pub fn publish(&self, event: RequestEvent) {
        if self.is_active() {
            // An error only means the last watcher left in between.
            let _ = self.events.send(Arc::new(event));
        }
    }

    /// A new watcher's stream of events, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RequestEvent>> {
        self.events.subscribe()
    }
}

impl Default for Tap {
    fn default() -> Self {
        Self::new(DEFAULT_TAP_CAPACITY)
    }
}

/// A finished request for the tap's own tests: GET, 200, 1 ms, no identities.
#[cfg(test)]
pub(crate) fn test_event(direction: Direction, authority: &str, path: &str) -> RequestEvent {
    RequestEvent {
        direction,
        method: http::Method::GET,
        authority: authority.to_owned(),
        path: path.to_owned(),
        status: Some(http::StatusCode::OK),
        error: None,
        latency: Duration::from_millis(1),
        started: SystemTime::UNIX_EPOCH,
        client_id: None,
        server_id: None,
        peer: None,
    }
}
