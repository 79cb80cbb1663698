//! The `mesh.tap.v1.Tap` gRPC service: one [`Observation`] per `Observe` call.
//!
//! An observation is a stream over the watcher's own subscription to the [`Tap`], with no task
//! behind it: tonic polls it as the watcher's HTTP/2 stream has room, and drops it when the
//! watcher resets the stream or its connection closes. Dropping it drops the subscription (so
//! [`Tap::is_active`] turns false and publishers stop building events) and frees the watcher's
//! slot. A watcher that reads too slowly is not waited for: the tap's channel discards its oldest
//! events, and the watcher gets one `EventsLost` notice with their count before the newest ones.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{Stream, StreamExt};
use mesh_api::tap::tap_server::{Tap as TapApi, TapServer};
use mesh_api::tap::{ObserveRequest, TapEvent};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tonic::{Request, Response, Status};

use super::{RequestEvent, Tap, TapFilter, convert};

/// Serves `Observe` calls from a [`Tap`], for at most a fixed number of watchers at once.
///
/// Cheap to clone; clones share the watcher slots.
#[derive(Clone, Debug)]
pub struct TapService {
    tap: Tap,
    slots: Arc<Semaphore>,
    max_watchers: usize,
    /// Turns true when the server stops: every observation then ends.
    stopping: watch::Receiver<bool>,
}

/// One watcher's stream of events: the `ObserveStream` of [`TapService`].
///
/// Ends after the watcher's limit, or with `UNAVAILABLE` when the server stops. Holds the
/// watcher's subscription and slot until it ends or is dropped, whichever comes first.
pub struct Observation {
    filter: TapFilter,
    /// Request events still to send before the limit; `None` for no limit.
    remaining: Option<u32>,
    /// `None` once the observation has ended: the subscription and slot are released then, not
    /// when tonic gets around to dropping the stream.
    live: Option<Live>,
}

struct Live {
    events: BroadcastStream<Arc<RequestEvent>>,
    stopping: WatchStream<bool>,
    _slot: OwnedSemaphorePermit,
}

// === impl TapService ===

impl TapService {
    /// A service over `tap` that admits at most `max_watchers` watchers at once. Its observations
    /// end only at their limit or when their watcher leaves; [`super::serve`] also ends them on
    /// drain.
    pub fn new(tap: Tap, max_watchers: usize) -> Self {
        // The sender is dropped at once: the signal never turns true.
        let (_, stopping) = watch::channel(false);
        Self {
            tap,
            slots: Arc::new(Semaphore::new(max_watchers)),
            max_watchers,
            stopping,
        }
    }

    /// Ends every observation, current and future, once `stopping` turns true.
    pub(super) fn stop_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The tonic server wrapping this service, for a `tonic::transport::Server`.
    pub fn into_server(self) -> TapServer<Self> {
        TapServer::new(self)
    }

    /// Starts an observation for `request`, or says why not.
    pub fn start(&self, request: &ObserveRequest) -> Result<Observation, Status> {
        let filter = TapFilter::from_request(request)?;
        if *self.stopping.borrow() {
            return Err(Status::unavailable("the proxy is shutting down"));
        }
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} watchers are already observing this proxy, its maximum; stop one, or try \
                 again later",
                self.max_watchers
            ))
        })?;
        Ok(Observation {
            remaining: filter.limit().map(|limit| limit.get()),
            filter,
            live: Some(Live {
                // Subscribing here, before the response is sent, means a watcher that has its
                // response headers sees every event published after that.
                events: BroadcastStream::new(self.tap.subscribe()),
                stopping: WatchStream::new(self.stopping.clone()),
                _slot: slot,
            }),
        })
    }
}

#[tonic::async_trait]
impl TapApi for TapService {
    type ObserveStream = Observation;

    async fn observe(
        &self,
        request: Request<ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let peer = request.remote_addr();
        match self.start(request.get_ref()) {
            Ok(observation) => {
                tracing::info!(
                    ?peer,
                    authority = ?observation.filter.authority(),
                    path_prefix = ?observation.filter.path_prefix(),
                    direction = ?observation.filter.direction(),
                    limit = ?observation.remaining,
                    "tap: watcher started",
                );
                Ok(Response::new(observation))
            }
            Err(status) => {
                tracing::info!(?peer, code = ?status.code(), reason = status.message(), "tap: watcher refused");
                Err(status)
            }
        }
    }
}

// === impl Observation ===

impl Observation {
    /// The filter this observation applies.
    pub fn filter(&self) -> &TapFilter {
        &self.filter
    }

    fn end(&mut self) {
        if self.live.take().is_some() {
            tracing::debug!("tap: watcher finished");
        }
    }
}

