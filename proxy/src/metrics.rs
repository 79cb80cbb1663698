//! The proxy's Prometheus metrics: the families the data path records into, and their
//! OpenMetrics text encoding for the admin server's `/metrics`.
//!
//! Label values come from the network (authorities, peer identities), so an unlucky or hostile
//! caller could mint a new series per request and exhaust the proxy's memory and the scraper's.
//! Two bounds prevent that:
//! - every string label value is cut to [`MAX_LABEL_VALUE_LEN`] bytes when it is built
//!   ([`LabelValue`]), so no single series is large;
//! - each family admits at most [`MetricsConfig::max_label_sets`] distinct label sets; any further
//!   set is folded into one overflow set whose string labels read `"overflow"` (the small enum
//!   labels are kept, so the overflow series still says inbound vs outbound), and
//!   `metrics_label_overflow_total{family="..."}` counts every observation folded that way.
//!
//! [`ProxyMetrics`] is the cheap-to-clone handle the listeners hold. A TCP connection resolves its
//! series once, at [`ProxyMetrics::tcp_open`], so counting bytes is a plain atomic add.

use std::fmt::{self, Write as _};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How many distinct label sets a family admits by default before folding into the overflow set.
pub const DEFAULT_MAX_LABEL_SETS: usize = 1_000;

/// The longest label value kept, in bytes; longer values are cut at a character boundary.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// The value every string label takes in the overflow set.
pub const OVERFLOW: &str = "overflow";

/// Latency buckets in milliseconds: fine where healthy requests land, coarse out to 10 s, where
/// anything slower is a timeout story rather than a latency one.
const LATENCY_BUCKETS_MS: [f64; 21] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 10_000.0,
];

/// Settings for [`ProxyMetrics`].
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Distinct label sets each family admits before folding the rest into the overflow set.
    pub max_label_sets: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_label_sets: DEFAULT_MAX_LABEL_SETS,
        }
    }
}

/// Which way traffic flows through the proxy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From a peer to the local application (the inbound listener).
    Inbound,
    /// From the local application to a destination (the outbound listener).
    Outbound,
}

/// How the connection to the peer was secured (the `tls` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TlsStatus {
    /// Mutual TLS with a mesh identity: `tls="true"`.
    Mutual,
    /// Plaintext, although the peer could have been meshed: `tls="false"`.
    Plaintext,
    /// Plaintext because the peer has no mesh identity (an unmeshed client or destination):
    /// `tls="no_identity"`.
    NoIdentity,
}

/// Whether a response counts against the destination's success rate.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

/// A label value, cut to [`MAX_LABEL_VALUE_LEN`] bytes when built and cheap to clone, so that
/// building the labels once per connection and cloning them per request costs no allocation.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct LabelValue(Arc<str>);

/// The labels every family carries.
///
/// String labels that do not apply (no identity, not a mesh service) are left empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub direction: Direction,
    /// The request authority or connection target, `host:port`.
    pub authority: LabelValue,
    pub dst_cluster: LabelValue,
    pub dst_service: LabelValue,
    pub tls: TlsStatus,
    /// The client's SPIFFE ID, when it has one.
    pub client_id: LabelValue,
    /// The server's SPIFFE ID, when it has one.
    pub server_id: LabelValue,
}

/// `response_total` labels: the common ones, plus what the response said.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    common: Labels,
    status_code: StatusCodeLabel,
    classification: Classification,
}

/// A status code, or `"overflow"`: a peer can answer any code from 100 to 999, so the overflow
/// set must not keep it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum StatusCodeLabel {
    Code(u16),
    Overflow,
}

/// `metrics_label_overflow_total` labels: which family refused a label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    family: &'static str,
}

/// A label set that knows its overflow form.
trait Foldable: Clone + Hash + Eq {
    /// This set with every unbounded label replaced by [`OVERFLOW`].
    fn overflow(&self) -> Self;
}

