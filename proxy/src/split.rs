//! Choosing among the backends of a TrafficSplit, by priority group and weight, skipping the dead.
//!
//! Discovery sends each split as backends with an authority, a weight and a priority (lower is
//! preferred). The proxy sends each request or connection to the lowest priority group that has a
//! healthy backend with a weight above zero, and within that group picks a backend at random in
//! proportion to the weights of its healthy members.
//!
//! "Healthy" is an input: whether the backend's [`Balancer`](crate::balance::Balancer) has an
//! available endpoint now. A backend whose endpoints are all gone or ejected is therefore skipped
//! on the very next choice, without waiting for the controller to move the split's weights (see
//! ARCHITECTURE.md, "Failover"); when it recovers, traffic moves back just as fast.
//!
//! The core is sans-IO like the balancer's: the caller passes health and randomness.

use mesh_api::discovery::SplitBackend;
use rand::Rng;

/// One backend of a split, as validated by [`Split::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The backend service's authority, `host:port`, never empty.
    pub authority: String,
    /// Its share within its priority group; zero keeps it listed but never chosen.
    pub weight: u32,
    /// Its priority group: lower is preferred.
    pub priority: u32,
}

/// The validated backends of one split, ready to choose from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Sorted by priority, then in the order discovery gave them.
    backends: Vec<Backend>,
}

/// Why the backends received from discovery cannot form a split.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSplit {
    /// A backend has no authority to send traffic to.
    #[error("split backend #{index} has an empty authority")]
    EmptyAuthority {
        /// The backend's position in the list received, from 0.
        index: usize,
    },
    /// One authority appears in two priority groups, so its place in the failover order is
    /// ambiguous.
    #[error(
        "split backend {authority} is listed with priorities {first} and {second}; \
         a backend belongs to one priority group"
    )]
    ConflictingPriority {
        /// The backend listed twice.
        authority: String,
        /// The priority it was first listed with.
        first: u32,
        /// The other priority.
        second: u32,
    },
}

/// Why no backend could be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitUnavailable {
    /// The split has no backends at all.
    #[error("the split has no backends")]
    NoBackends,
    /// No priority group has a healthy backend with a weight above zero.
    #[error("none of the split's {backends} backends is healthy with a weight above zero")]
    NoHealthyBackend {
        /// How many backends the split has.
        backends: usize,
    },
}

// === impl Backend ===

impl From<&SplitBackend> for Backend {
    fn from(backend: &SplitBackend) -> Self {
        Self {
            authority: backend.authority.clone(),
            weight: backend.weight,
            priority: backend.priority,
        }
    }
}

// === impl Split ===

impl Split {
    /// Validates and normalizes the backends of a discovery update; see [`Split::new`].
    pub fn from_discovery(backends: &[SplitBackend]) -> Result<Self, InvalidSplit> {
        Self::new(backends.iter().map(Backend::from))
    }

    /// Validates and normalizes a list of backends.
    ///
    /// - Authorities are trimmed of surrounding whitespace; an empty one is an error.
    /// - An authority listed twice with the same priority counts once, with the sum of its
    ///   weights (saturating at `u32::MAX`): two shares of one service are one bigger share.
    /// - An authority listed with two priorities is an error: it cannot both be preferred and be
    ///   a fallback.
    /// - Zero weights are kept, so that the split still lists them, but never chosen.
    /// - No backends at all is a valid, empty split; choosing from it fails.
    pub fn new(backends: impl IntoIterator<Item = Backend>) -> Result<Self, InvalidSplit> {
        let mut normalized: Vec<Backend> = Vec::new();
        for (index, mut backend) in backends.into_iter().enumerate() {
            let authority = backend.authority.trim();
            if authority.is_empty() {
                return Err(InvalidSplit::EmptyAuthority { index });
            }
            if authority.len() != backend.authority.len() {
                backend.authority = authority.to_owned();
            }

            match normalized
                .iter_mut()
                .find(|known| known.authority == backend.authority)
            {
                Some(known) if known.priority == backend.priority => {
                    known.weight = known.weight.saturating_add(backend.weight);
                }
                Some(known) => {
                    return Err(InvalidSplit::ConflictingPriority {
                        authority: backend.authority,
                        first: known.priority,
                        second: backend.priority,
                    });
                }
                None => normalized.push(backend),
            }
        }
        // Stable, so that equal priorities keep discovery's order and a seeded RNG its choices.
        normalized.sort_by_key(|backend| backend.priority);
        Ok(Self {
            backends: normalized,
        })
    }

