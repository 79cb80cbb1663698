//! Leader election with a `coordination.k8s.io/v1` Lease, so that two or more controller
//! replicas can run and exactly one writes (links, mirrors, statuses, failover weights) while
//! every replica serves reads (discovery, DNS, identity, bundles).
//!
//! The algorithm is client-go's: a replica that finds the Lease free, or held by someone whose
//! record it has seen unchanged for `leaseDurationSeconds` *by its own clock* (so clock skew
//! between nodes does not matter), takes it; the holder renews it every
//! [`LeaderConfig::retry_period`]; every write is a replace with the Lease's resourceVersion, so
//! two candidates can never both win a round. Each round is bounded by what is left of
//! [`LeaderConfig::renew_deadline`], and a holder that has not renewed within it steps down on
//! its own, even while a request hangs, before anyone else may take over (the deadline is shorter
//! than the lease duration). On shutdown the holder releases the Lease (empty holder), so a
//! successor takes over at once instead of after a lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How a replica takes part in the election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// The Lease's namespace (the mesh namespace).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the pod name, made unique).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often candidates try and the holder renews.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one round decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// Create the Lease, held by us.
    Create,
    /// Write the Lease as ours: `renew` when we held it already, else a takeover.
    Take {
        /// Whether we held it already.
        renew: bool,
    },
    /// Someone else holds it and it has not expired.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// Decides a round from the Lease as read (`None`: there is none), given how long this replica
/// has seen its current record unchanged. Plain data, so the rules are tested without an API
/// server.
pub fn decide(lease: Option<&Lease>, identity: &str, unchanged_for: Duration) -> Round {
    let Some(lease) = lease else {
        return Round::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Round::Take { renew: true };
    }
    if holder.is_empty() {
        return Round::Take { renew: false };
    }
    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    if unchanged_for >= Duration::from_secs(duration) {
        Round::Take { renew: false }
    } else {
        Round::Follow { holder }
    }
}

/// The Lease as we write it when taking or renewing it.
fn ours(config: &LeaderConfig, current: Option<&Lease>, renew: bool, now: Timestamp) -> Lease {
    let previous = current.and_then(|l| l.spec.clone()).unwrap_or_default();
    let seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if renew {
                previous.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0) + i32::from(!renew && current.is_some()),
            ),
            ..LeaseSpec::default()
        }),
    }
}

/// Takes part in the election until `shutdown` resolves, publishing whether this replica
/// leads on `leading`. Releases the Lease on the way out if it held it.
pub async fn run(
    client: Client,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_renewal: Option<Instant> = None;
    let mut observed: Option<Observed> = None;
    loop {
        // A round may take what is left of the renew deadline, no more: a hung request must
        // not keep a leader that can no longer renew.
        let started = Instant::now();
        let budget = match last_renewal {
            Some(at) => (at + config.renew_deadline).saturating_duration_since(started),
            None => config.renew_deadline,
        };
        let won = match tokio::time::timeout(budget, round(&api, &config, &mut observed)).await {
            Ok(result) => result,
            Err(_) => Err(RoundError::Timeout(budget)),
        };
        let now = Instant::now();
        match won {
            Ok(true) => last_renewal = Some(now),
            Ok(false) => last_renewal = None,
            Err(error) => {
                tracing::warn!(lease = %config.name, %error, "leader election round failed")
            }
        }
        // A holder that could not renew for renew_deadline steps down before its lease ends.
        let leads = last_renewal.is_some_and(|at| now.duration_since(at) < config.renew_deadline);
        leading.send_if_modified(|current| {
            if *current == leads {
                return false;
            }
            if leads {
                tracing::info!(identity = %config.identity, lease = %config.name, "became the leader");
            } else {
                tracing::info!(identity = %config.identity, lease = %config.name, "no longer the leader");
            }
            *current = leads;
            true
        });
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(config.retry_period) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        release(&api, &config).await;
    }
}

