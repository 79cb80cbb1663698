//! The balancer over simulated time and seeded randomness.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use super::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 8080))
}

fn balancer(endpoints: &[SocketAddr], now: Instant) -> Balancer {
    let mut balancer = Balancer::new(BalanceConfig::default());
    balancer.update(endpoints.iter().copied(), now);
    balancer
}

/// Picks until `want` comes up. The other picks are held meanwhile, so that their pending count
/// makes `want` win sooner or later, and then dropped (a drop records nothing).
fn pick_endpoint(
    balancer: &mut Balancer,
    want: SocketAddr,
    now: Instant,
    rng: &mut StdRng,
) -> InFlight<SocketAddr> {
    let mut others = Vec::new();
    for _ in 0..10_000 {
        let guard = balancer.pick(now, rng).unwrap();
        if *guard.addr() == want {
            return guard;
        }
        others.push(guard);
    }
    panic!("{want} was never picked");
}

fn health(balancer: &Balancer, endpoint: SocketAddr, now: Instant) -> EndpointHealth {
    balancer.status(&endpoint, now).unwrap().health
}

fn ejected_until(balancer: &Balancer, endpoint: SocketAddr, now: Instant) -> Instant {
    match health(balancer, endpoint, now) {
        EndpointHealth::Ejected { until } => until,
        other => panic!("{endpoint} is {other:?}, not ejected"),
    }
}

/// Sends a request every millisecond for five seconds, to an endpoint that answers in 1 ms and
/// one that answers in 50 ms; returns the share of the fast one.
fn fast_share(seed: u64) -> f64 {
    let (fast, slow) = (addr(1), addr(2));
    let t0 = Instant::now();
    let mut balancer = balancer(&[fast, slow], t0);
    let mut rng = StdRng::seed_from_u64(seed);

    let mut in_flight: Vec<(Instant, InFlight<SocketAddr>)> = Vec::new();
    let (mut to_fast, total) = (0u32, 5000u32);
    for tick in 0..total {
        let now = t0 + MS * tick;
        let mut i = 0;
        while i < in_flight.len() {
            if in_flight[i].0 <= now {
                let (done_at, guard) = in_flight.swap_remove(i);
                guard.finish(done_at);
            } else {
                i += 1;
            }
        }

        let guard = balancer.pick(now, &mut rng).unwrap();
        let latency = if *guard.addr() == fast {
            to_fast += 1;
            MS
        } else {
            50 * MS
        };
        in_flight.push((now + latency, guard));
    }

    let now = t0 + MS * total;
    assert!(
        balancer.status(&fast, now).unwrap().rtt_estimate
            < balancer.status(&slow, now).unwrap().rtt_estimate
    );
    f64::from(to_fast) / f64::from(total)
}

#[test]
fn load_shifts_toward_the_faster_endpoint() {
    for seed in 0..10 {
        let share = fast_share(seed);
        assert!(
            share > 0.8,
            "seed {seed}: fast endpoint got {:.1} %",
            share * 100.0
        );
    }
}

#[test]
fn requests_in_flight_weigh_on_the_load() {
    let (busy, idle) = (addr(1), addr(2));
    let t0 = Instant::now();
    let mut balancer = balancer(&[busy, idle], t0);
    let mut rng = StdRng::seed_from_u64(7);

    // Ten requests in flight on `busy`, none on `idle`, equal estimates.
    let held: Vec<_> = (0..10)
        .map(|_| {
            balancer.endpoints[0]
                .1
                .start(busy, t0, Duration::from_secs(1))
        })
        .collect();
    assert_eq!(balancer.status(&busy, t0).unwrap().pending, 10);

    for _ in 0..100 {
        // Each pick on `idle` is dropped at once, so it stays idle.
        assert_eq!(*balancer.pick(t0, &mut rng).unwrap().addr(), idle);
    }
    assert_eq!(balancer.status(&idle, t0).unwrap().pending, 0);

    drop(held);
    assert_eq!(balancer.status(&busy, t0).unwrap().pending, 0);
}

