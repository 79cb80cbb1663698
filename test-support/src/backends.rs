//! The servers behind every path: a tiny HTTP/1.1 server and a TCP sink.
//!
//! Both run in the bench process, on a runtime of their own (one worker thread), so that every
//! path a bench compares (direct, a proxy pair, a gateway pair) reaches the very same server. The HTTP server answers
//! every request `200` with a 13-byte body and keeps connections alive. The sink reads a
//! connection to its end, then writes back the number of bytes it read (8 bytes, big endian) and
//! closes, so a sender knows its last byte arrived.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// What the HTTP server answers.
pub const BODY: &[u8] = b"hello, mesh!\n";

const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(10);

/// Where the servers listen.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    pub http: SocketAddr,
    pub sink: SocketAddr,
}

/// Binds both servers on `ip` (ephemeral ports) and runs them on `runtime` until it is dropped.
pub fn start(runtime: &Runtime, ip: IpAddr) -> io::Result<Backends> {
    let (http, sink) = runtime.block_on(async {
        let http = TcpListener::bind((ip, 0)).await?;
        let sink = TcpListener::bind((ip, 0)).await?;
        io::Result::Ok((http, sink))
    })?;
    let backends = Backends {
        http: http.local_addr()?,
        sink: sink.local_addr()?,
    };
    runtime.spawn(serve_http(http));
    runtime.spawn(serve_sink(sink));
    Ok(backends)
}

async fn serve_http(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some connections finish.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            // A client that goes away mid-request costs its connection only.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_sink(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some connections finish.
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = sink(stream).await;
        });
    }
}

async fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}
