//! A test application that speaks HTTP/1.x and HTTP/2 (prior knowledge) on one port, as a
//! real application behind an inbound proxy would, and tells what it saw.
//!
//! Routes:
//! - anything else: echoes the request body, and reports in response headers the version
//!   (`x-version`), `Host` (`x-host`), URI authority (`x-authority`), method, path and query
//!   (`x-target`) and `mesh-client-id` (`x-client-id`) it received;
//! - `/stream`: a gRPC-style exchange: each request DATA frame is answered at once with
//!   `ack:<data>`, and when the request ends the response ends with `grpc-status: 0` trailers;
//! - `/ws`: accepts an HTTP/1.1 upgrade with `101`, says `app says hi\n`, then echoes bytes;
//! - `/ws-refused`: answers an upgrade with `426` and a body;
//! - `/ws-ignored`: ignores an upgrade and answers `200` with a body;
//! - `/hang`: never answers.

// Each test binary uses a different part of this shared support module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_proxy::http::{Body, BoxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub const WS_GREETING: &[u8] = b"app says hi\n";

/// The running application: its address and how many connections it accepted.
pub struct HttpApp {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
}

impl HttpApp {
    pub async fn spawn() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(route))
                        .await;
                });
            }
        });
        Self { addr, accepts }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn route(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/stream" => stream(req),
        "/ws" => upgrade(req),
        "/ws-refused" => Response::builder()
            .status(StatusCode::UPGRADE_REQUIRED)
            .body(full("not here"))
            .unwrap(),
        "/ws-ignored" => Response::new(full("no upgrade, just this")),
        "/hang" => std::future::pending().await,
        _ => echo(req).await,
    })
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let seen = |value: Option<&HeaderValue>| {
        value
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("-"))
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| HeaderValue::from_str(a.as_str()).unwrap());
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let body = body.collect().await.unwrap().to_bytes();
    Response::builder()
        .header("x-version", format!("{:?}", parts.version))
        .header("x-host", seen(parts.headers.get(header::HOST)))
        .header("x-authority", seen(authority.as_ref()))
        .header("x-method", parts.method.as_str())
        .header("x-target", target)
        .header("x-client-id", seen(parts.headers.get("mesh-client-id")))
        .header(
            "x-client-ids",
            parts.headers.get_all("mesh-client-id").iter().count(),
        )
        .body(full(body))
        .unwrap()
}

fn stream(req: Request<Incoming>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(8);
    tokio::spawn(async move {
        let mut body = req.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            // An empty frame only ends the stream.
            if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                let ack = format!("ack:{}", String::from_utf8_lossy(&data));
                if tx.send(Ok(Frame::data(Bytes::from(ack)))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))))
        .unwrap()
}

fn upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let asked = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !asked {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("expected an upgrade"))
            .unwrap();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(WS_GREETING).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = io.shutdown().await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", "test-accept")
        .body(full(Bytes::new()))
        .unwrap()
}
