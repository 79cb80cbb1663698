//! Small applications for the outbound listener's tests: HTTP servers that say who answered, and
//! raw TCP servers.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// How an HTTP app answers.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Said in the `x-served-by` header and at the start of the body.
    pub name: String,
    pub status: StatusCode,
    pub delay: Duration,
    /// Answer as a peer proxy does when it answers for its application (`mesh-proxy-error`).
    pub proxy_error: bool,
    /// Send the headers at once and the body only after this long.
    pub body_delay: Duration,
}

impl Behaviour {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            status: StatusCode::OK,
            delay: Duration::ZERO,
            proxy_error: false,
            body_delay: Duration::ZERO,
        }
    }

    pub fn proxy_error(mut self) -> Self {
        self.proxy_error = true;
        self
    }

    pub fn body_delay(mut self, delay: Duration) -> Self {
        self.body_delay = delay;
        self
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A running HTTP app (HTTP/1 and HTTP/2 prior knowledge).
#[derive(Clone, Debug)]
pub struct HttpApp {
    pub addr: SocketAddr,
    /// Requests received, by method.
    pub gets: Arc<AtomicUsize>,
    pub posts: Arc<AtomicUsize>,
}

impl HttpApp {
    pub fn requests(&self) -> usize {
        self.gets.load(Ordering::SeqCst) + self.posts.load(Ordering::SeqCst)
    }
}

/// Starts an HTTP app on `ip:0` that answers per `behaviour`: body
/// `<name> <method> <host> <version> <body length>`.
pub async fn http_app(ip: &str, behaviour: Behaviour) -> HttpApp {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    http_app_on(listener, behaviour)
}

/// Serves an HTTP app on `listener`.
pub fn http_app_on(listener: TcpListener, behaviour: Behaviour) -> HttpApp {
    let app = HttpApp {
        addr: listener.local_addr().unwrap(),
        gets: Arc::default(),
        posts: Arc::default(),
    };
    let counters = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (behaviour, counters) = (behaviour.clone(), counters.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (behaviour, counters) = (behaviour.clone(), counters.clone());
                    async move { Ok::<_, Infallible>(answer(req, &behaviour, &counters).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    app
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    behaviour: &Behaviour,
    counters: &HttpApp,
) -> Response<AppBody> {
    if req.method() == http::Method::POST {
        counters.posts.fetch_add(1, Ordering::SeqCst);
    } else {
        counters.gets.fetch_add(1, Ordering::SeqCst);
    }
    let method = req.method().clone();
    let version = req.version();
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    tokio::time::sleep(behaviour.delay).await;
    let text = format!("{} {method} {host} {version:?} {body}", behaviour.name);
    let body: AppBody = if behaviour.body_delay.is_zero() {
        Full::new(Bytes::from(text)).boxed()
    } else {
        let delay = behaviour.body_delay;
        let frame = futures_util::stream::once(async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(text)))
        });
        http_body_util::StreamBody::new(frame).boxed()
    };
    let mut response = Response::builder()
        .status(behaviour.status)
        .header("x-served-by", &behaviour.name);
    if behaviour.proxy_error {
        response = response.header("mesh-proxy-error", "the application refused the connection");
    }
    response.body(body).unwrap()
}

/// A port on `ip` nothing listens on (bound, then released).
pub async fn dead_addr(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    listener.local_addr().unwrap()
}

/// One HTTP/1.1 request on a fresh connection to `proxy`; returns status, `x-served-by`, body.
pub async fn get(
    proxy: SocketAddr,
    method: &str,
    host: &str,
    body: &'static str,
) -> (StatusCode, String, String) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri("/path?q=1")
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    let status = response.status();
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        served_by,
        String::from_utf8_lossy(&text).into_owned(),
    )
}
