//! The backends of a TrafficSplit as discovery sends them: weights and priority groups.
//!
//! Proxies send to the lowest priority group that has a healthy backend with a weight above
//! zero, and skip a group at once when none of its backends has a healthy endpoint
//! (`mesh_proxy::split`). So:
//!
//! - An ordinary split is one group: every backend has priority 0 and its spec weight. A weight
//!   of 0 is kept as written: that backend is listed but never chosen, as SMI intends.
//! - A failover split (labelled [`FAILOVER_CONTROLLED_BY`]) is a chain of one-backend groups:
//!   the [`FAILOVER_PRIMARY_SERVICE`] backend is priority 0, the [`FAILOVER_FALLBACK_ORDER`]
//!   backends 1, 2, ... in order, and any other backend follows in spec order. Every backend of a
//!   failover split gets a weight of at least 1. The failover controller writes 0 to the weight
//!   of a backend it has moved traffic away from, and a proxy never chooses a 0-weight backend,
//!   so sending that 0 would pin proxies to the fallback until the controller noticed the
//!   primary's recovery; with 1, the proxy moves back by itself as soon as the primary has a
//!   healthy endpoint again, and within a one-backend group the weight has no other effect.
//!
//! A backend listed twice keeps its first place and the sum of its weights; a negative weight
//! counts as 0; fallbacks or a primary that name no backend of the split are ignored. Each of
//! these is reported, for the index to log.

use std::collections::HashMap;

use mesh_api::crd::TrafficSplit;
use mesh_api::labels::{FAILOVER_CONTROLLED_BY, FAILOVER_FALLBACK_ORDER, FAILOVER_PRIMARY_SERVICE};

/// One backend of a split, ready to send: the backend Service's name (in the split's namespace),
/// its weight and its priority group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The backend Service, in the split's namespace.
    pub service: String,
    /// Its weight within its priority group.
    pub weight: u32,
    /// Its priority group: lower is preferred.
    pub priority: u32,
}

/// The failover order of a split, from its label and annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverOrder {
    /// The backend preferred while it is healthy.
    pub primary: Option<String>,
    /// The backends to fall back to, most preferred first.
    pub fallbacks: Vec<String>,
}

// === impl FailoverOrder ===

impl FailoverOrder {
    /// The failover order of `split`, or `None` when it is not a failover split.
    pub fn of(split: &TrafficSplit) -> Option<Self> {
        let meta = &split.metadata;
        if !meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(FAILOVER_CONTROLLED_BY))
        {
            return None;
        }
        let annotation = |key: &str| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
                .unwrap_or_default()
        };
        let primary = Some(annotation(FAILOVER_PRIMARY_SERVICE).trim())
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        let fallbacks = annotation(FAILOVER_FALLBACK_ORDER)
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Self { primary, fallbacks })
    }
}

/// The backends of `split`, with their priorities; and what was wrong in it, for the log.
pub fn backends(split: &TrafficSplit) -> (Vec<Backend>, Vec<String>) {
    let spec: Vec<(&str, i64)> = split
        .spec
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assign(&spec, FailoverOrder::of(split).as_ref())
}