impl Stream for Observation {
    type Item = Result<TapEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(live) = this.live.as_mut() else {
            return Poll::Ready(None);
        };

        // The stop signal first, so that a watcher flooded with events still ends on drain.
        // `None` means the signal's sender is gone without ever stopping: nothing to watch.
        while let Poll::Ready(Some(stopping)) = live.stopping.poll_next_unpin(cx) {
            if stopping {
                this.end();
                return Poll::Ready(Some(Err(Status::unavailable("the proxy is shutting down"))));
            }
        }

        loop {
            // `BroadcastStream` spends Tokio's cooperative budget, so a long run of events that
            // do not match still yields to the runtime.
            match ready!(live.events.poll_next_unpin(cx)) {
                Some(Ok(event)) if this.filter.matches(&event) => {
                    let message = convert::request_event(&event);
                    if let Some(remaining) = this.remaining.as_mut() {
                        *remaining -= 1;
                        if *remaining == 0 {
                            this.end();
                        }
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Some(Ok(_)) => {}
                Some(Err(BroadcastStreamRecvError::Lagged(count))) => {
                    tracing::debug!(count, "tap: a watcher fell behind and lost events");
                    return Poll::Ready(Some(Ok(convert::events_lost(count))));
                }
                // The tap itself is gone: no event will ever come.
                None => {
                    this.end();
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("filter", &self.filter)
            .field("remaining", &self.remaining)
            .field("live", &self.live.is_some())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use futures_util::FutureExt;
    use mesh_api::tap::tap_event::Kind;

    use super::*;
    use crate::metrics::Direction;

    fn event(path: &str) -> RequestEvent {
        crate::tap::test_event(Direction::Inbound, "web:80", path)
    }

    fn path_of(item: Option<Result<TapEvent, Status>>) -> String {
        match item.unwrap().unwrap().kind.unwrap() {
            Kind::Request(request) => request.path,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_limit_ends_the_stream_and_releases_the_subscription_at_once() {
        let tap = Tap::new(16);
        let service = TapService::new(tap.clone(), 4);
        let mut observation = service
            .start(&ObserveRequest {
                limit: 2,
                path_prefix: "/a".to_owned(),
                ..Default::default()
            })
            .unwrap();
        assert!(tap.is_active());
        for path in ["/a1", "/b", "/a2", "/a3"] {
            tap.publish(event(path));
        }
        assert_eq!(path_of(observation.next().await), "/a1");
        assert_eq!(path_of(observation.next().await), "/a2");
        // The observation is not dropped yet, but it holds nothing any more.
        assert!(!tap.is_active());
        assert!(observation.next().await.is_none());
    }

    #[tokio::test]
    async fn slots_are_capped_and_come_back() {
        let tap = Tap::new(16);
        let service = TapService::new(tap, 2);
        let first = service.start(&ObserveRequest::default()).unwrap();
        let _second = service.start(&ObserveRequest::default()).unwrap();
        let refused = service.start(&ObserveRequest::default()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("2 watchers"),
            "{}",
            refused.message()
        );
        drop(first);
        assert!(service.start(&ObserveRequest::default()).is_ok());
    }

    #[tokio::test]
    async fn a_bad_filter_takes_no_slot() {
        let service = TapService::new(Tap::new(16), 1);
        let refused = service
            .start(&ObserveRequest {
                path_prefix: "api".to_owned(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(service.start(&ObserveRequest::default()).is_ok());
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_told_how_many_it_lost_and_goes_on() {
        let tap = Tap::new(4);
        let service = TapService::new(tap.clone(), 1);
        let mut observation = service.start(&ObserveRequest::default()).unwrap();
        for i in 0..10 {
            tap.publish(event(&format!("/{i}")));
        }
        let lost = observation.next().await.unwrap().unwrap();
        assert_eq!(
            lost.kind,
            Some(Kind::Lost(mesh_api::tap::EventsLost { count: 6 }))
        );
        for i in 6..10 {
            assert_eq!(path_of(observation.next().await), format!("/{i}"));
        }
        tap.publish(event("/after"));
        assert_eq!(path_of(observation.next().await), "/after");
    }

    #[tokio::test]
    async fn stopping_ends_observations_with_unavailable_and_refuses_new_ones() {
        let tap = Tap::new(16);
        let (stop, stopping) = watch::channel(false);
        let service = TapService::new(tap.clone(), 4).stop_on(stopping);
        let mut observation = service.start(&ObserveRequest::default()).unwrap();
        assert!(observation.next().now_or_never().is_none());
        stop.send_replace(true);
        let ended = observation.next().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        assert!(!tap.is_active());
        assert!(observation.next().await.is_none());
        let refused = service.start(&ObserveRequest::default()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
    }
}
