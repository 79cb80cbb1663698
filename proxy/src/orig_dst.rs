//! The address a redirected connection was originally sent to.
//!
//! When iptables redirects a connection to the proxy (see [`crate::init`]), the accepted socket's
//! local address is the proxy's own port; the address the application actually dialled survives
//! only in the kernel's connection-tracking (NAT) record. [`original_destination`] reads it back
//! with `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6), through nix's safe `getsockopt`.
//!
//! "Not redirected" has two shapes, and both are reported as such (see
//! [`OrigDstError::is_not_redirected`]):
//! - the kernel has no conntrack entry for the socket and answers `ENOENT`
//!   ([`OrigDstError::NotRedirected`]), typical where no NAT rule was ever installed;
//! - the connection is tracked but was not NATed, so the "original" destination is the socket's
//!   own local address ([`OrigDstError::ToSelf`]). Forwarding there would connect the proxy to
//!   itself, so it is an error rather than an answer.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::errno::Errno;
use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::net::TcpStream;

/// Why the original destination of a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The kernel has no NAT record for this connection (`getsockopt` returned `ENOENT`): it was
    /// not redirected by iptables, for example because it was made to the proxy's port directly.
    #[error(
        "connection was not redirected by iptables: the kernel has no NAT record for it \
         (SO_ORIGINAL_DST returned ENOENT)"
    )]
    NotRedirected,
    /// The connection is tracked but was not rewritten: its original destination is the socket's
    /// own address, i.e. the client connected to the proxy's port directly.
    #[error(
        "connection was not redirected by iptables: its original destination {0} is the \
         proxy's own listening address"
    )]
    ToSelf(SocketAddr),
    /// The kernel cannot answer `SO_ORIGINAL_DST` here (`ENOPROTOOPT`): netfilter connection
    /// tracking is not loaded for this address family, so nothing can have been redirected.
    #[error(
        "original destination unavailable: netfilter connection tracking (nf_conntrack) is not \
         loaded for {family} (SO_ORIGINAL_DST returned ENOPROTOOPT)"
    )]
    Unsupported {
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// The socket's local address could not be read (the socket is probably closed).
    #[error("reading the socket's local address: {0}")]
    LocalAddr(#[source] io::Error),
    /// Any other `getsockopt` failure.
    #[error("getsockopt(SO_ORIGINAL_DST) failed: {0}")]
    Sys(#[source] Errno),
}

impl OrigDstError {
    /// True when the connection simply was not redirected ([`Self::NotRedirected`] or
    /// [`Self::ToSelf`]): the caller should fall back to another way of learning the target
    /// (e.g. the transport header) or refuse the connection, but nothing is broken.
    pub fn is_not_redirected(&self) -> bool {
        matches!(self, Self::NotRedirected | Self::ToSelf(_))
    }
}

/// The destination the client originally connected to, before iptables redirected the connection
/// to the proxy. `stream` is the accepted (server-side) socket.
///
/// IPv4 connections accepted on a dual-stack (`[::]`) listener arrive with an IPv4-mapped local
/// address; they are tracked by IPv4 conntrack, so they are asked with the IPv4 option and the
/// answer is a plain IPv4 address.
pub fn original_destination(stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
    let local = stream.local_addr().map_err(OrigDstError::LocalAddr)?;
    // Normalise `[::ffff:a.b.c.d]:p` to `a.b.c.d:p`: both the choice of option and the
    // comparison with the answer below need the family conntrack actually saw.
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());

    let original = match local.ip() {
        IpAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst)
            .map(|raw| SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw))))
            .map_err(|e| from_errno(e, "IPv4"))?,
        IpAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            // The kernel fills flowinfo/scope id from the conntrack tuple, which has neither;
            // keep whatever it returns rather than guess.
            .map(|raw| SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(raw))))
            .map_err(|e| from_errno(e, "IPv6"))?,
    };

    if original == local {
        return Err(OrigDstError::ToSelf(original));
    }
    Ok(original)
}

fn from_errno(errno: Errno, family: &'static str) -> OrigDstError {
    match errno {
        Errno::ENOENT => OrigDstError::NotRedirected,
        Errno::ENOPROTOOPT => OrigDstError::Unsupported { family },
        other => OrigDstError::Sys(other),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn accepted_pair(bind: &str) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    // A plain loopback connection was never redirected. Which "not redirected" answer the kernel
    // gives depends on the host (no conntrack module: ENOPROTOOPT; conntrack loaded but no NAT
    // hooks in this namespace: ENOENT; conntrack active: the socket's own address), but it must
    // never be an address, and never an unexplained errno.
    #[tokio::test]
    async fn plain_ipv4_connection_is_not_redirected() {
        let (_client, accepted) = accepted_pair("127.0.0.1:0").await;
        let err = original_destination(&accepted).unwrap_err();
        assert!(
            err.is_not_redirected() || matches!(err, OrigDstError::Unsupported { family: "IPv4" }),
            "unexpected: {err:?}"
        );
    }

    #[tokio::test]
    async fn plain_ipv6_connection_is_not_redirected() {
        // Hosts without IPv6 cannot run this; that is not what it tests.
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            eprintln!("skipping: no IPv6 loopback");
            return;
        };
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, accepted) = (client.unwrap(), accepted.unwrap().0);
        let err = original_destination(&accepted).unwrap_err();
        assert!(
            err.is_not_redirected() || matches!(err, OrigDstError::Unsupported { family: "IPv6" }),
            "unexpected: {err:?}"
        );
    }

    #[test]
    fn errno_mapping_names_the_cause() {
        assert!(matches!(
            from_errno(Errno::ENOENT, "IPv4"),
            OrigDstError::NotRedirected
        ));
        assert!(from_errno(Errno::ENOENT, "IPv4").is_not_redirected());
        assert!(matches!(
            from_errno(Errno::ENOPROTOOPT, "IPv6"),
            OrigDstError::Unsupported { family: "IPv6" }
        ));
        assert!(matches!(
            from_errno(Errno::EBADF, "IPv4"),
            OrigDstError::Sys(Errno::EBADF)
        ));
        let msg = OrigDstError::NotRedirected.to_string();
        assert!(
            msg.contains("not redirected") && msg.contains("ENOENT"),
            "{msg}"
        );
    }
}
