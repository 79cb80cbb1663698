//! A client for one fixed address that sends each request in its own HTTP version.
//!
//! The inbound side uses it towards the local application (`local_app_ip:port`), and the
//! outbound side towards endpoints without a mesh identity. Either way the address is already
//! chosen; the request's URI and `Host` say what the application should see, never where to
//! connect. HTTP/1.x requests go over pooled keep-alive connections; HTTP/2 requests (gRPC, or
//! anything the caller sent as HTTP/2) go over one multiplexed connection with prior knowledge,
//! since an application port has no TLS and so no ALPN to negotiate with.
//!
//! Built on hyper-util's pooling client with a connector that always dials the one address,
//! within a connect timeout. Two pools: HTTP/1 connections are pooled per client (every Host
//! shares them), HTTP/2 connections per `:authority` (usually one).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::Body;
use super::error_chain::chain;

/// How an [`AppClient`] connects and pools.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AppClientConfig {
    /// How long the application has to accept a connection.
    pub connect_timeout: Duration,
    /// How long the application has to send a response's headers; `None` waits as long as the
    /// caller does. Long polls and server-streaming calls may hold their headers back for
    /// minutes, so there is no default.
    pub response_timeout: Option<Duration>,
    /// An unused pooled connection is closed after this long.
    pub pool_idle_timeout: Duration,
    /// Unused HTTP/1 connections kept per pool; more are closed as they are released.
    pub pool_max_idle: usize,
}

/// Sends requests to one fixed address, each in its own HTTP version. Cheap to clone: clones
/// share the pools.
#[derive(Clone)]
pub struct AppClient {
    addr: SocketAddr,
    authority: Authority,
    response_timeout: Option<Duration>,
    http1: Client<FixedConnector, Body>,
    http2: Client<FixedConnector, Body>,
}

/// Why a request to the application got no response. It is about that request only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error("connecting to the application at {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("the application at {addr} did not accept a connection within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("the application at {addr} sent no response headers within {timeout:?}")]
    ResponseTimeout { addr: SocketAddr, timeout: Duration },
    #[error("{version:?} requests cannot be sent to the application at {addr}")]
    Version { addr: SocketAddr, version: Version },
    /// The connection broke, or the application answered something that is not HTTP.
    #[error("request to the application at {addr} failed: {}", chain(.source))]
    Request {
        addr: SocketAddr,
        source: hyper_util::client::legacy::Error,
    },
}

/// Why the connector could not connect; travels inside hyper-util's error.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Io(io::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

/// A connector that ignores the URI and dials one address.
#[derive(Clone, Debug)]
struct FixedConnector {
    addr: SocketAddr,
    timeout: Duration,
}

// === impl AppClientConfig ===

impl Default for AppClientConfig {
    /// 1 s to connect, no response timeout, 90 s idle, 16 idle HTTP/1 connections.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            response_timeout: None,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 16,
        }
    }
}

// === impl AppClient ===

