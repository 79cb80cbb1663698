//! Splicing two byte streams together: what a TCP hop does once both ends are connected.
//!
//! Each direction is a [`Pump`], a small state machine over one fixed buffer: read into it when it
//! is empty, write it out, and after end of stream shut down the other side's write half. The
//! [`splice`] shell polls both pumps and owns the one idle timer. Three properties matter:
//!
//! - Backpressure: a pump reads again only once its buffer has been written out, so a slow
//!   reader stalls its writer instead of growing memory. A splice holds two
//!   [`SPLICE_BUFFER_SIZE`] buffers, whatever the peers do.
//! - Half-close: end of stream one way shuts down the write half the other way (a TLS stream
//!   sends close_notify, then FIN) and the other direction keeps flowing, so a client that
//!   shuts down its write side still reads the reply.
//! - Idle timeout: when no byte moves either way for the timeout, the splice ends with
//!   [`SpliceError::Idle`]. A peer that stops reading counts as idle too: a stalled peer must not
//!   hold a connection forever.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The buffer each direction of a splice holds: one TLS record's worth of plaintext.
pub const SPLICE_BUFFER_SIZE: usize = 16 * 1024;

/// Bytes moved by a splice, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Read from `b` and written to `a`.
    pub b_to_a: u64,
}

/// One direction of a splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    AToB,
    BToA,
}

/// Why a splice ended before both directions reached end of stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpliceError {
    #[error("no byte moved either way for {timeout:?} ({transferred})")]
    Idle {
        timeout: Duration,
        transferred: Transferred,
    },
    #[error("{direction}: {source} ({transferred})")]
    Io {
        direction: Direction,
        source: io::Error,
        transferred: Transferred,
    },
}

/// Copies `a` to `b` and `b` to `a` until both directions have reached end of stream, and returns
/// how many bytes went each way.
///
/// End of stream one way shuts down the write half of the other stream and the opposite
/// direction keeps going (see the module doc). Ends with [`SpliceError::Idle`] when no byte
/// moves for `idle_timeout`, and with [`SpliceError::Io`] on the first I/O error either way; the
/// streams are left to the caller, who normally drops them.
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    idle_timeout: Duration,
) -> Result<Transferred, SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Pump::new();
    let mut b_to_a = Pump::new();
    // The timer is pushed back lazily: traffic only records when it happened, and the timer is
    // re-armed when it fires early. Resetting it on every chunk would churn the timer wheel.
    let mut last_activity = Instant::now();
    let mut idle = pin!(tokio::time::sleep_until(last_activity + idle_timeout));

    poll_fn(|cx| {
        let transferred = |ab: &Pump, ba: &Pump| Transferred {
            a_to_b: ab.transferred,
            b_to_a: ba.transferred,
        };
        let io_error = |direction, source, ab: &Pump, ba: &Pump| {
            Poll::Ready(Err(SpliceError::Io {
                direction,
                source,
                transferred: transferred(ab, ba),
            }))
        };

        let ab = a_to_b.poll_pump(cx, Pin::new(&mut *a), Pin::new(&mut *b));
        if let Poll::Ready(Err(e)) = ab {
            return io_error(Direction::AToB, e, &a_to_b, &b_to_a);
        }
        let ba = b_to_a.poll_pump(cx, Pin::new(&mut *b), Pin::new(&mut *a));
        if let Poll::Ready(Err(e)) = ba {
            return io_error(Direction::BToA, e, &a_to_b, &b_to_a);
        }
        if ab.is_ready() && ba.is_ready() {
            return Poll::Ready(Ok(transferred(&a_to_b, &b_to_a)));
        }

        if a_to_b.take_progress() | b_to_a.take_progress() {
            last_activity = Instant::now();
        }
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(Err(SpliceError::Idle {
                    timeout: idle_timeout,
                    transferred: transferred(&a_to_b, &b_to_a),
                }));
            }
            // Traffic since the timer was armed: re-arm it, and poll it again to register.
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// One direction: a bounded buffer between a reader and a writer.
struct Pump {
    buf: Box<[u8]>,
    /// `buf[pos..end]` is read but not yet written.
    pos: usize,
    end: usize,
    state: PumpState,
    /// Bytes written since the last flush: flushed before waiting on the reader, so that
    /// buffering writers (TLS) do not sit on data while the pump waits for more.
    need_flush: bool,
    /// Whether any byte moved since [`Pump::take_progress`] last looked.
    progress: bool,
    transferred: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PumpState {
    Copying,
    /// The reader reached end of stream and the buffer is written out: shut down the writer.
    ShuttingDown,
    Done,
}

// === impl Pump ===

impl Pump {
    fn new() -> Self {
        Self {
            buf: vec![0; SPLICE_BUFFER_SIZE].into_boxed_slice(),
            pos: 0,
            end: 0,
            state: PumpState::Copying,
            need_flush: false,
            progress: false,
            transferred: 0,
        }
    }

    fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress)
    }

    /// Moves bytes until the reader or the writer would block; ready once the writer is shut
    /// down after the reader's end of stream.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                PumpState::Copying => {
                    while self.pos < self.end {
                        let n = ready!(
                            writer
                                .as_mut()
                                .poll_write(cx, &self.buf[self.pos..self.end])
                        )?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        self.pos += n;
                        self.transferred += n as u64;
                        self.need_flush = true;
                        self.progress = true;
                    }
                    // Only an empty buffer is refilled: this is the backpressure.
                    let mut read = ReadBuf::new(&mut self.buf);
                    match reader.as_mut().poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) => {
                            let n = read.filled().len();
                            (self.pos, self.end) = (0, n);
                            if n == 0 {
                                self.state = PumpState::ShuttingDown;
                            } else {
                                self.progress = true;
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if self.need_flush {
                                ready!(writer.as_mut().poll_flush(cx))?;
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                PumpState::ShuttingDown => {
                    // Shutting down flushes first.
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    self.need_flush = false;
                    self.state = PumpState::Done;
                }
                PumpState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

// === impl Transferred ===

impl fmt::Display for Transferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes a->b, {} bytes b->a", self.a_to_b, self.b_to_a)
    }
}

// === impl Direction ===

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AToB => "a->b",
            Self::BToA => "b->a",
        })
    }
}