/// A Lease record as this replica last saw it: its resourceVersion, and since when (by this
/// replica's clock) it has been that.
#[derive(Debug)]
struct Observed {
    version: Option<String>,
    since: Instant,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One round; whether we hold the Lease after it.
async fn round(
    api: &Api<Lease>,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, RoundError> {
    let current = api.get_opt(&config.name).await?;
    let version = current
        .as_ref()
        .and_then(|lease| lease.metadata.resource_version.clone());
    let seen = Instant::now();
    let since = match observed.as_ref() {
        Some(previous) if previous.version == version => previous.since,
        _ => {
            *observed = Some(Observed {
                version,
                since: seen,
            });
            seen
        }
    };
    let now = Timestamp::now();
    let result = match decide(
        current.as_ref(),
        &config.identity,
        seen.duration_since(since),
    ) {
        Round::Create => {
            api.create(&PostParams::default(), &ours(config, None, false, now))
                .await
        }
        Round::Take { renew } => {
            api.replace(
                &config.name,
                &PostParams::default(),
                &ours(config, current.as_ref(), renew, now),
            )
            .await
        }
        Round::Follow { .. } => return Ok(false),
    };
    match result {
        Ok(_) => Ok(true),
        // Someone else wrote first (409 Conflict, or 409 AlreadyExists on create): not us.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Gives the Lease up so that a successor does not wait for it to expire.
async fn release(api: &Api<Lease>, config: &LeaderConfig) {
    let Ok(Some(current)) = api.get_opt(&config.name).await else {
        return;
    };
    let held = current
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(config.identity.as_str());
    if !held {
        return;
    }
    let mut released = current;
    if let Some(spec) = released.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
    }
    match api
        .replace(&config.name, &PostParams::default(), &released)
        .await
    {
        Ok(_) => tracing::info!(lease = %config.name, "released the leader lease"),
        Err(error) => {
            tracing::warn!(lease = %config.name, %error, "could not release the leader lease")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn lease(holder: &str, renewed_secs_ago: i64, duration: i32) -> Lease {
        let now = Timestamp::now();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: (!holder.is_empty()).then(|| holder.to_owned()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(
                    now.checked_sub(SignedDuration::from_secs(renewed_secs_ago))
                        .unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn rounds() {
        let secs = Duration::from_secs;
        assert_eq!(decide(None, "a", secs(0)), Round::Create);
        assert_eq!(
            decide(Some(&lease("a", 1, 15)), "a", secs(0)),
            Round::Take { renew: true }
        );
        assert_eq!(
            decide(Some(&lease("b", 1, 15)), "a", secs(1)),
            Round::Follow { holder: "b".into() }
        );
        // Expiry is judged by how long this replica has seen the record unchanged, not by the
        // holder's clock: a renewTime far in the past (skew) does not make it expired...
        assert_eq!(
            decide(Some(&lease("b", 3600, 15)), "a", secs(1)),
            Round::Follow { holder: "b".into() }
        );
        // ...and an unchanged record for a lease duration does.
        assert_eq!(
            decide(Some(&lease("b", 1, 15)), "a", secs(15)),
            Round::Take { renew: false }
        );
        assert_eq!(
            decide(Some(&lease("", 1, 15)), "a", secs(0)),
            Round::Take { renew: false }
        );
    }

    #[test]
    fn a_takeover_counts_a_transition_and_a_renewal_keeps_the_acquire_time() {
        let config = LeaderConfig::new("mesh", "mesh-controller", "a");
        let now = Timestamp::now();
        let mut theirs = lease("b", 20, 15);
        theirs.spec.as_mut().unwrap().lease_transitions = Some(4);
        let taken = ours(&config, Some(&theirs), false, now);
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));

        let mut mine = lease("a", 1, 15);
        mine.spec.as_mut().unwrap().acquire_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
        let renewed = ours(&config, Some(&mine), true, now).spec.unwrap();
        assert_eq!(renewed.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
    }
}