#[test]
fn a_faster_endpoint_still_loses_when_it_is_crowded() {
    let (crowded, quiet) = (addr(1), addr(2));
    let t0 = Instant::now();
    // A tiny default, so that the first samples are peaks and the estimates are exactly them.
    let mut balancer = Balancer::new(BalanceConfig {
        default_rtt: Duration::from_micros(1),
        ..BalanceConfig::default()
    });
    balancer.update([crowded, quiet], t0);
    let mut rng = StdRng::seed_from_u64(3);

    // `crowded` answers in 10 ms, `quiet` in 20 ms.
    pick_endpoint(&mut balancer, crowded, t0, &mut rng).finish(t0 + 10 * MS);
    pick_endpoint(&mut balancer, quiet, t0, &mut rng).finish(t0 + 20 * MS);
    let now = t0 + 20 * MS;
    for _ in 0..50 {
        assert_eq!(*balancer.pick(now, &mut rng).unwrap().addr(), crowded);
    }

    // With two requests in flight, its load (10 ms x 3) is above the slower one's (20 ms x 1).
    let _held: Vec<_> = (0..2)
        .map(|_| {
            balancer.endpoints[0]
                .1
                .start(crowded, now, Duration::from_secs(1))
        })
        .collect();
    for _ in 0..50 {
        assert_eq!(*balancer.pick(now, &mut rng).unwrap().addr(), quiet);
    }
}

#[test]
fn consecutive_failures_eject_then_a_probe_restores() {
    let (failing, healthy) = (addr(1), addr(2));
    let t0 = Instant::now();
    let mut balancer = balancer(&[failing, healthy], t0);
    let mut rng = StdRng::seed_from_u64(11);

    for failures in 0..5 {
        assert_eq!(health(&balancer, failing, t0), EndpointHealth::Active);
        assert_eq!(
            balancer.status(&failing, t0).unwrap().consecutive_failures,
            failures
        );
        pick_endpoint(&mut balancer, failing, t0, &mut rng).fail(t0, &mut rng);
    }

    // Ejected for the first backoff: a second, shortened by at most a quarter.
    let until = ejected_until(&balancer, failing, t0);
    assert!(
        until > t0 + 750 * MS && until <= t0 + SEC,
        "{:?}",
        until - t0
    );

    // Not picked during the backoff.
    let mut now = t0;
    while now < until {
        for _ in 0..10 {
            assert_eq!(*balancer.pick(now, &mut rng).unwrap().addr(), healthy);
        }
        now += 10 * MS;
    }

    // Half-open after it: the next pick of it is a probe, and the only one until it resolves.
    assert_eq!(health(&balancer, failing, until), EndpointHealth::HalfOpen);
    let probe = pick_endpoint(&mut balancer, failing, until, &mut rng);
    assert!(probe.is_probe());
    assert_eq!(health(&balancer, failing, until), EndpointHealth::Probing);
    for _ in 0..100 {
        assert_eq!(*balancer.pick(until, &mut rng).unwrap().addr(), healthy);
    }

    // The probe's success restores it and forgets the backoff.
    probe.finish(until + 5 * MS);
    let status = balancer.status(&failing, until + 5 * MS).unwrap();
    assert_eq!(status.health, EndpointHealth::Active);
    assert_eq!(status.ejections, 0);
    assert!(!pick_endpoint(&mut balancer, failing, until, &mut rng).is_probe());
}

