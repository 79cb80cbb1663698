//! The async shell around [`Detector`]: reads a connection's first bytes until a verdict, within a
//! deadline.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, timeout_at};

use super::{Detection, Detector, Protocol, Refusal};

/// How much is read from the socket at a time during detection.
const DETECT_READ_CHUNK: usize = 4 * 1024;

/// What a connection speaks, and the bytes read to find out (to be replayed to its handler).
#[derive(Debug)]
pub struct Detected {
    pub verdict: Result<Protocol, Refusal>,
    pub buffered: BytesMut,
}

/// Reads from `io` until detection decides, or `timeout` passes, or the peer closes; then the
/// verdict is what the bytes so far say (a quiet peer, such as the client of a
/// server-speaks-first protocol, is opaque). At most [`super::MAX_DETECT_BYTES`] are buffered.
pub async fn detect_stream<IO>(io: &mut IO, timeout: Duration) -> std::io::Result<Detected>
where
    IO: AsyncRead + Unpin,
{
    let deadline = Instant::now() + timeout;
    let mut detector = Detector::new();
    let mut chunk = [0u8; DETECT_READ_CHUNK];
    let verdict = loop {
        // Never zero: the detector asks for no more only once it has decided.
        let want = detector.max_read().min(chunk.len());
        match timeout_at(deadline, io.read(&mut chunk[..want])).await {
            // Quiet or closed: what is there is all there will be.
            Err(_) | Ok(Ok(0)) => break detector.decide_on_timeout(),
            Ok(Ok(n)) => match detector.push(&chunk[..n]) {
                Detection::NeedMore => {}
                Detection::Decided(protocol) => break Ok(protocol),
                Detection::Refused(refusal) => break Err(refusal),
            },
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok(Detected {
        verdict,
        buffered: detector.into_buffered(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn decides_http_without_waiting_for_the_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let detected = detect_stream(&mut server, Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(matches!(detected.verdict, Ok(Protocol::Http1 { .. })));
        assert!(detected.buffered.starts_with(b"GET / "));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_at_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let started = Instant::now();
        let detected = detect_stream(&mut server, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(detected.verdict, Ok(Protocol::Opaque));
        assert!(detected.buffered.is_empty());
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_partial_request_line_then_close_is_opaque() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET /pa").await.unwrap();
        drop(client);
        let detected = detect_stream(&mut server, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(detected.verdict, Ok(Protocol::Opaque));
        assert_eq!(&detected.buffered[..], b"GET /pa");
    }
}
