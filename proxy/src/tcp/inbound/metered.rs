//! Counting the bytes of an inbound connection as they move.
//!
//! A spliced connection learns its totals when the splice ends, but an HTTP/2 connection is
//! handed to hyper and never comes back, and a long-lived connection should show in the metrics
//! while it lasts. [`Metered`] wraps the peer's side of the connection and counts every byte
//! read from and written to it, into shared counters and, when the proxy records metrics, into
//! the connection's [`TcpConnGuard`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::TcpConnGuard;
use crate::tcp::splice::Transferred;

/// Bytes moved on one connection; shared between the stream and whoever reports on it.
#[derive(Debug, Default)]
pub(super) struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
    /// Dropped with the counts: the connection leaves `tcp_open_connections` then.
    guard: Option<TcpConnGuard>,
}

/// `inner`, counting into [`ByteCounts`].
#[derive(Debug)]
pub(super) struct Metered<S> {
    inner: S,
    counts: Arc<ByteCounts>,
}

// === impl ByteCounts ===

impl ByteCounts {
    pub(super) fn new(guard: Option<TcpConnGuard>) -> Arc<Self> {
        Arc::new(Self {
            guard,
            ..Self::default()
        })
    }

    /// Read from the peer as `a_to_b`, written to it as `b_to_a`: the direction a splice from
    /// the peer to the application reports.
    pub(super) fn transferred(&self) -> Transferred {
        Transferred {
            a_to_b: self.read.load(Ordering::Relaxed),
            b_to_a: self.written.load(Ordering::Relaxed),
        }
    }

    fn add_read(&self, n: usize) {
        let n = n as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        if let Some(guard) = &self.guard {
            guard.read(n);
        }
    }

    fn add_written(&self, n: usize) {
        let n = n as u64;
        self.written.fetch_add(n, Ordering::Relaxed);
        if let Some(guard) = &self.guard {
            guard.write(n);
        }
    }
}

// === impl Metered ===

impl<S> Metered<S> {
    pub(super) fn new(inner: S, counts: Arc<ByteCounts>) -> Self {
        Self { inner, counts }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.counts.add_read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.counts.add_written(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.counts.add_written(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Labels, ProxyMetrics, TlsStatus};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn counts_both_ways_into_the_totals_and_the_metrics() {
        let metrics = ProxyMetrics::default();
        let labels = Labels::new(Direction::Inbound, TlsStatus::Plaintext);
        let counts = ByteCounts::new(Some(metrics.tcp_open(&labels)));
        let (mut peer, stream) = duplex(64);
        let mut metered = Metered::new(stream, counts.clone());

        peer.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        metered.read_exact(&mut got).await.unwrap();
        metered.write_all(b"hi").await.unwrap();
        assert_eq!(
            counts.transferred(),
            Transferred {
                a_to_b: 5,
                b_to_a: 2
            }
        );
        let text = metrics.encode();
        assert!(text.contains("tls=\"false\""), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("tcp_read_bytes_total{") && l.ends_with(" 5"))
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("tcp_write_bytes_total{") && l.ends_with(" 2"))
        );
        drop(metered);
        drop(counts);
        assert!(
            metrics
                .encode()
                .lines()
                .any(|l| l.starts_with("tcp_open_connections{") && l.ends_with(" 0"))
        );
    }
}