/// Admits at most `max` distinct label sets into one family.
#[derive(Debug)]
struct LabelLimiter {
    max: usize,
    // Serializes admission so that the count is exact; recording a known set never takes it.
    admitted: Mutex<usize>,
    overflowed: Counter,
}

/// A family behind a [`LabelLimiter`].
#[derive(Debug)]
struct BoundedFamily<S, M, C = fn() -> M> {
    family: Family<S, M, C>,
    limiter: LabelLimiter,
}

/// The proxy's metrics: cheap to clone, one per process, shared by every listener.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    registry: Registry,
    requests: BoundedFamily<Labels, Counter>,
    responses: BoundedFamily<ResponseLabels, Counter>,
    latency: BoundedFamily<Labels, Histogram>,
    tcp_opened: BoundedFamily<Labels, Counter>,
    tcp_open: BoundedFamily<Labels, Gauge>,
    tcp_read: BoundedFamily<Labels, Counter>,
    tcp_write: BoundedFamily<Labels, Counter>,
}

/// One open TCP connection's share of the metrics: counts its bytes, and takes it out of
/// `tcp_open_connections` when dropped, however the connection ends.
///
/// `read` and `write` take `&self`, so both halves of a splice can share it behind an `Arc`.
#[derive(Debug)]
#[must_use = "dropping the guard closes the connection in the metrics"]
pub struct TcpConnGuard {
    open: Gauge,
    read: Counter,
    write: Counter,
}

// === impl LabelValue ===

impl LabelValue {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(truncate(value, MAX_LABEL_VALUE_LEN)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn overflow() -> Self {
        Self(Arc::from(OVERFLOW))
    }
}

impl From<&str> for LabelValue {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for LabelValue {
    fn from(value: String) -> Self {
        Self::new(&value)
    }
}

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// `value` cut to at most `max` bytes without splitting a character.
fn truncate(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

// === impl Direction, TlsStatus, Classification ===

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl TlsStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutual => "true",
            Self::Plaintext => "false",
            Self::NoIdentity => "no_identity",
        }
    }
}

impl EncodeLabelValue for TlsStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl Classification {
    /// The default HTTP rule: a server error is a failure, anything else the server meant to say.
    pub fn of_http_status(status: http::StatusCode) -> Self {
        if status.is_server_error() {
            Self::Failure
        } else {
            Self::Success
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for StatusCodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(encoder, "{code}"),
            Self::Overflow => encoder.write_str(OVERFLOW),
        }
    }
}

// === impl Labels ===

impl Labels {
    /// Labels with every string label empty, to be filled in as the connection learns more.
    pub fn new(direction: Direction, tls: TlsStatus) -> Self {
        Self {
            direction,
            authority: LabelValue::default(),
            dst_cluster: LabelValue::default(),
            dst_service: LabelValue::default(),
            tls,
            client_id: LabelValue::default(),
            server_id: LabelValue::default(),
        }
    }
}

impl Foldable for Labels {
    fn overflow(&self) -> Self {
        Self {
            direction: self.direction,
            authority: LabelValue::overflow(),
            dst_cluster: LabelValue::overflow(),
            dst_service: LabelValue::overflow(),
            tls: self.tls,
            client_id: LabelValue::overflow(),
            server_id: LabelValue::overflow(),
        }
    }
}

impl Foldable for ResponseLabels {
    fn overflow(&self) -> Self {
        Self {
            common: self.common.overflow(),
            status_code: StatusCodeLabel::Overflow,
            classification: self.classification,
        }
    }
}

// === impl BoundedFamily ===