#[test]
fn backoff_grows_with_each_failed_probe_and_is_capped() {
    let endpoint = addr(1);
    let t0 = Instant::now();
    let mut balancer = balancer(&[endpoint], t0);
    let mut rng = StdRng::seed_from_u64(5);

    for _ in 0..5 {
        balancer.pick(t0, &mut rng).unwrap().fail(t0, &mut rng);
    }
    let mut ejected_at = t0;
    for ejections in 1..=10u32 {
        let status = balancer.status(&endpoint, ejected_at).unwrap();
        assert_eq!(status.ejections, ejections);
        let until = ejected_until(&balancer, endpoint, ejected_at);
        let nominal = (SEC * 2u32.pow(ejections - 1)).min(60 * SEC);
        let backoff = until - ejected_at;
        assert!(
            backoff <= nominal && backoff >= nominal.mul_f64(0.75),
            "ejection {ejections}: {backoff:?}"
        );

        // Nothing to pick before the backoff ends; the error says when it does.
        assert_eq!(
            balancer.pick(until - MS, &mut rng).unwrap_err(),
            PickError::AllEjected {
                endpoints: 1,
                next_probe_at: Some(until),
            }
        );

        let probe = balancer.pick(until, &mut rng).unwrap();
        assert!(probe.is_probe());
        ejected_at = until + 100 * MS;
        probe.fail(ejected_at, &mut rng);
    }

    // A successful probe resets the backoff: the next ejection is a first one again.
    let until = ejected_until(&balancer, endpoint, ejected_at);
    balancer.pick(until, &mut rng).unwrap().finish(until + MS);
    let now = until + MS;
    assert_eq!(health(&balancer, endpoint, now), EndpointHealth::Active);
    for _ in 0..5 {
        balancer.pick(now, &mut rng).unwrap().fail(now, &mut rng);
    }
    assert!(ejected_until(&balancer, endpoint, now) <= now + SEC);
}

#[test]
fn an_abandoned_probe_leaves_the_endpoint_half_open() {
    let endpoint = addr(1);
    let t0 = Instant::now();
    let mut balancer = balancer(&[endpoint], t0);
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..5 {
        balancer.pick(t0, &mut rng).unwrap().fail(t0, &mut rng);
    }
    let until = ejected_until(&balancer, endpoint, t0);

    let probe = balancer.pick(until, &mut rng).unwrap();
    assert_eq!(
        balancer.pick(until, &mut rng).unwrap_err(),
        PickError::AllEjected {
            endpoints: 1,
            next_probe_at: None,
        }
    );
    drop(probe);
    assert_eq!(health(&balancer, endpoint, until), EndpointHealth::HalfOpen);
    assert!(balancer.pick(until, &mut rng).unwrap().is_probe());
}

#[test]
fn a_dropped_request_is_neither_a_success_nor_a_failure() {
    let endpoint = addr(1);
    let t0 = Instant::now();
    let mut balancer = balancer(&[endpoint], t0);
    let mut rng = StdRng::seed_from_u64(5);

    for _ in 0..4 {
        balancer.pick(t0, &mut rng).unwrap().fail(t0, &mut rng);
    }
    let before = balancer.status(&endpoint, t0).unwrap();
    drop(balancer.pick(t0, &mut rng).unwrap());
    assert_eq!(balancer.status(&endpoint, t0).unwrap(), before);

    // The run of failures goes on: the fifth ejects.
    balancer.pick(t0, &mut rng).unwrap().fail(t0, &mut rng);
    assert!(matches!(
        health(&balancer, endpoint, t0),
        EndpointHealth::Ejected { .. }
    ));
}

#[test]
fn a_connection_is_sampled_once_when_it_connects() {
    let endpoint = addr(1);
    let t0 = Instant::now();
    let mut balancer = balancer(&[endpoint], t0);
    let mut rng = StdRng::seed_from_u64(5);

    let mut connection = balancer.pick(t0, &mut rng).unwrap();
    connection.connected(t0 + 200 * MS);
    let rtt = balancer
        .status(&endpoint, t0 + 200 * MS)
        .unwrap()
        .rtt_estimate;
    assert!(rtt.abs_diff(200 * MS) < MS, "{rtt:?}");
    assert_eq!(balancer.status(&endpoint, t0).unwrap().pending, 1);

    // An hour-long connection is not an hour-long round trip.
    connection.finish(t0 + 3600 * SEC);
    let status = balancer.status(&endpoint, t0 + 200 * MS).unwrap();
    assert!(status.rtt_estimate <= 200 * MS);
    assert_eq!(status.pending, 0);
}