    /// Chooses a backend: the lowest priority group with a healthy backend of weight above zero,
    /// then a weighted random choice among that group's healthy backends.
    ///
    /// `is_healthy` is asked at most once per backend with a weight above zero, by authority,
    /// and only for the groups up to the one chosen.
    pub fn choose(
        &self,
        mut is_healthy: impl FnMut(&str) -> bool,
        rng: &mut impl Rng,
    ) -> Result<&Backend, SplitUnavailable> {
        if self.backends.is_empty() {
            return Err(SplitUnavailable::NoBackends);
        }
        let mut chosen = None;
        let mut group = None;
        // A u64 sum of u32 weights cannot overflow for any list that fits in memory; saturating
        // anyway costs nothing and keeps the function panic-free by construction.
        let mut group_weight = 0u64;
        for backend in &self.backends {
            if group != Some(backend.priority) {
                if chosen.is_some() {
                    break;
                }
                group = Some(backend.priority);
                group_weight = 0;
            }
            if backend.weight == 0 || !is_healthy(&backend.authority) {
                continue;
            }
            // A weighted choice in one pass (reservoir sampling of one): keeping each backend
            // with probability weight / weight-so-far leaves each one chosen with probability
            // weight / group weight, and asks for each backend's health only once.
            let weight = u64::from(backend.weight);
            group_weight = group_weight.saturating_add(weight);
            if rng.random_range(0..group_weight) < weight {
                chosen = Some(backend);
            }
        }
        chosen.ok_or(SplitUnavailable::NoHealthyBackend {
            backends: self.backends.len(),
        })
    }