impl<S, M, C> BoundedFamily<S, M, C>
where
    S: Foldable,
    M: Clone,
    C: MetricConstructor<M>,
{
    /// The metric for `labels`, or for their overflow set once the family is full.
    fn get(&self, labels: &S) -> M {
        // The common case: a known set, under the family's read lock only.
        if let Some(metric) = self.family.get(labels) {
            return metric.clone();
        }
        let mut admitted = self
            .limiter
            .admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Another thread may have admitted the same set while this one waited for the lock.
        if let Some(metric) = self.family.get(labels) {
            return metric.clone();
        }
        if *admitted < self.limiter.max {
            *admitted += 1;
            return self.family.get_or_create_owned(labels);
        }
        drop(admitted);
        self.limiter.overflowed.inc();
        self.family.get_or_create_owned(&labels.overflow())
    }
}

// === impl ProxyMetrics ===

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new(MetricsConfig::default())
    }
}

impl ProxyMetrics {
    pub fn new(config: MetricsConfig) -> Self {
        let mut registry = Registry::default();
        let overflows = Family::<OverflowLabels, Counter>::default();
        let limiter = |family: &'static str| LabelLimiter {
            max: config.max_label_sets,
            admitted: Mutex::new(0),
            // Created up front so the series reads 0 before anything overflows, and an alert on
            // `> 0` has something to compare against.
            overflowed: overflows.get_or_create_owned(&OverflowLabels { family }),
        };
        let histogram: fn() -> Histogram = || Histogram::new(LATENCY_BUCKETS_MS);

        // Counters are registered without `_total`: the encoder appends it.
        let requests = bounded(
            &mut registry,
            "request",
            "request_total",
            "HTTP requests received (inbound) or sent (outbound)",
            Family::default(),
            limiter,
        );
        let responses = bounded(
            &mut registry,
            "response",
            "response_total",
            "HTTP responses, by status code and success or failure",
            Family::default(),
            limiter,
        );
        let latency = bounded(
            &mut registry,
            "response_latency_ms",
            "response_latency_ms",
            "Time from a request's headers to its response's headers, in milliseconds",
            Family::new_with_constructor(histogram),
            limiter,
        );
        let tcp_opened = bounded(
            &mut registry,
            "tcp_open",
            "tcp_open_total",
            "TCP connections opened",
            Family::default(),
            limiter,
        );
        let tcp_open = bounded(
            &mut registry,
            "tcp_open_connections",
            "tcp_open_connections",
            "TCP connections open now",
            Family::default(),
            limiter,
        );
        let tcp_read = bounded(
            &mut registry,
            "tcp_read_bytes",
            "tcp_read_bytes_total",
            "Bytes read from the peer on TCP connections",
            Family::default(),
            limiter,
        );
        let tcp_write = bounded(
            &mut registry,
            "tcp_write_bytes",
            "tcp_write_bytes_total",
            "Bytes written to the peer on TCP connections",
            Family::default(),
            limiter,
        );
        registry.register(
            "metrics_label_overflow",
            "Observations folded into a family's overflow label set because the family reached \
             its limit of distinct label sets",
            overflows,
        );

        Self {
            inner: Arc::new(Families {
                registry,
                requests,
                responses,
                latency,
                tcp_opened,
                tcp_open,
                tcp_read,
                tcp_write,
            }),
        }
    }

    /// Counts one HTTP request.
    pub fn request(&self, labels: &Labels) {
        self.inner.requests.get(labels).inc();
    }

    /// Counts one HTTP response and records its latency.
    pub fn response(
        &self,
        labels: &Labels,
        status: http::StatusCode,
        classification: Classification,
        latency: Duration,
    ) {
        let response = ResponseLabels {
            common: labels.clone(),
            status_code: StatusCodeLabel::Code(status.as_u16()),
            classification,
        };
        self.inner.responses.get(&response).inc();
        self.inner
            .latency
            .get(labels)
            .observe(latency.as_secs_f64() * 1_000.0);
    }

    /// Counts a TCP connection as opened and open until the returned guard is dropped.
    pub fn tcp_open(&self, labels: &Labels) -> TcpConnGuard {
        self.inner.tcp_opened.get(labels).inc();
        let open = self.inner.tcp_open.get(labels);
        open.inc();
        TcpConnGuard {
            open,
            read: self.inner.tcp_read.get(labels),
            write: self.inner.tcp_write.get(labels),
        }
    }

    /// Every family in the OpenMetrics text format, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            // Writing into a String cannot fail and our label encoders never do; if one ever
            // did, the output lacks `# EOF` and the scraper rejects it rather than reading half.
            tracing::error!(%error, "encoding the proxy's metrics failed");
        }
        text
    }
}

