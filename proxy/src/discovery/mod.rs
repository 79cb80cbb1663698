//! Discovery: what the proxy knows about the places it sends traffic to, kept current.
//!
//! The proxy asks about a [`Target`] (a service authority, or the original destination address of
//! a redirected connection) and gets back a [`DestinationWatch`]: a `tokio::sync::watch` receiver
//! that holds `None` until the first answer, then always the latest whole [`Destination`]
//! (endpoints with their identities and tunnel metadata, split backends, protocol hints). Each
//! answer replaces the previous one whole, exactly as the controller's `Update`s do, so a consumer
//! never merges anything: it reads the latest value and rebuilds.
//!
//! This module owns:
//! - [`destination`]: the validated domain types, and [`Destination::from_update`], the one place
//!   where wire data becomes trusted data (bad entries are dropped one by one, never the update).
//! - [`grpc`]: [`GrpcDiscovery`], the controller's `Destination.Get` streams, one per watched
//!   target, reconnecting with backoff and keeping the last good answer while the controller is
//!   away.
//! - [`static_file`]: [`StaticDiscovery`], answers from a JSON file, for tests and demos.
//! - [`backoff`]: the reconnect delays, as a small deterministic state machine.
//!
//! Both sources implement [`Resolve`], so the binary picks one by flag and nothing downstream
//! knows which it got.

pub mod backoff;
pub mod destination;
pub mod grpc;
pub mod static_file;
mod target;

use std::sync::Arc;

use tokio::sync::watch;

pub use backoff::ReconnectBackoff;
pub use destination::{
    Destination, EndpointMeta, InvalidAddr, RejectReason, Rejection, TunnelMeta,
};
pub use grpc::{GrpcDiscovery, GrpcDiscoveryOptions};
pub use static_file::{FileProblem, StaticDiscovery, StaticDiscoveryError};
pub use target::{InvalidTarget, Target};

/// The latest answer for one target: `None` until the first one arrives.
///
/// A new receiver has already "seen" the current value: read it with `borrow()` before waiting on
/// `changed()`. `changed()` fails only when the source behind it has gone away for good.
pub type DestinationWatch = watch::Receiver<Option<Arc<Destination>>>;

/// A source of destinations that the proxy can watch.
///
/// Object safe, so that the binary can hold an `Arc<dyn Resolve>` chosen at start-up.
pub trait Resolve: Send + Sync {
    /// Starts (or joins) watching `target`. Dropping every receiver of a target stops its watch.
    fn watch(&self, target: Target) -> DestinationWatch;
}