    /// The backends, by priority, then in the order discovery gave them.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// How many backends the split has.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the split has no backends.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn backend(authority: &str, weight: u32, priority: u32) -> Backend {
        Backend {
            authority: authority.to_owned(),
            weight,
            priority,
        }
    }

    fn split(backends: &[(&str, u32, u32)]) -> Split {
        Split::new(
            backends
                .iter()
                .map(|&(authority, weight, priority)| backend(authority, weight, priority)),
        )
        .unwrap()
    }

    /// Chooses `draws` times with the given backends dead; counts the choices per authority.
    fn tally(split: &Split, dead: &[&str], draws: u32, seed: u64) -> HashMap<String, u32> {
        let dead: HashSet<&str> = dead.iter().copied().collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = HashMap::new();
        for _ in 0..draws {
            let chosen = split
                .choose(|authority| !dead.contains(authority), &mut rng)
                .unwrap();
            *counts.entry(chosen.authority.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn share(counts: &HashMap<String, u32>, authority: &str, draws: u32) -> f64 {
        f64::from(counts.get(authority).copied().unwrap_or(0)) / f64::from(draws)
    }

    #[test]
    fn weights_are_respected() {
        let split = split(&[("a:80", 1, 0), ("b:80", 3, 0)]);
        let counts = tally(&split, &[], 20_000, 1);
        let b = share(&counts, "b:80", 20_000);
        assert!((b - 0.75).abs() < 0.02, "b got {b}");
    }

    #[test]
    fn equal_priorities_share_by_weight() {
        let split = split(&[
            ("a:80", 1, 0),
            ("b:80", 2, 0),
            ("c:80", 7, 0),
            ("fallback:80", 100, 1),
        ]);
        let counts = tally(&split, &[], 50_000, 2);
        for (authority, expected) in [("a:80", 0.1), ("b:80", 0.2), ("c:80", 0.7)] {
            let got = share(&counts, authority, 50_000);
            assert!((got - expected).abs() < 0.02, "{authority} got {got}");
        }
        assert_eq!(counts.get("fallback:80"), None);

        // A dead member's share goes to the rest of its group, not to the next group.
        let counts = tally(&split, &["c:80"], 30_000, 3);
        let b = share(&counts, "b:80", 30_000);
        assert!((b - 2.0 / 3.0).abs() < 0.02, "b got {b}");
        assert_eq!(counts.get("fallback:80"), None);
    }

    #[test]
    fn a_dead_primary_is_skipped_at_once_and_recovery_moves_back() {
        let split = split(&[
            ("fallback-2:80", 1, 2),
            ("primary:80", 1, 0),
            ("fallback-1:80", 1, 1),
        ]);
        let mut rng = StdRng::seed_from_u64(4);
        let mut dead: HashSet<&str> = HashSet::new();
        let mut choose = |dead: &HashSet<&str>| {
            split
                .choose(|authority| !dead.contains(authority), &mut rng)
                .unwrap()
                .authority
                .clone()
        };

        assert_eq!(choose(&dead), "primary:80");
        dead.insert("primary:80");
        assert_eq!(choose(&dead), "fallback-1:80");
        dead.insert("fallback-1:80");
        assert_eq!(choose(&dead), "fallback-2:80");
        dead.remove("primary:80");
        assert_eq!(choose(&dead), "primary:80");
        for _ in 0..100 {
            assert_eq!(choose(&dead), "primary:80");
        }
    }

    #[test]
    fn health_is_asked_only_as_far_as_needed() {
        let split = split(&[("zero:80", 0, 0), ("a:80", 1, 0), ("b:80", 1, 1)]);
        let mut rng = StdRng::seed_from_u64(5);
        let mut asked = Vec::new();
        split
            .choose(
                |authority| {
                    asked.push(authority.to_owned());
                    true
                },
                &mut rng,
            )
            .unwrap();
        assert_eq!(asked, ["a:80"]);
    }

    #[test]
    fn all_dead_is_an_error() {
        let split = split(&[("a:80", 1, 0), ("b:80", 1, 1)]);
        let mut rng = StdRng::seed_from_u64(6);
        let error = split.choose(|_| false, &mut rng).unwrap_err();
        assert_eq!(error, SplitUnavailable::NoHealthyBackend { backends: 2 });
        assert_eq!(
            error.to_string(),
            "none of the split's 2 backends is healthy with a weight above zero"
        );

        assert_eq!(
            Split::default().choose(|_| true, &mut rng).unwrap_err(),
            SplitUnavailable::NoBackends
        );
    }

    #[test]
    fn zero_weights_are_never_chosen() {
        let split = split(&[("zero:80", 0, 0), ("a:80", 5, 0), ("b:80", 1, 1)]);
        let counts = tally(&split, &[], 5_000, 7);
        assert_eq!(counts.get("zero:80"), None);

        // A group of zero weights only is skipped like a dead one.
        let counts = tally(&split, &["a:80"], 1_000, 8);
        assert_eq!(counts.get("b:80"), Some(&1_000));

        let only_zero = self::split(&[("zero:80", 0, 0)]);
        let mut rng = StdRng::seed_from_u64(9);
        assert_eq!(
            only_zero.choose(|_| true, &mut rng).unwrap_err(),
            SplitUnavailable::NoHealthyBackend { backends: 1 }
        );
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let split = split(&[
            ("a:80", u32::MAX, 0),
            ("b:80", u32::MAX, 0),
            ("c:80", u32::MAX, 0),
        ]);
        let counts = tally(&split, &[], 30_000, 10);
        for authority in ["a:80", "b:80", "c:80"] {
            let got = share(&counts, authority, 30_000);
            assert!((got - 1.0 / 3.0).abs() < 0.02, "{authority} got {got}");
        }

        let merged = self::split(&[("a:80", u32::MAX, 0), ("a:80", u32::MAX, 0)]);
        assert_eq!(merged.backends(), [backend("a:80", u32::MAX, 0)]);
    }

    #[test]
    fn normalizes_discovery_backends() {
        let received = [
            SplitBackend {
                authority: "fallback:80".to_owned(),
                weight: 1,
                priority: 1,
            },
            SplitBackend {
                authority: " primary:80 ".to_owned(),
                weight: 2,
                priority: 0,
            },
            SplitBackend {
                authority: "primary:80".to_owned(),
                weight: 3,
                priority: 0,
            },
            SplitBackend {
                authority: "canary:80".to_owned(),
                weight: 0,
                priority: 0,
            },
        ];
        let split = Split::from_discovery(&received).unwrap();
        assert_eq!(
            split.backends(),
            [
                backend("primary:80", 5, 0),
                backend("canary:80", 0, 0),
                backend("fallback:80", 1, 1),
            ]
        );
        assert_eq!(split.len(), 3);
        assert!(Split::from_discovery(&[]).unwrap().is_empty());
    }

    #[test]
    fn rejects_empty_authorities_and_conflicting_priorities() {
        let error = Split::new([backend("a:80", 1, 0), backend("  ", 1, 0)]).unwrap_err();
        assert_eq!(error, InvalidSplit::EmptyAuthority { index: 1 });
        assert_eq!(error.to_string(), "split backend #1 has an empty authority");

        let error = Split::new([backend("a:80", 1, 0), backend("a:80", 1, 2)]).unwrap_err();
        assert_eq!(
            error,
            InvalidSplit::ConflictingPriority {
                authority: "a:80".to_owned(),
                first: 0,
                second: 2,
            }
        );
        assert_eq!(
            error.to_string(),
            "split backend a:80 is listed with priorities 0 and 2; \
             a backend belongs to one priority group"
        );
    }
}
