//! The `Destination` gRPC service: one task keeps the [`Index`] current, each stream follows it.
//!
//! The index task waits on [`Cache::changes`], rebuilds the index on a blocking thread (a
//! cluster of 10,000 Services takes milliseconds, which must not stall the streams sharing the
//! runtime) and publishes it on a `watch` channel. A burst of watch events while a build runs
//! costs one more build, not one per event. Problems found in the objects are logged when they
//! appear, not at every build.
//!
//! A stream is a plain future over the channel, polled by tonic, with no task of its own: it
//! takes the latest index, resolves its target, and sends the result when it differs from what
//! it sent last. When its Service's entry is the very one its last answer was built from (the
//! index carries unchanged entries over), it skips even that: a change elsewhere in the cluster
//! costs it one pointer comparison. Nothing is sent before the cache has listed every kind, since an answer from a
//! half-filled cache would tell proxies that existing Services do not exist. A stream ends when
//! its client goes away (tonic drops it) or when the service shuts down.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use mesh_api::discovery::destination_server::{Destination, DestinationServer};
use mesh_api::discovery::{GetDestination, Update};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::config::{ConfigError, DiscoveryConfig, Settings};
use super::index::{Index, Problem};
use super::metrics::{DiscoveryMetrics, OpenStream};
use super::resolve::Basis;
use super::target::Target;
use crate::cache::Cache;

/// The stream of updates of one `Destination.Get`.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;

/// The controller's `Destination` service, answering from the local cluster's [`Cache`].
///
/// Cheap to clone; clones share the index. The index task stops once the service and every
/// stream it opened are gone.
#[derive(Clone, Debug)]
pub struct DiscoveryService {
    settings: Arc<Settings>,
    index: watch::Receiver<Arc<Index>>,
    metrics: DiscoveryMetrics,
}

// === impl DiscoveryService ===

impl DiscoveryService {
    /// Validates `config` and starts the index task on `cache`. Must be called within a Tokio
    /// runtime.
    pub fn new(
        config: DiscoveryConfig,
        cache: Cache,
        metrics: DiscoveryMetrics,
    ) -> Result<Self, ConfigError> {
        let settings = Arc::new(config.validate()?);
        let (publish, index) = watch::channel(Arc::new(Index::empty(settings.clone())));
        tokio::spawn(maintain_index(
            settings.clone(),
            cache,
            publish,
            metrics.clone(),
        ));
        Ok(Self {
            settings,
            index,
            metrics,
        })
    }

    /// The service wrapped for a tonic `Router`.
    pub fn into_server(self) -> DestinationServer<Self> {
        DestinationServer::new(self)
    }

    /// The latest index (possibly not ready yet).
    pub fn index(&self) -> Arc<Index> {
        self.index.borrow().clone()
    }
}

#[tonic::async_trait]
impl Destination for DiscoveryService {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: Request<GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let request = request.into_inner();
        let target =
            match Target::from_proto(request.target.as_ref(), &self.settings.cluster_domain) {
                Ok(target) => target,
                Err(error) => {
                    self.metrics.rejected.inc();
                    debug!(caller = %request.caller_identity, %error, "refused a Destination.Get");
                    return Err(Status::invalid_argument(error.to_string()));
                }
            };
        debug!(caller = %request.caller_identity, %target, "Destination.Get opened");
        let stream = follow(target, self.index.clone(), self.metrics.clone());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A stream's state between two updates.
struct Follower {
    target: Target,
    index: watch::Receiver<Arc<Index>>,
    /// What the last answer was built from.
    basis: Option<Basis>,
    last: Option<Update>,
    metrics: DiscoveryMetrics,
    _open: OpenStream,
}

/// The updates of one target: the first once the index is ready, then one per change of the
/// answer.
fn follow(
    target: Target,
    index: watch::Receiver<Arc<Index>>,
    metrics: DiscoveryMetrics,
) -> impl Stream<Item = Result<Update, Status>> + Send + 'static {
    let follower = Follower {
        target,
        index,
        basis: None,
        last: None,
        _open: OpenStream::new(&metrics.streams),
        metrics,
    };
    futures_util::stream::unfold(follower, |mut follower| async move {
        loop {
            let index = follower.index.borrow_and_update().clone();
            if index.is_ready() {
                let basis = index.basis(&follower.target);
                // The same Service entry as last time: the answer cannot have changed.
                let unchanged = follower
                    .basis
                    .as_ref()
                    .is_some_and(|last| last.same_as(&basis));
                if !unchanged {
                    let update = index.answer(&basis);
                    follower.basis = Some(basis);
                    if follower.last.as_ref() != Some(&update) {
                        follower.last = Some(update.clone());
                        follower.metrics.updates.inc();
                        return Some((Ok(update), follower));
                    }
                }
            }
            if follower.index.changed().await.is_err() {
                // The index task has stopped: the service is shutting down.
                return None;
            }
        }
    })
}

/// Rebuilds the index after every batch of cache changes, until nobody reads it.
async fn maintain_index(
    settings: Arc<Settings>,
    cache: Cache,
    publish: watch::Sender<Arc<Index>>,
    metrics: DiscoveryMetrics,
) {
    let mut changes = cache.changes();
    let mut reported: BTreeSet<Problem> = BTreeSet::new();
    let mut was_ready = false;
    loop {
        changes.borrow_and_update();
        let started = Instant::now();
        let build = {
            let (settings, cache) = (settings.clone(), cache.clone());
            let previous = publish.borrow().clone();
            tokio::task::spawn_blocking(move || {
                let (mut index, problems) = Index::from_cache(settings, &cache);
                index.reuse_unchanged(&previous);
                (index, problems)
            })
        };
        let (index, problems) = match build.await {
            Ok(built) => built,
            Err(error) => {
                // Only a panic in the build gets here; keep serving the last index.
                warn!(%error, "the discovery index could not be rebuilt; keeping the last one");
                if !wait_for_change(&mut changes, &publish).await {
                    return;
                }
                continue;
            }
        };
        metrics
            .index_build_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.index_builds.inc();

        let problems: BTreeSet<Problem> = problems.into_iter().collect();
        for problem in problems.difference(&reported) {
            warn!(object = %problem.object, "{}", problem.message);
        }
        reported = problems;
        if index.is_ready() && !was_ready {
            was_ready = true;
            info!(services = index.len(), "discovery index ready");
        }
        publish.send_replace(Arc::new(index));

        if !wait_for_change(&mut changes, &publish).await {
            return;
        }
    }
}

/// Waits for the next cache change; false when the cache stopped or nobody reads the index.
async fn wait_for_change(
    changes: &mut watch::Receiver<u64>,
    publish: &watch::Sender<Arc<Index>>,
) -> bool {
    tokio::select! {
        changed = changes.changed() => changed.is_ok(),
        () = publish.closed() => false,
    }
}
