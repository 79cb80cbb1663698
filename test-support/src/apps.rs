//! Applications for tests to send traffic to.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Starts a TCP server on 127.0.0.1 that echoes every byte of each connection back until the
/// client closes its side, and returns its address. It serves until the runtime ends.
///
/// # Panics
///
/// If no loopback port can be bound.
pub async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port for the echo app");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
