//! Two controller replicas against one dev cluster: exactly one leads, and leadership moves
//! when the leader stops (released at once) or dies (taken over when its lease expires).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::Client;
use mesh_e2e::devcluster::DevCluster;
use mesh_federation::leader::{self, LeaderConfig};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(15);

async fn cluster() -> (DevCluster, Client) {
    support::cluster("dev", &["mesh"], false).await
}

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(100),
        ..LeaderConfig::new("mesh", "mesh-controller", identity)
    }
}

struct Replica {
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn replica(client: &Client, identity: &str) -> Replica {
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(leader::run(
        client.clone(),
        config(identity),
        leading_tx,
        async {
            let _ = stopped.await;
        },
    ));
    Replica {
        leading,
        stop: Some(stop),
        task,
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_leadership_moves_when_it_stops_or_dies() {
    let (api_server, client) = cluster().await;
    let mut a = replica(&client, "a");
    let mut b = replica(&client, "b");
    until("a leader", || *a.leading.borrow() || *b.leading.borrow()).await;
    // For a while, never both.
    for _ in 0..30 {
        assert!(!(*a.leading.borrow() && *b.leading.borrow()), "two leaders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (leader, follower) = if *a.leading.borrow() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // A clean stop releases the Lease: the follower takes over within a few retry periods,
    // well before the lease would have expired.
    let stopped = Instant::now();
    let _ = leader.stop.take().unwrap().send(());
    (&mut leader.task).await.unwrap();
    until("the follower leads", || *follower.leading.borrow()).await;
    eprintln!(
        "leadership moved {:?} after a clean stop",
        stopped.elapsed()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "released, not expired"
    );

    // A replica that dies without releasing: the next one waits for the lease to expire.
    let mut c = replica(&client, "c");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*c.leading.borrow(), "the lease is held");
    let died = Instant::now();
    follower.task.abort();
    until("c leads after the lease expires", || *c.leading.borrow()).await;
    eprintln!(
        "leadership moved {:?} after the leader died",
        died.elapsed()
    );
    assert!(
        died.elapsed() >= Duration::from_millis(1500),
        "not before the lease expired"
    );

    // The API server goes away: the leader cannot renew, and steps down by itself once its
    // renew deadline has passed, before any other replica could take over.
    let lost = Instant::now();
    api_server.shutdown().await.unwrap();
    until("c steps down", || !*c.leading.borrow()).await;
    eprintln!(
        "stepped down {:?} after the API server went away",
        lost.elapsed()
    );
    assert!(
        lost.elapsed() < Duration::from_secs(2),
        "within the lease duration"
    );
    let _ = c.stop.take().unwrap().send(());
    c.task.await.unwrap();
}