/// Registers `family` as `name` and puts it behind a limiter whose overflows are counted as
/// `exposed` (the name an operator sees, suffix included).
fn bounded<S, M, C>(
    registry: &mut Registry,
    name: &str,
    exposed: &'static str,
    help: &str,
    family: Family<S, M, C>,
    limiter: impl Fn(&'static str) -> LabelLimiter,
) -> BoundedFamily<S, M, C>
where
    Family<S, M, C>: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, family.clone());
    BoundedFamily {
        family,
        limiter: limiter(exposed),
    }
}

// === impl TcpConnGuard ===

impl TcpConnGuard {
    /// Counts bytes read from the peer.
    pub fn read(&self, bytes: u64) {
        self.read.inc_by(bytes);
    }

    /// Counts bytes written to the peer.
    pub fn write(&self, bytes: u64) {
        self.write.inc_by(bytes);
    }
}

impl Drop for TcpConnGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn outbound(authority: &str) -> Labels {
        Labels {
            authority: authority.into(),
            dst_cluster: "east".into(),
            dst_service: "web".into(),
            client_id: "spiffe://west/ns/default/sa/app".into(),
            server_id: "spiffe://east/ns/default/sa/web".into(),
            ..Labels::new(Direction::Outbound, TlsStatus::Mutual)
        }
    }

    /// The lines of `text` that are samples of `name` (not its `# HELP`/`# TYPE`).
    fn samples<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) || line == &name)
            .collect()
    }

    #[test]
    fn encode_has_every_family_with_its_labels() {
        let metrics = ProxyMetrics::default();
        let labels = outbound("web.default.svc.cluster.local:8080");
        metrics.request(&labels);
        metrics.response(
            &labels,
            http::StatusCode::SERVICE_UNAVAILABLE,
            Classification::of_http_status(http::StatusCode::SERVICE_UNAVAILABLE),
            Duration::from_millis(42),
        );
        let conn = metrics.tcp_open(&labels);
        conn.read(10);
        conn.write(20);

        let text = metrics.encode();
        let common = "direction=\"outbound\",authority=\"web.default.svc.cluster.local:8080\",\
                      dst_cluster=\"east\",dst_service=\"web\",tls=\"true\",\
                      client_id=\"spiffe://west/ns/default/sa/app\",\
                      server_id=\"spiffe://east/ns/default/sa/web\"";
        for expected in [
            format!("request_total{{{common}}} 1"),
            format!("response_total{{{common},status_code=\"503\",classification=\"failure\"}} 1"),
            format!("response_latency_ms_bucket{{le=\"50.0\",{common}}} 1"),
            format!("response_latency_ms_bucket{{le=\"40.0\",{common}}} 0"),
            format!("response_latency_ms_count{{{common}}} 1"),
            format!("tcp_open_total{{{common}}} 1"),
            format!("tcp_open_connections{{{common}}} 1"),
            format!("tcp_read_bytes_total{{{common}}} 10"),
            format!("tcp_write_bytes_total{{{common}}} 20"),
            "metrics_label_overflow_total{family=\"request_total\"} 0".to_owned(),
        ] {
            assert!(text.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.contains("# TYPE response_latency_ms histogram"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_limiter_caps_distinct_sets_and_counts_overflow() {
        let metrics = ProxyMetrics::new(MetricsConfig { max_label_sets: 3 });
        for i in 0..10 {
            metrics.request(&outbound(&format!("svc-{i}:80")));
        }
        // A set admitted before the family filled up keeps counting on its own series.
        metrics.request(&outbound("svc-0:80"));
        // Inbound overflows to its own overflow set: the enum labels are kept.
        let mut inbound = outbound("late:80");
        inbound.direction = Direction::Inbound;
        metrics.request(&inbound);

        let text = metrics.encode();
        let requests = samples(&text, "request_total");
        assert_eq!(requests.len(), 5, "3 admitted + 2 overflow sets:\n{text}");
        assert!(text.contains("authority=\"svc-0:80\""));
        assert!(
            requests
                .iter()
                .any(|l| l.contains("svc-0:80") && l.ends_with(" 2"))
        );
        assert!(!text.contains("svc-3:80"));
        let overflow = "request_total{direction=\"outbound\",authority=\"overflow\",\
                        dst_cluster=\"overflow\",dst_service=\"overflow\",tls=\"true\",\
                        client_id=\"overflow\",server_id=\"overflow\"} 7";
        assert!(text.contains(overflow), "missing {overflow:?} in\n{text}");
        assert!(text.contains("metrics_label_overflow_total{family=\"request_total\"} 8"));
        assert!(text.contains("metrics_label_overflow_total{family=\"tcp_open_total\"} 0"));
    }

    #[test]
    fn response_overflow_folds_the_status_code_too() {
        let metrics = ProxyMetrics::new(MetricsConfig { max_label_sets: 1 });
        let labels = outbound("a:80");
        for code in [200, 201, 202, 599] {
            let status = http::StatusCode::from_u16(code).unwrap();
            let class = Classification::of_http_status(status);
            metrics.response(&labels, status, class, Duration::from_millis(1));
        }
        let text = metrics.encode();
        let responses = samples(&text, "response_total");
        assert_eq!(responses.len(), 3, "{text}");
        assert!(responses.iter().any(|l| l.contains(
            "status_code=\"overflow\",\
                                                     classification=\"success\"} 2"
        )));
        assert!(responses.iter().any(|l| l.contains(
            "status_code=\"overflow\",\
                                                     classification=\"failure\"} 1"
        )));
        assert!(text.contains("metrics_label_overflow_total{family=\"response_total\"} 3"));
    }

    #[test]
    fn long_label_values_are_cut_at_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let value = LabelValue::new(&long);
        assert!(value.as_str().len() <= MAX_LABEL_VALUE_LEN);
        assert_eq!(value.as_str().len(), 256);
        assert!(long.starts_with(value.as_str()));
        let odd = format!("x{long}"); // the boundary falls inside a character
        assert_eq!(LabelValue::new(&odd).as_str().len(), 255);
        assert_eq!(LabelValue::new("short").as_str(), "short");
    }

    #[test]
    fn the_open_gauge_returns_to_zero_when_guards_drop() {
        let metrics = ProxyMetrics::default();
        let labels = outbound("db:5432");
        let first = metrics.tcp_open(&labels);
        let second = metrics.tcp_open(&labels);
        let open = || {
            let text = metrics.encode();
            samples(&text, "tcp_open_connections")
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(open(), ["2"]);
        drop(first);
        assert_eq!(open(), ["1"]);
        drop(second);
        assert_eq!(open(), ["0"]);
        assert!(metrics.encode().contains("tcp_open_total{"));
        assert!(samples(&metrics.encode(), "tcp_open_total")[0].ends_with(" 2"));
    }

    #[test]
    fn concurrent_admission_never_exceeds_the_limit() {
        let metrics = ProxyMetrics::new(MetricsConfig { max_label_sets: 50 });
        std::thread::scope(|scope| {
            for t in 0..4 {
                let metrics = metrics.clone();
                scope.spawn(move || {
                    for i in 0..100 {
                        metrics.request(&outbound(&format!("svc-{}:80", (i * 7 + t) % 100)));
                    }
                });
            }
        });
        let text = metrics.encode();
        // 50 admitted sets plus the one overflow set.
        assert_eq!(samples(&text, "request_total").len(), 51, "{text}");
    }
}
