//! Counting the streams a connection carries, to close it once it has been idle for a while.
//!
//! Both ends of the hop close connections nobody uses: the client so that it does not hold
//! sockets to endpoints it no longer talks to, the server so that a peer which connects and
//! never sends a request holds its connection for a bounded time. A stream counts from its
//! request until its response body is done (or its upgraded byte stream closes): an open
//! gRPC stream is not idleness, however quiet it is.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;

use super::{Body, BoxError};

/// The number of streams in flight on one connection.
#[derive(Clone, Debug)]
pub(crate) struct ActiveStreams {
    state: Arc<watch::Sender<Count>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    /// Streams in flight now.
    active: usize,
    /// Streams ever started: a stream that starts and ends between two looks at `active`
    /// still shows here.
    started: u64,
}

/// One stream in flight; dropping it ends the stream's share.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    state: Arc<watch::Sender<Count>>,
}

/// A body that holds an [`ActiveGuard`] until it is dropped, so the stream counts as active
/// until its body has been sent.
#[derive(Debug)]
struct GuardedBody<G> {
    inner: Body,
    _guard: G,
}

/// `body`, holding `guard` until the body is dropped (sent to the end, or abandoned): whatever
/// the guard counts (an active stream, a request in flight to an endpoint) lasts as long as the
/// response does, not just until its headers.
pub(crate) fn hold_until_done<G>(body: Body, guard: G) -> Body
where
    G: Send + Sync + Unpin + 'static,
{
    Body::new(GuardedBody {
        inner: body,
        _guard: guard,
    })
}

// === impl ActiveStreams ===

impl ActiveStreams {
    pub(crate) fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(Count::default())),
        }
    }

    /// Counts one more stream until the guard is dropped.
    pub(crate) fn enter(&self) -> ActiveGuard {
        self.state.send_modify(|c| {
            c.active += 1;
            c.started += 1;
        });
        ActiveGuard {
            state: self.state.clone(),
        }
    }

    /// Streams in flight now.
    pub(crate) fn count(&self) -> usize {
        self.state.borrow().active
    }

    /// Resolves once no stream has been in flight, nor started, for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut state = self.state.subscribe();
        loop {
            // The sender lives in `self`, so these waits cannot fail; if they ever did, the
            // connection would simply never count as idle.
            let Ok(idle) = state.wait_for(|c| c.active == 0).await.map(|c| *c) else {
                return std::future::pending().await;
            };
            let busy = state.wait_for(|c| c.active != 0 || c.started != idle.started);
            if tokio::time::timeout(timeout, busy).await.is_err() {
                return;
            }
        }
    }
}

// === impl ActiveGuard ===

impl ActiveGuard {
    /// `body`, holding this guard until the body is dropped.
    pub(crate) fn hold_until_done(self, body: Body) -> Body {
        hold_until_done(body, self)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.state
            .send_modify(|c| c.active = c.active.saturating_sub(1));
    }
}

// === impl GuardedBody ===

impl<G: Unpin> HttpBody for GuardedBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_timeout_with_no_stream() {
        let active = ActiveStreams::new();
        let guard = active.enter();
        let body = guard.hold_until_done(Full::new(Bytes::from("x")).map_err(Into::into).boxed());
        assert_eq!(active.count(), 1);

        let idle = tokio::spawn({
            let active = active.clone();
            async move { active.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!idle.is_finished(), "idle while a body was still held");

        let started = tokio::time::Instant::now();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "x");
        assert_eq!(active.count(), 0);
        idle.await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_in_between_restarts_the_wait() {
        let active = ActiveStreams::new();
        let idle = tokio::spawn({
            let active = active.clone();
            async move { active.idle_for(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(active.enter());
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!idle.is_finished());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(idle.is_finished());
    }
}