/// Assigns weights and priorities to `(service, spec weight)` pairs, in spec order; see the
/// module documentation.
pub fn assign(
    spec: &[(&str, i64)],
    failover: Option<&FailoverOrder>,
) -> (Vec<Backend>, Vec<String>) {
    let mut problems = Vec::new();

    // Merge duplicates, keeping the first position.
    let mut merged: Vec<(&str, u32)> = Vec::with_capacity(spec.len());
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(spec.len());
    for &(service, weight) in spec {
        let weight = if weight < 0 {
            problems.push(format!(
                "backend {service} has a negative weight ({weight}); it counts as 0"
            ));
            0
        } else {
            u32::try_from(weight).unwrap_or(u32::MAX)
        };
        match position.get(service) {
            Some(&index) => {
                problems.push(format!(
                    "backend {service} is listed more than once; its weights are added"
                ));
                merged[index].1 = merged[index].1.saturating_add(weight);
            }
            None => {
                position.insert(service, merged.len());
                merged.push((service, weight));
            }
        }
    }

    let Some(order) = failover else {
        let backends = merged
            .into_iter()
            .map(|(service, weight)| Backend {
                service: service.to_owned(),
                weight,
                priority: 0,
            })
            .collect();
        return (backends, problems);
    };

    // The preferred order: primary, fallbacks, then the rest in spec order.
    let mut priority: Vec<Option<u32>> = vec![None; merged.len()];
    let mut next = 0u32;
    let named = order
        .primary
        .iter()
        .map(|p| ("primary", p))
        .chain(order.fallbacks.iter().map(|f| ("fallback", f)));
    for (role, service) in named {
        match position.get(service.as_str()) {
            Some(&index) if priority[index].is_none() => {
                priority[index] = Some(next);
                next += 1;
            }
            Some(_) => problems.push(format!(
                "{role} {service} is already earlier in the failover order; ignored"
            )),
            None => problems.push(format!(
                "{role} {service} is not a backend of the split; ignored"
            )),
        }
    }
    let backends = merged
        .into_iter()
        .zip(priority)
        .map(|((service, weight), priority)| {
            let priority = priority.unwrap_or_else(|| {
                let p = next;
                next += 1;
                p
            });
            Backend {
                service: service.to_owned(),
                weight: weight.max(1),
                priority,
            }
        })
        .collect();
    (backends, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(service: &str, weight: u32, priority: u32) -> Backend {
        Backend {
            service: service.into(),
            weight,
            priority,
        }
    }

    fn order(primary: Option<&str>, fallbacks: &[&str]) -> FailoverOrder {
        FailoverOrder {
            primary: primary.map(str::to_owned),
            fallbacks: fallbacks.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn an_ordinary_split_is_one_group_with_spec_weights() {
        let (backends, problems) = assign(&[("a", 900), ("b", 100), ("c", 0)], None);
        assert!(problems.is_empty());
        assert_eq!(
            backends,
            [
                backend("a", 900, 0),
                backend("b", 100, 0),
                backend("c", 0, 0)
            ]
        );
    }

    #[test]
    fn a_failover_split_is_a_chain_in_order() {
        // The controller has moved traffic to the second fallback: the spec weights say so, the
        // priorities do not change, and the primary keeps a weight of 1 so that proxies return
        // to it by themselves.
        let spec = [
            ("web-west", 0),
            ("web", 0),
            ("web-east", 1),
            ("web-north", 0),
        ];
        let failover = order(Some("web"), &["web-west", "web-east"]);
        let (backends, problems) = assign(&spec, Some(&failover));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            backends,
            [
                backend("web-west", 1, 1),
                backend("web", 1, 0),
                backend("web-east", 1, 2),
                backend("web-north", 1, 3),
            ]
        );
    }

    #[test]
    fn failover_names_outside_the_split_are_ignored() {
        let failover = order(Some("gone"), &["b", "missing", "b"]);
        let (backends, problems) = assign(&[("a", 5), ("b", 0)], Some(&failover));
        assert_eq!(backends, [backend("a", 5, 1), backend("b", 1, 0)]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("primary gone is not a backend"));
        assert!(problems[2].contains("already earlier"));
    }

    #[test]
    fn duplicates_merge_and_negative_weights_count_as_zero() {
        let (backends, problems) = assign(&[("a", 1), ("b", -5), ("a", 2)], None);
        assert_eq!(backends, [backend("a", 3, 0), backend("b", 0, 0)]);
        assert_eq!(problems.len(), 2);
        let (backends, _) = assign(&[("a", i64::MAX)], None);
        assert_eq!(backends[0].weight, u32::MAX);
    }

    #[test]
    fn reads_the_failover_label_and_annotations() {
        let split: TrafficSplit = serde_json::from_value(serde_json::json!({
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {
                "name": "web", "namespace": "default",
                "labels": {FAILOVER_CONTROLLED_BY: "mesh-failover"},
                "annotations": {
                    FAILOVER_PRIMARY_SERVICE: " web ",
                    FAILOVER_FALLBACK_ORDER: "web-east, ,web-west",
                },
            },
            "spec": {"service": "web", "backends": []},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            FailoverOrder::of(&split),
            Some(order(Some("web"), &["web-east", "web-west"]))
        );
        let mut plain = split.clone();
        plain.metadata.labels = None;
        assert_eq!(FailoverOrder::of(&plain), None);
    }
}
