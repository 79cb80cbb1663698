//! Retries: which failed requests may be sent again, and how many retries the budget allows.
//!
//! A retry is safe only when the server cannot have acted on the request twice: the connection
//! failed before anything was sent, or the method is idempotent and the body is still in hand
//! (buffered under a cap). Even safe retries are limited by a [`RetryBudget`]: retries may add at
//! most a fixed ratio of the recent request rate, plus a small floor per second, so that a failing
//! backend sees a bounded amplification instead of a retry storm.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How a request attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The connection could not be made; no byte of the request left the proxy.
    ConnectFailed,
    /// The connection broke or timed out after the request was (maybe partly) sent.
    ResetAfterSend,
    /// The server answered with this status.
    Status(u16),
}

/// What the proxy knows of the request body when deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (GET without one, say).
    Empty,
    /// The whole body is buffered, this many bytes (under the cap): it can be sent again.
    Buffered(u64),
    /// The body was streamed on, or exceeded the buffer cap: it cannot be replayed.
    NotReplayable,
}

/// Whether a failed attempt may be retried, before the budget is asked.
pub fn is_retryable(method: &str, body: Body, failure: Failure) -> bool {
    match failure {
        // Nothing was sent, so even a POST cannot have been acted on; the body is still whole
        // unless it was already streamed elsewhere.
        Failure::ConnectFailed => body != Body::NotReplayable,
        Failure::ResetAfterSend | Failure::Status(502..=504) => {
            is_idempotent(method) && body != Body::NotReplayable
        }
        Failure::Status(_) => false,
    }
}

/// RFC 9110 section 9.2.2: the methods whose repeated effect equals a single one.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The retry budget's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries may be this fraction of requests in the window (0.2: at most 20 % extra load).
    pub ratio: f64,
    /// Retries always allowed per second, so that a quiet service can still retry.
    pub min_per_second: u32,
    /// How long a request or retry counts toward the budget.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// A retry budget over a sliding window of one-second buckets.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: BudgetConfig,
    // Oldest first; each bucket covers one second from its start.
    buckets: VecDeque<Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    requests: u64,
    retries: u64,
}

const BUCKET: Duration = Duration::from_secs(1);

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            buckets: VecDeque::new(),
        }
    }

    /// Counts an original request (not a retry): it earns `ratio` of a retry.
    pub fn record_request(&mut self, now: Instant) {
        self.bucket(now).requests += 1;
    }

    /// Takes one retry from the budget if there is one left; returns whether the retry may go.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if self.available(now) >= 1.0 {
            self.bucket(now).retries += 1;
            true
        } else {
            false
        }
    }

    /// Retries left in the window now.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.expire(now);
        let (requests, retries) = self
            .buckets
            .iter()
            .fold((0u64, 0u64), |(q, r), b| (q + b.requests, r + b.retries));
        let floor = f64::from(self.config.min_per_second) * self.config.window.as_secs_f64();
        floor + self.config.ratio * requests as f64 - retries as f64
    }

    fn expire(&mut self, now: Instant) {
        while let Some(front) = self.buckets.front() {
            if now.saturating_duration_since(front.start) >= self.config.window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        self.expire(now);
        let fresh = match self.buckets.back() {
            Some(last) => now.saturating_duration_since(last.start) >= BUCKET,
            None => true,
        };
        if fresh {
            self.buckets.push_back(Bucket {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        // Just ensured non-empty, so this cannot fail.
        self.buckets.back_mut().expect("a bucket was just pushed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_failures_are_retryable() {
        // Nothing sent: any method, as long as the body is still whole.
        assert!(is_retryable(
            "POST",
            Body::Buffered(10),
            Failure::ConnectFailed
        ));
        assert!(!is_retryable(
            "POST",
            Body::NotReplayable,
            Failure::ConnectFailed
        ));
        // Sent: idempotent methods only, and never a body that is gone.
        assert!(is_retryable("GET", Body::Empty, Failure::ResetAfterSend));
        assert!(is_retryable("PUT", Body::Buffered(1), Failure::Status(503)));
        assert!(!is_retryable(
            "POST",
            Body::Buffered(1),
            Failure::Status(503)
        ));
        assert!(!is_retryable("PATCH", Body::Empty, Failure::ResetAfterSend));
        assert!(!is_retryable(
            "GET",
            Body::NotReplayable,
            Failure::Status(502)
        ));
        // Application errors and success are not retried.
        assert!(!is_retryable("GET", Body::Empty, Failure::Status(500)));
        assert!(!is_retryable("GET", Body::Empty, Failure::Status(404)));
        assert!(
            !is_retryable("get", Body::Empty, Failure::Status(503)),
            "methods are case-sensitive"
        );
    }

    #[test]
    fn budget_allows_the_floor_plus_the_ratio_and_no_more() {
        let config = BudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            window: Duration::from_secs(10),
        };
        let mut budget = RetryBudget::new(config);
        let t0 = Instant::now();
        for _ in 0..100 {
            budget.record_request(t0);
        }
        // 1/s for 10 s, plus 20 % of 100 requests: 30 retries.
        let granted = (0..50).filter(|_| budget.try_withdraw(t0)).count();
        assert_eq!(granted, 30);
        assert!(!budget.try_withdraw(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn budget_refills_as_the_window_slides() {
        let mut budget = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
            window: Duration::from_secs(3),
        });
        let t0 = Instant::now();
        assert_eq!((0..10).filter(|_| budget.try_withdraw(t0)).count(), 3);
        assert!(!budget.try_withdraw(t0 + Duration::from_millis(2_999)));
        // The retries of t0 leave the window after 3 s.
        assert_eq!(
            (0..10)
                .filter(|_| budget.try_withdraw(t0 + Duration::from_secs(3)))
                .count(),
            3
        );
    }

    #[test]
    fn a_failing_backend_sees_bounded_amplification() {
        // Steady 100 requests/s for a minute, every one failing and asking for a retry.
        let mut budget = RetryBudget::new(BudgetConfig::default());
        let t0 = Instant::now();
        let mut retries = 0u64;
        for second in 0..60u64 {
            let now = t0 + Duration::from_secs(second);
            for _ in 0..100 {
                budget.record_request(now);
                retries += u64::from(budget.try_withdraw(now));
            }
        }
        // 20 % of 6,000 plus 10/s: at most 1,200 + 600 + one window of floor.
        assert!(retries <= 1_900, "{retries}");
        assert!(retries >= 1_200, "{retries}");
    }
}