// === impl SpliceError ===

impl SpliceError {
    /// What moved before the splice ended.
    pub fn transferred(&self) -> Transferred {
        match self {
            Self::Idle { transferred, .. } | Self::Io { transferred, .. } => *transferred,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn copies_both_ways_and_propagates_half_close() {
        let (mut client, mut a) = duplex(64);
        let (mut b, mut server) = duplex(64);
        let spliced =
            tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(5)).await });

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The server saw end of stream and still answers; the client still reads it.
        // Longer than either pipe holds: it flows only while the client reads.
        let answer = async {
            server.write_all(&[b'r'; 200]).await.unwrap();
            server.shutdown().await.unwrap();
        };
        let mut reply = Vec::new();
        let ((), read) = tokio::join!(answer, client.read_to_end(&mut reply));
        read.unwrap();
        assert_eq!(reply, [b'r'; 200]);

        let t = spliced.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                a_to_b: 7,
                b_to_a: 200
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_resets_on_traffic_either_way() {
        let (mut client, mut a) = duplex(64);
        let (mut b, mut server) = duplex(64);
        let start = Instant::now();
        let spliced =
            tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(10)).await });
        let mut byte = [0u8; 1];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
            tokio::time::sleep(Duration::from_secs(6)).await;
            server.write_all(b"y").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
        }
        let err = spliced.await.unwrap().unwrap_err();
        assert!(matches!(err, SpliceError::Idle { .. }), "{err}");
        assert_eq!(
            err.transferred(),
            Transferred {
                a_to_b: 3,
                b_to_a: 3
            }
        );
        // 36 s of traffic every 6 s, then 10 s of silence.
        assert_eq!(start.elapsed(), Duration::from_secs(46));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_stalls_its_writer() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, _server) = duplex(1024);
        let spliced =
            tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(30)).await });
        // Far more than the splice buffer plus both pipes: the writer must block, not the
        // splice buffer grow.
        let big = vec![7u8; 4 * SPLICE_BUFFER_SIZE];
        let write = tokio::time::timeout(Duration::from_secs(1), client.write_all(&big)).await;
        assert!(write.is_err(), "the writer was never held back");
        let err = spliced.await.unwrap().unwrap_err();
        let moved = err.transferred().a_to_b;
        assert!(matches!(err, SpliceError::Idle { .. }), "{err}");
        assert!(moved <= 1024, "{moved} bytes written to a pipe of 1024");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_splice_with_its_direction() {
        let (client, mut a) = duplex(64);
        let (mut b, server) = duplex(64);
        drop(server);
        let spliced =
            tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(5)).await });
        let mut client = client;
        client.write_all(b"to nobody").await.unwrap();
        let err = spliced.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                SpliceError::Io {
                    direction: Direction::AToB,
                    ..
                }
            ),
            "{err}"
        );
    }
}