#[test]
fn all_ejected_is_a_typed_error() {
    let (a, b) = (addr(1), addr(2));
    let t0 = Instant::now();
    let mut balancer = balancer(&[a, b], t0);
    let mut rng = StdRng::seed_from_u64(9);

    for _ in 0..5 {
        pick_endpoint(&mut balancer, a, t0, &mut rng).fail(t0, &mut rng);
    }
    let now = t0 + 100 * MS;
    for _ in 0..5 {
        balancer.pick(now, &mut rng).unwrap().fail(now, &mut rng);
    }
    let (until_a, until_b) = (
        ejected_until(&balancer, a, now),
        ejected_until(&balancer, b, now),
    );

    assert!(!balancer.has_available(now));
    let error = balancer.pick(now, &mut rng).unwrap_err();
    assert_eq!(
        error,
        PickError::AllEjected {
            endpoints: 2,
            next_probe_at: Some(until_a.min(until_b)),
        }
    );
    assert_eq!(
        error.to_string(),
        "all 2 endpoints are ejected after connect failures"
    );
    assert!(balancer.has_available(until_a.max(until_b)));
}

#[test]
fn no_endpoints_is_a_typed_error() {
    let t0 = Instant::now();
    let mut balancer = balancer(&[], t0);
    let mut rng = StdRng::seed_from_u64(1);
    assert_eq!(
        balancer.pick(t0, &mut rng).unwrap_err(),
        PickError::NoEndpoints
    );
    assert!(!balancer.has_available(t0));

    balancer.update([addr(1)], t0);
    balancer.update([], t0);
    assert!(balancer.is_empty());
    assert_eq!(
        balancer.pick(t0, &mut rng).unwrap_err(),
        PickError::NoEndpoints
    );
}

#[test]
fn updates_keep_the_stats_of_endpoints_that_remain() {
    let (kept, gone, new) = (addr(1), addr(2), addr(3));
    let t0 = Instant::now();
    let mut balancer = balancer(&[kept, gone], t0);
    let mut rng = StdRng::seed_from_u64(2);

    pick_endpoint(&mut balancer, kept, t0, &mut rng).finish(t0 + 300 * MS);
    pick_endpoint(&mut balancer, kept, t0, &mut rng).fail(t0, &mut rng);
    let _pending = pick_endpoint(&mut balancer, kept, t0, &mut rng);
    let in_flight_to_gone = pick_endpoint(&mut balancer, gone, t0, &mut rng);

    let now = t0 + SEC;
    let before = balancer.status(&kept, now).unwrap();
    assert_eq!(before.pending, 1);
    assert_eq!(before.consecutive_failures, 1);

    balancer.update([new, kept, kept], now);
    assert_eq!(
        balancer.endpoints().copied().collect::<Vec<_>>(),
        [new, kept]
    );
    assert_eq!(balancer.status(&kept, now).unwrap(), before);
    assert_eq!(balancer.status(&gone, now), None);
    let fresh = balancer.status(&new, now).unwrap();
    assert_eq!(fresh.rtt_estimate, balancer.config().default_rtt);
    assert_eq!(fresh.pending, 0);

    // A request to a removed endpoint finishes harmlessly.
    in_flight_to_gone.finish(now);

    // Ejection survives an update, too.
    for _ in 0..4 {
        pick_endpoint(&mut balancer, kept, now, &mut rng).fail(now, &mut rng);
    }
    balancer.update([kept, new], now);
    assert!(matches!(
        health(&balancer, kept, now),
        EndpointHealth::Ejected { .. }
    ));
}

#[test]
fn one_endpoint_is_always_the_pick() {
    let only = addr(1);
    let t0 = Instant::now();
    let mut balancer = balancer(&[only], t0);
    let mut rng = StdRng::seed_from_u64(1);
    let held: Vec<_> = (0..10)
        .map(|_| balancer.pick(t0, &mut rng).unwrap())
        .collect();
    assert!(held.iter().all(|guard| *guard.addr() == only));
    assert_eq!(balancer.status(&only, t0).unwrap().pending, 10);
}

