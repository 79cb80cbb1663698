//! An egress gateway for tests: the proxy-facing side of `mesh-gateway`, reduced to what a test
//! needs to script.
//!
//! It serves mutual TLS with ALPN `mesh.tunnel` to workloads of its own trust domain, reads one
//! open request frame, answers as the test says (OK and relay to an upstream, a status, silence,
//! or raw bytes), and reports what it saw on each connection: the caller's TLS identity, the open
//! request, and every byte it carried each way after the open.

// Each test binary uses a different part of the shared support modules.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::frame::{self, DEFAULT_MAX_FRAME_LEN};
use mesh_api::ports::ALPN_TUNNEL;
use mesh_api::tunnel::{OpenStatus, StreamHeader, TunnelOpen, TunnelOpenResponse, stream_header};
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials, connection_peer_identity};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId, TrustDomain};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// What the gateway does once it has read the open request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Answers OK naming `identity`, connects to `upstream` and relays both ways.
    Relay {
        identity: String,
        upstream: SocketAddr,
    },
    /// Answers `status` with `identity` and `message`, then only records what the caller sends.
    Status {
        status: i32,
        identity: String,
        message: String,
    },
    /// Never answers; records what the caller sends until it goes away.
    Silent,
    /// Writes these bytes as its answer, closes its side, and records what the caller sends.
    Raw(Vec<u8>),
}

/// What the gateway saw on one connection, reported when the connection is over.
#[derive(Debug, Default)]
pub struct Seen {
    /// The caller's identity, from its client certificate; `None` if the handshake failed.
    pub caller: Option<SpiffeId>,
    /// The open request, if one arrived.
    pub open: Option<TunnelOpen>,
    /// Bytes from the caller after the open request.
    pub from_caller: Vec<u8>,
    /// Bytes relayed to the caller from upstream.
    pub to_caller: Vec<u8>,
}

/// A running test gateway.
pub struct TunnelGateway {
    pub addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl TunnelGateway {
    /// Starts a gateway presenting `creds`, accepting workloads of `own` only, answering every
    /// open request with `answer`.
    pub async fn start(
        bundles: &SharedTrustBundles,
        creds: WorkloadCredentials,
        own: &TrustDomain,
        answer: Answer,
    ) -> Self {
        let resolver = Arc::new(CertResolver::new(creds).unwrap());
        let config = tls::server_config(
            bundles.clone(),
            PeerPolicy::TrustDomains(BTreeSet::from([own.clone()])),
            resolver,
            &[ALPN_TUNNEL],
        )
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answer, tx) = (acceptor.clone(), answer.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(serve(acceptor, tcp, answer).await);
                });
            }
        });
        Self { addr, seen }
    }

    /// What the gateway saw on its next finished connection.
    pub async fn seen(&mut self) -> Seen {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.seen.recv())
            .await
            .expect("the gateway finished no connection in time")
            .unwrap()
    }
}

async fn serve(acceptor: TlsAcceptor, tcp: TcpStream, answer: Answer) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut stream) = acceptor.accept(tcp).await else {
        return seen;
    };
    seen.caller = connection_peer_identity(stream.get_ref().1);

    let header = frame::read_frame::<StreamHeader, _>(&mut stream, DEFAULT_MAX_FRAME_LEN).await;
    let Ok(Some(StreamHeader {
        kind: Some(stream_header::Kind::Open(open)),
    })) = header
    else {
        return seen;
    };
    seen.open = Some(open);

    let respond = |status: OpenStatus, identity: &str, message: &str| TunnelOpenResponse {
        status: status.into(),
        endpoint_identity: identity.into(),
        message: message.into(),
    };
    match answer {
        Answer::Relay { identity, upstream } => {
            let response = respond(OpenStatus::Ok, &identity, "");
            frame::write_frame(&mut stream, &response, DEFAULT_MAX_FRAME_LEN)
                .await
                .unwrap();
            let upstream = TcpStream::connect(upstream).await.unwrap();
            let (from_caller, to_caller) = relay(stream, upstream).await;
            seen.from_caller = from_caller;
            seen.to_caller = to_caller;
        }
        Answer::Status {
            status,
            identity,
            message,
        } => {
            let response = TunnelOpenResponse {
                status,
                endpoint_identity: identity,
                message,
            };
            frame::write_frame(&mut stream, &response, DEFAULT_MAX_FRAME_LEN)
                .await
                .unwrap();
            seen.from_caller = read_to_end(&mut stream).await;
        }
        Answer::Silent => seen.from_caller = read_to_end(&mut stream).await,
        Answer::Raw(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            seen.from_caller = read_to_end(&mut stream).await;
        }
    }
    seen
}

/// Copies both ways until both sides are done, recording each direction.
async fn relay<C>(caller: C, upstream: TcpStream) -> (Vec<u8>, Vec<u8>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut caller_read, mut caller_write) = tokio::io::split(caller);
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = async {
        let recorded = copy_recording(&mut caller_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        recorded
    };
    let down = async {
        let recorded = copy_recording(&mut upstream_read, &mut caller_write).await;
        let _ = caller_write.shutdown().await;
        recorded
    };
    tokio::join!(up, down)
}

/// Copies until end of stream or an error, returning what went through.
async fn copy_recording<R, W>(from: &mut R, to: &mut W) -> Vec<u8>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut recorded = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return recorded,
            Ok(n) => n,
        };
        recorded.extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return recorded;
        }
    }
}

/// Everything the peer sends until it closes (or the stream breaks).
async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut sink = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return sink,
            Ok(n) => sink.extend_from_slice(&buf[..n]),
        }
    }
}
