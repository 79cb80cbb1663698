//! The load generator: HTTP/1.1 over N keep-alive connections, open loop or closed loop.
//!
//! Open loop (wrk2-style, corrected for coordinated omission): requests are scheduled at fixed
//! intervals, `1/R` apart, handed round-robin to the connections, and each request's latency is
//! measured from its *intended* send time. A connection still waiting for a response when its
//! next request falls due sends that request as soon as it can, and the wait counts against it,
//! so one stall is charged to every request queued behind it instead of silently lowering the
//! offered rate. The schedule is kept by a pacing thread that sleeps with the OS's
//! high-resolution timer, because tokio's timer has a 1 ms granularity, far coarser than the
//! latencies measured here. How late the generator itself hands a request to an idle connection
//! (pacing lag) is recorded too: it is the floor under every open-loop figure, the same for every
//! path, and cancels out of the "added vs direct" figures.
//!
//! Closed loop (saturation): every connection sends its next request as soon as the previous
//! response is read, for the duration. Its latencies are service times under full load, measured
//! from the actual send.
//!
//! Latencies go into an `hdrhistogram::Histogram<u64>` in microseconds.
//!
//! A [`Target`] says how to open one connection: TCP to an address ([`Target::tcp`]), or any
//! byte stream ([`Target::dial`]), such as a tunnel through a gateway pair. The `hop` bench of
//! mesh-proxy and the `tunnel` bench of mesh-gateway both drive their paths with it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender, error::TryRecvError};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// Connect, per attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A response that takes longer is an error; its connection is replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: requests still queued this long after the schedule ends are not sent; they are
/// recorded with the latency they had reached, and counted as abandoned.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// The schedule starts a little after the call, so every connection task is waiting for it.
const START_DELAY: Duration = Duration::from_millis(20);
/// Highest latency recorded, µs (one hour); longer ones are recorded as this.
const MAX_RECORDED_US: u64 = 3_600_000_000;

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens one connection's stream.
pub type Dialer = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>> + Send + Sync,
>;

