//! Upgraded streams (WebSocket and other HTTP/1.1 upgrades, or the CONNECT streams that carry
//! them on the hop): once both sides have switched protocols, the bytes are spliced.

use std::fmt;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Waits for both sides of an upgrade, then moves bytes both ways until both close or nothing
/// moves for `idle`. `peer` names the other party in the logs.
pub(crate) async fn splice_upgraded(
    a: OnUpgrade,
    b: OnUpgrade,
    idle: Duration,
    peer: impl fmt::Display,
) {
    let (a, b) = match tokio::join!(a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!(%peer, %error, "upgrade did not complete");
            return;
        }
    };
    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
    match crate::tcp::splice(&mut a, &mut b, idle).await {
        Ok(transferred) => tracing::debug!(%peer, %transferred, "upgraded stream closed"),
        Err(error) => tracing::debug!(%peer, %error, "upgraded stream closed"),
    }
}
