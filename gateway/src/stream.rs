//! A tunnel's byte stream between gateways, whichever transport carries it: a QUIC
//! bidirectional stream, or (in TCP mode) a TLS connection of its own.
//!
//! Both carry the same frames and the same spliced bytes; they differ only in how a finished
//! stream makes sure its last bytes arrived and in how reading is abandoned, which
//! [`LinkStream`] names.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_proxy::tcp::{SpliceError, Transferred, splice};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::quic;

/// How long a finished stream may wait for the peer to acknowledge its last bytes.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);

/// The signal that cuts every running tunnel: sent when the drain deadline passes.
pub type Cut = watch::Receiver<bool>;

/// Splices `a` and `b` (see [`mesh_proxy::tcp::splice`]) until both are done, or until `cut`
/// fires (`None`). QUIC tunnels end anyway when the endpoint closes; a TCP-mode tunnel has no
/// such owner and needs the signal.
pub(crate) async fn splice_until_cut<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    mut cut: Cut,
) -> Option<Result<Transferred, SpliceError>>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let cut = async move {
        // A gone sender means the gateway finished without cutting: never fire.
        if cut.wait_for(|cut| *cut).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = splice(a, b, idle) => Some(result),
        () = cut => None,
    }
}

/// A QUIC bidirectional stream as one byte stream.
pub type QuicStream = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// A byte stream to or from another gateway.
pub trait LinkStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Waits (briefly) until the peer has received everything written before the stream was
    /// shut down.
    ///
    /// A tunnel's task holds the gateway's drain open; without this wait, a drain could
    /// complete and close the connection while the tunnel's last bytes were still in flight.
    fn delivered(&mut self) -> impl Future<Output = ()> + Send;

    /// Tells the peer that nothing more will be read.
    fn stop_reading(&mut self);
}

impl LinkStream for QuicStream {
    async fn delivered(&mut self) {
        let _ = tokio::time::timeout(DELIVERY_WAIT, self.writer().stopped()).await;
    }

    fn stop_reading(&mut self) {
        let _ = self.reader_mut().stop(quic::code::STREAM_FAILED);
    }
}

// TCP delivers what was written before the shutdown on its own; closing is all that is left.
impl LinkStream for tokio_rustls::server::TlsStream<TcpStream> {
    async fn delivered(&mut self) {}

    fn stop_reading(&mut self) {}
}

impl LinkStream for tokio_rustls::client::TlsStream<TcpStream> {
    async fn delivered(&mut self) {}

    fn stop_reading(&mut self) {}
}

/// The stream an egress tunnel got from its link, by transport.
#[derive(Debug)]
pub enum RemoteStream {
    /// A stream of the warm QUIC connection.
    Quic(QuicStream),
    /// A TLS connection of its own.
    Tcp(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl LinkStream for RemoteStream {
    async fn delivered(&mut self) {
        match self {
            Self::Quic(stream) => stream.delivered().await,
            Self::Tcp(stream) => stream.delivered().await,
        }
    }

    fn stop_reading(&mut self) {
        match self {
            Self::Quic(stream) => stream.stop_reading(),
            Self::Tcp(stream) => stream.stop_reading(),
        }
    }
}

impl AsyncRead for RemoteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tcp(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RemoteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tcp(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tcp(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tcp(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
