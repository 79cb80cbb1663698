//! Tap: live request events, as they happen, for operators.
//!
//! The data path publishes one [`RequestEvent`] per HTTP request it finishes (method, authority,
//! path, status, latency, identities; never bodies, never headers) to a [`Tap`]. Publishing costs
//! one atomic load when nobody is watching. Watchers subscribe through the gRPC service served on
//! the tap port and get the events that match their filter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_trust::SpiffeId;
use tokio::sync::broadcast;

use crate::metrics::Direction;

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