/// Where requests go and the `Host` they carry.
#[derive(Clone)]
pub struct Target {
    /// What the target is called in errors.
    pub name: String,
    /// Opens a connection's stream.
    pub dial: Dialer,
    /// The `Host` header of every request.
    pub host: &'static str,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// TCP (with `TCP_NODELAY`) to `addr`.
    pub fn tcp(addr: SocketAddr, host: &'static str) -> Self {
        Self::dial(addr.to_string(), host, move || async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    /// Streams opened by `dial`, called `name` in errors.
    pub fn dial<F, Fut>(name: impl Into<String>, host: &'static str, dial: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<Box<dyn Io>>> + Send + 'static,
    {
        Self {
            name: name.into(),
            dial: Arc::new(move || Box::pin(dial())),
            host,
        }
    }
}

/// Why a run could not be carried out at all (single failed requests are counted instead).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open connection {index} to {target}: {source}")]
    Connect {
        index: usize,
        target: String,
        source: RequestError,
    },
    #[error("a load task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the pacing thread could not be started: {0}")]
    Pacer(std::io::Error),
    #[error("the pacing thread panicked")]
    PacerPanicked,
    #[error("latency histograms could not be merged: {0}")]
    Merge(#[from] hdrhistogram::AdditionError),
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}, expected 200")]
    Status(StatusCode),
    #[error("no response within {REQUEST_TIMEOUT:?}")]
    Timeout,
}

/// One keep-alive HTTP/1.1 connection, reopened after an error.
#[derive(Debug)]
pub struct Connection {
    target: Target,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Latency of completed requests, µs.
    pub latency_us: Histogram<u64>,
    /// Open loop only: how late idle connections were handed their request, µs.
    pub pacing_lag_us: Option<Histogram<u64>>,
    pub completed: u64,
    pub errors: u64,
    /// Open loop only: scheduled requests never sent before the drain limit.
    pub abandoned: u64,
    pub first_error: Option<String>,
    /// From the first scheduled send to the last response.
    pub elapsed: Duration,
}

/// Per-task tallies, merged into a [`LoadResult`].
#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    pacing_lag_us: Histogram<u64>,
    completed: u64,
    errors: u64,
    abandoned: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

// === impl Connection ===

impl Connection {
    async fn open(target: &Target) -> Result<SendRequest<Empty<Bytes>>, RequestError> {
        let stream = timeout(CONNECT_TIMEOUT, (target.dial)())
            .await
            .map_err(|_| RequestError::ConnectTimeout)?
            .map_err(RequestError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The error, if any, surfaces on the next request through the sender.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `GET /` and reads the whole response.
    async fn request(&mut self) -> Result<(), RequestError> {
        let result = timeout(REQUEST_TIMEOUT, self.try_request())
            .await
            .unwrap_or(Err(RequestError::Timeout));
        if result.is_err() {
            // The connection's state is unknown after an error: start afresh next time.
            self.sender = None;
        }
        result
    }

    async fn try_request(&mut self) -> Result<(), RequestError> {
        let sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => Self::open(&self.target).await?,
        };
        let sender = self.sender.insert(sender);
        sender.ready().await?;
        let request = Request::get("/")
            .header(header::HOST, self.target.host)
            .body(Empty::new())
            .expect("a constant request is valid");
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status != StatusCode::OK {
            return Err(RequestError::Status(status));
        }
        Ok(())
    }
}

/// Opens `count` connections to `target`, sequentially, so none is charged for the others'
/// handshakes during a measurement.
pub async fn connect(target: &Target, count: usize) -> Result<Vec<Connection>, LoadError> {
    let mut connections = Vec::with_capacity(count);
    for index in 0..count {
        let sender = Connection::open(target)
            .await
            .map_err(|source| LoadError::Connect {
                index,
                target: target.name.clone(),
                source,
            })?;
        connections.push(Connection {
            target: target.clone(),
            sender: Some(sender),
        });
    }
    Ok(connections)
}

// === open loop ===

/// Offers `rate` requests per second over `connections` for `duration`.
pub async fn open_loop(
    connections: Vec<Connection>,
    rate: f64,
    duration: Duration,
) -> Result<(Vec<Connection>, LoadResult), LoadError> {
    let start = Instant::now() + START_DELAY;
    let end = start + duration;
    let drain_deadline = end + DRAIN_LIMIT;

    let mut senders = Vec::with_capacity(connections.len());
    let mut tasks = JoinSet::new();
    for connection in connections {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.spawn(open_loop_connection(connection, rx, drain_deadline));
    }
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || pace(senders, start, end, rate))
        .map_err(LoadError::Pacer)?;

    let (connections, result) = gather(tasks, start, end, true).await?;
    pacer.join().map_err(|_| LoadError::PacerPanicked)?;
    Ok((connections, result))
}

/// Hands intended send times to the connections, round-robin, on schedule.
fn pace(senders: Vec<UnboundedSender<Instant>>, start: Instant, end: Instant, rate: f64) {
    for i in 0u64.. {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        if intended >= end {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let Some(sender) = senders.get((i % senders.len() as u64) as usize) else {
            break;
        };
        // A task only stops early once the schedule is over; nothing to do then.
        let _ = sender.send(intended);
    }
}

async fn open_loop_connection(
    mut connection: Connection,
    mut schedule: UnboundedReceiver<Instant>,
    drain_deadline: Instant,
) -> (Connection, Tally) {
    let mut tally = Tally::new();
    loop {
        // A request already queued was held back by the previous response: its lateness is
        // the system's. One that arrives while the connection waits shows the generator's own.
        let (intended, was_idle) = match schedule.try_recv() {
            Ok(intended) => (intended, false),
            Err(TryRecvError::Empty) => match schedule.recv().await {
                Some(intended) => (intended, true),
                None => break,
            },
            Err(TryRecvError::Disconnected) => break,
        };
        let now = Instant::now();
        if was_idle {
            tally
                .pacing_lag_us
                .saturating_record(micros(now.saturating_duration_since(intended)));
        }
        if now > drain_deadline {
            tally.abandoned += 1;
            tally
                .latency_us
                .saturating_record(micros(now.saturating_duration_since(intended)));
            continue;
        }
        let outcome = connection.request().await;
        tally.finish(outcome, intended);
    }
    (connection, tally)
}

// === closed loop ===

/// Sends requests back to back on every connection for `duration`.
pub async fn closed_loop(
    connections: Vec<Connection>,
    duration: Duration,
) -> Result<(Vec<Connection>, LoadResult), LoadError> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for mut connection in connections {
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < end {
                let sent = Instant::now();
                let outcome = connection.request().await;
                tally.finish(outcome, sent);
            }
            (connection, tally)
        });
    }
    gather(tasks, start, end, false).await
}

async fn gather(
    mut tasks: JoinSet<(Connection, Tally)>,
    start: Instant,
    end: Instant,
    open_loop: bool,
) -> Result<(Vec<Connection>, LoadResult), LoadError> {
    let mut connections = Vec::new();
    let mut total = Tally::new();
    while let Some(joined) = tasks.join_next().await {
        let (connection, tally) = joined?;
        connections.push(connection);
        total.latency_us.add(&tally.latency_us)?;
        total.pacing_lag_us.add(&tally.pacing_lag_us)?;
        total.completed += tally.completed;
        total.errors += tally.errors;
        total.abandoned += tally.abandoned;
        total.first_error = total.first_error.or(tally.first_error);
        total.last_done = total.last_done.max(tally.last_done);
    }
    let finished = total.last_done.unwrap_or(end).max(end);
    Ok((
        connections,
        LoadResult {
            latency_us: total.latency_us,
            pacing_lag_us: open_loop.then_some(total.pacing_lag_us),
            completed: total.completed,
            errors: total.errors,
            abandoned: total.abandoned,
            first_error: total.first_error,
            elapsed: finished.saturating_duration_since(start),
        },
    ))
}

// === impl Tally ===

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: histogram(),
            pacing_lag_us: histogram(),
            completed: 0,
            errors: 0,
            abandoned: 0,
            first_error: None,
            last_done: None,
        }
    }

    /// Records one request's outcome, its latency counted from `since`.
    fn finish(&mut self, outcome: Result<(), RequestError>, since: Instant) {
        let done = Instant::now();
        match outcome {
            Ok(()) => {
                self.completed += 1;
                self.latency_us
                    .saturating_record(micros(done.saturating_duration_since(since)));
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
        self.last_done = Some(done);
    }
}

// === impl LoadResult ===

impl LoadResult {
    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The latency at `quantile`, in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_US, 3).expect("constant bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