impl AppClient {
    /// A client for `addr`. Connections are opened on first use.
    pub fn new(addr: SocketAddr, config: &AppClientConfig) -> Self {
        let connector = FixedConnector {
            addr,
            timeout: config.connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle);
        let http1 = builder.build(connector.clone());
        let http2 = builder.http2_only(true).build(connector);
        // `ip:port` always parses as an authority.
        let authority = Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("localhost"));
        Self {
            addr,
            authority,
            response_timeout: config.response_timeout,
            http1,
            http2,
        }
    }

    /// The address every request goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` in its own version: HTTP/1.0 and 1.1 on a pooled HTTP/1 connection (keeping
    /// its `Host`, or setting one from the URI), HTTP/2 on the shared HTTP/2 connection (the
    /// URI's authority is the `:authority`). An HTTP/1.1 `101` response can be upgraded with
    /// `hyper::upgrade::on`.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, AppError> {
        let client = match req.version() {
            Version::HTTP_10 | Version::HTTP_11 => {
                self.h1_target(&mut req);
                &self.http1
            }
            Version::HTTP_2 => {
                self.h2_target(&mut req);
                &self.http2
            }
            version => {
                return Err(AppError::Version {
                    addr: self.addr,
                    version,
                });
            }
        };
        let response = client.request(req);
        let result = match self.response_timeout {
            Some(timeout) => tokio::time::timeout(timeout, response).await.map_err(|_| {
                AppError::ResponseTimeout {
                    addr: self.addr,
                    timeout,
                }
            })?,
            None => response.await,
        };
        result.map_err(|source| self.error(source))
    }

    /// HTTP/1: `Host` carries the authority and the client sends origin-form, so the URI's
    /// authority is only the pool key; the fixed address makes every Host share one pool.
    fn h1_target(&self, req: &mut Request<Body>) {
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        *req.uri_mut() = self.absolute(req.uri(), self.authority.clone());
    }

    /// HTTP/2: the URI's authority is the `:authority` the application sees; a request without
    /// one takes its `Host`, else the address.
    fn h2_target(&self, req: &mut Request<Body>) {
        if req.uri().authority().is_some() {
            return;
        }
        let authority = req
            .headers()
            .get(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        req.headers_mut().remove(header::HOST);
        *req.uri_mut() = self.absolute(req.uri(), authority);
    }

    fn absolute(&self, uri: &Uri, authority: Authority) -> Uri {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    fn error(&self, source: hyper_util::client::legacy::Error) -> AppError {
        let addr = self.addr;
        if source.is_connect() {
            let mut cause = std::error::Error::source(&source);
            while let Some(error) = cause {
                if let Some(connect) = error.downcast_ref::<ConnectError>() {
                    return match connect {
                        ConnectError::Timeout(timeout) => AppError::ConnectTimeout {
                            addr,
                            timeout: *timeout,
                        },
                        ConnectError::Io(e) => AppError::Connect {
                            addr,
                            source: io::Error::new(e.kind(), e.to_string()),
                        },
                    };
                }
                cause = error.source();
            }
        }
        AppError::Request { addr, source }
    }
}

impl fmt::Debug for AppClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppClient")
            .field("addr", &self.addr)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

// === impl AppError ===

impl AppError {
    /// The status a proxy answers in place of the application's: `504 Gateway Timeout` when
    /// the application did not answer in time, `502 Bad Gateway` otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ConnectTimeout { .. } | Self::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::Version { .. } => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Self::Connect { .. } | Self::Request { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

// === impl FixedConnector ===

impl tower_service::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let Self { addr, timeout } = self.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Timeout(timeout))?
                .map_err(ConnectError::Io)?;
            // Requests and responses are written whole; Nagle would only delay them.
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    use super::*;

    /// An app that answers each request with its version, Host and :authority, and counts
    /// connections.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned());
                        let said = format!(
                            "{:?} host={host:?} authority={:?} path={}",
                            req.version(),
                            req.uri().authority().map(|a| a.as_str().to_owned()),
                            req.uri().path()
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(said))))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr, accepts)
    }

    fn request(version: Version, uri: &str, host: Option<&str>) -> Request<Body> {
        let mut req = Request::builder().version(version).uri(uri);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        req.body(Empty::new().map_err(Into::into).boxed()).unwrap()
    }

    async fn text(response: Response<Incoming>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn each_version_reaches_the_app_as_itself_over_pooled_connections() {
        let (addr, accepts) = app().await;
        let client = AppClient::new(addr, &AppClientConfig::default());

        for host in ["a.example", "b.example:8080"] {
            let req = request(Version::HTTP_11, "http://ignored.example/x", Some(host));
            let said = text(client.send(req).await.unwrap()).await;
            assert_eq!(
                said,
                format!("HTTP/1.1 host=Some({host:?}) authority=None path=/x")
            );
        }
        // Both Hosts shared one keep-alive connection.
        assert_eq!(accepts.load(Ordering::SeqCst), 1);

        let req = request(Version::HTTP_10, "/old", Some("c.example"));
        let said = text(client.send(req).await.unwrap()).await;
        assert!(
            said.starts_with("HTTP/1.0 host=Some(\"c.example\")"),
            "{said}"
        );

        let before = accepts.load(Ordering::SeqCst);
        for _ in 0..3 {
            let req = request(Version::HTTP_2, "http://grpc.example:50051/Svc/Call", None);
            let said = text(client.send(req).await.unwrap()).await;
            assert_eq!(
                said,
                "HTTP/2.0 host=None authority=Some(\"grpc.example:50051\") path=/Svc/Call"
            );
        }
        // HTTP/2 prior knowledge on one more connection, shared by all three.
        assert_eq!(accepts.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn a_relative_http1_request_gets_a_host_from_the_address() {
        let (addr, _) = app().await;
        let client = AppClient::new(addr, &AppClientConfig::default());
        let said = text(
            client
                .send(request(Version::HTTP_11, "/", None))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            said,
            format!("HTTP/1.1 host=Some(\"{addr}\") authority=None path=/")
        );
    }

    #[tokio::test]
    async fn no_app_is_a_bad_gateway() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let client = AppClient::new(closed, &AppClientConfig::default());
        let err = client
            .send(request(Version::HTTP_11, "/", Some("a")))
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Connect { .. }), "{err}");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn an_app_that_never_answers_is_a_gateway_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and reads nothing.
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await.unwrap());
            }
        });
        let config = AppClientConfig {
            response_timeout: Some(Duration::from_millis(100)),
            ..AppClientConfig::default()
        };
        let client = AppClient::new(addr, &config);
        let err = client
            .send(request(Version::HTTP_11, "/", Some("a")))
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::ResponseTimeout { .. }), "{err}");
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
