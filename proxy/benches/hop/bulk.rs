//! Opaque TCP throughput: push a fixed number of bytes through one connection to the sink and
//! time it until the sink confirms it read them all (see `mesh_test_support::backends`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

const CHUNK: usize = 256 * 1024;

/// One push through a path.
#[derive(Debug, Clone, Copy)]
pub struct BulkResult {
    pub bytes: u64,
    pub elapsed: Duration,
}

// === impl BulkResult ===

impl BulkResult {
    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Writes `bytes` to `addr`, half-closes, and waits for the sink's count of what it read.
pub async fn push(addr: SocketAddr, bytes: u64, limit: Duration) -> io::Result<BulkResult> {
    timeout(limit, push_inner(addr, bytes)).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{bytes} bytes to {addr} took longer than {limit:?}"),
        )
    })?
}

async fn push_inner(addr: SocketAddr, bytes: u64) -> io::Result<BulkResult> {
    let mut stream = TcpStream::connect(addr).await?;
    let chunk = vec![0x5a_u8; CHUNK];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let elapsed = started.elapsed();
    let received = u64::from_be_bytes(count);
    if received != bytes {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the sink behind {addr} read {received} bytes of {bytes}"),
        ));
    }
    Ok(BulkResult { bytes, elapsed })
}
