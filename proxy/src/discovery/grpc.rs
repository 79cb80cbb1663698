//! Destinations from the controller: one `Destination.Get` stream per watched target.
//!
//! Each target gets one background task and one `watch` channel, however many parts of the proxy
//! watch it. The task opens the stream, decodes each `Update` into a [`Destination`] and
//! publishes it; when the stream fails or ends it reconnects after a jittered, growing delay
//! ([`ReconnectBackoff`]). While the controller is away the last good answer stays published:
//! endpoints that worked a moment ago are a far better guess than none, and the controller going
//! down must not take the data plane with it. When the last receiver of a target is dropped, the
//! task ends, which cancels its stream.
//!
//! The caller builds the [`Channel`] (TLS, timeouts and HTTP/2 keep-alives are its choice); a
//! keep-alive is what notices a controller that vanished without closing its connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mesh_api::discovery::destination_client::DestinationClient;
use mesh_api::discovery::{GetDestination, Update};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

use super::backoff::{Backoff, ReconnectBackoff};
use super::{Destination, DestinationWatch, Resolve, Target};

/// How [`GrpcDiscovery`] talks to the controller.
#[derive(Clone, Debug, Default)]
pub struct GrpcDiscoveryOptions {
    /// This proxy's SPIFFE ID, sent with each request for the controller's logs and policy.
    pub caller_identity: String,
    /// The delays between reconnection attempts.
    pub backoff: ReconnectBackoff,
}

/// Watches destinations through the controller's `Destination` service.
///
/// Cheap to clone; clones share their streams. A target's task lives as long as its receivers,
/// not as long as this value: watchers keep getting updates after the resolver is dropped.
#[derive(Clone, Debug)]
pub struct GrpcDiscovery {
    shared: Arc<Shared>,
}

type Publisher = watch::Sender<Option<Arc<Destination>>>;

#[derive(Debug)]
struct Shared {
    client: DestinationClient<Channel>,
    options: GrpcDiscoveryOptions,
    /// The targets being watched, each with the sender its task publishes on.
    watches: Mutex<HashMap<Target, Publisher>>,
}

// === impl GrpcDiscovery ===

impl GrpcDiscovery {
    /// Watches through `channel`, which may be lazy: nothing is sent until the first watch.
    pub fn new(channel: Channel, options: GrpcDiscoveryOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                client: DestinationClient::new(channel),
                options,
                watches: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Resolve for GrpcDiscovery {
    /// Joins the target's watch, or starts one (this spawns a task, so it must be called within
    /// a Tokio runtime).
    fn watch(&self, target: Target) -> DestinationWatch {
        let mut watches = self.shared.lock();
        if let Some(publisher) = watches.get(&target) {
            // A closed publisher belongs to a task that is on its way out (see `unwatched`);
            // start afresh rather than join it.
            if !publisher.is_closed() {
                return publisher.subscribe();
            }
        }
        let (publisher, receiver) = watch::channel(None);
        watches.insert(target.clone(), publisher.clone());
        drop(watches);

        let span = info_span!("discovery", %target);
        tokio::spawn(run(self.shared.clone(), target, publisher).instrument(span));
        receiver
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Target, Publisher>> {
        // The map is consistent after every statement that changes it, so a panic elsewhere
        // while it was held leaves nothing half-done.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One target's task: follows the controller until nobody watches any more.
async fn run(shared: Arc<Shared>, target: Target, publisher: Publisher) {
    tokio::select! {
        () = unwatched(&shared, &target, &publisher) => {
            debug!("no watchers left; closing the stream");
        }
        () = follow(&shared, &target, &publisher) => {}
    }
}

/// Completes once the target has no receivers, having removed it from the map.
///
/// The check is repeated under the map's lock because `watch` subscribes under that lock: either
/// `watch` saw the publisher closed and replaced it, or this sees the new receiver and carries
/// on. Without the lock a watcher could join a task that is about to stop.
async fn unwatched(shared: &Shared, target: &Target, publisher: &Publisher) {
    loop {
        publisher.closed().await;
        let mut watches = shared.lock();
        if publisher.is_closed() {
            if watches
                .get(target)
                .is_some_and(|current| current.same_channel(publisher))
            {
                watches.remove(target);
            }
            return;
        }
    }
}

/// Streams the target's updates forever, reconnecting after each failure.
async fn follow(shared: &Shared, target: &Target, publisher: &Publisher) {
    let mut backoff = Backoff::new(shared.options.backoff);
    loop {
        stream_once(shared, target, publisher, &mut backoff).await;
        let delay = backoff.next_delay(&mut rand::rng());
        debug!(?delay, "reconnecting to the controller after a delay");
        tokio::time::sleep(delay).await;
    }
}

/// How long a stream must have lived for its end to reset the reconnect backoff.
const HEALTHY_STREAM: std::time::Duration = std::time::Duration::from_secs(30);

fn stream_ended(backoff: &mut Backoff, delivered: bool, opened: tokio::time::Instant) {
    if delivered && opened.elapsed() >= HEALTHY_STREAM {
        backoff.reset();
    }
}

/// Opens one stream and publishes its updates until it fails or ends.
async fn stream_once(
    shared: &Shared,
    target: &Target,
    publisher: &Publisher,
    backoff: &mut Backoff,
) {
    let request = GetDestination {
        target: Some(target.to_proto()),
        caller_identity: shared.options.caller_identity.clone(),
    };
    let mut stream = match shared.client.clone().get(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            warn!(code = ?status.code(), message = status.message(), "cannot reach the controller; keeping the last answer");
            return;
        }
    };
    let opened = tokio::time::Instant::now();
    let mut delivered = false;
    // Only a stream that delivered and then lived a while was healthy: resetting the backoff on
    // every message would let a controller (or a balancer in front of it) that answers and then
    // resets the stream drive every proxy into a tight reconnect loop.
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                delivered = true;
                publish(publisher, update);
            }
            Ok(None) => {
                info!("the controller ended the stream; keeping the last answer");
                stream_ended(backoff, delivered, opened);
                return;
            }
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "the controller stream failed; keeping the last answer");
                stream_ended(backoff, delivered, opened);
                return;
            }
        }
    }
}

/// Decodes an update and publishes it, unless it is what the watchers already have: a reconnect
/// resends the current state, which must not wake every watcher to rebuild the same thing.
fn publish(publisher: &Publisher, update: Update) {
    let (destination, rejections) = Destination::from_update(update);
    for rejection in &rejections {
        warn!(%rejection, "dropped an invalid entry from the controller");
    }
    publisher.send_if_modified(|current| {
        if current.as_deref() == Some(&destination) {
            return false;
        }
        *current = Some(Arc::new(destination));
        true
    });
}