#[test]
fn guards_can_move_to_other_tasks() {
    fn assert_send<T: Send + Sync + 'static>() {}
    assert_send::<InFlight<SocketAddr>>();
    assert_send::<Balancer>();
}

#[tokio::test(start_paused = true)]
async fn works_under_the_paused_clock() {
    let (a, b) = (addr(1), addr(2));
    let mut balancer = balancer(&[a, b], Instant::now());
    let mut rng = StdRng::seed_from_u64(4);
    let guard = balancer.pick(Instant::now(), &mut rng).unwrap();
    let picked = *guard.addr();
    tokio::time::advance(Duration::from_millis(40)).await;
    guard.finish(Instant::now());
    let rtt = balancer
        .status(&picked, Instant::now())
        .unwrap()
        .rtt_estimate;
    assert!(rtt.abs_diff(40 * MS) < MS, "{rtt:?}");
}

#[test]
fn a_connect_failure_makes_the_endpoint_lose_comparisons_before_ejection() {
    let t0 = Instant::now();
    let (good, bad) = (addr(1), addr(2));
    let mut balancer = balancer(&[good, bad], t0);
    let mut rng = StdRng::seed_from_u64(7);
    // The good endpoint is slower than the default estimate (a slow handshake, say).
    let mut first = pick_endpoint(&mut balancer, good, t0, &mut rng);
    first.connected(t0 + Duration::from_millis(80));
    first.finish(t0 + Duration::from_millis(80));
    // One refusal from the other endpoint: far from ejection, but it now loses every comparison.
    let now = t0 + Duration::from_millis(100);
    pick_endpoint(&mut balancer, bad, now, &mut rng).fail(now, &mut rng);
    assert_eq!(
        balancer.status(&bad, now).map(|s| s.health),
        Some(EndpointHealth::Active)
    );
    for _ in 0..100 {
        let guard = balancer.pick(now, &mut rng).unwrap();
        assert_eq!(*guard.addr(), good);
    }
}

#[test]
fn a_retry_avoids_the_endpoint_that_just_failed_unless_it_is_the_only_one() {
    let t0 = Instant::now();
    let (a, b) = (addr(1), addr(2));
    let mut both = balancer(&[a, b], t0);
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..50 {
        let guard = both.pick_avoiding(t0, &mut rng, Some(&a)).unwrap();
        assert_eq!(*guard.addr(), b);
    }
    let mut alone = balancer(&[a], t0);
    let guard = alone.pick_avoiding(t0, &mut rng, Some(&a)).unwrap();
    assert_eq!(*guard.addr(), a, "the only endpoint is still used");
}

#[test]
fn a_half_open_endpoint_gets_its_probe_before_faster_peers() {
    let t0 = Instant::now();
    let (fast, flaky) = (addr(1), addr(2));
    let mut balancer = balancer(&[fast, flaky], t0);
    let mut rng = StdRng::seed_from_u64(5);
    // Eject the flaky endpoint with enough failures; its penalties make it the slowest by far.
    let mut now = t0;
    while matches!(health(&balancer, flaky, now), EndpointHealth::Active) {
        pick_endpoint(&mut balancer, flaky, now, &mut rng).fail(now, &mut rng);
        now += Duration::from_millis(1);
    }
    let until = ejected_until(&balancer, flaky, now);
    // Once the backoff is over, the next pick is its probe, whatever the estimates say.
    let probe = balancer.pick(until, &mut rng).unwrap();
    assert_eq!(*probe.addr(), flaky);
    assert!(probe.is_probe());
    // A successful probe starts its estimate afresh from that sample.
    probe.finish(until + Duration::from_millis(2));
    let estimate = balancer
        .status(&flaky, until + Duration::from_millis(2))
        .unwrap()
        .rtt_estimate;
    assert!(estimate <= Duration::from_millis(3), "{estimate:?}");
}
